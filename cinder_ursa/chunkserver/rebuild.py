"""REBUILD: a chunk's primary gives another chunk server a full copy of
the chunk, head and snapshot layers, while the chunk keeps taking writes,
and has the master make it a replica.

1. The target's old copy of the chunk, if any, is deleted.
2. The master adds the target to the chunk's joining copies (epoch + 1):
   from then on the primary forwards every write to it too
   (:mod:`.replication`), and it answers no read.
3. The chunk is copied in batches of blocks, raw (entries and data as
   stored), the head and every layer (and the layer of the current
   snapshot sequence, which forwarded writes may fill on the target
   before the blocks they preserve there arrive).  A batch is read and
   sent in one turn of the event loop, on the connection the forwarded
   writes take:
   a write applied before the read is in the batch (and the copy of it
   forwarded earlier or later changes nothing), a write applied after it
   reaches the target behind the batch.
4. The copies' block checksums and layer digests are compared; blocks
   that differ (writes still on their way) are copied again, a few
   rounds at most.  The target then flushes the volume, so its copy is
   durable before it counts; a revert or a snapshot collection of the
   volume during the copy (broadcast, not forwarded in write order) makes
   it start again.
5. The master makes the target a replica (epoch + 1), and every replica,
   the target included, is told the new epoch.

Any failure gives the copy up (the master removes it from the joining
copies) and is answered to the master, whose planner tries again later.
"""

import logging

from cinder_ursa import exception
from cinder_ursa.common import checksum
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)

BATCH = 256                 # blocks per raw push (1 MiB)
VERIFY_ROUNDS = 5


class RebuildMixin:
    """The REBUILD handler of :class:`ChunkServer` (which provides
    ``store``, ``authority``, ``master``, ``peers``, ``id``,
    ``replication_timeout``, ``_peer``, ``_send_replica`` and
    ``_reply_error``)."""

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
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _rebuild_chunk(self, req):
        vol, idx, target = req.volume, req.index, req.target
        addr = await self._peer(target)
        peer = await self.peers.get(*addr)
        rewrites = self.store.rewrites(vol)
        await peer.call(control.encode_delete, vol, idx,
                        timeout=self.replication_timeout)
        chunk = await self.master.change_members(vol, idx, 'join', target,
                                                 req.epoch)
        c = self._adopt(vol, chunk)
        LOG.info('Chunk %s/%d: copying it to server %d (epoch %d)', vol,
                 idx, target, c.epoch)
        try:
            copied = await self._copy_blocks(c, addr, 0,
                                             self.store.blocks_in_use(c))
            for _ in range(VERIFY_ROUNDS):
                differ = await self._differing_blocks(c, addr)
                if not differ:
                    break
                for first, count in differ:
                    copied += await self._copy_blocks(c, addr, first, count)
            else:
                raise exception.Unavailable(
                    reason='chunk %s/%d kept differing on server %d after '
                           '%d rounds' % (vol, idx, target, VERIFY_ROUNDS))
            # Durable on the target before it counts as a replica.
            peer = await self.peers.get(*addr)
            reply = await peer.call(codec.encode_flush, vol,
                                    timeout=max(self.replication_timeout,
                                                60.0))
            codec.reply_status(reply.body)
            if self.store.rewrites(vol) != rewrites:
                # A revert or a snapshot collection is broadcast, not
                # forwarded in the order of the writes: the copy may
                # have missed it in ways checksums do not show.
                raise exception.Unavailable(
                    reason='volume %s was reverted or collected during the '
                           'copy of chunk %d; copy again' % (vol, idx))
            chunk = await self._change(vol, idx, 'promote', target)
        except BaseException as e:
            LOG.warning('Chunk %s/%d: copy to server %d given up: %s', vol,
                        idx, target, e)
            try:
                self._adopt(vol, await self._change(vol, idx, 'abandon',
                                                    target))
            except exception.UrsaError as e2:
                LOG.warning('Chunk %s/%d: abandoning the copy on server %d '
                            'failed too (%s); a drop at its next failed '
                            'write does it', vol, idx, target, e2)
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
        for _ in range(3):
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

    async def _copy_blocks(self, c, addr, first, count):
        """Push blocks ``first .. first+count-1`` of the head and of every
        layer, raw, in batches; return the bytes sent."""
        sent = 0
        for at in range(first, first + count, BATCH):
            n = min(BATCH, first + count - at)
            peer = self.peers.connected(*addr) or \
                await self.peers.get(*addr)
            # Read and send in one turn of the loop: see the module.  The
            # layer of the current snapshot sequence goes too, even where
            # this copy has nothing in it: a write that reached the target
            # before its blocks may have preserved there a block the
            # target did not have yet, which this copy did not.
            pending = []
            current = self.store.snapseq(c.volume)
            layers = sorted(set(c.layer_ids()) | ({current} if current
                                                  else set()))
            for layer in [0] + layers:
                entries, data = self.store.raw(c, at, n, layer)
                flags = codec.FLAG_RAW | (codec.FLAG_LAYER if layer else 0)
                push = codec.WriteRequest(c.volume, c.index, c.epoch, 0,
                                          layer, at * BLOCK, n * BLOCK, [],
                                          entries + data, flags)
                rid = aio.next_req_id()
                pending.append((rid, peer.send(rid, codec.encode_replicate(
                    rid, push, c.epoch))))
                sent += len(data)
            for rid, fut in pending:
                reply = await peer.wait(rid, fut, self.replication_timeout)
                codec.decode_write_ok(reply.body)
        return sent

    async def _differing_blocks(self, c, addr):
        """Ranges (first, count) whose checksums differ between this copy
        and the target's; the whole chunk when the layers differ."""
        mine = self.store.chunk_info(c.volume, c.index)
        peer = await self.peers.get(*addr)
        reply = await peer.call(control.encode_chunk_info, c.volume, c.index,
                                timeout=self.replication_timeout)
        try:
            theirs = control.decode_chunk_info_ok(reply.body)
        except exception.NotFound:
            theirs = (0, 0, 0, [])      # nothing sent: a chunk not written
        if mine[2] != theirs[2]:
            return [(0, self.store.blocks_in_use(c))]
        a, b = mine[3], theirs[3]
        n = max(len(a), len(b))
        zero = checksum.ZERO_CRC
        out = []
        for i in range(n):
            if (a[i] if i < len(a) else zero) != (b[i] if i < len(b)
                                                   else zero):
                if out and out[-1][0] + out[-1][1] == i:
                    out[-1] = (out[-1][0], out[-1][1] + 1)
                else:
                    out.append((i, 1))
        return out

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
