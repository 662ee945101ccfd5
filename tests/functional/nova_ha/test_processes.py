"""nova_ha as operators run it: the fake Nova, an agent per compute host
and two evacuators, all real processes sharing a tooz file backend and a
SQLite database.  Hosts and evacuators are killed with SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.fixtures.processes import ROOT
from tests.fixtures.processes import free_port
from tests.fixtures.wait import wait_for

HA = {'HA_enabled': 'true'}
BIN = os.path.dirname(sys.executable)


class Stack:
    def __init__(self, base, hosts, step=0.2, grace=1.0, ursa=None):
        self.base = base
        self.hosts = hosts
        self.step = step
        self.grace = grace
        # An Ursa cluster: the agents send storage heartbeats to its
        # master, the evacuators judge them and fence there too.
        self.ursa = ursa
        self.procs = {}
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.fence_log = base / 'fenced'
        self.conf = base / 'nova-ha.conf'

    def start(self, evacuators=2):
        fence = self.base / 'fence.py'
        fence.write_text('import sys\nopen(%r, "a").write(sys.argv[1] + '
                         '"\\n")\n' % str(self.fence_log))
        ursa = ([] if self.ursa is None else [
            '[ursa]', 'master_url = %s' % self.ursa.master_url,
            'cluster_key_file = %s' % self.ursa.key_file])
        self.conf.write_text('\n'.join([
            '[DEFAULT]', 'state_path = %s' % self.base,
            '[coordination]',
            'backend_url = file://%s/coord?timeout=2' % self.base,
            'heartbeat_interval = 0.5',
            '[agent]', 'check_interval = 0.5', 'nova_compute_process =',
            'check_storage = %s' % (self.ursa is not None),
            'storage_heartbeat_interval = 0.3',
            '[evacuator]', 'poll_interval = 0.3',
            'grace_period = %s' % self.grace, 'storage_timeout = 2',
            'fence_command = %s %s {host}' % (sys.executable, fence),
            'use_ursa_fencing = %s' % (self.ursa is not None),
            '[nova]', 'auth_type = none',
            'endpoint_override = %s/v2.1' % self.url, ''] + ursa))
        self._spawn('nova', [sys.executable, '-m', 'tests.fixtures.fakenova',
                             '--port', str(self.port),
                             '--step', str(self.step)])
        self._wait_http()
        for h in self.hosts:
            self.ctl('/_fake/hosts', {'host': h})
            self.start_agent(h)
        for i in range(evacuators):
            self._spawn('ev%d' % i, [os.path.join(BIN, 'nova-ha-evacuator'),
                                     '--config-file', str(self.conf)])
        self.wait(lambda: len([h for h in self.cli('host', 'list')
                               if h['state'] == 'ok']) == len(self.hosts),
                  30, 'every host ok')
        return self

    def start_agent(self, host):
        extra = self.base / ('agent-%s.conf' % host)
        extra.write_text('[agent]\nhost = %s\nmaintenance_file = %s\n' % (
            host, self.base / ('maintenance-%s' % host)))
        self._spawn('agent-' + host, [
            os.path.join(BIN, 'nova-ha-agent'), '--config-file',
            str(self.conf), '--config-file', str(extra)])

    def _spawn(self, name, argv):
        log = open(self.base / ('%s.log' % name), 'ab')
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT,
            cwd=ROOT)

    def _wait_http(self):
        def answers():
            try:
                urllib.request.urlopen(self.url + '/_fake/calls', timeout=1)
                return True
            except OSError:
                return False
        wait_for(answers, 20, 'the fake Nova to start', interval=0.1)

    def ctl(self, path, body=None):
        req = urllib.request.Request(
            self.url + path, method='POST' if body is not None or
            path.endswith(('down', 'up')) else 'GET',
            data=json.dumps(body).encode() if body is not None else None,
            headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
        return json.loads(text) if text else None

    def server(self, name, host, **kw):
        return self.ctl('/_fake/servers', dict(name=name, host=host,
                                               **kw))['id']

    def servers(self):
        return {s['id']: s for s in self.ctl('/_fake/servers')['servers']}

    def calls(self):
        return self.ctl('/_fake/calls')['calls']

    def cli(self, *args):
        r = subprocess.run(
            [os.path.join(BIN, 'nova-ha'), '--config-file', str(self.conf)]
            + list(args) + ['-f', 'json'], capture_output=True, text=True)
        assert r.returncode == 0, 'nova-ha %s failed:\n%s' % (
            ' '.join(args), r.stderr[-2000:])
        return json.loads(r.stdout)

    def agent(self, host):
        return self.procs['agent-' + host]

    def kill_host(self, host):
        """The host dies: its agent with it, and Nova stops hearing from
        its nova-compute."""
        self.procs.pop('agent-' + host).send_signal(signal.SIGKILL)
        self.ctl('/_fake/hosts/%s/down' % host)

    def leader(self):
        return self.cli('status')['leader']

    def wait(self, predicate, timeout, what):
        wait_for(predicate, timeout, lambda: '%s\n%s' % (
            what, self.diagnostics()), interval=0.1)

    def diagnostics(self):
        """What the processes were doing: whether each is alive, and the
        last lines of the evacuators' logs."""
        out = []
        for name, proc in sorted(self.procs.items()):
            rc = proc.poll()
            out.append('%s (pid %d): %s' % (
                name, proc.pid, 'running' if rc is None else 'exit %s' % rc))
        for log in sorted(self.base.glob('ev*.log')):
            lines = log.read_text(errors='replace').splitlines()
            out.append('--- %s' % log.name)
            out.extend(lines[-25:])
        return '\n'.join(out)

    def stop(self):
        """At the test's end: every process killed (its state is thrown
        away; a SIGTERM would wait for each to stop cleanly)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()


@pytest.fixture
def stack(tmp_path):
    stacks = []

    def make(hosts, **kwargs):
        s = Stack(tmp_path, hosts, **kwargs)
        stacks.append(s)
        return s.start()
    yield make
    for s in stacks:
        s.stop()


def _active_elsewhere(stack, ids, host):
    def check():
        srv = stack.servers()
        return all(srv[i]['OS-EXT-SRV-ATTR:host'] != host and
                   srv[i]['status'] == 'ACTIVE' for i in ids)
    return check


def test_killed_host_ha_instances_evacuated_once_in_priority_order(stack):
    s = stack(['c1', 'c2', 'c3', 'c4'])
    ha = [s.server('p%d' % p, 'c1', metadata=dict(HA, HA_priority=str(p)))
          for p in (3, 9, 1, 5)]
    s.server('plain', 'c1')
    s.server('other-host', 'c2', metadata=HA)
    t0 = time.monotonic()
    s.kill_host('c1')
    s.wait(_active_elsewhere(s, ha, 'c1'), 60, 'instances ACTIVE elsewhere')
    elapsed = time.monotonic() - t0
    calls = s.calls()
    assert [c['name'] for c in calls] == ['p9', 'p5', 'p3', 'p1']
    assert s.fence_log.read_text().split() == ['c1']
    s.wait(lambda: s.cli('recovery', 'list')[0]['state'] == 'done', 10,
           'recovery recorded done')
    [rec] = s.cli('recovery', 'list')
    assert (rec['host'], rec['evacuated'], rec['skipped']) == ('c1', 4, 1)
    detail = {r['name']: r for r in s.cli('recovery', 'show',
                                          str(rec['id']))}
    assert detail['plain']['status'] == 'skipped'
    assert {detail['p%d' % p]['attempts'] for p in (1, 3, 5, 9)} == {1}
    hosts = {h['host']: h for h in s.cli('host', 'list')}
    assert hosts['c1']['state'] == 'failed'
    assert hosts['c1']['nova_status'] == 'disabled'
    print('\nhost death -> 4 instances ACTIVE elsewhere: %.1f s '
          '(tooz member timeout 2 s, grace 1 s, poll 0.3 s, fake Nova '
          'step 0.2 s)' % elapsed)
    # Nothing more happens.
    time.sleep(2)
    assert len(s.calls()) == 4


def test_leader_killed_mid_recovery_the_other_finishes_without_duplicates(
        stack):
    s = stack(['c1', 'c2', 'c3'], step=1.0)
    ha = [s.server('vm%d' % i, 'c1', metadata=dict(
        HA, HA_priority=str(20 - i))) for i in range(8)]
    first = s.leader()
    assert first
    s.kill_host('c1')
    s.wait(lambda: len(s.calls()) >= 1, 30, 'the first evacuation')
    pid = int(first.rsplit('-', 1)[1])
    os.kill(pid, signal.SIGKILL)
    s.wait(lambda: s.leader() != first, 30, 'a new leader')
    s.wait(_active_elsewhere(s, ha, 'c1'), 90, 'instances ACTIVE elsewhere')
    s.wait(lambda: s.cli('recovery', 'list')[0]['state'] == 'done', 30,
           'recovery recorded done')
    calls = s.calls()
    assert sorted(c['uuid'] for c in calls) == sorted(ha)
    assert s.fence_log.read_text().split() == ['c1']


def test_three_of_four_hosts_failing_pause_everything(stack):
    s = stack(['c1', 'c2', 'c3', 'c4'])
    for h in ('c1', 'c2', 'c3'):
        s.server('vm-' + h, h, metadata=HA)
    for h in ('c1', 'c2', 'c3'):
        s.kill_host(h)
    s.wait(lambda: len(s.cli('recovery', 'list')) == 3, 30,
           'three recoveries')
    time.sleep(3)
    status = s.cli('status')
    assert status['paused'] is True
    assert status['paused_by'] == 'mass-failure guard'
    assert '3 of 4 compute hosts' in status['paused_reason']
    assert {r['state'] for r in s.cli('recovery', 'list')} == {'held'}
    assert s.calls() == []
    assert not s.fence_log.exists()
    # The operator confirms: the hosts are really down.
    subprocess.run([os.path.join(BIN, 'nova-ha'), '--config-file',
                    str(s.conf), 'resume'], check=True, capture_output=True)
    s.wait(lambda: len(s.calls()) == 3, 30, 'evacuations after resume')
    assert sorted(s.fence_log.read_text().split()) == ['c1', 'c2', 'c3']


def test_a_killed_agent_fails_its_host_without_waiting_for_nova(
        stack, make_cluster):
    """kill -9 of a host's agent stops both of its heartbeats (tooz and
    the storage heartbeat to the Ursa master); Nova is never told the host
    is down, and the host is fenced and evacuated all the same."""
    cluster = make_cluster(1)
    s = stack(['c1', 'c2', 'c3'], ursa=cluster)
    vm = s.server('vm', 'c1', metadata=HA)
    master = cluster.client()
    s.wait(lambda: set(master.host_heartbeats()['hosts']) >= {
        'c1', 'c2', 'c3'}, 30, 'storage heartbeats of every host')
    s.procs.pop('agent-c1').send_signal(signal.SIGKILL)
    s.wait(_active_elsewhere(s, [vm], 'c1'), 60, 'vm ACTIVE elsewhere')
    assert [c['name'] for c in s.calls()] == ['vm']
    assert master.host('c1')['fenced']
    [rec] = s.cli('recovery', 'list')
    assert rec['fenced_by'].startswith('ursa'), rec
    # Nova's own view of c1 was never "down" before nova_ha forced it.
    svc = {x['host']: x for x in s.ctl('/v2.1/os-services')['services']}
    assert svc['c1']['forced_down'] is True


def test_an_agent_paused_for_less_than_the_grace_period_changes_nothing(
        stack, make_cluster):
    """SIGSTOP of a host's agent for longer than its heartbeats' timeouts
    (both lost: suspect) but less than the grace period, then SIGCONT:
    nothing is fenced or evacuated, and the host is ok again."""
    cluster = make_cluster(1)
    s = stack(['c1', 'c2', 'c3'], ursa=cluster, grace=4.0)
    s.server('vm', 'c1', metadata=HA)
    master = cluster.client()
    s.wait(lambda: set(master.host_heartbeats()['hosts']) >= {
        'c1', 'c2', 'c3'}, 30, 'storage heartbeats of every host')
    agent = s.agent('c1')
    agent.send_signal(signal.SIGSTOP)
    try:
        s.wait(lambda: {h['host']: h for h in s.cli('host', 'list')}[
            'c1']['state'] == 'suspect', 20, 'c1 suspect')
    finally:
        agent.send_signal(signal.SIGCONT)
    s.wait(lambda: {h['host']: h for h in s.cli('host', 'list')}[
        'c1']['state'] == 'ok', 20, 'c1 ok again')
    time.sleep(2)
    assert s.calls() == [] and s.cli('recovery', 'list') == []
    assert not master.host('c1')['fenced']
    assert not s.fence_log.exists()
