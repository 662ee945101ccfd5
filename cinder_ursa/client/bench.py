"""The client library's benchmark engine (``ursa bench``): IOPS, MiB/s
and latency percentiles of a volume opened through the client."""

import asyncio
import os
import random
import time

from cinder_ursa.client import transfer
from cinder_ursa.common import units


async def run(cluster, name, rw='write', pattern='seq', io_size=units.Mi,
              iodepth=16, seconds=10.0):
    """Run ``iodepth`` workers over volume ``name`` for ``seconds`` and
    return ops, seconds, iops, mibs, mean_us, p50_us and p99_us.

    ``rw`` is 'read' or 'write', ``pattern`` 'seq' or 'rand'; writes end
    with a flush, which the time includes.
    """
    bs = io_size
    vol = await cluster.open_volume(name, writable=True)
    try:
        nblocks = vol.size // bs
        if rw == 'read':
            # Reads of never-written chunks never reach a chunk server:
            # fill the volume first so reads measure real I/O.
            fill = os.urandom(units.Mi)
            await transfer.parallel(
                [_writer(vol, o, fill) for o in range(0, vol.size, units.Mi)],
                16)
        await vol.prefetch_map()
        data = os.urandom(bs)
        lat = []
        state = {'next': 0, 'ops': 0}
        end = time.monotonic() + seconds
        rng = random.Random(1)

        async def worker():
            while time.monotonic() < end:
                if pattern == 'rand':
                    blk = rng.randrange(nblocks)
                else:
                    blk = state['next'] % nblocks
                    state['next'] += 1
                t0 = time.perf_counter()
                if rw == 'write':
                    await vol.write(blk * bs, data)
                else:
                    await vol.read(blk * bs, bs)
                lat.append(time.perf_counter() - t0)
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(iodepth)))
        if rw == 'write':
            await vol.flush()
        elapsed = time.monotonic() - t0
    finally:
        await vol.close()
    lat.sort()
    n = len(lat)

    def pct(p):
        return lat[min(int(n * p), n - 1)] * 1e6 if n else 0.0
    return {'ops': n, 'seconds': elapsed, 'iops': n / elapsed,
            'mibs': n * bs / elapsed / units.Mi,
            'mean_us': sum(lat) / n * 1e6 if n else 0.0,
            'p50_us': pct(0.50), 'p99_us': pct(0.99)}


def _writer(vol, offset, data):
    async def run():
        n = min(len(data), vol.size - offset)
        await vol.write(offset, data[:n])
    return run
