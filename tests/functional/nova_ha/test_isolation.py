"""A compute host cut off by its network: its namespace's link goes down
while every process there runs on (nova-ha-agent, an HA guest and a
guest without HA, both writing Ursa volumes through the client library).
The master, the chunk server, the tooz backend (Redis) and Nova (the
fake) are on the other side.

The host's agent takes itself for isolated and stops its HA guest before
the evacuator's grace period is over; the evacuator fences the host and
evacuates the HA instance, exactly once.  When the link comes back
nothing runs twice: the HA guest stays stopped, the guest left running
has every write refused (the fence), the isolation response is not
applied again, and the instance's new host writes its volume."""

import os
import subprocess
import sys
import time

import pytest

from cinder_ursa.common import auth
from nova_ha import fence
from tests.fixtures import services
from tests.fixtures.cluster import data_client
from tests.fixtures.fakenova import FakeNovaThread
from tests.fixtures.novaha import HA
from tests.fixtures.novaha import Members
from tests.fixtures.novaha import StorageBeats
from tests.fixtures.novaha import make_conf
from tests.fixtures.novaha import make_evacuator
from tests.fixtures.novaha import recovery_over
from tests.fixtures.novaha import run_until
from tests.fixtures.processes import ROOT
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BIN = os.path.dirname(sys.executable)
BEAT = 0.2
STORAGE_TIMEOUT = 2.0
GRACE = 4.0
ISOLATION = 3.0     # between STORAGE_TIMEOUT and STORAGE_TIMEOUT + GRACE


def journal(path):
    """[(block, time, result)] of a guest's journal."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(int(k), float(t), r) for k, t, r in
            (line.split() for line in lines if line.count(' ') == 2)]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (the test's child, not reaped) is dead too.
    with open('/proc/%d/stat' % pid) as f:
        return f.read().split(') ', 1)[1][0] != 'Z'


@pytest.mark.parametrize('cut', ['link', 'drop'])
def test_an_isolated_host_stops_its_ha_guests_and_runs_nothing_twice(
        network, make_ns_cluster, tmp_path, cut):
    """``cut``: the host's link goes down (connections fail at once), or
    every packet to and from it is dropped (they hang until their
    timeouts, as in a real partition)."""
    cluster = make_ns_cluster(1)
    ns, _ = network.add_host('c1')
    there = network.client_address
    redis = services.Redis(tmp_path / 'redis', address=there).start()
    nova = FakeNovaThread(step=0.1, address=there).start()
    procs = []
    beats = None
    try:
        master = cluster.client()
        # The agent signs as its host's principal (it may beat for c1
        # only).
        host_key = tmp_path / 'c1.key'
        key = auth.new_key()
        master.create_principal('c1', 'host', key)
        auth.write_key_file(str(host_key), key)
        for name in ('disk-ha', 'disk-plain'):
            master.create_volume(name, 16 * MiB, chunk_size=4 * MiB,
                                 replicas=1, min_replicas=1)
            master.attach(name, 'c1')
        n = nova.nova
        for h in ('c1', 'c2', 'c3'):
            n.add_host(h)
        vm = n.add_server('vm-ha', 'c1', metadata=HA)
        n.add_server('vm-plain', 'c1')

        backend = redis.url.replace('membership_timeout=2',
                                    'membership_timeout=%d'
                                    % STORAGE_TIMEOUT)
        conf = make_conf(tmp_path, nova.url, backend_url=backend,
                         storage_timeout=STORAGE_TIMEOUT,
                         grace_period=GRACE, poll_interval=0.2)
        stops = tmp_path / 'stopped'
        conf_file = tmp_path / 'agent-c1.conf'
        conf_file.write_text('\n'.join([
            '[DEFAULT]', 'state_path = %s' % (tmp_path / 'c1'),
            '[coordination]', 'backend_url = %s' % backend,
            'heartbeat_interval = %s' % BEAT,
            '[agent]', 'host = c1', 'check_interval = 0.2',
            'nova_compute_process =',
            'storage_heartbeat_interval = %s' % BEAT,
            'isolation_timeout = %s' % ISOLATION,
            'instances_refresh = 0.5',
            'stop_instance_command = %s -m tests.fixtures.ha_guest --stop '
            '%s/{uuid}.pid %s' % (sys.executable, tmp_path, stops),
            '[nova]', 'auth_type = none', 'endpoint_override = %s'
            % nova.url,
            '[ursa]', 'master_url = %s' % cluster.master_url,
            'principal = c1', 'principal_key_file = %s' % host_key, '']))
        os.makedirs(tmp_path / 'c1')

        def spawn(name, argv):
            log = open(tmp_path / ('%s.log' % name), 'ab')
            p = subprocess.Popen(['ip', 'netns', 'exec', ns] + argv,
                                 stdout=log, stderr=subprocess.STDOUT,
                                 cwd=ROOT)
            procs.append(p)
            return p

        agent = spawn('agent-c1', [os.path.join(BIN, 'nova-ha-agent'),
                                   '--config-file', str(conf_file)])
        guests = {}
        for uuid, disk in ((vm, 'disk-ha'), (None, 'disk-plain')):
            key = uuid or 'plain'
            guests[key] = spawn('guest-%s' % disk, [
                sys.executable, '-m', 'tests.fixtures.ha_guest',
                cluster.master_url, cluster.key_file, disk, 'c1',
                str(tmp_path / ('%s.journal' % key)),
                str(tmp_path / ('%s.pid' % key))])

        # c2 and c3 beat from this side; the evacuator judges all three.
        members = Members(conf)
        beats = StorageBeats(master, BEAT)
        for h in ('c2', 'c3'):
            members.join(h, storage_heartbeat=BEAT)
        beats.start('c2', 'c3')
        ev = make_evacuator(conf, [fence.UrsaFence(master)],
                            storage=master)
        run_until([ev], lambda: {h: x['storage'] for h, x in
                                 ev.store.hosts().items()} ==
                  {'c1': 'alive', 'c2': 'alive', 'c3': 'alive'},
                  what='every host alive', timeout=60)
        # The agent knows its HA instance; both guests write.
        known = tmp_path / 'c1' / 'ha-instances-c1.json'
        wait_for(lambda: known.exists() and vm in known.read_text(), 30,
                 'c1 to learn its HA instances', interval=0.2)
        for key in guests:
            path = tmp_path / ('%s.journal' % key)
            wait_for(lambda p=path: any(r == 'ok' for _, _, r in journal(p)),
                     30, '%s guest writing' % key, interval=0.2)

        t_cut = time.time()
        if cut == 'link':
            network.link_down('c1')
        else:
            network.cut('c1')
        run_until([ev], recovery_over(ev, 'c1'), timeout=60,
                  what='recovery of c1')
        rec = ev.store.recoveries(host='c1')[0]
        assert rec['state'] == 'done', rec
        assert rec['fenced_by'].startswith('ursa (2 Ursa lease(s)')
        assert [c['name'] for c in n.evacuate_calls()] == ['vm-ha']
        assert n.servers[vm]['OS-EXT-SRV-ATTR:host'] in ('c2', 'c3')

        # The isolation response stopped the HA guest, before the fence,
        # and left the other one running.
        stopped = stops.read_text().split()
        assert stopped[0] == '%s.pid' % vm and len(stopped) == 2
        t_stopped = float(stopped[1])
        assert t_cut + ISOLATION - 1 < t_stopped < rec['fenced_at'], (
            t_cut, t_stopped, rec['fenced_at'])
        guests[vm].wait(10)
        assert alive(guests['plain'].pid) and agent.poll() is None
        log = (tmp_path / 'agent-c1.log').read_text()
        assert 'isolation response applied: stopped 1 of 1' in log

        # The link comes back.
        if cut == 'link':
            network.link_up('c1')
        else:
            network.heal('c1')
        t_back = time.time()
        wait_for(lambda: 'storage heartbeat gets through again' in (
            tmp_path / 'agent-c1.log').read_text(), 30,
            'c1 to hear from the master again', interval=0.2)
        wait_for(lambda: journal(tmp_path / 'plain.journal')[-1][1] >
                 t_back + 2, 30, 'the plain guest to write again',
                 interval=0.2)
        for _ in range(10):
            ev.step()
            time.sleep(0.2)
        # Nothing ran twice: one evacuation, one stop, the HA guest's
        # journal ends before the fence, and every write the guest left
        # running made since the fence was refused.
        assert [c['name'] for c in n.evacuate_calls()] == ['vm-ha']
        assert stops.read_text().split() == stopped
        assert not alive(guests[vm].pid)
        ha = journal(tmp_path / ('%s.journal' % vm))
        assert ha and ha[-1][1] < rec['fenced_at']
        plain = journal(tmp_path / 'plain.journal')
        after = [r for _, t, r in plain if t > rec['fenced_at']]
        assert after and 'ok' not in after, plain[-10:]
        assert after[-1] == 'Fenced', plain[-10:]
        # Its agent is back: returned, disabled until an operator enables
        # it.
        assert ev.store.hosts()['c1']['state'] == 'returned'

        # The instance's new host writes its volume, and reads every
        # block the HA guest had written.
        dest = n.servers[vm]['OS-EXT-SRV-ATTR:host']
        master.attach('disk-ha', dest)
        with data_client(cluster) as new:
            vol = new.open_volume('disk-ha', holder='%s:1:x' % dest)
            for k, _, r in ha:
                if r == 'ok':
                    assert vol.read(k * 4096, 8) == k.to_bytes(8, 'little')
            vol.write(0, b'n' * 4096)
            vol.flush()
            vol.close()
        ev.close()
        members.close()
    finally:
        if beats is not None:
            beats.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        nova.stop()
        redis.stop()
