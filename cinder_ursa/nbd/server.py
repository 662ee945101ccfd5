"""ursa-nbd's server: exports Ursa volumes over NBD (fixed newstyle).

Life of a connection: handshake; options (EXPORT_NAME, GO, INFO, LIST,
ABORT; anything else gets NBD_REP_ERR_UNSUP); then transmission, where each
request is validated before it reaches the volume and runs as its own task,
so replies go out in completion order.

All connections to one export share one open :class:`Volume` (one lease,
one dirty set), so a FLUSH on any connection covers writes completed on
every connection: that is what makes CAN_MULTI_CONN safe to advertise.
"""

import asyncio
import logging
import struct

from cinder_ursa import exception
from cinder_ursa.common import rest
from cinder_ursa.nbd import protocol as p

LOG = logging.getLogger(__name__)


class _Export:
    def __init__(self, volume):
        self.volume = volume
        self.users = 0


class NbdServer:
    """Serves NBD clients with volumes of ``cluster`` (an async Cluster)."""

    def __init__(self, cluster, read_only=False, holder=None):
        self.cluster = cluster
        self.read_only = read_only
        self.holder = holder
        self._exports = {}
        self._lock = asyncio.Lock()
        self.connections = set()

    # --- exports -----------------------------------------------------------

    async def _open(self, name):
        async with self._lock:
            info = await self.cluster.master.request(
                'GET', '/volumes/%s' % rest.quote(name))
            vid = info['volume']['id']
            exp = self._exports.get(vid)
            if exp is None:
                vol = await self.cluster.open_volume(
                    vid, writable=not self.read_only, holder=self.holder)
                exp = self._exports[vid] = _Export(vol)
            exp.users += 1
            return exp

    async def _close(self, exp):
        async with self._lock:
            exp.users -= 1
            if exp.users == 0:
                self._exports.pop(exp.volume.id, None)
                await exp.volume.close()

    def flags(self):
        f = (p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA |
             p.TF_CAN_MULTI_CONN | p.TF_SEND_CACHE)
        if self.read_only:
            f |= p.TF_READ_ONLY
        else:
            f |= p.TF_SEND_WRITE_ZEROES
        return f

    # --- connection --------------------------------------------------------

    async def handle(self, reader, writer):
        peer = writer.get_extra_info('peername')
        task = asyncio.current_task()
        self.connections.add(task)
        exp = None
        try:
            exp = await self._handshake(reader, writer)
            if exp is not None:
                LOG.info('NBD client %s attached to volume %s', peer,
                         exp.volume.name)
                await self._transmission(reader, writer, exp)
        except (asyncio.IncompleteReadError, ConnectionError):
            LOG.debug('NBD client %s went away', peer)
        except exception.ProtocolError as e:
            LOG.warning('Dropping NBD client %s: %s', peer, e)
        finally:
            self.connections.discard(task)
            if exp is not None:
                try:
                    await self._close(exp)
                except exception.UrsaError as e:
                    LOG.warning('Closing volume %s: %s', exp.volume.name, e)
            writer.close()

    async def _handshake(self, reader, writer):
        writer.write(p.handshake())
        await writer.drain()
        (cflags,) = struct.unpack('>I', await reader.readexactly(4))
        if not cflags & p.FLAG_C_FIXED_NEWSTYLE or cflags & ~3:
            raise exception.ProtocolError(
                reason='client flags 0x%x: only fixed newstyle is served'
                % cflags)
        no_zeroes = bool(cflags & p.FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION.unpack(
                await reader.readexactly(p.OPTION.size))
            if magic != p.IHAVEOPT:
                raise exception.ProtocolError(reason='bad option magic')
            if length > p.MAX_OPTION_DATA:
                raise exception.ProtocolError(
                    reason='option data of %d bytes' % length)
            data = await reader.readexactly(length)
            if option == p.OPT_EXPORT_NAME:
                exp = await self._try_open(data.decode('utf-8', 'replace'))
                if exp is None:
                    return None  # the spec: just close the connection
                writer.write(p.EXPORT_NAME_REPLY.pack(exp.volume.size,
                                                      self.flags()))
                if not no_zeroes:
                    writer.write(bytes(124))
                await writer.drain()
                return exp
            if option == p.OPT_ABORT:
                writer.write(p.option_reply(option, p.REP_ACK))
                await writer.drain()
                return None
            if option == p.OPT_LIST:
                if data:
                    writer.write(p.option_reply(option, p.REP_ERR_INVALID))
                    continue
                for vol in (await self.cluster.master.request(
                        'GET', '/volumes'))['volumes']:
                    name = vol['name'].encode()
                    writer.write(p.option_reply(
                        option, p.REP_SERVER,
                        struct.pack('>I', len(name)) + name))
                writer.write(p.option_reply(option, p.REP_ACK))
                await writer.drain()
                continue
            if option in (p.OPT_INFO, p.OPT_GO):
                exp = await self._info(writer, option, data)
                if exp is not None and option == p.OPT_GO:
                    return exp
                if exp is not None:
                    await self._close(exp)
                continue
            writer.write(p.option_reply(option, p.REP_ERR_UNSUP))
            await writer.drain()

    async def _try_open(self, name):
        try:
            return await self._open(name)
        except exception.UrsaError as e:
            LOG.warning('NBD export %r refused: %s', name, e)
            return None

    async def _info(self, writer, option, data):
        if len(data) < 6:
            writer.write(p.option_reply(option, p.REP_ERR_INVALID))
            await writer.drain()
            return None
        (nlen,) = struct.unpack_from('>I', data)
        if 4 + nlen + 2 > len(data):
            writer.write(p.option_reply(option, p.REP_ERR_INVALID))
            await writer.drain()
            return None
        name = data[4:4 + nlen].decode('utf-8', 'replace')
        (nreq,) = struct.unpack_from('>H', data, 4 + nlen)
        if len(data) != 4 + nlen + 2 + 2 * nreq:
            writer.write(p.option_reply(option, p.REP_ERR_INVALID))
            await writer.drain()
            return None
        exp = await self._try_open(name)
        if exp is None:
            msg = b'no such volume, or it cannot be opened'
            writer.write(p.option_reply(option, p.REP_ERR_UNKNOWN, msg))
            await writer.drain()
            return None
        writer.write(p.option_reply(option, p.REP_INFO, p.info_export(
            exp.volume.size, self.flags())))
        writer.write(p.option_reply(option, p.REP_INFO, p.info_block_size(
            p.MAX_REQUEST)))
        writer.write(p.option_reply(option, p.REP_ACK))
        await writer.drain()
        return exp

    # --- transmission ------------------------------------------------------

    async def _transmission(self, reader, writer, exp):
        vol = exp.volume
        tasks = set()
        try:
            while True:
                magic, flags, cmd, handle, offset, length = p.REQUEST.unpack(
                    await reader.readexactly(p.REQUEST.size))
                if magic != p.REQUEST_MAGIC:
                    raise exception.ProtocolError(
                        reason='bad request magic 0x%x' % magic)
                if cmd == p.CMD_DISC:
                    break
                data = None
                if cmd == p.CMD_WRITE:
                    if length > p.MAX_REQUEST:
                        # The payload cannot be skipped safely.
                        raise exception.ProtocolError(
                            reason='WRITE of %d bytes' % length)
                    data = await reader.readexactly(length)
                err = self._validate(vol, cmd, flags, offset, length)
                if err:
                    writer.write(p.simple_reply(handle, err))
                    continue
                t = asyncio.get_running_loop().create_task(self._run(
                    writer, vol, cmd, flags, handle, offset, length, data))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if not self.read_only:
                try:
                    await vol.flush()
                except exception.UrsaError as e:
                    LOG.warning('Flush at disconnect of %s: %s', vol.name, e)

    def _validate(self, vol, cmd, flags, offset, length):
        if cmd not in (p.CMD_READ, p.CMD_WRITE, p.CMD_FLUSH, p.CMD_CACHE,
                       p.CMD_WRITE_ZEROES):
            return p.EINVAL
        if cmd == p.CMD_FLUSH:
            return 0
        if self.read_only and cmd in (p.CMD_WRITE, p.CMD_WRITE_ZEROES):
            return p.EPERM
        if cmd == p.CMD_READ and length > p.MAX_REQUEST:
            return p.EINVAL
        if offset + length > vol.size:
            return p.ENOSPC if cmd in (p.CMD_WRITE,
                                       p.CMD_WRITE_ZEROES) else p.EINVAL
        return 0

    async def _run(self, writer, vol, cmd, flags, handle, offset, length,
                   data):
        fua = bool(flags & p.CMD_FLAG_FUA)
        try:
            if cmd == p.CMD_READ:
                out = await vol.read(offset, length)
                writer.writelines((p.simple_reply(handle), out))
                return
            if cmd == p.CMD_WRITE:
                await vol.write(offset, data, fua)
            elif cmd == p.CMD_WRITE_ZEROES:
                for pos in range(0, length, 4 * 1024 * 1024):
                    n = min(4 * 1024 * 1024, length - pos)
                    await vol.write(offset + pos, bytes(n), fua)
            elif cmd == p.CMD_FLUSH:
                await vol.flush()
            elif cmd == p.CMD_CACHE:
                await vol.prefetch_map(offset, length)
            writer.write(p.simple_reply(handle))
        except exception.UrsaError as e:
            LOG.warning('NBD %s of volume %s at %d+%d failed: %s',
                        cmd, vol.name, offset, length, e)
            writer.write(p.simple_reply(handle, p.errno_for(e)))

