"""A chunk server's control side: registration with the master and the
heartbeat (membership), the control requests (FLUSH, FENCE, DELETE,
CHUNK_INFO, ENTRIES, INVENTORY, SNAPSHOT, REVERT), and syncs: what a FLUSH
or a FUA write waits for."""

import asyncio
import logging
import time

from cinder_ursa import exception
from cinder_ursa.chunkserver import metrics
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control

LOG = logging.getLogger(__name__)

# s a copy may be joining before the master is asked whether it counts on
# it: longer than a primary's request to record the join takes but for a
# master failover.  Asked too soon, the master has not recorded it yet:
# the copy is marked stale and refuses the primary's next ENTRIES and
# pushes, so the copy fails and is tried again (time lost; a stale copy
# is never promoted); asked late, a copy given up whose target was not
# told stays a copy nobody counts on, neither stale nor a replica, that
# long.
JOINING_SWEEP = 30.0
# s between two sweeps: a copy is looked at within this of its coming of
# age (a sweep walks the chunks held here, asking the master nothing
# about the others).
SWEEP_EVERY = 30.0
# How long a FENCE waits for the writes of older generations this primary
# forwarded: below the master's time for a FENCE (5 s, master/service.py
# _broadcast), so a FENCE not confirmed is reported there as such.
FENCE_WAIT = 4.0


# Commands only a master sends, taken only on a connection that claimed a
# master term (TERM; see server._judge_term): they delete replicas,
# change a volume's snapshot sequence, revert its data, or make a copy a
# replica.  (SNAPSHOT with FLAG_DRY_RUN only counts, and stays open to
# ``ursa cluster check``.)  The other requests stay open to every holder
# of the cluster key: clients send READ, WRITE, FLUSH, CHUNK_INFO and
# REPAIR; chunk servers send REPLICATE, ENTRIES, REPAIR, FLUSH and RESYNC
# to one another; FENCE only ever adopts the generation the master
# confirms (authority.confirm_generation).
MASTER_ONLY = frozenset((codec.DELETE, codec.SNAPSHOT, codec.REVERT,
                         codec.REBUILD))


def master_only(frame):
    """The error refusing a master's command on a connection that claimed
    no master term."""
    name = codec.OPCODE_NAMES.get(frame.opcode, frame.opcode)
    return exception.NotAuthorized(
        reason='%s is a master\'s command: it is taken only on a '
               'connection that claimed a master term (TERM)' % name)


# Replicas a registration lists as [volume, index, epoch] (some 50 bytes
# each, within the 4 MiB every master reads); more are sent grouped by
# volume, as "held" (some 10 bytes each, read by masters of this release
# on, up to their registration_max_body).
LIST_MAX = 50000


def held_fields(chunks):
    """The registration's fields listing ``chunks`` [(volume, index,
    epoch)]: ``chunks`` as a list while small, else ``held``."""
    if len(chunks) <= LIST_MAX:
        return {'chunks': chunks}
    held = {}
    for vol, idx, epoch in chunks:
        held.setdefault(vol, []).extend((idx, epoch))
    return {'held': held}


class ControlMixin:
    """Membership, control requests and syncs of :class:`ChunkServer`
    (which provides ``store``, ``master``, ``authority``, ``disk``,
    ``_loop``, ``_syncs``, ``_registered``, ``_wake``, ``_disk_error``,
    ``_sync_latency``, ``latency``, ``_answered`` and ``_reply_error``)."""

    _joining_swept = float('-inf')   # when joining copies were checked
    _sweeping = False

    async def _register(self):
        if self.disk.failure is not None:
            # Its data directory failed: the master is told so, and the
            # disk is read and written no more.
            reply = await self.master.register_server(
                uuid=self.store.server_uuid, host=self.host, rack=self.rack,
                address=self.advertise_host, port=self.port,
                failure=self.disk.failure, capacity=0, used=0, free=0)
            self.id = reply['server']['id']
            self._heartbeat_interval = reply.get('heartbeat_interval', 5.0)
            LOG.error('Registered with the master as chunk server %d, with '
                      'its data directory failed', self.id)
            self._registered.set()
            return reply
        usage = self.store.usage()
        lost_cache = self.store.lost_cache
        chunks = self.store.chunk_list()
        reply = await self.master.register_server(
            uuid=self.store.server_uuid, host=self.host, rack=self.rack,
            address=self.advertise_host, port=self.port,
            lost_cache=lost_cache, **held_fields(chunks), **usage)
        if len(chunks) > LIST_MAX and reply.get('reported') != len(chunks):
            # A master older than the compact form read none of them:
            # nothing would be known stale.  Not registered.
            raise exception.UrsaError(
                'the master read %s of the %d replicas this server holds: '
                'it predates the compact registration servers holding '
                'more than %d replicas send; upgrade the masters first' % (
                    reply.get('reported', 'none'), len(chunks), LIST_MAX))
        self.id = reply['server']['id']
        self._heartbeat_interval = reply.get('heartbeat_interval', 5.0)
        self.latency.set_window(reply.get('latency_window'))
        for vol, gen in reply.get('generations', {}).items():
            if gen > self.store.generation(vol):
                self.store.adopt_generation(vol, gen)
        for vol, seq in reply.get('snapseqs', {}).items():
            self.store.adopt_snapseq(vol, seq)
        for vol, (seq, live) in reply.get('snapshots', {}).items():
            # Blocks of snapshots deleted while this server was away.
            n = self.store.gc(vol, live, upto=seq)
            if n:
                LOG.info('Volume %s: %d preserved block(s) of deleted '
                         'snapshots freed', vol, n)
        for vol, idx in reply.get('stale', []):
            if lost_cache:
                # Torn blocks are found before it is brought up to date.
                self.store.mark_unverified(vol, idx)
            self.store.mark_stale(vol, idx)
        if lost_cache:
            # Said once, now the master dropped this server from the
            # chunks that have other live replicas and they are marked.
            self.store.lost_cache_told()
        for vol, idx in reply.get('orphans', []):
            LOG.info('Deleting orphan replica %s/%d (no such chunk on the '
                     'master)', vol, idx)
            self.store.delete(vol, idx)
        self._learn_term(reply)
        LOG.info('Registered with the master as chunk server %d', self.id)
        self._registered.set()
        return reply

    def _heard(self, sent, reply):
        """The master answered a registration or heartbeat sent at loop
        time ``sent``: it cannot mark this server down (and drop it from
        its replica sets behind its back) before ``sent`` plus its
        ``server_timeout``, so until then the epochs this server knows are
        the master's (see ``master_lease_valid``)."""
        timeout = reply.get('server_timeout')
        if timeout is None:
            # A master that does not say: two heartbeats, well within it.
            timeout = 2 * self._heartbeat_interval
        self._master_lease = sent + float(timeout)

    def master_lease_valid(self):
        """Whether the master cannot have dropped this server from a
        replica set without it knowing.  A server cut off from the master
        is marked down after server_timeout and dropped from every replica
        set (epoch + 1), and no heartbeat reply tells it: past its lease,
        a replica that served a read at the epoch it knows could serve
        bytes older than writes acknowledged since, at the new epoch, by
        the others.  Reads then wait for a confirmation by the master."""
        return self._loop.time() < self._master_lease

    async def _heartbeat(self, master=None):
        """One heartbeat, through ``master`` (a client of the masters;
        the server's own by default)."""
        master = master or self.master
        if self.disk.failure is not None:
            return await master.heartbeat(self.id, {
                'failure': self.disk.failure, 'capacity': 0, 'used': 0,
                'free': 0, 'scrub': self.scrub_status(),
                'uuid': self.store.server_uuid})
        body = self.store.usage()
        body['scrub'] = self.scrub_status()
        # The id alone is not enough: a server removed (ursa server
        # remove) while cut off may find its id given to another.
        body['uuid'] = self.store.server_uuid
        # The disk's recent latency: the master compares the servers'.
        body['latency'] = self.latency.report()
        reply = await master.heartbeat(self.id, body)
        self.latency.set_window(reply.get('latency_window'))
        self._left(reply.get('dropped', ()))
        self._learn_term(reply)
        self._sweep_joining_soon()
        return reply

    def _sweep_joining_soon(self):
        now = time.monotonic()
        if now - self._joining_swept < SWEEP_EVERY or self._sweeping:
            return
        self._joining_swept = now
        self._sweeping = True

        async def sweep():
            try:
                await self._sweep_joining(now)
            except Exception:  # noqa: BLE001 - keep the server alive
                LOG.exception('Sweep of joining copies failed')
            finally:
                self._sweeping = False
        self._loop.create_task(sweep())

    async def _sweep_joining(self, now):
        """Joining copies the master does not count on are stale again.
        A copy becomes a joining one when a primary starts copying to it,
        before the master records it; a copy that then failed at once
        (the chunk's epoch moved on) is left joining with no master
        knowing it.  Once it has been so for a while, the master is
        asked; a copy it lists neither as joining nor as a replica is
        marked stale: kept for a catch-up, as a dropped replica is,
        until the planner copies to it again or it is collected."""
        for vol, idx, _ in self.store.chunk_list():
            c = self.store.held(vol, idx)
            if c is None or not c.joining or c.stale or \
                    now - c.joined_at < JOINING_SWEEP:
                continue
            joined_at = c.joined_at
            try:
                await self.authority.confirm(vol, idx)
            except exception.NotFound:
                continue        # its volume is gone: collected elsewhere
            except (exception.UrsaConnectionError,
                    exception.Unavailable) as e:
                LOG.info('Joining copies not checked with the master (%s)',
                         e)
                return
            except exception.UrsaError as e:
                LOG.info('Chunk %s/%d: joining copy not checked with the '
                         'master (%s)', vol, idx, e)
                continue
            view = self.authority.current(vol, idx)
            if (self.store.held(vol, idx) is c and c.joining
                    and c.joined_at == joined_at and view is not None
                    and self.id not in view.joining
                    and self.id not in view.replicas):
                LOG.warning('Chunk %s/%d: the copy here was to join at '
                            'epoch %d but the master does not count on '
                            'it; it is stale again', vol, idx, view.epoch)
                self.store.mark_stale(vol, idx)

    def _learn_term(self, reply):
        """The leader's term, from its registration or heartbeat reply:
        from now on a master of an older term is refused (see
        ``_judge_term``), even on a connection it opened before."""
        term = reply.get('term')
        if term is not None and term > self.store.master_term:
            LOG.info('The masters are at term %d (was %d): commands of '
                     'older terms are refused', term, self.store.master_term)
            self.store.adopt_master_term(term)

    async def _membership(self):
        """Register, then heartbeat; register again when the master forgot
        us or came back.  A failed data directory is reported at once."""
        registered = False
        while True:
            self._wake.clear()
            sent = self._loop.time()
            try:
                if not registered:
                    self._heard(sent, await self._register())
                    registered = True
                else:
                    self._heard(sent, await self._heartbeat())
            except exception.NotFound:
                registered = False
                continue
            except exception.UrsaError as e:
                LOG.warning('Master unreachable (%s); retrying', e)
                registered = registered and not isinstance(
                    e, exception.UrsaConnectionError)
            except OSError as e:
                # The disk failed under the registration or the usage.
                LOG.error('Heartbeat failed: disk I/O error: %s', e)
                self._disk_error(e)
            except Exception:  # noqa: BLE001 - keep the server alive
                LOG.exception('Heartbeat failed')
            try:
                await asyncio.wait_for(
                    self._wake.wait(),
                    self._heartbeat_interval if registered else 1.0)
            except TimeoutError:
                pass

    def _left(self, drops):
        """The master says this server left these chunks (volume, index,
        epoch): a copy older than that epoch, not being brought up to
        date, is stale."""
        for vol, idx, epoch in drops:
            c = self.store.held(vol, idx)
            if c is not None and not c.joining and c.epoch < epoch:
                self.store.mark_stale(vol, idx)

    def _control(self, conn, frame, _req, _confirmed):
        op = frame.opcode
        if op in MASTER_ONLY and conn.master_term is None and not (
                op == codec.SNAPSHOT and frame.flags & codec.FLAG_DRY_RUN):
            raise master_only(frame)
        if op == codec.FLUSH:
            self._flush(conn, frame)
        elif op == codec.FENCE:
            vol, gen = control.decode_fence(frame.body)
            if gen <= self.store.generation(vol) and \
                    not self.forwarding_older(vol, gen):
                conn.send(codec.encode_ok(op, frame.req_id))
            else:
                conn.spawn(self._fence(conn, frame, vol, gen))
        elif op == codec.DELETE:
            vol, idx = control.decode_delete(frame.body)
            c = (self.store.held(vol, idx) if idx != control.ALL_CHUNKS
                 else None)
            if c is not None and c.joining:
                # Perhaps being brought up to date right now: only once
                # the master says it is not.
                conn.spawn(self._delete_joining(conn, frame, vol, idx))
                return
            n = self.store.delete(vol, None if idx == control.ALL_CHUNKS
                                  else idx)
            if n:
                LOG.info('Deleted %d replica(s) of volume %s', n, vol)
            conn.send(codec.encode_ok(op, frame.req_id))
        elif op == codec.CHUNK_INFO:
            vol, idx = control.decode_chunk_info(frame.body)
            conn.send(control.encode_chunk_info_ok(
                frame.req_id, *self.store.chunk_info(
                    vol, idx, bool(frame.flags & codec.FLAG_DEEP))))
        elif op == codec.ENTRIES:
            vol, idx, first, count = control.decode_entries(frame.body)
            self.store.check_failed(vol)
            self.store.entry_tables(None, first, count)   # the range
            if frame.flags & codec.FLAG_JOIN:
                conn.spawn(self._join_entries(conn, frame, vol, idx, first,
                                              count))
                return
            c = self.store.held(vol, idx)
            if c is None:
                raise exception.NotFound(kind='chunk replica',
                                         name='%s/%d' % (vol, idx))
            if c.stale:
                # Only a copy's primary asks (chunkserver/rebuild.py): a
                # copy marked stale since its first ENTRIES (the master
                # did not count on it yet: the joining-copy sweep) is
                # not to be made a replica; the copy fails, and is tried
                # again.
                raise exception.StaleReplica(
                    reason='the copy of chunk %s/%d on this server is '
                           'stale; copy it again' % (vol, idx))
            conn.send(control.encode_entries_ok(
                frame.req_id, c.epoch, self.store.blocks_in_use(c),
                self.store.entry_tables(c, first, count)))
            self._answered(frame, 'catchup')
        elif op == codec.INVENTORY:
            vol = control.decode_inventory(frame.body)
            conn.send(control.encode_inventory_ok(
                frame.req_id, self.store.inventory(vol)))
        elif op == codec.SNAPSHOT:
            vol, seq, live = control.decode_snapshot(frame.body)
            if frame.flags & codec.FLAG_DRY_RUN:
                n = self.store.gc(vol, live, upto=seq, dry_run=True)
                conn.send(codec.encode_ok(op, frame.req_id,
                                          control.encode_u64(n)))
                return
            if seq > self.store.snapseq(vol):
                conn.spawn(self._confirmed_snapseq(
                    conn, frame, vol, seq, self._snapshot, vol, seq, live))
            else:
                self._snapshot(conn, frame, vol, seq, live)
        elif op == codec.REVERT:
            vol, snap, seq = control.decode_revert(frame.body)
            if snap > seq:
                raise exception.InvalidArgument(
                    reason='REVERT to snapshot %d of volume %s, above its '
                           'sequence %d' % (snap, vol, seq))
            if seq > self.store.snapseq(vol):
                conn.spawn(self._confirmed_snapseq(
                    conn, frame, vol, seq, self._revert, vol, snap, seq))
            else:
                self._revert(conn, frame, vol, snap, seq)
        elif op == codec.TICKET:
            # Answered by the transport on a ticket connection.
            raise exception.NotAuthorized(
                reason='TICKET on a connection authenticated with the '
                       'cluster key: it has no ticket to replace')
        else:
            raise exception.ProtocolError(
                reason='unknown opcode 0x%02x' % op)

    def _snapshot(self, conn, frame, vol, seq, live):
        self.store.adopt_snapseq(vol, seq)
        if frame.flags & codec.FLAG_GC:
            n = self.store.gc(vol, live, upto=seq)
            if n:
                LOG.info('Volume %s: %d preserved block(s) no snapshot '
                         'needs were freed', vol, n)
        conn.send(codec.encode_ok(frame.opcode, frame.req_id))

    def _revert(self, conn, frame, vol, snap, seq):
        self.store.adopt_snapseq(vol, seq)
        n = self.store.revert(vol, snap, seq)
        LOG.info('Volume %s: %d chunk(s) reverted to snapshot %d', vol, n,
                 snap)
        conn.spawn(self._reply_after_sync(conn, frame, vol))

    async def _confirmed_snapseq(self, conn, frame, vol, seq, then, *args):
        """A SNAPSHOT or REVERT names snapshot sequence ``seq``, newer than
        the one this server knows: it is adopted only if the master has
        it (the master commits a sequence before it announces it).  A
        sequence the master never issued would make every write to the
        volume stale for good (a write carries the master's sequence,
        and one older than the server's is refused), as FENCE with
        generation 2**64-1 once made a volume unwritable."""
        try:
            try:
                known = (await self.authority.master.volume(vol))['snap_seq']
            except (exception.UrsaConnectionError,
                    exception.InternalError) as e:
                raise exception.Unavailable(
                    reason='cannot confirm snapshot sequence %d of volume '
                           '%s with the master (%s); retry' % (seq, vol, e)
                ) from e
            if seq > known:
                LOG.warning('Refusing %s of volume %s at snapshot sequence '
                            '%d from %s: the master is at %d',
                            codec.OPCODE_NAMES[frame.opcode], vol, seq,
                            conn.peer, known)
                raise exception.InvalidArgument(
                    reason='snapshot sequence %d of volume %s was not '
                           'issued by the master, which is at %d'
                           % (seq, vol, known))
            then(conn, frame, *args)
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _join_entries(self, conn, frame, vol, idx, first, count):
        """ENTRIES with FLAG_JOIN: the copy here becomes a joining copy
        (never one the master lists as a replica), and one this server's
        crash may have torn has its torn blocks forgotten first (read in
        a worker thread)."""
        try:
            if self._listed_replica(vol, idx):
                await self.authority.confirm(vol, idx)   # perhaps old news
                if self._listed_replica(vol, idx):
                    raise exception.Conflict(
                        reason='the copy of chunk %s/%d on this server is a '
                               'replica; it is not brought up to date as a '
                               'new copy' % (vol, idx))
            c = self.store.rejoin(vol, idx)
            if c is None:
                raise exception.NotFound(kind='chunk replica',
                                         name='%s/%d' % (vol, idx))
            if self.store.unverified(c):
                files = self.store.unverified_files(c)
                n = await asyncio.get_running_loop().run_in_executor(
                    None, mending.forget_torn, files)
                self.store.verified(c, n)
            conn.send(control.encode_entries_ok(
                frame.req_id, c.epoch, self.store.blocks_in_use(c),
                self.store.entry_tables(c, first, count)))
            self._answered(frame, 'catchup')
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    def _listed_replica(self, vol, idx):
        """Whether the copy here is not stale and the last view of the
        chunk learned from the master lists this server as a replica."""
        c = self.store.held(vol, idx)
        view = self.authority.current(vol, idx)
        return (c is not None and not c.stale and view is not None and
                self.id in view.replicas)

    async def _delete_joining(self, conn, frame, vol, idx):
        try:
            await self.authority.confirm(vol, idx)
            view = self.authority.current(vol, idx)
            if view is not None and (self.id in view.joining or
                                     self.id in view.replicas):
                raise exception.Conflict(
                    reason='the copy of chunk %s/%d on this server is being '
                           'brought up to date (epoch %d); not deleted'
                           % (vol, idx, view.epoch))
            if self.store.delete(vol, idx):
                LOG.info('Deleted replica %s/%d', vol, idx)
            conn.send(codec.encode_ok(frame.opcode, frame.req_id))
        except exception.NotFound:
            self.store.delete(vol, idx)         # its volume is gone
            conn.send(codec.encode_ok(frame.opcode, frame.req_id))
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _fence(self, conn, frame, vol, gen):
        try:
            if gen > self.store.generation(vol):
                await self.authority.confirm_generation(vol, gen)
            # Writes of the fenced generations this primary already
            # forwarded end first (see ReplicationMixin.forwarded), within
            # the master's time for a FENCE.
            if not await self.forwarded(vol, gen, FENCE_WAIT):
                raise exception.Unavailable(
                    reason='writes of volume %s under a lease generation '
                           'older than %d are still being answered; retry'
                           % (vol, gen))
            conn.send(codec.encode_ok(frame.opcode, frame.req_id))
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    def _flush(self, conn, frame):
        conn.spawn(self._reply_after_sync(conn, frame,
                                          codec.decode_flush(frame.body)))

    async def _reply_after_sync(self, conn, frame, volume, chunk=None,
                                nbytes=0):
        """Answer once ``volume`` (``chunk`` only: a FUA write, whose reply
        carries the chunk's epoch) is durable; ``nbytes``: what the
        request wrote (for the metrics)."""
        try:
            await self._sync(volume, chunk)
        except OSError as e:
            # Counted once, by the sync that failed (see _sync).
            self._reply_error(conn, frame, exception.DiskError(
                reason='fdatasync: %s' % e))
            return
        except exception.UrsaError as e:
            self._reply_error(conn, frame, e)
            return
        if chunk is None:
            conn.send(codec.encode_ok(frame.opcode, frame.req_id))
        else:
            conn.send(codec.encode_write_ok(frame.req_id, chunk.epoch,
                                            frame.opcode))
        op = metrics.op_of(frame)
        if op is not None:
            self._answered(frame, op, nbytes)

    async def _sync(self, volume=None, chunk=None):
        """Make durable what was written to ``volume`` (every volume when
        None; only ``chunk``'s files, for a FUA write), and wait for the
        syncs of it already running: they took files written before this
        call, and a FLUSH that did not wait for them would answer before
        the writes it covers are on disk.  One failed sync fails every
        sync waiting for it."""
        fds, dirs = self.store.take_dirty(volume, chunk)
        waits = [fut for vols, fut in self._syncs
                 if volume is None or vols is None or volume in vols]
        if fds or dirs:
            vols = None if volume is None else frozenset((volume,))
            fut = self._loop.run_in_executor(None, self._timed_sync, fds,
                                             dirs)
            entry = (vols, fut)
            self._syncs.append(entry)

            def done(f):
                self._syncs.remove(entry)
                if not f.cancelled() and f.exception() is not None:
                    self.store.sync_failed(vols, f.exception())
                    self._disk_error(f.exception())
            fut.add_done_callback(done)
            waits.append(fut)
        if waits:
            # asyncio.wait, not gather: a cancelled FLUSH must not cancel
            # a sync that other FLUSHes wait for.
            await asyncio.wait(waits)
            for f in waits:
                if f.exception() is not None:
                    raise f.exception()

    def _timed_sync(self, fds, dirs):
        """``store.sync`` (in a worker thread), its latency observed."""
        t0 = metrics.clock()
        try:
            self.store.sync(fds, dirs)
        finally:
            t1 = metrics.clock()
            self._sync_latency.observe(t1 - t0)
            self.latency.sync.add(t1 - t0, t1)
