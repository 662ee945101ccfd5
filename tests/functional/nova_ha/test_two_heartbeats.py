"""The evacuator judges compute hosts by two heartbeats, neither of them
Nova's: the agent's tooz membership and its storage heartbeat to a real
Ursa master.  Both lost for the grace period: failed, fenced, evacuated
(Nova never asked).  One lost: degraded, nothing done.  Lost for less
than the grace period: nothing.  Every host's storage heartbeat lost at
once: the mass-failure guard pauses.  A master that does not answer
leaves hosts to the old rule (agent gone and Nova down)."""

import signal
import time

import pytest

from cinder_ursa.client import master as master_mod
from nova_ha import fence
from tests.fixtures import cluster as cluster_fixtures
from tests.fixtures.novaha import HA
from tests.fixtures.novaha import FenceLog
from tests.fixtures.novaha import StorageBeats
from tests.fixtures.novaha import make_conf
from tests.fixtures.novaha import make_evacuator
from tests.fixtures.novaha import recovery_over
from tests.fixtures.novaha import run_until
from tests.fixtures.wait import wait_for

BEAT = 0.2
STORAGE_TIMEOUT = 1.0


@pytest.fixture(scope='module')
def ursa(tmp_path_factory):
    """One master (and a chunk server) for the module; each test names
    hosts of its own."""
    yield from cluster_fixtures.module_cluster(
        tmp_path_factory, 'nova-ha-beats', chunkservers=1)


@pytest.fixture
def beats(ursa):
    b = StorageBeats(ursa.client(), BEAT)
    yield b
    b.close()


def setup(tmp_path, fake_nova, members, ursa, beats, hosts, fences=None,
          **evacuator):
    """Hosts with both heartbeats, and an evacuator judging them by the
    real master."""
    evacuator.setdefault('storage_timeout', STORAGE_TIMEOUT)
    conf = make_conf(tmp_path, fake_nova.url, **evacuator)
    m = members(conf)
    for h in hosts:
        fake_nova.nova.add_host(h)
        m.join(h, storage_heartbeat=BEAT)
    beats.start(*hosts)
    master = ursa.client()
    if fences is None:
        fences = [fence.UrsaFence(master)]
    ev = make_evacuator(conf, fences, storage=master)
    run_until([ev], lambda: all(
        ev.store.hosts().get(h, {}).get('storage') == 'alive'
        for h in hosts), what='every host seen alive')
    return m, ev


def states(ev):
    return {h: (x['state'], x['storage']) for h, x in
            ev.store.hosts().items()}


def poll_for(ev, seconds):
    """Poll as the evacuator does for ``seconds``; every state seen."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ev.step()
        seen.append(states(ev))
        time.sleep(0.1)
    return seen


def test_dead_host_is_failed_on_both_heartbeats_without_nova(
        tmp_path, fake_nova, members, ursa, beats):
    hosts = ('d1', 'd2', 'd3')
    m, ev = setup(tmp_path, fake_nova, members, ursa, beats, hosts)
    n = fake_nova.nova
    vm = n.add_server('vm', 'd1', metadata=HA)
    ev.step()

    # d1 dies: its agent and its storage heartbeat stop.  Nova is never
    # told: its nova-compute stays "up" all along.
    t0 = time.time()
    m.leave('d1')
    beats.stop('d1')
    run_until([ev], recovery_over(ev, 'd1'), what='recovery of d1')
    rec = ev.store.recoveries(host='d1')[0]
    assert rec['state'] == 'done'
    assert rec['fenced_by'].startswith('ursa')
    # The timeline is kept: detected (suspect), fenced, forced down.
    assert t0 < rec['detected_at'] <= rec['fenced_at'] <= \
        rec['disabled_at'] <= rec['finished_at']
    # Suspect once its storage heartbeat was silent for storage_timeout,
    # failed grace_period (1 s) later.
    assert rec['detected_at'] - t0 >= STORAGE_TIMEOUT - BEAT
    assert rec['created_at'] - rec['detected_at'] >= 1.0
    assert n.servers[vm]['OS-EXT-SRV-ATTR:host'] in ('d2', 'd3')
    assert [c['name'] for c in n.evacuate_calls()] == ['vm']
    svc = {s['host']: s for s in n.services.values()}['d1']
    assert svc['forced_down'] and svc['status'] == 'disabled'
    # Its storage heartbeat is now refused as fenced: an agent there
    # would apply its isolation response.
    answer = ursa.client().host_heartbeat('d1', BEAT)
    assert answer['fenced'] and answer['fence_reason'].startswith(
        'nova-ha recovery %d' % rec['id'])
    assert states(ev)['d2'] == ('ok', 'alive')
    ursa.client().unfence_host('d1')


def test_one_heartbeat_lost_is_degraded_never_evacuated(
        tmp_path, fake_nova, members, ursa, beats):
    hosts = ('g1', 'g2', 'g3')
    m, ev = setup(tmp_path, fake_nova, members, ursa, beats, hosts)
    n = fake_nova.nova
    n.add_server('vm1', 'g1', metadata=HA)
    n.add_server('vm2', 'g2', metadata=HA)

    # g1: the agent is gone from the group (and Nova even reports its
    # nova-compute down) but the storage heartbeat goes on.  g2: the
    # storage heartbeat is lost, the agent stays in the group.
    m.leave('g1')
    n.compute_down('g1')
    beats.stop('g2')
    seen = poll_for(ev, STORAGE_TIMEOUT + 1.0 * 3)
    assert seen[-1]['g1'] == ('degraded', 'alive')
    assert seen[-1]['g2'] == ('degraded', 'lost')
    assert 'storage heartbeat alive' in ev.store.hosts()['g1']['note']
    assert 'agent in the group' in ev.store.hosts()['g2']['note']
    assert all(s['g1'][0] != 'suspect' and s['g2'][0] != 'suspect'
               for s in seen)
    assert ev.store.recoveries() == [] and n.evacuate_calls() == []
    assert not ursa.client().host('g1')['fenced']

    # Each back: ok again.
    m.join('g1', storage_heartbeat=BEAT)
    n.compute_up('g1')
    beats.start('g2')
    run_until([ev], lambda: states(ev)['g1'] == ('ok', 'alive') and
              states(ev)['g2'] == ('ok', 'alive'), what='both ok')


def test_heartbeats_lost_for_less_than_the_grace_period_do_nothing(
        tmp_path, fake_nova, members, ursa, beats):
    """A flapping link, a paused agent: both heartbeats stop, then come
    back before the grace period is over, again and again."""
    hosts = ('f1', 'f2', 'f3')
    m, ev = setup(tmp_path, fake_nova, members, ursa, beats, hosts,
                  grace_period=3.0)
    n = fake_nova.nova
    n.add_server('vm', 'f1', metadata=HA)
    suspect = 0
    for _ in range(3):
        m.leave('f1')
        beats.stop('f1')
        seen = poll_for(ev, STORAGE_TIMEOUT + 1.5)
        suspect += any(s['f1'][0] == 'suspect' for s in seen)
        m.join('f1', storage_heartbeat=BEAT)
        beats.start('f1')
        run_until([ev], lambda: states(ev)['f1'] == ('ok', 'alive'),
                  what='f1 ok again')
    # It was suspect each time, and never failed.
    assert suspect == 3
    assert ev.store.recoveries() == [] and n.evacuate_calls() == []
    assert not ursa.client().host('f1')['fenced']


def test_nova_agreeing_skips_the_grace_period(
        tmp_path, fake_nova, members, ursa, beats):
    hosts = ('n1', 'n2', 'n3')
    m, ev = setup(tmp_path, fake_nova, members, ursa, beats, hosts,
                  grace_period=300.0)
    fake_nova.nova.add_server('vm', 'n1', metadata=HA)
    m.leave('n1')
    beats.stop('n1')
    fake_nova.nova.compute_down('n1')
    run_until([ev], recovery_over(ev, 'n1'), timeout=20,
              what='recovery of n1 without waiting 300 s')
    assert ev.store.recoveries(host='n1')[0]['state'] == 'done'
    ursa.client().unfence_host('n1')


def test_every_storage_heartbeat_lost_at_once_trips_the_guard(
        tmp_path, fake_nova, members, ursa, beats):
    """The hosts cannot reach the Ursa master (the evacuator can): their
    agents are in the group, so each is degraded, and so many at once
    pause the evacuator, once.  Meanwhile hosts are judged the old way: a
    host whose agent goes too is not failed while Nova reports it up, and
    once the operator resumed (not undone while the heartbeats stay
    lost), a host Nova reports down too is recovered."""
    hosts = ('s1', 's2', 's3')
    log = FenceLog(tmp_path / 'fenced')
    m, ev = setup(tmp_path, fake_nova, members, ursa, beats, hosts,
                  fences=[log])
    n = fake_nova.nova
    n.add_server('vm', 's1', metadata=HA)
    beats.stop(*hosts)
    run_until([ev], lambda: ev.store.paused(), what='the guard trips')
    reason = ev.store.paused()['reason']
    assert 'storage heartbeats of 3 of 3 hosts' in reason
    assert ev.store.paused()['by'] == 'mass-failure guard'
    assert ev.metrics.guard_trips._value.get() == 1
    m.leave('s1')
    seen = poll_for(ev, STORAGE_TIMEOUT + 2.0)
    assert seen[-1]['s1'] == ('degraded', 'unknown')
    assert ev.store.recoveries() == []
    ev.store.resume()
    poll_for(ev, 1.0)
    assert not ev.store.paused()
    assert ev.metrics.guard_trips._value.get() == 1
    n.compute_down('s1')
    run_until([ev], recovery_over(ev, 's1'), what='recovery of s1')
    assert log.hosts() == ['s1'] and len(n.evacuate_calls()) == 1
    # The heartbeats back: judged again.
    beats.start('s2', 's3')
    run_until([ev], lambda: states(ev)['s2'] == ('ok', 'alive'),
              what='s2 alive again')


def test_a_recovery_held_by_the_guard_is_cancelled_if_its_host_is_back(
        tmp_path, fake_nova, members, ursa, beats):
    hosts = ('h1', 'h2', 'h3')
    log = FenceLog(tmp_path / 'fenced')
    m, ev = setup(tmp_path, fake_nova, members, ursa, beats, hosts,
                  fences=[log])
    n = fake_nova.nova
    n.add_server('vm', 'h1', metadata=HA)
    ev.store.pause('switch upgrade')
    m.leave('h1')
    beats.stop('h1')
    run_until([ev], lambda: ev.store.recoveries(host='h1'),
              what='h1 failed')
    assert ev.store.recoveries(host='h1')[0]['state'] == 'held'
    # Its agent restarts meanwhile (an upgrade that took too long).
    m.join('h1', storage_heartbeat=BEAT)
    beats.start('h1')
    poll_for(ev, 1.0)
    ev.store.resume()
    run_until([ev], lambda: ev.store.recoveries(host='h1')[0]['state']
              == 'cancelled', what='the recovery cancelled')
    rec = ev.store.recoveries(host='h1')[0]
    assert 'back before it was fenced' in rec['message']
    poll_for(ev, 1.0)
    assert states(ev)['h1'] == ('ok', 'alive')
    assert log.hosts() == [] and n.evacuate_calls() == []


def test_an_agent_that_stops_on_purpose_is_judged_the_old_way(
        tmp_path, fake_nova, members, ursa, beats):
    """A last storage heartbeat says the agent stops (a package upgrade,
    systemctl stop): its host is not failed from the silence, only once
    Nova reports its nova-compute down too."""
    hosts = ('p1', 'p2', 'p3')
    log = FenceLog(tmp_path / 'fenced')
    m, ev = setup(tmp_path, fake_nova, members, ursa, beats, hosts,
                  fences=[log])
    n = fake_nova.nova
    n.add_server('vm', 'p1', metadata=HA)
    beats.stop('p1')
    ursa.client().host_heartbeat('p1', BEAT, stopping=True)
    m.leave('p1')
    seen = poll_for(ev, STORAGE_TIMEOUT + 2.0)
    assert seen[-1]['p1'] == ('degraded', 'stopped')
    assert 'stopped on purpose' in ev.store.hosts()['p1']['note']
    assert ev.store.recoveries() == []
    n.compute_down('p1')
    run_until([ev], recovery_over(ev, 'p1'), what='recovery of p1')
    assert log.hosts() == ['p1']


def test_an_unanswering_master_leaves_hosts_to_agent_and_nova(
        tmp_path, fake_nova, members):
    """No storage heartbeat can be judged: a host whose agent left is
    degraded while Nova reports its nova-compute up, failed once Nova
    reports it down (the rule of hosts without a storage heartbeat)."""
    conf = make_conf(tmp_path, fake_nova.url, storage_timeout=1.0)
    n = fake_nova.nova
    m = members(conf)
    for h in ('u1', 'u2', 'u3'):
        n.add_host(h)
        m.join(h, storage_heartbeat=BEAT)
    dead = master_mod.MasterClient(['http://127.0.0.1:9'], b'k' * 32,
                                   timeout=1)
    log = FenceLog(tmp_path / 'fenced')
    ev = make_evacuator(conf, [log], storage=dead)
    n.add_server('vm', 'u1', metadata=HA)
    run_until([ev], lambda: states(ev).get('u3') == ('ok', 'unknown'),
              what='first poll')
    m.leave('u1')
    seen = poll_for(ev, 3.0)
    assert seen[-1]['u1'] == ('degraded', 'unknown')
    assert ev.metrics.storage_up._value.get() == 0
    assert ev.store.recoveries() == []
    n.compute_down('u1')
    run_until([ev], recovery_over(ev, 'u1'), what='recovery of u1')
    assert log.hosts() == ['u1']


def test_a_master_down_and_back_evacuates_nothing(
        tmp_path, fake_nova, members, make_cluster):
    """The Ursa master dies (every host's storage heartbeat stops, and the
    evacuator cannot ask) and comes back: nothing is fenced or evacuated,
    the evacuator says so, and a new master judges no host before it has
    heard them."""
    cluster = make_cluster(1)
    hosts = ('m1', 'm2', 'm3')
    beats = StorageBeats(cluster.client(), BEAT)
    try:
        m, ev = setup(tmp_path, fake_nova, members, cluster, beats, hosts)
        fake_nova.nova.add_server('vm', 'm1', metadata=HA)
        cluster.kill_master()
        seen = poll_for(ev, STORAGE_TIMEOUT * 3)
        assert {s for _, s in seen[-1].values()} == {'unknown'}
        assert ev.metrics.storage_up._value.get() == 0
        # Meanwhile m1's agent goes too: Nova still reports it up, so it
        # is degraded, not failed (the rule of hosts without a storage
        # heartbeat to judge).
        m.leave('m1')
        seen = poll_for(ev, 2.0)
        assert seen[-1]['m1'] == ('degraded', 'unknown')
        m.join('m1', storage_heartbeat=BEAT)
        cluster.start_master()
        run_until([ev], lambda: {s for _, s in states(ev).values()} ==
                  {'alive'}, what='every host alive again')
        seen += poll_for(ev, 1.0)
        assert not any(s[h][0] in ('suspect', 'failed') for s in seen
                       for h in hosts)
        assert ev.store.recoveries() == [] and not ev.store.paused()
        assert fake_nova.nova.evacuate_calls() == []
        assert ev.metrics.storage_up._value.get() == 1
    finally:
        beats.close()


def test_a_master_election_while_hosts_beat_evacuates_nothing(
        tmp_path, fake_nova, members, make_cluster):
    """Two masters; the leader freezes (SIGSTOP) while the hosts beat and
    the evacuator polls, as nova-ha-agent and nova-ha-evacuator talk to
    the masters (one round over them, no wait for the election): no poll
    is held up by the election, the storage heartbeats are unknown while
    nobody leads, the new leader judges nobody before it has heard them,
    and nothing is fenced or evacuated.  The old leader wakes up and
    changes nothing."""
    # The masters' default lease: nobody leads for about 8 s.
    cluster = make_cluster(1, masters=2)
    first, second = cluster.master_urls

    def client():
        return master_mod.MasterClient(list(cluster.master_urls),
                                       cluster.key, timeout=1.0,
                                       failover_wait=0)
    # The first started leads at once.
    wait_for(lambda: cluster.client().cluster_status()['masters'][
        'leader'] == first, 10, 'master 0 leading')
    hosts = ('e1', 'e2', 'e3')
    beats = StorageBeats(client(), BEAT)
    try:
        m, ev = setup(tmp_path, fake_nova, members, cluster, beats, hosts)
        ev.storage = client()
        fake_nova.nova.add_server('vm', 'e1', metadata=HA)
        frozen = cluster.master_procs[0]
        frozen.send_signal(signal.SIGSTOP)
        try:
            steps, seen = [], []
            end = time.monotonic() + 30.0
            while time.monotonic() < end:
                t0 = time.monotonic()
                ev.step()
                steps.append(time.monotonic() - t0)
                seen.append(states(ev))
                if {s for _, s in seen[-1].values()} == {'alive'} and \
                        'unknown' in {s for x in seen for _, s in
                                      x.values()}:
                    break
                time.sleep(0.1)
            assert client().cluster_status()['masters']['leader'] == second
            # Each poll asked every master once: at most the frozen one's
            # timeout and the other's answer, never the election's wait.
            assert max(steps) < 3.0, steps
            assert {s for _, s in seen[-1].values()} == {'alive'}, seen[-1]
            assert not any(x[h][0] in ('suspect', 'failed')
                           for x in seen for h in hosts), seen
        finally:
            frozen.send_signal(signal.SIGCONT)
        seen = poll_for(ev, 2.0)
        assert not any(x[h][0] in ('suspect', 'failed') for x in seen
                       for h in hosts), seen
        assert ev.store.recoveries() == [] and not ev.store.paused()
        assert fake_nova.nova.evacuate_calls() == []
        assert not any(cluster.client().host(h)['fenced'] for h in hosts)
    finally:
        beats.close()
