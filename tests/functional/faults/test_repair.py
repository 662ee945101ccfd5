"""Torn blocks and diverged replicas are found and repaired.

A power cut during an unflushed overwrite can leave a block's data and its
CRC disagreeing (the data page reached the disk and the metadata page did
not, or the reverse), on one replica or on all of them.  Reads must then
return the old or the new data, the same from every replica, never an
error that lasts; ``ursa volume check --deep`` must find such blocks and
``--repair`` mend them.  A primary that dies between its local write and
the forward, with its client gone too, leaves replicas that differ at the
same epoch: the repair makes them identical.

The torn blocks are made by writing a replica's files behind its chunk
server (the same page cache it reads), as a power cut would leave them.
"""

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver import gate
from cinder_ursa.client import check
from cinder_ursa.common import checksum
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.processes import ROOT
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BS = 4096
OLD, NEW = b'o' * BS, b'n' * BS


def _files(cluster, sid, vid, index=0):
    i = next(i for i in range(cluster.n) if server_id(cluster, i) == sid)
    base = os.path.join(cluster.cs_dir(i), 'chunks', vid, str(index))
    return base + '.data', base + '.meta'


def _tear(cluster, sid, vid, block, data=None, crc_of=None):
    """Write a replica's block data and/or its stored CRC directly."""
    data_path, meta_path = _files(cluster, sid, vid)
    if data is not None:
        with open(data_path, 'r+b') as f:
            f.seek(block * BS)
            f.write(data)
    if crc_of is not None:
        with open(meta_path, 'r+b') as f:
            f.seek(block * 8)
            _, word = struct.unpack('!II', f.read(8))
            f.seek(block * 8)
            f.write(struct.pack('!II', checksum.crc(crc_of), word))


def _check(cluster, vid, **kwargs):
    with data_client(cluster) as cl:
        return cl.run(lambda c: check.check_volume(c, vid, **kwargs))


def _read_each(cluster, vid, chunk, block, snap=0):
    """The block as each replica serves it (its CRC verified there), of
    the head or of snapshot ``snap`` (its sequence)."""
    async def one(c, r):
        conn = await c.pool.get(r['address'], r['port'])
        reply = await conn.request(9, codec.encode_read(
            9, vid, 0, chunk['epoch'], block * BS, BS, snap=snap), 10)
        return bytes(codec.reply_status(reply.body))

    async def each(c):
        return [await one(c, r) for r in chunk['replicas']]
    with data_client(cluster) as cl:
        return cl.run(each)


@pytest.fixture
def volume(make_cluster):
    """A cluster and a volume whose block 0 holds OLD, flushed."""
    cluster = make_cluster(3)
    vid = cluster.client().create_volume('v', 4 * MiB,
                                         chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, OLD + OLD)
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    return cluster, vid, chunk


def test_a_torn_primary_block_reads_old_data_and_is_repaired(volume):
    cluster, vid, chunk = volume
    primary = chunk['replicas'][0]['id']
    _tear(cluster, primary, vid, 0, data=NEW)          # data, not CRC
    # The stored CRCs still agree: only a check that reads data sees it.
    assert _check(cluster, vid)['problems'] == []
    found = _check(cluster, vid, deep=True)['problems']
    assert [p['server'] for p in found] == [primary], found
    assert 'torn' in found[0]['problem']
    _tear(cluster, primary, vid, 1, crc_of=NEW)        # CRC, not data
    with data_client(cluster) as cl:
        with cl.open_volume('v', writable=False) as v:
            # The primary is read first and fails its CRC check: another
            # replica serves, and the primary is repaired behind.
            assert v.read(0, 2 * BS) == OLD + OLD
    wait_for(lambda: not _check(cluster, vid, deep=True)['problems'], 20,
             'the torn block to be repaired', interval=0.2)
    assert _read_each(cluster, vid, chunk, 0) == [OLD] * 3


def test_blocks_torn_on_every_replica_read_one_content_everywhere(volume):
    cluster, vid, chunk = volume
    a, b, c = (r['id'] for r in chunk['replicas'])
    _tear(cluster, a, vid, 0, data=NEW)
    _tear(cluster, b, vid, 0, crc_of=NEW)
    _tear(cluster, c, vid, 0, data=NEW)
    with data_client(cluster, io_timeout=20.0) as cl:
        with cl.open_volume('v', writable=False) as v:
            t = time.monotonic()
            first = v.read(0, BS)
            assert time.monotonic() - t < 10, 'the read waited for a timeout'
            assert first in (OLD, NEW)
            assert v.read(0, BS) == first
    # Every replica serves that content now, and agrees on it.
    assert _read_each(cluster, vid, chunk, 0) == [first] * 3
    assert _check(cluster, vid, deep=True)['problems'] == []


def test_the_deep_check_repairs_what_it_finds(volume):
    cluster, vid, chunk = volume
    replica = chunk['replicas'][2]['id']
    _tear(cluster, replica, vid, 1, data=NEW)
    report = _check(cluster, vid, deep=True, repair=True)
    assert [p['server'] for p in report['found']] == [replica]
    assert report['repaired'] >= 1
    assert report['problems'] == []
    assert _check(cluster, vid, deep=True)['problems'] == []
    assert _read_each(cluster, vid, chunk, 1) == [OLD] * 3


DOOMED = '''
import asyncio, os, sys
from cinder_ursa.client import cluster
async def main(url, key, new):
    cl = cluster.Cluster([url], key)
    v = await cl.open_volume('v', holder='doomed', force=True)
    info = await v._chunk(0, False)
    _, host, port = info.replicas[0]
    conn = await cl.pool.get(host, port)
    conn.send(1, v._write_frame(1, 0, info, 0, new, False))
    await asyncio.sleep(1.0)
    os._exit(0)   # gone, reporting nothing to anyone
asyncio.run(main(sys.argv[1], open(sys.argv[2], 'rb').read().strip(),
                 b'n' * 4096))
'''


def test_replicas_diverged_by_a_primary_crash_are_made_identical(
        make_cluster):
    """The primary applies a write locally and dies before forwarding it;
    its client dies too, so nobody reports the primary, which restarts
    within the server timeout and stays in the replica set: the resync
    after its crash makes the replicas identical, with no repair asked."""
    cluster = make_cluster(3, server_timeout=60.0)
    vid = cluster.client().create_volume('v', 4 * MiB,
                                         chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, OLD)
    primary = replica_sets(cluster, 'v')[0][0]
    i = next(i for i in range(cluster.n) if server_id(cluster, i) == primary)
    cluster.kill_chunkserver(i)
    os.environ['URSA_INJECT_FAULT'] = 'exit-before-forward'
    try:
        cluster.start_chunkserver(i)
    finally:
        del os.environ['URSA_INJECT_FAULT']
    subprocess.run([sys.executable, '-c', DOOMED, cluster.master_url,
                    cluster.key_file], check=True, timeout=60,
                   cwd=ROOT)
    assert cluster.cs_procs[i].wait(10) == 70, 'the primary did not crash'
    del cluster.cs_procs[i]
    cluster.start_chunkserver(i)
    assert replica_sets(cluster, 'v')[0][0] == primary
    # The write reached the primary alone, whose restart after a crash
    # compares the replicas and makes them identical by itself: the
    # primary's block, valid, is the authority.
    wait_for(lambda: _check(cluster, vid)['problems'] == [], 30,
             lambda: 'replicas identical: %s' % _check(cluster, vid))
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    assert _read_each(cluster, vid, chunk, 0) == [NEW] * 3
    assert _check(cluster, vid, deep=True)['problems'] == []


def _restart_primary(cluster, vid):
    """Restart chunk 0's primary (it forgets what the master confirmed);
    return chunk 0 as the master has it then."""
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    primary = chunk['replicas'][0]['id']
    i = next(i for i in range(cluster.n) if server_id(cluster, i) == primary)
    cluster.kill_chunkserver(i)
    cluster.start_chunkserver(i)
    return cluster.client().chunk_map(vid, 0, 1)['chunks'][0]


def test_a_repair_racing_writes_loses_none_of_them(make_cluster):
    """A REPAIR sent to a primary that must first confirm the chunk with
    the master (it just restarted) holds the chunk until the repair is
    pushed: writes sent meanwhile wait, are applied after it, and every
    replica ends with every acknowledged write."""
    cluster = make_cluster(3)
    vid = cluster.client().create_volume('v', MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, OLD * 256)
    chunk = _restart_primary(cluster, vid)
    _tear(cluster, chunk['replicas'][0]['id'], vid, 255, data=NEW)
    ids = [r['id'] for r in chunk['replicas']]

    async def race(cl):
        vol = await cl.open_volume('v')
        prim = chunk['replicas'][0]
        a = await aio.PeerConnection.connect(prim['address'], prim['port'],
                                             cluster.key)
        b = await aio.PeerConnection.connect(prim['address'], prim['port'],
                                             cluster.key)
        repair = asyncio.ensure_future(a.request(1, control.encode_repair(
            1, vid, 0, chunk['epoch'], 0, 256), 30))

        async def write(n):
            await asyncio.sleep(0.001 * n)
            reply = await b.request(100 + n, codec.encode_write(
                100 + n, vid, 0, chunk['epoch'], vol.generation, n * BS,
                ids, bytes([n + 1]) * BS, min_replicas=2), 30)
            codec.decode_write_ok(reply.body)
        await asyncio.gather(*(write(n) for n in range(150)))
        assert control.decode_count_ok((await repair).body) == 1
        a.close()
        b.close()
        await vol.close()

    with data_client(cluster) as cl:
        cl.run(race)
    for r in chunk['replicas']:
        only = dict(chunk, replicas=[r])
        for n in (0, 75, 149):
            assert _read_each(cluster, vid, only, n) == [bytes([n + 1]) * BS]
    assert _check(cluster, vid, deep=True)['problems'] == []


def test_requests_behind_a_confirmation_are_answered_in_order(make_cluster):
    cluster = make_cluster(3)
    vid = cluster.client().create_volume('v', MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, OLD * 4)
    chunk = _restart_primary(cluster, vid)
    ids = [r['id'] for r in chunk['replicas']]

    async def pipeline(cl):
        vol = await cl.open_volume('v')
        prim = chunk['replicas'][0]
        conn = await aio.PeerConnection.connect(prim['address'],
                                                prim['port'], cluster.key)
        sent = [conn.send(1, control.encode_repair(1, vid, 0, chunk['epoch'],
                                                 0, 4)),
                conn.send(2, codec.encode_write(
                    2, vid, 0, chunk['epoch'], vol.generation, 0, ids, NEW,
                    min_replicas=2)),
                conn.send(3, codec.encode_read(3, vid, 0, chunk['epoch'], 0,
                                               BS))]
        replies = [await conn.wait(rid, f, 10)
                   for rid, f in zip((1, 2, 3), sent, strict=True)]
        conn.close()
        await vol.close()
        return replies

    with data_client(cluster) as cl:
        repair, write, read = cl.run(pipeline)
    control.decode_count_ok(repair.body)
    codec.decode_write_ok(write.body)
    # The read came before the write was acknowledged: either content
    # (reads are not held); once it is, every replica has it.
    assert bytes(codec.reply_status(read.body)) in (OLD, NEW)
    assert _read_each(cluster, vid, chunk, 0) == [NEW] * 3


def test_an_unreachable_master_fails_waiting_writes_once(make_cluster):
    """The primary restarted and the master froze: the writes that need
    it are all answered 'unavailable' after one confirmation timeout (not
    one timeout each, one after another), beyond a queue bound at once,
    and reads at a known epoch are served meanwhile."""
    # A master lease (server_timeout) a loaded machine's heartbeat delays
    # do not outlast: the read must not need the frozen master.
    cluster = make_cluster(3, replication_timeout=2.0, server_timeout=10.0)
    vid = cluster.client().create_volume('v', MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, OLD * 4)
            gen = v.volume.generation + 1   # the next holder's, below
    chunk = _restart_primary(cluster, vid)
    ids = [r['id'] for r in chunk['replicas']]
    prim = chunk['replicas'][0]

    async def flood():
        conn = await aio.PeerConnection.connect(prim['address'],
                                                prim['port'], cluster.key)
        # The master may have moved the chunk's epoch while the primary
        # was down; a read while it answers makes the epoch known, so
        # the read below needs no master (the writes still do: their
        # generation is one the master has not issued).
        warm = conn.send(1, codec.encode_read(1, vid, 0, chunk['epoch'],
                                              0, BS))
        codec.reply_status((await conn.wait(1, warm, 30)).body)
        cluster.master_proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        n = gate.MAX_PER_CHUNK + 40
        futs = [conn.send(i + 1, codec.encode_write(
            i + 1, vid, 0, chunk['epoch'], gen, (i % 256) * BS, ids, NEW,
            min_replicas=2)) for i in range(1, n + 1)]
        rid = n + 2
        read = conn.send(rid, codec.encode_read(rid, vid, 0, chunk['epoch'],
                                                0, BS))
        got_read = await conn.wait(rid, read, 10)
        read_after = time.monotonic() - t0
        errors = []
        for i, f in enumerate(futs, 2):
            reply = await conn.wait(i, f, 30)
            try:
                codec.decode_write_ok(reply.body)
                errors.append(None)
            except exception.Unavailable as e:
                errors.append(str(e))
        conn.close()
        return got_read, read_after, errors, time.monotonic() - t0

    try:
        got_read, read_after, errors, took = asyncio.run(flood())
    finally:
        cluster.master_proc.send_signal(signal.SIGCONT)
    assert bytes(codec.reply_status(got_read.body)) == OLD
    assert read_after < 1.5, read_after
    # One wait for the master (a 2 s confirmation; or, when the restarted
    # primary does not know a peer's address yet, the control plane's
    # 10 s ask for it), not one per write (1064 of them).
    assert took < 25, took
    assert all(e is not None for e in errors)
    assert sum('busy' in e for e in errors) >= 40


@pytest.mark.parametrize('snapshot', [False, True],
                         ids=['head', 'after-a-snapshot'])
def test_a_write_fenced_at_the_replicas_first_leaves_them_identical(
        make_cluster, snapshot):
    """The master fences a writer (its lease revoked) while the chunk's
    primary is frozen: the other replicas learn the new generation first.
    The old writer's write, sent before, reaches the primary when it
    thaws; it applies it and the replicas refuse it as fenced.  The
    writer is told it was fenced, and only once the primary pushed the
    block to the replicas: whatever the block holds then, every replica
    holds it (without this they differed: a reader saw the write or not
    depending on the replica it read).  After a snapshot, the write's
    copy-on-write (made on the primary only) is pushed too: the snapshot
    reads the old data on every replica."""
    cluster = make_cluster(3, server_timeout=30.0)
    vid = cluster.client().create_volume('v', MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, OLD)
    seq = cluster.client().create_snapshot('v', 's1')['seq'] \
        if snapshot else 0
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            gen = v.volume.generation
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    ids = [r['id'] for r in chunk['replicas']]
    prim = chunk['replicas'][0]
    i = next(i for i in range(cluster.n) if server_id(cluster, i) == ids[0])
    proc = cluster.cs_procs[i]

    async def fenced_write():
        conn = await aio.PeerConnection.connect(prim['address'],
                                                prim['port'], cluster.key)
        proc.send_signal(signal.SIGSTOP)
        try:
            # Sent first: it waits in the frozen primary's socket.
            fut = conn.send(1, codec.encode_write(
                1, vid, 0, chunk['epoch'], gen, 0, ids, NEW,
                min_replicas=2, seq=seq))
            # The revoke's FENCE reaches the other replicas now, the
            # primary's only after it thaws (the master gives up on it).
            revoked = asyncio.get_running_loop().run_in_executor(
                None, cluster.client().revoke_lease, 'v')
            await asyncio.sleep(1.5)
        finally:
            proc.send_signal(signal.SIGCONT)
        reply = await conn.wait(1, fut, 30)
        await revoked
        conn.close()
        return reply

    reply = asyncio.run(fenced_write())
    with pytest.raises(exception.Fenced):
        codec.decode_write_ok(reply.body)
    blocks = _read_each(cluster, vid, chunk, 0)
    assert blocks in ([OLD] * 3, [NEW] * 3), [b[:1] for b in blocks]
    if snapshot:
        assert _read_each(cluster, vid, chunk, 0, snap=seq) == [OLD] * 3
    # (A write refused by the primary too, once its copy-on-write was
    # synced, has that copy pushed just after the answer.)
    wait_for(lambda: _check(cluster, vid, deep=True)['problems'] == [], 10,
             lambda: 'replicas identical: %s' % _check(cluster, vid,
                                                       deep=True))


def test_a_snapshot_layer_is_read_and_replaced_raw_over_the_wire(volume):
    """A replica's snapshot layer, damaged on disk, is replaced by another
    replica's, block for block: READ raw of the layer (``snap`` names it)
    on one, REPLICATE raw with FLAG_LAYER on the other (the primitive
    that copies a replica's layers)."""
    cluster, vid, chunk = volume
    seq = cluster.client().create_snapshot('v', 's1')['seq']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, NEW)                      # OLD goes to layer seq
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    good, bad = chunk['replicas'][0], chunk['replicas'][1]
    i = next(i for i in range(cluster.n) if server_id(cluster, i) ==
             bad['id'])
    layer = os.path.join(cluster.cs_dir(i), 'chunks', vid, '0.s%d' % seq)
    with open(layer + '.data', 'r+b') as f:
        f.write(b'x' * BS)                       # torn in the layer
    n = 256                                      # the 1 MiB chunk

    async def copy(c):
        src = await c.pool.get(good['address'], good['port'])
        reply = await src.request(1, codec.encode_read(
            1, vid, 0, chunk['epoch'], 0, n * BS, snap=seq,
            flags=codec.FLAG_RAW), 10)
        entries, data = codec.decode_read_raw(reply.body)
        req = codec.WriteRequest(vid, 0, chunk['epoch'], 0, seq, 0, n * BS,
                                 [], bytes(entries) + bytes(data),
                                 codec.FLAG_RAW | codec.FLAG_LAYER)
        dst = await c.pool.get(bad['address'], bad['port'])
        reply = await dst.request(2, codec.encode_replicate(
            2, req, chunk['epoch']), 10)
        codec.decode_write_ok(reply.body)
        # A layer named by no sequence is refused.
        req.seq = req.floor = 0
        reply = await dst.request(3, codec.encode_replicate(
            3, req, chunk['epoch']), 10)
        with pytest.raises(exception.InvalidArgument, match='layer'):
            codec.decode_write_ok(reply.body)
        # The snapshot reads OLD on the replaced replica, CRC verified.
        reply = await dst.request(4, codec.encode_read(
            4, vid, 0, chunk['epoch'], 0, BS, snap=seq), 10)
        return bytes(codec.reply_status(reply.body))
    with data_client(cluster) as cl:
        assert cl.run(copy) == OLD
    assert _check(cluster, vid, deep=True)['problems'] == []


def test_a_copy_on_write_torn_on_every_replica_is_mended_from_the_head(
        volume):
    """A power cut while every replica synced a block's copy into a
    snapshot's layer, before any overwrote the block: the copy's entry is
    on disk everywhere, its data nowhere.  The head still holds that very
    version on each: the repair takes it from there (not the torn data
    as it is), and the snapshot reads what it held."""
    cluster, vid, chunk = volume
    seq = cluster.client().create_snapshot('v', 's1')['seq']

    async def copy(c):
        # What a copy-on-write writes, on every replica: the head's block
        # and its entry, into layer ``seq``.
        for k, r in enumerate(chunk['replicas']):
            conn = await c.pool.get(r['address'], r['port'])
            reply = await conn.request(2 * k, codec.encode_read(
                2 * k, vid, 0, chunk['epoch'], 0, BS,
                flags=codec.FLAG_RAW), 10)
            entries, data = codec.decode_read_raw(reply.body)
            assert bytes(data) == OLD
            req = codec.WriteRequest(vid, 0, chunk['epoch'], 0, seq, 0, BS,
                                     [], bytes(entries) + bytes(data),
                                     codec.FLAG_RAW | codec.FLAG_LAYER)
            reply = await conn.request(2 * k + 1, codec.encode_replicate(
                2 * k + 1, req, chunk['epoch']), 10)
            codec.decode_write_ok(reply.body)
    with data_client(cluster) as cl:
        cl.run(copy)
    for r in chunk['replicas']:
        i = next(i for i in range(cluster.n)
                 if server_id(cluster, i) == r['id'])
        layer = os.path.join(cluster.cs_dir(i), 'chunks', vid,
                             '0.s%d.data' % seq)
        with open(layer, 'r+b') as f:
            f.write(bytes(BS))                   # the copy's data lost
    with data_client(cluster, io_timeout=20.0) as cl:
        with cl.open_volume('v@s1', writable=False) as s:
            assert s.read(0, 2 * BS) == OLD + OLD
    wait_for(lambda: not _check(cluster, vid, deep=True)['problems'], 20,
             'the torn copies to be mended', interval=0.2)
