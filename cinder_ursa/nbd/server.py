"""ursa-nbd's server: exports Ursa volumes over NBD (fixed newstyle).

Life of a connection: handshake; options (EXPORT_NAME, GO, INFO, LIST,
ABORT, STRUCTURED_REPLY, LIST/SET_META_CONTEXT with base:allocation;
anything else gets NBD_REP_ERR_UNSUP); then transmission, where each
request is validated before it reaches the volume and runs as its own task,
so replies go out in completion order.

Export names: a volume (name or id) is exported read-write under its lease;
``volume@snapshot`` is exported read-only and takes no lease.  TRIM and
WRITE_ZEROES deallocate whole blocks (the volume gets thinner); BLOCK_STATUS
reports the holes, so qemu-img, nbdcopy and nbdinfo --map see them.

All connections to one export share one open :class:`Volume` (one lease,
one dirty set), so a FLUSH on any connection covers writes completed on
every connection: that is what makes CAN_MULTI_CONN safe to advertise.
"""

import asyncio
import functools
import logging
import ssl
import struct

from cinder_ursa import exception
from cinder_ursa.client import volume as volume_mod
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import stream as stream_mod

LOG = logging.getLogger(__name__)


BLOCK_STATUS_LIMIT = 1024 * 1024 * 1024  # bytes described per reply
# Requests of one connection in flight at once, and their data: past
# either, the gateway stops reading the connection until half are done.
MAX_INFLIGHT = 256
MAX_INFLIGHT_BYTES = 256 * 1024 * 1024


class _Export:
    def __init__(self, key, volume, read_only):
        self.key = key
        self.volume = volume
        self.read_only = read_only
        self.users = 0


class _Conn:
    """What one client negotiated."""

    def __init__(self):
        self.structured = False
        self.meta = False
        self.tls = False


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

    async def _open(self, name):
        async with self._lock:
            if '@' in name:
                snap = await self.cluster.master.snapshot(name)
                key = ('snapshot', snap['id'])
                exp = self._exports.get(key)
                if exp is None:
                    vol = volume_mod.Volume.for_snapshot(self.cluster, snap)
                    exp = self._exports[key] = _Export(key, vol, True)
            else:
                info = await self.cluster.master.volume(name)
                key = ('volume', info['id'])
                exp = self._exports.get(key)
                if exp is None:
                    vol = await self.cluster.open_volume(
                        key[1], writable=not self.read_only,
                        holder=self.holder)
                    exp = self._exports[key] = _Export(key, vol,
                                                       self.read_only)
                else:
                    # A grown volume shows its new size to new clients.
                    await exp.volume.refresh()
            exp.users += 1
            return exp

    async def _close(self, exp):
        async with self._lock:
            exp.users -= 1
            if exp.users == 0:
                self._exports.pop(exp.key, None)
                await exp.volume.close()

    @staticmethod
    def flags(exp, conn):
        f = (p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA |
             p.TF_CAN_MULTI_CONN | p.TF_SEND_CACHE)
        if exp.read_only:
            f |= p.TF_READ_ONLY
        else:
            f |= p.TF_SEND_WRITE_ZEROES | p.TF_SEND_TRIM | p.TF_SEND_FAST_ZERO
        if conn.structured:
            f |= p.TF_SEND_DF  # reads are never fragmented
        return f

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
            conn = _Conn()
            exp = await self._handshake(stream, conn)
            if exp is not None:
                LOG.info('NBD client %s attached to %s%s', peer,
                         exp.volume.name,
                         ' (read-only)' if exp.read_only else '')
                await self._transmission(stream, exp, conn)
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
                    LOG.warning('Closing volume %s: %s', exp.volume.name, e)
            stream.close()

    async def _handshake(self, stream, conn):
        stream.write(p.handshake())
        await stream.drain()
        (cflags,) = struct.unpack('>I', await stream.readexactly(4))
        if not cflags & p.FLAG_C_FIXED_NEWSTYLE or cflags & ~3:
            raise exception.ProtocolError(
                reason='client flags 0x%x: only fixed newstyle is served'
                % cflags)
        no_zeroes = bool(cflags & p.FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION.unpack(
                await stream.readexactly(p.OPTION.size))
            if magic != p.IHAVEOPT:
                raise exception.ProtocolError(reason='bad option magic')
            if length > p.MAX_OPTION_DATA:
                raise exception.ProtocolError(
                    reason='option data of %d bytes' % length)
            data = await stream.readexactly(length)
            if option == p.OPT_STARTTLS:
                await self._starttls(stream, data, conn)
                continue
            if (self.tls_required and not conn.tls
                    and option != p.OPT_ABORT):
                if option == p.OPT_EXPORT_NAME:
                    return None  # no way to say why: close
                stream.write(p.option_reply(
                    option, p.REP_ERR_TLS_REQD,
                    b'this server requires TLS (NBD_OPT_STARTTLS)'))
                await stream.drain()
                continue
            if option == p.OPT_EXPORT_NAME:
                exp = await self._try_open(data.decode('utf-8', 'replace'))
                if exp is None:
                    return None  # the spec: just close the connection
                stream.write(p.EXPORT_NAME_REPLY.pack(
                    exp.volume.size, self.flags(exp, conn)))
                if not no_zeroes:
                    stream.write(bytes(124))
                await stream.drain()
                return exp
            if option == p.OPT_ABORT:
                stream.write(p.option_reply(option, p.REP_ACK))
                await stream.drain()
                return None
            if option == p.OPT_LIST:
                if data:
                    stream.write(p.option_reply(option, p.REP_ERR_INVALID))
                    continue
                for vol in await self.cluster.master.volumes():
                    name = vol['name'].encode()
                    stream.write(p.option_reply(
                        option, p.REP_SERVER,
                        struct.pack('>I', len(name)) + name))
                stream.write(p.option_reply(option, p.REP_ACK))
                await stream.drain()
                continue
            if option == p.OPT_STRUCTURED_REPLY:
                if data:
                    stream.write(p.option_reply(option, p.REP_ERR_INVALID))
                else:
                    conn.structured = True
                    stream.write(p.option_reply(option, p.REP_ACK))
                await stream.drain()
                continue
            if option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
                self._meta_context(stream, option, data, conn)
                await stream.drain()
                continue
            if option in (p.OPT_INFO, p.OPT_GO):
                exp = await self._info(stream, option, data, conn)
                if exp is not None and option == p.OPT_GO:
                    return exp
                if exp is not None:
                    await self._close(exp)
                continue
            stream.write(p.option_reply(option, p.REP_ERR_UNSUP))
            await stream.drain()

    async def _try_open(self, name):
        try:
            return await self._open(name)
        except exception.UrsaError as e:
            LOG.warning('NBD export %r refused: %s', name, e)
            return None

    async def _starttls(self, stream, data, conn):
        option = p.OPT_STARTTLS
        if self.tls_context is None:
            stream.write(p.option_reply(option, p.REP_ERR_POLICY,
                                        b'TLS is not configured'))
        elif data or conn.tls:
            stream.write(p.option_reply(option, p.REP_ERR_INVALID))
        else:
            stream.write(p.option_reply(option, p.REP_ACK))
            await stream.drain()
            await stream.start_tls(self.tls_context)
            conn.tls = True
            return
        await stream.drain()

    @staticmethod
    def _meta_context(stream, option, data, conn):
        """LIST/SET_META_CONTEXT: only base:allocation exists."""
        try:
            (nlen,) = struct.unpack_from('>I', data)
            pos = 4 + nlen
            (nq,) = struct.unpack_from('>I', data, pos)
            pos += 4
            queries = []
            for _ in range(nq):
                (qlen,) = struct.unpack_from('>I', data, pos)
                pos += 4
                if pos + qlen > len(data):
                    raise struct.error('query truncated')
                queries.append(data[pos:pos + qlen].decode('utf-8'))
                pos += qlen
            if pos != len(data):
                raise struct.error('trailing bytes')
        except (struct.error, UnicodeDecodeError):
            stream.write(p.option_reply(option, p.REP_ERR_INVALID))
            return
        if not conn.structured:
            stream.write(p.option_reply(
                option, p.REP_ERR_INVALID,
                b'negotiate structured replies first'))
            return
        listing = option == p.OPT_LIST_META_CONTEXT
        match = any(q == p.META_BASE_ALLOCATION or (listing and q == 'base:')
                    for q in queries) or (listing and not queries)
        if option == p.OPT_SET_META_CONTEXT:
            conn.meta = match
        if match:
            name = p.META_BASE_ALLOCATION.encode()
            stream.write(p.option_reply(
                option, p.REP_META_CONTEXT,
                struct.pack('>I', 0 if listing else p.META_ID) + name))
        stream.write(p.option_reply(option, p.REP_ACK))

    async def _info(self, stream, option, data, conn):
        if len(data) < 6:
            stream.write(p.option_reply(option, p.REP_ERR_INVALID))
            await stream.drain()
            return None
        (nlen,) = struct.unpack_from('>I', data)
        if 4 + nlen + 2 > len(data):
            stream.write(p.option_reply(option, p.REP_ERR_INVALID))
            await stream.drain()
            return None
        name = data[4:4 + nlen].decode('utf-8', 'replace')
        (nreq,) = struct.unpack_from('>H', data, 4 + nlen)
        if len(data) != 4 + nlen + 2 + 2 * nreq:
            stream.write(p.option_reply(option, p.REP_ERR_INVALID))
            await stream.drain()
            return None
        exp = await self._try_open(name)
        if exp is None:
            msg = b'no such volume, or it cannot be opened'
            stream.write(p.option_reply(option, p.REP_ERR_UNKNOWN, msg))
            await stream.drain()
            return None
        stream.write(p.option_reply(option, p.REP_INFO, p.info_export(
            exp.volume.size, self.flags(exp, conn))))
        stream.write(p.option_reply(option, p.REP_INFO, p.info_block_size(
            p.MAX_REQUEST)))
        stream.write(p.option_reply(option, p.REP_ACK))
        await stream.drain()
        return exp

    # --- transmission ------------------------------------------------------

    async def _transmission(self, stream, exp, conn):
        """Requests run as they arrive (replies go out in completion order),
        at most MAX_INFLIGHT of them or MAX_INFLIGHT_BYTES of their data at
        once.  A write that one request to a chunk server does runs on
        callbacks (:meth:`Volume.write_soon`), the others as tasks."""
        vol = exp.volume
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

        def wrote(handle, offset, length, err):
            nonlocal callbacks
            if err is None:
                stream.write(p.simple_reply(handle))
            else:
                self._failed(stream, vol, conn, p.CMD_WRITE, handle, offset,
                             length, err)
            settle(length)
            callbacks -= 1
            if not callbacks and ended is not None and not ended.done():
                ended.set_result(None)

        def on_request(flags, cmd, handle, offset, length, data):
            nonlocal inflight, inflight_bytes, callbacks
            if cmd == p.CMD_DISC:
                stream.stop()
                return
            err = self._validate(exp, conn, cmd, flags, offset, length)
            if err:
                stream.write(self._error(conn, handle, err))
                return
            n = length if cmd in (p.CMD_READ, p.CMD_WRITE) else 0
            if cmd == p.CMD_WRITE and vol.write_soon(
                    offset, data, bool(flags & p.CMD_FLAG_FUA),
                    functools.partial(wrote, handle, offset, length)):
                callbacks += 1
            else:
                t = loop.create_task(self._run(stream, vol, conn, cmd, flags,
                                               handle, offset, length, data))
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
            if not exp.read_only:
                try:
                    await vol.flush()
                except exception.UrsaError as e:
                    LOG.warning('Flush at disconnect of %s: %s', vol.name, e)

    def _failed(self, stream, vol, conn, cmd, handle, offset, length, e):
        """Answer a request that failed with ``e``."""
        if isinstance(e, exception.UrsaError):
            LOG.warning('NBD command %d on %s at %d+%d failed: %s',
                        cmd, vol.name, offset, length, e)
        else:
            LOG.error('NBD command %d on %s at %d+%d failed: %r', cmd,
                      vol.name, offset, length, e, exc_info=e)
        stream.write(self._error(conn, handle, p.errno_for(e), str(e)))

    @staticmethod
    def _error(conn, handle, err, message=''):
        if conn.structured:
            return p.structured_error(handle, err, message)
        return p.simple_reply(handle, err)

    @staticmethod
    def _validate(exp, conn, cmd, flags, offset, length):
        if cmd not in (p.CMD_READ, p.CMD_WRITE, p.CMD_FLUSH, p.CMD_CACHE,
                       p.CMD_WRITE_ZEROES, p.CMD_TRIM, p.CMD_BLOCK_STATUS):
            return p.EINVAL
        if cmd == p.CMD_FLUSH:
            return 0
        writes = (p.CMD_WRITE, p.CMD_WRITE_ZEROES, p.CMD_TRIM)
        if exp.read_only and cmd in writes:
            return p.EPERM
        if flags & p.CMD_FLAG_FAST_ZERO and cmd != p.CMD_WRITE_ZEROES:
            return p.EINVAL
        if flags & p.CMD_FLAG_DF and cmd != p.CMD_READ:
            return p.EINVAL
        if cmd == p.CMD_BLOCK_STATUS and (not conn.meta or not length):
            return p.EINVAL
        if cmd == p.CMD_READ and length > p.MAX_REQUEST:
            return p.EINVAL
        if offset + length > exp.volume.size:
            return p.ENOSPC if cmd in writes else p.EINVAL
        return 0

    async def _run(self, stream, vol, conn, cmd, flags, handle, offset,
                   length, data):
        fua = bool(flags & p.CMD_FLAG_FUA)
        try:
            if cmd == p.CMD_READ:
                out = await vol.read(offset, length)
                if conn.structured:
                    stream.writelines((p.structured_header(
                        handle, p.REPLY_TYPE_OFFSET_DATA, 8 + len(out)),
                        struct.pack('>Q', offset), out))
                else:
                    stream.writelines((p.simple_reply(handle), out))
                return
            if cmd == p.CMD_BLOCK_STATUS:
                stream.write(p.structured(
                    handle, p.REPLY_TYPE_BLOCK_STATUS,
                    p.block_status_payload(await self._extents(
                        vol, offset, length,
                        flags & p.CMD_FLAG_REQ_ONE))))
                return
            if cmd == p.CMD_WRITE:
                await vol.write(offset, data, fua)
            elif cmd == p.CMD_TRIM:
                await vol.write_zeroes(offset, length, fua)
            elif cmd == p.CMD_WRITE_ZEROES:
                if not flags & p.CMD_FLAG_NO_HOLE:
                    await vol.write_zeroes(offset, length, fua)
                elif flags & p.CMD_FLAG_FAST_ZERO:
                    # Allocated zeros mean writing them: not fast.
                    stream.write(self._error(conn, handle, p.ENOTSUP))
                    return
                else:
                    for pos in range(0, length, 4 * 1024 * 1024):
                        n = min(4 * 1024 * 1024, length - pos)
                        await vol.write(offset + pos, bytes(n), fua)
            elif cmd == p.CMD_FLUSH:
                await vol.flush()
            elif cmd == p.CMD_CACHE:
                await vol.prefetch_map(offset, length)
            stream.write(p.simple_reply(handle))
        except Exception as e:  # noqa: BLE001 - every request is answered
            self._failed(stream, vol, conn, cmd, handle, offset, length, e)

    @staticmethod
    async def _extents(vol, offset, length, req_one):
        """base:allocation extents of a range (at most
        BLOCK_STATUS_LIMIT bytes of it; with req_one just the first)."""
        runs = await vol.block_status(offset, min(length,
                                                  BLOCK_STATUS_LIMIT))
        out = [(n, 0 if st == volume_mod.DATA else
                p.STATE_HOLE | p.STATE_ZERO) for n, st in runs]
        return out[:1] if req_one else out
