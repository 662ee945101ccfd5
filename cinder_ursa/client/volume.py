"""Async client core: an open volume's reads, writes and flushes.

:class:`~cinder_ursa.client.cluster.Cluster` holds the master client and
one pipelined connection per chunk server.  :class:`Volume` maps byte
ranges to chunk extents, keeps the chunk map cached, sends each extent to
the chunk's primary and retries on the errors that a fresh chunk map can
cure, within ``io_timeout`` (the policy: :mod:`.extents`).

The parts of :class:`Volume`: ``chunkmap`` (the cached chunk map and
replica drops), ``extents`` (one extent's requests and their retries),
``flush`` (flush rounds), ``clone`` (reading through a clone's parent).
"""

import asyncio
import logging
import os
import socket
import time

from cinder_ursa import exception
from cinder_ursa.client import layout as layout_mod
from cinder_ursa.client import qos as qos_mod
from cinder_ursa.client.chunkmap import ChunkMap
from cinder_ursa.client.clone import CloneLayers
from cinder_ursa.client.clone import add_run
from cinder_ursa.client.clone import all_runs
from cinder_ursa.client.extents import ExtentIO
from cinder_ursa.client.flush import FlushRounds
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import tickets
from cinder_ursa.protocol.chunkfile import ABSENT
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ZERO

LOG = logging.getLogger(__name__)


def default_holder():
    return '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                         os.urandom(3).hex())


class Volume(ChunkMap, ExtentIO, FlushRounds, CloneLayers):
    """An open volume or snapshot: byte ranges mapped to chunk extents."""

    def __init__(self, cluster, info, writable, snap=0):
        self.cluster = cluster
        self.info = info
        self.id = info['id']
        self.name = info['name']
        self.size = info['size']
        self.layout = layout_mod.Layout.for_volume(info)
        self.writable = writable
        # Reads see snapshot ``snap`` (0: the current data); writes carry
        # the volume's snapshot sequence.
        self.snap = snap
        self.seq = info.get('snap_seq', 0)
        self._parent_info = info.get('parent')
        self.parent = None
        self.generation = 0
        self.holder = None
        self._map = {}          # index -> rest.ChunkInfo (None: unallocated)
        self._map_at = {}       # index -> when its entry came from the master
        self._map_locks = {}
        # (address, port) -> {index: server id}: what the next flush must
        # make durable; None instead of the dict: the whole volume.
        self._dirty = {}
        self._flushes = set()   # flush rounds running
        # The first flush also covers what earlier holders of the volume
        # wrote and never flushed (they may have died): on every chunk
        # server up when this one opened it ([(address, port)], see
        # _acquire; True: ask the master at the first flush).
        self._inherited = writable
        self._lease_task = None
        self._fenced = None
        self._retrying = set()  # tasks of write_soon() writes retrying
        self._repairs = set()   # tasks of repairs started by reads
        self.closed = False
        self.qos = qos_mod.Limiter(info.get('qos'))
        # Connections to the chunk servers: the cluster's, with the
        # cluster key, or (a client without it) this volume's own, with
        # the ticket the master issued for it (see _use_ticket).
        self.pool = cluster.pool
        self._grant = None
        self._ticket_task = None

    @classmethod
    def for_snapshot(cls, cluster, snap):
        """A read-only view of a snapshot (``snap`` from the master)."""
        info = {'id': snap['volume_id'],
                'name': '%s@%s' % (snap['volume_name'], snap['name']),
                'size': snap['size'], 'chunk_size': snap['chunk_size'],
                'stripe_unit': snap['stripe_unit'],
                'stripe_count': snap['stripe_count'],
                'parent': snap.get('parent'), 'snapshot': snap}
        return cls(cluster, info, False, snap=snap['seq'])

    async def refresh(self):
        """Reload size, snapshot sequence and parent from the master."""
        if self.snap:
            return
        self.adopt(await self.cluster.master.volume(self.id))

    def adopt(self, info):
        """Take size, snapshot sequence and parent from ``info``, the
        master's record of this volume, just fetched."""
        self.info = info
        self.seq = info['snap_seq']
        self.qos.update(info.get('qos'))
        if info['size'] != self.size:
            self.size = info['size']
            self.layout = layout_mod.Layout.for_volume(info)
        if info.get('parent') is None:
            if self._parent_info is not None:
                # Flattened: chunks even a sole writer never allocated
                # may hold what the flatten copied up from the parent.
                for index in [i for i, c in self._map.items() if c is None]:
                    del self._map[index]
            self._parent_info = None
            self.parent = None

    async def _acquire(self, holder, force, ttl):
        self.holder = holder or default_holder()
        # Asked now, while opening needs the master anyway, so that the
        # first flush and the first local read do not: they may come while
        # the masters fail over, and I/O on mapped chunks never waits for
        # a master.
        servers = await self.cluster.master.servers()
        self.cluster.note_servers(servers)
        self._inherited = self._servers_up(servers)
        lease = await self.cluster.master.acquire_lease(
            self.id, self.holder, force, ttl)
        self.generation = lease['generation']
        if self.cluster.tickets:
            await self._use_ticket(lease.get('ticket'))
        self._lease_task = asyncio.get_running_loop().create_task(
            self._renew(lease['ttl']))
        LOG.debug('Volume %s opened for writing, generation %d', self.name,
                  self.generation)

    async def _renew(self, ttl):
        while True:
            await asyncio.sleep(ttl / 3.0)
            try:
                lease = await self.cluster.master.renew_lease(
                    self.id, self.holder, self.generation, ttl)
                self.qos.update(lease.get('qos'))
                if self.cluster.tickets:
                    await self._use_ticket(lease.get('ticket'))
            except (exception.Fenced, exception.Forbidden) as e:
                # Forbidden: the volume was detached from this host (a
                # multiattach volume's shared lease outlives the detach,
                # its ticket a while longer): no more writes either.
                LOG.error('Volume %s: %s', self.name, e)
                self._fenced = e
                return
            except exception.UrsaError as e:
                LOG.warning('Volume %s: renewing the lease failed: %s',
                            self.name, e)

    async def _use_ticket(self, reply):
        """Reach the chunk servers with the ticket in ``reply`` (the
        master's, with a lease or on its own): the first opens this
        volume's connections, a renewed one is presented on those open
        (TICKET) and used by new ones."""
        if not reply:
            raise exception.NotAuthorized(
                reason='the master issued no ticket for volume %s: upgrade '
                       'it, or give this client the cluster key' % self.name)
        grant = tickets.grant_from(reply, self.cluster.principal_key)
        parent = self._parent_info
        if self._grant is not None and parent is not None and \
                parent['volume_id'] not in grant.ticket.readable:
            # Flattened while open (detach-parent): the new ticket reads
            # the parent no more, and the blocks the flatten left absent
            # read as zeros, which the volume learns from the master
            # before its connections take the ticket.
            await self.refresh()
        if self._grant is None:
            self.pool = self.cluster.ticket_pool(grant)
        else:
            await self.pool.regrant(grant)
        self._grant = grant

    async def _read_ticket(self, copy_up=False):
        """A volume open read-only (no lease to bring tickets): a read
        ticket now (``copy_up``: one that may also copy blocks up from
        the parents, a flatten's), renewed at half its life until the
        volume is closed."""
        await self._use_ticket(await self.cluster.master.ticket(
            self.id, copy_up))
        if self._ticket_task is not None:
            self._ticket_task.cancel()
        self._ticket_task = asyncio.get_running_loop().create_task(
            self._renew_ticket(copy_up))

    async def _renew_ticket(self, copy_up):
        while True:
            left = self._grant.ticket.expires - time.time()
            await asyncio.sleep(max(left / 2, 1.0))
            try:
                await self._use_ticket(await self.cluster.master.ticket(
                    self.id, copy_up))
            except exception.UrsaError as e:
                LOG.warning('Volume %s: renewing its read ticket failed '
                            '(%s); retrying', self.name, e)
                await asyncio.sleep(min(5.0, max(left / 4, 0.5)))

    def _check_open(self, write):
        if self.closed:
            raise exception.InvalidArgument(reason='volume %s is closed'
                                            % self.name)
        if write and not self.writable:
            raise exception.InvalidArgument(
                reason='volume %s is open read-only' % self.name)
        if write and self._fenced is not None:
            raise self._fenced

    async def read(self, offset, length):
        self._check_open(False)
        if self.qos:
            await self.qos.acquire('read', length)
        extents = self.layout.extents(offset, length)
        layered = self._parent_info is not None
        if len(extents) == 1 and not layered:
            e = extents[0]
            return bytes(await self._read_extent(e.index, e.chunk_offset,
                                                 e.length))
        buf = bytearray(length)
        if layered:
            parts = await asyncio.gather(*(
                self._read_layered(e, offset + e.buf_offset)
                for e in extents))
        else:
            parts = await asyncio.gather(*(
                self._read_extent(e.index, e.chunk_offset, e.length)
                for e in extents))
        for e, data in zip(extents, parts, strict=False):
            buf[e.buf_offset:e.buf_offset + e.length] = data
        return bytes(buf)

    def _local_reads(self):
        """Whether replicas on this host may be read directly: only by the
        volume's exclusive writer (every replica of its map then holds all
        it wrote), and not through a clone's or a snapshot's layers."""
        return (self.cluster.local is not None and self.writable
                and not self.snap and self._parent_info is None
                and not self.info.get('multiattach') and self._fenced is None
                and not self.closed)

    async def block_status(self, offset, length):
        """[(length, state)] covering the range, state DATA or ZERO (a
        hole: reads zeros and uses no space), merged into runs."""
        self._check_open(False)
        out = []
        for e in self.layout.extents(offset, length):
            states = await self._read_extent(
                e.index, e.chunk_offset, e.length, codec.FLAG_MAP_ONLY)
            for start, end, st in all_runs(states, e.chunk_offset,
                                            e.length):
                if st == ABSENT and self._parent_info is not None:
                    parent = await self._parent_volume()
                    pos = offset + e.buf_offset + start - e.chunk_offset
                    if pos < parent.size:
                        n = min(end - start, parent.size - pos)
                        for ln, pst in await parent.block_status(pos, n):
                            add_run(out, ln, pst)
                        if n < end - start:
                            add_run(out, end - start - n, ZERO)
                        continue
                add_run(out, end - start, DATA if st == DATA else ZERO)
        return out

    async def write(self, offset, data, fua=False):
        self._check_open(True)
        if self.qos:
            await self.qos.acquire('write', len(data))
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast('B')
        extents = self.layout.extents(offset, len(mv))
        if self._parent_info is not None:
            await self._copy_up_edges(offset, len(mv))
        if len(extents) == 1:
            e = extents[0]
            await self._write_extent(e.index, e.chunk_offset, mv, fua)
            return
        await asyncio.gather(*(
            self._write_extent(e.index, e.chunk_offset,
                               mv[e.buf_offset:e.buf_offset + e.length], fua)
            for e in extents))

    async def write_zeroes(self, offset, length, fua=False):
        """Zero a range; whole blocks are deallocated (TRIM/discard and
        WRITE_ZEROES both land here)."""
        self._check_open(True)
        if length == 0:
            return
        if self.qos:
            await self.qos.acquire('write', 0)
        layered = self._parent_info is not None
        if layered:
            await self._copy_up_edges(offset, length)
        jobs = []
        for e in self.layout.extents(offset, length):
            if not layered and await self._chunk(e.index, False) is None:
                continue  # never written: already zeros
            jobs.append(self._write_extent(e.index, e.chunk_offset, None,
                                           fua, codec.FLAG_ZERO, e.length))
        await asyncio.gather(*jobs)

    async def close(self):
        if self.closed:
            return
        try:
            if self.writable and self._fenced is None:
                await self.flush()
        finally:
            self.closed = True
            if self._ticket_task is not None:
                self._ticket_task.cancel()
            if self._grant is not None:
                self.pool.close()
            if self._lease_task is not None:
                self._lease_task.cancel()
                try:
                    await self.cluster.master.release_lease(
                        self.id, self.holder, self.generation)
                except exception.UrsaError as e:
                    LOG.warning('Volume %s: releasing the lease failed: %s',
                                self.name, e)
