"""nova_ha against real Nova: placement, the compute API, conductor,
scheduler and three nova-compute (fake virt driver) from the nova
package, on MariaDB and RabbitMQ.  A compute host dies (nova-compute and
its agent killed with SIGKILL); nova_ha fences it, forces it down and its
HA instances are rebuilt on the other hosts; the host comes back, Nova
cleans up, and ``nova-ha host enable`` puts it back in service."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e import harness
from tests.e2e import nova_harness
from tests.fixtures import services
from tests.fixtures.processes import stop_processes
from tests.fixtures.services import MariaDB

BIN = harness.VENV_BIN


@pytest.fixture(scope='module')
def nova(tmp_path_factory):
    harness.need(('mariadbd', 'epmd'), ('nova', 'placement'))
    base = str(tmp_path_factory.mktemp('nova-e2e'))
    db = MariaDB(os.path.join(base, 'mariadb'))
    os.makedirs(db.base)
    db.start()
    rabbit = services.RabbitMQ(os.path.join(base, 'rabbit')).start()
    n = nova_harness.Nova(os.path.join(base, 'nova'), db, rabbit.url)
    os.makedirs(n.base)
    t0 = time.monotonic()
    try:
        n.start()
        n.start_seconds = time.monotonic() - t0
        yield n
    except Exception:
        print(n.errors())
        raise
    finally:
        for part in (n, rabbit, db):
            try:
                part.stop()
            except Exception as e:  # noqa: BLE001 - stop the others too
                print('stopping %s: %s' % (type(part).__name__, e))


class HA:
    """nova-ha-agent on each compute, one nova-ha-evacuator."""

    def __init__(self, base, nova):
        self.base = base
        self.nova = nova
        self.procs = {}
        self.conf = os.path.join(base, 'nova-ha.conf')
        self.fence_log = os.path.join(base, 'fenced')

    def start(self):
        os.makedirs(self.base, exist_ok=True)
        fence = os.path.join(self.base, 'fence.py')
        with open(fence, 'w') as f:
            f.write('import sys\nopen(%r, "a").write(sys.argv[1] + "\\n")\n'
                    % self.fence_log)
        with open(self.conf, 'w') as f:
            f.write('\n'.join([
                '[DEFAULT]', 'state_path = %s' % self.base,
                '[coordination]',
                'backend_url = file://%s/coord?timeout=3' % self.base,
                'heartbeat_interval = 0.5',
                '[agent]', 'check_interval = 1', 'check_storage = False',
                '[evacuator]', 'poll_interval = 0.5', 'grace_period = 2',
                'fence_command = %s %s {host}' % (sys.executable, fence),
                'use_ursa_fencing = False',
                '[nova]', 'auth_type = none',
                'endpoint_override = %s' % self.nova.endpoint, '']))
        for c in self.nova.computes:
            self.start_agent(c)
        self._spawn('evacuator', [os.path.join(BIN, 'nova-ha-evacuator'),
                                  '--config-file', self.conf])
        return self

    def start_agent(self, host):
        extra = os.path.join(self.base, 'agent-%s.conf' % host)
        with open(extra, 'w') as f:
            # The agent checks the real nova-compute of its host.
            f.write('[agent]\nhost = %s\nnova_compute_process = %s.conf\n'
                    'maintenance_file = %s/maintenance-%s\n'
                    % (host, host, self.base, host))
        self._spawn('agent-' + host, [
            os.path.join(BIN, 'nova-ha-agent'), '--config-file', self.conf,
            '--config-file', extra])

    def _spawn(self, name, argv):
        log = open(os.path.join(self.base, name + '.log'), 'ab')
        self.procs[name] = subprocess.Popen(argv, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            cwd=harness.ROOT)

    def kill_agent(self, host):
        self.procs.pop('agent-' + host).send_signal(signal.SIGKILL)

    def cli(self, *args, json_out=True):
        r = subprocess.run([os.path.join(BIN, 'nova-ha'), '--config-file',
                            self.conf] + list(args)
                           + (['-f', 'json'] if json_out else []),
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout) if json_out else r.stdout

    def stop(self):
        stop_processes(self.procs.values())


def test_dead_compute_instances_rebuilt_elsewhere_through_nova_ha(
        nova, tmp_path):
    print('\nNova up in %.1f s' % nova.start_seconds)
    ha = HA(str(tmp_path / 'ha'), nova).start()
    try:
        _scenario(nova, ha)
    except Exception:
        print(nova.errors())
        for p in ha.procs.values():
            p.send_signal(signal.SIGUSR1)  # stacks into the logs
        time.sleep(1)
        for name in sorted(os.listdir(ha.base)):
            if name.endswith('.log'):
                print('==', name)
                print(open(os.path.join(ha.base, name)).read()[-3000:])
        raise
    finally:
        ha.stop()


def _servers_by_name(nova):
    return {s['name']: s for s in nova.servers()}


def _scenario(nova, ha):
    victim = 'compute1'
    ids = {}
    for name, meta in (('db', {'HA_enabled': 'true', 'HA_priority': '9'}),
                       ('web', {'HA_enabled': 'true', 'HA_priority': '5'}),
                       ('batch', {'HA_enabled': 'true'}),
                       ('scratch', {})):
        ids[name] = nova.api('POST', '/servers', {'server': {
            'name': name, 'imageRef': nova_harness.openstack_stubs.IMAGE_ID,
            'flavorRef': '1', 'networks': 'none', 'metadata': meta,
            'availability_zone': 'nova:%s' % victim}})['server']['id']
    nova.wait(lambda: all(s['status'] == 'ACTIVE' and
                          s['OS-EXT-SRV-ATTR:host'] == victim
                          for s in nova.servers()) and
              len(nova.servers()) == 4, 120, 'servers ACTIVE on compute1')
    nova.wait(lambda: len([h for h in ha.cli('host', 'list')
                           if h['state'] == 'ok']) == 3, 60,
              'nova_ha sees three healthy hosts')

    # compute1 dies.
    t0 = time.monotonic()
    nova.kill(victim)
    ha.kill_agent(victim)

    def evacuated():
        s = _servers_by_name(nova)
        return all(s[n]['status'] == 'ACTIVE' and
                   s[n]['OS-EXT-SRV-ATTR:host'] not in (victim, None)
                   for n in ('db', 'web', 'batch'))
    try:
        nova.wait(evacuated, 120, 'HA instances ACTIVE elsewhere')
    except AssertionError:
        for x in nova.servers():
            print(x['name'], x['status'], x['OS-EXT-SRV-ATTR:host'],
                  x['OS-EXT-STS:task_state'], x.get('fault'))
        raise
    elapsed = time.monotonic() - t0
    print('compute1 killed -> 3 HA instances ACTIVE on other hosts: %.1f s '
          '(Nova service_down_time 6 s, report_interval 2 s; tooz member '
          'timeout 3 s; grace 2 s; poll 0.5 s)' % elapsed)

    s = _servers_by_name(nova)
    assert s['scratch']['OS-EXT-SRV-ATTR:host'] == victim
    with open(ha.fence_log) as f:
        assert f.read().split() == [victim]
    svc = {x['host']: x for x in nova.services()}[victim]
    assert svc['forced_down'] is True and svc['status'] == 'disabled'
    assert 'nova-ha' in svc['disabled_reason']
    migs = nova.api('GET', '/os-migrations?migration_type=evacuation')[
        'migrations']
    assert sorted(m['instance_uuid'] for m in migs) == sorted(
        ids[n] for n in ('db', 'web', 'batch'))
    assert {m['status'] for m in migs} == {'done'}
    ha_wait = nova.wait
    ha_wait(lambda: ha.cli('recovery', 'list')[0]['state'] == 'done', 30,
            'recovery recorded done')
    [rec] = ha.cli('recovery', 'list')
    assert (rec['evacuated'], rec['skipped'], rec['failed']) == (3, 1, 0)
    # Evacuated in priority order: the migration records say so.
    order = [m['instance_uuid'] for m in sorted(migs, key=lambda m: m['id'])]
    assert order[:2] == [ids['db'], ids['web']]

    # The host is repaired: nova-compute and the agent start again.  It
    # stays out of service until an operator enables it.
    nova.start_compute(victim)
    ha.start_agent(victim)
    ha_wait(lambda: {h['host']: h for h in ha.cli('host', 'list')}[
        victim]['state'] == 'returned', 60, 'compute1 returned')
    # Nova's nova-compute destroys the evacuated instances' leftovers and
    # completes their migration records.
    ha_wait(lambda: {m['status'] for m in nova.api(
        'GET', '/os-migrations?migration_type=evacuation')['migrations']}
        == {'completed'}, 60, 'evacuations completed by compute1')
    svc = {x['host']: x for x in nova.services()}[victim]
    assert svc['forced_down'] is True and svc['status'] == 'disabled'
    ha.cli('host', 'enable', victim, json_out=False)
    ha_wait(lambda: {x['host']: x for x in nova.services()}[victim][
        'status'] == 'enabled', 60, 'compute1 enabled')
    svc = {x['host']: x for x in nova.services()}[victim]
    assert svc['forced_down'] is False
    ha_wait(lambda: {x['host']: x for x in nova.services()}[victim][
        'state'] == 'up', 60, 'compute1 up')
    # Its instances were not started twice: each still runs once, where
    # it was evacuated to.
    s = _servers_by_name(nova)
    assert len(s) == 4
    assert all(s[n]['OS-EXT-SRV-ATTR:host'] != victim
               for n in ('db', 'web', 'batch'))
