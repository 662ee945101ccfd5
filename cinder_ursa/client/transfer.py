"""Copy raw image files into volumes and volumes (or snapshots) out to
sparse raw files, with the async client: the CLI's ``volume import`` /
``volume export`` and the Cinder driver's image copies use these.

Zero blocks are never written (the volume stays thin) and never read back
into the file (it stays sparse).  ``progress(n)`` is called with the bytes
done after every piece.
"""

import asyncio
import os

from cinder_ursa.common import units
from cinder_ursa.protocol import chunkfile

PIECE = 4 * units.Mi
PARALLEL = 8


async def parallel(jobs, limit=PARALLEL):
    """Run coroutine factories with at most ``limit`` in flight."""
    sem = asyncio.Semaphore(limit)

    async def one(job):
        async with sem:
            await job()
    await asyncio.gather(*(one(j) for j in jobs))


async def import_file(vol, fd, size, progress=None):
    """Write the first ``size`` bytes of the file ``fd`` into the open
    (async) volume ``vol``, skipping zero blocks, then flush."""
    zero = bytes(PIECE)

    def job(offset):
        async def run():
            data = os.pread(fd, min(PIECE, size - offset), offset)
            if len(data) % chunkfile.BLOCK:
                data += bytes(chunkfile.BLOCK - len(data) % chunkfile.BLOCK)
            if data != zero[:len(data)]:
                await write_nonzero(vol, offset, data)
            if progress:
                progress(min(PIECE, size - offset))
        return run
    await parallel([job(o) for o in range(0, size, PIECE)])
    await vol.flush()


async def write_nonzero(vol, offset, data):
    """Write only the runs of non-zero 4 KiB blocks of ``data``."""
    bs = chunkfile.BLOCK
    zero = bytes(bs)
    mv = memoryview(data)
    start = None
    for pos in range(0, len(data) + bs, bs):
        is_data = pos < len(data) and mv[pos:pos + bs] != zero
        if is_data and start is None:
            start = pos
        elif not is_data and start is not None:
            await vol.write(offset + start, mv[start:pos])
            start = None


async def export_file(vol, fd, progress=None):
    """Copy the open (async) volume or snapshot ``vol`` into the file
    ``fd``: holes stay holes; the file gets the volume's size and is
    fsync'ed."""
    await vol.prefetch_map()

    def job(offset):
        async def run():
            n = min(PIECE, vol.size - offset)
            data = await vol.read(offset, n)
            if data.count(0) != len(data):
                os.pwrite(fd, data, offset)
            if progress:
                progress(n)
        return run
    await parallel([job(o) for o in range(0, vol.size, PIECE)])
    os.ftruncate(fd, vol.size)
    os.fsync(fd)
