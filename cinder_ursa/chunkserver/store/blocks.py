"""Block I/O of a replica's head: reads that verify every data block's
CRC (of the head, or of a snapshot through its layers), writes that merge
partial blocks at their edges, zero writes that deallocate, copy-up writes
that fill only absent blocks, and the free-space check before each."""

import errno
import logging
import os
import struct
import time

from cinder_ursa import exception
from cinder_ursa.chunkserver.store.files import punch_hole
from cinder_ursa.chunkserver.store.files import pwrite_data
from cinder_ursa.common import checksum
from cinder_ursa.protocol.chunkfile import ABSENT
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import CHANGED
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.protocol.chunkfile import UNCHANGED
from cinder_ursa.protocol.chunkfile import ZERO
from cinder_ursa.protocol.chunkfile import encode_entries

LOG = logging.getLogger(__name__)

MAX_CHUNK = 1024 * 1024 * 1024


class BlockIO:
    """Part of :class:`~cinder_ursa.chunkserver.store.ChunkStore`."""

    @staticmethod
    def _check_range(offset, length):
        if offset < 0 or length < 0 or offset + length > MAX_CHUNK:
            raise exception.OutOfRange(
                reason='offset %d + length %d is outside a chunk'
                % (offset, length))

    def _verify(self, c, files, first, data, crcs):
        """Check ``data`` (blocks from ``first``) against ``crcs``."""
        actual = checksum.block_crcs(data)
        for i, (want, got) in enumerate(zip(crcs, actual, strict=True)):
            if want != got:
                LOG.error('Checksum mismatch in %s block %d: stored %08x, '
                          'data %08x', files.base, first + i, want, got)
                err = exception.ChecksumError(
                    reason='chunk %s/%d block %d on this replica is corrupt'
                    % (c.volume, c.index, first + i))
                # Where, for the repair the server asks for (see
                # ChunkServer._read): the block, and its layer (0: head).
                err.block = first + i
                err.layer = next((n for n, f in c.layers.items()
                                  if f is files), 0)
                raise err

    def _read_run(self, c, files, first, count, crcs):
        data = os.pread(files.data_fd, count * BLOCK, first * BLOCK)
        if len(data) < count * BLOCK:
            data += bytes(count * BLOCK - len(data))
        self._verify(c, files, first, data, crcs)
        return data

    def read_blocks(self, c, offset, length, snap=0):
        """(data, states): the bytes of a range and the state of each block
        it touches (ABSENT, DATA or ZERO; absent blocks read as zeros)."""
        self._check_range(offset, length)
        if length == 0:
            return b'', b''
        first = offset // BLOCK
        last = (offset + length - 1) // BLOCK
        count = last - first + 1
        if c is None:
            return bytes(length), bytes(count)
        self._opened(c)
        if snap:
            blocks = self._resolve(c, first, count, snap)
        else:
            m = c.head.meta(first, count)
            blocks = [(m[2 * i + 1] & 3, c.head, m[2 * i])
                      for i in range(count)]
        states = bytes(b[0] for b in blocks)
        if DATA not in states:
            return bytes(length), states
        if not snap and states.count(DATA) == count:
            data = self._read_run(c, c.head, first, count, m[0::2])
        else:
            parts = []
            i = 0
            while i < count:
                st, files, _ = blocks[i]
                j = i + 1
                while (j < count and blocks[j][0] == st
                       and (st != DATA or blocks[j][1] is files)):
                    j += 1
                if st == DATA:
                    parts.append(self._read_run(
                        c, files, first + i, j - i,
                        [b[2] for b in blocks[i:j]]))
                else:
                    parts.append(bytes((j - i) * BLOCK))
                i = j
            data = b''.join(parts)
        start = offset - first * BLOCK
        if start == 0 and len(data) == length:
            return data, states
        return data[start:start + length], states

    def read(self, c, offset, length, snap=0):
        return self.read_blocks(c, offset, length, snap)[0]

    def block_states(self, c, offset, length, snap=0, since=None):
        """The state of each block a range touches, reading no data; with
        ``since`` (a snapshot sequence), UNCHANGED for a block whose
        content (as ``snap`` sees it) was written before it, else CHANGED
        | its state (codec.FLAG_SINCE)."""
        self._check_range(offset, length)
        if length == 0:
            return b''
        first = offset // BLOCK
        count = (offset + length - 1) // BLOCK - first + 1
        if c is None:
            # Never written here: unchanged since any snapshot.
            return bytes(count)
        self._opened(c)
        if snap:
            # (state, files, crc); the word is in the files' entry.
            blocks = self._resolve(c, first, count, snap, words=True)
            states = [b[0] for b in blocks]
            words = [b[3] for b in blocks]
        else:
            m = c.head.meta(first, count)
            words = m[1::2]
            states = [w & 3 for w in words]
        if since is None:
            return bytes(states)
        return bytes(CHANGED | st if w >> 2 >= since else UNCHANGED
                     for st, w in zip(states, words, strict=True))

    def _no_space(self, e):
        """Raise NoSpace for a full file system (the client fails the
        write at once); other OSErrors are left to the caller (a disk
        error)."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise exception.NoSpace(reason='%s: %s' % (
                self.data_dir, e.strerror)) from e

    def _check_space(self, length):
        now = time.monotonic()
        if self._free is None or now - self._free_checked > 0.5:
            st = os.statvfs(self.data_dir)
            self._free = st.f_bavail * st.f_frsize
            self._free_checked = now
        if self._free - length < self.reserved:
            raise exception.NoSpace(
                reason='%s has %d bytes free and keeps %d in reserve; add '
                       'capacity or delete volumes' % (
                           self.data_dir, self._free, self.reserved))
        self._free -= length

    def _edge(self, c, block, meta_i, meta):
        """Current head content of one block, verified."""
        if meta[2 * meta_i + 1] & 3 != DATA:
            return checksum.ZERO_BLOCK
        return self._read_run(c, c.head, block, 1, [meta[2 * meta_i]])

    def write(self, c, offset, data, seq=0, zero=False, if_absent=False,
              length=None, floor=None, preserved=False):
        """Apply a write synchronously (page cache).

        ``zero``: ``data`` is ignored, ``length`` bytes become zeros (whole
        blocks are deallocated).  ``if_absent``: only blocks never written
        in this chunk take the data (copy-up from a clone's parent; block
        aligned).  ``floor``: see ``preserve_floor``.  ``preserved``: the
        caller made the copy-on-write (:meth:`preserve`) durable already;
        otherwise it is made here, and synced before the head's blocks are
        overwritten (in this thread).
        """
        length = len(data) if length is None else length
        self._check_range(offset, length)
        if length == 0:
            return
        self._opened(c)
        first = offset // BLOCK
        last = (offset + length - 1) // BLOCK
        count = last - first + 1
        head = offset - first * BLOCK
        tail = (offset + length) % BLOCK
        try:
            if if_absent or head or tail or not preserved and (
                    seq if floor is None else floor):
                meta = c.head.meta(first, count)
            else:
                # Whole blocks and no snapshot to preserve them for (or
                # preserved already): the old entries are not needed (one
                # pread less per write).
                meta = None
            if if_absent:
                self._write_if_absent(c, offset, data, first, count, meta)
                return
            if not zero:
                self._check_space(length)
            if meta is not None and not preserved:
                copies = self._preserve(c, first, meta, seq, floor=floor)
                if copies is not None:
                    self._sync_copies(c, copies)
            if zero:
                self._write_zero(c, first, last, head, tail, length, meta,
                                 seq)
            else:
                if head or tail:
                    buf = bytearray(count * BLOCK)
                    if head or count == 1:
                        buf[:BLOCK] = self._edge(c, first, 0, meta)
                    if tail and count > 1:
                        buf[-BLOCK:] = self._edge(c, last, count - 1, meta)
                    buf[head:head + length] = data
                    data = buf
                self._put(c, first, data, seq)
        except OSError as e:
            self._no_space(e)
            raise
        self._mark_dirty(c, (c.head,))

    def _put(self, c, first, data, seq):
        pwrite_data(c.head.data_fd, data, first * BLOCK)
        crcs = checksum.block_crcs(data)
        os.pwrite(c.head.meta_fd, encode_entries(crcs, seq << 2 | DATA),
                  ENTRY * first)

    def _write_zero(self, c, first, last, head, tail, length, meta, seq):
        count = last - first + 1
        whole_from, whole_to = first, last + 1
        if head:
            blk = bytearray(self._edge(c, first, 0, meta))
            end = min(BLOCK, head + length)
            blk[head:end] = bytes(end - head)
            self._put(c, first, blk, seq)
            whole_from += 1
        if tail and (count > 1 or not head):
            blk = bytearray(self._edge(c, last, count - 1, meta))
            blk[:tail] = bytes(tail)
            self._put(c, last, blk, seq)
            whole_to -= 1
        n = whole_to - whole_from
        if n > 0:
            punch_hole(c.head.data_fd, whole_from * BLOCK, n * BLOCK)
            entry = struct.pack('!II', checksum.ZERO_CRC, seq << 2 | ZERO)
            os.pwrite(c.head.meta_fd, entry * n, ENTRY * whole_from)

    def _write_if_absent(self, c, offset, data, first, count, meta):
        if offset % BLOCK or len(data) % BLOCK:
            raise exception.InvalidArgument(
                reason='copy-up writes must be 4 KiB aligned')
        mv = memoryview(data)
        i = 0
        while i < count:
            if meta[2 * i + 1] & 3 != ABSENT:
                i += 1
                continue
            j = i + 1
            while j < count and meta[2 * j + 1] & 3 == ABSENT:
                j += 1
            self._check_space((j - i) * BLOCK)
            run = mv[i * BLOCK:j * BLOCK]
            pwrite_data(c.head.data_fd, run, (first + i) * BLOCK)
            crcs = checksum.block_crcs(run)
            words = [(meta[2 * (i + k) + 1] & ~3) | DATA
                     for k in range(j - i)]
            os.pwrite(c.head.meta_fd, encode_entries(crcs, words),
                      ENTRY * (first + i))
            i = j
        self._mark_dirty(c, (c.head,))
