"""Chunk servers killed under load, too few replicas, fencing."""

import asyncio
import os
import random
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.client import check
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BS = 64 * 1024


async def workload(cluster_, name, model, ops, writers, on_progress):
    """Concurrent writers on disjoint blocks; the model records only
    acknowledged writes."""
    vol = await cluster_.open_volume(name)
    nblocks = vol.size // BS
    done = [0]
    try:
        async def writer(w):
            rng = random.Random(w)
            blocks = list(range(w, nblocks, writers))
            for _ in range(ops):
                blk = rng.choice(blocks)
                data = rng.randbytes(BS)
                await vol.write(blk * BS, data)
                model[blk * BS:(blk + 1) * BS] = data
                done[0] += 1
                await on_progress(done[0])
        await asyncio.gather(*(writer(w) for w in range(writers)))
        await vol.flush()
    finally:
        await vol.close()


def test_kill_one_chunkserver_during_writes(any_db_cluster):
    cluster = any_db_cluster(4, server_timeout=2.0)
    size = 64 * MiB
    cluster.client().create_volume('v', size, chunk_size=4 * MiB)
    victim = 1
    victim_id = server_id(cluster, victim)
    model = bytearray(size)
    killed = []

    async def on_progress(n):
        if n == 300 and not killed:
            killed.append(time.monotonic())
            await asyncio.get_running_loop().run_in_executor(
                None, cluster.kill_chunkserver, victim)

    with data_client(cluster) as cl:
        cl.run(lambda c: workload(c, 'v', model, 120, 8, on_progress))
        assert killed, 'the chunk server was never killed'
        with cl.open_volume('v', writable=False) as v:
            for off in range(0, size, 8 * MiB):
                assert v.read(off, 8 * MiB) == bytes(
                    model[off:off + 8 * MiB]), 'bad data at %d' % off
        # Once the master has noticed, the dead server is in no replica set.
        wait_for(lambda: all(victim_id not in ids for ids in replica_sets(
            cluster, 'v').values()), what='the dead server to be dropped')
        report = cl.run(check.check_volume, 'v')
    divergent = [p for p in report['problems']
                 if not p['problem'].startswith('degraded')]
    assert divergent == []
    wait_for(lambda: cluster.client().cluster_status()['servers'][
        'down'] == 1, what='the master to mark the server down')


def test_two_of_three_dead_writes_fail_reads_work(any_db_cluster):
    cluster = any_db_cluster(3, server_timeout=2.0)
    cluster.client().create_volume('v', 16 * MiB, chunk_size=4 * MiB,
                                   replicas=3, min_replicas=2)
    data = os.urandom(12 * MiB)
    with data_client(cluster, io_timeout=4.0) as cl:
        with cl.open_volume('v') as v:
            v.write(0, data)
            v.flush()
            cluster.kill_chunkserver(1)
            cluster.kill_chunkserver(2)
            t0 = time.monotonic()
            with pytest.raises(exception.InsufficientReplicas):
                v.write(4096, b'y' * 4096)
            assert time.monotonic() - t0 < 30
            with pytest.raises(exception.InsufficientReplicas):
                v.write(8 * MiB, b'z' * 8192)
            # Written data still reads back.  As on any disk, the range of
            # a failed write holds the old or the new bytes, nothing else.
            back = v.read(0, len(data))
            assert back[4096:8192] in (data[4096:8192], b'y' * 4096)
            assert back[8 * MiB:8 * MiB + 8192] in (
                data[8 * MiB:8 * MiB + 8192], b'z' * 8192)
            assert back[:4096] == data[:4096]
            assert back[8192:8 * MiB] == data[8192:8 * MiB]
            assert back[8 * MiB + 8192:] == data[8 * MiB + 8192:]
        # A fresh reader, after the master marked both down, reads too.
        wait_for(lambda: cluster.client().cluster_status()['servers'][
            'down'] == 2, what='servers marked down')
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, len(data)) == back
    # The survivor never lost a chunk's last replica.
    assert all(len(ids) == 1 for ids in replica_sets(cluster, 'v').values())


def test_newer_lease_fences_the_old_writer(any_db_cluster):
    cluster = any_db_cluster(3)
    cluster.client().create_volume('v', 16 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as a, data_client(cluster) as b:
        va = a.open_volume('v', holder='host-a')
        va.write(0, b'a' * 4096)
        with pytest.raises(exception.LeaseHeld):
            b.open_volume('v', holder='host-b')
        vb = b.open_volume('v', holder='host-b', force=True)
        assert vb.volume.generation > va.volume.generation
        with pytest.raises(exception.Fenced):
            va.write(0, b'A' * 4096)
        # Also on a chunk the old writer never touched before.
        with pytest.raises(exception.Fenced):
            va.write(12 * MiB, b'A' * 4096)
        vb.write(4096, b'b' * 4096)
        vb.flush()
        assert vb.read(0, 8192) == b'a' * 4096 + b'b' * 4096
        assert vb.read(12 * MiB, 4096) == bytes(4096)
        vb.close()


def test_a_returning_server_serves_no_stale_replica(make_cluster):
    cluster = make_cluster(3, server_timeout=1.5)
    cluster.client().create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, b'1' * 8192)
            v.flush()
            cluster.kill_chunkserver(0)
            v.write(0, b'2' * 8192)
            v.flush()
        cluster.start_chunkserver(0)
        sets = replica_sets(cluster, 'v')
        victim_id = server_id(cluster, 0)
        assert victim_id not in sets[0]
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 8192) == b'2' * 8192
        # Asking the returned server directly is refused, not answered
        # with its old data.
        from cinder_ursa.protocol import codec
        from cinder_ursa.transport import aio
        vol = cluster.client().volume('v')

        async def direct(c):
            import json
            with open(os.path.join(cluster.cs_dir(0), 'endpoint.json')) as f:
                port = json.load(f)['port']
            conn = await c.pool.get('127.0.0.1', port)
            rid = aio.next_req_id()
            reply = await conn.request(rid, codec.encode_read(
                rid, vol['id'], 0, 1, 0, 4096), 5)
            return codec.reply_status(reply.body)
        with pytest.raises((exception.StaleReplica, exception.StaleEpoch)):
            cl.run(direct)
