"""The evacuator on a private redis-server (tooz's redis backend): leader
failover in the middle of a recovery, a backend that goes away."""

import pytest

from tests.fixtures.novaha import HA
from tests.fixtures.novaha import FenceLog
from tests.fixtures.novaha import fail_host
from tests.fixtures.novaha import join_hosts
from tests.fixtures.novaha import make_conf
from tests.fixtures.novaha import make_evacuator
from tests.fixtures.novaha import recovery_over
from tests.fixtures.novaha import run_until


@pytest.mark.parametrize('kill_after', [1, 3])
def test_new_leader_finishes_without_duplicates(
        tmp_path, redis_server, fake_nova, members, kill_after):
    """Two evacuators on redis: the leader stops in the middle of a
    recovery; the other takes the lead and finishes it, sending no
    evacuate request twice."""
    conf = make_conf(tmp_path, fake_nova.url, backend_url=redis_server.url)
    m = join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    ids = [n.add_server('vm%d' % i, 'c1', metadata=dict(
        HA, HA_priority=str(10 - i))) for i in range(6)]
    log = FenceLog(tmp_path / 'fenced')
    first = make_evacuator(conf, [log], member_id='ev1')
    second = make_evacuator(conf, [log], member_id='ev2')
    first.step()
    second.step()
    assert first.is_leader and not second.is_leader
    fail_host(fake_nova, m, 'c1')
    # The leader starts the recovery and sends some evacuations...
    run_until([first], lambda: len(n.evacuate_calls()) >= kill_after,
              what='first evacuations')
    # ...then hangs without a word: no more heartbeats, so its leader
    # lock expires in redis.
    first.coord.heart.stop()
    run_until([second], lambda: second.is_leader, what='second leading')
    run_until([second], recovery_over(second, 'c1'),
              what='recovery finished by the new leader')
    rec = second.store.recoveries(host='c1')[0]
    assert rec['state'] == 'done'
    assert sorted(c['uuid'] for c in n.evacuate_calls()) == sorted(ids)
    assert [c['name'] for c in n.evacuate_calls()] == [
        'vm%d' % i for i in range(6)]
    assert log.hosts() == ['c1']
    second.close()


def test_lost_coordination_backend_evacuates_nothing(
        tmp_path, redis_server, fake_nova, members):
    conf = make_conf(tmp_path, fake_nova.url, backend_url=redis_server.url)
    join_hosts(fake_nova, members, conf)
    n = fake_nova.nova
    n.add_server('vm', 'c1', metadata=HA)
    ev = make_evacuator(conf, [FenceLog(tmp_path / 'fenced')])
    ev.step()
    assert ev.is_leader
    redis_server.stop()
    # Every host now looks gone from the group; Nova says c1 is down.
    n.compute_down('c1')
    for _ in range(10):
        ev.step()
    assert not ev.is_leader
    assert ev.metrics.coordination_up._value.get() == 0
    assert ev.store.recoveries() == [] and n.evacuate_calls() == []
