"""Real Nova on 127.0.0.1 for nova_ha's end-to-end test: placement, the
compute API, conductor, scheduler and three nova-compute with the fake
virt driver (openstack-notes.md: Nova 34 from PyPI), on a private MariaDB
and RabbitMQ, with stubs for the Glance and Neutron calls Nova makes.

The compute API has no authentication here: a paste filter in place of
keystonemiddleware sets an admin request context, as a keystone token of
an admin would."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from tests.e2e import harness
from tests.e2e import openstack_stubs
from tests.fixtures.processes import free_port
from tests.fixtures.processes import wait_port
from tests.fixtures.wait import wait_for

VENV_BIN = harness.VENV_BIN
NOVA_ETC = os.path.join(harness.VENV, 'etc', 'nova')
MICROVERSION = '2.94'


def admin_context_filter(global_conf, **local_conf):
    def filt(app):
        def middleware(environ, start_response):
            environ['HTTP_X_USER_ID'] = 'admin'
            environ['HTTP_X_PROJECT_ID'] = 'admin'
            environ['HTTP_X_ROLES'] = 'admin,member,reader'
            environ.setdefault('HTTP_X_IDENTITY_STATUS', 'Confirmed')
            # Nova passes the user's token on to Glance and Neutron.
            environ.setdefault('HTTP_X_AUTH_TOKEN', 'admin')
            return app(environ, start_response)
        return middleware
    return filt


class Nova:
    def __init__(self, base, mariadb, transport_url, computes=3):
        self.base = base
        self.mariadb = mariadb
        self.transport_url = transport_url
        self.computes = ['compute%d' % i for i in range(1, computes + 1)]
        self.procs = {}
        self.api_port = free_port()
        self.placement_port = free_port()
        self.stubs = None

    @property
    def endpoint(self):
        return 'http://127.0.0.1:%d/v2.1' % self.api_port

    def _db(self):
        url = self.mariadb.new_database()
        return url + '?charset=utf8'

    def write_config(self):
        b = self.base
        os.makedirs(os.path.join(b, 'log'), exist_ok=True)
        self.stubs = openstack_stubs.Stubs().start()
        self.api_db, self.cell0_db, self.cell1_db, self.placement_db = (
            self._db(), self._db(), self._db(), self._db())
        with open(os.path.join(b, 'placement.conf'), 'w') as f:
            f.write('\n'.join([
                '[DEFAULT]', 'debug = False',
                '[api]', 'auth_strategy = noauth2',
                '[placement_database]',
                'connection = %s' % self.placement_db, '']))
        lines = [
            '[DEFAULT]', 'transport_url = %s' % self.transport_url,
            'compute_driver = fake.FakeDriverWithoutFakeNodes',
            'state_path = %s/state' % b, 'my_ip = 127.0.0.1',
            'host = controller', 'service_down_time = 6',
            'report_interval = 2', 'debug = False',
            'instance_usage_audit = False',
            '[api]', 'auth_strategy = keystone',
            '[api_database]', 'connection = %s' % self.api_db,
            '[database]', 'connection = %s' % self.cell1_db,
            '[oslo_concurrency]', 'lock_path = %s/lock' % b,
            '[placement]', 'auth_type = admin_token', 'token = admin',
            'endpoint_override = http://127.0.0.1:%d' % self.placement_port,
            '[glance]', 'auth_type = admin_token', 'token = admin',
            'endpoint_override = %s' % self.stubs.url,
            '[neutron]', 'auth_type = admin_token', 'token = admin',
            'endpoint_override = %s' % self.stubs.url,
            '[scheduler]', 'discover_hosts_in_cells_interval = 2',
            '[filter_scheduler]', 'enabled_filters = ComputeFilter',
            '[oslo_messaging_notifications]', 'driver = noop',
            '[wsgi]', 'api_paste_config = %s/api-paste.ini' % b,
            '[os_vif_ovs]', 'ovsdb_connection = ',
            '']
        with open(os.path.join(b, 'nova.conf'), 'w') as f:
            f.write('\n'.join(lines))
        paste = open(os.path.join(NOVA_ETC, 'api-paste.ini')).read()
        paste = paste.replace(' authtoken keystonecontext ',
                              ' admincontext keystonecontext ')
        paste += ('\n[filter:admincontext]\npaste.filter_factory = '
                  'tests.e2e.nova_harness:admin_context_filter\n')
        with open(os.path.join(b, 'api-paste.ini'), 'w') as f:
            f.write(paste)
        for c in self.computes:
            os.makedirs(os.path.join(b, c), exist_ok=True)
            with open(os.path.join(b, '%s.conf' % c), 'w') as f:
                f.write('[DEFAULT]\nhost = %s\nstate_path = %s/%s\n'
                        'instances_path = %s/%s/instances\n'
                        % (c, b, c, b, c))

    def env(self):
        env = dict(os.environ, OS_NOVA_CONFIG_DIR=self.base,
                   OS_NOVA_CONFIG_FILES='api-paste.ini;nova.conf',
                   OS_PLACEMENT_CONFIG_DIR=self.base,
                   PYTHONPATH=harness.ROOT)
        return env

    def _manage(self, *args):
        r = subprocess.run([os.path.join(VENV_BIN, 'nova-manage'),
                            '--config-file', os.path.join(self.base,
                                                          'nova.conf')]
                           + list(args), capture_output=True, text=True,
                           env=self.env())
        if r.returncode not in (0, 2) or 'Traceback' in r.stderr:
            raise RuntimeError('nova-manage %s: %s %s' % (
                ' '.join(args), r.stdout, r.stderr[-3000:]))
        return r.stdout

    def _spawn(self, name, argv):
        log = open(os.path.join(self.base, 'log', name + '.log'), 'ab')
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
            cwd=harness.ROOT, start_new_session=True)
        return self.procs[name]

    def start(self):
        self.write_config()
        nconf = os.path.join(self.base, 'nova.conf')
        subprocess.run([os.path.join(VENV_BIN, 'placement-manage'),
                        '--config-file',
                        os.path.join(self.base, 'placement.conf'),
                        'db', 'sync'], check=True, capture_output=True,
                       env=self.env())
        self._manage('api_db', 'sync')
        self._manage('cell_v2', 'map_cell0', '--database_connection',
                     self.cell0_db)
        self._manage('cell_v2', 'create_cell', '--name', 'cell1',
                     '--transport-url', self.transport_url,
                     '--database_connection', self.cell1_db)
        self._manage('db', 'sync')
        p = self._spawn('placement', [
            sys.executable, '-m', 'tests.e2e.wsgi_serve',
            'placement.wsgi.api:application', str(self.placement_port)])
        wait_port(self.placement_port, p, 'placement')
        for svc in ('conductor', 'scheduler'):
            self._spawn('nova-' + svc, [
                os.path.join(VENV_BIN, 'nova-' + svc), '--config-file',
                nconf])
        p = self._spawn('nova-api', [
            sys.executable, '-m', 'tests.e2e.wsgi_serve',
            'nova.wsgi.osapi_compute:application', str(self.api_port)])
        wait_port(self.api_port, p, 'nova-api', timeout=120)
        for c in self.computes:
            self.start_compute(c)
        self.wait(lambda: len([s for s in self.services()
                               if s['state'] == 'up']) == len(self.computes),
                  120, 'every nova-compute up')
        self.wait(self._hypervisors_mapped, 120, 'computes mapped to cell1')
        self.api('POST', '/flavors', {'flavor': {
            'name': 'tiny', 'ram': 64, 'vcpus': 1, 'disk': 0, 'id': '1'}})
        return self

    def _hypervisors_mapped(self):
        self._manage('cell_v2', 'discover_hosts')
        return len(self.api('GET', '/os-hypervisors')['hypervisors']) == len(
            self.computes)

    def start_compute(self, name):
        self._spawn(name, [
            os.path.join(VENV_BIN, 'nova-compute'), '--config-file',
            os.path.join(self.base, 'nova.conf'), '--config-file',
            os.path.join(self.base, '%s.conf' % name)])

    def kill(self, name):
        p = self.procs.pop(name)
        os.killpg(p.pid, 9)
        p.wait()

    def api(self, method, path, body=None):
        req = urllib.request.Request(
            self.endpoint + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={'Content-Type': 'application/json',
                     'OpenStack-API-Version': 'compute ' + MICROVERSION})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError('%s %s: %d %s' % (method, path, e.code,
                                                 e.read()[:2000])) from None
        return json.loads(text) if text else {}

    def services(self):
        return self.api('GET', '/os-services?binary=nova-compute')[
            'services']

    def servers(self):
        return self.api('GET', '/servers/detail?all_tenants=1')['servers']

    def create_server(self, name, metadata=None):
        return self.api('POST', '/servers', {'server': {
            'name': name, 'imageRef': openstack_stubs.IMAGE_ID,
            'flavorRef': '1', 'networks': 'none',
            'metadata': metadata or {}}})['server']['id']

    def wait(self, predicate, timeout, what):
        """Until ``predicate()``; a RuntimeError from it (an API call
        that failed) counts as not yet."""
        def holds():
            try:
                return predicate()
            except RuntimeError:
                return False
        wait_for(holds, timeout, '%s; logs in %s' % (
            what, os.path.join(self.base, 'log')), interval=0.5)

    def stop(self):
        for p in self.procs.values():
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        if self.stubs is not None:
            self.stubs.stop()

    def errors(self, n=30):
        out = []
        d = os.path.join(self.base, 'log')
        for name in sorted(os.listdir(d)):
            lines = open(os.path.join(d, name), errors='replace').read(
            ).splitlines()
            errs = [ln for ln in lines if ' ERROR ' in ln or 'Traceback' in
                    ln or 'Error' in ln]
            out.append('== %s\n%s' % (name, '\n'.join(errs[-n:])))
        return '\n'.join(out)
