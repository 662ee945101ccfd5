"""ursa-aio's Supervisor: children that exit are restarted after a delay
that doubles while they keep failing and starts over once one ran long
enough; every exit and restart is reported."""

import io
import signal

from cinder_ursa.cmd.allinone import Supervisor


class Proc:
    def __init__(self):
        self.returncode = None

    def poll(self):
        return self.returncode


class Launcher:
    """Stands in for AllInOne: children by name, restart() replaces one
    (or fails, as a child that exits at once does)."""

    data_dir = '/data'

    def __init__(self, names):
        self.procs = {n: Proc() for n in names}
        self.fail = set()
        self.restarted = []
        self.stop = False

    def stopping(self):
        return self.stop

    def children(self):
        return dict(self.procs)

    def restart(self, name):
        self.restarted.append(name)
        self.procs[name] = Proc()
        if name in self.fail:
            self.procs[name].returncode = 1
            raise RuntimeError('%s exited with status 1' % name)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(names=('ursa-master', 'ursa-chunkserver 0', 'ursa-nbd')):
    aio, clock, out = Launcher(names), Clock(), io.StringIO()
    return aio, clock, out, Supervisor(aio, out, clock)


def test_a_killed_child_is_restarted_after_the_first_delay():
    aio, clock, out, sup = make()
    sup.poll()
    aio.procs['ursa-chunkserver 0'].returncode = -signal.SIGKILL
    clock.now += 5
    sup.poll()
    assert aio.restarted == []
    assert ('ursa-chunkserver 0 exited (killed by SIGKILL) after 5 s; '
            'restarting it in 1 s') in out.getvalue()
    clock.now += 0.5
    sup.poll()
    assert aio.restarted == []
    clock.now += 0.5
    sup.poll()
    assert aio.restarted == ['ursa-chunkserver 0']
    assert 'ursa-chunkserver 0 restarted (restart 1)' in out.getvalue()
    sup.poll()  # running again: nothing more to do
    assert aio.restarted == ['ursa-chunkserver 0']


def test_a_child_that_keeps_failing_waits_twice_as_long_each_time():
    aio, clock, out, sup = make(['ursa-nbd'])
    aio.fail.add('ursa-nbd')
    sup.poll()
    aio.procs['ursa-nbd'].returncode = 1
    delays = []
    for _ in range(8):
        sup.poll()
        due = sup._due['ursa-nbd']
        delays.append(due - clock.now)
        clock.now = due
        sup.poll()          # restarts it; it fails at once
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert aio.restarted == ['ursa-nbd'] * 8
    assert 'ursa-nbd did not start again' in out.getvalue()


def test_a_child_that_ran_long_enough_starts_over_at_the_first_delay():
    aio, clock, out, sup = make(['ursa-master'])
    sup.poll()
    for _ in range(3):       # three quick failures: 1, 2, 4 s
        aio.procs['ursa-master'].returncode = 1
        sup.poll()
        clock.now = sup._due['ursa-master']
        sup.poll()
    clock.now += Supervisor.STABLE_AFTER
    aio.procs['ursa-master'].returncode = 0
    sup.poll()
    assert sup._due['ursa-master'] - clock.now == Supervisor.FIRST_DELAY
    assert 'ursa-master exited (status 0)' in out.getvalue()


def test_each_child_has_its_own_backoff():
    aio, clock, out, sup = make()
    sup.poll()
    aio.procs['ursa-master'].returncode = 1
    aio.procs['ursa-nbd'].returncode = -signal.SIGTERM
    sup.poll()
    clock.now += 1
    sup.poll()
    assert sorted(aio.restarted) == ['ursa-master', 'ursa-nbd']
    assert 'ursa-nbd exited (killed by SIGTERM)' in out.getvalue()


def test_nothing_is_restarted_once_a_stop_is_asked_for():
    aio, clock, out, sup = make()
    sup.poll()
    aio.procs['ursa-master'].returncode = 1
    aio.procs['ursa-nbd'].returncode = 1
    sup.poll()
    aio.stop = True
    clock.now += 5
    sup.poll()
    assert aio.restarted == []
