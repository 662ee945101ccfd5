"""What a server holds: one replica's fingerprint for ``ursa volume
check``, the list of replicas for ``ursa cluster check``, and the space
used per volume for the heartbeat."""

import collections
import os
import struct

from cinder_ursa import exception
from cinder_ursa.chunkserver.store.mending import torn_blocks
from cinder_ursa.common import checksum
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ENTRY


class Inventory:
    """Part of :class:`~cinder_ursa.chunkserver.store.ChunkStore`."""

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
            # Trailing "not in this layer" entries are no content: two
            # replicas with the same blocks in a layer agree, whatever
            # the length of its metadata file.
            used = -(-len(raw.rstrip(b'\0')) // ENTRY) * ENTRY
            if not used:
                continue        # an empty layer is no layer
            digest = checksum.crc(struct.pack('!QI', k, digest) + raw[:used])
        if deep:
            return c.epoch, self._allocated(c), digest, crcs, torn
        return c.epoch, self._allocated(c), digest, crcs

    def entry_tables(self, c, first, count):
        """The metadata entries of blocks ``first .. first+count-1`` of the
        head and of every layer of ``c``, as stored: [(0 for the head or
        the layer's sequence, entry bytes)], each without its trailing
        all-zero entries (absent blocks; "not in this layer"), and layers
        with no entry left out."""
        self._check_range(first * BLOCK, count * BLOCK)
        if c is None or not count:
            return []
        self._opened(c)
        out = []
        for layer, files in [(0, c.head)] + [(n, c.layer(n))
                                             for n in c.layer_ids()]:
            raw = os.pread(files.meta_fd, ENTRY * count, ENTRY * first)
            used = -(-len(raw.rstrip(b'\0')) // ENTRY) * ENTRY
            if used:
                out.append((layer, raw[:used]))
        return out

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
