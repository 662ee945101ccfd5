"""Repair of torn and diverged blocks, on a chunk's primary (REPAIR).

A power cut during an unflushed overwrite can leave a block's data and its
CRC disagreeing (they live in two files), on one replica or on all of
them; a primary that dies between its own write and the forward leaves
replicas that differ at the same epoch.  REPAIR, sent to the primary by a
reader that met a corrupt block or by ``ursa volume check --repair``, makes
a range identical and valid on every replica:

1. the chunk is held: its writes wait (:mod:`.gate`), so what is
   pushed is the latest content and no write overtakes it;
2. the primary's torn blocks are mended from the first replica that holds
   them valid; a block torn on every replica (a write cut short on all of
   them) keeps the primary's data as it is, its CRC computed again: old or
   new content, as for any unflushed write.  One copy alone is not
   mended: a torn write cannot be told from a rotten block then;
3. the range, as the primary now holds it, is pushed to every other
   replica (REPLICATE with FLAG_RAW: entries and blocks as they are).
"""

import asyncio
import logging

from cinder_ursa import exception
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import ENTRY

LOG = logging.getLogger(__name__)


class RepairMixin:
    """The REPAIR handler of :class:`ChunkServer` (which provides
    ``store``, ``authority``, ``gate``, ``peers``, ``id``,
    ``replication_timeout``, ``_peer``, ``_send_replica`` and
    ``_reply_error``)."""

    def _repair(self, conn, frame, req, confirmed):
        """REPAIR (to the primary): make blocks identical and valid on
        every replica.  The chunk is held meanwhile (its writes wait), so
        what is pushed is the latest content and no write overtakes it."""
        view = self.authority.primary_view(req.volume, req.index, req.epoch,
                                           self.id, confirmed)
        self.gate.hold((req.volume, req.index),
                       self._repair_run(conn, frame, req, view))

    async def _repair_run(self, conn, frame, req, view):
        try:
            fixed = await self._repair_blocks(req, view)
            conn.send(codec.encode_ok(frame.opcode, frame.req_id,
                                      control.encode_u64(fixed)))
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _repair_blocks(self, req, view):
        """Mend this replica's torn blocks in the range (from the first
        replica holding them valid; when none does, their data is taken as
        it is: a torn unflushed write, old or new content), then push the
        range to the other replicas.  Returns the blocks mended here."""
        c = self.store.check_epoch(req.volume, req.index, req.epoch,
                                   create=True)
        entries, data = self.store.raw(c, req.first, req.count)
        torn = mending.torn_blocks(entries, data)
        if torn:
            entries, data = await self._mend(req, view, entries, data, torn)
            self.store.put_raw(c, req.first, entries, data)
            LOG.warning('Chunk %s/%d: %d torn block(s) from block %d '
                        'mended', req.volume, req.index, len(torn),
                        req.first)
        block = BLOCK
        push = codec.WriteRequest(
            req.volume, req.index, view.epoch, 0, 0, req.first * block,
            req.count * block, [], entries + data, codec.FLAG_RAW)
        results = await asyncio.gather(*(
            self._send_replica(sid, push, view.epoch)
            for sid in view.replicas[1:]), return_exceptions=True)
        for sid, res in zip(view.replicas[1:], results, strict=True):
            if isinstance(res, BaseException):
                raise exception.Unavailable(
                    reason='chunk %s/%d: replica %d did not take the '
                           'repair (%s); retry' % (req.volume, req.index,
                                                   sid, res))
        return len(torn)

    def repair_later(self, vol, idx, first, count):
        """Repair blocks of a chunk this server is the primary of, as a
        REPAIR request would (the chunk held), without waiting for it."""
        key = (vol, idx)
        count = min(count, control.MAX_REPAIR_BLOCKS)

        async def run():
            await asyncio.sleep(0.1)      # after the step that asked ends
            try:
                await self.authority.confirm(vol, idx)
            except exception.UrsaError as e:
                LOG.warning('Chunk %s/%d: blocks %d-%d not repaired (%s)',
                            vol, idx, first, first + count - 1, e)
                return
            while self.gate.held(key):
                await asyncio.sleep(0.01)
            view = self.authority.current(vol, idx)
            if view is None or view.replicas[0] != self.id:
                return
            self.gate.hold(key, self._repair_blocks(control.RepairRequest(
                vol, idx, view.epoch, first, count), view))
        task = asyncio.get_running_loop().create_task(run())
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _mend(self, req, view, entries, data, torn):
        entries, data = bytearray(entries), bytearray(data)
        left = set(torn)
        unasked = []
        holders = 1   # replicas that hold the chunk: this one, and...
        for sid in view.replicas[1:]:
            if not left:
                break
            try:
                peer = await self.peers.get(*await self._peer(sid))
                reply = await peer.call(
                    codec.encode_read, req.volume, req.index, view.epoch,
                    req.first * BLOCK,
                    req.count * BLOCK, 0, codec.FLAG_RAW,
                    timeout=self.replication_timeout)
                theirs, their_data = codec.decode_read_raw(reply.body)
            except exception.NotFound:
                continue   # an empty replica: no copy, valid or not
            except exception.UrsaError as e:
                LOG.warning('Chunk %s/%d: replica %d cannot help mend torn '
                            'blocks: %s', req.volume, req.index, sid, e)
                unasked.append(sid)
                continue
            holders += 1
            bad = set(mending.torn_blocks(theirs, their_data))
            for i in sorted(left - bad):
                e, b = i * ENTRY, i * BLOCK
                entries[e:e + ENTRY] = theirs[
                    e:e + ENTRY]
                data[b:b + BLOCK] = their_data[
                    b:b + BLOCK]
                left.discard(i)
        if left and unasked:
            raise exception.Unavailable(
                reason='chunk %s/%d: replicas %s could not be asked for a '
                       'valid copy of torn blocks; retry' % (
                           req.volume, req.index, unasked))
        lone_torn = (req.volume, req.index) in self.store.torn_by_power_loss
        if left and holders < 2 and not lone_torn:
            # One copy: a torn write cannot be told from a rotten block
            # (unless the copy was held when its machine lost power: the
            # other replicas, stale, may have been dropped meanwhile).
            raise exception.ChecksumError(
                reason='chunk %s/%d blocks %s: the only copy does not match '
                       'its CRC; restore or rewrite those blocks' % (
                           req.volume, req.index,
                           sorted(req.first + i for i in left)))
        if left:
            # Torn on every replica: a write cut short on all of them by a
            # power loss (rot striking every copy of one block at once is
            # not plausible), or on the only copy, of a server that lost
            # power.  Its content is the old or the new data (either page
            # holds the last flushed write or one acknowledged after it).
            LOG.warning('Chunk %s/%d: no replica holds blocks %s valid; '
                        'their content here is taken as it is (a write '
                        'torn by a crash)', req.volume, req.index,
                        sorted(req.first + i for i in left))
        return (mending.mend_entries(bytes(entries), bytes(data), left),
                bytes(data))
