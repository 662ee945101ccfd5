"""Volume.write_soon: ursa-nbd's write path without a task.  It must do
nothing when one frame cannot do the write, and hand a failed first
attempt to the full path, which retries, reports and fences exactly as
Volume.write does."""

import asyncio
import os
import signal

from cinder_ursa import exception
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import server_id

MiB = 1024 * 1024
BS = 4096


def _soon(vol, offset, data):
    """A future of write_soon's callback, or None if it declined."""
    fut = asyncio.get_running_loop().create_future()
    if not vol.write_soon(offset, data, False, fut.set_result):
        return None
    return fut


def test_a_silent_primary_is_replaced_and_the_write_lands(make_cluster):
    cluster = make_cluster(4, server_timeout=2.0)
    cluster.client().create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    index_of = {server_id(cluster, i): i for i in cluster.cs_procs}
    blocks = [bytes([n]) * BS for n in range(1, 5)]

    async def body(c):
        vol = await c.open_volume('v')
        try:
            # Unknown chunk map: nothing is sent.
            assert _soon(vol, 0, blocks[0]) is None
            await vol.write(0, blocks[0])
            # One chunk, cached map, connected primary: one frame.
            fut = _soon(vol, BS, blocks[1])
            assert fut is not None
            assert await fut is None
            # Two chunks: declined.
            assert _soon(vol, 4 * MiB - BS, bytes(2 * BS)) is None

            old = vol._map[0]
            primary = old.replicas[0][0]
            pid = cluster.cs_procs[index_of[primary]].pid
            os.kill(pid, signal.SIGSTOP)
            try:
                fut = _soon(vol, 2 * BS, blocks[2])
                assert fut is not None, 'the primary still looked connected'
                # The request times out; the full path reports the primary,
                # which the master drops, and writes to the new one.
                assert await asyncio.wait_for(fut, 30) is None
            finally:
                os.kill(pid, signal.SIGCONT)
            new = vol._map.get(0) or await vol._chunk(0, False)
            assert primary not in [r[0] for r in new.replicas]
            assert new.epoch > old.epoch
            fut = _soon(vol, 3 * BS, blocks[3])
            assert fut is not None
            assert await fut is None
            await vol.flush()
            assert await vol.read(0, 4 * BS) == b''.join(blocks)
        finally:
            await vol.close()

    with data_client(cluster, request_timeout=1.0) as cl:
        cl.run(body)


def test_a_fenced_writer_gets_the_fencing_error(make_cluster):
    cluster = make_cluster(3)
    cluster.client().create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as a, data_client(cluster) as b:
        va = a.open_volume('v', holder='host-a')
        va.write(0, b'a' * BS)
        vb = b.open_volume('v', holder='host-b', force=True)

        async def old_writer(vol):
            fut = _soon(vol, 0, b'A' * BS)
            assert fut is not None
            return await fut

        err = a.call(old_writer, va.volume)
        assert isinstance(err, exception.Fenced), err
        assert vb.read(0, BS) == b'a' * BS
        vb.close()
