"""Async client core: an open volume's reads, writes and flushes.

:class:`~cinder_ursa.client.cluster.Cluster` holds the master client and
one pipelined connection per chunk server.  :class:`Volume` maps byte
ranges to chunk extents, keeps the chunk map cached, sends each extent to
the chunk's primary and retries on the errors that a fresh chunk map can
cure, within ``io_timeout`` (the policy: :mod:`.extents`).

The parts of :class:`Volume`: ``chunkmap`` (the cached chunk map and
replica drops), ``extents`` (one extent's requests and their retries),
``flush`` (flush rounds), ``clone`` (reading through a clone's parent).

The write lease: a volume opened for writing takes it at once (``lease=
'eager'``, the default), or at its first write (``'on-write'``: a live
migration's destination, which reads while the source still writes).
Such a first write asks for the lease as a handover: the master asks the
holder's host to release it (its ursa-attach calls :meth:`Volume.hand_over`)
and answers HandoverPending meanwhile, which is retried every 20 to
200 ms; past ``[ursa_master] lease_handover_timeout`` the master takes the
lease by force (the holder is fenced).  Concurrent first writes share one
acquisition.  :meth:`Volume.hand_over` gives the lease back (flushed) and
returns the volume to that state: a later write asks for it again, as
with RBD's exclusive lock.
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
from cinder_ursa.protocol.chunkfile import UNCHANGED
from cinder_ursa.protocol.chunkfile import ZERO

LOG = logging.getLogger(__name__)


# The lease modes of a volume opened for writing (see the module's doc).
LEASE_MODES = ('eager', 'on-write')
# Seconds between two asks for a lease being handed over: the first
# soon (the holder's agent may have released it already), then backing
# off to the most.
HANDOVER_RETRY_FIRST = 0.02
HANDOVER_RETRY_MAX = 0.2
# Seconds a first write waits for a handover past the forced takeover
# the master announced (HandoverPending's retry_after).
HANDOVER_MARGIN = 5.0


def default_holder():
    return '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                         os.urandom(3).hex())


class Volume(ChunkMap, ExtentIO, FlushRounds, CloneLayers):
    """An open volume or snapshot: byte ranges mapped to chunk extents."""

    def __init__(self, cluster, info, writable, snap=0, lease='eager'):
        if lease not in LEASE_MODES:
            raise exception.InvalidArgument(
                reason='lease must be one of %s, not %r' % (
                    ', '.join(LEASE_MODES), lease))
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
        self._inherited = writable and lease == 'eager'
        self._lease_task = None
        self._fenced = None
        # Multiattach: the renewal a write refused as fenced asked for
        # (one for every writer refused meanwhile; see _readmit), and
        # the lock that keeps renewals one at a time (an older answer's
        # ticket must not replace a newer one's).
        self._readmission = None
        self._renewing = asyncio.Lock()
        # The write lease: taken at open (eager) or at the first write
        # (on-write; again after a hand_over).  _held: this client holds
        # it now, and writes may go out under its generation.
        self.lease_mode = lease if writable else None
        self._held = False
        self._lease_ttl = None
        self._acquiring = None  # the task taking it for the first writes
        self._handover = None   # the task of a hand_over running
        # Writes admitted under the lease and not answered yet: a
        # hand_over waits for them.
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False   # close() has begun
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
        """Take the write lease at open (eager)."""
        self.holder = holder or default_holder()
        self._lease_ttl = ttl
        await self._take_lease(force=force)
        LOG.debug('Volume %s opened for writing, generation %d', self.name,
                  self.generation)

    def _prepare_on_write(self, holder, ttl):
        """Open for writing without the lease (on-write): the first write
        takes it (see the module's doc)."""
        self.holder = holder or default_holder()
        self._lease_ttl = ttl

    async def _take_lease(self, force=False, handover=False):
        """Ask the master for the lease (one request: HandoverPending and
        LeaseHeld go to the caller), then write under it."""
        # Asked now, while opening needs the master anyway, so that the
        # first flush and the first local read do not: they may come while
        # the masters fail over, and I/O on mapped chunks never waits for
        # a master.
        servers = await self.cluster.master.servers()
        self.cluster.note_servers(servers)
        lease = await self.cluster.master.acquire_lease(
            self.id, self.holder, force, self._lease_ttl, handover)
        try:
            if self.cluster.tickets:
                if self._ticket_task is not None:
                    # A read ticket's renewals would replace the lease's.
                    self._ticket_task.cancel()
                    self._ticket_task = None
                await self._use_ticket(lease.get('ticket'))
        except BaseException:
            await self._give_back(lease['generation'])
            raise
        self.generation = lease['generation']
        # The first flush also covers what the earlier holders wrote and
        # never flushed, on the servers up now.
        self._inherited = self._servers_up(servers)
        # Another writer may have allocated chunks cached as holes.
        self._forget_holes()
        self._held = True
        self._lease_ttl_granted = lease['ttl']
        self._lease_task = asyncio.get_running_loop().create_task(
            self._renew(lease['ttl']))

    async def _give_back(self, generation):
        """Release a lease this client will not write under (best
        effort: else it expires, or is taken over)."""
        try:
            await self.cluster.master.release_lease(self.id, self.holder,
                                                    generation)
        except exception.UrsaError as e:
            LOG.warning('Volume %s: releasing lease generation %d failed: '
                        '%s', self.name, generation, e)

    def _forget_holes(self):
        """Forget the chunks cached as never written: that stays true
        only while this client is the volume's only writer."""
        for index in [i for i, c in self._map.items() if c is None]:
            del self._map[index]

    async def _admit(self):
        """Let a write go out under the lease: it waits for a hand_over
        that is running, and takes the lease first when the volume is
        opened on-write without it.  The caller calls _write_done."""
        while True:
            self._check_open(True)
            if self._handover is not None:
                # Its outcome is the hand_over's caller's to see.
                await asyncio.wait([self._handover])
                continue
            if self._held:
                self._inflight += 1
                self._idle.clear()
                return
            if self._acquiring is None:
                self._acquiring = asyncio.ensure_future(
                    self._acquire_on_write())
                self._acquiring.add_done_callback(self._acquired)
            # Shielded: one writer giving up (cancelled) stops nobody's.
            await asyncio.shield(self._acquiring)

    def _check_closing(self):
        self._check_open(True)
        if self._closing:
            raise exception.InvalidArgument(reason='volume %s is being '
                                            'closed' % self.name)

    def _acquired(self, task):
        self._acquiring = None
        if not task.cancelled():
            task.exception()    # the writers waiting saw it

    def _write_done(self):
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    async def _acquire_on_write(self):
        """Take the lease for the first write: as a handover from the
        holder on another host (a live migration's source), retried
        while it is pending; fails after the cluster's io_timeout, or
        the master's forced-takeover deadline and HANDOVER_MARGIN if
        that is later."""
        start = time.monotonic()
        deadline = start + self.cluster.io_timeout
        delay = HANDOVER_RETRY_FIRST
        pending = 0
        while True:
            self._check_closing()
            try:
                await self._take_lease(handover=True)
                break
            except exception.HandoverPending as e:
                if not pending:
                    LOG.info('%s', e)
                pending += 1
                last = e
                left = getattr(e, 'retry_after', None)
                if pending == 1 and left is not None:
                    # When the master takes it by force, as it first
                    # said (a later answer does not move the deadline:
                    # a master that never takes it fails the write).
                    deadline = max(deadline, time.monotonic() + left +
                                   HANDOVER_MARGIN)
            except (exception.UrsaConnectionError, exception.Unavailable,
                    exception.NotLeader) as e:
                last = e        # no master answered: its failover
            if time.monotonic() >= deadline:
                raise exception.Unavailable(
                    reason='volume %s: no write lease after %.1f s of '
                           'trying (%s); writes fail until it is handed '
                           'over: check the holder\'s host and its '
                           'ursa-attach, or have its lease revoked'
                           % (self.name, time.monotonic() - start, last))
            await asyncio.sleep(delay)
            delay = min(delay * 2, HANDOVER_RETRY_MAX)
        if self._closing:
            # Closed while it was being taken: given back at once.
            self._held = False
            self._lease_task.cancel()
            self._lease_task = None
            await self._give_back(self.generation)
            self._check_closing()
        LOG.info('Volume %s: lease generation %d taken at the first write '
                 '(%.3f s%s)', self.name, self.generation,
                 time.monotonic() - start,
                 ', after %d handover request(s)' % pending
                 if pending else '')

    async def hand_over(self):
        """Give the write lease back to the master for a live
        migration's destination, which asked for it: stop admitting
        writes (new ones wait), wait for those in flight, flush (every
        replica durable), release the lease (its history says to whom),
        stop renewing it, read with a read ticket again where tickets
        are used.  The volume is then in the on-write state: a later
        write asks for the lease again.  Returns True once handed over;
        False if there was nothing to hand over (not holding the lease,
        closed or fenced).  A failed flush raises, and the volume keeps
        its lease (the master takes it by force after lease_handover_
        timeout unless a later try succeeds).  Calls made while one
        runs wait for it."""
        if self._handover is None:
            if not (self.writable and self._held) or self.closed or \
                    self._fenced is not None:
                return False
            self._handover = asyncio.ensure_future(self._hand_over())
            self._handover.add_done_callback(self._handed_over)
        return await asyncio.shield(self._handover)

    def _handed_over(self, task):
        self._handover = None
        if not task.cancelled():
            task.exception()    # the callers saw it

    async def _hand_over(self):
        start = time.monotonic()
        generation = self.generation
        LOG.info('Volume %s: handing lease generation %d over: %d write(s) '
                 'in flight, new ones wait', self.name, generation,
                 self._inflight)
        await self._idle.wait()
        try:
            await self._flush()
        except exception.UrsaError as e:
            LOG.error('Volume %s: the flush before handing the lease over '
                      'failed (%s): the lease is kept, and writes go on; '
                      'the master takes it by force after its '
                      'lease_handover_timeout unless a later try succeeds',
                      self.name, e)
            raise
        if self._fenced is not None or self.closed:
            return False        # gone meanwhile: nothing left to give
        self._held = False
        self.lease_mode = 'on-write'
        if self._lease_task is not None:
            self._lease_task.cancel()
            self._lease_task = None
        self._forget_holes()
        await self._give_back(generation)
        if self.cluster.tickets and not self.closed:
            try:
                await self._read_ticket()
            except exception.UrsaError as e:
                LOG.warning('Volume %s: no read ticket after the handover '
                            '(%s); retrying', self.name, e)
                self._ticket_task = asyncio.get_running_loop().create_task(
                    self._retry_read_ticket())
        LOG.info('Volume %s: lease generation %d handed over in %.3f s',
                 self.name, generation, time.monotonic() - start)
        return True

    async def _retry_read_ticket(self):
        """The read ticket a hand_over could not get, asked every second
        as ``_ticket_task`` (so taking the lease again, or closing,
        cancels it: a late answer must not replace the lease's ticket,
        nor start renewals of a closed volume's), then renewed."""
        while True:
            await asyncio.sleep(1.0)
            if self.closed or self._held:
                return
            try:
                reply = await self.cluster.master.ticket(self.id, False)
                if self.closed or self._held:
                    return
                await self._use_ticket(reply)
            except exception.UrsaError as e:
                LOG.warning('Volume %s: no read ticket yet (%s); retrying',
                            self.name, e)
                continue
            if self.closed or self._held:
                return
            self._ticket_task = asyncio.get_running_loop().create_task(
                self._renew_ticket(False))
            return

    async def _renew(self, ttl):
        while True:
            await asyncio.sleep(ttl / 3.0)
            try:
                await self._renew_once(ttl)
            except (exception.Fenced, exception.Forbidden):
                return
            except exception.UrsaError as e:
                LOG.warning('Volume %s: renewing the lease failed: %s',
                            self.name, e)

    async def _renew_once(self, ttl, unless_past=None):
        """Renew the lease once (one renewal at a time): QoS limits and
        the ticket come with it, and, on a multiattach volume, a newer
        generation the master re-admitted this writer at (another host's
        writers of the volume were fenced or detached).  Fenced or
        Forbidden (the volume was detached from this host) fence the
        volume for good, and are raised.  With ``unless_past``, nothing
        is asked if the generation went past it meanwhile."""
        async with self._renewing:
            if unless_past is not None and self.generation > unless_past:
                return
            if not self._held:
                return
            try:
                lease = await self.cluster.master.renew_lease(
                    self.id, self.holder, self.generation, ttl)
            except (exception.Fenced, exception.Forbidden) as e:
                LOG.error('Volume %s: %s', self.name, e)
                self._fenced = e
                raise
            if not self._held:
                return      # handed over or closed meanwhile
            self.qos.update(lease.get('qos'))
            if self.cluster.tickets:
                # Before the generation changes: a write of the new one
                # goes out on connections that took its ticket.
                await self._use_ticket(lease.get('ticket'))
            generation = lease['generation']
            if generation > self.generation and self.info.get(
                    'multiattach'):
                LOG.warning('Volume %s: re-admitted at lease generation '
                            '%d (generation %d ended: another host\'s '
                            'writers of it were fenced or detached); '
                            'writes go on under the new one', self.name,
                            generation, self.generation)
                self.generation = generation

    def _may_readmit(self, err):
        """Whether a chunk server's refusal ``err`` may mean that this
        writer was re-admitted at a newer generation: the volume is
        multiattach and written under the lease, and ``err`` is Fenced
        (or, on a ticket connection, NotAuthorized: the ticket of a
        generation is revoked with it)."""
        return bool(self.writable and self._held and self._fenced is None
                    and self.info.get('multiattach') and (
                        isinstance(err, exception.Fenced) or
                        isinstance(err, exception.NotAuthorized) and
                        self._grant is not None))

    async def _readmit(self, generation, err, deadline):
        """A chunk server refused a request sent under lease
        ``generation`` with ``err`` (see :meth:`_may_readmit`): ask the
        master at once (a renewal, one for every request refused
        meanwhile) whether this writer was re-admitted at a newer
        generation.  Returns once it was: the request is sent again,
        under :attr:`generation` (a block write at an offset, a zeroing
        or a copy-up of absent blocks: sent again, it leaves what it
        left the first time, whether the refused one was applied or
        not).  Raises the master's Fenced (or Forbidden) if it was not
        (the volume is fenced for good: every later write fails),
        ``err`` if the master says ``generation`` is current (nothing a
        renewal cures), or if the master did not answer by ``deadline``
        (the request's io_timeout)."""
        attempt = 0
        while True:
            if self._fenced is not None:
                raise self._fenced
            if self.generation > generation:
                return
            if self._readmission is None or self._readmission[1].done():
                task = asyncio.ensure_future(self._renew_once(
                    self._lease_ttl_granted, unless_past=generation))
                self._readmission = (generation, task)
                task.add_done_callback(self._readmission_done)
            asked, task = self._readmission
            left = deadline - time.monotonic()
            if left > 0:
                # (asyncio.wait: a request given up, cancelled, leaves
                # the renewal to the others.)
                await asyncio.wait([task], timeout=left)
            if not task.done() or task.cancelled():
                raise err
            failure = task.exception()
            if self._fenced is not None:
                raise self._fenced
            if failure is None:
                if self.generation > generation:
                    # (One line per request: the re-admission's own
                    # is a warning.)
                    LOG.debug('Volume %s: a request refused under lease '
                              'generation %d is sent again under %d',
                              self.name, generation, self.generation)
                    return
                if asked < generation:
                    continue    # a renewal for an older one: ask again
                raise err
            if not isinstance(failure, (exception.UrsaConnectionError,
                                        exception.Unavailable,
                                        exception.NotLeader)):
                raise failure
            # No master answered (a failover): asked again until the
            # request's time is up.
            attempt += 1
            await self._retry_wait(deadline, attempt, err)

    def _readmission_done(self, task):
        if self._readmission is not None and self._readmission[1] is task:
            self._readmission = None
        if not task.cancelled():
            task.exception()    # the requests waiting saw it

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
        return (self.cluster.local is not None and self._held
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
                        for ln, pst in await self._through_parent(
                                parent.block_status, pos, n):
                            add_run(out, ln, pst)
                        if n < end - start:
                            add_run(out, end - start - n, ZERO)
                        continue
                add_run(out, end - start, DATA if st == DATA else ZERO)
        return out

    async def changed_runs(self, since, offset, length):
        """[(length, changed)] covering the range, merged into runs:
        whether the blocks as this view sees them were written after the
        snapshot of sequence ``since`` (the chunk servers' READ with
        FLAG_SINCE; :func:`.diff.since_of` checks the pair).  Never
        written chunks are unchanged; a run's ends are the range's or
        4 KiB block boundaries."""
        self._check_open(False)
        out = []
        for e in self.layout.extents(offset, length):
            states = await self._read_extent(
                e.index, e.chunk_offset, e.length, codec.FLAG_MAP_ONLY,
                since)
            for start, end, st in all_runs(states, e.chunk_offset,
                                            e.length):
                add_run(out, end - start, st != UNCHANGED)
        return out

    async def write(self, offset, data, fua=False):
        self._check_open(True)
        if self.qos:
            await self.qos.acquire('write', len(data))
        await self._admit()
        try:
            await self._write(offset, data, fua)
        finally:
            self._write_done()

    async def _write(self, offset, data, fua):
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
        await self._admit()
        try:
            await self._write_zeroes(offset, length, fua)
        finally:
            self._write_done()

    async def _write_zeroes(self, offset, length, fua):
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

    async def flush(self):
        """Make every acknowledged write durable (FlushRounds._flush),
        once a hand_over running is done (it flushed them all).  A
        volume without its lease (on-write) has written nothing
        unflushed: the flush takes no lease (it would take it from a
        live migration's source for nothing)."""
        self._check_open(False)
        while self._handover is not None:
            await asyncio.wait([self._handover])
        await self._flush()

    async def close(self):
        if self.closed:
            return
        self._closing = True
        for task in (self._handover, self._acquiring):
            if task is not None:
                # A handover ends flushed; an acquisition at its next
                # try (it sees the volume closed, and gives back a
                # lease it got meanwhile).
                await asyncio.wait([task])
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
                self._held = False
                try:
                    await self.cluster.master.release_lease(
                        self.id, self.holder, self.generation)
                except exception.UrsaError as e:
                    LOG.warning('Volume %s: releasing the lease failed: %s',
                                self.name, e)
