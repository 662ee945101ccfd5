"""Chunk replicas on disk, with copy-on-write snapshot layers.

The files and their metadata entries: :mod:`cinder_ursa.protocol.chunkfile`.

Snapshots: a volume's writes carry its snapshot sequence S.  Snapshot k
holds every write made with a sequence below k.  A write at S to a block
last written at w < S first copies that block's entry (and its 4 KiB of
data, if any) into layer S: the entry then serves every snapshot in
(w, S].  Reading block b of snapshot k takes the first layer N >= k that
holds b, else the head.  Copy-on-write is per block, never per chunk.
The copies (and a new layer's directory entries) are synced before the
write overwrites the head's blocks, one sync per write or per batch of
writes: a power cut must not keep an overwrite and lose its copy (see
``SnapshotLayers.preserve``).

Every read of a data block verifies its CRC.  Writes that do not cover
whole blocks read, verify and merge the blocks at their edges first.
Data and metadata go to the page cache.  :meth:`ChunkStore.take_dirty`
hands out what a FLUSH or a FUA write must make durable: the files written
since they were last taken (head and layers) and the directories that got
new entries (a new chunk's files, a new layer, a new volume directory),
whose entries are lost on power loss until the directory is fsynced.

One module per concern, each a part of :class:`ChunkStore`: ``files``
(a replica's files and the file system calls), ``handles`` (finding and
opening replicas), ``blocks`` (block I/O of the head), ``layers``
(snapshot layers: copy-on-write, revert, gc), ``fencing`` (generations,
snapshot sequences, epochs, stale replicas), ``durability`` (dirty sets,
sync, failed syncs), ``mending`` (raw blocks for repair, torn blocks),
``inventory`` (fingerprints, replica lists, usage).
"""

import collections
import json
import os
import shutil
import uuid

from cinder_ursa.chunkserver.store.blocks import BlockIO
from cinder_ursa.chunkserver.store.durability import DirtyFiles
from cinder_ursa.chunkserver.store.fencing import MASTER_TERM
from cinder_ursa.chunkserver.store.fencing import Fencing
from cinder_ursa.chunkserver.store.files import Files
from cinder_ursa.chunkserver.store.files import atomic_write
from cinder_ursa.chunkserver.store.files import fsync_dir
from cinder_ursa.chunkserver.store.files import read_int
from cinder_ursa.chunkserver.store.handles import ChunkHandles
from cinder_ursa.chunkserver.store.inventory import Inventory
from cinder_ursa.chunkserver.store.layers import SnapshotLayers
from cinder_ursa.chunkserver.store.mending import RawBlocks
from cinder_ursa.protocol.chunkfile import RESYNC_MARK

CLEAN_MARK = 'clean-shutdown'
BOOT_ID = 'boot-id'     # the boot id of the machine at the last start
LOST_CACHE_MARK = 'lost-cache'   # the master is yet to hear of that
TORN_SCAN_MARK = 'torn-scan'     # copies are yet to be read for torn blocks


def _boot_id():
    """This boot's id (Linux), or None."""
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return f.read().strip()
    except OSError:
        return None


class ChunkStore(ChunkHandles, BlockIO, SnapshotLayers, RawBlocks, Fencing,
                 DirtyFiles, Inventory):
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
        # vol -> reverts and collections so far (a copy in progress
        # cannot follow them: see chunkserver/rebuild.py).
        self._rewrites = {}
        self._dirty = {}                          # vol -> set of Files
        self._dirty_dirs = {}                     # vol -> set of paths
        self._failed = {}                         # vol -> failed fdatasync
        self._usage = {}                          # (vol, idx) -> bytes
        self._touched = set()                     # keys to re-measure
        self._free_checked = 0.0
        self._free = None
        fresh = not os.path.exists(os.path.join(data_dir, 'server.json'))
        self.server_uuid = self._identity()
        self.master_term = read_int(os.path.join(data_dir, MASTER_TERM))
        self._term_saved = True
        # Whatever a run that did not stop cleanly wrote may still sit in
        # the page cache: the acknowledged writes a client flushes next
        # would be missing from this run's dirty sets, so the server makes
        # them durable (sync_everything) before serving.
        marker = os.path.join(data_dir, CLEAN_MARK)
        self.unclean = not fresh and not os.path.exists(marker)
        # A crash of the machine, not only of the process (the boot id
        # changed): writes acknowledged but not synced may be lost here.
        boot = _boot_id()
        boot_file = os.path.join(data_dir, BOOT_ID)
        try:
            with open(boot_file) as f:
                last_boot = f.read().strip()
        except FileNotFoundError:
            last_boot = None
        lost_mark = os.path.join(data_dir, LOST_CACHE_MARK)
        if not fresh and not os.path.exists(marker) and boot != last_boot:
            # Durable before the boot id moves on, until the master knew
            # (see lost_cache_told): a restart before that must not
            # forget it.
            atomic_write(lost_mark, 'writes not synced may be lost\n')
        self.lost_cache = os.path.exists(lost_mark)
        # The replicas are compared with their chunks' others after a
        # crash, and also after a clean stop that came before every one
        # was (a resync left unfinished is still to do).
        self.resync_needed = self.unclean or self.lost_cache or (
            os.path.exists(os.path.join(data_dir, RESYNC_MARK)))
        if boot is not None and boot != last_boot:
            atomic_write(boot_file, boot + '\n')
        if os.path.exists(marker):
            os.unlink(marker)
            fsync_dir(data_dir)
        self._scan()
        # The replicas held when this run started after the machine lost
        # power, until each was read whole (ResyncMixin._repair_torn): a
        # block of theirs that fails its CRC is a write the power cut tore
        # (its data or its metadata reached the disk, not both), not rot
        # (see RepairMixin._mend).  Marked durably: a crash before every
        # copy was read has them all read again.
        scan_mark = os.path.join(data_dir, TORN_SCAN_MARK)
        if self.lost_cache and not os.path.exists(scan_mark):
            atomic_write(scan_mark, 'copies to read for torn blocks\n')
        self.torn_by_power_loss = (set(self._known)
                                   if os.path.exists(scan_mark) else set())

    def _identity(self):
        path = os.path.join(self.data_dir, 'server.json')
        try:
            with open(path) as f:
                return json.load(f)['uuid']
        except FileNotFoundError:
            ident = str(uuid.uuid4())
            atomic_write(path, json.dumps({'uuid': ident}) + '\n')
            return ident

    def _scan(self):
        for vol in os.listdir(self.chunks_dir):
            vdir = os.path.join(self.chunks_dir, vol)
            if not os.path.isdir(vdir):
                continue
            self._generations[vol] = read_int(os.path.join(vdir,
                                                            'generation'))
            self._snapseqs[vol] = read_int(os.path.join(vdir, 'snapseq'))
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

    def delete(self, volume, index=None):
        """Delete one replica, or every replica of a volume."""
        keys = [k for k in self._known if k[0] == volume and
                (index is None or k[1] == index)]
        for key in keys:
            self.torn_scanned(*key)
            c = self._known.pop(key)
            self._open.pop(key, None)
            self._usage.pop(key, None)
            self._touched.discard(key)
            files = c.all_files()
            for d in self._dirty.values():
                d.difference_update(files)
            for f in files:
                f.unlink()
            for ext in ('.epoch', '.stale', '.joining', '.unverified'):
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

    def torn_scanned(self, volume, index, dropped=False):
        """The copy of a chunk held after a power cut was read whole and
        its torn blocks repaired; or, ``dropped``, it is no replica now
        (stale, joining, deleted): it is marked to be checked when it is
        brought up to date again.  Once no copy is left to read, the
        mark of the data directory goes."""
        key = (volume, index)
        if key not in self.torn_by_power_loss:
            return
        if dropped:
            self.mark_unverified(volume, index)
        self.torn_by_power_loss.discard(key)
        if not self.torn_by_power_loss:
            path = os.path.join(self.data_dir, TORN_SCAN_MARK)
            if os.path.exists(path):
                os.unlink(path)
                fsync_dir(self.data_dir)

    def lost_cache_told(self):
        """The master knew this server may have lost unsynced writes, and
        the copies it dropped it from are marked (stale, unverified)."""
        self.lost_cache = False
        path = os.path.join(self.data_dir, LOST_CACHE_MARK)
        if os.path.exists(path):
            os.unlink(path)
            fsync_dir(self.data_dir)

    def set_resyncing(self, on):
        """Mark this data directory as holding replicas not compared yet
        with their chunks' others since a crash (see chunkfile), or no
        longer."""
        path = os.path.join(self.data_dir, RESYNC_MARK)
        if on:
            atomic_write(path, 'replicas not compared since a crash\n')
        elif os.path.exists(path):
            os.unlink(path)
            fsync_dir(self.data_dir)

    def close(self, clean=False):
        """Close every file; ``clean``: everything written was synced, the
        next start need not sync it again."""
        for c in self._known.values():
            c.close()
        self._open.clear()
        if clean:
            atomic_write(os.path.join(self.data_dir, CLEAN_MARK), 'clean\n')
