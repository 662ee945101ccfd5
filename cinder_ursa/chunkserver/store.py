"""Chunk replicas on disk.

Layout of a data directory::

    server.json                       {"uuid": ...} this server's identity
    chunks/<volume id>/generation     highest lease generation seen (text)
    chunks/<volume id>/<index>.data   the chunk's bytes, a sparse file
    chunks/<volume id>/<index>.crc    CRC32C of each 4 KiB block, 4 bytes
                                      big-endian per block, sparse too
    chunks/<volume id>/<index>.epoch  replica-set epoch last seen (text)
    chunks/<volume id>/<index>.stale  present when the master dropped this
                                      replica; it serves nothing until
                                      repaired

A block whose stored CRC is 0 and whose data is all zeros has never been
written (a hole).  Every read verifies the CRC of every block it touches.
Writes that do not cover whole blocks read, verify and merge the blocks at
their edges first, so a checksum always covers a whole block.

Data and checksums go to the page cache on write; ``flush`` fdatasyncs
both files of every chunk written since the last flush.
"""

import collections
import errno
import json
import logging
import os
import shutil
import struct
import time
import uuid

from cinder_ursa import exception
from cinder_ursa.common import checksum

LOG = logging.getLogger(__name__)

BLOCK = checksum.BLOCK
MAX_CHUNK = 1024 * 1024 * 1024
OPEN_CHUNKS = 256


def _atomic_write(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fdatasync(f.fileno())
    os.replace(tmp, path)


def _read_int(path, default=0):
    try:
        with open(path) as f:
            return int(f.read().strip() or default)
    except FileNotFoundError:
        return default
    except ValueError:
        LOG.warning('Ignoring unreadable %s', path)
        return default


class Chunk:
    __slots__ = ('volume', 'index', 'base', 'data_fd', 'crc_fd', 'epoch',
                 'stale')

    def __init__(self, volume, index, base, epoch, stale):
        self.volume, self.index, self.base = volume, index, base
        self.data_fd = self.crc_fd = None
        self.epoch, self.stale = epoch, stale

    def open(self):
        if self.data_fd is None:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0)
            self.data_fd = os.open(self.base + '.data', flags, 0o600)
            self.crc_fd = os.open(self.base + '.crc', flags, 0o600)

    def close(self):
        for fd in (self.data_fd, self.crc_fd):
            if fd is not None:
                os.close(fd)
        self.data_fd = self.crc_fd = None


class ChunkStore:
    """Replica files of one data directory.  Not thread-safe: the chunk
    server calls it from its event loop (fdatasync runs in a thread on fds
    it does not close meanwhile)."""

    def __init__(self, data_dir, reserved_bytes=0):
        self.data_dir = data_dir
        self.chunks_dir = os.path.join(data_dir, 'chunks')
        os.makedirs(self.chunks_dir, exist_ok=True)
        self.reserved = reserved_bytes
        self._open = collections.OrderedDict()  # (vol, idx) -> Chunk
        self._known = {}                          # (vol, idx) -> Chunk
        self._generations = {}
        self._dirty = {}                          # vol -> set of Chunk
        self._free_checked = 0.0
        self._free = None
        self.server_uuid = self._identity()
        self._scan()

    # --- identity and scanning ---------------------------------------------

    def _identity(self):
        path = os.path.join(self.data_dir, 'server.json')
        try:
            with open(path) as f:
                return json.load(f)['uuid']
        except FileNotFoundError:
            ident = str(uuid.uuid4())
            _atomic_write(path, json.dumps({'uuid': ident}) + '\n')
            return ident

    def _scan(self):
        for vol in os.listdir(self.chunks_dir):
            vdir = os.path.join(self.chunks_dir, vol)
            if not os.path.isdir(vdir):
                continue
            self._generations[vol] = _read_int(os.path.join(vdir,
                                                            'generation'))
            for name in os.listdir(vdir):
                if not name.endswith('.data'):
                    continue
                try:
                    idx = int(name[:-5])
                except ValueError:
                    continue
                self._chunk(vol, idx)

    def chunk_list(self):
        """[(volume, index, epoch)] of every replica held, stale or not."""
        return [(c.volume, c.index, c.epoch) for c in self._known.values()]

    # --- chunk lookup ------------------------------------------------------

    def _chunk(self, volume, index, create=False):
        key = (volume, index)
        c = self._known.get(key)
        if c is None:
            vdir = os.path.join(self.chunks_dir, volume)
            base = os.path.join(vdir, str(index))
            exists = os.path.exists(base + '.data')
            if not exists and not create:
                return None
            if create:
                os.makedirs(vdir, exist_ok=True)
            c = Chunk(volume, index, base, _read_int(base + '.epoch'),
                      os.path.exists(base + '.stale'))
            self._known[key] = c
        return c

    def _opened(self, c):
        key = (c.volume, c.index)
        if c.data_fd is None:
            c.open()
            self._open[key] = c
            while len(self._open) > OPEN_CHUNKS:
                _, old = self._open.popitem(last=False)
                if not any(old in d for d in self._dirty.values()):
                    old.close()
                else:
                    self._open[(old.volume, old.index)] = old
                    break
        else:
            self._open.move_to_end(key)
        return c

    # --- fencing and epochs ------------------------------------------------

    def generation(self, volume):
        return self._generations.get(volume, 0)

    def adopt_generation(self, volume, generation):
        """Record a newer lease generation; raise Fenced for an older one."""
        current = self._generations.get(volume, 0)
        if generation < 1:
            raise exception.Fenced(
                reason='writes to volume %s need a lease (generation >= 1)'
                % volume)
        if generation < current:
            raise exception.Fenced(
                reason='volume %s is now written under lease generation %d; '
                       'generation %d was fenced' % (volume, current,
                                                     generation))
        if generation > current:
            vdir = os.path.join(self.chunks_dir, volume)
            os.makedirs(vdir, exist_ok=True)
            _atomic_write(os.path.join(vdir, 'generation'), '%d\n'
                          % generation)
            self._generations[volume] = generation

    def check_epoch(self, volume, index, epoch, create=False):
        """Return the chunk after checking ``epoch`` against what this
        replica knows: refuse stale replicas and outdated requests, adopt a
        newer epoch.  Returns None for a chunk never written here (reads).
        """
        c = self._chunk(volume, index, create=create)
        if c is None:
            return None
        if c.stale:
            raise exception.StaleReplica(
                reason='replica of chunk %s/%d on this server left the '
                       'replica set; refresh the chunk map' % (volume, index))
        if epoch < c.epoch:
            raise exception.StaleEpoch(
                reason='chunk %s/%d is at epoch %d, request has %d; refresh '
                       'the chunk map' % (volume, index, c.epoch, epoch))
        if epoch > c.epoch:
            self.set_epoch(c, epoch)
        return c

    def set_epoch(self, c, epoch):
        if c.epoch != epoch:
            os.makedirs(os.path.dirname(c.base), exist_ok=True)
            _atomic_write(c.base + '.epoch', '%d\n' % epoch)
            c.epoch = epoch

    def mark_stale(self, volume, index):
        c = self._chunk(volume, index)
        if c is not None and not c.stale:
            with open(c.base + '.stale', 'w') as f:
                f.write('dropped from the replica set\n')
            c.stale = True
            LOG.warning('Replica of chunk %s/%d is stale: the master dropped '
                        'it from the replica set', volume, index)

    # --- I/O ---------------------------------------------------------------

    @staticmethod
    def _check_range(offset, length):
        if offset < 0 or length < 0 or offset + length > MAX_CHUNK:
            raise exception.OutOfRange(
                reason='offset %d + length %d is outside a chunk'
                % (offset, length))

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

    def _read_blocks(self, c, first, count):
        """Read and verify ``count`` blocks from block ``first``."""
        data = os.pread(c.data_fd, count * BLOCK, first * BLOCK)
        if len(data) < count * BLOCK:
            data += bytes(count * BLOCK - len(data))
        raw = os.pread(c.crc_fd, 4 * count, 4 * first)
        if len(raw) < 4 * count:
            raw += bytes(4 * count - len(raw))
        stored = struct.unpack('!%dI' % count, raw)
        actual = checksum.block_crcs(data)
        for i, (want, got) in enumerate(zip(stored, actual, strict=False)):
            if want == got:
                continue
            blk = data[i * BLOCK:(i + 1) * BLOCK]
            if want == 0 and blk == checksum.ZERO_BLOCK:
                continue  # never written
            LOG.error('Checksum mismatch in chunk %s/%d block %d: stored '
                      '%08x, data %08x', c.volume, c.index, first + i, want,
                      got)
            raise exception.ChecksumError(
                reason='chunk %s/%d block %d on this replica is corrupt'
                % (c.volume, c.index, first + i))
        return data

    def read(self, c, offset, length):
        self._check_range(offset, length)
        if c is None or length == 0:
            return bytes(length)
        self._opened(c)
        first = offset // BLOCK
        last = (offset + length - 1) // BLOCK
        data = self._read_blocks(c, first, last - first + 1)
        start = offset - first * BLOCK
        if start == 0 and len(data) == length:
            return data
        return data[start:start + length]

    def write(self, c, offset, data):
        """Apply a write synchronously (page cache).  ``data`` may be a
        memoryview."""
        length = len(data)
        self._check_range(offset, length)
        if length == 0:
            return
        self._opened(c)
        self._check_space(length)
        first = offset // BLOCK
        last = (offset + length - 1) // BLOCK
        head = offset - first * BLOCK
        if head or (offset + length) % BLOCK:
            count = last - first + 1
            buf = bytearray(self._edge_blocks(c, first, last, count))
            buf[head:head + length] = data
            data = buf
        try:
            os.pwrite(c.data_fd, data, first * BLOCK)
            crcs = checksum.block_crcs(data)
            os.pwrite(c.crc_fd, struct.pack('!%dI' % len(crcs), *crcs),
                      4 * first)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise exception.NoSpace(reason='%s: %s' % (
                    self.data_dir, e.strerror)) from e
            raise
        self._dirty.setdefault(c.volume, set()).add(c)

    def _edge_blocks(self, c, first, last, count):
        """Current content of blocks first..last, verified at the edges
        (the middle is about to be overwritten whole)."""
        if count <= 2:
            return self._read_blocks(c, first, count)
        head = self._read_blocks(c, first, 1)
        tail = self._read_blocks(c, last, 1)
        return head + bytes((count - 2) * BLOCK) + tail

    def dirty_fds(self, volume=None):
        """Take the fds to fdatasync for ``volume`` (all when None)."""
        vols = [volume] if volume is not None else list(self._dirty)
        fds = []
        for v in vols:
            for c in self._dirty.pop(v, ()):
                if c.data_fd is not None:
                    fds.append((os.dup(c.data_fd), os.dup(c.crc_fd)))
        return fds

    @staticmethod
    def sync_fds(fds):
        """fdatasync and close duplicated fds (runs in a worker thread)."""
        for data_fd, crc_fd in fds:
            try:
                os.fdatasync(data_fd)
                os.fdatasync(crc_fd)
            finally:
                os.close(data_fd)
                os.close(crc_fd)

    def chunk_info(self, volume, index):
        """(epoch, allocated bytes, [crc per block]) of a replica."""
        c = self._chunk(volume, index)
        if c is None:
            raise exception.NotFound(kind='chunk replica',
                                     name='%s/%d' % (volume, index))
        self._opened(c)
        st = os.fstat(c.data_fd)
        nblocks = -(-st.st_size // BLOCK)
        raw = os.pread(c.crc_fd, 4 * nblocks, 0)
        raw += bytes(4 * nblocks - len(raw))
        crcs = list(struct.unpack('!%dI' % nblocks, raw))
        # Normalise holes so replicas compare equal however they were made.
        for i, value in enumerate(crcs):
            if value == 0:
                crcs[i] = checksum.ZERO_CRC
        while crcs and crcs[-1] == checksum.ZERO_CRC:
            crcs.pop()
        return c.epoch, st.st_blocks * 512, crcs

    def delete(self, volume, index=None):
        """Delete one replica, or every replica of a volume."""
        keys = [k for k in self._known if k[0] == volume and
                (index is None or k[1] == index)]
        for key in keys:
            c = self._known.pop(key)
            self._open.pop(key, None)
            for d in self._dirty.values():
                d.discard(c)
            c.close()
            for ext in ('.data', '.crc', '.epoch', '.stale'):
                try:
                    os.unlink(c.base + ext)
                except FileNotFoundError:
                    pass
        if index is None:
            self._generations.pop(volume, None)
            self._dirty.pop(volume, None)
            shutil.rmtree(os.path.join(self.chunks_dir, volume),
                          ignore_errors=True)
        return len(keys)

    def usage(self):
        st = os.statvfs(self.data_dir)
        capacity = st.f_blocks * st.f_frsize
        free = max(st.f_bavail * st.f_frsize - self.reserved, 0)
        used = 0
        for c in self._known.values():
            for ext in ('.data', '.crc'):
                try:
                    used += os.stat(c.base + ext).st_blocks * 512
                except FileNotFoundError:
                    pass
        return {'capacity': capacity, 'used': used, 'free': free}

    def close(self):
        for c in self._known.values():
            c.close()
        self._open.clear()
