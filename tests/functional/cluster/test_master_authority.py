"""Chunk servers take replica sets, epochs and lease generations from the
master, never from a request.  Each probe speaks the data protocol with
the cluster key, as a buggy or hostile client could: a WRITE naming a
replica set, an epoch or a generation the master never issued, a FENCE
to a generation above the master's, a REPLICATE or READ at an epoch from
the future.  Each is refused; the replicas stay identical and the real
lease holder keeps writing."""

import asyncio
import struct
import uuid

import pytest

from cinder_ursa import exception
from cinder_ursa.client import check
from cinder_ursa.common import checksum
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import module_cluster

MiB = 1024 * 1024
BS = 4096


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, 'authority')


@pytest.fixture
def setup(cluster, request):
    """A volume whose chunk 0 is written by a lease holder: (volume id,
    chunk 0 from the master, the holder's generation, the holder)."""
    name = request.node.name[:60]
    vid = cluster.client().create_volume(name, 4 * MiB, chunk_size=MiB)['id']
    cl = data_client(cluster).__enter__()
    v = cl.open_volume(name)
    v.write(0, b'a' * BS)
    v.flush()
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    yield vid, chunk, v.volume.generation, v
    v.close()
    cl.close()


def _send(cluster, server, frame_fn):
    """Send one request (frame_fn(rid) -> buffers) to a chunk server and
    return the decoded reply status (raises the remote error)."""
    async def go():
        conn = await aio.PeerConnection.connect(server['address'],
                                                server['port'], cluster.key)
        try:
            reply = await conn.request(7, frame_fn(7), 30)
            return codec.reply_status(reply.body)
        finally:
            conn.close()
    return asyncio.run(go())


def _check_clean(cluster, vid):
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid))
    assert report['problems'] == [], report


def test_a_write_naming_a_replica_set_of_its_own_is_refused(cluster, setup):
    vid, chunk, gen, holder = setup
    primary = chunk['replicas'][0]
    with pytest.raises(exception.StaleEpoch, match='master'):
        _send(cluster, primary, lambda rid: codec.encode_write(
            rid, vid, 0, chunk['epoch'], gen, 0, [primary['id']],
            b'X' * BS, min_replicas=1))
    _check_clean(cluster, vid)
    assert holder.read(0, BS) == b'a' * BS


def test_a_write_at_an_epoch_the_master_never_issued_is_refused(cluster,
                                                                setup):
    vid, chunk, gen, holder = setup
    primary = chunk['replicas'][0]
    ids = [r['id'] for r in chunk['replicas']]
    with pytest.raises(exception.StaleEpoch, match='not issued'):
        _send(cluster, primary, lambda rid: codec.encode_write(
            rid, vid, 0, chunk['epoch'] + 1, gen, 0, ids, b'X' * BS,
            min_replicas=2))
    # The primary did not adopt the epoch: the holder's map still works.
    holder.write(BS, b'b' * BS)
    holder.flush()
    _check_clean(cluster, vid)


def test_a_replicate_or_read_from_the_future_is_refused(cluster, setup):
    vid, chunk, gen, holder = setup
    replica = chunk['replicas'][1]
    req = codec.WriteRequest(vid, 0, chunk['epoch'] + 5, gen, 0, 0, BS, [],
                             b'X' * BS)
    with pytest.raises(exception.StaleEpoch, match='not issued'):
        _send(cluster, replica,
              lambda rid: codec.encode_replicate(rid, req, req.epoch))
    with pytest.raises(exception.StaleEpoch, match='not issued'):
        _send(cluster, replica, lambda rid: codec.encode_read(
            rid, vid, 0, chunk['epoch'] + 5, 0, BS))
    holder.write(2 * BS, b'c' * BS)
    holder.flush()
    _check_clean(cluster, vid)


def test_a_write_under_a_generation_above_the_masters_is_refused(cluster,
                                                                 setup):
    vid, chunk, gen, holder = setup
    primary = chunk['replicas'][0]
    ids = [r['id'] for r in chunk['replicas']]
    with pytest.raises(exception.Fenced, match='not issued'):
        _send(cluster, primary, lambda rid: codec.encode_write(
            rid, vid, 0, chunk['epoch'], gen + 1000, 0, ids, b'X' * BS,
            min_replicas=2))
    holder.write(3 * BS, b'd' * BS)   # not fenced by the probe
    holder.flush()
    assert holder.read(0, BS) == b'a' * BS
    _check_clean(cluster, vid)


def test_a_fence_above_the_masters_generation_is_refused(cluster, setup):
    vid, chunk, gen, holder = setup
    for server in cluster.client().servers():
        with pytest.raises(exception.InvalidArgument, match='not issued'):
            _send(cluster, server,
                  lambda rid: control.encode_fence(rid, vid, 2 ** 64 - 1))
    holder.write(0, b'e' * BS)   # the volume is not bricked
    holder.flush()
    assert holder.read(0, BS) == b'e' * BS
    # A real new holder still fences the old one.
    with data_client(cluster) as cl:
        v2 = cl.open_volume(vid, holder='next', force=True)
        v2.write(0, b'f' * BS)
        with pytest.raises(exception.Fenced):
            holder.write(0, b'g' * BS)
        v2.close()


def test_a_raw_write_cannot_pass_the_fence(cluster, setup):
    """FLAG_RAW stores blocks as they are: only a primary's repair push
    (REPLICATE) may carry it, never a client's WRITE."""
    vid, chunk, gen, holder = setup
    primary = chunk['replicas'][0]
    ids = [r['id'] for r in chunk['replicas']]
    entry = struct.pack('!II', checksum.crc(b'E' * BS), 1)

    def raw_write(rid, g):
        # What encode_write will not build: a WRITE whose payload is an
        # entry and a block, as a raw REPLICATE's is.
        body = codec._WRITE.pack(uuid.UUID(vid).bytes, 0, chunk['epoch'], g,
                                 0, 0, BS, len(ids), 2)
        body += b''.join(struct.pack('!I', i) for i in ids)
        body += entry + b'E' * BS
        return codec.header(codec.WRITE, rid, len(body),
                            codec.FLAG_RAW) + body

    for g in (0, gen):
        with pytest.raises(exception.InvalidArgument, match='FLAG_RAW'):
            _send(cluster, primary, lambda rid, g=g: raw_write(rid, g))
    # Nor may a raw REPLICATE carry a torn block, or a layer's state into
    # the head.
    replica = chunk['replicas'][1]
    for bad in (struct.pack('!II', 1234, 1) + b'E' * BS,
                struct.pack('!II', checksum.crc(b'E' * BS), 3) + b'E' * BS):
        req = codec.WriteRequest(vid, 0, chunk['epoch'], 0, 0, 0, BS, [],
                                 bad, codec.FLAG_RAW)
        with pytest.raises(exception.InvalidArgument,
                           match='valid blocks of the head'):
            _send(cluster, replica,
                  lambda rid, req=req: codec.encode_replicate(rid, req,
                                                              req.epoch))
    assert holder.read(0, BS) == b'a' * BS
    _check_clean(cluster, vid)


def _send_as_master(cluster, server, frame_fn):
    """:func:`_send` on a connection that first claimed the master term
    the chunk server follows, as ``ursa cluster check --repair`` does."""
    async def go():
        conn = await check._as_master(cluster, server, 30)
        try:
            reply = await conn.request(7, frame_fn(7), 30)
            return codec.reply_status(reply.body)
        finally:
            conn.close()
    return asyncio.run(go())


def test_master_commands_need_a_connection_that_claimed_a_term(cluster,
                                                                setup):
    """DELETE, SNAPSHOT, REVERT and REBUILD change or destroy data and
    only a master sends them: a connection that claimed no master term
    (every client's) is refused them, whoever holds the key."""
    vid, chunk, gen, holder = setup
    primary = chunk['replicas'][0]
    probes = {
        'DELETE of the volume': lambda rid: control.encode_delete(rid, vid),
        'DELETE of chunk 0': lambda rid: control.encode_delete(rid, vid, 0),
        'SNAPSHOT': lambda rid: control.encode_snapshot(rid, vid, 1),
        'SNAPSHOT with gc': lambda rid: control.encode_snapshot(
            rid, vid, 0, gc=True),
        'REVERT': lambda rid: control.encode_revert(rid, vid, 0, 0),
        'REBUILD': lambda rid: control.encode_rebuild(
            rid, vid, 0, chunk['epoch'], 999),
    }
    for name, probe in probes.items():
        for server in cluster.client().servers():
            with pytest.raises(exception.NotAuthorized,
                               match='claimed a master term'):
                _send(cluster, server, probe)
                pytest.fail('%s taken from a client' % name)
    # A dry run only counts: ursa cluster check asks it of any server.
    _send(cluster, primary,
          lambda rid: control.encode_snapshot(rid, vid, 0, dry_run=True))
    assert holder.read(0, BS) == b'a' * BS
    holder.write(BS, b'b' * BS)
    holder.flush()
    _check_clean(cluster, vid)
    # On a connection that claimed the term, DELETE of a chunk nobody
    # holds is taken (and deletes nothing).
    assert _send_as_master(cluster, primary, lambda rid:
                           control.encode_delete(rid, vid, 3)) == b''
    assert holder.read(0, BS) == b'a' * BS


def test_a_snapshot_sequence_the_master_never_issued_is_refused(cluster,
                                                                setup):
    """A SNAPSHOT or REVERT naming a sequence above the master's, even on
    a connection that claimed the term, is refused: adopted, it would
    make every write to the volume stale for good."""
    vid, chunk, gen, holder = setup
    for server in cluster.client().servers():
        for probe in (
                lambda rid: control.encode_snapshot(rid, vid, 2 ** 64 - 1),
                lambda rid: control.encode_snapshot(rid, vid, 5, gc=True),
                lambda rid: control.encode_revert(rid, vid, 0, 2 ** 63)):
            with pytest.raises(exception.InvalidArgument,
                               match='not issued by the master'):
                _send_as_master(cluster, server, probe)
    holder.write(0, b'c' * BS)      # the volume is not bricked
    holder.flush()
    assert holder.read(0, BS) == b'c' * BS
    # The master's own snapshot (it claims its term as well) is taken.
    cluster.client().create_snapshot(vid, 's1')
    holder.write(0, b'd' * BS)     # learns the new sequence, writes
    holder.flush()
    assert holder.read(0, BS) == b'd' * BS
    _check_clean(cluster, vid)
