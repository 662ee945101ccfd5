"""Chunk replicas on disk, with copy-on-write snapshot layers.

The files and their metadata entries: :mod:`cinder_ursa.protocol.chunkfile`.

Snapshots: a volume's writes carry its snapshot sequence S.  Snapshot k
holds every write made with a sequence below k.  A write at S to a block
last written at w < S first copies that block's entry (and its 4 KiB of
data, if any) into layer S: the entry then serves every snapshot in
(w, S].  Reading block b of snapshot k takes the first layer N >= k that
holds b, else the head.  Copy-on-write is per block, never per chunk.

Every read of a data block verifies its CRC.  Writes that do not cover
whole blocks read, verify and merge the blocks at their edges first.
Data and metadata go to the page cache.  :meth:`ChunkStore.take_dirty`
hands out what a FLUSH or a FUA write must make durable: the files written
since they were last taken (head and layers) and the directories that got
new entries (a new chunk's files, a new layer, a new volume directory),
whose entries are lost on power loss until the directory is fsynced.
"""

import bisect
import collections
import ctypes
import ctypes.util
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
from cinder_ursa.protocol.chunkfile import ABSENT
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.protocol.chunkfile import ENTRY_STRUCT
from cinder_ursa.protocol.chunkfile import LAYER_ABSENT
from cinder_ursa.protocol.chunkfile import ZERO
from cinder_ursa.protocol.chunkfile import decode_entries
from cinder_ursa.protocol.chunkfile import encode_entries

LOG = logging.getLogger(__name__)

CLEAN_MARK = 'clean-shutdown'
MAX_CHUNK = 1024 * 1024 * 1024
OPEN_CHUNKS = 256


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


def _atomic_write(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fdatasync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def _read_int(path, default=0):
    try:
        with open(path) as f:
            return int(f.read().strip() or default)
    except FileNotFoundError:
        return default
    except ValueError:
        LOG.warning('Ignoring unreadable %s', path)
        return default


def torn_blocks(entries, data):
    """Indexes of the blocks (``entries`` and ``data`` as stored, from
    :meth:`ChunkStore.raw`) holding data whose CRC32C is not the one
    their entry stores: a torn write (data and metadata reached the disk
    apart at a power cut) or a corrupt block."""
    meta = decode_entries(entries, len(entries) // ENTRY)
    mv = memoryview(data)
    return [i for i in range(len(meta) // 2)
            if meta[2 * i + 1] & 3 == DATA and checksum.crc(
                mv[i * BLOCK:(i + 1) * BLOCK]) != meta[2 * i]]


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


class Files:
    """The data and metadata file of a head or of one layer."""

    __slots__ = ('base', 'data_fd', 'meta_fd')

    def __init__(self, base):
        self.base = base
        self.data_fd = self.meta_fd = None

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
                 'stale')

    def __init__(self, volume, index, base, epoch, stale, layers=()):
        self.volume, self.index, self.base = volume, index, base
        self.head = Files(base)
        # Snapshot sequence N -> Files, kept sorted by N.
        self.layers = {n: Files('%s.s%d' % (base, n)) for n in layers}
        self.epoch, self.stale = epoch, stale

    def layer_ids(self):
        return sorted(self.layers)

    def layer(self, n):
        f = self.layers.get(n)
        if f is None:
            f = self.layers[n] = Files('%s.s%d' % (self.base, n))
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


class ChunkStore:
    """Replica files of one data directory.  Not thread-safe: the chunk
    server calls it from its event loop (fdatasync runs in a thread on
    duplicated fds)."""

    def __init__(self, data_dir, reserved_bytes=0):
        self.data_dir = data_dir
        self.chunks_dir = os.path.join(data_dir, 'chunks')
        os.makedirs(self.chunks_dir, exist_ok=True)
        self.reserved = reserved_bytes
        self._open = collections.OrderedDict()  # (vol, idx) -> Chunk
        self._known = {}                          # (vol, idx) -> Chunk
        self._generations = {}
        self._snapseqs = {}
        self._live = {}                           # vol -> (upto, live seqs)
        self._dirty = {}                          # vol -> set of Files
        self._dirty_dirs = {}                     # vol -> set of paths
        self._failed = {}                         # vol -> failed fdatasync
        self._usage = {}                          # (vol, idx) -> bytes
        self._touched = set()                     # keys to re-measure
        self._free_checked = 0.0
        self._free = None
        fresh = not os.path.exists(os.path.join(data_dir, 'server.json'))
        self.server_uuid = self._identity()
        # Whatever a run that did not stop cleanly wrote may still sit in
        # the page cache: the acknowledged writes a client flushes next
        # would be missing from this run's dirty sets, so the server makes
        # them durable (sync_everything) before serving.
        marker = os.path.join(data_dir, CLEAN_MARK)
        self.unclean = not (fresh or os.path.exists(marker))
        if os.path.exists(marker):
            os.unlink(marker)
            fsync_dir(data_dir)
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
            self._snapseqs[vol] = _read_int(os.path.join(vdir, 'snapseq'))
            layers = collections.defaultdict(list)
            heads = []
            for name in os.listdir(vdir):
                if not name.endswith('.meta'):
                    continue
                parts = name[:-5].split('.')
                try:
                    idx = int(parts[0])
                    if len(parts) == 1:
                        heads.append(idx)
                    elif len(parts) == 2 and parts[1][:1] == 's':
                        layers[idx].append(int(parts[1][1:]))
                except ValueError:
                    continue
            for idx in heads:
                c = self._chunk(vol, idx)
                for n in layers.get(idx, ()):
                    c.layers[n] = Files('%s.s%d' % (c.base, n))
                self._touched.add((vol, idx))

    def chunk_list(self):
        """[(volume, index, epoch)] of every replica held, stale or not."""
        return [(c.volume, c.index, c.epoch) for c in self._known.values()]

    def volume_chunks(self, volume):
        return [c for (v, _), c in self._known.items() if v == volume]

    # --- chunk lookup ------------------------------------------------------

    def _chunk(self, volume, index, create=False):
        key = (volume, index)
        c = self._known.get(key)
        if c is None:
            vdir = os.path.join(self.chunks_dir, volume)
            base = os.path.join(vdir, str(index))
            exists = os.path.exists(base + '.meta')
            if not exists and not create:
                return None
            if not exists:
                if not os.path.isdir(vdir):
                    os.makedirs(vdir, exist_ok=True)
                    self._new_entry(volume, self.chunks_dir)
                self._new_entry(volume, vdir)
            c = Chunk(volume, index, base, _read_int(base + '.epoch'),
                      os.path.exists(base + '.stale'))
            self._known[key] = c
        return c

    def _opened(self, c):
        key = (c.volume, c.index)
        if not c.is_open:
            c.open()
            self._open[key] = c
            while len(self._open) > OPEN_CHUNKS:
                _, old = self._open.popitem(last=False)
                if not self._is_dirty(old):
                    old.close()
                else:
                    self._open[(old.volume, old.index)] = old
                    break
        else:
            self._open.move_to_end(key)
        return c

    def _is_dirty(self, c):
        files = c.all_files()
        return any(f in d for d in self._dirty.values() for f in files)

    def _new_entry(self, volume, directory):
        """``directory`` has an entry not yet durable (the next sync of
        ``volume`` fsyncs it)."""
        self._dirty_dirs.setdefault(volume, set()).add(directory)

    def _mark_dirty(self, c, files):
        d = self._dirty.get(c.volume)
        if d is None:
            d = self._dirty[c.volume] = set()
        d.update(files)
        self._touched.add((c.volume, c.index))

    # --- fencing, snapshots and epochs -------------------------------------

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
            self._persist(volume, 'generation', generation)
            self._generations[volume] = generation

    def snapseq(self, volume):
        return self._snapseqs.get(volume, 0)

    def adopt_snapseq(self, volume, seq):
        """Record the volume's newest snapshot sequence (from the master)."""
        if seq > self._snapseqs.get(volume, 0):
            self._persist(volume, 'snapseq', seq)
            self._snapseqs[volume] = seq

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

    def check_snapseq(self, volume, seq):
        """A primary refuses writes made before the newest snapshot: the
        writer must learn of it so its next writes preserve old blocks."""
        current = self._snapseqs.get(volume, 0)
        if seq < current:
            raise exception.StaleSnapshot(
                reason='volume %s has snapshot sequence %d, the write has '
                       '%d; refresh the volume' % (volume, current, seq))

    def _persist(self, volume, name, value):
        vdir = os.path.join(self.chunks_dir, volume)
        if not os.path.isdir(vdir):
            os.makedirs(vdir, exist_ok=True)
            fsync_dir(self.chunks_dir)
        _atomic_write(os.path.join(vdir, name), '%d\n' % value)

    def known_epoch(self, volume, index):
        """The epoch of a replica held here (None: none is)."""
        c = self._known.get((volume, index))
        return None if c is None else c.epoch

    def check_epoch(self, volume, index, epoch, create=False):
        """Return the chunk after checking ``epoch`` against what this
        replica knows: refuse stale replicas and outdated requests, adopt a
        newer epoch.  Returns None for a chunk never written here (reads).
        """
        if self._failed:
            self.check_failed(volume)
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

    # --- reading -----------------------------------------------------------

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
                raise exception.ChecksumError(
                    reason='chunk %s/%d block %d on this replica is corrupt'
                    % (c.volume, c.index, first + i))

    def _read_run(self, c, files, first, count, crcs):
        data = os.pread(files.data_fd, count * BLOCK, first * BLOCK)
        if len(data) < count * BLOCK:
            data += bytes(count * BLOCK - len(data))
        self._verify(c, files, first, data, crcs)
        return data

    def _resolve(self, c, first, count, snap):
        """Per block of ``first .. first+count-1``: (state, files, crc) as
        seen by snapshot ``snap`` (0: the head)."""
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
                    if out[i] is None and m[2 * i + 1]:
                        st = m[2 * i + 1] & 3
                        out[i] = (ABSENT if st == LAYER_ABSENT else st, lf,
                                  m[2 * i])
                        pending -= 1
                if not pending:
                    break
        for i in range(count):
            if out[i] is None:
                out[i] = (head[2 * i + 1] & 3, c.head, head[2 * i])
        return out

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

    def block_states(self, c, offset, length, snap=0):
        """The state of each block a range touches, reading no data."""
        self._check_range(offset, length)
        if length == 0:
            return b''
        first = offset // BLOCK
        count = (offset + length - 1) // BLOCK - first + 1
        if c is None:
            return bytes(count)
        self._opened(c)
        if snap:
            return bytes(b[0] for b in self._resolve(c, first, count, snap))
        m = c.head.meta(first, count)
        return bytes(w & 3 for w in m[1::2])

    def raw(self, c, first, count):
        """(entries, data) of head blocks ``first .. first+count-1`` as
        stored, unverified (zeros past the end and for a chunk never
        written here)."""
        self._check_range(first * BLOCK, count * BLOCK)
        if c is None:
            return bytes(ENTRY * count), bytes(BLOCK * count)
        self._opened(c)
        entries = os.pread(c.head.meta_fd, ENTRY * count, ENTRY * first)
        data = os.pread(c.head.data_fd, BLOCK * count, BLOCK * first)
        return (entries + bytes(ENTRY * count - len(entries)),
                data + bytes(BLOCK * count - len(data)))

    def put_raw(self, c, first, entries, data):
        """Make head blocks from ``first`` hold exactly ``entries`` and
        ``data`` (a repair: the content another replica, or this one after
        a torn write, holds).  Blocks whose entry is not DATA are
        deallocated."""
        count = len(entries) // ENTRY
        self._check_range(first * BLOCK, count * BLOCK)
        self._opened(c)
        meta = decode_entries(entries, count)
        mv = memoryview(data)
        try:
            self._check_space(count * BLOCK)
            i = 0
            while i < count:
                is_data = meta[2 * i + 1] & 3 == DATA
                j = i + 1
                while j < count and (meta[2 * j + 1] & 3 == DATA) == is_data:
                    j += 1
                if is_data:
                    pwrite_data(c.head.data_fd, mv[i * BLOCK:j * BLOCK],
                                (first + i) * BLOCK)
                else:
                    punch_hole(c.head.data_fd, (first + i) * BLOCK,
                               (j - i) * BLOCK)
                i = j
            os.pwrite(c.head.meta_fd, entries, ENTRY * first)
        except OSError as e:
            self._no_space(e)
            raise
        self._mark_dirty(c, (c.head,))

    # --- writing -----------------------------------------------------------

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

    def _preserve(self, c, first, meta, seq, only=None, floor=None):
        """Copy blocks last written before ``floor`` (default ``seq``)
        into layer ``seq``."""
        floor = seq if floor is None else floor
        old = [i for i in (range(len(meta) // 2) if only is None else only)
               if meta[2 * i + 1] >> 2 < floor]
        if not old:
            return
        if seq not in c.layers:
            self._new_entry(c.volume, os.path.dirname(c.base))
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
        self._mark_dirty(c, (lf,))

    def _edge(self, c, block, meta_i, meta):
        """Current head content of one block, verified."""
        if meta[2 * meta_i + 1] & 3 != DATA:
            return checksum.ZERO_BLOCK
        return self._read_run(c, c.head, block, 1, [meta[2 * meta_i]])

    def write(self, c, offset, data, seq=0, zero=False, if_absent=False,
              length=None, floor=None):
        """Apply a write synchronously (page cache).

        ``zero``: ``data`` is ignored, ``length`` bytes become zeros (whole
        blocks are deallocated).  ``if_absent``: only blocks never written
        in this chunk take the data (copy-up from a clone's parent; block
        aligned).  ``floor``: see ``preserve_floor``.
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
            if if_absent or head or tail or (seq if floor is None
                                              else floor):
                meta = c.head.meta(first, count)
            else:
                # Whole blocks and no snapshot to preserve them for: the
                # old entries are not needed (one pread less per write).
                meta = None
            if if_absent:
                self._write_if_absent(c, offset, data, first, count, meta)
                return
            if not zero:
                self._check_space(length)
            if meta is not None:
                self._preserve(c, first, meta, seq, floor=floor)
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

    # --- snapshots: revert and garbage collection ---------------------

    def _blocks_in_use(self, c):
        return max([f.open().nblocks() for f in c.all_files()] or [0])

    def revert(self, volume, snap, seq):
        """Make the head of every chunk of ``volume`` equal to snapshot
        ``snap``, as a write at sequence ``seq`` (later snapshots keep
        their content).  Idempotent."""
        reverted = 0
        for c in self.volume_chunks(volume):
            if c.stale:
                continue
            self._opened(c)
            n = self._blocks_in_use(c)
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
                self._preserve(c, first, meta, seq, changed,
                               self.preserve_floor(volume, seq))
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

    # --- flushing ---------------------------------------------------------

    def take_dirty(self, volume=None, chunk=None):
        """Take what must be made durable: the files written since they
        were last taken and the directories with new entries, of
        ``volume`` (every volume when None; of ``chunk`` only, when given:
        a FUA write).  Returns ``(fds, dirs)`` for :meth:`sync`: the fds are
        duplicates, so the files may be closed meanwhile.  A volume whose
        sync failed on this server raises DiskError from then on: its data
        here may be lost, and no later FLUSH may say otherwise."""
        vols = ([volume] if volume is not None
                else list(set(self._dirty) | set(self._dirty_dirs)))
        fds, dirs = [], []
        for v in vols:
            if volume is None and v in self._failed:
                continue   # its sync failed; the others still sync
            self.check_failed(v)
            d = self._dirty.get(v)
            if d:
                if chunk is None:
                    taken = self._dirty.pop(v)
                else:
                    taken = d.intersection(chunk.all_files())
                    d -= taken
                for f in taken:
                    if f.data_fd is not None:
                        fds.append((os.dup(f.data_fd), os.dup(f.meta_fd)))
            dirs.extend(self._dirty_dirs.pop(v, ()))
        return fds, dirs

    @staticmethod
    def sync(fds, dirs):
        """fdatasync (and close) what :meth:`take_dirty` took, then fsync
        the directories; runs in a worker thread.  Every fd is closed even
        when a sync fails."""
        err = None
        for data_fd, meta_fd in fds:
            for fd in (data_fd, meta_fd):
                try:
                    if err is None:
                        os.fdatasync(fd)
                except OSError as e:
                    err = e
                finally:
                    os.close(fd)
        if err is not None:
            raise err
        for path in sorted(dirs, key=len, reverse=True):
            try:
                fsync_dir(path)
            except FileNotFoundError:
                pass  # deleted meanwhile: nothing left to keep

    def sync_failed(self, volumes, err):
        """A sync of ``volumes`` (None: all) failed with ``err``."""
        for v in (volumes if volumes is not None else
                  {k[0] for k in self._known}):
            self._failed.setdefault(v, err)

    def failed_volumes(self):
        return list(self._failed)

    def check_failed(self, volume):
        err = self._failed.get(volume)
        if err is not None:
            raise exception.DiskError(
                reason='fdatasync of volume %s failed on this server (%s): '
                       'its replicas here may have lost acknowledged '
                       'writes and serve nothing until it restarts'
                       % (volume, err))

    # --- inspection -------------------------------------------------------

    def chunk_info(self, volume, index, deep=False):
        """(epoch, allocated bytes, layers digest, [fingerprint per block])
        of a replica: what ``ursa volume check`` compares.  ``deep``: every
        data block is also read, and a fifth item lists the blocks whose
        data does not match their CRC (see :func:`torn_blocks`)."""
        c = self._chunk(volume, index)
        if c is None:
            raise exception.NotFound(kind='chunk replica',
                                     name='%s/%d' % (volume, index))
        self._opened(c)
        n = c.head.nblocks()
        meta = c.head.meta(0, n)
        crcs = [meta[2 * i] if meta[2 * i + 1] & 3 == DATA
                else checksum.ZERO_CRC for i in range(n)]
        torn = None
        if deep:
            torn = []
            step = 256
            for first in range(0, n, step):
                count = min(step, n - first)
                entries, data = self.raw(c, first, count)
                torn.extend(first + i for i in torn_blocks(entries, data))
        while crcs and crcs[-1] == checksum.ZERO_CRC:
            crcs.pop()
        digest = 0
        for k in c.layer_ids():
            lf = c.layer(k)
            raw = os.pread(lf.meta_fd, ENTRY * lf.nblocks(), 0)
            digest = checksum.crc(struct.pack('!QI', k, digest) + raw)
        if deep:
            return c.epoch, self._allocated(c), digest, crcs, torn
        return c.epoch, self._allocated(c), digest, crcs

    def inventory(self, volume=None):
        """[(volume, index, epoch, stale, allocated bytes, [layer
        sequences])] of every replica held (of ``volume`` only when given):
        what ``ursa cluster check`` compares with the master."""
        out = []
        for (vol, idx), c in sorted(self._known.items()):
            if volume is not None and vol != volume:
                continue
            out.append((vol, idx, c.epoch, c.stale, self._allocated(c),
                        c.layer_ids()))
        return out

    @staticmethod
    def _allocated(c):
        total = 0
        for f in c.all_files():
            for ext in ('.data', '.meta'):
                try:
                    total += os.stat(f.base + ext).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def delete(self, volume, index=None):
        """Delete one replica, or every replica of a volume."""
        keys = [k for k in self._known if k[0] == volume and
                (index is None or k[1] == index)]
        for key in keys:
            c = self._known.pop(key)
            self._open.pop(key, None)
            self._usage.pop(key, None)
            self._touched.discard(key)
            files = c.all_files()
            for d in self._dirty.values():
                d.difference_update(files)
            for f in files:
                f.unlink()
            for ext in ('.epoch', '.stale'):
                try:
                    os.unlink(c.base + ext)
                except FileNotFoundError:
                    pass
        if index is None:
            self._generations.pop(volume, None)
            self._snapseqs.pop(volume, None)
            self._dirty.pop(volume, None)
            self._dirty_dirs.pop(volume, None)
            self._failed.pop(volume, None)
            shutil.rmtree(os.path.join(self.chunks_dir, volume),
                          ignore_errors=True)
        return len(keys)

    def usage(self):
        """Capacity, used and free bytes, and allocated bytes per volume.
        Only chunks written since the last call are measured again."""
        st = os.statvfs(self.data_dir)
        capacity = st.f_blocks * st.f_frsize
        free = max(st.f_bavail * st.f_frsize - self.reserved, 0)
        for key in self._touched:
            c = self._known.get(key)
            if c is not None:
                self._usage[key] = self._allocated(c)
        self._touched.clear()
        volumes = collections.Counter()
        for (vol, _), n in self._usage.items():
            volumes[vol] += n
        return {'capacity': capacity, 'used': sum(volumes.values()),
                'free': free, 'volumes': dict(volumes)}

    def sync_everything(self):
        """fdatasync every file and fsync every directory of the chunks
        (after a run that did not stop cleanly); returns the number of
        files synced."""
        n = 0
        for root, _, names in os.walk(self.chunks_dir):
            for name in names:
                try:
                    fd = os.open(os.path.join(root, name),
                                 os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
                except FileNotFoundError:
                    continue
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                n += 1
            fsync_dir(root)
        return n

    def close(self, clean=False):
        """Close every file; ``clean``: everything written was synced, the
        next start need not sync it again."""
        for c in self._known.values():
            c.close()
        self._open.clear()
        if clean:
            _atomic_write(os.path.join(self.data_dir, CLEAN_MARK), 'clean\n')
