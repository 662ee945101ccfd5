"""Async client core: open a volume, read, write, flush.

:class:`Cluster` holds the master client and one pipelined connection per
chunk server.  :class:`Volume` maps byte ranges to chunk extents, keeps the
chunk map cached, sends each extent to the chunk's primary and retries on
the errors that a fresh chunk map can cure, within ``io_timeout``.

Retry policy per extent:

* StaleEpoch / StaleReplica: refresh the map entry, retry at once;
* primary unreachable: report it to the master (it is dropped from the
  replica set, epoch + 1), refresh, retry on the new primary;
* InsufficientReplicas: wait with backoff; fail when ``io_timeout`` ends;
* Fenced, OutOfRange, NoSpace, InvalidArgument: fail at once.
"""

import asyncio
import logging
import os
import socket
import time

from cinder_ursa import exception
from cinder_ursa.client import layout as layout_mod
from cinder_ursa.common import rest
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)

MAP_WINDOW = 256


class ChunkInfo:
    __slots__ = ('index', 'epoch', 'replicas')

    def __init__(self, index, epoch, replicas):
        self.index = index
        self.epoch = epoch
        # [(server id, address, port)], the primary first.
        self.replicas = replicas

    @classmethod
    def from_json(cls, c):
        return cls(c['index'], c['epoch'],
                   [(r['id'], r['address'], r['port'])
                    for r in c['replicas']])


class Cluster:
    """Entry point of the client library (one per event loop)."""

    def __init__(self, master_urls, key, io_timeout=60.0,
                 request_timeout=15.0):
        self.key = key if isinstance(key, bytes) else key.encode()
        self.master = rest.AsyncMasterClient(master_urls, self.key)
        self.pool = aio.ConnectionPool(self.key, connect_timeout=5.0)
        self.io_timeout = io_timeout
        self.request_timeout = request_timeout

    async def open_volume(self, ref, writable=True, holder=None,
                          force=False, lease_ttl=None):
        vol = (await self.master.request(
            'GET', '/volumes/%s' % rest.quote(ref)))['volume']
        v = Volume(self, vol, writable)
        if writable:
            await v._acquire(holder, force, lease_ttl)
        return v

    async def close(self):
        self.pool.close()
        await self.master.close()


def default_holder():
    return '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                         os.urandom(3).hex())


class Volume:

    def __init__(self, cluster, info, writable):
        self.cluster = cluster
        self.info = info
        self.id = info['id']
        self.name = info['name']
        self.size = info['size']
        self.layout = layout_mod.Layout.for_volume(info)
        self.writable = writable
        self.generation = 0
        self.holder = None
        self._map = {}          # index -> ChunkInfo, or None (not allocated)
        self._map_locks = {}
        self._dirty = {}        # (address, port) -> {index: server id}
        self._lease_task = None
        self._fenced = None
        self.closed = False

    # --- lease -------------------------------------------------------------

    async def _acquire(self, holder, force, ttl):
        self.holder = holder or default_holder()
        body = {'holder': self.holder, 'force': bool(force)}
        if ttl:
            body['ttl'] = ttl
        lease = (await self.cluster.master.request(
            'POST', '/volumes/%s/lease' % self.id, body))['lease']
        self.generation = lease['generation']
        self._lease_task = asyncio.get_running_loop().create_task(
            self._renew(lease['ttl']))
        LOG.debug('Volume %s opened for writing, generation %d', self.name,
                  self.generation)

    async def _renew(self, ttl):
        while True:
            await asyncio.sleep(ttl / 3.0)
            try:
                await self.cluster.master.request(
                    'PUT', '/volumes/%s/lease' % self.id,
                    {'holder': self.holder, 'generation': self.generation,
                     'ttl': ttl})
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
            found = {c['index']: ChunkInfo.from_json(c)
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
        extents = self.layout.extents(offset, length)
        if len(extents) == 1:
            e = extents[0]
            return bytes(await self._read_extent(e.index, e.chunk_offset,
                                                 e.length))
        buf = bytearray(length)
        parts = await asyncio.gather(*(
            self._read_extent(e.index, e.chunk_offset, e.length)
            for e in extents))
        for e, data in zip(extents, parts, strict=False):
            buf[e.buf_offset:e.buf_offset + e.length] = data
        return bytes(buf)

    async def write(self, offset, data, fua=False):
        self._check_open(True)
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast('B')
        extents = self.layout.extents(offset, len(mv))
        if len(extents) == 1:
            e = extents[0]
            await self._write_extent(e.index, e.chunk_offset, mv, fua)
            return
        await asyncio.gather(*(
            self._write_extent(e.index, e.chunk_offset,
                               mv[e.buf_offset:e.buf_offset + e.length], fua)
            for e in extents))

    async def _retry_wait(self, deadline, attempt, err):
        if time.monotonic() >= deadline:
            raise err
        await asyncio.sleep(min(0.05 * (2 ** attempt), 1.0))

    async def _read_extent(self, index, offset, length):
        deadline = time.monotonic() + self.cluster.io_timeout
        attempt = 0
        while True:
            attempt += 1
            info = await self._chunk(index, False)
            if info is None:
                return bytes(length)
            last = None
            for sid, host, port in info.replicas:
                try:
                    conn = await self.cluster.pool.get(host, port)
                    rid = aio.next_req_id()
                    reply = await conn.request(rid, codec.encode_read(
                        rid, self.id, index, info.epoch, offset, length),
                        self.cluster.request_timeout)
                    data = codec.reply_status(reply.body)
                    if len(data) != length:
                        raise exception.ProtocolError(
                            reason='READ returned %d bytes, asked %d'
                            % (len(data), length))
                    return data
                except (exception.StaleEpoch, exception.StaleReplica) as e:
                    last = e
                    break  # the map is outdated: refresh it
                except exception.ChecksumError as e:
                    LOG.error('Volume %s chunk %d: bad block on server %d; '
                              'reading another replica', self.name, index,
                              sid)
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
            self._forget(index)
            await self._retry_wait(deadline, attempt, last)

    async def _write_extent(self, index, offset, data, fua):
        deadline = time.monotonic() + self.cluster.io_timeout
        attempt = 0
        while True:
            attempt += 1
            if self._fenced is not None:
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
            sid, host, port = info.replicas[0]
            try:
                conn = await self.cluster.pool.get(host, port)
                rid = aio.next_req_id()
                reply = await conn.request(rid, codec.encode_write(
                    rid, self.id, index, info.epoch, self.generation, offset,
                    [r[0] for r in info.replicas], data, fua, need),
                    self.cluster.request_timeout)
                epoch = codec.decode_write_ok(reply.body)
                if epoch != info.epoch:
                    self._forget(index)  # a replica was dropped meanwhile
                for r in info.replicas:
                    self._dirty.setdefault((r[1], r[2]), {})[index] = r[0]
                return
            except (exception.StaleEpoch, exception.StaleReplica) as e:
                self._forget(index)
                if attempt > 3:
                    await self._retry_wait(deadline, attempt, e)
            except exception.InsufficientReplicas as e:
                self._forget(index)
                await self._retry_wait(deadline, attempt, e)
            except (exception.UrsaConnectionError,
                    exception.ProtocolError) as e:
                self.cluster.pool.discard(host, port)
                LOG.warning('Volume %s chunk %d: primary %d (%s:%d) failed: '
                            '%s', self.name, index, sid, host, port, e)
                await self._report_failed(index, sid, info.epoch)
                await self._retry_wait(deadline, attempt, e)

    async def _report_failed(self, index, server_id, epoch):
        try:
            await self.cluster.master.drop_replica(self.id, index, server_id,
                                                   epoch)
        except exception.UrsaError as e:
            LOG.warning('Could not report server %d of chunk %d: %s',
                        server_id, index, e)
        self._forget(index)

    async def flush(self):
        """Make every acknowledged write durable on every current replica.

        A replica that cannot flush is dropped from the replica sets of the
        chunks written since the last flush; the flush then succeeds only if
        enough replicas of each remain.
        """
        self._check_open(False)
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return

        async def one(addr, chunks):
            try:
                conn = await self.cluster.pool.get(*addr)
                rid = aio.next_req_id()
                reply = await conn.request(rid, codec.encode_flush(
                    rid, self.id), self.cluster.request_timeout)
                codec.reply_status(reply.body)
            except exception.UrsaError as e:
                self.cluster.pool.discard(*addr)
                LOG.warning('Volume %s: flush on %s:%d failed (%s); dropping '
                            'that replica', self.name, addr[0], addr[1], e)
                for index, sid in chunks.items():
                    info = self._map.get(index)
                    chunk = await self.cluster.master.drop_replica(
                        self.id, index, sid, info.epoch if info else 0)
                    self._forget(index)
                    if len(chunk['replicas']) < chunk['min_replicas']:
                        raise exception.InsufficientReplicas(
                            have=len(chunk['replicas']),
                            need=chunk['min_replicas'],
                            reason='flush of chunk %d of volume %s'
                            % (index, self.name)) from e
        await asyncio.gather(*(one(a, c) for a, c in dirty.items()))

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
                    await self.cluster.master.request(
                        'DELETE', '/volumes/%s/lease' % self.id,
                        params={'holder': self.holder,
                                'generation': self.generation})
                except exception.UrsaError as e:
                    LOG.warning('Volume %s: releasing the lease failed: %s',
                                self.name, e)
