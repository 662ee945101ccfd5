"""Power cuts, not kill -9: chunk servers on the power-loss disks of
``tests/fixtures/powerloss.py`` lose whatever they had not made durable
(unsynced writes, directory entries not fsynced), as a machine losing
power does, and boot again.  Every write acknowledged before a FLUSH that
completed is still there afterwards, and the replicas are identical.

The first tests check the disk itself: what it keeps and what it loses.
"""

import errno
import hashlib
import os
import subprocess
import sys
import threading

import pytest

from cinder_ursa.chunkserver.store import ChunkStore
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.chunkserver.store.files import atomic_write
from cinder_ursa.chunkserver.store.files import fsync_dir
from cinder_ursa.chunkserver.store.files import punch_hole
from cinder_ursa.client import check
from cinder_ursa.protocol.chunkfile import ABSENT
from tests.fixtures import powerloss
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_index
from tests.fixtures.processes import ROOT
from tests.fixtures.services import unavailable
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BS = 4096
SIZE = 16 * MiB
GRACE = '[ursa_master]\nreplica_grace = 600\nrepair_interval = 0.3\n'


# --- the disk ---------------------------------------------------------------

@pytest.fixture
def disk(tmp_path):
    why = powerloss.missing()
    if why:
        unavailable(why)
    d = powerloss.PowerLossDisk(tmp_path / 'backing', tmp_path / 'mnt',
                                tmp_path / 'state').start()
    yield d
    d.stop()


def _power_cycle(disk):
    """Cut the power, check that the disk is dead, mount it again."""
    lost = disk.cut()
    with pytest.raises(OSError) as e:
        os.listdir(disk.mount)
    assert e.value.errno == errno.EIO
    disk.stop()
    disk.start()
    return lost


def _put(path, data, sync=True):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def _get(path):
    with open(path, 'rb') as f:
        return f.read()


def test_the_disk_keeps_synced_data_and_loses_the_rest(disk):
    m = disk.mount
    p = lambda name: os.path.join(m, name)   # noqa: E731
    _put(p('kept'), b'k' * 10000)
    _put(p('unsynced'), b'u' * 5000, sync=False)
    _put(p('short'), b's' * 8192)
    _put(p('holed'), b'h' * 3 * BS)
    fsync_dir(m)
    # Overwritten in place, not synced: the reads see it meanwhile.
    fd = os.open(p('kept'), os.O_RDWR)
    os.pwrite(fd, b'N' * 100, 4096)
    os.close(fd)
    assert _get(p('kept'))[4090:4200] == b'k' * 6 + b'N' * 100 + b'k' * 4
    # Written through one handle, synced through a duplicate of another,
    # in a thread (as the chunk server does): the file's data is durable.
    a = os.open(p('both'), os.O_RDWR | os.O_CREAT, 0o600)
    b = os.open(p('both'), os.O_RDWR)
    os.pwrite(a, b'b' * 3 * BS, 0)
    dup = os.dup(b)
    t = threading.Thread(target=os.fdatasync, args=(dup,))
    t.start()
    t.join()
    for fd in (a, b, dup):
        os.close(fd)
    # Shortened, then written past the new end, and synced.
    fd = os.open(p('short'), os.O_RDWR)
    os.ftruncate(fd, 100)
    os.pwrite(fd, b'y', 6000)
    os.fdatasync(fd)
    os.close(fd)
    fd = os.open(p('holed'), os.O_RDWR)
    punch_hole(fd, BS, BS)
    os.fdatasync(fd)
    os.close(fd)
    fsync_dir(m)
    _put(p('no-entry'), b'n' * 100)          # synced, its entry not
    assert os.stat(p('unsynced')).st_size == 5000

    lost = _power_cycle(disk)
    assert lost['pages'] >= 2, lost    # 'unsynced' and 'kept'
    assert _get(p('kept')) == b'k' * 10000
    assert _get(p('unsynced')) == b''
    assert not os.path.exists(p('no-entry'))
    assert _get(p('both')) == b'b' * 3 * BS
    assert _get(p('short')) == b's' * 100 + bytes(5900) + b'y'
    assert _get(p('holed')) == b'h' * BS + bytes(BS) + b'h' * BS


def test_directory_entries_last_once_their_directory_is_synced(disk):
    m = disk.mount
    p = lambda name: os.path.join(m, name)   # noqa: E731
    atomic_write(p('state'), 'old\n')
    atomic_write(p('state2'), 'old\n')
    for name in ('gone', 'back'):
        _put(p(name), b'x')
    fsync_dir(m)
    atomic_write(p('state2'), 'new\n')       # fsyncs the directory
    os.unlink(p('gone'))
    os.mkdir(p('sub'))
    _put(p('sub/f'), b'f')
    fsync_dir(p('sub'))
    fsync_dir(m)
    # From here on, the top directory is not synced: a replace is lost
    # with the new file, a removal is undone, a new directory is lost
    # with what it holds, though that was synced.
    _put(p('state.tmp'), b'new\n')
    os.replace(p('state.tmp'), p('state'))
    assert _get(p('state')) == b'new\n'
    os.unlink(p('back'))
    os.mkdir(p('lost'))
    _put(p('lost/f'), b'f')
    fsync_dir(p('lost'))

    lost = _power_cycle(disk)
    assert lost['entries'] == [
        'create /state.tmp', 'rename /state.tmp /state', 'unlink /back',
        'mkdir /lost'], lost
    assert sorted(os.listdir(m)) == ['back', 'state', 'state2', 'sub']
    assert _get(p('state')) == b'old\n'
    assert _get(p('state2')) == b'new\n'
    assert _get(p('back')) == b'x'
    assert _get(p('sub/f')) == b'f'


def test_torn_blocks_forgotten_stay_forgotten_through_a_power_cut(disk):
    """A copy a crash may have torn is checked before it is brought up to
    date: its torn blocks are forgotten (made absent, so the comparison
    sends them again), then its mark "to be checked" is removed.  A power
    cut after a later fsync of its directory (a new epoch's file) must
    not leave the mark gone and the torn blocks back: the next copy,
    comparing metadata only, would take them for whole."""
    store = ChunkStore(str(disk.mount))
    c = store.check_epoch('vol', 0, 1, create=True)
    store.write(c, 0, b'a' * 2 * BS)
    store.sync(*store.take_dirty())
    # Torn: block 1's data reached the disk, its checksum did not.
    fd = os.open(c.base + '.data', os.O_RDWR)
    os.pwrite(fd, b'x' * BS, BS)
    os.fdatasync(fd)
    os.close(fd)
    store.mark_unverified('vol', 0)
    assert mending.forget_torn(store.unverified_files(c)) == 1
    store.verified(c, 1)
    store.set_epoch(c, 2)           # fsyncs the chunk's directory
    store.close()
    _power_cycle(disk)

    store = ChunkStore(str(disk.mount))
    c = store.held('vol', 0)
    assert (store.unverified(c)
            or store.block_states(c, BS, BS) == bytes([ABSENT]))
    store.close()


# --- a cluster --------------------------------------------------------------

WRITER = '''
import hashlib, os, random, sys
from cinder_ursa.client import sync
url, key_file, log, stop = sys.argv[1:5]
key = open(key_file, 'rb').read().strip()
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
rng = random.Random(11)
with sync.SyncCluster([url], key, io_timeout=60.0) as cl:
    with cl.open_volume('v') as v:
        k = 0
        while not os.path.exists(stop):
            k += 1
            b = rng.randrange(%(blocks)d)
            data = hashlib.sha256(b'%%d:%%d' %% (b, k)).digest() * 128
            os.write(fd, b'W %%d %%d\\n' %% (b, k))
            try:
                v.write(b * 4096, data)
                if k %% 16 == 0:
                    v.flush()
                    os.write(fd, b'F %%d\\n' %% k)
            except Exception as e:
                os.write(fd, b'X %%d %%r\\n' %% (k, e))
                raise
        v.flush()
        os.write(fd, b'F %%d\\nEND\\n' %% k)
''' % {'blocks': SIZE // BS}


def _block(b, k):
    return hashlib.sha256(b'%d:%d' % (b, k)).digest() * 128


class Writer:
    """A client-library writer in a process of its own: random 4 KiB
    writes, a FLUSH every 16, each logged before it is issued (W) and
    each flush once it completed (F)."""

    def __init__(self, cluster, tmp_path):
        self.log = tmp_path / 'writes.log'
        self.stop_file = tmp_path / 'stop-writing'
        self.proc = subprocess.Popen(
            [sys.executable, '-c', WRITER, cluster.master_url,
             cluster.key_file, str(self.log), str(self.stop_file)],
            cwd=ROOT)

    def text(self):
        return self.log.read_text() if self.log.exists() else ''

    def flushes(self):
        return self.text().count('F ')

    def wait_flushes(self, n, timeout=60):
        wait_for(lambda: self.flushes() >= n, timeout,
                 lambda: 'the writer to flush %d times: %s' % (
                     n, self.text()[-300:]))
        assert self.proc.poll() is None, self.text()[-500:]

    def finish(self):
        """Stop writing, flush once more, exit."""
        self.stop_file.touch()
        assert self.proc.wait(60) == 0, self.text()[-500:]
        assert self.text().endswith('END\n')

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def writers():
    made = []
    yield made
    for w in made:
        w.kill()


def _allowed(text):
    """{block: contents it may hold}: its last write acknowledged before
    the last FLUSH that completed, or any write after that flush (or
    zeros, for a block first written after it)."""
    writes, last_flush = [], 0
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == 'W':
            writes.append((int(f[1]), int(f[2])))
        elif f and f[0] == 'F':
            last_flush = int(f[1])
    allowed = {}
    for b, k in writes:
        if k <= last_flush:
            allowed[b] = {_block(b, k)}
        else:
            allowed.setdefault(b, {bytes(BS)}).add(_block(b, k))
    return allowed, last_flush


def _check_image(cluster, text):
    allowed, _ = _allowed(text)
    with data_client(cluster) as cl:
        with cl.open_volume('v', writable=False) as v:
            image = v.read(0, SIZE)
    bad = [b for b, ok in allowed.items()
           if image[b * BS:(b + 1) * BS] not in ok]
    assert bad == [], 'blocks without their last flushed write: %s' % bad[:10]
    untouched = set(range(SIZE // BS)) - set(allowed)
    assert all(image[b * BS:(b + 1) * BS] == bytes(BS) for b in untouched)


def _wait_recovered(cluster, vid, timeout=60):
    """Every chunk has its 3 replicas back, identical and whole (``ursa
    volume check --deep``), and ``ursa cluster check`` finds nothing."""
    client = cluster.client()
    last = {}

    def recovered():
        sets = replica_sets(cluster, 'v')
        last['sets'] = sets
        if not all(len(ids) == 3 for ids in sets.values()):
            return None
        with data_client(cluster) as cl:
            report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
            last['volume'] = report['problems']
            if report['problems']:
                return None
            report = cl.run(check.check_cluster)
            last['cluster'] = report['problems']
            return report['problems'] == []
    wait_for(recovered, timeout, lambda: 'replicas back and identical: '
             '%s %s' % (last, client.cluster_status()['repair']),
             interval=0.3)


def test_a_power_cut_to_every_chunk_server_loses_no_flushed_write(
        power_loss_cluster, tmp_path, writers):
    """Every chunk server loses power at once in the middle of writes and
    flushes; after they boot again, every block holds its last write
    acknowledged before the last flush that completed (or a later one),
    and the replicas are identical."""
    cuts = power_loss_cluster(3, extra_conf=GRACE)
    cluster = cuts.cluster
    vid = cluster.client().create_volume('v', SIZE, chunk_size=MiB)['id']
    w = Writer(cluster, tmp_path)
    writers.append(w)
    w.wait_flushes(8)
    lost = cuts.cut()
    w.kill()
    assert any(x['pages'] for x in lost.values()), (
        'nothing unsynced when the power went: no test (%s)' % lost)
    cuts.restart()
    _wait_recovered(cluster, vid)
    text = w.text()
    assert _allowed(text)[1] >= 16 * 8
    _check_image(cluster, text)


@pytest.mark.parametrize('role', ['primary', 'replica'])
def test_a_power_cut_to_one_chunk_server_mid_write(
        power_loss_cluster, tmp_path, writers, role):
    """The primary (or a replica) of a chunk loses power while a writer
    writes and flushes, half of its unsynced pages written back (torn
    blocks: data without its checksum, or the reverse); the writer goes
    on without it, the server boots again and is brought up to date (its
    torn blocks sent again): every write the writer's last flush covered
    is there, on identical replicas."""
    cuts = power_loss_cluster(3, server_timeout=2.0, extra_conf=GRACE)
    cluster = cuts.cluster
    vid = cluster.client().create_volume('v', SIZE, chunk_size=MiB)['id']
    w = Writer(cluster, tmp_path)
    writers.append(w)
    w.wait_flushes(3)
    ids = next(ids for _, ids in sorted(replica_sets(cluster, 'v').items())
               if len(ids) == 3)
    victim = server_index(cluster, ids[0 if role == 'primary' else 1])
    lost = cuts.cut(victim, written_back=0.5)
    assert lost[victim]['pages'] or lost[victim]['entries'], (
        'nothing unsynced when the power went: no test (%s)' % lost)
    n = w.flushes()
    w.wait_flushes(n + 5)
    cuts.restart(victim)
    w.wait_flushes(w.flushes() + 5)
    w.finish()
    _wait_recovered(cluster, vid)
    _check_image(cluster, w.text())


def test_a_server_back_on_another_address_after_a_power_cut_is_caught_up(
        power_loss_cluster, tmp_path, writers):
    """A replica's server loses power, is dropped while the writer goes
    on, and comes back listening elsewhere (its dynamic port was in a file
    the power cut lost; a machine may come back with another address):
    the chunks' primaries must find it there to bring its copies up to
    date, not try the address they knew forever."""
    cuts = power_loss_cluster(3, fixed_ports=False, server_timeout=2.0,
                              extra_conf=GRACE)
    cluster = cuts.cluster
    client = cluster.client()
    vid = client.create_volume('v', SIZE, chunk_size=MiB)['id']
    w = Writer(cluster, tmp_path)
    writers.append(w)
    w.wait_flushes(3)
    ids = next(ids for _, ids in sorted(replica_sets(cluster, 'v').items())
               if len(ids) == 3)
    victim = server_index(cluster, ids[1])

    def port():
        return next(s['port'] for s in client.servers() if s['id'] == ids[1])
    before = port()
    cuts.cut(victim)
    w.wait_flushes(w.flushes() + 5)
    cuts.restart(victim)
    assert port() != before, 'the server came back on its port: no test'
    w.wait_flushes(w.flushes() + 5)
    w.finish()
    _wait_recovered(cluster, vid)
    _check_image(cluster, w.text())


OVERWRITER = '''
import hashlib, sys, time
from cinder_ursa.client import sync
url, key_file, snapshot = sys.argv[1:4]
block = lambda b, k: hashlib.sha256(b'%%d:%%d' %% (b, k)).digest() * 128
with sync.SyncCluster([url], open(key_file, 'rb').read().strip()) as cl:
    v = cl.open_volume('v')
    v.write(0, b''.join(block(b, 0) for b in range(%(blocks)d)))
    v.flush()
    if snapshot == 'yes':
        cl.create_snapshot('v', 's')
    for b in range(%(blocks)d):
        v.write(b * 4096, block(b, 1))
    print('overwritten', flush=True)
    time.sleep(600)
''' % {'blocks': 2 * MiB // BS}


def _overwrite_then_cut(cuts, snapshot):
    """Volume 'v' (2 MiB) written and flushed, snapshot 's' taken (if
    ``snapshot``), every block overwritten, unflushed; then every server
    loses power with half of its unsynced pages written back (blocks torn
    everywhere), and boots again."""
    cluster = cuts.cluster
    vid = cluster.client().create_volume('v', 2 * MiB,
                                         chunk_size=MiB)['id']
    # In a process of its own, killed when the power goes: a client that
    # closed the volume would flush it.
    proc = subprocess.Popen(
        [sys.executable, '-c', OVERWRITER, cluster.master_url,
         cluster.key_file, 'yes' if snapshot else 'no'], cwd=ROOT,
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'overwritten'
        lost = cuts.cut(written_back=0.5)
        assert any(x['written_back'] for x in lost.values()), lost
    finally:
        proc.kill()
        proc.wait()
    cuts.restart()
    return vid


def test_a_block_torn_on_the_last_replica_left_is_mended(power_loss_cluster):
    """A power cut to every server tears blocks everywhere, some with
    the same metadata entry on every replica and the data half written
    on one (a comparison of entries does not see them).  Each server,
    back, reads every block of its copies and has those that fail their
    CRC repaired: from a replica holding them valid, or, torn on every
    replica, taken as they are (either page holds the last flushed write
    or a later one).  The replicas come back identical and whole, each
    block its old or its new content."""
    cuts = power_loss_cluster(3, extra_conf=GRACE)
    vid = _overwrite_then_cut(cuts, snapshot=False)
    _wait_recovered(cuts.cluster, vid, timeout=30)
    with data_client(cuts.cluster) as cl:
        with cl.open_volume('v', writable=False) as v:
            image = v.read(0, 2 * MiB)
    bad = [b for b in range(2 * MiB // BS)
           if image[b * BS:(b + 1) * BS] not in (_block(b, 0), _block(b, 1))]
    assert bad == [], 'blocks neither old nor new: %s' % bad[:10]


def test_a_snapshot_stays_as_it_was_through_a_power_cut(power_loss_cluster):
    """After a snapshot, a write to a block first copies the block into
    the snapshot's layer, then overwrites it.  Every server loses power
    with those writes unflushed and half of their pages written back: the
    snapshot still reads as it was taken."""
    cuts = power_loss_cluster(3, extra_conf=GRACE)
    vid = _overwrite_then_cut(cuts, snapshot=True)
    _wait_recovered(cuts.cluster, vid, timeout=30)
    with data_client(cuts.cluster) as cl:
        with cl.open_volume('v@s', writable=False) as s:
            snap = s.read(0, 2 * MiB)
    bad = [b for b in range(2 * MiB // BS)
           if snap[b * BS:(b + 1) * BS] != _block(b, 0)]
    assert bad == [], 'snapshot blocks changed: %s' % bad[:10]
