"""The transport side of one NBD connection (an asyncio BufferedProtocol).

During the handshake the server reads with :meth:`NbdStream.readexactly`.
In transmission, requests are parsed as bytes arrive and handed to a
callback at once, with no task, no StreamReader and no copy for large
payloads: the transport's :class:`ReceiveBuffer` has the kernel write a
WRITE's large payload straight into that request's own buffer.

Flow control: reading pauses while the client does not read its replies
(the transport's buffer is full) or while the server holds too many
requests in flight (:meth:`NbdStream.hold`), so a client cannot make the
gateway buffer without bound.

Memory: the handshake reads into a :class:`HandshakeBuffer` of 4 KiB that
grows only as far as the options a client sends need; the transmission's
256 KiB receive buffer is allocated when transmission starts.  A
connection that never completes the handshake (a scan, a flood of idle
connections) so costs a few KiB, not 256 (security audit F6).
"""

import asyncio
import logging

from cinder_ursa import exception
from cinder_ursa.nbd import protocol as p
from cinder_ursa.transport import aio
from cinder_ursa.transport import buffers

LOG = logging.getLogger(__name__)

# Seconds a WRITE's payload may take to arrive after its header, counted
# while the gateway reads or would but for the client not reading its
# replies (not while the gateway holds the connection): its buffer
# counts in the budget every connection shares, and a client trickling
# it, or never sending it, would keep that share for good.  32 MiB, the
# largest, take 27 s at 10 Mbit/s.
PAYLOAD_TIMEOUT = 60.0
# Seconds the client may leave the replies queued for it unread (the
# transport's buffer above its high-water mark) before the connection is
# dropped: those bytes count in the budget every connection shares, and
# a client that reads nothing would keep its share (a quarter) for good.
SEND_TIMEOUT = 60.0


class HandshakeBuffer:
    """The receive buffer of the handshake: the ``get_buffer`` /
    ``buffer_updated`` / ``take`` / ``buffered`` part of
    :class:`~cinder_ursa.transport.buffers.ReceiveBuffer`, starting at
    START bytes.  It grows (by copying into a new buffer, never resizing
    one the transport may still have a view of) to hold what has arrived
    plus ROOM; the stream stops reading once LIMIT bytes are buffered, so
    it stays below LIMIT + ROOM, a little over 2 options of the largest
    size (``protocol.MAX_OPTION_DATA``)."""

    START = 4096
    ROOM = 4096
    LIMIT = 2 * (p.MAX_OPTION_DATA + p.OPTION.size)

    def __init__(self):
        self._buf = bytearray(self.START)
        self._start = 0
        self._end = 0

    @property
    def buffered(self):
        return self._end - self._start

    def get_buffer(self, sizehint):
        if len(self._buf) - self._end < self.ROOM:
            n = self._end - self._start
            size = max(min(2 * len(self._buf), self.LIMIT + self.ROOM),
                       n + self.ROOM)
            new = bytearray(size)
            new[:n] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = new, 0, n
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes):
        self._end += nbytes

    def take(self, n):
        """The next ``n`` bytes, or None until that many have arrived."""
        if self._end - self._start < n:
            return None
        data = bytes(self._buf[self._start:self._start + n])
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return data


class NbdStream(aio.FlowControl, asyncio.BufferedProtocol):

    SCRATCH = buffers.ReceiveBuffer.SCRATCH

    def __init__(self, serve):
        """``serve(stream)``: the coroutine that runs the connection."""
        aio.FlowControl.__init__(self)
        self._serve = serve
        # Until transmission: the transmission's buffer comes with it.
        self._rx = HandshakeBuffer()
        self._waiter = None    # readexactly() waiting for more bytes
        self._want = 0
        self._on_request = None
        self._done = None      # transmission's end (DISC, loss, bad frame)
        self._held = False
        self._reading = True
        self._lost = None
        self.transport = None
        self.task = None
        self._loop = None
        # Called when the transport's buffer has drained below its
        # low-water mark (the server gives back the budget of replies
        # sent meanwhile).
        self.on_drain = None
        # The server's InflightBudget (None: none): a WRITE's payload
        # buffer counts in it from its header on (see _admit).
        self.budget = None
        self._reserved = 0     # of it: payload buffers not handed over
        self._stalled = False  # waiting for the budget to make one
        # PAYLOAD_TIMEOUT of the payload being received: seconds left
        # (None: none is), since when its clock runs, and its timer.
        self._payload_left = None
        self._payload_since = 0.0
        self._payload_timer = None
        self._send_timer = None  # SEND_TIMEOUT while writing is paused

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
        self._unreserve()
        self._wake()
        self._finish(self._lost)
        self.resume_writing()

    def get_buffer(self, sizehint):
        return self._rx.get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        self._rx.buffer_updated(nbytes)
        if self._payload_left is not None and not self._rx.receiving:
            self._payload_done()
        if self._on_request is not None:
            self._parse()
        else:
            self._wake()
            if self._rx.buffered >= HandshakeBuffer.LIMIT:
                self._set_reading(False)  # a client far ahead of us

    def pause_writing(self):
        super().pause_writing()
        if self._send_timer is None and self._loop is not None:
            self._send_timer = self._loop.call_later(SEND_TIMEOUT,
                                                     self._send_late)
        self._update_reading()

    def resume_writing(self):
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self.on_drain is not None:
            self.on_drain()
        self._update_reading()
        if self._on_request is not None and not self._held:
            self._parse()

    # --- handshake -----------------------------------------------------------

    async def readexactly(self, n):
        """The next ``n`` bytes (n < HandshakeBuffer.LIMIT)."""
        data = self._rx.take(n)
        while data is None:
            if self._lost is not None:
                raise asyncio.IncompleteReadError(
                    self._rx.take(self._rx.buffered), n)
            self._want = n
            self._waiter = self._loop.create_future()
            self._set_reading(True)
            try:
                await self._waiter
            finally:
                self._waiter = None
            data = self._rx.take(n)
        return data

    def _wake(self):
        w = self._waiter
        if w is not None and not w.done() and (
                self._lost is not None or self._rx.buffered >= self._want):
            w.set_result(None)

    async def start_tls(self, context, timeout=None):
        """Upgrade to TLS (after NBD_OPT_STARTTLS was acknowledged); the
        TLS handshake must end within ``timeout`` seconds."""
        if self._rx.buffered:
            raise exception.ProtocolError(
                reason='data sent before the TLS handshake')
        aio.send_batched(self.transport)  # the ACK goes out in clear
        self.transport = await asyncio.get_running_loop().start_tls(
            self.transport, self, context, server_side=True,
            ssl_handshake_timeout=timeout)

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

    def abort(self):
        """End the connection now (a session whose volume was detached):
        no request received but not handed over yet is, and what is
        queued for the client is dropped.  ``close`` waits until the
        client has read the queued replies, for ever if it reads
        nothing, with the session and its export kept meanwhile."""
        self._on_request = None
        self._unreserve()
        if self.transport is not None:
            self.transport.abort()

    def unsent(self):
        """Bytes written but not taken by the kernel yet: in the
        transport's buffer or the open output batch."""
        t = self.transport
        if t is None or t.is_closing():
            return 0
        return t.get_write_buffer_size() + aio.batched_bytes(t)

    # --- transmission --------------------------------------------------------

    def serve_requests(self, on_request):
        """From now on, hand each request to ``on_request(flags, cmd,
        handle, offset, length, payload)`` as it arrives; return a future
        that completes when the client disconnects (NBD_CMD_DISC ends
        parsing: call :meth:`stop`) or fails with the reason the
        connection is unusable."""
        self._done = self._loop.create_future()
        if isinstance(self._rx, HandshakeBuffer):
            # The transmission's buffer, with what the client sent
            # after the handshake already (less than its scratch).
            left = self._rx.take(self._rx.buffered) or b''
            self._rx = buffers.ReceiveBuffer(p.REQUEST,
                                             p.request_payload_length)
            if self.budget is not None:
                self._rx.admit = self._admit
            if left:
                self._rx.get_buffer(-1)[:len(left)] = left
                self._rx.buffer_updated(len(left))
        self._on_request = on_request
        if self._lost is not None:
            self._finish(self._lost)
        else:
            self._set_reading(True)
            self._parse()
        return self._done

    # --- payload buffers within the budget --------------------------------

    def _admit(self, n):
        """ReceiveBuffer.admit: a WRITE's header asks for a buffer of n
        bytes, made (and filled, so resident) at once.  It counts in the
        server's budget from now on, until the request is handed over
        (which counts it then); without room, reading stops until there
        is some.  A 28-byte header of a 32 MiB WRITE per connection made
        the gateway hold 32 MiB each, outside the budget."""
        if not self.budget.reserve(n):
            self._stalled = True
            self.budget.waiting.add(self._unstall)
            self._update_reading()
            return False
        self._reserved += n
        self._payload_left = PAYLOAD_TIMEOUT
        self._payload_clock(not self._held)
        if self._stalled:
            # Parsed again by another path (a hold let go) and admitted.
            self._stalled = False
            self.budget.waiting.discard(self._unstall)
            self._update_reading()
        return True

    def _payload_clock(self, running):
        """Run (or stop) the clock of the payload being received (see
        PAYLOAD_TIMEOUT)."""
        if self._payload_left is None:
            return
        now = self._loop.time()
        if self._payload_timer is not None:
            self._payload_timer.cancel()
            self._payload_timer = None
            self._payload_left -= now - self._payload_since
        if running:
            self._payload_since = now
            self._payload_timer = self._loop.call_later(
                max(self._payload_left, 0.0), self._payload_late)

    def _payload_done(self):
        if self._payload_timer is not None:
            self._payload_timer.cancel()
            self._payload_timer = None
        self._payload_left = None

    def _payload_late(self):
        """See PAYLOAD_TIMEOUT."""
        self._payload_timer = None
        LOG.warning('NBD client %s: the data of a WRITE did not arrive '
                    'within %g s of its header; connection dropped',
                    self.transport.get_extra_info('peername') or
                    'on the unix socket', PAYLOAD_TIMEOUT)
        self.abort()

    def _send_late(self):
        """See SEND_TIMEOUT."""
        self._send_timer = None
        LOG.warning('NBD client %s read none of its replies for %g s; '
                    'connection dropped',
                    self.transport.get_extra_info('peername') or
                    'on the unix socket', SEND_TIMEOUT)
        self.abort()

    def _unstall(self):
        """Called by the budget when data was given back: parse again
        (the header asks for its buffer anew)."""
        if not self._stalled:
            return
        self._stalled = False
        self.budget.waiting.discard(self._unstall)
        # From the loop: the budget wakes every waiting stream in turn.
        self._loop.call_soon(self._resume_parsing)

    def _resume_parsing(self):
        self._update_reading()
        if self._on_request is not None and not (self._held or
                                                 self._paused or
                                                 self._stalled):
            self._parse()

    def _handed(self, payload):
        """A request was handed over: its payload buffer, if it had one
        of its own (a memoryview, see ReceiveBuffer.next), no longer
        counts as being received."""
        if self._reserved and isinstance(payload, memoryview):
            n = min(len(payload), self._reserved)
            self._reserved -= n
            self.budget.release(n)

    def _unreserve(self):
        self._payload_done()
        if self.budget is not None:
            self.budget.waiting.discard(self._unstall)
            if self._reserved:
                n, self._reserved = self._reserved, 0
                self.budget.release(n)

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

    def _parse(self):
        rx = self._rx
        try:
            requests = rx.frames()
        except exception.ProtocolError as e:
            self._on_request = None
            self._finish(e)
            return
        if len(requests) > 1:
            # What these requests send to chunk servers (at once, or from
            # tasks this turn of the loop) leaves together; also for those
            # a hold kept back, which come all at once when it ends.
            aio.defer_batch(self._loop)
        for i, ((_, flags, cmd, handle, offset, length), payload) in \
                enumerate(requests):
            if self._on_request is None or self._held or self._paused:
                rx.unread(requests[i:])
                return
            self._on_request(flags, cmd, handle, offset, length, payload)
            self._handed(payload)

    def _update_reading(self):
        self._set_reading(not (self._held or self._paused or
                               self._stalled) and
                          (self._on_request is not None or
                           self._waiter is not None))
        # The client's time: while the gateway reads, or would but for
        # the client not reading its replies (paused for writing).
        self._payload_clock(not (self._held or self._stalled) and
                            self._on_request is not None)

    def _set_reading(self, on):
        if on == self._reading or self.transport is None or \
                self.transport.is_closing():
            return
        self._reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()
