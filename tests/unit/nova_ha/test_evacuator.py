"""The evacuator against the fake Nova and tooz's file backend, one poll at
a time, in this process (tests/functional/nova_ha/test_evacuator_redis.py
has those on a private redis-server)."""

import time

from tooz import coordination as tooz_coordination

from nova_ha import coordination
from tests.fixtures.novaha import HA
from tests.fixtures.novaha import FenceLog
from tests.fixtures.novaha import fail_host
from tests.fixtures.novaha import join_hosts
from tests.fixtures.novaha import make_conf
from tests.fixtures.novaha import make_evacuator
from tests.fixtures.novaha import recovery_over
from tests.fixtures.novaha import run_until


def test_failed_host_fenced_then_ha_instances_evacuated_by_priority(
        tmp_path, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url)
    m = join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    low = n.add_server('low', 'c1', metadata=dict(HA, HA_priority='1'))
    high = n.add_server('high', 'c1', metadata=dict(HA, HA_priority='9'))
    mid = n.add_server('mid', 'c1', extra_specs={'HA_enabled': 'True',
                                                 'HA_priority': '5'})
    plain = n.add_server('plain', 'c1')
    paused = n.add_server('paused', 'c1', vm_state='paused', metadata=HA)
    stopped = n.add_server('stopped', 'c1', vm_state='stopped', metadata=HA)
    elsewhere = n.add_server('elsewhere', 'c2', metadata=HA)
    log = FenceLog(tmp_path / 'fenced')
    ev = make_evacuator(conf, [log])
    run_until([ev], lambda: ev.store.hosts().get('c3'), what='first poll')
    assert {h['state'] for h in ev.store.hosts().values()} == {'ok'}

    fail_host(fake_nova, m, 'c1')
    run_until([ev], recovery_over(ev, 'c1'), what='recovery of c1')

    rec = ev.store.recoveries(host='c1')[0]
    assert rec['state'] == 'done'
    assert log.hosts() == ['c1']
    assert 'command' in rec['fenced_by']
    calls = [c['name'] for c in n.evacuate_calls()]
    # Priority order; stopped (priority 0) last; each exactly once.
    assert calls == ['high', 'mid', 'low', 'stopped']
    svc = {s['host']: s for s in n.services.values()}['c1']
    assert svc['forced_down'] and svc['status'] == 'disabled'
    assert 'nova-ha' in svc['disabled_reason']
    res = {i['uuid']: i for i in ev.store.instances(rec['id'])}
    for sid in (low, high, mid, stopped):
        assert res[sid]['status'] == 'done'
        assert res[sid]['dest_host'] in ('c2', 'c3')
        assert n.servers[sid]['OS-EXT-SRV-ATTR:host'] == res[sid][
            'dest_host']
    assert n.servers[stopped]['OS-EXT-STS:vm_state'] == 'stopped'
    assert res[plain]['status'] == 'skipped'
    assert 'not HA-enabled' in res[plain]['message']
    assert res[paused]['status'] == 'skipped'
    assert 'vm_state paused' in res[paused]['message']
    assert n.servers[plain]['OS-EXT-SRV-ATTR:host'] == 'c1'
    assert elsewhere not in res
    # Another poll changes nothing: no second recovery, no new call.
    for _ in range(5):
        ev.step()
    assert len(ev.store.recoveries(host='c1')) == 1
    assert len(n.evacuate_calls()) == 4
    ev.close()


def test_policy_all_evacuates_every_evacuable_instance(
        tmp_path, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url, policy='all',
                     reserved_hosts=['c3'])
    m = join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    ids = [n.add_server('vm%d' % i, 'c1') for i in range(3)]
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.step()
    fail_host(fake_nova, m, 'c1')
    run_until([ev], recovery_over(ev, 'c1'), what='recovery of c1')
    assert sorted(c['uuid'] for c in n.evacuate_calls()) == sorted(ids)
    # The reserved host is the target.
    assert {c['target'] for c in n.evacuate_calls()} == {'c3'}
    assert {n.servers[i]['OS-EXT-SRV-ATTR:host'] for i in ids} == {'c3'}
    ev.close()


def test_failure_needs_both_signals_for_the_whole_grace_period(
        tmp_path, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url, grace_period=2.0)
    m = join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    n.add_server('vm', 'c1', metadata=HA)
    n.add_server('vm2', 'c2', metadata=HA)
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.step()
    # Agent gone, nova-compute still up: the agent died, not the host.
    m.leave('c1')
    # nova-compute down, agent alive: the host is up.
    n.compute_down('c2')
    for _ in range(15):
        ev.step()
        time.sleep(0.2)
    hosts = ev.store.hosts()
    assert hosts['c1']['state'] == 'degraded'
    assert hosts['c2']['state'] == 'degraded'
    assert ev.store.recoveries() == []
    # Both signals for c1 now, but the grace period has not run out.
    n.compute_down('c1')
    ev.step()
    assert ev.store.hosts()['c1']['state'] == 'suspect'
    # It comes back within the grace period: nothing happens.
    n.compute_up('c1')
    ev.step()
    assert ev.store.hosts()['c1']['state'] == 'degraded'
    assert ev.store.recoveries() == []
    assert n.evacuate_calls() == []
    n.compute_down('c1')
    run_until([ev], recovery_over(ev, 'c1'), what='recovery of c1')
    rec = ev.store.recoveries(host='c1')[0]
    assert rec['finished_at'] - rec['detected_at'] >= 2.0
    assert [c['name'] for c in n.evacuate_calls()] == ['vm']
    ev.close()


def test_no_fence_no_evacuation(tmp_path, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url)
    m = join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    n.add_server('vm', 'c1', metadata=HA)
    failing = FenceLog(tmp_path / 'tried', fail=True)
    ev = make_evacuator(conf, [failing])
    ev.step()
    fail_host(fake_nova, m, 'c1')
    run_until([ev], lambda: len(failing.hosts()) >= 3,
              what='fence attempts')
    rec = ev.store.recoveries(host='c1')[0]
    assert rec['state'] == 'fencing'
    assert 'exited 1' in rec['message']
    assert n.evacuate_calls() == []
    svc = {s['host']: s for s in n.services.values()}['c1']
    assert not svc['forced_down'] and svc['status'] == 'enabled'
    ev.close()

    # No fence method at all: still nothing, and it says why.
    ev = make_evacuator(conf, [])
    for _ in range(5):
        ev.step()
    rec = ev.store.recoveries(host='c1')[0]
    assert rec['state'] == 'fencing'
    assert 'no fence method' in rec['message']
    assert n.evacuate_calls() == []
    ev.close()

    # Only an explicit fence_required = False evacuates unfenced.
    conf.set_override('fence_required', False, group='evacuator')
    ev = make_evacuator(conf, [])
    run_until([ev], recovery_over(ev, 'c1'), what='recovery of c1')
    assert [c['name'] for c in n.evacuate_calls()] == ['vm']
    assert 'fence_required = False' in ev.store.recoveries(
        host='c1')[0]['fenced_by']
    ev.close()


def test_mass_failure_pauses_until_an_operator_resumes(
        tmp_path, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url)
    m = join_hosts(fake_nova, members, conf, hosts=('c1', 'c2', 'c3', 'c4'))
    n = fake_nova.nova
    for h in ('c1', 'c2', 'c3'):
        n.add_server('vm-' + h, h, metadata=HA)
    log = FenceLog(tmp_path / 'fenced')
    ev = make_evacuator(conf, [log])
    ev.step()
    for h in ('c1', 'c2', 'c3'):
        fail_host(fake_nova, m, h)
    run_until([ev], lambda: len(ev.store.recoveries()) == 3,
              what='three failed hosts')
    for _ in range(10):
        ev.step()
    paused = ev.store.paused()
    assert paused and paused['by'] == 'mass-failure guard'
    assert '3 of 4' in paused['reason']
    assert {r['state'] for r in ev.store.recoveries()} == {'held'}
    assert n.evacuate_calls() == [] and log.hosts() == []
    assert ev.metrics.guard_trips._value.get() == 1
    assert ev.metrics.paused._value.get() == 1
    # The operator checked: the hosts are really dead.
    ev.store.resume()
    run_until([ev], lambda: all(r['state'] == 'done'
                                for r in ev.store.recoveries()),
              what='recoveries after resume')
    assert sorted(log.hosts()) == ['c1', 'c2', 'c3']
    assert sorted(c['name'] for c in n.evacuate_calls()) == [
        'vm-c1', 'vm-c2', 'vm-c3']
    assert {n.servers[s]['OS-EXT-SRV-ATTR:host'] for s in n.servers} == {
        'c4'}
    ev.close()


def _no_room(tmp_path, fake_nova, members, **evacuator):
    """c1 with one HA instance fails; c2, the only other host, is full."""
    conf = make_conf(tmp_path, fake_nova.url, **evacuator)
    m = members(conf)
    n = fake_nova.nova
    n.add_host('c1')
    n.add_host('c2', capacity=0)
    m.join('c1')
    m.join('c2')
    a = n.add_server('a', 'c1', metadata=HA)
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.step()
    fail_host(fake_nova, m, 'c1')
    return n, a, ev


def test_no_room_retries_with_backoff_then_reports_failure(
        tmp_path, fake_nova, members):
    n, a, ev = _no_room(tmp_path, fake_nova, members, max_attempts=2,
                        retry_backoff=0.3)
    run_until([ev], recovery_over(ev, 'c1'), what='recovery of c1')
    rec = ev.store.recoveries(host='c1')[0]
    assert rec['state'] == 'failed'
    [row] = ev.store.instances(rec['id'])
    assert row['status'] == 'failed' and row['attempts'] == 2
    assert 'evacuation error' in row['message']
    assert len(n.evacuate_calls(a)) == 2
    # Nova left it in ERROR on the dead host, as Nova does.
    assert n.servers[a]['OS-EXT-STS:vm_state'] == 'error'
    ev.close()


def test_room_appearing_between_attempts(tmp_path, fake_nova, members):
    n, a, ev = _no_room(tmp_path, fake_nova, members, max_attempts=3,
                        retry_backoff=1.0)
    run_until([ev], lambda: len(n.evacuate_calls(a)) == 1 and
              n.servers[a]['OS-EXT-STS:vm_state'] == 'error',
              what='first attempt failing')
    n.capacity['c2'] = 5
    run_until([ev], recovery_over(ev, 'c1'), what='recovery of c1')
    assert ev.store.recoveries(host='c1')[0]['state'] == 'done'
    assert len(n.evacuate_calls(a)) == 2
    assert n.servers[a]['OS-EXT-SRV-ATTR:host'] == 'c2'
    assert n.servers[a]['OS-EXT-STS:vm_state'] == 'active'
    ev.close()


def test_returned_host_stays_disabled_until_enabled(
        tmp_path, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url)
    m = join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    n.add_server('vm', 'c1', metadata=HA)
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.step()
    fail_host(fake_nova, m, 'c1')
    run_until([ev], recovery_over(ev, 'c1'), what='recovery of c1')
    svc = {s['host']: s for s in n.services.values()}['c1']
    # The host boots again, its agent rejoins: it stays out of service.
    m.join('c1')
    run_until([ev], lambda: ev.store.hosts()['c1']['state'] == 'returned',
              what='c1 returned')
    assert svc['forced_down'] and svc['status'] == 'disabled'
    ev.store.set_host_flag('c1', enable_requested=True)
    for _ in range(3):
        ev.step()
    # Its nova-compute has not cleaned up the evacuated instance yet.
    assert ev.store.hosts()['c1']['state'] == 'returned'
    assert svc['forced_down']
    n.compute_up('c1')
    run_until([ev], lambda: ev.store.hosts()['c1']['state'] == 'ok',
              what='c1 enabled')
    assert not svc['forced_down'] and svc['status'] == 'enabled'
    assert len(n.evacuate_calls()) == 1
    ev.close()


def test_maintenance_host_is_never_evacuated(tmp_path, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url)
    m = join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    n.add_server('vm', 'c1', metadata=HA)
    n.add_server('vm2', 'c2', metadata=HA)
    m.leave('c2')
    m.join('c2', maintenance='kernel upgrade')
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.store.set_host_flag('c1', maintenance=True)
    ev.step()
    fail_host(fake_nova, m, 'c1')
    fail_host(fake_nova, m, 'c2')
    for _ in range(15):
        ev.step()
        time.sleep(0.1)
    hosts = ev.store.hosts()
    assert hosts['c1']['state'] == hosts['c2']['state'] == 'maintenance'
    assert ev.store.recoveries() == [] and n.evacuate_calls() == []
    ev.close()


def test_leader_that_lost_the_backend_leads_again_once_it_is_back(
        tmp_path, fake_nova, members, monkeypatch):
    """A leader that drops the backend hands its lock back: once the
    backend answers again, it (or another evacuator) can lead.  With
    tooz's file driver a lock never released stays taken inside the
    process, and nobody would lead until the process died."""
    conf = make_conf(tmp_path, fake_nova.url)
    join_hosts(fake_nova, members, conf)
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.step()
    assert ev.is_leader
    real = coordination.members

    def lost(coord, group):
        raise tooz_coordination.ToozConnectionError('backend gone')
    monkeypatch.setattr(coordination, 'members', lost)
    ev.step()
    assert not ev.is_leader
    monkeypatch.setattr(coordination, 'members', real)
    other = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')],
                           member_id='other')
    run_until([other], lambda: other.is_leader, what='the other leading')
    other.close()
    run_until([ev], lambda: ev.is_leader, what='the first leading again')
    ev.close()


def test_metrics_are_served_for_prometheus(tmp_path, fake_nova, members):
    import urllib.request

    from tests.fixtures.processes import free_port
    conf = make_conf(tmp_path, fake_nova.url)
    join_hosts(fake_nova, members, conf)
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.step()
    port = free_port()
    server = ev.metrics.serve(port)
    try:
        text = urllib.request.urlopen(
            'http://127.0.0.1:%d/metrics' % port, timeout=10).read().decode()
    finally:
        server.shutdown()
    assert 'nova_ha_leader 1.0' in text
    assert 'nova_ha_hosts{state="ok"} 3.0' in text
    assert 'nova_ha_coordination_up 1.0' in text
    ev.close()
