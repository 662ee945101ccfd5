"""Which bytes of a volume changed between two of its snapshots, or
between a snapshot and the live volume, from the chunk servers' block
metadata alone: no data is read to find them.

Every block's metadata entry keeps the snapshot sequence its content was
written at (protocol/chunkfile.py), and a snapshot of sequence ``s`` sees
the versions written before ``s``.  So a block changed after snapshot
``a`` exactly when the version the newer view (a later snapshot, or the
head) sees was written at ``a``'s sequence or later.  A chunk server
answers that per block (READ with FLAG_SINCE); a chunk never allocated
changed in no view.  The answer can err only one way: a block rewritten
with the bytes it had (a revert, a clone's copy-up) shows as changed.

:func:`changed_extents` lists the changes as volume extents: ``data``
(read them from the newer view) or ``zero`` (discarded or never written
since: they read as zeros).  Without an older snapshot, it lists what
the view holds (a full copy's extents: data only).
"""

import asyncio
import dataclasses

from cinder_ursa import exception
from cinder_ursa.client.clone import all_runs
from cinder_ursa.common import units
from cinder_ursa.protocol import codec
from cinder_ursa.protocol.chunkfile import ABSENT
from cinder_ursa.protocol.chunkfile import CHANGED
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import UNCHANGED
from cinder_ursa.protocol.chunkfile import ZERO

KIND_DATA = 'data'
KIND_ZERO = 'zero'

# Block states asked per request: 64 MiB of a chunk (16 KiB of states).
STATES_STEP = 64 * units.Mi
PARALLEL = 8


@dataclasses.dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    kind: str

    def as_dict(self):
        return dataclasses.asdict(self)


def since_of(view, older):
    """The sequence to pass as ``since`` for changes after snapshot
    ``older`` (the master's record) as ``view`` sees them; a clear error
    when they are not of the same volume or not in that order."""
    if older['volume_id'] != view.id:
        raise exception.InvalidArgument(
            reason='snapshot %s is of volume %s, not of %s: a diff is '
                   'between two states of one volume'
                   % (older['name'], older['volume_name'], view.name))
    if view.snap and older['seq'] >= view.snap:
        raise exception.InvalidArgument(
            reason='snapshot %s is not older than %s: give the older '
                   'snapshot first' % (older['name'], view.name))
    return older['seq']


async def changed_extents(view, since=None, progress=None,
                          parallel=PARALLEL):
    """[:class:`Extent`] sorted by offset, merged: what changed in the
    open volume or snapshot ``view`` after the snapshot of sequence
    ``since`` (None: everything ``view`` holds, as data extents).
    ``progress(n)`` is called with the bytes of the allocated chunks
    looked at."""
    layout = view.layout
    clone = view._parent_info is not None
    found = []
    sem = asyncio.Semaphore(parallel)

    async def chunk(index):
        async with sem:
            for start in range(0, layout.chunk_size, STATES_STEP):
                n = min(STATES_STEP, layout.chunk_size - start)
                states = await view._read_extent(
                    index, start, n, codec.FLAG_MAP_ONLY, since)
                for a, b, st in all_runs(states, start, n):
                    kind = _kind(st, since, clone)
                    if kind is None:
                        continue
                    for vo, ln in layout.volume_ranges(index, a, b):
                        found.append((vo, ln, kind))
                if progress:
                    progress(n)
    allocated = await view.allocated_chunks()
    if clone and since is None:
        # What the clone never allocated is its parent's, whole chunks.
        for index in sorted(set(range(layout.chunks)) - set(allocated)):
            for vo, ln in layout.volume_ranges(index, 0, layout.chunk_size):
                found.append((vo, ln, ABSENT))
    # A chunk never allocated changed in no view, and holds nothing.
    await asyncio.gather(*(chunk(i) for i in allocated))
    found.sort()
    out = []
    for vo, ln, kind in found:
        if kind == ABSENT:
            # A full list of a clone: what it never wrote is its
            # parent's (block_status follows the chain).
            pos = vo
            for rl, st in await view.block_status(vo, ln):
                if st == DATA:
                    _add(out, pos, rl, KIND_DATA)
                pos += rl
            continue
        _add(out, vo, ln, kind)
    return out


def _kind(st, since, clone):
    """The extent kind of a run of blocks in state ``st`` (None: not
    listed; ABSENT: a clone's parent blocks, to look up)."""
    if since is None:
        if st == DATA:
            return KIND_DATA
        if st == ABSENT and clone:
            return ABSENT
        return None
    if st == UNCHANGED:
        return None
    st &= ~CHANGED
    if st == DATA or (st == ABSENT and clone):
        # A clone's block absent again (a revert): its parent's, read
        # through the clone.
        return KIND_DATA
    if st in (ZERO, ABSENT):
        return KIND_ZERO
    raise exception.ProtocolError(reason='block state %d in a diff' % st)


def _add(out, offset, length, kind):
    if out and out[-1].kind == kind and \
            out[-1].offset + out[-1].length == offset:
        last = out.pop()
        out.append(Extent(last.offset, last.length + length, kind))
    else:
        out.append(Extent(offset, length, kind))


async def open_views(cluster, ref, older=None):
    """(view, since): the newer state ``ref`` (``volume`` for the live
    volume, read-only, or ``volume@snapshot``) opened, and the sequence
    of snapshot ``older`` (a name of that volume's, a ``volume@name``,
    or None: a full list)."""
    view = await cluster.open_volume(ref, writable=False)
    try:
        if older is None:
            return view, None
        if '@' not in older:
            vol = ref.split('@', 1)[0]
            older = '%s@%s' % (vol, older)
        snap = await cluster.master.snapshot(older)
        return view, since_of(view, snap)
    except BaseException:
        await view.close()
        raise


def complement(extents, size):
    """The ranges of ``[0, size)`` no extent covers, as zero extents."""
    out = []
    pos = 0
    for e in extents:
        if e.offset > pos:
            out.append(Extent(pos, e.offset - pos, KIND_ZERO))
        pos = max(pos, e.offset + e.length)
    if pos < size:
        out.append(Extent(pos, size - pos, KIND_ZERO))
    return out


async def copy_extents(view, dst, extents, progress=None, piece=4 * units.Mi,
                       parallel=PARALLEL):
    """Copy ``extents`` of the open ``view`` onto the open, writable
    volume ``dst`` (of this cluster or another): data extents read from
    the view and written, zero extents zeroed (deallocated).  Returns the
    bytes read.  ``progress(n)`` is called with the bytes of each piece
    done, read or zeroed.  ``dst`` is not flushed."""
    jobs = []
    for e in extents:
        step = piece if e.kind == KIND_DATA else e.length
        for at in range(0, e.length, step):
            jobs.append((e.kind, e.offset + at, min(step, e.length - at)))
    sem = asyncio.Semaphore(parallel)
    read = 0

    async def one(kind, offset, length):
        nonlocal read
        async with sem:
            if kind == KIND_DATA:
                data = await view.read(offset, length)
                read += length
                await dst.write(offset, data)
            else:
                await dst.write_zeroes(offset, length)
            if progress:
                progress(length)
    await asyncio.gather(*(one(*j) for j in jobs))
    return read
