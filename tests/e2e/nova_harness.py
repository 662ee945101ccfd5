"""Real Nova and nova_ha on 127.0.0.1, parts of the end-to-end stack
(harness.Stack): placement, the compute API, conductor, scheduler and
three nova-compute with the fake virt driver (Nova 34 from PyPI), behind
Keystone like every other service, with the stack's Glance and its
Neutron stand-in (tests/e2e/neutron_stub.py); then a nova-ha-agent per
compute host and two nova-ha-evacuators that fence through the Ursa
master.

Traps handled here: Nova 34 ships no nova-api script (``wsgi_serve``
serves its WSGI app); placement-manage needs ``--config-file``;
``FakeDriverWithoutFakeNodes`` (here extended with guests that write:
tests/e2e/virt/ursa_guest.py) with one ``state_path`` per compute, so a
compute can restart as the same node; the Neutron ports API must answer;
evacuation at microversion 2.94 (2.95 brings servers back SHUTOFF); and
Nova deletes the old volume attachment during an evacuation with a
service token (``[service_user]``), which Cinder requires of it."""

import json
import os
import shutil
import signal
import subprocess
import sys

from cinder_ursa.common import auth
from tests.e2e import glance_harness
from tests.e2e import harness
from tests.fixtures.processes import free_port
from tests.fixtures.processes import stop_processes
from tests.fixtures.processes import wait_port
from tests.fixtures.wait import wait_for

# harness imports this module: its names are used at call time only.
VENV_BIN = os.path.dirname(sys.executable)
NOVA_ETC = os.path.join(os.path.dirname(VENV_BIN), 'etc', 'nova')
MICROVERSION = '2.94'


class Nova:
    """placement, nova-api, -conductor, -scheduler and ``computes``
    nova-compute (compute1, compute2, ...)."""

    def __init__(self, base, mariadb, transport_url, keystone, image_url,
                 network_url, computes=3):
        self.base = base
        self.transport_url = transport_url
        self.keystone = keystone
        self.image_url = image_url
        self.network_url = network_url
        self.computes = ['compute%d' % i for i in range(1, computes + 1)]
        self.procs = {}
        # The guests' journals and pid files (tests/e2e/virt/ursa_guest.py).
        self.guest_dir = os.path.join(base, 'guests')
        self.api_port = free_port()
        self.placement_port = free_port()
        self.api_db, self.cell0_db, self.cell1_db, self.placement_db = (
            mariadb.new_database() + '?charset=utf8' for _ in range(4))
        self._session = None

    @property
    def endpoint(self):
        return 'http://127.0.0.1:%d/v2.1' % self.api_port

    @property
    def placement_endpoint(self):
        return 'http://127.0.0.1:%d' % self.placement_port

    def write_config(self):
        b = self.base
        ks = self.keystone
        os.makedirs(os.path.join(b, 'log'), exist_ok=True)
        os.makedirs(self.guest_dir, exist_ok=True)
        with open(os.path.join(b, 'placement.conf'), 'w') as f:
            f.write('[DEFAULT]\ndebug = False\n[api]\n'
                    'auth_strategy = keystone\n[placement_database]\n'
                    'connection = %s\n%s'
                    % (self.placement_db, ks.authtoken_section('placement')))
        with open(os.path.join(b, 'nova.conf'), 'w') as f:
            f.write(f'''[DEFAULT]
transport_url = {self.transport_url}
compute_driver = ursa_guest.UrsaGuestDriver
state_path = {b}/state
my_ip = 127.0.0.1
host = controller
debug = False
instance_usage_audit = False

[api]
auth_strategy = keystone

[api_database]
connection = {self.api_db}

[database]
connection = {self.cell1_db}

[oslo_concurrency]
lock_path = {b}/lock

{ks.authtoken_section('nova')}
[service_user]
send_service_user_token = true
{ks.auth_section('nova')}
[placement]
{ks.auth_section('placement')}
[cinder]
os_region_name = {harness.REGION}
{ks.auth_section('nova')}
[glance]
endpoint_override = {self.image_url}

[neutron]
endpoint_override = {self.network_url}
{ks.auth_section('neutron')}
[scheduler]
discover_hosts_in_cells_interval = 2

[filter_scheduler]
enabled_filters = ComputeFilter

[oslo_messaging_notifications]
driver = noop

[wsgi]
api_paste_config = {b}/api-paste.ini

[os_vif_ovs]
ovsdb_connection =
''')
        # The compute API's WSGI app takes the first config file as its
        # paste configuration: Nova's own, unchanged.
        shutil.copy(os.path.join(NOVA_ETC, 'api-paste.ini'), b)
        for c in self.computes:
            os.makedirs(os.path.join(b, c), exist_ok=True)
            with open(os.path.join(b, '%s.conf' % c), 'w') as f:
                f.write('[DEFAULT]\nhost = %s\nstate_path = %s/%s\n'
                        'instances_path = %s/%s/instances\n'
                        % (c, b, c, b, c))

    def env(self):
        return dict(os.environ, OS_NOVA_CONFIG_DIR=self.base,
                    OS_NOVA_CONFIG_FILES='api-paste.ini;nova.conf',
                    OS_PLACEMENT_CONFIG_DIR=self.base,
                    URSA_GUEST_DIR=self.guest_dir,
                    PYTHONPATH=harness.ROOT)

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
        self.prepare()
        return self.run()

    def prepare(self):
        """Configuration and databases: nothing that needs Keystone."""
        self.write_config()
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

    def run(self):
        """The services, once Keystone knows their users."""
        nconf = os.path.join(self.base, 'nova.conf')
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
        # With a root disk: what a project member may boot from an image
        # (Nova allows zero-disk flavors to admins only, from images).
        self.api('POST', '/flavors', {'flavor': {
            'name': 'small', 'ram': 64, 'vcpus': 1, 'disk': 1, 'id': '2'}})
        return self

    def _hypervisors_mapped(self):
        self._manage('cell_v2', 'discover_hosts')
        return len(self.api('GET', '/os-hypervisors')['hypervisors']) == len(
            self.computes)

    def start_compute(self, name):
        self._spawn(name, [
            sys.executable, '-m', 'tests.e2e.nova_compute', '--config-file',
            os.path.join(self.base, 'nova.conf'), '--config-file',
            os.path.join(self.base, '%s.conf' % name)])

    def guest_journal(self, server_id, volume_id, host):
        """The journal of the guest writer of a server's volume on a
        host (it may not exist yet)."""
        return os.path.join(self.guest_dir, '%s.%s.%s.journal' % (
            server_id, volume_id, host))

    def guest_pids(self, host):
        """{(server id, volume id): pid} of the guest writers running on
        ``host``."""
        d = os.path.join(self.guest_dir, host)
        out = {}
        for name in os.listdir(d) if os.path.isdir(d) else []:
            sid, vid, ext = name.split('.')
            pid = int(open(os.path.join(d, name)).read())
            if ext == 'pid' and _writer_alive(pid):
                out[(sid, vid)] = pid
        return out

    def kill_guests(self):
        """SIGKILL every guest writer (a test's cleanup)."""
        for c in self.computes:
            for pid in self.guest_pids(c).values():
                os.kill(pid, signal.SIGKILL)

    def kill(self, name):
        p = self.procs.pop(name)
        os.killpg(p.pid, 9)
        p.wait()

    def api(self, method, path, body=None):
        """A call of the compute API as Keystone's admin; a failed call
        raises RuntimeError (``wait`` takes it as 'not yet')."""
        if self._session is None:
            self._session = self.keystone.session()
        r = self._session.request(
            self.endpoint + path, method, json=body, raise_exc=False,
            headers={'OpenStack-API-Version': 'compute ' + MICROVERSION})
        if r.status_code >= 400:
            raise RuntimeError('%s %s: %d %s' % (method, path, r.status_code,
                                                 r.text[:2000]))
        return r.json() if r.content else {}

    def services(self):
        return self.api('GET', '/os-services?binary=nova-compute')[
            'services']

    def servers(self):
        return self.api('GET', '/servers/detail?all_tenants=1')['servers']

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
        # Not a graceful shutdown's 20 s and more: a compute's in-progress
        # task that Nova never closes (the destination's side of an
        # aborted live migration) holds it up, and nothing here needs it.
        stop_processes(self.procs.values(), 5, group=True)

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


def _writer_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            argv = f.read()
    except (OSError, IndexError):
        return False
    return state != 'Z' and b'tests.e2e.guest_writer' in argv


class HA:
    """nova-ha-agent on each compute host and two nova-ha-evacuators (one
    leads, the other waits to take over), sharing a MariaDB database and
    the tooz file backend.  They reach Nova as Keystone user ``nova-ha``
    and fence through the Ursa master as principal ``nova-ha`` (role
    nova_ha: fencing and status, nothing else); a fence command also
    logs each fence and when it ran (:meth:`fences`)."""

    EVACUATORS = ('evacuator-a', 'evacuator-b')

    def __init__(self, base, nova, keystone, ursa, db_url):
        self.base = base
        self.nova = nova
        self.keystone = keystone
        self.ursa = ursa
        self.db_url = db_url
        self.procs = {}
        self.conf = os.path.join(base, 'nova-ha.conf')
        self.fence_log = os.path.join(base, 'fenced')
        # tooz: the shipped default (a file backend under state_path,
        # member timeout 8 s), or another one (switch_backend).
        self.backend_url = None
        self.stop_log = os.path.join(base, 'isolation-stops')

    def write_config(self):
        os.makedirs(self.base, exist_ok=True)
        key_file = os.path.join(self.base, 'nova-ha.key')
        if not os.path.exists(key_file):
            key = auth.new_key()
            self.ursa.client().create_principal('nova-ha', 'nova_ha', key)
            auth.write_key_file(key_file, key)
        fence = os.path.join(self.base, 'fence.py')
        with open(fence, 'w') as f:
            # "HOST TIME": nova_ha runs it after the Ursa fence returned
            # (the chunk servers were told), so TIME bounds that.
            f.write('import sys, time\nopen(%r, "a").write("%%s %%f\\n" %% '
                    '(sys.argv[1], time.time()))\n' % self.fence_log)
        stop = os.path.join(self.base, 'stop.py')
        with open(stop, 'w') as f:
            # The agents' isolation response: "NAME UUID TIME" (the fake
            # hypervisor has no virsh; Nova's clean-up stops its guests).
            f.write('import sys, time\nopen(%r, "a").write("%%s %%s %%f\\n"'
                    ' %% (sys.argv[1], sys.argv[2], time.time()))\n'
                    % self.stop_log)
        coordination = ('backend_url = %s' % self.backend_url
                        if self.backend_url else '')
        # Every timing is nova_ha's default (and Nova's: service_down_time
        # 60 s, report_interval 10 s).  The story's second host failure
        # comes a minute or two after the first: a mass-failure window of
        # 30 s keeps them apart (with the default 300 s, two of three
        # hosts failing would pause the evacuator for an operator,
        # rightly).
        with open(self.conf, 'w') as f:
            f.write(f'''[DEFAULT]
state_path = {self.base}

[coordination]
{coordination}

[agent]
stop_instance_command = {sys.executable} {stop} {{name}} {{uuid}}
# (Not a recovery timing: the agents learn within seconds of the boot
# which HA instances their host runs, for the isolation response.)
instances_refresh = 5

[evacuator]
connection = {self.db_url}
mass_failure_window = 30
use_ursa_fencing = True
fence_command = {sys.executable} {fence} {{host}}

[nova]
{self.keystone.auth_section('nova-ha')}
[ursa]
master_url = {','.join(self.ursa.master_urls)}
principal = nova-ha
principal_key_file = {key_file}
''')

    def fences(self):
        """``[(host, time)]`` of the fences the fence command logged."""
        if not os.path.exists(self.fence_log):
            return []
        with open(self.fence_log) as f:
            return [(host, float(t)) for host, t in
                    (line.split() for line in f)]

    def isolation_stops(self):
        """``[(name, uuid, time)]`` of the instances the agents' isolation
        response stopped."""
        if not os.path.exists(self.stop_log):
            return []
        with open(self.stop_log) as f:
            return [(name, uuid, float(t)) for name, uuid, t in
                    (line.split() for line in f)]

    def start(self):
        self.write_config()
        for c in self.nova.computes:
            self.start_agent(c)
        for name in self.EVACUATORS:
            self.start_evacuator(name)
        return self

    def switch_backend(self, url):
        """Every agent and evacuator stopped, then started again on the
        tooz backend ``url`` (the agents of the hosts whose nova-compute
        runs)."""
        stop_processes(self.procs.values())
        self.procs.clear()
        self.backend_url = url
        self.write_config()
        for c in self.nova.computes:
            if c in self.nova.procs:
                self.start_agent(c)
        for name in self.EVACUATORS:
            self.start_evacuator(name)

    def start_evacuator(self, name):
        self._spawn(name, [os.path.join(VENV_BIN, 'nova-ha-evacuator'),
                           '--config-file', self.conf])

    def start_agent(self, host):
        extra = os.path.join(self.base, 'agent-%s.conf' % host)
        with open(extra, 'w') as f:
            # The agent checks the real nova-compute of its host.
            f.write('[agent]\nhost = %s\nnova_compute_process = %s.conf\n'
                    'maintenance_file = %s/maintenance-%s\n'
                    % (host, host, self.base, host))
        self._spawn('agent-' + host, [
            os.path.join(VENV_BIN, 'nova-ha-agent'), '--config-file',
            self.conf, '--config-file', extra])

    def _spawn(self, name, argv):
        log = open(os.path.join(self.base, name + '.log'), 'ab')
        self.procs[name] = subprocess.Popen(argv, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            cwd=harness.ROOT)

    def kill_agent(self, host):
        p = self.procs.pop('agent-' + host)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def cli(self, *args, json_out=True):
        r = subprocess.run([os.path.join(VENV_BIN, 'nova-ha'),
                            '--config-file', self.conf] + list(args)
                           + (['-f', 'json'] if json_out else []),
                           capture_output=True, text=True)
        assert r.returncode == 0, 'nova-ha %s: %s%s' % (
            ' '.join(args), r.stdout, r.stderr)
        return json.loads(r.stdout) if json_out else r.stdout

    def dump(self):
        """Each process's stacks into its log, then the logs' tails."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)
        out = []
        for name in sorted(os.listdir(self.base)):
            if name.endswith('.log'):
                with open(os.path.join(self.base, name)) as f:
                    out.append('== %s\n%s' % (name, f.read()[-3000:]))
        return '\n'.join(out)

    def stop(self):
        stop_processes(self.procs.values())


def create_server(nova, name, host, metadata=None, volume=None):
    """Boot ``name`` on ``host`` with the stubbed image, or from Cinder
    volume ``volume``; no network.  Returns its id."""
    server = {'name': name, 'flavorRef': '1', 'networks': 'none',
              'metadata': metadata or {},
              'availability_zone': 'nova:%s' % host}
    if volume is None:
        server['imageRef'] = glance_harness.IMAGE_ID
    else:
        server['block_device_mapping_v2'] = [{
            'boot_index': 0, 'uuid': volume, 'source_type': 'volume',
            'destination_type': 'volume', 'delete_on_termination': False}]
    return nova.api('POST', '/servers', {'server': server})['server']['id']
