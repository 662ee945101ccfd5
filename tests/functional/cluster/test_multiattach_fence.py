"""Fencing or detaching one host of a multiattach volume stops that host's
writes only, with real processes: one cluster, two hypervisors (two
ursa-attach, hosts ``host-a`` and ``host-b``, FUSE: root and /dev/fuse),
and a "guest" on each writing numbered 4 KiB blocks with an fsync each
into ranges of its own, every result journaled
(``tests/e2e/guest_writer.py``).

The master fences host-a (``fence_host``, as nova_ha does), or detaches
it (its agent left running: what the Cinder driver asks of a host that
did not let go): from then on none of host-a's writes succeeds, and none
of the blocks it wrote after the master answered lands; host-b's guest
sees no error (its writer is re-admitted at the new lease generation:
its first write refused as fenced asks the master, and is sent again),
and every block it wrote reads back.  The lease history passes
``lease_history.check`` and ``ursa volume check --deep`` finds nothing.
host-b's longest write (pwrite and fsync) around the fence is printed
(``pytest -s``)."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cinder_ursa.client import check
from cinder_ursa.protocol import lease_history
from tests.e2e import guest_writer
from tests.fixtures.attach import attached
from tests.fixtures.attach import read_blocks
from tests.fixtures.cluster import data_client
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
BLOCK = guest_writer.BLOCK
A, B = 'host-a', 'host-b'
HOLDER_A, HOLDER_B = 'ursa-attach@' + A, 'ursa-attach@' + B
# Where each guest writes (its first block): apart.
FIRST = {A: 0, B: 8192}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))


class Guest:
    """tests/e2e/guest_writer.py writing through ``path`` from block
    ``first`` on, every 10 ms, into ``journal``."""

    def __init__(self, path, first, journal):
        self.journal = journal
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.e2e.guest_writer', path, journal,
             '--first', str(first), '--interval', '0.01'],
            env=env, stderr=subprocess.PIPE, text=True)

    def entries(self):
        return guest_writer.Journal(self.journal).entries

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        err = self.proc.stderr.read()
        assert self.proc.returncode == 0, err[-2000:]
        return self.entries()


@pytest.fixture
def two_hosts(make_cluster):
    """A cluster with ursa-attach for host-a (the cluster's own agent)
    and host-b, and volume 'shared' (multiattach) attached to both:
    (cluster, {host: path of the volume's file there})."""
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('ursa-attach needs root and /dev/fuse')
        pytest.skip('ursa-attach needs root and /dev/fuse')
    c = make_cluster(3)
    top = tempfile.mkdtemp(prefix='ursa-multiattach-')
    try:
        c.attach_host = A
        c.attach_dir = os.path.join(top, A)
        c.write_config()
        c.start_attach()
        c.start_attach(B, os.path.join(top, B))
        master = c.client()
        master.create_volume('shared', 64 * MiB, chunk_size=4 * MiB,
                             multiattach=True)
        paths = {}
        for host in (A, B):
            master.attach('shared', host)
        for host in (A, B):
            paths[host] = attached(master, 'shared', host)['path']
        yield c, paths
    finally:
        c.stop(kill=True)
        for d in (A, B):
            if os.path.isdir(os.path.join(top, d)):
                os.rmdir(os.path.join(top, d))
        os.rmdir(top)


def ok(entries):
    return [e for e in entries if e[4] == 'ok']


def cut_off(c, tmp_path, how):
    """Both guests write; the master ``how``s host-a ('fence' or
    'detach'); both go on for a while.  Checks everything the module
    says, and returns host-b's longest write around the cut."""
    cluster, paths = c
    master = cluster.client()
    guests = {h: Guest(paths[h], FIRST[h], str(tmp_path / ('%s.journal'
                                                             % h)))
              for h in (A, B)}
    try:
        wait_for(lambda: all(len(ok(g.entries())) >= 100
                             for g in guests.values()), 60,
                 'both guests writing')
        t0 = time.time()
        if how == 'fence':
            result = master.fence_host(A, reason='test: host-a lost')
            (f,) = result['fenced']
            assert f['readmitted'] == [HOLDER_B]
        else:
            master.detach('shared', A)
        t1 = time.time()
        # Both keep trying: host-b's guest writes on, host-a's fails.
        wait_for(lambda: len([e for e in guests[B].entries()
                              if e[1] > t1]) >= 100 and
                 len([e for e in guests[A].entries() if e[1] > t1]) >= 20,
                 60, 'both guests trying after the %s' % how)
    finally:
        journals = {h: g.stop() for h, g in guests.items()}
    a, b = journals[A], journals[B]

    # host-b: not one error, before, around or after the cut.
    assert [e for e in b if e[4] != 'ok'] == []
    around = [e for e in b if t0 - 0.5 <= e[1] <= t1 + 2.0]
    worst = max(e[3] - e[1] for e in around)
    worst_before = max(e[3] - e[1] for e in b if e[1] < t0 - 0.5)
    # host-a: every write begun once the master answered failed, and
    # none of those blocks landed.
    late = [e for e in a if e[1] >= t1]
    assert late and [e for e in late if e[4] == 'ok'] == []
    seen = read_blocks(paths[B], [e[0] for e in a] + [e[0] for e in b])
    assert [e[0] for e in late if seen[e[0]] != bytes(BLOCK)] == []
    # Everything acknowledged (fsynced) reads back: host-b's all, and
    # host-a's from before the cut.
    assert {e[0]: seen[e[0]] for e in ok(b)} == {
        e[0]: guest_writer.block(e[0]) for e in ok(b)}
    early = [e for e in ok(a) if e[3] < t0]
    assert len(early) >= 100
    assert {e[0]: seen[e[0]] for e in early} == {
        e[0]: guest_writer.block(e[0]) for e in early}

    events = master.lease_history('shared')
    assert lease_history.check(events, shared_ok=True) == []
    ends = [(e['event'], e['holder'], e['reason']) for e in events
            if e['generation'] == 1 and e['event'] not in ('share',)]
    why = ('host %s fenced: test: host-a lost' % A if how == 'fence'
           else 'detached from host %s' % A)
    assert ends == [('fence' if how == 'fence' else 'revoke', HOLDER_A,
                     why),
                    ('leave', HOLDER_B, 're-admitted at generation 2: %s'
                     % why)]
    assert (events[-1]['event'], events[-1]['generation'],
            events[-1]['holder']) == ('share', 2, HOLDER_B)
    lease = master.volume('shared')['lease']
    assert lease['generation'] == 2
    vid = master.volume('shared')['id']
    with data_client(cluster) as cl:
        report = cl.run(lambda x: check.check_volume(x, vid, deep=True))
    assert report['problems'] == [], report
    with open(os.path.join(cluster.data_dir, 'attach-%s.log' % B)) as f:
        log = f.read()
    assert 're-admitted at lease generation 2' in log
    assert 'Traceback' not in log
    return (worst, worst_before, len(ok(b)), len(late),
            sum(1 for e in b if t0 <= e[1] <= t1 + 2.0))


def test_fencing_one_host_stops_its_writes_only(two_hosts, tmp_path):
    worst, before, n, late, during = cut_off(two_hosts, tmp_path, 'fence')
    print('\nmultiattach, host-a fenced: host-b\'s guest wrote %d blocks '
          'with no error; its longest write (pwrite and fsync) from 0.5 s '
          'before the fence to 2 s after was %.3f s (%d writes; before: '
          '%.3f s at most); host-a\'s %d writes after the fence all '
          'failed' % (n, worst, during, before, late))
    assert worst < 5.0


def test_detaching_one_host_stops_its_writes_only(two_hosts, tmp_path):
    worst, before, n, late, during = cut_off(two_hosts, tmp_path, 'detach')
    print('\nmultiattach, host-a detached by the master: host-b\'s guest '
          'wrote %d blocks with no error; its longest write around the '
          'detach was %.3f s (before: %.3f s at most); host-a\'s %d '
          'writes after it all failed' % (n, worst, before, late))
    assert worst < 5.0
