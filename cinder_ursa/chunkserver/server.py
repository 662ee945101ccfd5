"""The chunk server: data protocol, replication forwarding, membership.

Write path (the primary is the first server of a chunk's replica set):

1. check the lease generation (older -> Fenced) and the chunk epoch
   (older -> StaleEpoch), and that the replica set the request names is the
   master's at that epoch: a newer epoch or generation is first confirmed
   with the master (:mod:`.authority`), and requests for that chunk wait
   behind it, so every chunk's writes are still applied in arrival order;
2. apply the write to the local replica synchronously, in arrival order;
3. forward it (REPLICATE) to the other replicas in parallel;
4. a replica that fails or times out is dropped from the replica set by
   the master (epoch + 1, committed there first); the write is
   acknowledged only if at least ``min_replicas`` replicas applied it,
   otherwise the client gets InsufficientReplicas and must retry.
"""

import asyncio
import logging
import os
import socket

from cinder_ursa import exception
from cinder_ursa.chunkserver import authority as authority_mod
from cinder_ursa.chunkserver import gate as gate_mod
from cinder_ursa.chunkserver import repair
from cinder_ursa.chunkserver import store as store_mod
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.client import master as master_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)

# Fault injection for the tests, as Ceph's inject options: never set it
# in production.  "exit-before-forward": a primary exits right after it
# applied a write locally, before forwarding it to the other replicas.
_FAULT = os.environ.get('URSA_INJECT_FAULT')


class ChunkServer(repair.RepairMixin):

    def __init__(self, data_dir, key, master_urls, bind_host='127.0.0.1',
                 bind_port=0, advertise_host=None, host=None, rack='default',
                 replication_timeout=5.0, reserved_bytes=0):
        self.store = store_mod.ChunkStore(data_dir, reserved_bytes)
        self.key = key
        self.master = master_mod.AsyncMasterClient(master_urls, key,
                                                   timeout=10.0)
        # Confirmations hold a chunk's requests: they wait no longer than
        # a replica would.
        self.authority = authority_mod.Authority(
            master_mod.AsyncMasterClient(
                master_urls, key, timeout=max(replication_timeout, 1.0)),
            self.store)
        self.gate = gate_mod.Gate(self._serve_item)
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.advertise_host = advertise_host or bind_host
        self.host = host or socket.gethostname()
        self.rack = rack
        self.replication_timeout = replication_timeout
        self.peers = aio.ConnectionPool(key, connect_timeout=min(
            replication_timeout, 3.0))
        self.id = None
        self.port = None
        self._peer_addrs = {}
        self._server = None
        self._tasks = []
        self._drop_locks = {}
        self._heartbeat_interval = 5.0
        self._registered = asyncio.Event()
        self._loop = None
        self._syncs = []  # (volumes or None for all, future) running

    # --- lifecycle ---------------------------------------------------------

    async def start(self):
        # Kept: get_running_loop() costs a getpid() system call per use.
        self._loop = loop = asyncio.get_running_loop()
        if self.store.unclean:
            t = loop.time()
            n = await loop.run_in_executor(None, self.store.sync_everything)
            LOG.info('The last run did not stop cleanly: %d file(s) it may '
                     'have left unsynced were synced in %.1f s', n,
                     loop.time() - t)
        self._server = await loop.create_server(
            lambda: aio.ServerConnection(self.key, self.handle),
            self.bind_host, self.bind_port, reuse_address=True, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]
        LOG.info('Chunk server %s serving %s on %s:%d', self.store.server_uuid,
                 self.store.data_dir, self.bind_host, self.port)
        self._tasks.append(loop.create_task(self._membership()))

    async def wait_registered(self, timeout):
        await asyncio.wait_for(self._registered.wait(), timeout)

    async def stop(self):
        for t in self._tasks:
            t.cancel()
        self.gate.cancel()
        if self._server is not None:
            self._server.close()
        self.peers.close()
        await self.master.close()
        await self.authority.master.close()
        try:
            self.store.sync(*self.store.take_dirty())
            clean = not self._syncs and not self.store.failed_volumes()
        except (OSError, exception.UrsaError) as e:
            LOG.error('Syncing at shutdown failed: %s', e)
            clean = False
        self.store.close(clean)

    async def _register(self):
        usage = self.store.usage()
        reply = await self.master.register_server(
            uuid=self.store.server_uuid, host=self.host, rack=self.rack,
            address=self.advertise_host, port=self.port,
            chunks=self.store.chunk_list(), **usage)
        self.id = reply['server']['id']
        self._heartbeat_interval = reply.get('heartbeat_interval', 5.0)
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
            self.store.mark_stale(vol, idx)
        for vol, idx in reply.get('orphans', []):
            LOG.info('Deleting orphan replica %s/%d (no such chunk on the '
                     'master)', vol, idx)
            self.store.delete(vol, idx)
        LOG.info('Registered with the master as chunk server %d', self.id)
        self._registered.set()

    async def _membership(self):
        """Register, then heartbeat; register again when the master forgot
        us or came back."""
        registered = False
        while True:
            try:
                if not registered:
                    await self._register()
                    registered = True
                else:
                    await self.master.heartbeat(self.id, self.store.usage())
            except exception.NotFound:
                registered = False
                continue
            except exception.UrsaError as e:
                LOG.warning('Master unreachable (%s); retrying', e)
                registered = registered and not isinstance(
                    e, exception.UrsaConnectionError)
            except Exception:  # noqa: BLE001 - keep the server alive
                LOG.exception('Heartbeat failed')
            await asyncio.sleep(self._heartbeat_interval if registered
                                else 1.0)

    # --- dispatch ----------------------------------------------------------

    def handle(self, conn, frame):
        op = frame.opcode
        if op == codec.WRITE:
            fn, req = self._write, codec.decode_write(frame.body, frame.flags)
        elif op == codec.REPLICATE:
            fn, req = self._replicate, codec.decode_replicate(frame.body,
                                                              frame.flags)
        elif op == codec.READ:
            fn, req = self._read, codec.decode_read(frame.body)
        elif op == codec.REPAIR:
            fn, req = self._repair, codec.decode_repair(frame.body)
        else:
            self._serve(conn, frame, self._control, None)
            return
        key = (req.volume, req.index)
        # Reads that need no confirmation are not held (see gate.py).
        if op != codec.READ and self.gate.held(key):
            try:
                self.gate.wait(key, (fn, conn, frame, req))
            except exception.Unavailable as e:
                self._reply_error(conn, frame, e)
        else:
            self._serve(conn, frame, fn, req)

    def _serve_item(self, item, confirmed, failed):
        fn, conn, frame, req = item
        self._serve(conn, frame, fn, req, confirmed, failed)

    def _serve(self, conn, frame, fn, req, confirmed=False, failed=None):
        """Run a request's handler and answer its errors.  A request that
        names what the master must confirm first waits for it (and the
        later requests for its chunk behind it), unless asking the master
        just ``failed``."""
        try:
            fn(conn, frame, req, confirmed)
        except authority_mod.Unconfirmed:
            key = (req.volume, req.index)
            failed = failed or self.gate.recent_failure(key)
            if failed is not None:
                self._reply_error(conn, frame, failed)
            elif self.gate.held(key):
                try:
                    self.gate.wait(key, (fn, conn, frame, req))
                except exception.Unavailable as e:
                    self._reply_error(conn, frame, e)
            else:
                self.gate.hold(key, self.authority.confirm(*key),
                               (fn, conn, frame, req), confirms=True)
        except exception.ProtocolError:
            raise
        except (exception.UrsaError, OSError) as e:
            self._reply_error(conn, frame, e)

    @staticmethod
    def _reply_error(conn, frame, e):
        """Answer ``frame`` with the error ``e``: an Ursa error as it is, an
        OSError as a disk error (the client then drops this replica), any
        other as an internal error, logged with its traceback."""
        if isinstance(e, OSError):
            LOG.error('Disk I/O error serving %r: %s', frame, e)
            e = exception.DiskError(reason='I/O error: %s' % e)
        elif not isinstance(e, exception.UrsaError):
            LOG.error('Serving %r failed', frame, exc_info=e)
            e = exception.InternalError(reason=str(e))
        conn.send(codec.encode_error(frame.opcode, frame.req_id, e))

    def _control(self, conn, frame, _req, _confirmed):
        op = frame.opcode
        if op == codec.FLUSH:
            self._flush(conn, frame)
        elif op == codec.FENCE:
            vol, gen = codec.decode_fence(frame.body)
            if gen <= self.store.generation(vol):
                conn.send(codec.encode_ok(op, frame.req_id))
            else:
                conn.spawn(self._fence(conn, frame, vol, gen))
        elif op == codec.DELETE:
            vol, idx = codec.decode_delete(frame.body)
            n = self.store.delete(vol, None if idx == codec.ALL_CHUNKS
                                  else idx)
            if n:
                LOG.info('Deleted %d replica(s) of volume %s', n, vol)
            conn.send(codec.encode_ok(op, frame.req_id))
        elif op == codec.CHUNK_INFO:
            vol, idx = codec.decode_chunk_info(frame.body)
            conn.send(codec.encode_chunk_info_ok(
                frame.req_id, *self.store.chunk_info(
                    vol, idx, bool(frame.flags & codec.FLAG_DEEP))))
        elif op == codec.INVENTORY:
            vol = codec.decode_inventory(frame.body)
            conn.send(codec.encode_inventory_ok(
                frame.req_id, self.store.inventory(vol)))
        elif op == codec.SNAPSHOT:
            vol, seq, live = codec.decode_snapshot(frame.body)
            if frame.flags & codec.FLAG_DRY_RUN:
                n = self.store.gc(vol, live, upto=seq, dry_run=True)
                conn.send(codec.encode_ok(op, frame.req_id,
                                          codec.encode_u64(n)))
                return
            self.store.adopt_snapseq(vol, seq)
            if frame.flags & codec.FLAG_GC:
                n = self.store.gc(vol, live, upto=seq)
                if n:
                    LOG.info('Volume %s: %d preserved block(s) no '
                             'snapshot needs were freed', vol, n)
            conn.send(codec.encode_ok(op, frame.req_id))
        elif op == codec.REVERT:
            vol, snap, seq = codec.decode_revert(frame.body)
            self.store.adopt_snapseq(vol, seq)
            n = self.store.revert(vol, snap, seq)
            LOG.info('Volume %s: %d chunk(s) reverted to snapshot %d',
                     vol, n, snap)
            conn.spawn(self._reply_after_sync(conn, frame, vol))
        else:
            raise exception.ProtocolError(
                reason='unknown opcode 0x%02x' % op)

    async def _fence(self, conn, frame, vol, gen):
        try:
            await self.authority.confirm_generation(vol, gen)
            conn.send(codec.encode_ok(frame.opcode, frame.req_id))
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    def _read(self, conn, frame, req, confirmed):
        known = self.store.known_epoch(req.volume, req.index)
        if known is not None and req.epoch > known:
            self.authority.view(req.volume, req.index, req.epoch, self.id,
                                confirmed)
        c = self.store.check_epoch(req.volume, req.index, req.epoch)
        if frame.flags & codec.FLAG_RAW:
            if req.offset % BLOCK or req.length % BLOCK \
                    or req.snap or not 0 < req.length // BLOCK \
                    <= codec.MAX_REPAIR_BLOCKS:
                raise exception.InvalidArgument(
                    reason='raw reads are of 1 to %d whole blocks of the '
                           'head' % codec.MAX_REPAIR_BLOCKS)
            if c is None:
                raise exception.NotFound(kind='chunk replica', name='%s/%d'
                                         % (req.volume, req.index))
            conn.send(codec.encode_read_raw_ok(frame.req_id, *self.store.raw(
                c, req.offset // BLOCK,
                req.length // BLOCK)))
            return
        if frame.flags & codec.FLAG_MAP_ONLY:
            states = self.store.block_states(c, req.offset, req.length,
                                             req.snap)
            conn.send(codec.encode_read_ok(frame.req_id, b'', states))
            return
        data, states = self.store.read_blocks(c, req.offset, req.length,
                                              req.snap)
        conn.send(codec.encode_read_ok(
            frame.req_id, data,
            states if frame.flags & codec.FLAG_STATES else None))

    def _check(self, req, confirmed):
        """The master's view of the chunk a write names (its generation
        and epoch checked; see :mod:`.authority`)."""
        # A copy-up writes what readers already see through the parent,
        # and a repair what a replica held: they need no lease (and
        # preserve nothing).
        if not req.flags & (codec.FLAG_IF_ABSENT | codec.FLAG_RAW):
            self.authority.check_generation(req.volume, req.generation,
                                            confirmed)
        return self.authority.view(req.volume, req.index, req.epoch,
                                   self.id, confirmed)

    def _apply(self, req):
        c = self.store.check_epoch(req.volume, req.index, req.epoch,
                                   create=True)
        if req.flags & codec.FLAG_RAW:
            n = req.length // BLOCK
            entries = req.data[:n * ENTRY]
            data = req.data[n * ENTRY:]
            # A repair pushes blocks its primary holds valid: refuse
            # anything else (a torn block, a layer's state).
            if mending.torn_blocks(entries, data) or not \
                    mending.head_entries(entries):
                raise exception.InvalidArgument(
                    reason='a raw REPLICATE must carry valid head blocks')
            self.store.put_raw(c, req.offset // BLOCK, entries,
                               data)
            return c
        self.store.write(c, req.offset, req.data, req.seq, req.zero,
                         req.if_absent, req.length, req.floor)
        return c

    def _replicate(self, conn, frame, req, confirmed):
        self._check(req, confirmed)
        c = self._apply(req)
        if req.fua:
            conn.spawn(self._reply_after_sync(conn, frame, req.volume, c))
        else:
            conn.send(codec.encode_write_ok(frame.req_id, c.epoch,
                                            codec.REPLICATE))

    async def _reply_after_sync(self, conn, frame, volume, chunk=None):
        """Answer once ``volume`` (``chunk`` only: a FUA write, whose reply
        carries the chunk's epoch) is durable."""
        try:
            await self._sync(volume, chunk)
        except (OSError, exception.UrsaError) as e:
            self._reply_error(conn, frame, e)
            return
        if chunk is None:
            conn.send(codec.encode_ok(frame.opcode, frame.req_id))
        else:
            conn.send(codec.encode_write_ok(frame.req_id, chunk.epoch,
                                            frame.opcode))

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
        c = self._apply(req)
        others = req.replicas[1:]
        if _FAULT == 'exit-before-forward' and others:
            LOG.error('URSA_INJECT_FAULT=%s: exiting', _FAULT)
            os._exit(70)
        if not others and not req.fua:
            conn.send(codec.encode_write_ok(frame.req_id, c.epoch))
            return
        # Forward right now, in arrival order, on connected peers; the
        # data view points into the frame, which the forwards keep alive.
        sent = [self._send_replica_now(sid, req, c.epoch) for sid in others]
        if not req.fua and None not in sent:
            self._await_replicas(conn, frame, req, c, others, sent)
            return
        conn.spawn(self._forward(conn, frame, req, c, others, sent))

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
            else:
                conn.spawn(self._conclude(conn, frame, req, c, others,
                                          results))

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
        local sync's, last, with FUA): drop the replicas that failed."""
        epoch = c.epoch
        try:
            failed = []
            for sid, res in zip(others, results, strict=False):
                if res is None:
                    continue
                if isinstance(res, (exception.Fenced, exception.StaleEpoch,
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
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

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
        addr = self._peer_addrs.get(sid)
        if addr is None:
            for s in await self.master.servers():
                self._peer_addrs[s['id']] = (s['address'], s['port'])
            addr = self._peer_addrs.get(sid)
            if addr is None:
                raise exception.NotFound(kind='chunk server', name=sid)
        return addr

    def _flush(self, conn, frame):
        conn.spawn(self._reply_after_sync(conn, frame,
                                          codec.decode_flush(frame.body)))

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
            fut = self._loop.run_in_executor(None, self.store.sync, fds,
                                             dirs)
            entry = (vols, fut)
            self._syncs.append(entry)

            def done(f):
                self._syncs.remove(entry)
                if not f.cancelled() and f.exception() is not None:
                    self.store.sync_failed(vols, f.exception())
            fut.add_done_callback(done)
            waits.append(fut)
        if waits:
            # asyncio.wait, not gather: a cancelled FLUSH must not cancel
            # a sync that other FLUSHes wait for.
            await asyncio.wait(waits)
            for f in waits:
                if f.exception() is not None:
                    raise f.exception()
