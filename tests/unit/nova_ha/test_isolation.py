"""The agent's isolation judgement and response, one decision at a time:
when a host takes itself for isolated (both heartbeats silent past the
timeout, and only then), when a fence is nova_ha's, that the response is
applied once, and how the HA instance list is learnt from (the fake)
Nova and kept on disk."""

import sys
import time

from cinder_ursa import exception
from nova_ha import agent as agent_mod
from nova_ha import isolation
from tests.fixtures.novaha import HA
from tests.fixtures.novaha import make_conf


def make_agent(tmp_path, fake_nova=None, storage=True, **agent):
    conf = make_conf(tmp_path, fake_nova.url if fake_nova else None)
    conf.set_override('host', 'c1', group='agent')
    conf.set_override('isolation_timeout', 10.0, group='agent')
    for k, v in agent.items():
        conf.set_override(k, v, group='agent')
    if storage:
        # Never contacted: the tests set what each heartbeat saw.
        conf.set_override('master_url', 'http://127.0.0.1:9', group='ursa')
        conf.set_override('cluster_key', 'k' * 32, group='ursa')
    return agent_mod.Agent(conf)


def silent(beat, seconds, now):
    beat.last_ok = beat.last_reached = now - seconds


def settled(a):
    a._settle_until = 0
    return a


def test_isolated_only_when_both_heartbeats_are_silent_past_the_timeout(
        tmp_path):
    a = settled(make_agent(tmp_path))
    now = time.monotonic()
    # Never reached anything since it started (a site powering up).
    a.network.started = a.storage.started = now - 60
    assert a.isolated(now) is None
    silent(a.network, 1, now)
    silent(a.storage, 60, now)
    assert a.isolated(now) is None           # the network beats
    silent(a.network, 60, now)
    silent(a.storage, 9, now)
    assert a.isolated(now) is None           # the storage beats
    silent(a.storage, 11, now)
    why = a.isolated(now)
    assert why.startswith('isolated: no heartbeat got through for 11 s')
    # A check command that still reaches the network vetoes it.
    a.conf.set_override('isolation_check_command', 'true', group='agent')
    assert a.isolated(now) is None
    a.conf.set_override('isolation_check_command', 'false', group='agent')
    assert a.isolated(now) is not None


def test_a_heartbeat_that_never_got_through_or_is_refused_is_no_isolation(
        tmp_path):
    """A storage heartbeat refused from the start (a wrong principal, an
    older master): the host announces none, and an outage of the
    coordination backend alone is no isolation.  A refusal later is an
    answer: the path to the master works."""
    a = settled(make_agent(tmp_path))
    now = time.monotonic()
    a.storage.started = now - 60
    silent(a.network, 60, now)
    assert a.isolated(now) is None
    assert a.health()['storage_heartbeat'] is None
    silent(a.storage, 60, now)
    assert a.health()['storage_heartbeat'] == a.storage.interval
    assert a.isolated(now) is not None
    a.storage.last_reached = now - 1            # refused, but answered
    assert a.isolated(now) is None
    refused = agent_mod._master_answered
    assert refused(exception.Forbidden(reason='x'))
    assert refused(exception.NotLeader(reason='x'))
    assert not refused(exception.UrsaConnectionError(reason='x'))
    assert not refused(exception.UrsaTimeout(reason='x'))
    assert not refused(OSError('x'))


def test_no_isolation_is_judged_right_after_a_stall_of_the_agent(tmp_path):
    """A SIGSTOP or a frozen host: once it runs again, what its
    heartbeats last saw is old; they get the time to try again before the
    host is judged isolated."""
    a = make_agent(tmp_path)
    now = time.monotonic()
    silent(a.network, 30, now)
    silent(a.storage, 30, now)
    assert a._settle_until > now                # just started
    assert a.isolated(now) is None
    assert a.isolated(a._settle_until + 0.1) is not None


def test_the_default_check_pings_the_default_gateway(tmp_path):
    route = tmp_path / 'route'
    route.write_text(
        'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\n'
        'eth0\t000200C0\t00000000\t0001\t0\t0\t0\n'
        'eth0\t00000000\t010200C0\t0003\t0\t0\t0\n')
    assert isolation.default_gateway(str(route)) == '192.0.2.1'
    route.write_text('Iface\tDestination\tGateway \tFlags\n'
                     'eth0\t000200C0\t00000000\t0001\n')
    assert isolation.default_gateway(str(route)) is None
    assert isolation.default_gateway(str(tmp_path / 'none')) is None
    assert isolation.check_connected('true') is True
    assert isolation.check_connected('false') is False
    assert isolation.check_connected('/nonexistent/command') is False


def test_without_a_storage_heartbeat_a_host_is_never_isolated(tmp_path):
    a = make_agent(tmp_path, storage=False)
    assert a.storage is None
    silent(a.network, 3600, time.monotonic())
    assert a.isolated() is None
    assert a.health()['storage_heartbeat'] is None


def test_only_a_fence_nova_ha_made_is_answered(tmp_path):
    a = make_agent(tmp_path)
    a.storage.answer = {'fenced': False, 'fence_reason': None}
    assert a.fenced() is None
    a.storage.answer = {'fenced': True, 'fence_reason': 'repair, by ops'}
    assert a.fenced() is None
    a.storage.answer = {'fenced': True,
                        'fence_reason': 'nova-ha recovery 4'}
    assert a.fenced() == 'fenced by nova_ha (nova-ha recovery 4)'
    # nova_ha fenced a host an operator had fenced before: the master
    # keeps both reasons, nova_ha's is seen.
    a.storage.answer = {'fenced': True, 'fence_reason':
                        'repair, by ops; nova-ha recovery 5'}
    assert a.fenced() == ('fenced by nova_ha (repair, by ops; nova-ha '
                          'recovery 5)')
    a.storage.answer = {'fenced': True,
                        'fence_reason': 'not a nova-ha recovery'}
    assert a.fenced() is None


def stop_command(tmp_path):
    log = tmp_path / 'stopped'
    script = tmp_path / 'stop.py'
    script.write_text('import sys\nopen(%r, "a").write(sys.argv[1] + " " '
                      '+ sys.argv[2] + "\\n")\nsys.exit(sys.argv[1] == '
                      '"bad")\n' % str(log))
    return '%s %s {name} {uuid}' % (sys.executable, script), log


def test_the_response_is_applied_once_and_again_after_a_return(tmp_path):
    command, log = stop_command(tmp_path)
    a = settled(make_agent(tmp_path, stop_instance_command=command))
    a.responder.instances = [{'uuid': 'u1', 'name': 'db'},
                             {'uuid': 'u2', 'name': 'bad'}]
    now = time.monotonic()
    silent(a.network, 30, now)
    silent(a.storage, 30, now)
    for _ in range(3):
        a._judge()
    # Each HA instance stopped once; one stop command failed (logged).
    assert log.read_text().split('\n')[:-1] == ['db u1', 'bad u2']
    assert a.responded.startswith('isolated')
    # Back, and not fenced: the next isolation is answered again.
    silent(a.storage, 0, time.monotonic())
    silent(a.network, 0, time.monotonic())
    a.storage.answer = {'fenced': False}
    a._judge()
    assert a.responded is None
    silent(a.network, 30, time.monotonic())
    silent(a.storage, 30, time.monotonic())
    a._judge()
    assert len(log.read_text().split('\n')[:-1]) == 4


def test_leave_running_stops_nothing(tmp_path):
    command, log = stop_command(tmp_path)
    a = make_agent(tmp_path, stop_instance_command=command,
                   isolation_response='leave_running')
    a.responder.instances = [{'uuid': 'u1', 'name': 'db'}]
    assert a.responder.respond('isolated') == 'left running'
    assert not log.exists()


def test_ha_instances_are_learnt_from_nova_and_kept(tmp_path, fake_nova):
    n = fake_nova.nova
    n.add_host('c1')
    n.add_host('c2')
    ha = n.add_server('ha', 'c1', metadata=HA)
    flavor = n.add_server('flavor-ha', 'c1',
                          extra_specs={'HA_enabled': 'True'})
    n.add_server('plain', 'c1')
    n.add_server('elsewhere', 'c2', metadata=HA)
    a = make_agent(tmp_path, fake_nova)
    r = a.responder
    assert r.instances is None
    assert r.respond('isolated') == 'nothing known to stop'
    assert r.refresh() is True
    assert sorted(i['uuid'] for i in r.instances) == sorted([ha, flavor])
    assert r.refresh() is False              # not before instances_refresh
    # Kept on disk, per host: a restarted agent knows them at once.
    again = isolation.Responder(a.conf)
    assert again.instances == r.instances
    a.conf.set_override('host', 'c2', group='agent')
    assert isolation.Responder(a.conf).instances is None
    # Nova unreachable: the list known before stands.
    a.conf.set_override('host', 'c1', group='agent')
    a.conf.set_override('endpoint_override', 'http://127.0.0.1:9/v2.1',
                        group='nova')
    cut_off = isolation.Responder(a.conf)
    assert cut_off.refresh(force=True) is True
    assert sorted(i['uuid'] for i in cut_off.instances) == sorted(
        [ha, flavor])


def test_without_nova_the_list_stays_unknown(tmp_path):
    a = make_agent(tmp_path)
    assert not isolation.nova_configured(a.conf)
    assert a.responder.refresh() is False and a.responder.instances is None
