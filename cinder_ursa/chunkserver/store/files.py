"""A chunk replica's files on disk: the data and metadata file of a head
or a layer (:class:`Files`), a replica and its layers (:class:`Chunk`), and
the file system calls they need (writes in page-sized pieces, hole
punching, directory fsync, atomic small files)."""

import ctypes
import ctypes.util
import errno
import logging
import os

from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.protocol.chunkfile import decode_entries

LOG = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2


# Data goes to the page cache in pieces of at most this many bytes.  The
# page cache sizes a folio by the write that creates it; on file systems
# with large folios (ext4 since Linux 6.16), a 1 MiB write makes a 1 MiB
# folio, and every later 4 KiB write into it walks all 256 of its buffer
# heads.  After a sequential fill, 4k random writes through ursa-nbd on
# ext4 went from 3.8k to 5.6k IOPS with 64 KiB pieces (tools/bench-nbd
# jobs, median of 3); 1M writes did not slow down.
WRITE_PIECE = 64 * 1024


def pwrite_data(fd, data, pos):
    """os.pwrite of block data, in WRITE_PIECE pieces.  A short write
    (the file system filled up under it) raises ENOSPC."""
    if len(data) <= WRITE_PIECE:
        if os.pwrite(fd, data, pos) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return
    mv = memoryview(data)
    for at in range(0, len(mv), WRITE_PIECE):
        piece = mv[at:at + WRITE_PIECE]
        if os.pwrite(fd, piece, pos + at) != len(piece):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def punch_hole(fd, offset, length):
    """Free ``length`` bytes at ``offset`` (reads then return zeros)."""
    if length <= 0:
        return
    rc = _libc.fallocate(ctypes.c_int(fd), ctypes.c_int(
        _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE),
        ctypes.c_int64(offset), ctypes.c_int64(length))
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
        # No hole punching on this file system: write the zeros.
        for pos in range(offset, offset + length, 1 << 20):
            os.pwrite(fd, bytes(min(1 << 20, offset + length - pos)), pos)


def fsync_dir(path):
    """fsync a directory, so the entries created or renamed in it survive
    a power loss (POSIX does not promise that fsyncing a file does it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fdatasync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def read_int(path, default=0):
    try:
        with open(path) as f:
            return int(f.read().strip() or default)
    except FileNotFoundError:
        return default
    except ValueError:
        LOG.warning('Ignoring unreadable %s', path)
        return default


class Files:
    """The data and metadata file of a head or of one layer."""

    __slots__ = ('base', 'data_fd', 'meta_fd', 'new_entry')

    def __init__(self, base, new_entry=False):
        self.base = base
        self.data_fd = self.meta_fd = None
        # Created in this run, and no copy-on-write synced its directory
        # entry yet (see SnapshotLayers._preserve).
        self.new_entry = new_entry

    def open(self):
        if self.data_fd is None:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0)
            self.data_fd = os.open(self.base + '.data', flags, 0o600)
            self.meta_fd = os.open(self.base + '.meta', flags, 0o600)
        return self

    def close(self):
        for fd in (self.data_fd, self.meta_fd):
            if fd is not None:
                os.close(fd)
        self.data_fd = self.meta_fd = None

    def meta(self, first, count):
        """Flat tuple (crc0, word0, crc1, word1, ...) of blocks."""
        return decode_entries(
            os.pread(self.meta_fd, ENTRY * count, ENTRY * first), count)

    def nblocks(self):
        return os.fstat(self.meta_fd).st_size // ENTRY

    def unlink(self):
        self.close()
        for ext in ('.data', '.meta'):
            try:
                os.unlink(self.base + ext)
            except FileNotFoundError:
                pass


class Chunk:
    __slots__ = ('volume', 'index', 'base', 'head', 'layers', 'epoch',
                 'stale', 'joining', 'joined_at')

    def __init__(self, volume, index, base, epoch, stale, layers=(),
                 joining=False):
        self.volume, self.index, self.base = volume, index, base
        self.head = Files(base)
        # Snapshot sequence N -> Files, kept sorted by N.
        self.layers = {n: Files('%s.s%d' % (base, n)) for n in layers}
        self.epoch, self.stale = epoch, stale
        # Being brought up to date: takes writes, serves no reads.
        self.joining = joining
        # When it last became a joining copy (time.monotonic(); 0: it
        # already was when this run started).
        self.joined_at = 0.0

    def layer_ids(self):
        return sorted(self.layers)

    def layer(self, n):
        f = self.layers.get(n)
        if f is None:
            f = self.layers[n] = Files('%s.s%d' % (self.base, n), True)
        return f.open()

    @property
    def is_open(self):
        return self.head.data_fd is not None

    def open(self):
        self.head.open()

    def close(self):
        self.head.close()
        for f in self.layers.values():
            f.close()

    def all_files(self):
        return [self.head] + [self.layers[n] for n in self.layer_ids()]
