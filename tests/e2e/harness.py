"""Real Cinder services on 127.0.0.1 with the Ursa backend, for the
end-to-end tests: a private MariaDB and RabbitMQ, an ursa-aio cluster with
its NBD gateway and attach agent, then cinder-api (noauth),
cinder-scheduler, cinder-volume and cinder-backup from the cinder package,
configured as the README tells an operator.

Traps handled here are described in the workspace's openstack-notes.md:
noauth and keystoneauth's token-less version discovery, the scheduler's
first-capabilities race, quotas, and 'sudo' (a pass-through shim, as
rootwrap and privsep expect one).
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from cinder_ursa.cmd.allinone import AllInOne
from tests.fixtures.processes import free_port
from tests.fixtures.processes import wait_port
from tests.fixtures.services import RabbitMQ
from tests.fixtures.services import unavailable
from tests.fixtures.wait import wait_for

VENV_BIN = os.path.dirname(sys.executable)
VENV = os.path.dirname(VENV_BIN)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOKEN = 'admin:admin'


class Cinder:
    """cinder-api, -scheduler, -volume and -backup with an Ursa backend."""

    SERVICES = ('cinder-api', 'cinder-scheduler', 'cinder-volume',
                'cinder-backup')

    def __init__(self, base, db_url, transport_url, ursa):
        self.base = base
        self.db_url = db_url
        self.transport_url = transport_url
        self.ursa = ursa
        self.port = free_port()
        self.procs = {}
        self.conf = os.path.join(base, 'cinder.conf')

    @property
    def endpoint(self):
        return 'http://127.0.0.1:%d/v3' % self.port

    def env(self):
        shim = os.path.join(self.base, 'bin')
        return dict(os.environ, PATH='%s:%s:%s' % (
            shim, VENV_BIN, os.environ.get('PATH', '/usr/bin:/bin')),
            PYTHONPATH=ROOT, OS_CINDER_DISABLE_EVENTLET_PATCHING='')

    def write_config(self):
        b = self.base
        for d in ('bin', 'state', 'locks', 'log', 'backups', 'conv'):
            os.makedirs(os.path.join(b, d), exist_ok=True)
        # No sudo here and we run as root: rootwrap and privsep-helper are
        # called through 'sudo', which just runs them.
        sudo = os.path.join(b, 'bin', 'sudo')
        with open(sudo, 'w') as f:
            f.write('#!/bin/sh\nexec "$@"\n')
        os.chmod(sudo, 0o755)
        with open(os.path.join(b, 'rootwrap.conf'), 'w') as f:
            f.write('[DEFAULT]\nfilters_path=%s/etc/cinder/rootwrap.d\n'
                    'exec_dirs=%s,/sbin,/usr/sbin,/bin,/usr/bin\n'
                    'use_syslog=False\n' % (VENV, VENV_BIN))
        # noauth answers a token-less request (keystoneauth's version
        # discovery) with an empty 204: give it a default token.
        paste = open(os.path.join(VENV, 'etc/cinder/api-paste.ini')).read()
        paste = paste.replace(
            'noauth = request_id cors http_proxy_to_wsgi faultwrap sizelimit '
            'osprofiler noauth apiv3',
            'noauth = request_id cors http_proxy_to_wsgi faultwrap sizelimit '
            'osprofiler defaulttoken noauth apiv3')
        paste += ('\n[filter:defaulttoken]\npaste.filter_factory = '
                  'tests.e2e.harness:default_token_filter\n')
        with open(os.path.join(b, 'api-paste.ini'), 'w') as f:
            f.write(paste)
        u = self.ursa
        with open(self.conf, 'w') as f:
            f.write(f'''[DEFAULT]
auth_strategy = noauth
transport_url = {self.transport_url}
enabled_backends = ursa
my_ip = 127.0.0.1
state_path = {b}/state
log_dir = {b}/log
api_paste_config = {b}/api-paste.ini
rootwrap_config = {b}/rootwrap.conf
image_conversion_dir = {b}/conv
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = {self.port}
osapi_volume_workers = 1
project_id_regex = [0-9a-zA-Z_-]+
periodic_interval = 10
periodic_fuzzy_delay = 0
backend_stats_polling_interval = 10
scheduler_driver_init_wait_time = 5
quota_volumes = -1
quota_snapshots = -1
quota_gigabytes = -1
quota_backups = -1
quota_backup_gigabytes = -1
backup_driver = cinder.backup.drivers.posix.PosixBackupDriver
backup_posix_path = {b}/backups
debug = true

[database]
connection = {self.db_url}

[coordination]
backend_url = file://{b}/state/coordination

[oslo_concurrency]
lock_path = {b}/locks

[ursa]
volume_driver = cinder_ursa.volume.driver.UrsaDriver
volume_backend_name = ursa
ursa_master_urls = {u.master_url}
ursa_cluster_key_file = {u.key_file}
ursa_chunk_size_mib = 4
''')

    def start(self):
        self.write_config()
        env = self.env()
        with open(os.path.join(self.base, 'db-sync.log'), 'wb') as log:
            subprocess.run([os.path.join(VENV_BIN, 'cinder-manage'),
                            '--config-file', self.conf, 'db', 'sync'],
                           check=True, env=env, stdout=log,
                           stderr=subprocess.STDOUT, timeout=300)
        for name in self.SERVICES:
            log = open(os.path.join(self.base, name + '.out'), 'wb')
            self.procs[name] = subprocess.Popen(
                [os.path.join(VENV_BIN, name), '--config-file', self.conf],
                env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, self.procs['cinder-api'], 'cinder-api')
        self.wait_pool()
        return self

    def api(self, method, path, body=None):
        req = urllib.request.Request(
            self.endpoint + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={'X-Auth-Token': TOKEN, 'Content-Type':
                     'application/json',
                     'OpenStack-API-Version': 'volume 3.70'})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
        return json.loads(text) if text else {}

    def wait_pool(self, timeout=120):
        """The scheduler says 'No valid backend' until cinder-volume has
        published its capabilities: wait for the pool."""
        def pools():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError('%s exited; see %s' % (dead, self.base))
            try:
                return self.api('GET', '/admin/scheduler-stats/get_pools'
                                '?detail=true')['pools']
            except (urllib.error.URLError, OSError, ValueError):
                return None
        return wait_for(pools, timeout, 'a Cinder pool; see %s' % self.base,
                        interval=1)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()

    def osc_env(self):
        """openstackclient against noauth (openstack-notes.md)."""
        env = dict(os.environ, OS_AUTH_TYPE='admin_token', OS_TOKEN=TOKEN,
                   OS_ENDPOINT=self.endpoint, OS_VOLUME_API_VERSION='3.70')
        for k in ('OS_CLOUD', 'OS_AUTH_URL', 'OS_USERNAME'):
            env.pop(k, None)
        return env


def default_token_filter(global_conf, **local_conf):
    def filt(app):
        def middleware(environ, start_response):
            environ.setdefault('HTTP_X_AUTH_TOKEN', TOKEN)
            return app(environ, start_response)
        return middleware
    return filt


class Stack:
    """MariaDB + RabbitMQ + ursa-aio (gateway, attach agent) + Cinder."""

    def __init__(self, base, mariadb):
        self.base = base
        self.mariadb = mariadb
        self.rabbit = None
        self.ursa = None
        self.cinder = None

    def start(self):
        t0 = time.monotonic()
        self.rabbit = RabbitMQ(os.path.join(self.base, 'rabbit')).start()
        self.ursa = AllInOne(os.path.join(self.base, 'ursa'), 3,
                             port_base=0, server_timeout=5.0)
        # cinder-backup's connector reports this machine's host name.
        self.ursa.attach_host = socket.gethostname()
        self.ursa.start(nbd=True)
        self.ursa.start_attach()
        db = self.mariadb.new_database()
        self.cinder = Cinder(os.path.join(self.base, 'cinder'), db,
                             self.rabbit.url, self.ursa).start()
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self):
        for part in (self.cinder, self.ursa, self.rabbit):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - stop the others too
                    pass

    def logs_tail(self, n=40):
        out = []
        d = self.cinder.base if self.cinder else self.base
        for name in sorted(os.listdir(os.path.join(d, 'log'))) \
                if os.path.isdir(os.path.join(d, 'log')) else []:
            lines = open(os.path.join(d, 'log', name),
                         errors='replace').read().splitlines()
            errs = [ln for ln in lines if ' ERROR ' in ln or 'Traceback'
                    in ln]
            out.append('== %s\n%s' % (name, '\n'.join(errs[-n:])))
        return '\n'.join(out)


def need(commands=(), modules=()):
    """Fail under CI (tools/run-tests installs everything), skip
    elsewhere, when a command, RabbitMQ or a Python module is missing."""
    missing = [t for t in commands if not shutil.which(t) and not
               os.path.exists('/usr/sbin/' + t)]
    if not RabbitMQ.installed():
        missing.append('rabbitmq-server')
    for m in modules:
        # Looked up, not imported: importing nova monkey-patches this
        # process with eventlet.
        if importlib.util.find_spec(m) is None:
            missing.append('%s (pip)' % m)
    if missing:
        unavailable('missing %s' % missing)
