"""Snapshot layers: copy-on-write of the blocks a write replaces into
the layer of its sequence, resolving a snapshot's view of a block through
the layers, which snapshots still exist (and so which blocks a write must
preserve), revert of the head to a snapshot, and garbage collection of
blocks no snapshot reads any more."""

import bisect
import os
import struct

from cinder_ursa.chunkserver.store.files import punch_hole
from cinder_ursa.common import checksum
from cinder_ursa.protocol.chunkfile import ABSENT
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.protocol.chunkfile import LAYER_ABSENT
from cinder_ursa.protocol.chunkfile import ZERO


class Copies:
    """What copy-on-writes copied into snapshot layers, to make durable
    before the head's blocks they copied are overwritten: each layer's
    files once (duplicated fds, so the files may be closed meanwhile) and
    the directories of layers new in this run, for one sync
    (:meth:`~cinder_ursa.chunkserver.store.ChunkStore.sync`, which closes
    the fds) of a write's copies or of a batch's."""

    __slots__ = ('fds', 'dirs', '_files')

    def __init__(self):
        self.fds, self.dirs, self._files = [], [], set()

    def add(self, files):
        if files not in self._files:
            self._files.add(files)
            self.fds.append((os.dup(files.data_fd), os.dup(files.meta_fd)))

    def add_dir(self, path):
        if path not in self.dirs:
            self.dirs.append(path)


class SnapshotLayers:
    """Part of :class:`~cinder_ursa.chunkserver.store.ChunkStore`."""

    def note_live(self, volume, live, upto):
        """Remember which snapshots up to sequence ``upto`` still exist
        (from the master's GC requests and the registration reply)."""
        known = self._live.get(volume)
        if known is None or upto >= known[0]:
            self._live[volume] = (upto, sorted(live))

    def preserve_floor(self, volume, seq):
        """A write at sequence ``seq`` preserves the blocks last written
        before the newest snapshot that still exists (sequences above what
        the master last reported are presumed to): after the newest
        snapshots were deleted (or failed to be created), overwrites copy
        nothing nobody will read."""
        known = self._live.get(volume)
        if known is None or seq > known[0]:
            return seq
        live = known[1]
        k = bisect.bisect_right(live, seq)
        return live[k - 1] if k else 0

    def _resolve(self, c, first, count, snap, words=False):
        """Per block of ``first .. first+count-1``: (state, files, crc) as
        seen by snapshot ``snap`` (0: the head); with ``words``, (state,
        files, crc, word), the word of the entry (its sequence << 2)."""
        head = c.head.meta(first, count)
        out = [None] * count
        if snap:
            pending = count
            for n in c.layer_ids():
                if n < snap:
                    continue
                lf = c.layer(n)
                m = lf.meta(first, count)
                for i in range(count):
                    word = m[2 * i + 1]
                    if out[i] is None and word:
                        st = word & 3
                        out[i] = (ABSENT if st == LAYER_ABSENT else st, lf,
                                  m[2 * i], word)
                        pending -= 1
                if not pending:
                    break
        for i in range(count):
            if out[i] is None:
                word = head[2 * i + 1]
                out[i] = (word & 3, c.head, head[2 * i], word)
        if not words:
            return [b[:3] for b in out]
        return out

    def preserve(self, c, offset, length, seq, floor=None, copies=None):
        """Copy-on-write ahead of a write of ``length`` bytes at ``offset``
        at sequence ``seq`` (``floor``: see :meth:`preserve_floor`): copy
        the blocks it replaces that a snapshot still reads into layer
        ``seq``.  The copies must be durable before the head's blocks are
        overwritten: a power cut could otherwise keep the overwrite and
        lose the copy, and the snapshot would change.  Returns the
        :class:`Copies` to sync (``copies``, when given, with these
        added: one sync for a batch of writes), or None when nothing was
        copied (only the first write of a block after a snapshot copies
        it).  The caller syncs them (``sync(copies.fds, copies.dirs)``, in
        a worker thread) before it applies the write with
        ``preserved=True``."""
        self._check_range(offset, length)
        floor = seq if floor is None else floor
        if not length or not floor:
            return copies
        self._opened(c)
        first = offset // BLOCK
        count = (offset + length - 1) // BLOCK - first + 1
        try:
            return self._preserve(c, first, c.head.meta(first, count), seq,
                                  floor=floor, copies=copies)
        except OSError as e:
            self._no_space(e)
            raise

    def _preserve(self, c, first, meta, seq, only=None, floor=None,
                  copies=None):
        """Copy blocks last written before ``floor`` (default ``seq``)
        into layer ``seq``; return the :class:`Copies` to sync before any
        of them is overwritten in the head (``copies`` with them added,
        when given; None: nothing to copy, and none given)."""
        floor = seq if floor is None else floor
        old = [i for i in (range(len(meta) // 2) if only is None else only)
               if meta[2 * i + 1] >> 2 < floor]
        if not old:
            return copies
        vdir = os.path.dirname(c.base)
        if seq not in c.layers:
            # Also for the next FLUSH: a copy-on-write that is never synced
            # (the server stopped first) leaves the entry to it.
            self._new_entry(c.volume, vdir)
        lf = c.layer(seq)
        for i in old:
            crc, word = meta[2 * i], meta[2 * i + 1]
            st = word & 3
            if st == DATA:
                pos = (first + i) * BLOCK
                os.pwrite(lf.data_fd, os.pread(c.head.data_fd, BLOCK, pos),
                          pos)
            entry = struct.pack('!II', crc, (word & ~3) | (
                LAYER_ABSENT if st == ABSENT else st))
            os.pwrite(lf.meta_fd, entry, ENTRY * (first + i))
        self._touched.add((c.volume, c.index))
        if copies is None:
            copies = Copies()
        copies.add(lf)
        if lf.new_entry:
            # A layer a repair or a copy created (put_raw) is new too.
            lf.new_entry = False
            copies.add_dir(vdir)
        return copies

    def _sync_copies(self, c, copies):
        """:meth:`sync` of what :meth:`_preserve` copied, here and now
        (the callers that are not the write path: not in a worker
        thread); a failure fails the volume, as a FLUSH's does."""
        try:
            self.sync(copies.fds, copies.dirs)
        except OSError as e:
            self.sync_failed((c.volume,), e)
            raise

    def blocks_in_use(self, c):
        """Blocks of the chunk's longest file (head or layer)."""
        self._opened(c)
        return max([f.open().nblocks() for f in c.all_files()] or [0])

    def rewrites(self, volume):
        """How many reverts and collections changed ``volume`` here."""
        return self._rewrites.get(volume, 0)

    def _rewritten(self, volume):
        self._rewrites[volume] = self._rewrites.get(volume, 0) + 1

    def revert(self, volume, snap, seq):
        """Make the head of every chunk of ``volume`` equal to snapshot
        ``snap``, as a write at sequence ``seq`` (later snapshots keep
        their content).  Idempotent."""
        self._rewritten(volume)
        reverted = 0
        for c in self.volume_chunks(volume):
            if c.stale:
                continue
            self._opened(c)
            n = self.blocks_in_use(c)
            step = 4096
            for first in range(0, n, step):
                count = min(step, n - first)
                want = self._resolve(c, first, count, snap)
                # A block resolved to the head is unchanged since the
                # snapshot; the others take the snapshot's version.
                changed = [i for i, b in enumerate(want) if b[1] is not c.head]
                if not changed:
                    continue
                meta = c.head.meta(first, count)
                copies = self._preserve(c, first, meta, seq, changed,
                                        self.preserve_floor(volume, seq))
                if copies is not None:
                    self._sync_copies(c, copies)
                for i in changed:
                    st, files, crc = want[i]
                    blk = first + i
                    if st == DATA:
                        data = self._read_run(c, files, blk, 1, [crc])
                        self._put(c, blk, data, seq)
                    else:
                        punch_hole(c.head.data_fd, blk * BLOCK, BLOCK)
                        os.pwrite(c.head.meta_fd, struct.pack(
                            '!II', checksum.ZERO_CRC if st == ZERO else 0,
                            seq << 2 | st), ENTRY * blk)
            self._mark_dirty(c, (c.head,))
            reverted += 1
        return reverted

    def gc(self, volume, live, upto=None, dry_run=False):
        """Drop preserved blocks that no snapshot in ``live`` (sequence
        numbers) can read any more; remove layers left empty.  Only layers
        up to sequence ``upto`` are looked at: ``live`` says nothing of
        snapshots taken after it was read.  Returns the number of blocks
        freed (``dry_run``: that would be, nothing changes)."""
        if not dry_run:
            self._rewritten(volume)
        live = sorted(live)
        if upto is not None and not dry_run:
            self.note_live(volume, live, upto)
        freed = 0
        for c in self.volume_chunks(volume):
            self._opened(c)
            for n in c.layer_ids():
                if upto is not None and n > upto:
                    break
                lf = c.layer(n)
                nblocks = lf.nblocks()
                meta = lf.meta(0, nblocks)
                keep = 0
                for i in range(nblocks):
                    word = meta[2 * i + 1]
                    if not word:
                        continue
                    w = word >> 2
                    k = bisect.bisect_right(live, w)
                    if k < len(live) and live[k] <= n:
                        keep += 1
                        continue
                    freed += 1
                    if dry_run:
                        continue
                    if word & 3 == DATA:
                        punch_hole(lf.data_fd, i * BLOCK, BLOCK)
                    os.pwrite(lf.meta_fd, bytes(ENTRY), ENTRY * i)
                if dry_run:
                    continue
                if not keep:
                    for d in self._dirty.values():
                        d.discard(lf)
                    lf.unlink()
                    del c.layers[n]
                else:
                    self._mark_dirty(c, (lf,))
                self._touched.add((c.volume, c.index))
        return freed
