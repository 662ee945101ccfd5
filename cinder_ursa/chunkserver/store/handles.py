"""Finding a replica and keeping its files open: the replicas known on
this server, and a bounded set of open ones (least recently used first
closed, never one with writes not yet synced)."""

import os

from cinder_ursa.chunkserver.store.files import Chunk
from cinder_ursa.chunkserver.store.files import read_int

OPEN_CHUNKS = 256


class ChunkHandles:
    """Part of :class:`~cinder_ursa.chunkserver.store.ChunkStore`."""

    def chunk_list(self):
        """[(volume, index, epoch)] of every replica held, stale or not."""
        return [(c.volume, c.index, c.epoch) for c in self._known.values()]

    def counts(self):
        """(copies held, joining ones, stale ones): for the metrics."""
        joining = stale = 0
        for c in self._known.values():
            joining += bool(c.joining)
            stale += bool(c.stale)
        return len(self._known), joining, stale

    def volume_chunks(self, volume):
        return [c for (v, _), c in self._known.items() if v == volume]

    def held(self, volume, index):
        """The copy of a chunk held here, whatever its state (None: no
        copy is)."""
        return self._chunk(volume, index)

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
            c = Chunk(volume, index, base, read_int(base + '.epoch'),
                      os.path.exists(base + '.stale'),
                      joining=os.path.exists(base + '.joining'))
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
