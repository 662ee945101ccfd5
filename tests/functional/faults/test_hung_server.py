"""A hung chunk server (SIGSTOP: its connections stay open, nothing comes
back) is given up after ``[ursa] liveness_timeout``, not after the much
longer request and replication timeouts that bound slow servers: the
client writes through the next primary, reads another replica, and a
primary drops a hung replica and acknowledges.

The timeouts that would end the stall without the liveness check are set
to 120 s here, so each test fails (its 60 s wait runs out) if the check
is gone."""

import asyncio
import os
import signal

from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import server_id

MiB = 1024 * 1024
BS = 4096
SLOW = 120.0
LIVENESS = '[ursa]\nliveness_timeout = 1.0\n'


def _hung_cluster(make_cluster):
    # server_timeout keeps the master from marking the frozen server down
    # while the test runs: only the liveness check may end the stall.
    cluster = make_cluster(4, server_timeout=SLOW,
                           replication_timeout=SLOW, extra_conf=LIVENESS)
    cluster.client().create_volume('v', 16 * MiB, chunk_size=4 * MiB)
    return cluster, {server_id(cluster, i): i for i in cluster.cs_procs}


def _freeze(cluster, index_of, sid):
    pid = cluster.cs_procs[index_of[sid]].pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_a_hung_primary_is_given_up_and_io_goes_on(make_cluster):
    cluster, index_of = _hung_cluster(make_cluster)
    old_data = os.urandom(2 * BS)
    new_data = os.urandom(BS)

    async def body(c):
        vol = await c.open_volume('v')
        try:
            await vol.write(0, old_data)
            await vol.flush()
            old = vol._map[0]
            primary = old.replicas[0][0]
            pid = _freeze(cluster, index_of, primary)
            try:
                # Read: another replica serves it.
                got = await asyncio.wait_for(vol.read(0, 2 * BS), 60)
                assert got == old_data
                # Write: reported failed, dropped, written through the new
                # primary.
                await asyncio.wait_for(vol.write(BS, new_data), 60)
                await asyncio.wait_for(vol.flush(), 60)
                new = vol._map.get(0) or await vol._chunk(0, False)
                assert primary not in [r[0] for r in new.replicas]
                assert new.epoch > old.epoch
                got = await asyncio.wait_for(vol.read(0, 2 * BS), 60)
                assert got == old_data[:BS] + new_data
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            await vol.close()

    with data_client(cluster, request_timeout=SLOW,
                     liveness_timeout=1.0) as cl:
        cl.run(body)


def test_a_hung_replica_is_dropped_and_the_write_acknowledged(make_cluster):
    cluster, index_of = _hung_cluster(make_cluster)
    data = os.urandom(BS)

    async def body(c):
        vol = await c.open_volume('v')
        try:
            await vol.write(0, bytes(BS))
            old = vol._map[0]
            replica = old.replicas[-1][0]
            pid = _freeze(cluster, index_of, replica)
            try:
                await asyncio.wait_for(vol.write(0, data), 60)
                await asyncio.wait_for(vol.flush(), 60)
            finally:
                os.kill(pid, signal.SIGCONT)
            new = await vol._chunk(0, False)
            assert replica not in [r[0] for r in new.replicas]
            assert new.replicas[0][0] == old.replicas[0][0]
            assert await vol.read(0, BS) == data
        finally:
            await vol.close()

    # The client's own check must not be what ends this one: it waits.
    with data_client(cluster, request_timeout=SLOW,
                     liveness_timeout=0) as cl:
        cl.run(body)
