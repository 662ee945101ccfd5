"""The write path of a chunk server: WRITE on a chunk's primary, forwarded
as REPLICATE to the other replicas, and the replicas that fail dropped.

Write path (the primary is the first server of a chunk's replica set):

1. check the lease generation (older -> Fenced) and the chunk epoch
   (older -> StaleEpoch), and that the replica set the request names is the
   master's at that epoch: a newer epoch or generation is first confirmed
   with the master (:mod:`.authority`), and requests for that chunk wait
   behind it, so every chunk's writes are still applied in arrival order;
2. apply the write to the local replica synchronously, in arrival order;
   a write whose blocks a snapshot still reads first copies them into the
   snapshot's layer and syncs the copies before it overwrites them (in a
   worker thread, the chunk's later requests waiting behind it, see
   :mod:`.gate`, and the copies of the writes among them synced with it):
   only the first write of a block after a snapshot does;
3. forward it (REPLICATE) to the other replicas in parallel;
4. a replica that fails or times out is dropped from the replica set by
   the master (epoch + 1, committed there first); the write is
   acknowledged only if at least ``min_replicas`` replicas applied it,
   otherwise the client gets InsufficientReplicas and must retry.
"""

import asyncio
import logging
import os
import time

from cinder_ursa import exception
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)

# s at least between two questions to the master for a peer not connected
PEER_RECHECK = 2.0

# Fault injection for the tests, as Ceph's inject options: never set it
# in production.  "exit-before-forward": a primary exits right after it
# applied a write locally, before forwarding it to the other replicas.
_FAULT = os.environ.get('URSA_INJECT_FAULT')
_clock = time.perf_counter


class ReplicationMixin:
    """The WRITE and REPLICATE handlers of :class:`ChunkServer` (which
    provides ``store``, ``authority``, ``master``, ``peers``, ``id``,
    ``replication_timeout``, ``gate``, ``_loop``, ``_peer_addrs``,
    ``_peer_asked``, ``_drop_locks``, ``_sync``, ``_reply_after_sync``,
    ``_timed_sync``, ``_answered`` and ``_reply_error``)."""

    def _check(self, req, confirmed, joining=False):
        """The master's view of the chunk a write names (its generation
        and epoch checked; see :mod:`.authority`); ``joining``: this server
        may also be one of its joining copies (a forwarded write)."""
        # A copy-up writes what readers already see through the parent,
        # and a repair what a replica held: they need no lease (and
        # preserve nothing).
        if not req.flags & (codec.FLAG_IF_ABSENT | codec.FLAG_RAW):
            self.authority.check_generation(req.volume, req.generation,
                                            confirmed)
        return self.authority.view(req.volume, req.index, req.epoch,
                                   self.id, confirmed, joining)

    def _apply(self, conn, frame, req, then, *args):
        """Apply ``req`` to the copy here, then go on with ``then(conn,
        frame, req, *args, chunk)``: at once, or, for a write that first
        copies blocks into a snapshot layer, once the copies are durable
        (see :meth:`_apply_after_copies`)."""
        c = self.store.check_epoch(req.volume, req.index, req.epoch,
                                   create=True)
        if req.flags & codec.FLAG_RAW:
            n = req.length // BLOCK
            entries = req.data[:n * ENTRY]
            data = req.data[n * ENTRY:]
            layer = req.seq if req.flags & codec.FLAG_LAYER else 0
            # A repair or a copy pushes blocks its primary holds valid:
            # refuse anything else (a torn block; a layer's state in the
            # head, or a layer without a sequence).
            if mending.torn_blocks(entries, data) or (
                    req.flags & codec.FLAG_LAYER and not layer) or (
                    not layer and not mending.head_entries(entries)):
                raise exception.InvalidArgument(
                    reason='a raw REPLICATE must carry valid blocks of the '
                           'head, or of a layer it names')
            self.store.put_raw(c, req.offset // BLOCK, entries, data,
                               layer)
        else:
            if not (req.if_absent or req.preserved):
                copies = self.store.preserve(c, req.offset, req.length,
                                             req.seq, req.floor)
                if copies is not None:
                    self.gate.hold((req.volume, req.index),
                                   self._apply_after_copies(
                                       conn, frame, req, c, copies, then,
                                       args))
                    return
            t0 = _clock()
            self.store.write(c, req.offset, req.data, req.seq, req.zero,
                             req.if_absent, req.length, req.floor,
                             preserved=True)
            t1 = _clock()
            self.latency.write.add(t1 - t0, t1)
        then(conn, frame, req, *args, c)

    async def _apply_after_copies(self, conn, frame, req, c, copies, then,
                                  args):
        """The rest of :meth:`_apply` for a write whose copy-on-write
        copied blocks: the copies are synced in a worker thread before the
        head's blocks are overwritten, or a power cut could keep the
        overwrite and lose the copy.  The chunk is held meanwhile (see
        :mod:`.gate`): its requests wait, and are applied and forwarded
        in arrival order still; the writes among them that copy blocks
        too are synced with it (:meth:`_copy_ahead`)."""
        try:
            ahead = self._copy_ahead(req, c, copies)
            try:
                await self._loop.run_in_executor(None, self._timed_sync,
                                                 copies.fds, copies.dirs)
            except OSError as e:
                self.store.sync_failed((req.volume,), e)
                raise
            for r in ahead:
                r.preserved = True
            if req.generation and not req.flags & codec.FLAG_IF_ABSENT:
                # A FENCE may have come during the sync: refused now, the
                # write is applied nowhere (see forwarded()).
                try:
                    self.store.adopt_generation(req.volume, req.generation)
                except exception.Fenced:
                    # Its copy-on-write was made here, not on the other
                    # replicas: pushed to them, once the chunk is let go
                    # (what the snapshot reads there already: harmless
                    # whenever it lands).
                    first = req.offset // BLOCK
                    last = (req.offset + req.length - 1) // BLOCK
                    while first <= last:
                        self.repair_later(req.volume, req.index, first,
                                          last - first + 1, req.seq)
                        first += control.MAX_REPAIR_BLOCKS
                    raise
            c = self.store.check_epoch(req.volume, req.index, req.epoch,
                                       create=True)
            self.store.write(c, req.offset, req.data, req.seq, req.zero,
                             req.if_absent, req.length, req.floor,
                             preserved=True)
            then(conn, frame, req, *args, c)
        except asyncio.CancelledError:
            self._reply_error(conn, frame, exception.Unavailable(
                reason='the chunk server is stopping'))
            raise
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    def _copy_ahead(self, req, c, copies):
        """Group commit: make the copy-on-write of the writes waiting for
        the chunk behind ``req`` now, into ``copies``, so one sync makes
        them all durable; returns those writes, to apply with no copy to
        make (``preserved``) once it did.  Only the writes at ``req``'s
        sequence, up to the first other request: each block they
        overwrite is copied as it was before all of them, which is what
        the snapshots read (a write among them refused later leaves a copy
        of what the snapshots read anyway)."""
        ahead = []
        for fn, _, _, r in self.gate.waiting((req.volume, req.index)):
            replicated = fn == self._replicate
            if not (replicated or fn == self._write) or r.seq != req.seq \
                    or r.flags & (codec.FLAG_RAW | codec.FLAG_IF_ABSENT):
                break
            # A WRITE's floor is set when it is served: never above this.
            floor = r.floor if replicated else self.store.preserve_floor(
                r.volume, r.seq)
            try:
                self.store.preserve(c, r.offset, r.length, r.seq, floor,
                                    copies)
            except (exception.UrsaError, OSError):
                break       # it fails again, and answers, when served
            ahead.append(r)
        return ahead

    def _replicate(self, conn, frame, req, confirmed):
        view = self._check(req, confirmed, joining=True)
        self._apply(conn, frame, req, self._replicated, view)

    def _replicated(self, conn, frame, req, view, c):
        # A copy being brought up to date serves no reads (also after a
        # restart) until the master makes it a replica.
        self.store.set_joining(c, self.id not in view.replicas)
        if req.fua:
            conn.spawn(self._reply_after_sync(conn, frame, req.volume, c,
                                              req.length))
        else:
            conn.send(codec.encode_write_ok(frame.req_id, c.epoch,
                                            codec.REPLICATE))
            self._answered(frame, 'catchup' if frame.flags & codec.FLAG_RAW
                           else 'replicate', req.length)

    def _write(self, conn, frame, req, confirmed):
        if req.flags & codec.FLAG_RAW:
            # Only a primary's repair push (REPLICATE) stores blocks as
            # they are: a client's WRITE would pass the lease fence.
            raise exception.InvalidArgument(
                reason='WRITE does not take FLAG_RAW')
        view = self._check(req, confirmed)
        if view.replicas[0] != self.id:
            raise exception.StaleEpoch(
                reason='chunk %s/%d: this server (%d) is not its primary '
                       '(%s); refresh the chunk map' % (
                           req.volume, req.index, self.id, view.replicas))
        if req.replicas != view.replicas:
            raise exception.StaleEpoch(
                reason='chunk %s/%d: the write names replica set %s, the '
                       'master\'s at epoch %d is %s; refresh the chunk map'
                       % (req.volume, req.index, req.replicas, view.epoch,
                          view.replicas))
        # What the master says, not what the client sent.
        req.min_replicas = view.min_replicas
        if len(req.replicas) < req.min_replicas:
            raise exception.InsufficientReplicas(
                have=len(req.replicas), need=req.min_replicas,
                reason='chunk %s/%d; writes wait for repair' % (
                    req.volume, req.index))
        if not req.if_absent:
            # Only the primary judges the snapshot sequence: replicas
            # apply what it forwards with the sequence it carries, so
            # every replica preserves exactly the same blocks.
            self.store.check_snapseq(req.volume, req.seq)
            self.store.adopt_snapseq(req.volume, req.seq)
            req.floor = self.store.preserve_floor(req.volume, req.seq)
        self._apply(conn, frame, req, self._forward_write, view)

    def _forward_write(self, conn, frame, req, view, c):
        """Forward a write applied here to the chunk's other replicas, and
        answer it once they applied it (and, with FUA, it is durable)."""
        # The copies being brought up to date take every write too; their
        # failures drop them, never the write.
        others = req.replicas[1:] + view.joining
        if _FAULT == 'exit-before-forward' and others:
            LOG.error('URSA_INJECT_FAULT=%s: exiting', _FAULT)
            os._exit(70)
        if not others and not req.fua:
            conn.send(codec.encode_write_ok(frame.req_id, c.epoch))
            self._answered(frame, 'write', req.length)
            return
        # Forward right now, in arrival order, on connected peers; the
        # data view points into the frame, which the forwards keep alive.
        sent = [self._send_replica_now(sid, req, c.epoch) for sid in others]
        # Counted until answered (a FENCE waits for those of older
        # generations: see forwarded()).
        counts = self._forwarding.get(req.volume)
        if counts is None:
            counts = self._forwarding[req.volume] = {}
        counts[req.generation] = counts.get(req.generation, 0) + 1
        if not req.fua and None not in sent:
            self._await_replicas(conn, frame, req, c, others, sent)
            return
        conn.spawn(self._forward(conn, frame, req, c, others, sent)
                   ).add_done_callback(
            lambda _: self._unforward(req.volume, req.generation))

    def _unforward(self, volume, generation):
        """A forwarded write of ``generation`` was answered."""
        counts = self._forwarding[volume]
        n = counts[generation] - 1
        if n:
            counts[generation] = n
            return
        del counts[generation]
        if not counts:
            del self._forwarding[volume]
        if self._fence_waits:
            for w in [w for w in self._fence_waits if w[0] == volume and
                      not self.forwarding_older(volume, w[1])]:
                self._fence_waits.remove(w)
                if not w[2].done():
                    w[2].set_result(None)

    def forwarding_older(self, volume, generation):
        """Whether writes of ``volume`` under a lease generation older
        than ``generation`` were applied and forwarded here and are not
        answered yet."""
        counts = self._forwarding.get(volume)
        return counts is not None and any(g < generation for g in counts)

    async def forwarded(self, volume, generation, timeout):
        """Wait (at most ``timeout`` s) until every write of ``volume``
        this primary applied under a lease generation older than
        ``generation`` and forwarded is answered; whether they were.  A
        FENCE is confirmed only then, so once the master's fence returns,
        no write of a fenced writer is on its way to a replica (nor
        answered later), and the replicas agree on what those writes
        left (see :meth:`_conclude`)."""
        if not self.forwarding_older(volume, generation):
            return True
        waiter = (volume, generation, self._loop.create_future())
        self._fence_waits.append(waiter)
        try:
            done, _ = await asyncio.wait([waiter[2]], timeout=timeout)
            return bool(done)
        finally:
            if waiter in self._fence_waits:
                self._fence_waits.remove(waiter)

    def _await_replicas(self, conn, frame, req, c, others, sent):
        """The common case of a forwarded write (no FUA, every peer
        connected), with callbacks instead of a task, a gather and a
        timer per replica: answer as soon as the last replica did, and
        hand anything but success to :meth:`_conclude`."""
        left = [len(sent)]

        def expire():
            for peer, rid, fut in sent:
                if not fut.done():
                    peer.forget(rid)
                    fut.set_exception(exception.UrsaTimeout(
                        peer=peer.peer, seconds=self.replication_timeout))

        timer = self._loop.call_later(self.replication_timeout, expire)

        def done(_):
            left[0] -= 1
            if left[0]:
                return
            timer.cancel()
            results = []
            for sid, (_, _, fut) in zip(others, sent, strict=True):
                try:
                    codec.decode_write_ok(fut.result().body)
                    results.append(None)
                except exception.UrsaError as e:
                    if isinstance(e, exception.UrsaConnectionError):
                        self.peers.discard(*self._peer_addrs[sid])
                    results.append(e)
                except asyncio.CancelledError as e:
                    results.append(exception.UrsaConnectionError(
                        peer=str(sid), reason='cancelled: %s' % e))
            if not any(results):
                conn.send(codec.encode_write_ok(frame.req_id, c.epoch))
                self._answered(frame, 'write', req.length)
                self._unforward(req.volume, req.generation)
            else:
                conn.spawn(self._conclude(conn, frame, req, c, others,
                                          results)
                           ).add_done_callback(
                    lambda _: self._unforward(req.volume, req.generation))

        for _, _, fut in sent:
            fut.add_done_callback(done)

    async def _forward(self, conn, frame, req, c, others, sent):
        jobs = [self._await_replica(sid, s) if s is not None
                else self._send_replica(sid, req, c.epoch)
                for sid, s in zip(others, sent, strict=True)]
        if req.fua:
            jobs.append(self._sync(req.volume, c))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await self._conclude(conn, frame, req, c, others, results)

    async def _conclude(self, conn, frame, req, c, others, results):
        """Answer a forwarded write from the replicas' results (and the
        local sync's, last, with FUA): drop the replicas that failed.

        A replica that refused it as fenced (it learned the volume's new
        lease generation before this primary did) holds the range as it
        was, while this primary applied the write: before the writer is
        told it was fenced, the range as this primary holds it now is
        pushed to the other replicas (a repair, the chunk held), so every
        replica answers the same for it, old data or new, as after any
        failed write.  A FENCE waits for this (:meth:`forwarded`)."""
        epoch = c.epoch
        try:
            failed = []
            # ``others``: the other replicas, then the joining copies.
            replicas = len(req.replicas) - 1
            fenced = [res for res in results[:replicas]
                      if isinstance(res, exception.Fenced)]
            if fenced:
                # Before any other refusal is answered: the others ask for
                # a retry, which this primary refuses as fenced by now.
                await self._realign(req)
                raise fenced[0]
            for k, (sid, res) in enumerate(zip(others, results,
                                               strict=False)):
                if res is None:
                    continue
                if k >= replicas:
                    # A copy being brought up to date that missed a write
                    # is given up; the write stands on the replicas.
                    failed.append((sid, res))
                    continue
                if isinstance(res, (exception.StaleEpoch,
                                    exception.StaleReplica,
                                    exception.OutOfRange,
                                    exception.NoSpace)):
                    raise res
                failed.append((sid, res))
            if req.fua and len(results) > len(others) and \
                    results[-1] is not None:
                raise exception.DiskError(reason='fdatasync: %s'
                                              % results[-1])
            if failed:
                epoch = await self._drop(req, c, failed)
            conn.send(codec.encode_write_ok(frame.req_id, epoch))
            self._answered(frame, 'write', req.length)
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _realign(self, req):
        """Push the range ``req`` wrote, as this primary holds it now, to
        the chunk's other replicas (see :meth:`_conclude`)."""
        first = req.offset // BLOCK
        last = (req.offset + req.length - 1) // BLOCK
        # The write's copy-on-write (of what a snapshot reads) was made
        # here only: that layer first, then the head.
        c = self.store.held(req.volume, req.index)
        layers = [req.seq] if req.seq and c is not None and \
            req.seq in c.layers else []
        try:
            for layer in layers + [0]:
                first = req.offset // BLOCK
                while first <= last:
                    count = min(last - first + 1, control.MAX_REPAIR_BLOCKS)
                    await self.repair_now(req.volume, req.index, first,
                                          count, layer)
                    first += count
        except (exception.UrsaError, OSError) as e:
            LOG.error('Chunk %s/%d: a write refused as fenced by a replica '
                      'was applied here, and blocks %d-%d could not be '
                      'made the same on every replica (%s); run ursa '
                      'volume check %s --repair', req.volume, req.index,
                      first, last, e, req.volume)
        else:
            LOG.warning('Chunk %s/%d: a write of a fenced lease generation '
                        'was refused by a replica after this primary '
                        'applied it; blocks %d-%d made the same on every '
                        'replica', req.volume, req.index,
                        req.offset // BLOCK, last)

    async def _send_replica(self, sid, req, epoch):
        addr = await self._peer(sid)
        try:
            peer = await self.peers.get(*addr)
            reply = await peer.call(codec.encode_replicate, req, epoch,
                                    timeout=self.replication_timeout)
            codec.decode_write_ok(reply.body)
        except exception.UrsaConnectionError:
            self.peers.discard(*addr)
            raise

    def _send_replica_now(self, sid, req, epoch):
        """Fast path: the peer is known and connected, so send at once
        (no task) and return (peer, rid, future); None otherwise."""
        addr = self._peer_addrs.get(sid)
        if addr is None:
            return None
        peer = self.peers.connected(*addr)
        if peer is None:
            return None
        rid = aio.next_req_id()
        try:
            fut = peer.send(rid, codec.encode_replicate(rid, req, epoch))
        except exception.UrsaConnectionError:
            return None
        return peer, rid, fut

    async def _await_replica(self, sid, sent):
        peer, rid, fut = sent
        try:
            reply = await peer.wait(rid, fut, self.replication_timeout)
            codec.decode_write_ok(reply.body)
        except exception.UrsaConnectionError:
            self.peers.discard(*self._peer_addrs[sid])
            raise

    async def _drop(self, req, c, failed):
        """Ask the master to drop failed replicas; return the new epoch if
        enough replicas remain, else raise InsufficientReplicas."""
        key = (req.volume, req.index)
        lock = self._drop_locks.setdefault(key, asyncio.Lock())
        async with lock:
            chunk = None
            for sid, err in failed:
                LOG.warning('Replica %d of chunk %s/%d failed (%s); asking '
                            'the master to drop it', sid, req.volume,
                            req.index, err)
                chunk = await self.master.drop_replica(
                    req.volume, req.index, sid, c.epoch)
                self.authority.learn(req.volume, chunk,
                                     chunk['min_replicas'])
                if chunk['epoch'] > c.epoch:
                    self.store.set_epoch(c, chunk['epoch'])
        ids = [r['id'] for r in chunk['replicas']]
        stayed = [sid for sid, _ in failed if sid in ids]
        if stayed:
            raise exception.Unavailable(
                reason='chunk %s/%d: servers %s failed a write and are still '
                       'replicas at the master; retry' % (*key, stayed))
        if self.id not in ids:
            raise exception.StaleReplica(
                reason='this server left the replica set of chunk %s/%d'
                % key)
        if len(ids) < req.min_replicas:
            raise exception.InsufficientReplicas(
                have=len(ids), need=req.min_replicas,
                reason='chunk %s/%d lost replicas; writes wait for repair'
                % key)
        # The survivors learn the new epoch now (an empty copy-up carries
        # it), not at the next write: a client holding the old map is
        # refused by every replica from here on.
        bump = codec.WriteRequest(req.volume, req.index, chunk['epoch'],
                                  req.generation, req.seq, 0, 0, ids, b'',
                                  codec.FLAG_IF_ABSENT)
        # The dropped ones are told too, not waited for (they failed): a
        # live one asks the master, learns it left and serves no read to
        # a client holding the old map.
        for sid, _ in failed:
            _tell_later(self._send_replica(sid, bump, chunk['epoch']))
        results = await asyncio.gather(*(
            self._send_replica(sid, bump, chunk['epoch'])
            for sid in ids if sid != self.id), return_exceptions=True)
        for res in results:
            if isinstance(res, Exception):
                LOG.warning('Chunk %s/%d: a replica did not take epoch %d '
                            '(%s); it learns it with the next write', *key,
                            chunk['epoch'], res)
        return chunk['epoch']

    async def _peer(self, sid):
        """(address, port) of chunk server ``sid``, as the master last told.
        When no connection to it is open, the master is asked again in the
        background (at most every PEER_RECHECK s; I/O waits for no
        master): the server may have come back elsewhere, and the address
        known would be tried forever."""
        addr = self._peer_addrs.get(sid)
        if addr is None:
            await self._learn_peers()
            addr = self._peer_addrs.get(sid)
            if addr is None:
                raise exception.NotFound(kind='chunk server', name=sid)
        elif (self.peers.connected(*addr) is None and time.monotonic()
                - self._peer_asked.get(sid, 0) > PEER_RECHECK):
            self._peer_asked[sid] = time.monotonic()
            _tell_later(self._learn_peers())
        return addr

    async def _learn_peers(self):
        try:
            servers = await self.master.servers()
        except (exception.UrsaConnectionError, exception.InternalError) as e:
            raise exception.Unavailable(
                reason='cannot learn the chunk servers\' addresses from the '
                       'master (%s); retry' % e) from e
        now = time.monotonic()
        for s in servers:
            self._peer_addrs[s['id']] = (s['address'], s['port'])
            self._peer_asked[s['id']] = now


_told = set()       # the tasks of _tell_later, kept until they end


def _tell_later(coro):
    """Run ``coro`` (a message to a server that may be gone) on its own;
    its failure is expected and ignored."""
    task = asyncio.get_running_loop().create_task(coro)
    _told.add(task)

    def done(t):
        _told.discard(t)
        if not t.cancelled():
            t.exception()
    task.add_done_callback(done)
