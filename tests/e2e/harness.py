"""Real OpenStack services on 127.0.0.1 with the Ursa backend, for the
end-to-end tests: a private MariaDB and RabbitMQ, Keystone (fernet tokens,
every service behind keystonemiddleware, as in production), an ursa-aio
cluster with its NBD gateway and attach agent, then cinder-api,
cinder-scheduler, cinder-volume and cinder-backup from the cinder package,
configured as the README tells an operator; Glance (file store) with one
image; Nova (tests/e2e/nova_harness.py) with a Neutron stand-in
(tests/e2e/neutron_stub.py).

Traps handled here: Keystone's WSGI app parses ``sys.argv`` when imported
(``wsgi_serve`` clears it) and hashes passwords with 12 bcrypt rounds
(0.35 s a check here: 4 rounds in tests); each ``openstack`` command costs
3-4 s of interpreter start-up (the client runs in this process, and the
catalog is registered with one keystoneauth session); the scheduler
answers 'No valid backend' until cinder-volume published its
capabilities; quotas; and 'sudo' (a pass-through shim, as rootwrap and
privsep expect one).
"""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent import futures

from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.common import auth
from tests.e2e import glance_harness
from tests.e2e import horizon
from tests.e2e import neutron_stub
from tests.e2e import nova_harness
from tests.fixtures.processes import free_port
from tests.fixtures.processes import stop_processes
from tests.fixtures.processes import wait_port
from tests.fixtures.services import MariaDB
from tests.fixtures.services import RabbitMQ
from tests.fixtures.services import unavailable
from tests.fixtures.wait import wait_for

VENV_BIN = os.path.dirname(sys.executable)
VENV = os.path.dirname(VENV_BIN)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PASSWORD = 'ursa-e2e-secret'    # every user's
MEMBER = 'demo'     # a user with role member in a project of that name
REGION = 'RegionOne'
VOLUME_API = '3.70'


class Keystone:
    """keystone (fernet tokens) on the shared MariaDB, served by
    ``wsgi_serve``; :meth:`register` creates the service users and the
    catalog in one session."""

    def __init__(self, base, db_url):
        self.base = base
        self.db_url = db_url
        self.port = free_port()
        self.proc = None
        self.conf = os.path.join(base, 'keystone.conf')

    @property
    def url(self):
        return 'http://127.0.0.1:%d/v3' % self.port

    def env(self):
        return dict(os.environ, OS_KEYSTONE_CONFIG_DIR=self.base,
                    OS_KEYSTONE_CONFIG_FILES='keystone.conf',
                    PYTHONPATH=ROOT)

    def write_config(self):
        b = self.base
        os.makedirs(os.path.join(b, 'log'), exist_ok=True)
        with open(self.conf, 'w') as f:
            f.write(f'''[DEFAULT]
log_file = {b}/log/keystone.log

[database]
connection = {self.db_url}

[token]
provider = fernet

[fernet_tokens]
key_repository = {b}/fernet-keys

[fernet_receipts]
key_repository = {b}/fernet-keys

[credential]
key_repository = {b}/credential-keys

[identity]
password_hash_rounds = 4

# Keystone's cache, in the process (DevStack's is memcached): without
# it, every call re-reads the roles, assignments and revocation events
# from the database, 0.15-0.3 s a call here against 0.03-0.07 s with
# it; Tempest's dynamic credentials make hundreds of such calls.
[cache]
enabled = true
backend = dogpile.cache.memory
''')

    def manage(self, *args):
        with open(os.path.join(self.base, 'log', 'manage.log'), 'ab') as log:
            subprocess.run([os.path.join(VENV_BIN, 'keystone-manage'),
                            '--config-file', self.conf] + list(args),
                           check=True, env=self.env(), stdout=log,
                           stderr=subprocess.STDOUT, timeout=300)

    def start(self):
        self.write_config()
        self.manage('db_sync')
        for setup in ('fernet_setup', 'credential_setup'):
            self.manage(setup, '--keystone-user', 'root',
                        '--keystone-group', 'root')
        self.manage('bootstrap', '--bootstrap-password', PASSWORD,
                    '--bootstrap-admin-url', self.url,
                    '--bootstrap-public-url', self.url,
                    '--bootstrap-internal-url', self.url,
                    '--bootstrap-region-id', REGION)
        log = open(os.path.join(self.base, 'log', 'keystone.out'), 'ab')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.e2e.wsgi_serve',
             'keystone.wsgi.api:application', str(self.port)],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        wait_port(self.port, self.proc, 'keystone')
        return self

    def session(self, user='admin', project='admin'):
        """A keystoneauth session of ``user`` scoped to ``project``."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3
        return session.Session(auth=v3.Password(
            auth_url=self.url, username=user, password=PASSWORD,
            project_name=project, user_domain_name='Default',
            project_domain_name='Default'))

    def register(self, users, endpoints):
        """Create project ``service`` and role ``service``; each of
        ``users`` (admin and service in project ``service``, as the
        install guides make them); and for each ``(type, name, url)`` of
        ``endpoints`` a service with public, internal and admin
        endpoints."""
        from keystoneclient.v3 import client
        ks = client.Client(session=self.session(), interface='public')
        project = ks.projects.create('service', 'default')
        roles = {r.name: r for r in ks.roles.list()}
        roles['service'] = roles.get('service') or ks.roles.create(
            'service')
        for name in users:
            user = ks.users.create(name, domain='default', password=PASSWORD,
                                   default_project=project)
            for role in ('admin', 'service'):
                ks.roles.grant(roles[role], user=user, project=project)
        for kind, name, url in endpoints:
            svc = ks.services.create(name, type=kind)
            for interface in ('public', 'internal', 'admin'):
                ks.endpoints.create(svc, url, interface=interface,
                                    region=REGION)

    def add_member(self, user, project):
        """Project ``project`` and ``user``, a plain member of it (no
        admin anywhere), as a cloud's end user."""
        from keystoneclient.v3 import client
        ks = client.Client(session=self.session(), interface='public')
        p = ks.projects.create(project, 'default')
        u = ks.users.create(user, domain='default', password=PASSWORD,
                            default_project=p)
        member = [r for r in ks.roles.list() if r.name == 'member'][0]
        ks.roles.grant(member, user=u, project=p)
        return p.id

    def auth_section(self, user):
        """The keystoneauth options of a config section for ``user``."""
        return (f'auth_type = password\nauth_url = {self.url}\n'
                f'username = {user}\npassword = {PASSWORD}\n'
                f'project_name = service\nuser_domain_name = Default\n'
                f'project_domain_name = Default\nregion_name = {REGION}\n')

    def authtoken_section(self, user):
        """``[keystone_authtoken]`` for a service running as ``user`` (no
        memcached: keystonemiddleware caches tokens in the process)."""
        return ('[keystone_authtoken]\nwww_authenticate_uri = %s\n%s'
                % (self.url, self.auth_section(user)))

    def stop(self):
        if self.proc is not None:
            stop_processes([self.proc], 20, group=True)


class OpenStackClient:
    """``openstack ARGS -f json`` as the admin, run in this process: the
    same command-line code without 3-4 s of interpreter start-up each."""

    def __init__(self, keystone):
        self.args = ['--os-auth-url', keystone.url, '--os-username',
                     'admin', '--os-password', PASSWORD,
                     '--os-project-name', 'admin',
                     '--os-user-domain-name', 'Default',
                     '--os-project-domain-name', 'Default',
                     '--os-region-name', REGION,
                     '--os-identity-api-version', '3',
                     '--os-volume-api-version', VOLUME_API]

    def __call__(self, *args, json_out=True):
        from openstackclient import shell
        argv = self.args + list(args) + (['-f', 'json'] if json_out else [])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(
                err):
            rc = shell.main(argv)
        assert rc == 0, 'openstack %s: %s%s' % (
            ' '.join(args), out.getvalue(), err.getvalue())
        text = out.getvalue()
        return json.loads(text) if json_out and text.strip() else text


class Cinder:
    """cinder-api, -scheduler, -volume and -backup with an Ursa backend."""

    SERVICES = ('cinder-api', 'cinder-scheduler', 'cinder-volume',
                'cinder-backup')

    def __init__(self, base, db_url, transport_url, ursa, keystone):
        self.base = base
        self.db_url = db_url
        self.transport_url = transport_url
        self.ursa = ursa
        self.keystone = keystone
        self.port = free_port()
        self._session = None
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
        u = self.ursa
        ks = self.keystone
        with open(self.conf, 'w') as f:
            f.write(f'''[DEFAULT]
auth_strategy = keystone
transport_url = {self.transport_url}
enabled_backends = ursa
my_ip = 127.0.0.1
state_path = {b}/state
log_dir = {b}/log
api_paste_config = {VENV}/etc/cinder/api-paste.ini
resource_query_filters_file = {VENV}/etc/cinder/resource_filters.json
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
backup_driver = cinder_ursa.backup.driver.UrsaBackupDriver
backup_ursa_master_urls = {u.master_url}
backup_ursa_cluster_key_file = {u.key_file}
backup_ursa_chunk_size_mib = 4
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

{ks.authtoken_section('cinder')}
[nova]
{ks.auth_section('nova')}
[glance]
{ks.auth_section('cinder')}''')

    def start(self):
        self.prepare()
        return self.run()

    def prepare(self):
        """Configuration and database: nothing that needs Keystone."""
        self.write_config()
        with open(os.path.join(self.base, 'db-sync.log'), 'wb') as log:
            subprocess.run([os.path.join(VENV_BIN, 'cinder-manage'),
                            '--config-file', self.conf, 'db', 'sync'],
                           check=True, env=self.env(), stdout=log,
                           stderr=subprocess.STDOUT, timeout=300)

    def run(self):
        """The services, once Keystone knows their users."""
        self.write_config()     # again: the Ursa master's URL is known now
        env = self.env()
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
        """A call of Cinder's API as the admin (errors raise)."""
        if self._session is None:
            self._session = self.keystone.session()
        r = self._session.request(
            self.endpoint + path, method, json=body,
            headers={'OpenStack-API-Version': 'volume ' + VOLUME_API})
        return r.json() if r.content else {}

    def wait_pool(self, timeout=120):
        """The scheduler says 'No valid backend' until cinder-volume has
        published its capabilities: wait for the pool."""
        from keystoneauth1 import exceptions as ksa_exc

        def pools():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError('%s exited; see %s' % (dead, self.base))
            try:
                return self.api('GET', '/scheduler-stats/get_pools'
                                '?detail=true')['pools']
            except (ksa_exc.ClientException, ValueError):
                return None
        return wait_for(pools, timeout, 'a Cinder pool; see %s' % self.base,
                        interval=1)

    def stop(self):
        stop_processes(self.procs.values(), 30, group=True)


class AttachHosts:
    """ursa-attach on each compute host, as on a hypervisor: its own
    ``[ursa_attach] host``, mount and state directories, signing as a
    principal named after the host (role ``host``: its own attachments
    and leases, nothing else)."""

    def __init__(self, base, ursa, hosts):
        self.base = base
        self.ursa = ursa
        self.hosts = list(hosts)
        self.procs = {}

    def mount_dir(self, host):
        return os.path.join(self.base, host, 'attached')

    def _conf(self, host):
        d = os.path.join(self.base, host)
        os.makedirs(os.path.join(d, 'state'), exist_ok=True)
        key_file = os.path.join(d, host + '.key')
        if not os.path.exists(key_file):
            key = auth.new_key()
            self.ursa.client().create_principal(host, 'host', key)
            auth.write_key_file(key_file, key)
        conf = os.path.join(d, 'attach.conf')
        with open(conf, 'w') as f:
            f.write(f'''[ursa]
principal = {host}
principal_key_file = {key_file}

[ursa_attach]
host = {host}
mount_dir = {self.mount_dir(host)}
state_dir = {d}/state
poll_interval = 0.2
metrics_port = 0
''')
        return conf

    def start(self):
        for host in self.hosts:
            self.start_host(host)
        return self

    def start_host(self, host):
        conf = self._conf(host)
        endpoint = os.path.join(self.base, host, 'state', 'endpoint.json')
        with contextlib.suppress(FileNotFoundError):
            os.unlink(endpoint)
        log = open(os.path.join(self.base, host, 'attach.log'), 'ab')
        p = self.procs[host] = subprocess.Popen(
            [sys.executable, '-m', 'cinder_ursa.cmd.attach',
             '--config-file', self.ursa.conf_file, '--config-file', conf],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

        def started():
            if p.poll() is not None:
                raise RuntimeError('ursa-attach of %s exited; see %s' % (
                    host, os.path.join(self.base, host, 'attach.log')))
            with contextlib.suppress(FileNotFoundError, ValueError):
                with open(endpoint) as f:
                    return json.load(f).get('pid') == p.pid
        wait_for(started, 60, 'ursa-attach of %s' % host, interval=0.1)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for host, p in self.procs.items():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                subprocess.run(['umount', '-l', self.mount_dir(host)],
                               capture_output=True)


class Stack:
    """The services of the end-to-end tests, started once per test run
    (tests/e2e/conftest.py): MariaDB, RabbitMQ, Keystone, ursa-aio (NBD
    gateway, the attach agent of this host, cinder-backup's), Cinder,
    Glance, the Neutron stand-in, Nova with three computes, ursa-attach
    and nova-ha-agent on each, and two nova-ha-evacuators.  ``timings``
    is how long each part took to start, ``start_seconds`` the whole."""

    def __init__(self, base):
        self.base = base
        self.mariadb = None
        self.rabbit = None
        self.keystone = None
        self.ursa = None
        self.cinder = None
        self.neutron = None
        self.glance = None
        self.nova = None
        self.ha = None
        self.attach = None
        self.horizon = None
        self.timings = {}
        self.start_seconds = None

    def _timed(self, name, fn):
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            self.timings[name] = time.monotonic() - t0

    def _together(self, **parts):
        """Run each part (a callable) in a thread of its own and wait for
        all: independent start-ups overlap their waits."""
        with futures.ThreadPoolExecutor(len(parts)) as pool:
            running = {name: pool.submit(self._timed, name, fn)
                       for name, fn in parts.items()}
            return {name: f.result() for name, f in running.items()}

    def start(self):
        t0 = time.monotonic()
        self.mariadb = MariaDB(os.path.join(self.base, 'mariadb'))
        os.makedirs(self.mariadb.base)
        self.rabbit = RabbitMQ(os.path.join(self.base, 'rabbit'))
        self._together(mariadb=self.mariadb.start, rabbitmq=self.rabbit.start)
        self.keystone = Keystone(os.path.join(self.base, 'keystone'),
                                 self.mariadb.new_database())
        os.makedirs(self.keystone.base)
        self.ursa = AllInOne(os.path.join(self.base, 'ursa'), 3,
                             port_base=0, server_timeout=5.0)
        # cinder-backup's connector reports this machine's host name.
        self.ursa.attach_host = socket.gethostname()
        self.cinder = Cinder(os.path.join(self.base, 'cinder'),
                             self.mariadb.new_database(), self.rabbit.url,
                             self.ursa, self.keystone)
        self.neutron = neutron_stub.NeutronStub().start()
        self.glance = glance_harness.Glance(
            os.path.join(self.base, 'glance'), self.mariadb.new_database(),
            self.keystone)
        os.makedirs(self.glance.base)
        self.nova = nova_harness.Nova(
            os.path.join(self.base, 'nova'), self.mariadb, self.rabbit.url,
            self.keystone, self.glance.url, self.neutron.url)
        self.ha = nova_harness.HA(os.path.join(self.base, 'nova-ha'),
                                  self.nova, self.keystone, self.ursa,
                                  self.mariadb.new_database())
        self.attach = AttachHosts(os.path.join(self.base, 'hosts'),
                                  self.ursa, self.nova.computes)
        # The databases fill while Keystone and Ursa start; the services
        # start once Keystone knows their users (and the attach agents,
        # which Cinder's and Nova's attachments need, run).
        self.horizon = horizon.Horizon(os.path.join(self.base, 'horizon'),
                                       self.keystone)
        self._together(keystone=self._start_keystone, ursa=self._start_ursa,
                       cinder_db=self.cinder.prepare,
                       nova_db=self.nova.prepare,
                       glance_db=self.glance.prepare,
                       horizon_static=self.horizon.prepare)
        self._together(cinder=self.cinder.run, nova=self.nova.run,
                       glance=self.glance.run, horizon=self.horizon.run)
        # The volume type users choose, as DevStack makes it.
        self.cinder.api('POST', '/types', {'volume_type': {
            'name': 'ursa', 'extra_specs': {'volume_backend_name': 'ursa'}}})
        self._timed('nova-ha', self.ha.start)
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_keystone(self):
        self.keystone.start()
        self.keystone.register(
            users=('cinder', 'nova', 'placement', 'neutron', 'glance',
                   'nova-ha'),
            endpoints=[
                ('volumev3', 'cinderv3', self.cinder.endpoint),
                ('block-storage', 'cinder', self.cinder.endpoint),
                ('compute', 'nova', self.nova.endpoint),
                ('placement', 'placement', self.nova.placement_endpoint),
                ('image', 'glance', self.glance.url),
                ('network', 'neutron', self.neutron.url)])
        self.keystone.add_member(MEMBER, MEMBER)

    def _start_ursa(self):
        self.ursa.start(nbd=True)
        self.ursa.start_attach()
        self.attach.start()

    def report(self):
        """The start-up time, whole and by part."""
        return 'stack started in %.1f s (%s)' % (
            self.start_seconds, ', '.join(
                '%s %.1f s' % kv for kv in self.timings.items()
                if not kv[0].startswith('stop-')))

    def stop(self):
        """Stop every part, in three waves of parts stopped together (each
        may wait out a graceful shutdown): the services, then the attach
        agents (which flush what they hold open to Ursa) and Keystone,
        then Ursa, the message queue and the database."""
        def stopper(part):
            def stop():
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - stop the others too
                    pass
            return stop
        for wave in ((self.horizon, self.ha, self.nova, self.cinder,
                      self.glance, self.neutron),
                     (self.attach, self.keystone),
                     (self.ursa, self.rabbit, self.mariadb)):
            parts = {'stop-%s' % type(part).__name__.lower(): stopper(part)
                     for part in wave if part is not None}
            if parts:
                self._together(**parts)

    def logs_tail(self, n=40):
        """The errors in each part's logs, for a failed test's report."""
        out = []
        if self.nova is not None and os.path.isdir(
                os.path.join(self.nova.base, 'log')):
            out.append(self.nova.errors(n))
        if self.horizon is not None:
            out.append(self.horizon.errors(n))
        if self.ha is not None and os.path.isdir(self.ha.base):
            out.append(self.ha.dump())
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
