"""The transport side of one NBD connection (an asyncio BufferedProtocol).

During the handshake the server reads with :meth:`NbdStream.readexactly`.
In transmission, requests are parsed as bytes arrive and handed to a
callback at once, with no task, no StreamReader and no copy for large
payloads: the kernel writes a WRITE's payload of ``LARGE`` bytes or more
straight into that request's own buffer.

Flow control: reading pauses while the client does not read its replies
(the transport's buffer is full) or while the server holds too many
requests in flight (:meth:`NbdStream.hold`), so a client cannot make the
gateway buffer without bound.
"""

import asyncio

from cinder_ursa import exception
from cinder_ursa.nbd import protocol as p
from cinder_ursa.transport import aio


class NbdStream(aio.FlowControl, asyncio.BufferedProtocol):

    SCRATCH = 256 * 1024
    LARGE = 64 * 1024

    def __init__(self, serve):
        """``serve(stream)``: the coroutine that runs the connection."""
        aio.FlowControl.__init__(self)
        self._serve = serve
        self._buf = bytearray(self.SCRATCH)
        self._view = memoryview(self._buf)
        self._start = 0        # first unconsumed byte in the scratch buffer
        self._end = 0          # end of received bytes in it
        self._waiter = None    # readexactly() waiting for more bytes
        self._want = 0
        self._payload = None   # [request, bytearray, filled] being received
        self._on_request = None
        self._done = None      # transmission's end (DISC, loss, bad frame)
        self._held = False
        self._reading = True
        self._lost = None
        self.transport = None
        self.task = None
        self._loop = None

    # --- asyncio.BufferedProtocol -------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        aio.tune(transport)
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._serve(self))

    def connection_lost(self, exc):
        self._lost = ConnectionResetError(
            'NBD client went away%s' % (': %s' % exc if exc else ''))
        self._on_request = None
        self._wake()
        self._finish(self._lost)
        self.resume_writing()

    def get_buffer(self, sizehint):
        if self._payload is not None:
            _, buf, filled = self._payload
            return buf[filled:]
        if self._start and self.SCRATCH - self._end < self.LARGE + 64:
            n = self._end - self._start
            self._buf[:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        return self._view[self._end:]

    def buffer_updated(self, nbytes):
        if self._payload is not None:
            self._payload[2] += nbytes
            req, buf, filled = self._payload
            if filled < len(buf):
                return
            self._payload = None
            if self._on_request is not None:
                self._on_request(*req, buf)
        else:
            self._end += nbytes
        if self._on_request is not None:
            self._parse()
        else:
            self._wake()
            if self._end - self._start > self.SCRATCH // 2:
                self._set_reading(False)  # a client far ahead of us

    def pause_writing(self):
        super().pause_writing()
        self._update_reading()

    def resume_writing(self):
        super().resume_writing()
        self._update_reading()
        if self._on_request is not None and not self._held:
            self._parse()

    # --- handshake -----------------------------------------------------------

    async def readexactly(self, n):
        """The next ``n`` bytes (n <= SCRATCH // 2)."""
        while self._end - self._start < n:
            if self._lost is not None:
                raise asyncio.IncompleteReadError(
                    bytes(self._view[self._start:self._end]), n)
            self._want = n
            self._waiter = self._loop.create_future()
            self._set_reading(True)
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._view[self._start:self._start + n])
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return data

    def _wake(self):
        w = self._waiter
        if w is not None and not w.done() and (
                self._lost is not None or
                self._end - self._start >= self._want):
            w.set_result(None)

    async def start_tls(self, context):
        """Upgrade to TLS (after NBD_OPT_STARTTLS was acknowledged)."""
        if self._end != self._start:
            raise exception.ProtocolError(
                reason='data sent before the TLS handshake')
        aio.send_batched(self.transport)  # the ACK goes out in clear
        self.transport = await asyncio.get_running_loop().start_tls(
            self.transport, self, context, server_side=True)

    def write(self, data):
        """Send (with the replies of a burst, in one system call)."""
        if not self.transport.is_closing():
            aio.queue_send(self.transport, data)

    def writelines(self, buffers):
        if not self.transport.is_closing():
            aio.queue_send(self.transport, buffers)

    def close(self):
        aio.send_batched(self.transport)
        self.transport.close()

    # --- transmission --------------------------------------------------------

    def serve_requests(self, on_request):
        """From now on, hand each request to ``on_request(flags, cmd,
        handle, offset, length, payload)`` as it arrives; return a future
        that completes when the client disconnects (NBD_CMD_DISC ends
        parsing: call :meth:`stop`) or fails with the reason the
        connection is unusable."""
        self._done = self._loop.create_future()
        self._on_request = on_request
        if self._lost is not None:
            self._finish(self._lost)
        else:
            self._set_reading(True)
            self._parse()
        return self._done

    def stop(self):
        """No more requests: the client said NBD_CMD_DISC."""
        self._on_request = None
        self._set_reading(False)
        self._finish(None)

    def hold(self, held):
        """Stop (True) or resume (False) taking requests, received or
        not: too many are in flight."""
        self._held = held
        self._update_reading()
        if not (held or self._paused) and self._on_request is not None:
            self._parse()

    def _finish(self, err):
        done = self._done
        if done is None or done.done():
            return
        if err is None:
            done.set_result(None)
        else:
            done.set_exception(err)

    def _fail(self, reason):
        self._on_request = None
        self._finish(exception.ProtocolError(reason=reason))

    def _parse(self):
        buf, view = self._buf, self._view
        pos, end = self._start, self._end
        size = p.REQUEST.size
        if self._several(pos, end):
            # What these requests send to chunk servers (at once, or from
            # tasks this turn of the loop) leaves together.
            aio.defer_batch(self._loop)
        while end - pos >= size and self._on_request is not None and \
                not (self._held or self._paused):
            magic, flags, cmd, handle, offset, length = \
                p.REQUEST.unpack_from(buf, pos)
            if magic != p.REQUEST_MAGIC:
                self._fail('bad request magic 0x%x' % magic)
                return
            if cmd != p.CMD_WRITE:
                pos += size
                self._on_request(flags, cmd, handle, offset, length, None)
                continue
            if length > p.MAX_REQUEST:
                # The payload cannot be skipped safely.
                self._fail('WRITE of %d bytes' % length)
                return
            at = pos + size
            if end - at >= length:
                pos = at + length
                self._on_request(flags, cmd, handle, offset, length,
                                 bytes(view[at:pos]))
                continue
            if length >= self.LARGE:
                payload = aio.POOL.get(length)
                payload[:end - at] = view[at:end]
                self._payload = [(flags, cmd, handle, offset, length),
                                 payload, end - at]
                pos = end
            break
        if pos == end:
            pos = end = 0
        self._start, self._end = pos, end

    def _several(self, pos, end):
        """Whether the buffer holds more than one whole request."""
        size = p.REQUEST.size
        if end - pos < 2 * size:
            return False
        cmd, length = p.REQUEST.unpack_from(self._buf, pos)[2::3]
        if cmd == p.CMD_WRITE:
            pos += length
        return end - pos >= 2 * size

    def _update_reading(self):
        self._set_reading(not (self._held or self._paused) and
                          (self._on_request is not None or
                           self._waiter is not None))

    def _set_reading(self, on):
        if on == self._reading or self.transport is None or \
                self.transport.is_closing():
            return
        self._reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()
