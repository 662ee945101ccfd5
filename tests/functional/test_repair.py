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

import os
import struct
import subprocess
import sys
import time

import pytest

from cinder_ursa.client import check
from cinder_ursa.common import checksum
from cinder_ursa.protocol import codec
from tests.functional.conftest import data_client
from tests.functional.test_faults import replica_sets
from tests.functional.test_faults import server_id

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


def _read_each(cluster, vid, chunk, block):
    """The block as each replica serves it (its CRC verified there)."""
    async def one(c, r):
        conn = await c.pool.get(r['address'], r['port'])
        reply = await conn.request(9, codec.encode_read(
            9, vid, 0, chunk['epoch'], block * BS, BS), 10)
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
    chunk = cluster.client().request(
        'GET', '/volumes/%s/chunks' % vid,
        params={'start': 0, 'count': 1})['chunks'][0]
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
    deadline = time.monotonic() + 20
    while _check(cluster, vid, deep=True)['problems']:
        assert time.monotonic() < deadline, 'the torn block stayed torn'
        time.sleep(0.2)
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
from cinder_ursa.client import volume
async def main(url, key, new):
    cl = volume.Cluster([url], key)
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
    within the server timeout and stays in the replica set."""
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
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                       os.path.abspath(__file__)))))
    assert cluster.cs_procs[i].wait(10) == 70, 'the primary did not crash'
    del cluster.cs_procs[i]
    cluster.start_chunkserver(i)
    assert replica_sets(cluster, 'v')[0][0] == primary
    # The write reached the primary alone: the replicas differ.
    diverged = _check(cluster, vid)['problems']
    assert any('differ' in p['problem'] for p in diverged), diverged

    report = _check(cluster, vid, deep=True, repair=True)
    assert report['problems'] == [], report
    chunk = cluster.client().request(
        'GET', '/volumes/%s/chunks' % vid,
        params={'start': 0, 'count': 1})['chunks'][0]
    assert _read_each(cluster, vid, chunk, 0) == [NEW] * 3
