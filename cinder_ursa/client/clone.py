"""Reading through a clone's parent: the blocks a clone never wrote come
from its parent snapshot (and so up the chain), partial-block writes first
copy the parent's edge blocks up, and flatten copies every such block into
the clone.  Also the block-state run helpers these and ``block_status``
share."""

import asyncio
import time

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.protocol.chunkfile import ABSENT
from cinder_ursa.protocol.chunkfile import BLOCK

COPY_STEP = 4 * 1024 * 1024


class CloneLayers:
    """Part of :class:`~cinder_ursa.client.volume.Volume`."""

    async def _parent_volume(self):
        """The snapshot this clone reads unwritten blocks from (cached)."""
        if self.parent is None and self._parent_info is not None:
            snap = await self.cluster.master.snapshot(
                self._parent_info['snapshot_id'])
            parent = self.for_snapshot(self.cluster, snap)
            # A ticket names the parents its volume reads: the same
            # connections serve them.
            parent.pool = self.pool
            self.parent = parent
        return self.parent

    async def _read_layered(self, e, vol_offset):
        """Read one extent of a clone: blocks it never wrote come from the
        parent snapshot (and so on up the chain)."""
        data, states = await self._read_extent(
            e.index, e.chunk_offset, e.length, codec.FLAG_STATES)
        if ABSENT not in states:
            return data
        buf = bytearray(data)
        for start, end in runs(states, ABSENT, e.chunk_offset, e.length):
            pos = vol_offset + start - e.chunk_offset
            buf[start - e.chunk_offset:end - e.chunk_offset] = \
                await self._parent_read(pos, end - start)
        return buf

    async def _parent_read(self, pos, length):
        parent = await self._parent_volume()
        if parent is None or pos >= parent.size:
            return bytes(length)
        n = min(length, parent.size - pos)
        data = await self._through_parent(parent.read, pos, n)
        return data if n == length else data + bytes(length - n)

    async def _through_parent(self, call, *args):
        """``await call(*args)``, a request of the parent snapshot's, which
        goes out on this clone's connections (its ticket names the
        parent readable).  A multiattach writer's ticket is revoked
        with its generation on every chunk server (another host's
        writers were fenced or detached): the parent's request refused
        as NotAuthorized asks for this writer's re-admission
        (Volume._readmit) and is sent again, as the clone's own are; a
        chunk the clone never allocated sends no request of its own
        that would have asked first."""
        deadline = time.monotonic() + self.cluster.io_timeout
        while True:
            generation = self.generation
            try:
                return await call(*args)
            except exception.NotAuthorized as e:
                if not self._may_readmit(e):
                    raise
                await self._readmit(generation, e, deadline)

    async def _copy_up_edges(self, offset, length):
        """Before a partial-block write to a clone, give the edge blocks
        the parent's content (if the clone never wrote them)."""
        edges = set()
        if offset % BLOCK:
            edges.add(offset - offset % BLOCK)
        end = offset + length
        if end % BLOCK:
            edges.add(end - end % BLOCK)
        for pos in sorted(edges):
            await self._copy_up(pos, BLOCK)

    async def _copy_up(self, pos, length):
        """Copy the parent's blocks of [pos, pos+length) into the clone
        where the clone has none (block aligned, within one extent)."""
        e = self.layout.extents(pos, length)[0]
        states = await self._read_extent(e.index, e.chunk_offset, e.length,
                                         codec.FLAG_MAP_ONLY)
        for start, end in runs(states, ABSENT, e.chunk_offset, e.length):
            data = await self._parent_read(pos + start - e.chunk_offset,
                                           end - start)
            if data.count(0) == len(data):
                continue  # absent already reads as zeros past the chain
            await self._write_extent(e.index, start, memoryview(data), False,
                                     codec.FLAG_IF_ABSENT)
        return states

    async def _flatten(self, progress, rate):
        parent = await self._parent_volume()
        end = min(self.size, parent.size)
        copied = 0
        started = time.monotonic()
        for pos in range(0, end, COPY_STEP):
            n = min(COPY_STEP, end - pos)
            # Keep within one chunk extent per step.
            for e in self.layout.extents(pos, n):
                await self._copy_up(pos + e.buf_offset, e.length)
            copied += n
            if progress is not None:
                progress(copied, end)
            if rate:
                ahead = copied / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await self.flush()  # durable before the parent is let go


def runs(states, want, offset, length):
    """Byte ranges (chunk offsets) of the blocks in state ``want`` of a
    range starting at ``offset`` whose block states are ``states``."""
    return [(a, b) for a, b, st in all_runs(states, offset, length)
            if st == want]


def all_runs(states, offset, length):
    """[(start, end, state)]: runs of equal state, clipped to the range."""
    first = offset - offset % BLOCK
    end_range = offset + length
    out = []
    i = 0
    n = len(states)
    while i < n:
        j = i + 1
        while j < n and states[j] == states[i]:
            j += 1
        out.append((max(first + i * BLOCK, offset),
                    min(first + j * BLOCK, end_range), states[i]))
        i = j
    return out


def add_run(out, length, state):
    if out and out[-1][1] == state:
        out[-1] = (out[-1][0] + length, state)
    else:
        out.append((length, state))
