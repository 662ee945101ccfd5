"""A volume's cached chunk map: loading it from the master in windows,
forgetting an entry a chunk server called outdated, and reporting a
replica that failed (the master drops it, epoch + 1) or could not flush."""

import asyncio
import logging
import time

from cinder_ursa import exception
from cinder_ursa.protocol import rest

LOG = logging.getLogger(__name__)

MAP_WINDOW = 256


class ChunkMap:
    """Part of :class:`~cinder_ursa.client.volume.Volume`."""

    async def _chunk(self, index, allocate):
        if index in self._map:
            info = self._map[index]
            if info is not None or not allocate:
                return info
        lock = self._map_locks.setdefault(index, asyncio.Lock())
        async with lock:
            if index in self._map:
                info = self._map[index]
                if info is not None or not allocate:
                    return info
            # The lease a window of the map is asked under (None: not
            # held): one asked before it was taken (on-write, a handover)
            # may miss chunks the previous holder allocated since.  (An
            # allocation's reply has its chunk.)  A multiattach volume's
            # writer is never the only one: the writers of other hosts
            # allocate chunks whenever they write.
            under = None
            if allocate:
                start, count = index, 1
            else:
                start = index - index % MAP_WINDOW
                count = min(MAP_WINDOW, self.layout.chunks - start)
                if self._held and not self.info.get('multiattach'):
                    under = self.generation
            reply = await self.cluster.master.chunk_map(
                self.id, start, count, allocate)
            if 'slow_servers' in reply:
                self.cluster.note_slow(reply['slow_servers'])
            found = {c['index']: rest.ChunkInfo.from_json(c)
                     for c in reply['chunks']}
            now = time.monotonic()
            for i in range(start, start + count):
                if i in found:
                    self._map[i] = found[i]
                    self._map_at[i] = now
                elif (under is not None and self._held and
                      self.generation == under and i not in self._map):
                    # We are the only writer (we held the lease when the
                    # map was asked, and still do): absence stays true
                    # until we allocate it ourselves.
                    self._map[i] = None
            return found.get(index)

    def _forget(self, index):
        self._map.pop(index, None)

    async def _write_map(self, index):
        """Chunk ``index``'s map entry for a write (allocated).  One whose
        primary did not answer this client since the entry was fetched
        is fetched again first: the master may have dropped that server
        meanwhile (marked down), and a write sent to it would wait for
        its timeout again."""
        info = await self._chunk(index, True)
        since = self.cluster.suspected_at(info.replicas[0][0]) \
            if info.replicas else None
        if since is not None and self._map_at.get(index, 0) < since:
            self._forget(index)
            info = await self._chunk(index, True)
        return info

    async def allocated_chunks(self):
        """The indexes of the chunks the master has allocated (their map
        entries cached), in a master call per MAP_WINDOW chunks: a scan
        of a sparse volume asks nothing of the chunks never written."""
        out = []
        for start in range(0, self.layout.chunks, MAP_WINDOW):
            count = min(MAP_WINDOW, self.layout.chunks - start)
            reply = await self.cluster.master.chunk_map(self.id, start,
                                                        count, False)
            now = time.monotonic()
            for c in reply['chunks']:
                info = rest.ChunkInfo.from_json(c)
                self._map[c['index']] = info
                self._map_at[c['index']] = now
                out.append(c['index'])
        return sorted(out)

    async def prefetch_map(self, offset=0, length=None):
        """Load the chunk map of a range in a few master calls."""
        length = self.size - offset if length is None else length
        for e in self.layout.extents(offset, length)[::MAP_WINDOW]:
            await self._chunk(e.index, False)

    async def _report_failed(self, index, server_id, epoch):
        try:
            await self.cluster.master.drop_replica(self.id, index, server_id,
                                                   epoch)
        except exception.UrsaError as e:
            LOG.warning('Could not report server %d of chunk %d: %s',
                        server_id, index, e)
        self._forget(index)

    async def _drop_failed(self, index, sid):
        """Drop server ``sid``, which could not flush, from chunk
        ``index``'s replica set at the master's current epoch (the cached
        one may be old: the master ignores a drop at an old epoch).
        Returns the chunk as the master has it then (None: no such chunk),
        or raises when the server is still a replica (the last one: the
        master never drops that)."""
        for _ in range(5):
            reply = await self.cluster.master.chunk_map(self.id, index, 1)
            if not reply['chunks']:
                return None
            chunk = reply['chunks'][0]
            chunk['min_replicas'] = reply['volume']['min_replicas']
            if sid not in [r['id'] for r in chunk['replicas']]:
                return chunk
            chunk = await self.cluster.master.drop_replica(
                self.id, index, sid, chunk['epoch'])
            if sid not in [r['id'] for r in chunk['replicas']]:
                return chunk
            if len(chunk['replicas']) == 1:
                raise exception.InsufficientReplicas(
                    have=0, need=chunk['min_replicas'],
                    reason='the only replica of chunk %d of volume %s '
                           'could not flush' % (index, self.name))
        raise exception.Unavailable(
            reason='server %d stays in the replica set of chunk %d of volume '
                   '%s, which keeps changing; flush again' % (
                       sid, index, self.name))

    async def _chunks_on(self, addr):
        """{index: server id} of the chunks with a replica at ``addr``,
        from the whole chunk map."""
        self._map.clear()
        await self.prefetch_map()
        return {index: r[0] for index, info in self._map.items()
                if info is not None for r in info.replicas
                if (r[1], r[2]) == addr}
