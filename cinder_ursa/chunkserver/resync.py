"""Crash resync: replicas made identical again after a crash (RESYNC).

A crash can leave a chunk's replicas different at the same epoch, in
blocks written but not flushed: a primary killed between its own write
and the forward (a client that dies too never writes again what it did
not see acknowledged), a power cut that loses what a replica held only in
its page cache.  None of these is a flushed write, so either content is
a correct answer; but every replica must give the same one.

RESYNC, sent to a chunk's primary, holds the chunk (its writes wait, see
:mod:`.gate`) and compares the metadata entries of every replica with
its own, with no data read (as a copy does, see :mod:`.rebuild`).  The
blocks of the head that differ anywhere are made identical by REPAIR's
logic (:mod:`.repair`): the primary's block is the authority when it
matches its CRC, a torn one is first mended from a replica that holds it
valid (no majority vote, no primary that wins with a block that fails its
CRC); the layer blocks that differ are pushed to the replicas that
differ.

It is asked for:

* by a chunk server that starts after a run that did not stop cleanly,
  for every chunk it holds a replica of (from the primary, or run here
  when it is the primary).  Until a chunk is done, its copy here serves
  no read unless this server is the chunk's primary: it may lack what a
  crash lost, while the primary's content is what the resync makes
  everyone hold;
* by the master, when a primary was dropped from a chunk (it failed, and
  may have forwarded its last write to some replicas only): the new
  primary resyncs the chunk.
"""

import asyncio
import logging
import os

from cinder_ursa import exception
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol.chunkfile import BLOCK

LOG = logging.getLogger(__name__)

CONCURRENCY = 4          # chunks resynced at once after a crash
RESYNC_TIMEOUT = 300.0   # s a primary may take to resync one chunk
RETRY_MAX = 30.0         # s between rounds of retries at most
SCAN_BLOCKS = 256        # blocks read at once checking for torn ones


class ResyncMixin:
    """The RESYNC handler of :class:`ChunkServer`, and the resync of its
    chunks after a crash (it provides ``store``, ``authority``, ``gate``,
    ``peers``, ``id``, ``_peer``, ``_differences``, ``_push_runs``,
    ``_repair_blocks``, ``recorded``, ``_answered`` and
    ``_reply_error``)."""

    _suspect = frozenset()

    def _resync(self, conn, frame, req, confirmed):
        view = self.authority.primary_view(req.volume, req.index, req.epoch,
                                           self.id, confirmed)
        self.gate.hold((req.volume, req.index),
                       self._resync_run(conn, frame, req, view))

    async def _resync_run(self, conn, frame, req, view):
        try:
            fixed = await self._resync_blocks(req.volume, req.index, view)
            conn.send(codec.encode_ok(frame.opcode, frame.req_id,
                                      control.encode_u64(fixed)))
            self._answered(frame, 'catchup', fixed * BLOCK)
        except Exception as e:  # noqa: BLE001 - answer, never hang
            self._reply_error(conn, frame, e)

    async def _resync_blocks(self, vol, idx, view, why='after a crash'):
        """Make every replica's blocks identical to this copy's where they
        differ (the chunk is held); return the blocks made so.  ``why``
        they may differ, for the log."""
        c = self.store.check_epoch(vol, idx, view.epoch, create=True)
        head = set()
        layers = []     # (address, runs) of layer blocks to push
        for sid in view.replicas[1:]:
            addr = await self._peer(sid)
            runs = await self._differences(c, addr)
            for layer, first, count in runs:
                if not layer:
                    head.update(range(first, first + count))
            runs = [r for r in runs if r[0]]
            if runs:
                layers.append((addr, runs))
        fixed = 0
        for first, count in _spans(sorted(head), control.MAX_REPAIR_BLOCKS):
            await self._repair_blocks(control.RepairRequest(
                vol, idx, view.epoch, first, count), view)
            fixed += count
            # Pushed to every other replica.
            self.recorded.recovery_bytes += count * BLOCK * (
                len(view.replicas) - 1)
        for addr, runs in layers:
            # Not throttled: the chunk's writes wait meanwhile.
            fixed += await self._push_runs(c, addr, runs,
                                           throttled=False) // BLOCK
        if fixed:
            LOG.warning('Chunk %s/%d: %d block(s) differed between replicas '
                        '%s and were made identical', vol, idx, fixed, why)
        return fixed

    # --- after a crash of this server -------------------------------------

    def suspect_after_crash(self):
        """This server's last run did not stop cleanly: every replica it
        holds is to be resynced before it serves reads (see the module).
        Called before the server serves anything."""
        self._suspect = {(vol, idx) for vol, idx, _ in self.store.chunk_list()
                         if self._resyncable(vol, idx)}
        for key in list(self.store.torn_by_power_loss - self._suspect):
            # Not a replica (stale, joining): checked when it joins.
            self.store.torn_scanned(*key, dropped=True)
        self.store.set_resyncing(bool(self._suspect))
        if self._suspect:
            LOG.warning('After a crash: %d replica(s) are compared with '
                        'their chunks\' other replicas before they serve '
                        'reads', len(self._suspect))

    def _resyncable(self, vol, idx):
        c = self.store.held(vol, idx)
        return c is not None and not c.stale and not c.joining

    def check_not_suspect(self, volume, index, epoch, confirmed):
        """Refuse a read of a replica not resynced yet since a crash,
        unless this server is the chunk's primary (the master's view of
        the chunk at ``epoch`` is confirmed first when it is not known)."""
        if (volume, index) in self._suspect:
            view = self.authority.view(volume, index, epoch, self.id,
                                       confirmed)
            if view.replicas[0] != self.id:
                # Unavailable, not StaleReplica: the client's map is
                # right, it reads another replica of it.
                raise exception.Unavailable(
                    reason='the replica of chunk %s/%d on this server is '
                           'being compared with the others after a crash '
                           'and serves no reads yet; read another replica'
                           % (volume, index))

    async def resync_suspects(self):
        """Resync every suspect replica, a few at a time, retrying those
        that fail (a primary or the master unreachable) with backoff."""
        total = len(self._suspect)
        if not total:
            self.store.set_resyncing(False)
            return
        sem = asyncio.Semaphore(CONCURRENCY)
        delay = 1.0
        while self._suspect:
            keys = sorted(self._suspect)
            await asyncio.gather(*(self._resync_one(k, sem) for k in keys))
            if self._suspect:
                LOG.warning('%d of %d replica(s) not resynced yet; retrying '
                            'in %.0f s', len(self._suspect), total, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self.store.set_resyncing(False)
        LOG.info('Every replica held after the crash (%d) is resynced', total)

    async def _resync_one(self, key, sem):
        vol, idx = key
        async with sem:
            try:
                if not self._resyncable(vol, idx):
                    self.store.torn_scanned(vol, idx, dropped=True)
                    self._suspect.discard(key)
                    return
                try:
                    await self.authority.confirm(vol, idx)
                except exception.NotFound:
                    self.store.torn_scanned(vol, idx, dropped=True)
                    self._suspect.discard(key)    # its volume is gone
                    return
                view = self.authority.current(vol, idx)
                if view is None or self.id not in view.replicas:
                    # Dropped: a copy follows, which checks it first.
                    self.store.torn_scanned(vol, idx, dropped=True)
                    self._suspect.discard(key)
                    return
                if view.replicas[0] == self.id:
                    await self._resync_here(key, view)
                else:
                    peer = await self.peers.get(
                        *await self._peer(view.replicas[0]))
                    reply = await peer.call(control.encode_resync, vol, idx,
                                            view.epoch,
                                            timeout=RESYNC_TIMEOUT)
                    control.decode_count_ok(reply.body)
                if key in self.store.torn_by_power_loss:
                    await self._repair_torn(vol, idx)
                    self.store.torn_scanned(vol, idx)
                self._suspect.discard(key)
            except exception.UrsaError as e:
                LOG.info('Chunk %s/%d: resync after the crash failed (%s); '
                         'retrying', vol, idx, e)
            except Exception:  # noqa: BLE001 - retried, never given up
                LOG.exception('Chunk %s/%d: resync after the crash failed; '
                              'retrying', vol, idx)

    async def _repair_torn(self, vol, idx):
        """After this server's machine lost power: every block of its
        copy (head and layers) is read, and those that fail their CRC are
        repaired (see :mod:`.repair`).  A write the cut tore can leave the
        same metadata entry on every replica and the data on this one
        only half written: the comparison of entries does not see it.
        Returns the blocks repaired."""
        c = self.store.held(vol, idx)
        if c is None:
            return 0
        loop = asyncio.get_running_loop()
        fixed = 0
        for layer in [0] + c.layer_ids():
            fds = self.store.dup_files(c, layer)
            if fds is None:
                continue
            data_fd, meta_fd, nblocks = fds
            bad = []
            try:
                for at in range(0, nblocks, SCAN_BLOCKS):
                    found, _ = await loop.run_in_executor(
                        None, mending.check_unit, data_fd, meta_fd, at,
                        min(SCAN_BLOCKS, nblocks - at))
                    bad.extend(found)
            finally:
                os.close(data_fd)
                os.close(meta_fd)
            # Read again in the event loop: a write may have been half
            # done under the worker thread's read.
            bad = [b for first, count in _spans(bad, control.MAX_REPAIR_BLOCKS)
                   for b in self._torn_now(c, layer, first, count)]
            for first, count in _spans(bad, control.MAX_REPAIR_BLOCKS):
                await self.repair_now(vol, idx, first, count, layer)
                fixed += count
        if fixed:
            LOG.warning('Chunk %s/%d: %d block(s) torn by the power cut '
                        'repaired', vol, idx, fixed)
        return fixed

    def _torn_now(self, c, layer, first, count):
        if self.store.held(c.volume, c.index) is not c:
            return []
        entries, data = self.store.raw(c, first, count, layer)
        return [first + i for i in mending.torn_blocks(entries, data)]

    async def _resync_here(self, key, view, why='after a crash'):
        """RESYNC of a chunk this server is the primary of, held as a
        request for it would be; the blocks made identical."""
        while self.gate.held(key):
            await asyncio.sleep(0.01)
        done = asyncio.get_running_loop().create_future()

        async def step():
            try:
                done.set_result(await self._resync_blocks(*key, view, why))
            except Exception as e:
                done.set_exception(e)
                raise
        self.gate.hold(key, step())
        return await done


def _spans(blocks, most):
    """Runs (first, count) of consecutive numbers in sorted ``blocks``,
    each of ``most`` at most."""
    out = []
    for b in blocks:
        if out and out[-1][0] + out[-1][1] == b and out[-1][1] < most:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out
