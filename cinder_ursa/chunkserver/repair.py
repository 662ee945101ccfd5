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

A REPAIR names the head or one snapshot layer (its sequence): rot in a
block preserved for a snapshot is mended and pushed the same way, from
and to the same layer of the other replicas.  A layer's block torn by a
power cut during its copy-on-write (the copy's entry on disk, not its
data) is first mended from the head, which still holds that version
then (the copy is synced before the head's block is overwritten).

Repairs come from readers, from ``ursa volume check --repair``, and from
the scrub (:mod:`.scrub`), which also asks for them on its own replicas
when it is not the primary (:meth:`RepairMixin.repair_now`).
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
    ``replication_timeout``, ``_peer``, ``_send_replica``, ``_answered``
    and ``_reply_error``)."""

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
            self._answered(frame, 'repair', req.count * BLOCK)
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _repair_blocks(self, req, view):
        """Mend this replica's torn blocks in the range (from the first
        replica holding them valid; when none does, their data is taken as
        it is: a torn unflushed write, old or new content), then push the
        range to the other replicas.  Returns the blocks mended here."""
        c = self.store.check_epoch(req.volume, req.index, req.epoch,
                                   create=True)
        layer = req.layer
        if layer and layer not in c.layers:
            # Pushing "not in this layer" would erase the others' blocks.
            raise exception.NotFound(
                kind='snapshot layer', name='%s/%d layer %d on the primary'
                % (req.volume, req.index, layer))
        entries, data = self.store.raw(c, req.first, req.count, layer)
        torn = mending.torn_blocks(entries, data)
        if torn:
            left = torn
            if layer:
                data, left = self.store.mend_from_head(c, req.first, entries,
                                                       data, torn)
            if left:
                entries, data = await self._mend(req, view, entries, data,
                                                 left)
            self.store.put_raw(c, req.first, entries, data, layer)
            LOG.warning('Chunk %s/%d%s: %d torn block(s) from block %d '
                        'mended', req.volume, req.index, _where(layer),
                        len(torn), req.first)
        block = BLOCK
        push = codec.WriteRequest(
            req.volume, req.index, view.epoch, 0, layer, req.first * block,
            req.count * block, [], entries + data,
            codec.FLAG_RAW | (codec.FLAG_LAYER if layer else 0))
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

    def repair_later(self, vol, idx, first, count, layer=0):
        """Repair blocks of a chunk (of the head, or of ``layer``) whose
        copy here failed its CRC, without waiting for it: here as a REPAIR
        request would (the chunk held) when this server is the primary,
        else by asking the primary."""
        count = min(count, control.MAX_REPAIR_BLOCKS)
        what = (vol, idx, layer, first)
        if what in self._repairing:
            return      # many reads met the same bad block: one repair
        self._repairing.add(what)

        async def run():
            await asyncio.sleep(0.1)      # after the step that asked ends
            try:
                await self.repair_now(vol, idx, first, count, layer)
            except (exception.UrsaError, OSError) as e:
                LOG.warning('Chunk %s/%d%s: blocks %d-%d not repaired (%s)',
                            vol, idx, _where(layer), first,
                            first + count - 1, e)
            finally:
                self._repairing.discard(what)
        task = asyncio.get_running_loop().create_task(run())
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def repair_now(self, vol, idx, first, count, layer=0):
        """Have blocks of a chunk (of the head, or of ``layer``) made
        valid and identical on every replica, and wait for it: by this
        server when it is the chunk's primary (its writes held meanwhile),
        else by the primary (REPAIR).  Returns the blocks the primary
        mended in its own copy; raises ChecksumError when no valid copy
        exists (one replica only), other errors when it could not be
        done now."""
        key = (vol, idx)
        await self.authority.confirm(vol, idx)
        view = self.authority.current(vol, idx)
        if view is None or self.id not in view.replicas:
            raise exception.StaleReplica(
                reason='chunk %s/%d: this server is not one of its replicas '
                       '%s' % (vol, idx, view and view.replicas))
        req = control.RepairRequest(vol, idx, view.epoch, first, count, layer)
        if view.replicas[0] != self.id:
            sid = view.replicas[0]
            peer = await self.peers.get(*await self._peer(sid))
            reply = await peer.call(control.encode_repair, vol, idx,
                                    view.epoch, first, count, layer,
                                    timeout=self.replication_timeout * 2)
            return control.decode_count_ok(reply.body)
        while self.gate.held(key):
            await asyncio.sleep(0.01)
        done = asyncio.get_running_loop().create_future()

        async def step():
            try:
                done.set_result(await self._repair_blocks(req, view))
            except Exception as e:  # noqa: BLE001 - the waiter raises it
                done.set_exception(e)
        self.gate.hold(key, step())
        return await done

    async def _mend(self, req, view, entries, data, torn):
        layer = req.layer
        entries, data = bytearray(entries), bytearray(data)
        left = set(torn)
        unasked = []
        holders = 1   # replicas that hold the chunk: this one, and...
        held = set()  # layer blocks another replica holds (valid or not)
        for sid in view.replicas[1:]:
            if not left:
                break
            try:
                peer = await self.peers.get(*await self._peer(sid))
                # FLAG_RAW: ``snap`` names a layer (0: the head).
                reply = await peer.call(
                    codec.encode_read, req.volume, req.index, view.epoch,
                    req.first * BLOCK,
                    req.count * BLOCK, layer, codec.FLAG_RAW,
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
            if layer:
                # A replica whose layer lacks a block (an all-zero entry)
                # holds no copy of it: that is not a valid one.
                lacking = {i for i in left
                           if not any(theirs[i * ENTRY:(i + 1) * ENTRY])}
                bad |= lacking
                held.update(left - lacking)
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
        if layer:
            # A layer block no other replica holds has one copy.
            holders = 2 if left <= held else 1
        lone_torn = (req.volume, req.index) in self.store.torn_by_power_loss
        if left and holders < 2 and not lone_torn:
            # One copy: a torn write cannot be told from a rotten block
            # (unless the copy was held when its machine lost power: the
            # other replicas, stale, may have been dropped meanwhile).
            raise exception.ChecksumError(
                reason='chunk %s/%d%s blocks %s: the only copy does not '
                       'match its CRC; restore or rewrite those blocks' % (
                           req.volume, req.index, _where(layer),
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


def _where(layer):
    """Where in a chunk a message speaks of: a snapshot layer, or the
    head (nothing said)."""
    return ' layer %d' % layer if layer else ''
