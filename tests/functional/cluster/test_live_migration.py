"""A live migration's handover of a volume's write lease, with real
processes: one cluster, two hypervisors (two ursa-attach, hosts
``src-host`` and ``dst-host``, FUSE: root and /dev/fuse), and "guests"
that write numbered 4 KiB blocks with fsync through each host's file.

What Nova does, the test does through the master as the Cinder driver
would: the destination is attached as a standby while the source's
guest writes, reads the source's data; at the switchover the source's
guest stops and the destination's starts writing.  Its first write
takes the lease over: the source's agent, asked through its attachment
listing, flushes and releases it (or, frozen, is fenced by the master
after ``lease_handover_timeout``).  The pause of that first write is
printed (``pytest -s``)."""

import errno
import os
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

from cinder_ursa.protocol import lease_history
from tests.fixtures.attach import attached
from tests.fixtures.attach import read_blocks
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
BLOCK = 4096
SRC, DST = 'src-host', 'dst-host'
SRC_HOLDER, DST_HOLDER = 'ursa-attach@' + SRC, 'ursa-attach@' + DST
# Where the destination's guest writes (blocks), past the source's.
DST_FIRST = 8192

# A guest: writes blocks first..first+count-1 (block n holds its number)
# with an fsync each, printing "A <n> <seconds of pwrite> <seconds of
# pwrite and fsync>" once acknowledged, "E <n> <errno>" on an error (and
# exits 1); SIGTERM stops it between two blocks (a switchover).
GUEST = r'''
import os, signal, sys, time
path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
fd = os.open(path, os.O_RDWR)
for n in range(first, first + count):
    if stop:
        break
    t0 = time.monotonic()
    try:
        os.pwrite(fd, (b'%08d' % n) * 512, n * 4096)
        t1 = time.monotonic()
        os.fsync(fd)
    except OSError as e:
        print('E %d %d' % (n, e.errno), flush=True)
        sys.exit(1)
    print('A %d %.6f %.6f' % (n, t1 - t0, time.monotonic() - t0),
          flush=True)
'''


def block(n):
    return (b'%08d' % n) * 512


class Guest:
    """A guest writing through an attached volume's file; what it prints
    is read as it comes (a thread)."""

    def __init__(self, path, first, count):
        self.proc = subprocess.Popen(
            [sys.executable, '-c', GUEST, path, str(first), str(count)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    def acked(self):
        """{block: (pwrite s, pwrite and fsync s)} acknowledged so far."""
        return {int(x.split()[1]): (float(x.split()[2]),
                                    float(x.split()[3]))
                for x in list(self.lines) if x.startswith('A ')}

    def stop(self):
        """Stop between two blocks (the switchover): see finish."""
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def finish(self, timeout=120):
        """The blocks acknowledged (acked), once it exited with no
        error."""
        self.proc.wait(timeout)
        self._reader.join(10)
        err = self.proc.stderr.read()
        assert self.proc.returncode == 0, (self.lines[-5:], err[-2000:])
        assert not [x for x in self.lines if x.startswith('E')], \
            self.lines[-5:]
        return self.acked()


def detached(master, name, host, timeout=30):
    """What the Cinder driver's detach does: ask, the agent lets go."""
    master.update_attachment(name, host, 'detaching')
    wait_for(lambda: host not in [a['host'] for a in
                                  master.attachments(name)],
             timeout, '%s detached from %s' % (name, host))


def summary(events):
    return [(e['event'], e['generation'], e['holder']) for e in events]


@pytest.fixture
def hypervisors(request, make_cluster):
    """make(lease_handover_timeout, poll_interval=0.2): a cluster whose
    master has that handover timeout, two chunk servers, and an
    ursa-attach for each of the hosts src-host (the cluster's own agent)
    and dst-host, looking at their attachments every poll_interval."""
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('ursa-attach needs root and /dev/fuse')
        pytest.skip('ursa-attach needs root and /dev/fuse')
    started = []

    def make(timeout, poll_interval=0.2):
        c = make_cluster(2, extra_conf='[ursa_master]\n'
                         'lease_handover_timeout = %s\n[ursa_attach]\n'
                         'poll_interval = %s\n' % (timeout, poll_interval))
        top = tempfile.mkdtemp(prefix='ursa-migrate-')
        started.append((c, top))
        c.attach_host = SRC
        c.attach_dir = os.path.join(top, SRC)
        c.write_config()
        c.start_attach()
        c.dst_dir = c.start_attach(DST, os.path.join(top, DST))
        c.client().create_volume('vm', 64 * MiB, chunk_size=4 * MiB,
                                 replicas=2, min_replicas=1)
        return c
    yield make
    for c, top in started:
        c.stop(kill=True)
        for d in (SRC, DST):
            if os.path.isdir(os.path.join(top, d)):
                os.rmdir(os.path.join(top, d))
        os.rmdir(top)


def start_migration(c):
    """The source's guest writing, and the destination attached as a
    standby that reads what the source wrote: (master, source path,
    destination path, the source's guest)."""
    master = c.client()
    master.attach('vm', SRC)
    src_path = attached(master, 'vm', SRC)['path']
    guest = Guest(src_path, 0, 100000)
    wait_for(lambda: guest.proc.poll() is not None or
             len(guest.acked()) >= 20, 60, 'the source guest writing')
    a = master.attach('vm', DST, standby=True)
    assert (a['standby'], a['release_requested']) == (True, False)
    dst_path = attached(master, 'vm', DST)['path']
    # The destination reads the blocks acknowledged so far.
    seen = sorted(guest.acked())
    assert len(seen) >= 20
    assert read_blocks(dst_path, seen) == {n: block(n) for n in seen}
    # And the source kept its lease, its guest writing meanwhile.
    lease = master.volume('vm')['lease']
    assert (lease['holder'], lease['generation'],
            lease['handover_to']) == (SRC_HOLDER, 1, None)
    return master, src_path, dst_path, guest


@pytest.mark.parametrize('poll_interval', [0.2, 1.0],
                         ids=['poll-0.2s', 'poll-1s-default'])
def test_a_live_migration_hands_the_lease_over(hypervisors, poll_interval):
    """The pause of the destination's first write is about the source's
    agent's poll interval ([ursa_attach] poll_interval: 1 s by default;
    the test clusters' 0.2 s) at most, plus a flush and a release."""
    c = hypervisors(10, poll_interval)
    master, src_path, dst_path, guest = start_migration(c)
    acked = guest.stop()
    assert len(acked) >= 20
    worst_src = max(t for _, t in acked.values())
    # The destination's guest starts: its first write takes the lease.
    dst = Guest(dst_path, DST_FIRST, 50)
    dst_acked = dst.finish()
    assert sorted(dst_acked) == list(range(DST_FIRST, DST_FIRST + 50))
    pause, pause_fsync = dst_acked[DST_FIRST]
    later = max(t for n, (_, t) in dst_acked.items() if n != DST_FIRST)
    print('\nlive migration handover (agents polling every %s s): the '
          'first write on the destination took %.3f s (%.3f s with its '
          'fsync); the other %d writes at most %.3f s, the source\'s %d '
          'at most %.3f s' % (poll_interval, pause, pause_fsync,
                              len(dst_acked) - 1, later, len(acked),
                              worst_src))
    # Less than the handover timeout: handed over, not taken by force.
    assert pause < poll_interval + 5.0
    # Every block the source acknowledged reads back on the destination,
    # and the destination's own.
    want = sorted(acked) + sorted(dst_acked)
    assert read_blocks(dst_path, want) == {n: block(n) for n in want}
    events = master.lease_history('vm')
    assert lease_history.check(events, shared_ok=False) == []
    assert summary(events) == [('acquire', 1, SRC_HOLDER),
                               ('release', 1, SRC_HOLDER),
                               ('acquire', 2, DST_HOLDER)]
    assert events[1]['reason'] == 'handed over to %s' % DST_HOLDER
    flags = {a['host']: (a['standby'], a['release_requested'])
             for a in master.attachments('vm')}
    assert flags == {SRC: (True, False), DST: (False, False)}
    # Nova detaches the source: the destination goes on writing.
    detached(master, 'vm', SRC)
    assert Guest(dst_path, DST_FIRST + 50, 5).finish()
    assert master.volume('vm')['lease']['holder'] == DST_HOLDER
    with open(os.path.join(c.data_dir, 'attach.log')) as f:
        log = f.read()
    assert 'lease handed over in' in log and 'Traceback' not in log


def test_a_frozen_source_is_fenced_after_the_handover_timeout(hypervisors):
    c = hypervisors(2)
    master, src_path, dst_path, guest = start_migration(c)
    acked = guest.stop()
    # The source's agent hangs (SIGSTOP) just after the switchover.
    c.attach_proc.send_signal(signal.SIGSTOP)
    try:
        dst = Guest(dst_path, DST_FIRST, 10)
        dst_acked = dst.finish()
    finally:
        c.attach_proc.send_signal(signal.SIGCONT)
    pause = dst_acked[DST_FIRST][0]
    print('\nlive migration, frozen source: the first write on the '
          'destination took %.3f s (lease_handover_timeout 2 s)' % pause)
    assert 2.0 <= pause < 10.0
    want = sorted(acked) + sorted(dst_acked)
    assert read_blocks(dst_path, want) == {n: block(n) for n in want}
    events = master.lease_history('vm')
    assert lease_history.check(events, shared_ok=False) == []
    assert summary(events) == [('acquire', 1, SRC_HOLDER),
                               ('takeover', 1, SRC_HOLDER),
                               ('acquire', 2, DST_HOLDER)]
    assert events[1]['reason'] == ('taken by %s: the holder did not hand '
                                   'over in 2 s' % DST_HOLDER)
    # Woken, the source writes nothing more: fenced.
    fd = os.open(src_path, os.O_RDWR)
    try:
        with pytest.raises(OSError) as ei:
            os.pwrite(fd, b'late' * 1024, 0)
            os.fsync(fd)
    finally:
        os.close(fd)
    assert ei.value.errno == errno.EIO
    assert read_blocks(dst_path, [0]) == {0: block(0)}


def test_a_rolled_back_migration_leaves_the_source_writing(hypervisors):
    c = hypervisors(10)
    master, src_path, dst_path, guest = start_migration(c)
    before = len(guest.acked())
    # The migration fails before the switchover: Nova detaches the
    # destination; the source's guest never stopped.
    detached(master, 'vm', DST)
    wait_for(lambda: len(guest.acked()) >= before + 20, 60,
             'the source guest writing on')
    acked = guest.stop()
    worst = max(t for _, t in acked.values())
    print('\nrolled back migration: %d writes on the source, the slowest '
          '%.3f s' % (len(acked), worst))
    assert worst < 2.0
    lease = master.volume('vm')['lease']
    assert (lease['holder'], lease['generation'],
            lease['handover_to']) == (SRC_HOLDER, 1, None)
    assert summary(master.lease_history('vm')) == [
        ('acquire', 1, SRC_HOLDER)]
    assert read_blocks(src_path, sorted(acked)) == {
        n: block(n) for n in acked}
