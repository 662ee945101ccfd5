"""FLUSH and FUA answer only once the data is durable.

Chunk server 0 runs on the faulty disk of ``faultydisk.py``, which keeps
the books a power cut would settle (what was written and never fsynced,
which directory entries were never fsynced) and can make every fsync slow.
A FLUSH covers every write acknowledged before it was issued, whoever
wrote it: the checks read those books the moment a FLUSH returns.
"""

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from cinder_ursa import exception
from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.faultydisk import unsynced
from tests.fixtures.processes import ROOT

MiB = 1024 * 1024


@pytest.fixture
def cluster(tmp_path, faulty_disk):
    """Three chunk servers, the first on the faulty disk."""
    c = AllInOne(str(tmp_path / 'cluster'), 3, port_base=0,
                 server_timeout=3.0)
    c.start()
    yield c
    c.stop(kill=True)


def _slow(trigger, seconds):
    with open(str(trigger) + '.delay', 'w') as f:
        f.write('%s\n' % seconds)


def _flush_racing(cluster, trigger, vid, prepare, racer):
    """Open volume 'v', ``await prepare(v)``, make the disk slow, start
    ``racer(v)`` and FLUSH while it syncs; return what was left unsynced
    the moment the FLUSH returned."""
    async def body(cl):
        v = await cl.open_volume('v')
        try:
            await prepare(v)
            _slow(trigger, 0.3)
            other = asyncio.ensure_future(racer(v))
            await asyncio.sleep(0.5)
            assert not other.done(), 'the disk was not slow'
            await v.flush()
            left = unsynced(trigger, vid)
            await other
            return left
        finally:
            _slow(trigger, 0)
            await v.close()

    with data_client(cluster) as cl:
        return cl.run(body)


def test_a_flush_waits_for_the_flush_already_syncing(cluster, faulty_disk):
    _, trigger = faulty_disk
    vid = cluster.client().create_volume('v', 8 * MiB,
                                         chunk_size=MiB)['id']

    async def write(v):
        await v.write(0, os.urandom(4 * MiB))

    assert _flush_racing(cluster, trigger, vid, write,
                         lambda v: v.flush()) == []


def test_a_chunk_server_flush_waits_for_the_sync_in_progress(
        cluster, faulty_disk):
    """Two FLUSHes of one volume on two connections to one chunk server
    (two gateways, or ursa-nbd's CAN_MULTI_CONN clients): the second waits
    for the fdatasync the first started."""
    _, trigger = faulty_disk
    vid = cluster.client().create_volume('v', 8 * MiB,
                                         chunk_size=MiB)['id']
    sid = server_id(cluster, 0)
    cs = next(s for s in cluster.client().servers() if s['id'] == sid)

    async def flushes():
        a = await aio.PeerConnection.connect(cs['address'], cs['port'],
                                             cluster.key)
        b = await aio.PeerConnection.connect(cs['address'], cs['port'],
                                             cluster.key)
        try:
            first = asyncio.ensure_future(a.request(
                1, codec.encode_flush(1, vid), 60))
            await asyncio.sleep(0.5)
            assert not first.done(), 'the disk was not slow'
            reply = await b.request(2, codec.encode_flush(2, vid), 60)
            codec.reply_status(reply.body)
            left = unsynced(trigger, vid)
            codec.reply_status((await first).body)
            return left
        finally:
            a.close()
            b.close()

    with data_client(cluster) as cl:
        v = cl.open_volume('v')
        v.write(0, os.urandom(4 * MiB))
        assert unsynced(trigger, vid), 'nothing to flush: no test'
        _slow(trigger, 0.3)
        try:
            assert asyncio.run(flushes()) == []
        finally:
            _slow(trigger, 0)
        v.close()


def test_a_flush_racing_a_fua_write_covers_what_was_acknowledged(
        cluster, faulty_disk):
    """A FUA write to one chunk syncs in the background when a FLUSH
    comes: the FLUSH must still make the earlier write to another chunk
    durable (a FUA write used to take every dirty file of the server, and
    the FLUSH then found nothing to sync and answered at once)."""
    _, trigger = faulty_disk
    vid = cluster.client().create_volume('v', 8 * MiB,
                                         chunk_size=MiB)['id']

    async def write(v):
        await v.flush()
        await v.write(0, os.urandom(MiB))                 # chunk 0

    left = _flush_racing(cluster, trigger, vid, write, lambda v: v.write(
        MiB, os.urandom(MiB), fua=True))                   # chunk 1
    assert [p for p in left if '/0.' in p] == []
    assert left == []


WRITER = '''
import os, sys
from cinder_ursa.client import sync
cl = sync.SyncCluster([sys.argv[1]], open(sys.argv[2], 'rb').read().strip())
v = cl.open_volume('v', holder='dead-writer')
v.write(0, os.urandom(6 * 1024 * 1024))
print('acknowledged', flush=True)
os._exit(0)   # no flush, no lease release: a crash
'''


def test_the_next_holder_flushes_what_a_dead_writer_left(cluster, faulty_disk):
    _, trigger = faulty_disk
    vid = cluster.client().create_volume('v', 8 * MiB,
                                         chunk_size=MiB)['id']
    out = subprocess.run(
        [sys.executable, '-c', WRITER, cluster.master_url,
         cluster.key_file], cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert out.stdout.strip() == 'acknowledged', out.stderr
    assert unsynced(trigger, vid), 'the writer left nothing unsynced'
    with data_client(cluster) as cl:
        v = cl.open_volume('v', holder='next-holder', force=True)
        v.flush()
        assert unsynced(trigger, vid) == []
        v.close()


def test_a_multiattach_flush_covers_the_other_writers(cluster, faulty_disk):
    """Two hosts write one multiattach volume (a clustered file system):
    a flush by either covers what both had acknowledged, as a shared
    disk's cache flush does."""
    _, trigger = faulty_disk
    vid = cluster.client().create_volume('v', 8 * MiB, chunk_size=MiB,
                                         multiattach=True)['id']
    with data_client(cluster) as a, data_client(cluster) as b:
        va = a.open_volume('v', holder='host-a')
        vb = b.open_volume('v', holder='host-b')
        va.flush()
        vb.flush()   # both past their first flush
        va.write(0, os.urandom(2 * MiB))
        assert unsynced(trigger, vid), 'nothing to flush: no test'
        vb.flush()
        assert unsynced(trigger, vid) == []
        va.close()
        vb.close()


def test_a_restarted_chunk_server_syncs_what_its_last_run_left(
        cluster, faulty_disk):
    """A chunk server killed after acknowledging writes loses its books of
    what is unsynced, not the page cache holding them: the client's next
    FLUSH must still make them durable, so the server syncs what its last
    run left before it serves again."""
    _, trigger = faulty_disk
    vid = cluster.client().create_volume('v', 8 * MiB,
                                         chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        v = cl.open_volume('v')
        v.flush()
        v.write(0, os.urandom(3 * MiB))
        assert unsynced(trigger, vid), 'nothing to flush: no test'
        cluster.kill_chunkserver(0)
        cluster.start_chunkserver(0)
        v.flush()
        assert unsynced(trigger, vid) == []
        v.close()
    # A clean stop syncs everything and says so: the next start has
    # nothing to sync again.
    cluster.kill_chunkserver(0, signal.SIGTERM)
    cluster.start_chunkserver(0)
    with open(os.path.join(cluster.data_dir, 'cs0.log')) as f:
        log = f.read()
    assert log.count('did not stop cleanly') == 1, log[-2000:]


def test_a_replica_that_cannot_flush_leaves_the_replica_set(cluster,
                                                           faulty_disk):
    """A second replica fails at flush time, after the client's chunk map
    went stale with the first (the master ignores a drop at an old epoch):
    the flush must still drop it, and fail when fewer than min_replicas
    durable copies are left, never report success."""
    _, trigger = faulty_disk
    cluster.client().create_volume('v', 8 * MiB, chunk_size=MiB)
    sick, dead = server_id(cluster, 0), server_id(cluster, 1)
    with data_client(cluster, request_timeout=5.0, io_timeout=20.0) \
            as cl:
        v = cl.open_volume('v')
        v.flush()
        cluster.kill_chunkserver(1)
        v.write(0, os.urandom(4 * MiB))   # server 1 dropped here
        trigger.touch()                    # server 0's disk fails
        try:
            with pytest.raises(exception.InsufficientReplicas):
                v.flush()
        finally:
            trigger.unlink()
        sets = replica_sets(cluster, 'v')
        assert sets and all(sick not in ids and dead not in ids
                            for ids in sets.values()), sets
        v.close()
