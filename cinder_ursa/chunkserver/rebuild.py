"""REBUILD: a chunk's primary brings another chunk server's copy of the
chunk up to date, head and snapshot layers, while the chunk keeps taking
writes, and has the master make it a replica.

1. The target keeps what it holds of the chunk (a server that returns
   after an absence, or a copy given up halfway, still has most of it):
   its copy becomes a joining copy, which serves no reads (ENTRIES with
   FLAG_JOIN; a stale mark is cleared).
2. The master adds the target to the chunk's joining copies (epoch + 1):
   from then on the primary forwards every write to it too
   (:mod:`.replication`).
3. Rounds of comparison: the target sends the metadata entries of its
   head and layers (CRC and word of every block, no data), the primary
   compares them with its own, and pushes the blocks whose entries
   differ, raw (entries and data as stored), in each layer where they
   differ: a returning server gets only what changed while it was away,
   a server with no copy gets every block in use, and a layer the target
   has and this copy not is emptied.  A block is read and sent in one
   turn of the event loop, on the connection the forwarded writes take:
   a write applied before the read is in the push (and the copy of it
   forwarded earlier or later changes nothing), a write applied after it
   reaches the target behind the push.  Rounds go on until a comparison
   finds no difference (writes still on their way make some), a few
   rounds at most.  Comparing every entry, not a record of the writes
   made while the target was away, also mends what a crash of the target
   lost (writes it had taken but not made durable).
4. The target flushes the volume, so its copy is durable before it
   counts; a revert or a snapshot collection of the volume during the
   copy (broadcast, not forwarded in write order) makes it start again.
5. The master makes the target a replica (epoch + 1), and every replica,
   the target included, is told the new epoch.

Any failure gives the copy up (the master removes it from the joining
copies, and the target is told, so its copy is marked stale and no longer
looks like one being made) and is answered to the master, whose planner
tries again later; the target keeps what it received, so the next try
copies less.

Two entries that are equal are taken for equal blocks: their CRC32C and
their word (state and snapshot sequence) match.  A block rewritten while
its server was away with different data of the same CRC32C (one chance in
2**32 per block rewritten) would be missed; the deep check of
``ursa volume check --deep`` compares data.
"""

import asyncio
import logging

from cinder_ursa import exception
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)

BATCH = 256                 # blocks per raw push at most (1 MiB)
WINDOW = 8 * 1024 * 1024    # bytes of pushes in flight to the target
ROUNDS = 8                  # comparisons before the copy is given up
SCAN = control.MAX_ENTRY_BLOCKS
TELL_ABANDONED_WAIT = 5.0   # s the target of a copy given up is told in


class RebuildMixin:
    """The REBUILD handler of :class:`ChunkServer` (which provides
    ``store``, ``authority``, ``master``, ``peers``, ``throttle``, ``id``,
    ``replication_timeout``, ``recorded``, ``_peer``, ``_send_replica``,
    ``_answered`` and ``_reply_error``)."""

    def _rebuild(self, conn, frame, req, confirmed):
        view = self.authority.primary_view(req.volume, req.index, req.epoch,
                                           self.id, confirmed)
        if req.target in view.replicas:
            raise exception.Conflict(
                reason='chunk server %d is already a replica of chunk %s/%d'
                % (req.target, req.volume, req.index))
        conn.spawn(self._rebuild_run(conn, frame, req))

    async def _rebuild_run(self, conn, frame, req):
        try:
            copied = await self._rebuild_chunk(req)
            conn.send(codec.encode_ok(frame.opcode, frame.req_id,
                                      control.encode_u64(copied)))
            self._answered(frame, 'catchup', copied)
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _rebuild_chunk(self, req):
        vol, idx, target = req.volume, req.index, req.target
        addr = await self._peer(target)
        rewrites = self.store.rewrites(vol)
        old = await self._entries(addr, vol, idx, 0, 0, join=True)
        try:
            # Inside: a join the master recorded but whose answer was lost
            # (it failed over) is abandoned below, not left to time out.
            chunk = await self.master.change_members(vol, idx, 'join',
                                                     target, req.epoch)
            c = self._adopt(vol, chunk)
            if old is None:
                LOG.info('Chunk %s/%d: server %d has no copy: copying every '
                         'block in use (epoch %d)', vol, idx, target, c.epoch)
            else:
                LOG.info('Chunk %s/%d: server %d has a copy of epoch %d: '
                         'copying the blocks that differ (epoch %d)', vol,
                         idx, target, old[0], c.epoch)
            copied = 0
            for _ in range(ROUNDS):
                runs = await self._differences(c, addr)
                if not runs:
                    break
                copied += await self._push_runs(c, addr, runs)
            else:
                raise exception.Unavailable(
                    reason='chunk %s/%d kept differing on server %d after '
                           '%d rounds' % (vol, idx, target, ROUNDS))
            # Durable on the target before it counts as a replica.
            peer = await self.peers.get(*addr)
            reply = await peer.call(codec.encode_flush, vol,
                                    timeout=max(self.replication_timeout,
                                                60.0))
            codec.reply_status(reply.body)
            if self.store.rewrites(vol) != rewrites:
                # A revert or a snapshot collection is broadcast, not
                # forwarded in the order of the writes: the copy may
                # have missed it in ways the entries do not show.
                raise exception.Unavailable(
                    reason='volume %s was reverted or collected during the '
                           'copy of chunk %d; copy again' % (vol, idx))
            chunk = await self._change(vol, idx, 'promote', target)
        except BaseException as e:
            LOG.warning('Chunk %s/%d: copy to server %d given up: %s', vol,
                        idx, target, e)
            try:
                chunk = await self._change(vol, idx, 'abandon', target)
                self._adopt(vol, chunk)
            except exception.Conflict as e2:
                # Not joining at the master (the join failed, or another
                # change gave it up): the target took its copy for a
                # joining one at the first ENTRIES all the same.  (Should
                # the planner have started a new copy to it meanwhile,
                # that one fails at its next ENTRIES and is tried again:
                # a stale copy is never promoted.)
                view = self.authority.current(vol, idx)
                if view is not None and target not in view.replicas and \
                        target not in view.joining:
                    await self._tell_abandoned(vol, idx, {
                        'epoch': view.epoch,
                        'replicas': [{'id': i} for i in view.replicas]},
                        target)
                else:
                    LOG.warning('Chunk %s/%d: the copy on server %d was '
                                'not abandoned (%s)', vol, idx, target, e2)
            except exception.UrsaError as e2:
                LOG.warning('Chunk %s/%d: abandoning the copy on server %d '
                            'failed too (%s); a drop at its next failed '
                            'write does it', vol, idx, target, e2)
            else:
                await self._tell_abandoned(vol, idx, chunk, target)
            raise
        c = self._adopt(vol, chunk)
        await self._announce_epoch(vol, idx, c.epoch,
                                   [r['id'] for r in chunk['replicas']])
        LOG.info('Chunk %s/%d: server %d is a replica (epoch %d, %d bytes '
                 'copied)', vol, idx, target, c.epoch, copied)
        return copied

    async def _change(self, vol, idx, action, target):
        """Promote or abandon the target's copy at the chunk's current
        epoch (another change, a dropped replica, may have bumped it)."""
        for attempt in range(3):
            view = self.authority.current(vol, idx)
            if (view is None or target not in view.joining) and not attempt:
                # Perhaps a join whose answer was lost: ask the master.
                await self.authority.confirm(vol, idx)
                view = self.authority.current(vol, idx)
            if view is None or target not in view.joining:
                raise exception.Conflict(
                    reason='chunk server %d no longer joins chunk %s/%d'
                    % (target, vol, idx))
            try:
                return await self.master.change_members(vol, idx, action,
                                                        target, view.epoch)
            except exception.Conflict:
                await self.authority.confirm(vol, idx)
        raise exception.Conflict(reason='chunk %s/%d kept changing' % (
            vol, idx))

    def _adopt(self, vol, chunk):
        """Learn the master's ``chunk`` and its epoch; return our copy."""
        self.authority.learn(vol, chunk, chunk['min_replicas'])
        c = self.store.check_epoch(vol, chunk['index'], chunk['epoch'],
                                   create=True)
        return c

    async def _entries(self, addr, vol, idx, first, count, join=False):
        """(epoch, blocks in use, {layer: entries}) of the target's copy
        (None: it has none)."""
        peer = await self.peers.get(*addr)
        reply = await peer.call(control.encode_entries, vol, idx, first,
                                count, join, timeout=self.replication_timeout)
        try:
            return control.decode_entries_ok(reply.body)
        except exception.NotFound:
            return None

    async def _differences(self, c, addr):
        """[(layer, first, count)]: the runs of blocks whose entries
        differ between this copy and the target's."""
        runs = []
        first, end = 0, self.store.blocks_in_use(c)
        while True:
            theirs = await self._entries(addr, c.volume, c.index, first, SCAN)
            if theirs is not None:
                end = max(end, theirs[1])
                theirs = theirs[2]
            mine = dict(self.store.entry_tables(c, first, SCAN))
            runs.extend(differing_runs(mine, theirs or {}, first))
            first += SCAN
            if first >= end:
                return runs

    async def _push_runs(self, c, addr, runs, throttled=True):
        """Push the blocks of ``runs`` (layer, first, count), raw, with at
        most WINDOW bytes in flight, at the recovery rate (``throttled``;
        not while the chunk's writes are held); return the bytes sent."""
        sent = 0
        pending, inflight = [], 0
        for layer, first, count in runs:
            for at in range(first, first + count, BATCH):
                n = min(BATCH, first + count - at)
                if throttled:
                    await self.throttle.take(n * BLOCK)
                peer = self.peers.connected(*addr) or \
                    await self.peers.get(*addr)
                # Read and send in one turn of the loop: see the module.
                entries, data = self.store.raw(c, at, n, layer)
                self._check_source(c, at, layer, entries, data)
                flags = codec.FLAG_RAW | (codec.FLAG_LAYER if layer else 0)
                push = codec.WriteRequest(c.volume, c.index, c.epoch, 0,
                                          layer, at * BLOCK, n * BLOCK, [],
                                          entries + data, flags)
                rid = aio.next_req_id()
                pending.append((peer, rid, peer.send(
                    rid, codec.encode_replicate(rid, push, c.epoch))))
                sent += len(data)
                inflight += len(data)
                self.recorded.recovery_bytes += len(data)
                if inflight >= WINDOW:
                    await self._settle(pending)
                    inflight = 0
        await self._settle(pending)
        return sent

    def _check_source(self, c, first, layer, entries, data):
        """Refuse to send blocks that fail their CRC here (the target
        would refuse them): a torn or rotten block (of the head or of a
        layer) is repaired from another replica meanwhile, and the copy is
        tried again later; the target is not to blame."""
        torn = mending.torn_blocks(entries, data)
        if not torn:
            return
        blocks = [first + i for i in torn]
        if layer:
            self.repair_later(c.volume, c.index, blocks[0],
                              blocks[-1] - blocks[0] + 1, layer)
        else:
            # To the end of the chunk: a crash tears blocks all over it,
            # and a copy tried again for each window would wait longer
            # each time (the master holds a chunk with a bad source back).
            end = max(self.store.blocks_in_use(c), blocks[-1] + 1)
            self.repair_later(c.volume, c.index, blocks[0],
                              end - blocks[0])
        raise exception.ChecksumError(
            reason='chunk %s/%d %s blocks %s fail their CRC on this server '
                   '(the copy\'s source); %s' % (
                       c.volume, c.index, 'layer %d' % layer if layer
                       else 'head', blocks,
                       'they are being repaired from another replica, the '
                       'copy is tried again later'))

    async def _settle(self, pending):
        """Wait for the replies of the pushes in ``pending`` (emptied)."""
        try:
            while pending:
                peer, rid, fut = pending[0]
                reply = await peer.wait(rid, fut, self.replication_timeout)
                del pending[0]
                codec.decode_write_ok(reply.body)
        finally:
            for peer, rid, _ in pending:
                peer.forget(rid)
            pending.clear()

    async def _tell_abandoned(self, vol, idx, chunk, target):
        """Tell the target of a copy given up that the master no longer
        counts on it: the chunk's new epoch (an empty copy-up), which it
        confirms with the master, which lists it neither as a replica nor
        as a joining copy, so it marks its copy stale (kept for the next
        try, serving nothing).  Done before the REBUILD is answered: the
        master's planner starts no new copy of the chunk before, so this
        does not mark a newer copy stale.  Untold (the target is dead or
        cut off), its copy stays joining until the joining-copy sweep."""
        bump = codec.WriteRequest(vol, idx, chunk['epoch'], 0, 0, 0, 0,
                                  [r['id'] for r in chunk['replicas']], b'',
                                  codec.FLAG_IF_ABSENT)
        try:
            await asyncio.wait_for(
                self._send_replica(target, bump, chunk['epoch']),
                TELL_ABANDONED_WAIT)
        except (exception.StaleReplica, exception.StaleEpoch):
            pass        # told (or it has moved on to a newer epoch)
        except (exception.UrsaError, TimeoutError) as e:
            LOG.info('Chunk %s/%d: server %d was not told its copy was '
                     'given up (%s); the joining-copy sweep marks it stale',
                     vol, idx, target, e or 'no answer')
        else:
            LOG.warning('Chunk %s/%d: server %d took epoch %d as a member '
                        'after its copy was given up', vol, idx, target,
                        chunk['epoch'])

    async def _announce_epoch(self, vol, idx, epoch, replicas):
        """Every replica learns the new epoch now (an empty copy-up carries
        it): the new one stops being a joining copy."""
        bump = codec.WriteRequest(vol, idx, epoch, 0, 0, 0, 0, replicas, b'',
                                  codec.FLAG_IF_ABSENT)
        for sid in replicas:
            if sid == self.id:
                continue
            try:
                await self._send_replica(sid, bump, epoch)
            except exception.UrsaError as e:
                LOG.warning('Chunk %s/%d: server %d did not take epoch %d '
                            '(%s); it learns it with the next write', vol,
                            idx, sid, epoch, e)


def differing_runs(mine, theirs, first):
    """[(layer, first, count)]: the runs of blocks, from block ``first``,
    whose entries differ between two copies' tables ({layer: entry bytes};
    missing entries are zeros: absent, not in the layer)."""
    runs = []
    for layer in sorted(set(mine) | set(theirs)):
        a, b = mine.get(layer, b''), theirs.get(layer, b'')
        if a == b:
            continue
        n = max(len(a), len(b))
        a, b = a.ljust(n, b'\0'), b.ljust(n, b'\0')
        start = None
        step = 256 * ENTRY        # skip equal stretches quickly
        for base in range(0, n, step):
            if start is None and a[base:base + step] == b[base:base + step]:
                continue
            for pos in range(base, min(base + step, n), ENTRY):
                same = a[pos:pos + ENTRY] == b[pos:pos + ENTRY]
                if not same and start is None:
                    start = pos
                elif same and start is not None:
                    runs.append((layer, first + start // ENTRY,
                                 (pos - start) // ENTRY))
                    start = None
        if start is not None:
            runs.append((layer, first + start // ENTRY,
                         (n - start) // ENTRY))
    return runs
