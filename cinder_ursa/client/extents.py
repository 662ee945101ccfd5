"""One chunk extent to or from its replicas: a read tried on each replica
in turn (or read directly from a replica on this host), with a repair asked
of the primary when a replica serves a corrupt block; a write sent to the
primary (also without a task, :meth:`ExtentIO.write_soon`); and the retries
of both.

Retry policy per extent:

* StaleEpoch / StaleReplica: refresh the map entry, retry at once;
* primary unreachable or its disk failing: report it to the master (it
  is dropped from the replica set, epoch + 1), refresh, retry on the new
  primary;
* a replica's disk failing or a bad checksum on a read: read another
  replica; a replica that did not answer in time or could not be reached
  is read last for ``SUSPECT_FOR`` (30 s), so a hung server costs one
  read its timeout, not every read;
* InsufficientReplicas, or a chunk server that cannot reach the master to
  confirm a new epoch or lease generation (Unavailable): wait with
  backoff, read another replica; fail when ``io_timeout`` ends;
* Fenced (a multiattach volume's writer; on a ticket connection also
  NotAuthorized, its ticket revoked with the generation): ask the master
  at once whether this writer was re-admitted at a newer generation
  (another host's writers were fenced or detached: see
  ``Volume._readmit``); if so, retry under it, else fail;
* Fenced, OutOfRange, NoSpace, InvalidArgument: fail at once.
"""

import asyncio
import logging
import time

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)


class ExtentIO:
    """Part of :class:`~cinder_ursa.client.volume.Volume`."""

    async def _retry_wait(self, deadline, attempt, err):
        if time.monotonic() >= deadline:
            raise err
        await asyncio.sleep(min(0.05 * (2 ** attempt), 1.0))

    async def _read_extent(self, index, offset, length, flags=0,
                           since=None):
        """The bytes of a chunk range; with FLAG_STATES (data, states);
        with FLAG_MAP_ONLY the states alone (one byte per block); with
        ``since`` (a snapshot sequence; FLAG_MAP_ONLY) whether each block
        changed after that snapshot (codec.FLAG_SINCE)."""
        deadline = time.monotonic() + self.cluster.io_timeout
        attempt = 0
        while True:
            attempt += 1
            info = await self._chunk(index, False)
            if info is None:
                nblocks = ((offset + length - 1) // BLOCK - offset // BLOCK
                           + 1)
                if flags & codec.FLAG_MAP_ONLY:
                    return bytes(nblocks)
                if flags & codec.FLAG_STATES:
                    return bytes(length), bytes(nblocks)
                return bytes(length)
            last = None
            corrupt = 0
            self.cluster.refresh_slow(self.id)
            if not flags and self._local_reads():
                local = await self.cluster.local_replicas()
                skipped = False
                for sid, _, _ in info.replicas:
                    if local.serves(sid):
                        if sid in self.cluster.slow:
                            # Its disk is slow: another replica's.
                            skipped = True
                            continue
                        data = local.read(sid, self.id, index, offset,
                                          length)
                        if data is not None:
                            self.cluster.reads_diverted += skipped
                            return data
                        break
            readmitted = False
            for sid, host, port in self.cluster.read_order(info.replicas):
                generation = self.generation
                try:
                    conn = await self.pool.get(host, port)
                    generation = self.generation
                    if since is not None and \
                            not conn.caps & codec.CAP_SINCE:
                        raise exception.InvalidArgument(
                            reason='chunk server %d is older than snapshot '
                                   'diffs (it cannot say which blocks '
                                   'changed): upgrade it first' % sid)
                    reply = await conn.call(
                        codec.encode_read, self.id, index, info.epoch,
                        offset, length, self.snap, flags, since,
                        timeout=self.cluster.request_timeout)
                    if flags & (codec.FLAG_STATES | codec.FLAG_MAP_ONLY):
                        states, data = codec.decode_read_states(reply.body)
                        if flags & codec.FLAG_MAP_ONLY:
                            return states
                    else:
                        data = codec.reply_status(reply.body)
                    if len(data) != length:
                        raise exception.ProtocolError(
                            reason='READ returned %d bytes, asked %d'
                            % (len(data), length))
                    if corrupt:
                        self._repair_later(index, info, offset, length)
                    if flags & codec.FLAG_STATES:
                        return data, states
                    return data
                except (exception.StaleEpoch, exception.StaleReplica) as e:
                    last = e
                    break  # the map is outdated: refresh it
                except (exception.ChecksumError, exception.DiskError) as e:
                    LOG.error('Volume %s chunk %d: %s on server %d; '
                              'reading another replica', self.name, index,
                              e, sid)
                    corrupt += isinstance(e, exception.ChecksumError)
                    last = e
                except exception.Unavailable as e:
                    last = e
                except exception.UrsaConnectionError as e:
                    self.pool.discard(host, port)
                    self.cluster.suspect(sid)
                    last = e
                except exception.ProtocolError as e:
                    self.pool.discard(host, port)
                    last = e
                except exception.NotAuthorized as e:
                    # The ticket of a multiattach writer's generation,
                    # revoked: re-admitted, it reads with the new one.
                    if not self._may_readmit(e):
                        raise
                    await self._readmit(generation, e, deadline)
                    readmitted = True
                    break
            else:
                if last is None:
                    last = exception.InsufficientReplicas(
                        have=0, need=1, reason='chunk %d of volume %s has '
                        'no replica' % (index, self.name))
                if corrupt == len(info.replicas) and not self.snap:
                    # No replica holds these blocks valid (a write torn on
                    # all of them by a power cut): the primary settles
                    # them, then they read again.
                    await self._repair(index, info, offset, length)
            if readmitted:
                continue
            self._forget(index)
            await self._retry_wait(deadline, attempt, last)

    async def _repair(self, index, info, offset, length):
        """Ask the chunk's primary to make the blocks of a range identical
        and valid on every replica (REPAIR)."""
        first = offset // BLOCK
        end = (offset + length + BLOCK - 1) // BLOCK
        _, host, port = info.replicas[0]
        try:
            conn = await self.pool.get(host, port)
            for at in range(first, end, control.MAX_REPAIR_BLOCKS):
                reply = await conn.call(
                    control.encode_repair, self.id, index, info.epoch, at,
                    min(control.MAX_REPAIR_BLOCKS, end - at),
                    timeout=self.cluster.request_timeout)
                fixed = control.decode_count_ok(reply.body)
                LOG.warning('Volume %s chunk %d: blocks %d-%d repaired '
                            '(%d mended on the primary)', self.name, index,
                            at, min(at + control.MAX_REPAIR_BLOCKS, end) - 1,
                            fixed)
        except exception.UrsaError as e:
            LOG.error('Volume %s chunk %d: repairing blocks %d-%d failed: '
                      '%s', self.name, index, first, end - 1, e)

    def _repair_later(self, index, info, offset, length):
        """A replica served a corrupt block: have it repaired (in the
        background; the read was served from another replica)."""
        task = asyncio.ensure_future(self._repair(index, info, offset,
                                                  length))
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _write_extent(self, index, offset, data, fua, flags=0,
                            length=None, failed=None):
        """Write one extent to its chunk's primary, retrying as the module
        says; ``failed`` is ``(info, error, lease generation)`` of a first
        attempt made elsewhere (:meth:`write_soon`), handled before
        anything is sent."""
        deadline = time.monotonic() + self.cluster.io_timeout
        attempt = 0
        copy_up = flags & codec.FLAG_IF_ABSENT
        while True:
            attempt += 1
            if failed is not None:
                (info, err, generation), failed = failed, None
                await self._write_failed(index, info, err, deadline, attempt,
                                         generation)
                continue
            if self._fenced is not None and not copy_up:
                raise self._fenced
            info = await self._write_map(index)
            need = self.info['min_replicas']
            if len(info.replicas) < need:
                err = exception.InsufficientReplicas(
                    have=len(info.replicas), need=need,
                    reason='chunk %d of volume %s; writes wait for repair'
                    % (index, self.name))
                self._forget(index)
                await self._retry_wait(deadline, attempt, err)
                continue
            _, host, port = info.replicas[0]
            generation = self.generation
            try:
                conn = await self.pool.get(host, port)
                # (The frame carries the generation of now.)
                generation = self.generation
                reply = await conn.call(
                    self._write_frame, index, info, offset, data or b'',
                    fua, flags, length, timeout=self.cluster.request_timeout)
                self._wrote(index, info, codec.decode_write_ok(reply.body))
                return
            except exception.UrsaError as e:
                await self._write_failed(index, info, e, deadline, attempt,
                                         generation)

    def _write_frame(self, rid, index, info, offset, data, fua, flags=0,
                     length=None):
        """The WRITE request for chunk ``index`` to its primary."""
        return codec.encode_write(
            rid, self.id, index, info.epoch, self.generation, offset,
            [r[0] for r in info.replicas], data, fua,
            self.info['min_replicas'], self.seq, flags, length)

    def _wrote(self, index, info, epoch):
        if epoch != info.epoch:
            self._forget(index)  # a replica was dropped meanwhile
        for r in info.replicas:
            chunks = self._dirty.setdefault((r[1], r[2]), {})
            if chunks is not None:
                chunks[index] = r[0]

    async def _write_failed(self, index, info, e, deadline, attempt,
                            generation):
        """Get ready to write again after ``e`` (the primary of ``info``
        refused or failed a write sent under lease ``generation``), or
        raise what cannot be cured by retrying."""
        if self._may_readmit(e):
            # Refused before it was applied, or applied and made the
            # same on every replica before the refusal was answered
            # (chunkserver.replication _conclude): sent again, it
            # writes what it wrote.
            await self._readmit(generation, e, deadline)
        elif isinstance(e, (exception.StaleEpoch, exception.StaleReplica)):
            self._forget(index)
            if attempt > 3:
                await self._retry_wait(deadline, attempt, e)
        elif isinstance(e, exception.StaleSnapshot):
            # A snapshot was taken: adopt its sequence, write again.
            await self.refresh()
            if attempt > 3:
                await self._retry_wait(deadline, attempt, e)
        elif isinstance(e, (exception.InsufficientReplicas,
                            exception.Unavailable)):
            self._forget(index)
            await self._retry_wait(deadline, attempt, e)
        elif isinstance(e, (exception.UrsaConnectionError,
                            exception.ProtocolError, exception.DiskError)):
            sid, host, port = info.replicas[0]
            if not isinstance(e, exception.DiskError):
                self.pool.discard(host, port)
                if isinstance(e, exception.UrsaConnectionError):
                    self.cluster.suspect(sid)
            LOG.warning('Volume %s chunk %d: primary %d (%s:%d) failed: %s',
                        self.name, index, sid, host, port, e)
            await self._report_failed(index, sid, info.epoch)
            await self._retry_wait(deadline, attempt, e)
        else:
            raise e

    def write_soon(self, offset, data, fua, callback):
        """Start a write with no task when one request frame does it: the
        range lies in one chunk whose map is cached and whose primary is
        connected, and no QoS wait, clone copy-up or fencing stands in the
        way.  ``callback(error)`` is called when the write is done (``error``
        None on success).  Returns False, having done nothing, when the
        write needs :meth:`write`.

        A block device's common write then costs a frame and two callbacks
        instead of a chain of coroutines; anything but success goes on in
        :meth:`_write_extent`, which retries as the module says.
        """
        if (self.qos or self._parent_info is not None or self.closed or
                self._fenced is not None or not self._held or
                self._handover is not None):
            # (Not holding the lease: write() takes it first; a handover
            # running: write() waits for it.)
            return False
        if offset < 0 or offset + len(data) > self.size:
            return False
        extents = self.layout.extents(offset, len(data))
        if len(extents) != 1:
            return False
        index, chunk_offset = extents[0].index, extents[0].chunk_offset
        info = self._map.get(index)
        need = self.info['min_replicas']
        if info is None or len(info.replicas) < need:
            return False
        _, host, port = info.replicas[0]
        conn = self.pool.connected(host, port)
        if conn is None or conn.paused:
            return False
        rid = aio.next_req_id()
        generation = self.generation
        try:
            fut = conn.send(rid, self._write_frame(rid, index, info,
                                                   chunk_offset, data, fua))
        except exception.UrsaConnectionError:
            return False
        timer = conn.expire_later(rid, fut, self.cluster.request_timeout)
        # In flight under the lease until its callback: a hand_over waits.
        self._inflight += 1
        self._idle.clear()
        answer = callback

        def callback(error):
            self._write_done()
            answer(error)

        def done(fut):
            timer.cancel()
            try:
                if fut.cancelled():
                    raise exception.UrsaConnectionError(
                        peer=conn.peer, reason='request cancelled')
                self._wrote(index, info,
                            codec.decode_write_ok(fut.result().body))
            except exception.UrsaError as e:
                task = asyncio.ensure_future(self._write_extent(
                    index, chunk_offset, data, fua,
                    failed=(info, e, generation)))
                self._retrying.add(task)
                task.add_done_callback(finish)
                return
            except Exception as e:  # noqa: BLE001 - the caller answers
                callback(e)
                return
            callback(None)

        def finish(task):
            self._retrying.discard(task)
            if task.cancelled():
                callback(exception.UrsaConnectionError(
                    peer=conn.peer, reason='write cancelled'))
            else:
                callback(task.exception())

        fut.add_done_callback(done)
        return True
