"""Repair primitives: a replica's head blocks as stored, read and written
without verification (:class:`RawBlocks`, part of
:class:`~cinder_ursa.chunkserver.store.ChunkStore`), and the checks that
find and mend torn blocks in what they carry."""

import logging
import os
import struct

from cinder_ursa.chunkserver.store.files import atomic_write
from cinder_ursa.chunkserver.store.files import punch_hole
from cinder_ursa.chunkserver.store.files import pwrite_data
from cinder_ursa.common import checksum
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.protocol.chunkfile import ENTRY_STRUCT
from cinder_ursa.protocol.chunkfile import LAYER_ABSENT
from cinder_ursa.protocol.chunkfile import decode_entries

LOG = logging.getLogger(__name__)
UNVERIFIED = '.unverified'


def torn_blocks(entries, data):
    """Indexes of the blocks (``entries`` and ``data`` as stored, from
    :meth:`RawBlocks.raw`) holding data whose CRC32C is not the one
    their entry stores: a torn write (data and metadata reached the disk
    apart at a power cut) or a corrupt block."""
    meta = decode_entries(entries, len(entries) // ENTRY)
    mv = memoryview(data)
    return [i for i in range(len(meta) // 2)
            if meta[2 * i + 1] & 3 == DATA and checksum.crc(
                mv[i * BLOCK:(i + 1) * BLOCK]) != meta[2 * i]]


def check_unit(data_fd, meta_fd, first, count):
    """(blocks that fail their CRC, bytes of data blocks read) of blocks
    ``first .. first+count-1`` of a head or layer (for a worker thread)."""
    entries = os.pread(meta_fd, ENTRY * count, ENTRY * first)
    entries += bytes(ENTRY * count - len(entries))
    meta = decode_entries(entries, count)
    ndata = sum(1 for w in meta[1::2] if w & 3 == DATA)
    if not ndata:
        return [], 0
    data = os.pread(data_fd, BLOCK * count, BLOCK * first)
    data += bytes(BLOCK * count - len(data))
    return [first + i for i in torn_blocks(entries, data)], \
        ndata * BLOCK


def head_entries(entries):
    """Whether every entry holds a head block's state (absent, data or
    zero; not a layer's)."""
    meta = decode_entries(entries, len(entries) // ENTRY)
    return all(w & 3 != LAYER_ABSENT for w in meta[1::2])


def mend_entries(entries, data, blocks):
    """``entries`` with the CRC of ``blocks`` (indexes) computed from
    ``data``: a torn block's content is taken as it is."""
    out = bytearray(entries)
    mv = memoryview(data)
    for i in blocks:
        word = struct.unpack_from('!I', out, ENTRY * i + 4)[0]
        ENTRY_STRUCT.pack_into(out, ENTRY * i, checksum.crc(
            mv[i * BLOCK:(i + 1) * BLOCK]), word)
    return bytes(out)


class RawBlocks:
    """Part of :class:`~cinder_ursa.chunkserver.store.ChunkStore`: blocks
    as stored, for repair and for copying a replica: the head's, or a
    snapshot layer's (``layer``: its sequence; 0 is the head)."""

    def raw(self, c, first, count, layer=0):
        """(entries, data) of blocks ``first .. first+count-1`` of the
        head or of ``layer``, as stored, unverified (zeros past the end,
        for a chunk never written here, and for a layer it does not have:
        all-zero entries mean "not in this layer")."""
        self._check_range(first * BLOCK, count * BLOCK)
        if c is None or layer and layer not in c.layers:
            return bytes(ENTRY * count), bytes(BLOCK * count)
        self._opened(c)
        files = c.layer(layer) if layer else c.head
        entries = os.pread(files.meta_fd, ENTRY * count, ENTRY * first)
        data = os.pread(files.data_fd, BLOCK * count, BLOCK * first)
        return (entries + bytes(ENTRY * count - len(entries)),
                data + bytes(BLOCK * count - len(data)))

    def put_raw(self, c, first, entries, data, layer=0):
        """Make blocks from ``first`` of the head or of ``layer`` hold
        exactly ``entries`` and ``data`` (a repair: the content another
        replica, or this one after a torn write, holds; or a copy of
        another replica).  Blocks whose entry is not DATA are
        deallocated; a layer this replica lacks is created."""
        count = len(entries) // ENTRY
        self._check_range(first * BLOCK, count * BLOCK)
        self._opened(c)
        meta = decode_entries(entries, count)
        mv = memoryview(data)
        try:
            self._check_space(count * BLOCK)
            if layer and layer not in c.layers:
                self._new_entry(c.volume, os.path.dirname(c.base))
            files = c.layer(layer) if layer else c.head
            i = 0
            while i < count:
                is_data = meta[2 * i + 1] & 3 == DATA
                j = i + 1
                while j < count and (meta[2 * j + 1] & 3 == DATA) == is_data:
                    j += 1
                if is_data:
                    pwrite_data(files.data_fd, mv[i * BLOCK:j * BLOCK],
                                (first + i) * BLOCK)
                else:
                    punch_hole(files.data_fd, (first + i) * BLOCK,
                               (j - i) * BLOCK)
                i = j
            os.pwrite(files.meta_fd, entries, ENTRY * first)
        except OSError as e:
            self._no_space(e)
            raise
        self._mark_dirty(c, (files,))

    def mend_from_head(self, c, first, entries, data, torn):
        """Mend blocks of a layer that fail their CRC (``torn``: indexes
        in ``entries`` and ``data``, as :meth:`raw` read them from block
        ``first``) from the head, where it still holds the same version
        whole (the same entry, and data that matches it): the copy-on-write
        syncs a layer's copies before the head's blocks are overwritten,
        so a power cut during that sync can leave a copy torn (its entry
        on disk, its data not) with the head still holding it.  Returns
        (data, the blocks still torn)."""
        heads, head_data = self.raw(c, first, len(entries) // ENTRY)
        bad = set(torn_blocks(heads, head_data))
        out = bytearray(data)
        left = []
        for i in torn:
            e, b = i * ENTRY, i * BLOCK
            if i in bad or heads[e:e + ENTRY] != entries[e:e + ENTRY]:
                left.append(i)
            else:
                out[b:b + BLOCK] = head_data[b:b + BLOCK]
        return bytes(out), left

    def dup_files(self, c, layer=0):
        """(data fd, metadata fd, blocks) of the head or of ``layer`` of
        ``c``, duplicated so a worker thread may read them while the copy's
        own are closed (the caller closes them); None: no such layer."""
        if layer and layer not in c.layers:
            return None
        self._opened(c)
        files = c.layer(layer) if layer else c.head
        return os.dup(files.data_fd), os.dup(files.meta_fd), files.nblocks()

    @staticmethod
    def data_bytes(c):
        """Bytes allocated to the data files of ``c`` (head and layers):
        what reading all its blocks reads."""
        total = 0
        for f in c.all_files():
            try:
                total += os.stat(f.base + '.data').st_blocks * 512
            except FileNotFoundError:
                pass
        return total

    # --- copies a crash of the machine may have torn ----------------------

    def mark_unverified(self, volume, index):
        """The copy of a chunk held here may hold torn blocks whose
        metadata reached the disk without their data (this server's
        machine crashed): it is checked before it is brought up to date
        (see :meth:`verify_copy`)."""
        c = self._chunk(volume, index)
        if c is not None:
            atomic_write(c.base + UNVERIFIED, 'check every block\n')

    def unverified(self, c):
        return os.path.exists(c.base + UNVERIFIED)

    def unverified_files(self, c):
        """(data fd, metadata fd, blocks) of each file of a copy, head and
        layers, to check with :func:`forget_torn` (which closes them:
        duplicates, so the copy's own may be closed meanwhile)."""
        self._opened(c)
        return [(os.dup(f.data_fd), os.dup(f.meta_fd), f.nblocks())
                for f in [c.head] + [c.layer(n) for n in c.layer_ids()]]

    def verified(self, c, forgotten):
        """:func:`forget_torn` checked the copy: ``forgotten`` blocks."""
        if forgotten:
            self._mark_dirty(c, c.all_files())
            LOG.warning('Copy of chunk %s/%d: %d block(s) torn by the crash '
                        'are to be sent again', c.volume, c.index, forgotten)
        try:
            os.unlink(c.base + UNVERIFIED)
        except FileNotFoundError:
            pass        # checked twice at once: once is enough
        self.torn_scanned(c.volume, c.index)


def forget_torn(files):
    """Read every data block of ``files`` (a copy's head and layers, see
    :meth:`RawBlocks.unverified_files`); make the entry of each block that
    does not match its CRC absent, so a comparison with another copy finds
    it different and it is sent again, and sync what it changed.  For a
    worker thread (no other request uses the copy meanwhile); returns the
    blocks forgotten."""
    forgotten = 0
    try:
        for data_fd, meta_fd, n in files:
            before = forgotten
            for first in range(0, n, 256):
                count = min(256, n - first)
                entries = os.pread(meta_fd, ENTRY * count, ENTRY * first)
                data = os.pread(data_fd, BLOCK * count, BLOCK * first)
                data += bytes(BLOCK * count - len(data))
                entries += bytes(ENTRY * count - len(entries))
                for i in torn_blocks(entries, data):
                    os.pwrite(meta_fd, bytes(ENTRY), ENTRY * (first + i))
                    forgotten += 1
            if forgotten != before:
                # Durable before the copy's mark goes: a power cut must
                # not leave the torn blocks back and the mark gone.
                os.fdatasync(meta_fd)
    finally:
        for data_fd, meta_fd, _ in files:
            os.close(data_fd)
            os.close(meta_fd)
    return forgotten
