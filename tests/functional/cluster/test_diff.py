"""Snapshot diffs on real clusters: the extents listed between two states
of a volume turn the older state into the newer one byte for byte and
name no block that was not written in between; diff streams carry a
volume to another cluster (full, then incrementals), through the CLI's
pipe too; a truncated or corrupt stream changes nothing."""

import io
import json
import os
import random
import subprocess
import sys

import pytest

from cinder_ursa import exception
from cinder_ursa.client import diff as diff_mod
from cinder_ursa.client import diffstream
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import module_cluster
from tests.fixtures.cluster import ursa

KiB = 1024
MiB = 1024 * KiB
BLOCK = 4 * KiB


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, 'diff')


@pytest.fixture(scope='module')
def other(tmp_path_factory):
    """A second cluster, to carry volumes to."""
    yield from module_cluster(tmp_path_factory, 'diff-other')


@pytest.fixture(scope='module')
def client(cluster):
    with data_client(cluster) as cl:
        yield cl


@pytest.fixture(scope='module')
def other_client(other):
    with data_client(other) as cl:
        yield cl


def extents(cl, newer, older=None):
    async def run(cluster):
        view, since = await diff_mod.open_views(cluster, newer, older)
        try:
            return await diff_mod.changed_extents(view, since)
        finally:
            await view.close()
    return cl.run(run)


def read_all(cl, ref):
    with cl.open_volume(ref, writable=False) as v:
        return v.read(0, v.volume.size)


class Writes:
    """Random writes and discards on an open volume, remembering which
    blocks each touched since the last mark."""

    def __init__(self, vol, size, seed):
        self.vol, self.size = vol, size
        self.rng = random.Random(seed)
        self.touched = set()

    def mark(self):
        self.touched = set()

    def _touch(self, offset, length):
        self.touched.update(range(offset // BLOCK,
                                  (offset + length - 1) // BLOCK + 1))

    def write(self, n=20, max_len=200 * KiB, limit=None):
        limit = limit or self.size
        for _ in range(n):
            length = self.rng.randint(1, max_len)
            offset = self.rng.randrange(0, limit - length)
            self.vol.write(offset, os.urandom(length))
            self._touch(offset, length)

    def discard(self, offset, length):
        self.vol.write_zeroes(offset, length)
        self._touch(offset, length)


def check_diff(cl, newer, older, touched):
    """The diff from ``older`` to ``newer`` rebuilds ``newer`` from
    ``older`` and lists only blocks in ``touched``; returns it."""
    ext = extents(cl, newer, older)
    old = bytearray(read_all(cl, older))
    new = read_all(cl, newer)
    old.extend(bytes(len(new) - len(old)))
    listed = set()
    for e in ext:
        assert e.offset % BLOCK == 0 and e.length % BLOCK == 0 or \
            e.offset + e.length == len(new), e
        if e.kind == 'data':
            old[e.offset:e.offset + e.length] = new[e.offset:e.offset
                                                    + e.length]
        else:
            assert e.kind == 'zero'
            old[e.offset:e.offset + e.length] = bytes(e.length)
        listed.update(range(e.offset // BLOCK,
                            (e.offset + e.length - 1) // BLOCK + 1))
    assert bytes(old) == new, 'the diff does not rebuild %s' % newer
    assert listed <= touched, 'blocks listed but never written: %s' % (
        sorted(listed - touched)[:10])
    # Sorted, merged, not overlapping.
    for a, b in zip(ext, ext[1:], strict=False):
        assert a.offset + a.length < b.offset or (
            a.offset + a.length == b.offset and a.kind != b.kind), (a, b)
    return ext


@pytest.mark.parametrize('layout', [
    dict(chunk_size=4 * MiB),
    dict(chunk_size=4 * MiB, stripe_unit=64 * KiB, stripe_count=3)],
    ids=['plain', 'striped'])
def test_a_diff_lists_exactly_what_changed(cluster, client, layout):
    name = 'd-' + ('striped' if 'stripe_count' in layout else 'plain')
    size = 40 * MiB
    cluster.client().create_volume(name, size, **layout)
    with client.open_volume(name) as v:
        w = Writes(v, size, seed=len(name))
        # The last chunks stay unwritten before the first snapshot.
        w.write(30, limit=24 * MiB)
        first = set(w.touched)
        client.create_snapshot(name, 'a')
        w.mark()
        w.write(15)
        w.discard(8 * MiB, 2 * MiB)              # whole blocks: deallocated
        w.discard(12 * MiB + 100, 9000)          # partial ones: written
        w.discard(36 * MiB, 1 * MiB)             # a chunk never written
        v.flush()
        client.create_snapshot(name, 'b')
        a_to_b = set(w.touched)
        w.mark()
        w.write(5)
        v.flush()
        b_to_head = set(w.touched)

    ext = check_diff(client, name + '@b', name + '@a', a_to_b)
    assert any(e.kind == 'zero' for e in ext)
    check_diff(client, name, name + '@b', b_to_head)
    check_diff(client, name, name + '@a', a_to_b | b_to_head)
    # The older snapshot given by name, as --from-snap does.
    assert extents(client, name + '@b', 'a') == ext

    # Without an older snapshot: the data the state holds, as data.
    full = extents(client, name + '@a')
    assert {e.kind for e in full} == {'data'}
    data_a = read_all(client, name + '@a')
    rebuilt = bytearray(size)
    for e in full:
        rebuilt[e.offset:e.offset + e.length] = \
            data_a[e.offset:e.offset + e.length]
    assert bytes(rebuilt) == data_a
    listed = sum(e.length for e in full)
    assert listed <= len(first) * BLOCK

    # Nothing changed: nothing listed.
    client.create_snapshot(name, 'c')
    assert extents(client, name, name + '@c') == []


def test_a_diff_refuses_states_out_of_order_or_of_another_volume(
        cluster, client):
    admin = cluster.client()
    admin.create_volume('order', 4 * MiB)
    admin.create_volume('stranger', 4 * MiB)
    client.create_snapshot('order', 'one')
    client.create_snapshot('order', 'two')
    client.create_snapshot('stranger', 'one')
    with pytest.raises(exception.InvalidArgument, match='not older'):
        extents(client, 'order@one', 'order@two')
    with pytest.raises(exception.InvalidArgument, match='not older'):
        extents(client, 'order@one', 'order@one')
    with pytest.raises(exception.InvalidArgument, match='of volume stranger'):
        extents(client, 'order@two', 'stranger@one')
    with pytest.raises(exception.NotFound):
        extents(client, 'order', 'nosuch')


def test_a_clones_diff_and_full_list_read_through_its_parent(cluster,
                                                            client):
    admin = cluster.client()
    admin.create_volume('golden', 16 * MiB, chunk_size=4 * MiB)
    with client.open_volume('golden') as v:
        Writes(v, 16 * MiB, seed=7).write(20)
    client.create_snapshot('golden', 'base')
    client.clone('golden@base', 'vm')
    with client.open_volume('vm') as v:
        w = Writes(v, 16 * MiB, seed=8)
        w.write(5, max_len=10 * KiB)
        v.flush()
        client.create_snapshot('vm', 'c1')
        w.mark()
        w.write(5)
        v.flush()
        client.create_snapshot('vm', 'c2')
    check_diff(client, 'vm@c2', 'vm@c1', w.touched)
    # A full list of the clone holds its parent's data too.
    full = extents(client, 'vm@c1')
    want = read_all(client, 'vm@c1')
    rebuilt = bytearray(len(want))
    for e in full:
        rebuilt[e.offset:e.offset + e.length] = \
            want[e.offset:e.offset + e.length]
    assert bytes(rebuilt) == want


def export(cl, ref, older=None):
    out = io.BytesIO()
    cl.run(diffstream.export_diff, ref, out, older)
    return out.getvalue()


def apply(cl, stream, volume):
    return cl.run(diffstream.import_diff, io.BytesIO(stream), volume)


def snapshots(cluster, volume):
    return sorted(s['name'] for s in cluster.client().snapshots(volume))


def test_streams_carry_a_volume_to_another_cluster(cluster, client, other,
                                                   other_client):
    """Full, then incrementals, each applied on the other cluster: the
    copy reads what the source read at each point, and has its
    snapshots.  The source grows between two of them."""
    admin = cluster.client()
    admin.create_volume('src', 12 * MiB, chunk_size=4 * MiB)
    with client.open_volume('src') as v:
        w = Writes(v, 12 * MiB, seed=3)
        w.write(20)
    client.create_snapshot('src', 's1')
    stream = export(client, 'src@s1')
    other.client().create_volume('copy', 12 * MiB, chunk_size=4 * MiB)
    header = apply(other_client, stream, 'copy')
    assert header['to_snapshot'] == 's1' and header['from_snapshot'] is None
    assert read_all(other_client, 'copy') == read_all(client, 'src@s1')
    assert snapshots(other, 'copy') == ['s1']

    admin.grow('src', 20 * MiB)
    with client.open_volume('src') as v:
        w = Writes(v, 20 * MiB, seed=4)
        w.write(10)
        w.discard(0, 4 * MiB)
    client.create_snapshot('src', 's2')
    small = export(client, 'src@s2', 's1')
    assert len(small) < 20 * MiB
    apply(other_client, small, 'copy')
    assert read_all(other_client, 'copy') == read_all(client, 'src@s2')
    assert other.client().volume('copy')['size'] == 20 * MiB
    assert snapshots(other, 'copy') == ['s1', 's2']
    # s1 on the copy still reads what s1 read on the source.
    assert read_all(other_client, 'copy@s1') == read_all(client, 'src@s1')

    # The CLI, through a pipe: the live volume since s2.
    with client.open_volume('src') as v:
        Writes(v, 20 * MiB, seed=5).write(5)
    env_src = dict(os.environ, URSA_CONFIG=os.path.join(cluster.data_dir,
                                                        'ursa.conf'))
    env_dst = dict(os.environ, URSA_CONFIG=os.path.join(other.data_dir,
                                                        'ursa.conf'))
    cli = [sys.executable, '-m', 'cinder_ursa.cmd.cli', 'volume']
    exp = subprocess.Popen(cli + ['export-diff', 'src@s2', 'src', '-'],
                           env=env_src, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    imp = subprocess.run(cli + ['import-diff', '-', 'copy'], env=env_dst,
                         stdin=exp.stdout, capture_output=True, text=True,
                         timeout=120)
    exp.stdout.close()
    err = exp.stderr.read().decode()
    assert exp.wait(60) == 0, err
    assert imp.returncode == 0, imp.stdout + imp.stderr
    assert 'Applied the diff of src since s2 to volume copy' in imp.stdout
    assert read_all(other_client, 'copy') == read_all(client, 'src')
    assert snapshots(other, 'copy') == ['s1', 's2']


def test_the_cli_lists_a_diff(cluster, client):
    cluster.client().create_volume('listed', 8 * MiB, chunk_size=4 * MiB)
    with client.open_volume('listed') as v:
        v.write(0, b'a' * 8192)
    client.create_snapshot('listed', 'one')
    with client.open_volume('listed') as v:
        v.write(5 * MiB, b'b' * 4096)
        v.write_zeroes(0, 4096)
    r = ursa(cluster.data_dir, 'volume', 'diff', 'listed@one', 'listed',
             '-f', 'json')
    assert json.loads(r.stdout) == [
        {'offset': 0, 'length': 4096, 'kind': 'zero'},
        {'offset': 5 * MiB, 'length': 4096, 'kind': 'data'}]
    assert '2 extent(s), 4 KiB of data, 4 KiB zeroed, of 8 MiB' in r.stderr
    r = ursa(cluster.data_dir, 'volume', 'diff', '--from-snap', 'one',
             'listed', '-f', 'json')
    assert len(json.loads(r.stdout)) == 2
    r = ursa(cluster.data_dir, 'volume', 'diff', 'listed', 'listed@one',
             check=False)
    assert r.returncode != 0 and 'not a snapshot' in r.stderr


def _out_of_order():
    out = io.BytesIO()
    w = diffstream.Writer(out, {'volume': 'x', 'size': 20 * MiB,
                                'from_snapshot': 'b1', 'to_snapshot': 'b2'})
    w.data(8 * MiB, b'x' * 4096)
    w.data(4 * MiB, b'y' * 4096)
    w.end()
    return out.getvalue()


def test_a_bad_stream_changes_nothing(cluster, client):
    """Truncated anywhere, a flipped bit, records out of order, bytes
    after the end: refused, and the volume reads, sizes and snapshots as
    before (it was grown for the stream and is put back)."""
    admin = cluster.client()
    admin.create_volume('bsrc', 8 * MiB, chunk_size=4 * MiB)
    with client.open_volume('bsrc') as v:
        Writes(v, 8 * MiB, seed=11).write(10)
    client.create_snapshot('bsrc', 'b1')
    full = export(client, 'bsrc@b1')
    admin.create_volume('bdst', 8 * MiB, chunk_size=4 * MiB)
    apply(client, full, 'bdst')
    admin.grow('bsrc', 20 * MiB)
    with client.open_volume('bsrc') as v:
        w = Writes(v, 20 * MiB, seed=12)
        w.write(40, max_len=1 * MiB)
        w.discard(1 * MiB, 1 * MiB)
    client.create_snapshot('bsrc', 'b2')
    good = export(client, 'bsrc@b2', 'b1')
    before = read_all(client, 'bdst')
    assert len(good) > 4 * MiB

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    bad = {
        'in its start': good[:5],
        'in its header': good[:30],
        'in the middle': good[:len(good) // 2],
        'before its end': good[:-21],
        'in its end': good[:-3],
        'a flipped bit': bytes(flipped),
        'bytes after its end': good + b'\0',
        'out of order': _out_of_order(),
        'not a stream': b'qcow2 or something' * 10,
    }
    for what, stream in bad.items():
        with pytest.raises(exception.InvalidArgument,
                           match='diff stream refused') as e:
            apply(client, stream, 'bdst')
        assert read_all(client, 'bdst') == before, what
        assert admin.volume('bdst')['size'] == 8 * MiB, what
        assert snapshots(cluster, 'bdst') == ['b1'], (what, e.value)
    # The stream that starts from a snapshot the volume lacks: refused
    # before anything is written.
    admin.create_volume('fresh', 8 * MiB)
    with pytest.raises(exception.InvalidArgument, match='no snapshot b1'):
        apply(client, good, 'fresh')
    # And the good one still applies.
    apply(client, good, 'bdst')
    assert read_all(client, 'bdst') == read_all(client, 'bsrc@b2')
    with pytest.raises(exception.InvalidArgument, match='applied already'):
        apply(client, good, 'bdst')


def _stream(header, records=()):
    out = io.BytesIO()
    w = diffstream.Writer(out, header)
    for offset, data in records:
        w.data(offset, data)
    w.end()
    return out.getvalue()


def test_imports_leave_exactly_the_source_or_are_refused(cluster, client):
    """A full stream onto a volume holding data leaves exactly the
    source (it says what reads zeros); an incremental onto a volume
    written since its older snapshot is refused, as are a stream of a
    smaller volume, a newer snapshot name the master would refuse, and
    hostile headers: each before anything is written."""
    admin = cluster.client()
    admin.create_volume('isrc', 8 * MiB, chunk_size=4 * MiB)
    with client.open_volume('isrc') as v:
        Writes(v, 8 * MiB, seed=21).write(8)
    client.create_snapshot('isrc', 'i1')
    admin.create_volume('idst', 8 * MiB, chunk_size=4 * MiB)
    with client.open_volume('idst') as v:
        v.write(0, b'X' * (8 * MiB))
    apply(client, export(client, 'isrc@i1'), 'idst')
    assert read_all(client, 'idst') == read_all(client, 'isrc@i1')

    with client.open_volume('isrc') as v:
        v.write(MiB, b'n' * 4096)
    client.create_snapshot('isrc', 'i2')
    incremental = export(client, 'isrc@i2', 'i1')
    with client.open_volume('idst') as v:
        v.write(3 * MiB, b'local' * 100)
    before = read_all(client, 'idst')
    with pytest.raises(exception.InvalidArgument,
                       match='changed since snapshot i1'):
        apply(client, incremental, 'idst')
    assert read_all(client, 'idst') == before
    assert snapshots(cluster, 'idst') == ['i1']
    client.revert('idst', 'i1')
    apply(client, incremental, 'idst')
    assert read_all(client, 'idst') == read_all(client, 'isrc@i2')

    admin.create_volume('ibig', 16 * MiB)
    with pytest.raises(exception.InvalidArgument, match='shrink it first'):
        apply(client, export(client, 'isrc@i1'), 'ibig')
    hostile = {
        'a name the master refuses': _stream(
            {'volume': 'x', 'size': 16 * MiB, 'from_snapshot': None,
             'to_snapshot': 'bad@name'}, [(0, b'h' * 4096)]),
        'a boolean size': _stream(
            {'volume': 'x', 'size': True, 'from_snapshot': None,
             'to_snapshot': None}),
        'a nested header': (diffstream.MAGIC + b'\0\1' + diffstream.record(
            diffstream.HEADER, b'[' * 20000 + b']' * 20000)
            + diffstream.record(diffstream.END, bytes(16))),
    }
    for what, stream in hostile.items():
        with pytest.raises(exception.InvalidArgument,
                           match='diff stream refused'):
            apply(client, stream, 'ibig')
        assert read_all(client, 'ibig') == bytes(16 * MiB), what
        assert snapshots(cluster, 'ibig') == [], what


def test_an_interrupted_import_changes_nothing(cluster, client):
    """SIGINT or SIGTERM to ursa volume import-diff while it applies a
    stream: the volume is reverted and the import's snapshot deleted
    before it exits."""
    import signal
    import time
    admin = cluster.client()
    admin.create_volume('ksrc', 16 * MiB, chunk_size=4 * MiB)
    with client.open_volume('ksrc') as v:
        v.write(0, os.urandom(16 * MiB))
    client.create_snapshot('ksrc', 'k1')
    stream = export(client, 'ksrc@k1')
    admin.create_volume('kdst', 16 * MiB, chunk_size=4 * MiB)
    env = dict(os.environ, URSA_CONFIG=os.path.join(cluster.data_dir,
                                                    'ursa.conf'))
    for sig in (signal.SIGINT, signal.SIGTERM):
        p = subprocess.Popen(
            [sys.executable, '-m', 'cinder_ursa.cmd.cli', 'volume',
             'import-diff', '-', 'kdst'], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdin.write(stream[:len(stream) // 2])
        p.stdin.flush()
        deadline = time.monotonic() + 60
        while not any(n.startswith('import-diff-')
                      for n in snapshots(cluster, 'kdst')):
            assert time.monotonic() < deadline, p.stderr.read()
            time.sleep(0.05)
        time.sleep(0.3)         # some of it written
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        assert p.returncode != 0, err
        assert read_all(client, 'kdst') == bytes(16 * MiB), (sig, err)
        assert snapshots(cluster, 'kdst') == [], (sig, err)
