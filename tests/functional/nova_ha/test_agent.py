"""nova-ha-agent's health report, as the evacuator reads it from tooz."""

import subprocess
import sys
import threading

from nova_ha import agent as agent_mod
from nova_ha import coordination
from tests.fixtures.novaha import make_conf
from tests.fixtures.wait import wait_for


def test_health_checks_and_maintenance_reach_the_group(tmp_path):
    conf = make_conf(tmp_path)
    conf.set_override('host', 'c7', group='agent')
    conf.set_override('check_interval', 0.1, group='agent')
    conf.set_override('check_storage', False, group='agent')
    conf.set_override('nova_compute_process', 'nova-compute-c7',
                      group='agent')
    conf.set_override('hypervisor_check_command', 'false', group='agent')
    agent = agent_mod.Agent(conf)
    caps = agent.health()
    assert caps['checks'] == {'nova_compute': False, 'hypervisor': False,
                              'storage': None}
    assert caps['healthy'] is False and caps['maintenance'] is None

    # A process with that command line, a hypervisor that answers.
    proc = subprocess.Popen([sys.executable, '-c',
                             'import time; time.sleep(60)',
                             'nova-compute-c7'])
    conf.set_override('hypervisor_check_command', 'true', group='agent')
    t = threading.Thread(target=agent.run)
    t.start()
    observer = coordination.start(conf, 'observer')
    try:
        def seen():
            return coordination.members(observer,
                                        conf.coordination.group).get('c7')
        wait_for(lambda: (seen() or {}).get('healthy'), 10,
                 lambda: 'a healthy report, not %s' % seen(), interval=0.1)
        assert seen()['checks']['nova_compute'] is True
        # Maintenance announced through the file reaches the group (the
        # file driver cannot update capabilities: the agent rejoins).
        (tmp_path / 'maintenance').write_text('BIOS upgrade\n')
        wait_for(lambda: (seen() or {}).get('maintenance') == 'BIOS upgrade',
                 20, lambda: 'the maintenance, not %s' % seen(),
                 interval=0.1)
        proc.kill()
        proc.wait()
        wait_for(lambda: (seen() or {}).get('healthy') is False, 20,
                 lambda: 'an unhealthy report, not %s' % seen(),
                 interval=0.1)
        assert seen()['checks']['nova_compute'] is False
    finally:
        proc.kill()
        agent.stop()
        t.join(10)
        # A stopped agent leaves the group at once.
        assert 'c7' not in coordination.members(observer,
                                                conf.coordination.group)
        observer.stop()


def test_an_agent_dropped_from_the_group_joins_again(tmp_path):
    """etcd3 and ZooKeeper drop a member whose lease or session expired
    during an outage while its later heartbeats succeed: the agent must
    notice it is out of the group and join again (its host would stay
    'degraded', one storage blip away from being fenced alive)."""
    conf = make_conf(tmp_path)
    conf.set_override('host', 'c8', group='agent')
    conf.set_override('check_interval', 0.1, group='agent')
    conf.set_override('check_storage', False, group='agent')
    conf.set_override('nova_compute_process', '', group='agent')
    agent = agent_mod.Agent(conf)
    t = threading.Thread(target=agent.run)
    t.start()
    observer = coordination.start(conf, 'observer')
    try:
        group = conf.coordination.group
        wait_for(lambda: 'c8' in coordination.members(observer, group), 10,
                 'c8 in the group', interval=0.1)
        # Its membership goes, as an expired lease takes it: removed by
        # another client under the same member id.
        dropper = coordination.start(conf, 'c8', heart=False)
        dropper.leave_group(group.encode()).get()
        dropper.stop()
        wait_for(lambda: 'c8' in coordination.members(observer, group), 10,
                 'c8 back in the group', interval=0.1)
    finally:
        agent.stop()
        t.join(10)
        observer.stop()
