"""ursa-nbd's server: exports Ursa volumes over NBD (fixed newstyle).

Life of a connection: the handshake (:mod:`handshake` decides every reply;
this module opens exports, lists them and starts TLS when it says so);
then transmission, where each request is validated
(``protocol.validate_request``) before it reaches the export's
:class:`~cinder_ursa.nbd.backend.Backend` and runs as its own task, so
replies go out in completion order.

Export names: a volume (name or id) is exported read-write under its lease;
``volume@snapshot`` is exported read-only and takes no lease.  TRIM and
WRITE_ZEROES deallocate whole blocks (the volume gets thinner); BLOCK_STATUS
reports the holes, so qemu-img, nbdcopy and nbdinfo --map see them.

All connections to one export share one open :class:`Volume` (one lease,
one dirty set) behind one :class:`VolumeBackend`, so a FLUSH on any
connection covers writes completed on every connection: that is what makes
CAN_MULTI_CONN safe to advertise.
"""

import asyncio
import functools
import logging
import ssl
import struct

from cinder_ursa import exception
from cinder_ursa.client import volume as volume_mod
from cinder_ursa.nbd import backend as backend_mod
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import stream as stream_mod

LOG = logging.getLogger(__name__)


BLOCK_STATUS_LIMIT = 1024 * 1024 * 1024  # bytes described per reply
# Requests of one connection in flight at once, and their data: past
# either, the gateway stops reading the connection until half are done.
MAX_INFLIGHT = 256
MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
# Seconds a new connection to an export already open waits for the master
# to look the export up (and refresh its size); past that, a failover, it
# is served what is known.  An export not open yet waits for the master:
# opening it takes the volume's lease.
MASTER_WAIT = 2.0


class _Export:
    """An open export and the connections using it."""

    def __init__(self, key, volume, read_only):
        self.key = key
        self.backend = backend_mod.VolumeBackend(volume, read_only)
        self.users = 0


def tls_context(cert_file, key_file, ca_file=None):
    """Server-side TLS context for STARTTLS (client certificates are
    required when ``ca_file`` is given)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class NbdServer:
    """Serves NBD clients with volumes of ``cluster`` (an async Cluster)."""

    def __init__(self, cluster, read_only=False, holder=None,
                 tls_context=None, tls_required=False):
        self.cluster = cluster
        self.read_only = read_only
        self.tls_context = tls_context
        self.tls_required = tls_required and tls_context is not None
        self.holder = holder
        self._exports = {}
        self._lock = asyncio.Lock()
        self.connections = set()

    # --- exports -----------------------------------------------------------

    def _known(self, name):
        """The export open under ``name`` (a volume's name or id, or
        ``volume@snapshot``), if any."""
        for exp in self._exports.values():
            vol = exp.backend.volume
            if name == vol.name or (exp.key[0] == 'volume' and
                                    name == vol.id):
                return exp
        return None

    async def _master(self, call, known):
        """The answer of ``call`` (a coroutine asking the master).  When
        the export is open already (``known``), waited for MASTER_WAIT at
        most: None when no master answered by then (a failover: the
        export needs none to serve its connections, nor a new one)."""
        if known is None:
            return await call
        try:
            return await asyncio.wait_for(call, MASTER_WAIT)
        except (TimeoutError, exception.NotLeader,
                exception.UrsaConnectionError) as e:
            LOG.warning('NBD export %s: no master answered (%s); a new '
                        'connection is served what is known', known.key,
                        str(e) or 'no answer in %.1f s' % MASTER_WAIT)
            return None

    async def _open(self, name):
        snapshot = '@' in name
        # Asked before the lock is taken: connections that wait for the
        # master wait together, not one after the other.
        record = await self._master(
            self.cluster.master.snapshot(name) if snapshot
            else self.cluster.master.volume(name), self._known(name))
        async with self._lock:
            if record is None:
                exp = self._known(name)
                if exp is None:
                    raise exception.Unavailable(
                        reason='no master answers, and export %s was '
                               'closed meanwhile' % name)
            elif snapshot:
                key = ('snapshot', record['id'])
                exp = self._exports.get(key)
                if exp is None:
                    vol = volume_mod.Volume.for_snapshot(self.cluster,
                                                         record)
                    exp = self._exports[key] = _Export(key, vol, True)
            else:
                key = ('volume', record['id'])
                exp = self._exports.get(key)
                if exp is None:
                    vol = await self.cluster.open_volume(
                        key[1], writable=not self.read_only,
                        holder=self.holder)
                    exp = self._exports[key] = _Export(key, vol,
                                                       self.read_only)
                else:
                    # A grown volume shows its new size to new clients.
                    exp.backend.volume.adopt(record)
            exp.users += 1
            return exp

    async def _close(self, exp):
        async with self._lock:
            exp.users -= 1
            if exp.users == 0:
                self._exports.pop(exp.key, None)
                await exp.backend.close()

    # --- connection --------------------------------------------------------

    def protocol(self):
        """Protocol factory for loop.create_server/create_unix_server."""
        return stream_mod.NbdStream(self._serve)

    async def _serve(self, stream):
        peer = stream.transport.get_extra_info('peername') or 'unix socket'
        task = asyncio.current_task()
        self.connections.add(task)
        exp = None
        try:
            neg = hs.Negotiation(tls_available=self.tls_context is not None,
                                 tls_required=self.tls_required)
            exp = await self._handshake(stream, neg)
            if exp is not None:
                LOG.info('NBD client %s attached to %s%s', peer,
                         exp.backend.name,
                         '' if exp.backend.can_write() else ' (read-only)')
                await self._transmission(stream, exp, neg)
        except (asyncio.IncompleteReadError, ConnectionError):
            LOG.debug('NBD client %s went away', peer)
        except ssl.SSLError as e:
            LOG.warning('TLS with NBD client %s failed: %s', peer, e)
        except exception.ProtocolError as e:
            LOG.warning('Dropping NBD client %s: %s', peer, e)
        finally:
            self.connections.discard(task)
            if exp is not None:
                try:
                    await self._close(exp)
                except exception.UrsaError as e:
                    LOG.warning('Closing volume %s: %s', exp.backend.name, e)
            stream.close()

    async def _handshake(self, stream, neg):
        """Run the negotiation; return the export chosen, or None."""
        stream.write(neg.greeting())
        await stream.drain()
        while True:
            out, event = neg.receive(await stream.readexactly(neg.want))
            if isinstance(event, hs.OpenExport):
                exp = await self._try_open(event.name)
                if exp is None:
                    out, event = neg.export_refused()
                else:
                    out, event = neg.export_opened(exp.backend.size(),
                                                   exp.backend.flags())
                    if not isinstance(event, hs.Ready):
                        await self._close(exp)  # INFO: just a look
            elif isinstance(event, hs.ListExports):
                try:
                    vols = await self.cluster.master.volumes()
                except exception.UrsaError as e:
                    LOG.warning('NBD export list refused: %s', e)
                    out = neg.exports_unlisted(
                        'the exports cannot be listed now: %s' % e)
                else:
                    out = neg.exports_listed([v['name'] for v in vols])
            if out:
                stream.write(out)
            if isinstance(event, hs.Ready):
                return exp  # transmission's flow control takes over
            await stream.drain()
            if isinstance(event, hs.StartTls):
                await stream.start_tls(self.tls_context)
                neg.tls_started()
            elif isinstance(event, hs.Close):
                LOG.debug('NBD handshake ends: %s', event.reason)
                return None

    async def _try_open(self, name):
        try:
            return await self._open(name)
        except exception.UrsaError as e:
            LOG.warning('NBD export %r refused: %s', name, e)
            return None

    # --- transmission ------------------------------------------------------

    async def _transmission(self, stream, exp, neg):
        """Requests run as they arrive (replies go out in completion order),
        at most MAX_INFLIGHT of them or MAX_INFLIGHT_BYTES of their data at
        once.  A write the backend can start without a task
        (``pwrite_nowait``: one request to a chunk server) runs on
        callbacks, the others as tasks."""
        backend = exp.backend
        eflags = backend.flags() | (p.TF_SEND_DF if neg.structured else 0)
        structured, meta = neg.structured, neg.base_allocation
        loop = asyncio.get_running_loop()
        tasks = {}
        inflight = 0        # requests
        inflight_bytes = 0  # their data
        callbacks = 0       # writes running on callbacks
        ended = None        # set when the last of those ends, at the end

        def settle(n):
            nonlocal inflight, inflight_bytes
            inflight -= 1
            inflight_bytes -= n
            if inflight < MAX_INFLIGHT // 2 and \
                    inflight_bytes < MAX_INFLIGHT_BYTES // 2:
                stream.hold(False)

        def finished(task):
            settle(tasks.pop(task, 0))

        def wrote(handle, flags, offset, length, err):
            nonlocal callbacks
            if err is None:
                stream.write(p.simple_reply(handle))
            else:
                self._failed(stream, backend, structured, p.CMD_WRITE, flags,
                             handle, offset, length, err)
            settle(length)
            callbacks -= 1
            if not callbacks and ended is not None and not ended.done():
                ended.set_result(None)

        def on_request(flags, cmd, handle, offset, length, data):
            nonlocal inflight, inflight_bytes, callbacks
            if cmd == p.CMD_DISC:
                stream.stop()
                return
            err = p.validate_request(cmd, flags, offset, length,
                                     backend.size(), eflags, structured,
                                     meta)
            if err:
                stream.write(p.error_reply(handle, err, structured))
                return
            n = length if cmd in (p.CMD_READ, p.CMD_WRITE) else 0
            if cmd == p.CMD_WRITE and backend.pwrite_nowait(
                    offset, data, bool(flags & p.CMD_FLAG_FUA),
                    functools.partial(wrote, handle, flags, offset,
                                      length)):
                callbacks += 1
            else:
                t = loop.create_task(self._run(
                    stream, backend, structured, cmd, flags, handle, offset,
                    length, data))
                tasks[t] = n
                t.add_done_callback(finished)
            inflight += 1
            inflight_bytes += n
            if inflight >= MAX_INFLIGHT or \
                    inflight_bytes >= MAX_INFLIGHT_BYTES:
                stream.hold(True)

        try:
            await stream.serve_requests(on_request)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if callbacks:
                ended = loop.create_future()
                await ended
            if backend.can_write():
                try:
                    await backend.flush()
                except exception.UrsaError as e:
                    LOG.warning('Flush at disconnect of %s: %s',
                                backend.name, e)

    @staticmethod
    def _failed(stream, backend, structured, cmd, flags, handle, offset,
                length, e):
        """Answer a request that failed with ``e``."""
        err = p.nbd_error(e, flags)
        if err == p.NBD_ENOTSUP:
            LOG.debug('NBD command %d on %s at %d+%d: %s', cmd,
                      backend.name, offset, length, e)
        elif isinstance(e, exception.UrsaError):
            LOG.warning('NBD command %d on %s at %d+%d failed: %s',
                        cmd, backend.name, offset, length, e)
        else:
            LOG.error('NBD command %d on %s at %d+%d failed: %r', cmd,
                      backend.name, offset, length, e, exc_info=e)
        stream.write(p.error_reply(handle, err, structured, str(e)))

    async def _run(self, stream, backend, structured, cmd, flags, handle,
                   offset, length, data):
        fua = bool(flags & p.CMD_FLAG_FUA)
        try:
            if cmd == p.CMD_READ:
                out = await backend.pread(offset, length)
                if structured:
                    stream.writelines((p.structured_header(
                        handle, p.REPLY_TYPE_OFFSET_DATA, 8 + len(out)),
                        struct.pack('>Q', offset), out))
                else:
                    stream.writelines((p.simple_reply(handle), out))
                return
            if cmd == p.CMD_BLOCK_STATUS:
                extents = await backend.extents(
                    offset, min(length, BLOCK_STATUS_LIMIT))
                if flags & p.CMD_FLAG_REQ_ONE:
                    extents = extents[:1]
                stream.write(p.structured(
                    handle, p.REPLY_TYPE_BLOCK_STATUS,
                    p.block_status_payload(extents)))
                return
            if cmd == p.CMD_WRITE:
                await backend.pwrite(offset, data, fua)
            elif cmd == p.CMD_TRIM:
                await backend.trim(offset, length, fua)
            elif cmd == p.CMD_WRITE_ZEROES:
                await backend.zero(offset, length, fua,
                                   not flags & p.CMD_FLAG_NO_HOLE,
                                   bool(flags & p.CMD_FLAG_FAST_ZERO))
            elif cmd == p.CMD_FLUSH:
                await backend.flush()
            elif cmd == p.CMD_CACHE:
                await backend.cache(offset, length)
            stream.write(p.simple_reply(handle))
        except Exception as e:  # noqa: BLE001 - every request is answered
            self._failed(stream, backend, structured, cmd, flags, handle,
                         offset, length, e)
