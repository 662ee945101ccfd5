"""Snapshots, clones, revert, resize, discard and flatten on a real cluster,
checked byte for byte against an in-memory model.  The snapshot contract
runs on every cluster shape (tests.fixtures.cluster.SHAPES); the model
test and the CLI test on the default shape only (see their marks)."""

import asyncio
import os
import random
import threading
import time

import pytest
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import consumes
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

from cinder_ursa import exception
from cinder_ursa.client import check
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import wait_allocated
from tests.fixtures.wait import wait_for

KiB = 1024
MiB = 1024 * KiB
CHUNK = MiB


@pytest.fixture(scope='module')
def cluster(module_shaped_cluster):
    return module_shaped_cluster


@pytest.fixture(scope='module')
def client(cluster):
    with data_client(cluster) as cl:
        yield cl


# --- the model test --------------------------------------------------------

SIZE = 2 * CHUNK
_counter = [0]


def _name(prefix):
    _counter[0] += 1
    return '%s%d' % (prefix, _counter[0])


class SnapshotModel(RuleBasedStateMachine):
    """Random writes, discards, snapshots, clones, reverts, resizes and
    flattens on small striped volumes; after every step every volume and
    every snapshot reads exactly what the model says."""

    volumes = Bundle('volumes')
    snapshots = Bundle('snapshots')

    cl = None  # set by the test

    def __init__(self):
        super().__init__()
        self.data = {}       # volume name -> bytearray
        self.open = {}       # volume name -> SyncVolume
        self.snaps = {}      # 'vol@snap' -> bytes
        self.snap_of = {}    # 'vol@snap' -> volume name

    def teardown(self):
        for v in self.open.values():
            v.close()
        # Nothing is held that no volume or snapshot reads.
        report = self.cl.run(check.check_cluster)
        assert report['problems'] == [], report
        for ref in list(self.snaps):
            try:
                self.cl.delete_snapshot(ref)
            except exception.UrsaError:
                pass
        for name in self.data:
            try:
                self.cl.client_delete(name)
            except (exception.UrsaError, AttributeError):
                pass

    @initialize(target=volumes, seed=st.integers(0, 2 ** 32 - 1))
    def first_volume(self, seed):
        """A volume that starts with data here and there (so snapshots and
        clones of it have something to get wrong)."""
        import random
        rng = random.Random(seed)
        name = _name('m')
        self.cl.master.create_volume(name, SIZE, chunk_size=CHUNK,
                                     stripe_unit=64 * KiB, stripe_count=2)
        self.data[name] = bytearray(SIZE)
        self.open[name] = self.cl.open_volume(name)
        for _ in range(6):
            off = rng.randrange(SIZE - 1)
            n = min(rng.randrange(1, 200 * KiB), SIZE - off)
            payload = rng.randbytes(n)
            self.open[name].write(off, payload)
            self.data[name][off:off + n] = payload
        return name

    @rule(vol=volumes, pos=st.floats(0, 0.999), n=st.integers(1, 300 * KiB),
          byte=st.integers(1, 255))
    def write(self, vol, pos, n, byte):
        size = len(self.data[vol])
        off = int(pos * size)
        n = min(n, size - off)
        payload = bytes([byte]) * n
        self.open[vol].write(off, payload)
        self.data[vol][off:off + n] = payload

    @rule(vol=volumes, pos=st.floats(0, 0.999), n=st.integers(1, 2 * MiB))
    def discard(self, vol, pos, n):
        size = len(self.data[vol])
        off = int(pos * size)
        n = min(n, size - off)
        self.open[vol].write_zeroes(off, n)
        self.data[vol][off:off + n] = bytes(n)

    @rule(target=snapshots, vol=volumes)
    def snapshot(self, vol):
        name = _name('s')
        self.cl.create_snapshot(vol, name)
        ref = '%s@%s' % (vol, name)
        self.snaps[ref] = bytes(self.data[vol])
        self.snap_of[ref] = vol
        return ref

    @rule(ref=consumes(snapshots))
    def delete_snapshot(self, ref):
        self.cl.delete_snapshot(ref)
        del self.snaps[ref]

    @rule(target=volumes, ref=snapshots, grow=st.sampled_from([0, CHUNK]))
    def clone(self, ref, grow):
        name = _name('c')
        size = len(self.snaps[ref]) + grow
        self.cl.clone(ref, name, size)
        self.data[name] = bytearray(self.snaps[ref]) + bytearray(grow)
        self.open[name] = self.cl.open_volume(name)
        return name

    @rule(ref=snapshots)
    def revert(self, ref):
        vol = self.snap_of[ref]
        self.open.pop(vol).close()
        self.cl.revert(vol, ref.split('@', 1)[1])
        want = bytearray(self.snaps[ref])
        size = len(self.data[vol])
        want += bytes(max(0, size - len(want)))  # a grown volume keeps size
        self.data[vol] = want[:size]
        self.open[vol] = self.cl.open_volume(vol)

    @rule(vol=volumes)
    def grow(self, vol):
        self.open.pop(vol).close()
        new = len(self.data[vol]) + 256 * KiB
        self.cl.resize(vol, new)
        self.data[vol] += bytes(256 * KiB)
        self.open[vol] = self.cl.open_volume(vol)

    @precondition(lambda self: any(
        v.volume.info.get('parent') for v in self.open.values()))
    @rule(data=st.data())
    def flatten(self, data):
        clones = sorted(n for n, v in self.open.items()
                        if v.volume.info.get('parent'))
        vol = data.draw(st.sampled_from(clones))
        self.open.pop(vol).close()
        self.cl.flatten(vol)
        self.open[vol] = self.cl.open_volume(vol)
        assert self.open[vol].volume.info.get('parent') is None

    @invariant()
    def everything_reads_as_modelled(self):
        for name, want in self.data.items():
            v = self.open[name]
            assert v.size == len(want)
            assert v.read(0, len(want)) == want, name
        for ref, want in self.snaps.items():
            with self.cl.open_volume(ref, writable=False) as s:
                assert s.read(0, len(want)) == want, ref


@pytest.mark.one_shape(
    'The state machine checks how layers, clones and reverts read back, '
    'which does not depend on placement or replication (the other tests '
    'of this module check snapshots on every shape); its cost grows with '
    'URSA_MODEL_EXAMPLES, so it runs once, on the default shape.')
def test_model_of_writes_snapshots_clones_reverts(cluster, client):
    """The data-verification model test (hypothesis stateful)."""
    class Bound(SnapshotModel):
        cl = _ModelClient(cluster, client)
    Bound.TestCase.settings = settings(
        max_examples=int(os.environ.get('URSA_MODEL_EXAMPLES', '10')),
        stateful_step_count=25, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck))
    Bound.TestCase().runTest()
    # Every replica of every chunk agrees, layers included.
    for vol in cluster.client().volumes():
        report = client.run(check.check_volume, vol['id'])
        assert report['problems'] == [], report
    # Deleting every snapshot and volume left no replica behind.
    report = client.run(check.check_cluster)
    assert (report['problems'], report['replicas']) == ([], 0), report


class _ModelClient:
    """The sync cluster client plus the master client the model needs."""

    def __init__(self, cluster, cl):
        self._cl = cl
        self.master = cluster.client()

    def __getattr__(self, name):
        return getattr(self._cl, name)

    def client_delete(self, name):
        self.master.delete_volume(name)


# --- a snapshot while a writer keeps writing -------------------------------

def test_snapshot_while_writing_holds_every_acknowledged_write(cluster,
                                                                 client):
    """The snapshot equals the volume at one instant: every write
    acknowledged before the snapshot call is in it, none started after it
    returned is."""
    cluster.client().create_volume('busy', 8 * MiB, chunk_size=CHUNK)
    nblocks = 256
    stop = threading.Event()
    log = []  # (sent at, acked at, block, value)

    with client.open_volume('busy') as v:
        def writer():
            value = 0
            while not stop.is_set():
                value += 1
                block = value % nblocks
                sent = time.monotonic()
                v.write(block * 4096, value.to_bytes(8, 'big') * 512)
                log.append((sent, time.monotonic(), block, value))
        t = threading.Thread(target=writer)
        t.start()
        # Writes before and after the snapshot, counted rather than
        # timed: a loaded machine writes fewer in a second.
        wait_for(lambda: len(log) >= 60, 60, '60 writes before')
        before = time.monotonic()
        client.create_snapshot('busy', 'instant')
        after = time.monotonic()
        wait_for(lambda: sum(1 for e in log if e[0] > after) >= 60, 60,
                 '60 writes after')
        stop.set()
        t.join()
    assert len(log) > 100
    with client.open_volume('busy@instant', writable=False) as s:
        snap = s.read(0, nblocks * 4096)
    seen = {b: int.from_bytes(snap[b * 4096:b * 4096 + 8], 'big')
            for b in range(nblocks)}
    for sent, acked, block, value in log:
        if acked < before:
            assert seen[block] >= value, 'acknowledged write lost'
        if sent > after:
            assert seen[block] < value, 'write after the snapshot leaked in'


def test_concurrent_first_writes_after_snapshots_keep_every_snapshot(
        cluster, client):
    """Writes in flight together, many of them first writes of their
    blocks since a snapshot (their copy-on-write synced in batches, see
    chunkserver/replication.py), overlapping and unaligned: every
    snapshot keeps what the volume held when it was taken."""
    size = 2 * CHUNK
    cluster.client().create_volume('cow', size, chunk_size=CHUNK)
    rng = random.Random(5)
    images = [bytes(size)]

    async def overwrite(c, image):
        v = await c.open_volume('cow')
        runs = [(b * 4096, 4096) for b in range(size // 4096)]
        runs += [(rng.randrange(size - 3 * 4096), rng.randrange(1, 3 * 4096))
                 for _ in range(200)]
        rng.shuffle(runs)
        sem = asyncio.Semaphore(32)

        async def one(off, n):
            async with sem:
                await v.write(off, image[off:off + n])
        await asyncio.gather(*(one(off, n) for off, n in runs))
        await v.close()

    for k in range(1, 4):
        client.create_snapshot('cow', 's%d' % k)
        images.append(rng.randbytes(size))
        client.run(overwrite, images[-1])
        for j in range(1, k + 1):
            with client.open_volume('cow@s%d' % j, writable=False) as s:
                assert s.read(0, size) == images[j - 1], (k, j)
        with client.open_volume('cow', writable=False) as v:
            assert v.read(0, size) == images[k], k


# --- space -------------------------------------------------------------------

@pytest.mark.one_shape(
    'A snapshot\'s space and creation time do not depend on placement or '
    'replication (the other tests of this module take snapshots on every '
    'shape); 1000 of them take 20 to 40 s on each shape.')
def test_many_snapshots_of_a_big_volume_cost_only_the_data(cluster, client):
    """1000 snapshots of a 10 GiB volume with a little data use about the
    data's size, and creating one does not depend on the volume's size."""
    cluster.client().create_volume('big', 10 * 1024 * MiB)
    with client.open_volume('big') as v:
        for i in range(16):
            v.write(i * 64 * MiB, os.urandom(64 * KiB))
        times = []
        for i in range(1000):
            t0 = time.monotonic()
            client.create_snapshot('big', 'snap%d' % i)
            times.append(time.monotonic() - t0)
            if i % 100 == 0:
                # A little churn so some layers exist.
                v.write((i // 100) * 64 * MiB, os.urandom(4 * KiB))
        v.flush()
    assert len(cluster.client().snapshots('big')) == 1000
    usage = wait_allocated(cluster, 'big', 16 * 64 * KiB)
    # Data is 1 MiB (+ 40 KiB of preserved blocks); metadata 8 B/block.
    assert usage < 3 * MiB, usage
    times.sort()
    assert times[len(times) // 2] < 0.5



# --- the CLI -----------------------------------------------------------------

@pytest.mark.one_shape('It tests the CLI, which is the same on every shape.')
def test_cli_snapshot_clone_flatten_revert_resize(cluster, tmp_path):
    import json

    from tests.fixtures.cluster import ursa

    def cli(*args, check=True):
        return ursa(cluster.data_dir, *args, check=check)

    def js(*args):
        return json.loads(cli(*args, '-f', 'json').stdout)

    js('volume', 'create', 'gold', '8M', '--chunk-size', '1M')
    image = tmp_path / 'gold.raw'
    payload = os.urandom(3 * MiB)
    image.write_bytes(payload)
    cli('volume', 'import', str(image), 'gold')
    snap = js('snapshot', 'create', 'gold', 'v1')
    assert snap['volume'] == 'gold' and snap['status'] == 'available'
    assert [s['name'] for s in js('snapshot', 'list', '--volume', 'gold')] \
        == ['v1']

    # Overwrite, export the snapshot: it still has the old bytes.
    with data_client(cluster) as cl, cl.open_volume('gold') as v:
        v.write(0, b'\xee' * MiB)
    out = tmp_path / 'v1.raw'
    cli('volume', 'export', 'gold', str(out), '--snapshot', 'v1')
    assert out.read_bytes()[:3 * MiB] == payload

    # A larger clone reads through; writes stay its own.
    clone = js('volume', 'clone', 'gold@v1', 'vm', '--size', '16M')
    assert clone['parent'] == 'gold@v1' and clone['size'] == 16 * MiB
    with data_client(cluster) as cl, cl.open_volume('vm') as v:
        assert v.read(0, 3 * MiB) == payload
        v.write(MiB + 100, b'own')
    assert js('snapshot', 'show', 'gold@v1')['clones'] == 'vm'

    # A volume with snapshots is not deleted; a snapshot with clones goes
    # to the trash and the clone keeps reading it.
    r = cli('volume', 'delete', 'gold', check=False)
    assert r.returncode != 0 and 'delete them first' in r.stderr
    cli('snapshot', 'delete', 'gold@v1')
    assert js('snapshot', 'list', '--volume', 'gold') == []
    cli('volume', 'delete', 'gold')
    with data_client(cluster) as cl, cl.open_volume('vm',
                                                    writable=False) as v:
        want = bytearray(payload)
        want[MiB + 100:MiB + 103] = b'own'
        assert v.read(0, 3 * MiB) == want

    # Flatten detaches it, and the trashed parent goes away for good.
    flat = js('volume', 'flatten', 'vm')
    assert flat['parent'] == ''
    with data_client(cluster) as cl, cl.open_volume('vm',
                                                    writable=False) as v:
        assert v.read(0, 3 * MiB) == want
    rest = cluster.client()
    left = [v['name'] for v in rest.volumes()]
    assert 'gold' not in left
    assert not any(v['status'] == 'trash' for v in rest.volumes())

    # Revert and resize.
    js('snapshot', 'create', 'vm', 'base')
    with data_client(cluster) as cl, cl.open_volume('vm') as v:
        v.write(0, b'\x11' * 4096)
    js('volume', 'revert', 'vm', 'base')
    with data_client(cluster) as cl, cl.open_volume('vm',
                                                    writable=False) as v:
        assert v.read(0, 4096) == want[:4096]
    assert js('volume', 'resize', 'vm', '20M')['size'] == 20 * MiB
    r = cli('volume', 'resize', 'vm', '8M', check=False)
    assert r.returncode != 0 and 'force' in r.stderr
    assert js('volume', 'resize', 'vm', '2M', '--force')['size'] == 2 * MiB
    assert js('volume', 'resize', 'vm', '4M')['size'] == 4 * MiB
    with data_client(cluster) as cl, cl.open_volume('vm',
                                                    writable=False) as v:
        # What was cut off comes back as zeros, not as the old bytes.
        assert v.read(0, 4 * MiB) == bytes(want[:2 * MiB]) + bytes(2 * MiB)
