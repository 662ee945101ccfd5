"""Async client core: open a volume, read, write, flush.

:class:`Cluster` holds the master client and one pipelined connection per
chunk server.  :class:`Volume` maps byte ranges to chunk extents, keeps the
chunk map cached, sends each extent to the chunk's primary and retries on
the errors that a fresh chunk map can cure, within ``io_timeout``.

Retry policy per extent:

* StaleEpoch / StaleReplica: refresh the map entry, retry at once;
* primary unreachable or its disk failing: report it to the master (it
  is dropped from the replica set, epoch + 1), refresh, retry on the new
  primary;
* a replica's disk failing or a bad checksum on a read: read another
  replica;
* InsufficientReplicas, or a chunk server that cannot reach the master to
  confirm a new epoch or lease generation (Unavailable): wait with
  backoff, read another replica; fail when ``io_timeout`` ends;
* Fenced, OutOfRange, NoSpace, InvalidArgument: fail at once.
"""

import asyncio
import logging
import os
import socket
import time

from cinder_ursa import exception
from cinder_ursa.client import layout as layout_mod
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import qos as qos_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import rest
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)

MAP_WINDOW = 256
BLOCK = 4096
ABSENT, DATA, ZERO = 0, 1, 2
COPY_STEP = 4 * 1024 * 1024


class Cluster:
    """Entry point of the client library (one per event loop)."""

    def __init__(self, master_urls, key, io_timeout=60.0,
                 request_timeout=15.0, local=None):
        self.key = key if isinstance(key, bytes) else key.encode()
        self.master = master_mod.AsyncMasterClient(master_urls, self.key)
        self.pool = aio.ConnectionPool(self.key, connect_timeout=5.0)
        self.io_timeout = io_timeout
        self.request_timeout = request_timeout
        # Short-circuit reads of replicas on this host (an object like
        # cinder_ursa.client.localread.LocalReplicas), or None.
        self.local = local or None
        self._local_bound = None
        self._local_task = None

    async def local_replicas(self):
        """The local replica reader, bound to the master's server ids.
        The first call waits for the binding; later ones refresh it every
        minute (a new chunk server gets a new id) in the background, so a
        read does not wait for the master then."""
        now = time.monotonic()
        if self._local_bound is None:
            self._local_bound = now
            await self._bind_local()
        elif now - self._local_bound > 60 and self._local_task is None:
            self._local_bound = now
            self._local_task = asyncio.get_running_loop().create_task(
                self._bind_local())
            self._local_task.add_done_callback(
                lambda _: setattr(self, '_local_task', None))
        return self.local

    async def _bind_local(self):
        try:
            self.local.bind(await self.master.servers())
        except exception.UrsaError as e:
            LOG.warning('Local reads: cannot list chunk servers: %s', e)

    async def open_volume(self, ref, writable=True, holder=None,
                          force=False, lease_ttl=None):
        """Open a volume (name or id), or a snapshot (``volume@snapshot``
        or ``snapshot=`` id), which is always read-only."""
        if '@' in ref:
            return await self.open_snapshot(ref)
        vol = await self.master.volume(ref)
        v = Volume(self, vol, writable)
        if writable:
            await v._acquire(holder, force, lease_ttl)
        return v

    async def open_snapshot(self, ref):
        return Volume.for_snapshot(self, await self.master.snapshot(ref))

    async def create_snapshot(self, volume, name):
        return await self.master.create_snapshot(volume, name)

    async def delete_snapshot(self, ref):
        await self.master.delete_snapshot(ref)

    async def clone(self, snapshot, name, size=None, **kwargs):
        return await self.master.clone(snapshot, name, size, **kwargs)

    async def revert(self, volume, snapshot):
        return await self.master.revert(volume, snapshot)

    async def resize(self, volume, size, force=False):
        """Grow a volume, or shrink it with ``force``: the range cut off is
        zeroed first, so growing it again later shows zeros."""
        info = await self.master.volume(volume)
        if size < info['size'] and force:
            v = await self.open_volume(info['id'], writable=True)
            try:
                end = -(-size // BLOCK) * BLOCK
                await v.write_zeroes(end, info['size'] - end)
                if size % BLOCK:
                    await v.write_zeroes(size, end - size)
            finally:
                await v.close()
        return await self.master.resize(info['id'], size, bool(force))

    async def flatten(self, volume, progress=None, rate=None):
        """Copy every block a clone still reads from its parent into the
        clone, then detach it.  Safe while the clone is open and written
        (copy-ups only fill blocks the clone never wrote); resumable (a
        restart skips what was copied).  ``rate``: bytes/s limit."""
        v = await self.open_volume(volume, writable=False)
        try:
            if v.parent is None and v.info.get('parent') is None:
                raise exception.InvalidArgument(
                    reason='volume %s is not a clone' % v.name)
            await v._flatten(progress, rate)
        finally:
            await v.close()
        return await self.master.detach_parent(v.id)

    async def close(self):
        if self._local_task is not None:
            self._local_task.cancel()
        self.pool.close()
        await self.master.close()


def default_holder():
    return '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                         os.urandom(3).hex())


class Volume:

    def __init__(self, cluster, info, writable, snap=0):
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
        self._map_locks = {}
        # (address, port) -> {index: server id}: what the next flush must
        # make durable; None instead of the dict: the whole volume.
        self._dirty = {}
        self._flushes = set()   # flush rounds running
        # The first flush also covers what earlier holders of the volume
        # wrote and never flushed (they may have died).
        self._inherited = writable
        self._lease_task = None
        self._fenced = None
        self._retrying = set()  # tasks of write_soon() writes retrying
        self._repairs = set()   # tasks of repairs started by reads
        self.closed = False
        self.qos = qos_mod.Limiter(info.get('qos'))

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

    async def _parent_volume(self):
        """The snapshot this clone reads unwritten blocks from (cached)."""
        if self.parent is None and self._parent_info is not None:
            snap = await self.cluster.master.snapshot(
                self._parent_info['snapshot_id'])
            self.parent = Volume.for_snapshot(self.cluster, snap)
        return self.parent

    async def refresh(self):
        """Reload size, snapshot sequence and parent from the master."""
        if self.snap:
            return
        info = await self.cluster.master.volume(self.id)
        self.info = info
        self.seq = info['snap_seq']
        self.qos.update(info.get('qos'))
        if info['size'] != self.size:
            self.size = info['size']
            self.layout = layout_mod.Layout.for_volume(info)
        if info.get('parent') is None:
            self._parent_info = None
            self.parent = None

    # --- lease -------------------------------------------------------------

    async def _acquire(self, holder, force, ttl):
        self.holder = holder or default_holder()
        lease = await self.cluster.master.acquire_lease(
            self.id, self.holder, force, ttl)
        self.generation = lease['generation']
        self._lease_task = asyncio.get_running_loop().create_task(
            self._renew(lease['ttl']))
        LOG.debug('Volume %s opened for writing, generation %d', self.name,
                  self.generation)

    async def _renew(self, ttl):
        while True:
            await asyncio.sleep(ttl / 3.0)
            try:
                lease = await self.cluster.master.renew_lease(
                    self.id, self.holder, self.generation, ttl)
                self.qos.update(lease.get('qos'))
            except exception.Fenced as e:
                LOG.error('Volume %s: %s', self.name, e)
                self._fenced = e
                return
            except exception.UrsaError as e:
                LOG.warning('Volume %s: renewing the lease failed: %s',
                            self.name, e)

    # --- chunk map ---------------------------------------------------------

    async def _chunk(self, index, allocate):
        if index in self._map:
            info = self._map[index]
            if info is not None or not allocate:
                return info
        lock = self._map_locks.setdefault(index, asyncio.Lock())
        async with lock:
            if index in self._map:
                info = self._map[index]
                if info is not None or not allocate:
                    return info
            if allocate:
                start, count = index, 1
            else:
                start = index - index % MAP_WINDOW
                count = min(MAP_WINDOW, self.layout.chunks - start)
            reply = await self.cluster.master.chunk_map(
                self.id, start, count, allocate)
            found = {c['index']: rest.ChunkInfo.from_json(c)
                     for c in reply['chunks']}
            for i in range(start, start + count):
                if i in found:
                    self._map[i] = found[i]
                elif self.writable and i not in self._map:
                    # We are the only writer: absence stays true until we
                    # allocate it ourselves.
                    self._map[i] = None
            return found.get(index)

    def _forget(self, index):
        self._map.pop(index, None)

    async def prefetch_map(self, offset=0, length=None):
        """Load the chunk map of a range in a few master calls."""
        length = self.size - offset if length is None else length
        for e in self.layout.extents(offset, length)[::MAP_WINDOW]:
            await self._chunk(e.index, False)

    # --- I/O ---------------------------------------------------------------

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
        return (self.cluster.local is not None and self.writable
                and not self.snap and self._parent_info is None
                and not self.info.get('multiattach') and self._fenced is None
                and not self.closed)

    async def _read_layered(self, e, vol_offset):
        """Read one extent of a clone: blocks it never wrote come from the
        parent snapshot (and so on up the chain)."""
        data, states = await self._read_extent(
            e.index, e.chunk_offset, e.length, codec.FLAG_STATES)
        if ABSENT not in states:
            return data
        buf = bytearray(data)
        for start, end in _runs(states, ABSENT, e.chunk_offset, e.length):
            pos = vol_offset + start - e.chunk_offset
            buf[start - e.chunk_offset:end - e.chunk_offset] = \
                await self._parent_read(pos, end - start)
        return buf

    async def _parent_read(self, pos, length):
        parent = await self._parent_volume()
        if parent is None or pos >= parent.size:
            return bytes(length)
        n = min(length, parent.size - pos)
        data = await parent.read(pos, n)
        return data if n == length else data + bytes(length - n)

    async def block_status(self, offset, length):
        """[(length, state)] covering the range, state DATA or ZERO (a
        hole: reads zeros and uses no space), merged into runs."""
        self._check_open(False)
        out = []
        for e in self.layout.extents(offset, length):
            states = await self._read_extent(
                e.index, e.chunk_offset, e.length, codec.FLAG_MAP_ONLY)
            for start, end, st in _all_runs(states, e.chunk_offset,
                                            e.length):
                if st == ABSENT and self._parent_info is not None:
                    parent = await self._parent_volume()
                    pos = offset + e.buf_offset + start - e.chunk_offset
                    if pos < parent.size:
                        n = min(end - start, parent.size - pos)
                        for ln, pst in await parent.block_status(pos, n):
                            _add_run(out, ln, pst)
                        if n < end - start:
                            _add_run(out, end - start - n, ZERO)
                        continue
                _add_run(out, end - start, DATA if st == DATA else ZERO)
        return out

    async def write(self, offset, data, fua=False):
        self._check_open(True)
        if self.qos:
            await self.qos.acquire('write', len(data))
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

    async def _copy_up_edges(self, offset, length):
        """Before a partial-block write to a clone, give the edge blocks
        the parent's content (if the clone never wrote them)."""
        edges = set()
        if offset % BLOCK:
            edges.add(offset - offset % BLOCK)
        end = offset + length
        if end % BLOCK:
            edges.add(end - end % BLOCK)
        for pos in sorted(edges):
            await self._copy_up(pos, BLOCK)

    async def _copy_up(self, pos, length):
        """Copy the parent's blocks of [pos, pos+length) into the clone
        where the clone has none (block aligned, within one extent)."""
        e = self.layout.extents(pos, length)[0]
        states = await self._read_extent(e.index, e.chunk_offset, e.length,
                                         codec.FLAG_MAP_ONLY)
        for start, end in _runs(states, ABSENT, e.chunk_offset, e.length):
            data = await self._parent_read(pos + start - e.chunk_offset,
                                           end - start)
            if data.count(0) == len(data):
                continue  # absent already reads as zeros past the chain
            await self._write_extent(e.index, start, memoryview(data), False,
                                     codec.FLAG_IF_ABSENT)
        return states

    async def _flatten(self, progress, rate):
        parent = await self._parent_volume()
        end = min(self.size, parent.size)
        copied = 0
        started = time.monotonic()
        for pos in range(0, end, COPY_STEP):
            n = min(COPY_STEP, end - pos)
            # Keep within one chunk extent per step.
            for e in self.layout.extents(pos, n):
                await self._copy_up(pos + e.buf_offset, e.length)
            copied += n
            if progress is not None:
                progress(copied, end)
            if rate:
                ahead = copied / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await self.flush()  # durable before the parent is let go

    async def _retry_wait(self, deadline, attempt, err):
        if time.monotonic() >= deadline:
            raise err
        await asyncio.sleep(min(0.05 * (2 ** attempt), 1.0))

    async def _read_extent(self, index, offset, length, flags=0):
        """The bytes of a chunk range; with FLAG_STATES (data, states);
        with FLAG_MAP_ONLY the states alone (one byte per block)."""
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
            if not flags and self._local_reads():
                local = await self.cluster.local_replicas()
                for sid, _, _ in info.replicas:
                    if local.serves(sid):
                        data = local.read(sid, self.id, index, offset,
                                          length)
                        if data is not None:
                            return data
                        break
            for sid, host, port in info.replicas:
                try:
                    conn = await self.cluster.pool.get(host, port)
                    reply = await conn.call(
                        codec.encode_read, self.id, index, info.epoch,
                        offset, length, self.snap, flags,
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
                    self.cluster.pool.discard(host, port)
                    last = e
                except exception.ProtocolError as e:
                    self.cluster.pool.discard(host, port)
                    last = e
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
            self._forget(index)
            await self._retry_wait(deadline, attempt, last)

    async def _repair(self, index, info, offset, length):
        """Ask the chunk's primary to make the blocks of a range identical
        and valid on every replica (REPAIR)."""
        first = offset // BLOCK
        end = (offset + length + BLOCK - 1) // BLOCK
        _, host, port = info.replicas[0]
        try:
            conn = await self.cluster.pool.get(host, port)
            for at in range(first, end, codec.MAX_REPAIR_BLOCKS):
                reply = await conn.call(
                    codec.encode_repair, self.id, index, info.epoch, at,
                    min(codec.MAX_REPAIR_BLOCKS, end - at),
                    timeout=self.cluster.request_timeout)
                fixed = codec.decode_count_ok(reply.body)
                LOG.warning('Volume %s chunk %d: blocks %d-%d repaired '
                            '(%d mended on the primary)', self.name, index,
                            at, min(at + codec.MAX_REPAIR_BLOCKS, end) - 1,
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
        says; ``failed`` is ``(info, error)`` of a first attempt made
        elsewhere (:meth:`write_soon`), handled before anything is sent."""
        deadline = time.monotonic() + self.cluster.io_timeout
        attempt = 0
        copy_up = flags & codec.FLAG_IF_ABSENT
        while True:
            attempt += 1
            if failed is not None:
                (info, err), failed = failed, None
                await self._write_failed(index, info, err, deadline, attempt)
                continue
            if self._fenced is not None and not copy_up:
                raise self._fenced
            info = await self._chunk(index, True)
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
            try:
                conn = await self.cluster.pool.get(host, port)
                reply = await conn.call(
                    self._write_frame, index, info, offset, data or b'',
                    fua, flags, length, timeout=self.cluster.request_timeout)
                self._wrote(index, info, codec.decode_write_ok(reply.body))
                return
            except exception.UrsaError as e:
                await self._write_failed(index, info, e, deadline, attempt)

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

    async def _write_failed(self, index, info, e, deadline, attempt):
        """Get ready to write again after ``e`` (the primary of ``info``
        refused or failed), or raise what cannot be cured by retrying."""
        if isinstance(e, (exception.StaleEpoch, exception.StaleReplica)):
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
                self.cluster.pool.discard(host, port)
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
                self._fenced is not None or not self.writable):
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
        conn = self.cluster.pool.connected(host, port)
        if conn is None or conn.paused:
            return False
        rid = aio.next_req_id()
        try:
            fut = conn.send(rid, self._write_frame(rid, index, info,
                                                   chunk_offset, data, fua))
        except exception.UrsaConnectionError:
            return False
        timer = conn.expire_later(rid, fut, self.cluster.request_timeout)

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
                    index, chunk_offset, data, fua, failed=(info, e)))
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

    async def _report_failed(self, index, server_id, epoch):
        try:
            await self.cluster.master.drop_replica(self.id, index, server_id,
                                                   epoch)
        except exception.UrsaError as e:
            LOG.warning('Could not report server %d of chunk %d: %s',
                        server_id, index, e)
        self._forget(index)

    async def flush(self):
        """Make every acknowledged write durable on every current replica:
        the writes of this Volume, and, at the first flush of a writable
        one, those of earlier holders that never flushed (a gateway, agent
        or client that died); on a multiattach volume, at every flush,
        those of the other writers.  Waits for the flushes already running,
        which took writes acknowledged before this call.

        A replica that cannot flush is dropped from the replica sets of the
        chunks concerned; the flush then succeeds only if enough replicas
        of each remain.
        """
        self._check_open(False)
        # A multiattach volume has other writers: like a shared disk's
        # cache flush, every flush covers their acknowledged writes too.
        if self._inherited or (self.writable and self.info.get(
                'multiattach')):
            servers = await self.cluster.master.servers()
            self._inherited = False
            for s in servers:
                if s['state'] == 'up':
                    self._dirty[(s['address'], s['port'])] = None
        dirty, self._dirty = self._dirty, {}
        rounds = list(self._flushes)
        if dirty:
            task = asyncio.ensure_future(self._flush_round(dirty))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
            rounds.append(task)
        if rounds:
            # asyncio.wait: a cancelled caller leaves the rounds that other
            # flushes wait for running.
            await asyncio.wait(rounds)
            for r in rounds:
                if r.exception() is not None:
                    raise r.exception()

    async def _flush_round(self, dirty):
        results = await asyncio.gather(*(
            self._flush_server(addr, chunks)
            for addr, chunks in dirty.items()), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _flush_server(self, addr, chunks):
        """FLUSH the volume on one chunk server; ``chunks`` ({index: server
        id}, None: any chunk it holds) are what it must drop if it fails.
        When they cannot be dropped either, the next flush tries again."""
        try:
            conn = await self.cluster.pool.get(*addr)
            reply = await conn.call(codec.encode_flush, self.id,
                                    timeout=self.cluster.request_timeout)
            codec.reply_status(reply.body)
            return
        except exception.UrsaError as e:
            self.cluster.pool.discard(*addr)
            LOG.warning('Volume %s: flush on %s:%d failed (%s); dropping '
                        'that replica', self.name, addr[0], addr[1], e)
            err = e
        try:
            if chunks is None:
                chunks = await self._chunks_on(addr)
        except exception.UrsaError:
            self._dirty[addr] = None
            raise
        short, undropped, failed = None, {}, None
        for index, sid in chunks.items():
            try:
                chunk = await self._drop_failed(index, sid)
            except exception.UrsaError as e:
                undropped[index] = sid
                failed = failed or e
                continue
            self._forget(index)
            if chunk is not None and (len(chunk['replicas'])
                                      < chunk['min_replicas']):
                short = short or exception.InsufficientReplicas(
                    have=len(chunk['replicas']), need=chunk['min_replicas'],
                    reason='flush of chunk %d of volume %s' % (
                        index, self.name))
        if undropped:
            # Still a replica, and not durable: the next flush tries again.
            pending = self._dirty.get(addr, {})
            if pending is not None:
                pending.update(undropped)
                self._dirty[addr] = pending
            raise failed
        if short is not None:
            raise short from err

    async def _drop_failed(self, index, sid):
        """Drop server ``sid``, which could not flush, from chunk
        ``index``'s replica set at the master's current epoch (the cached
        one may be old: the master ignores a drop at an old epoch).
        Returns the chunk as the master has it then (None: no such chunk),
        or raises when the server is still a replica (the last one: the
        master never drops that)."""
        for _ in range(5):
            reply = await self.cluster.master.chunk_map(self.id, index, 1)
            if not reply['chunks']:
                return None
            chunk = reply['chunks'][0]
            chunk['min_replicas'] = reply['volume']['min_replicas']
            if sid not in [r['id'] for r in chunk['replicas']]:
                return chunk
            chunk = await self.cluster.master.drop_replica(
                self.id, index, sid, chunk['epoch'])
            if sid not in [r['id'] for r in chunk['replicas']]:
                return chunk
            if len(chunk['replicas']) == 1:
                raise exception.InsufficientReplicas(
                    have=0, need=chunk['min_replicas'],
                    reason='the only replica of chunk %d of volume %s '
                           'could not flush' % (index, self.name))
        raise exception.Unavailable(
            reason='server %d stays in the replica set of chunk %d of volume '
                   '%s, which keeps changing; flush again' % (
                       sid, index, self.name))

    async def _chunks_on(self, addr):
        """{index: server id} of the chunks with a replica at ``addr``,
        from the whole chunk map."""
        self._map.clear()
        await self.prefetch_map()
        return {index: r[0] for index, info in self._map.items()
                if info is not None for r in info.replicas
                if (r[1], r[2]) == addr}

    async def close(self):
        if self.closed:
            return
        try:
            if self.writable and self._fenced is None:
                await self.flush()
        finally:
            self.closed = True
            if self._lease_task is not None:
                self._lease_task.cancel()
                try:
                    await self.cluster.master.release_lease(
                        self.id, self.holder, self.generation)
                except exception.UrsaError as e:
                    LOG.warning('Volume %s: releasing the lease failed: %s',
                                self.name, e)


def _runs(states, want, offset, length):
    """Byte ranges (chunk offsets) of the blocks in state ``want`` of a
    range starting at ``offset`` whose block states are ``states``."""
    return [(a, b) for a, b, st in _all_runs(states, offset, length)
            if st == want]


def _all_runs(states, offset, length):
    """[(start, end, state)]: runs of equal state, clipped to the range."""
    first = offset - offset % BLOCK
    end_range = offset + length
    out = []
    i = 0
    n = len(states)
    while i < n:
        j = i + 1
        while j < n and states[j] == states[i]:
            j += 1
        out.append((max(first + i * BLOCK, offset),
                    min(first + j * BLOCK, end_range), states[i]))
        i = j
    return out


def _add_run(out, length, state):
    if out and out[-1][1] == state:
        out[-1] = (out[-1][0] + length, state)
    else:
        out.append((length, state))
