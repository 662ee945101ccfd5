"""asyncio transport of the data protocol: authenticated, pipelined.

:class:`PeerConnection` is the calling side: many requests in flight on one
TCP connection, replies matched by request id.  :class:`ServerConnection`
is the serving side: it authenticates the peer, then hands every frame to a
handler *synchronously*, in arrival order, so a handler can apply writes in
the order they were sent before it awaits anything.
"""

import asyncio
import functools
import hmac
import itertools
import logging
import os
import socket
import threading
import time

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import tickets
from cinder_ursa.transport import buffers
from cinder_ursa.transport import limits as limits_mod
from cinder_ursa.transport.buffers import BufferPool  # noqa: F401 - old home

LOG = logging.getLogger(__name__)

_req_ids = itertools.count(1)


def next_req_id():
    return next(_req_ids)


# Output batching.  While a batch is open, what connections send is
# queued, and leaves with one writev per connection when the batch closes:
# a burst of pipelined messages costs one system call per peer, not one
# per message.  A batch is open while one burst of received frames is
# handled (ServerConnection), or from a burst of received replies until
# the callbacks those replies made ready have run (defer_batch): they run
# in the next pass over the ready queue, in order, and the batch closes
# right after them.  Nothing waits for a later poll of the event loop.
# One batch per thread (the sync client runs its own loop in a thread),
# and it belongs to the loop that opened it: a loop that stops with its
# closing callback still queued (run_until_complete returns as soon as its
# future is done) must not leave the thread's later loops batching forever.
_local = threading.local()
_running_loop = asyncio.events._get_running_loop
BATCH_LARGE = 64 * 1024


def queue_send(transport, buffers):
    """Send now, or at the end of the open batch.  A large message goes at
    once (after what the batch holds for the same transport): batching
    saves system calls on small messages, and holding megabytes back only
    delays them."""
    batch = _current_batch()
    if isinstance(buffers, (bytes, bytearray)):
        buffers = [buffers]
    if batch is None:
        transport.writelines(buffers)
        return
    size = sum(len(b) for b in buffers)
    if size >= BATCH_LARGE:
        send_batched(transport)
        transport.writelines(buffers)
        return
    out = batch.get(transport)
    if out is None:
        batch[transport] = [list(buffers), size]
    else:
        out[0].extend(buffers)
        out[1] += size


def _current_batch():
    """The batch open in this thread for the running loop, or None (one
    left open by a loop that stopped first is sent and closed)."""
    batch = getattr(_local, 'batch', None)
    if batch is not None and _local.loop is not _running_loop():
        _close_batch()
        return None
    return batch


def _open_batch():
    if _current_batch() is not None:
        return False
    _local.batch = {}
    _local.loop = _running_loop()
    return True


def _close_batch():
    batch, _local.batch = getattr(_local, 'batch', None), None
    _local.loop = None
    for transport, (out, _) in (batch or {}).items():
        if not transport.is_closing():
            transport.writelines(out)


def defer_batch(loop):
    """Open a batch that closes once the callbacks made ready so far on
    ``loop`` have run (call after resolving a burst of futures)."""
    if _open_batch():
        loop.call_soon(_close_batch)


def _batched(transport):
    """Bytes queued for ``transport`` in the open batch."""
    batch = _current_batch()
    out = batch.get(transport) if batch is not None else None
    return out[1] if out else 0


def batched_bytes(transport):
    """Bytes queued for ``transport`` in the open batch (not written to
    it yet)."""
    return _batched(transport)


def send_batched(transport):
    """Send what the open batch holds for ``transport`` now."""
    batch = _current_batch()
    out = batch.pop(transport, None) if batch is not None else None
    if out and not transport.is_closing():
        transport.writelines(out[0])


def tune(transport):
    """TCP_NODELAY on a TCP transport (a unix socket has nothing to tune)."""
    sock = transport.get_extra_info('socket')
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class FrameReader(buffers.ReceiveBuffer):
    """Receive side of the data protocol: :meth:`buffer_updated` returns
    the frames that ``nbytes`` new bytes completed (a ReceiveBuffer over
    the codec's header; ``scratch`` and ``payload_length`` as there)."""

    def __init__(self, scratch=None, payload_length=codec.body_length):
        super().__init__(codec.HEADER, payload_length, scratch)

    def buffer_updated(self, nbytes):
        """Return the frames completed by ``nbytes`` new bytes."""
        super().buffer_updated(nbytes)
        frame = codec.Frame
        return [frame(fields[2], fields[3], fields[4], memoryview(body))
                for fields, body in self.frames()]

    def whole(self):
        """The whole frames received and not taken yet."""
        frame = codec.Frame
        return [frame(fields[2], fields[3], fields[4], memoryview(body))
                for fields, body in self.frames()]

    def next_frame(self):
        """The next whole frame, or None (one at a time: a server before
        authentication)."""
        got = self.next()
        if got is None:
            return None
        fields, body = got
        return codec.Frame(fields[2], fields[3], fields[4],
                           memoryview(body))


class FlowControl:
    """pause_writing/resume_writing of a protocol, and drain() to wait
    for the transport's buffer to empty below its high-water mark.

    List it before asyncio's protocol classes among the bases: their
    BaseProtocol has no-op methods of the same names.
    """

    def __init__(self):
        self._paused = False
        self._waiters = []

    @property
    def paused(self):
        """Whether the transport holds more than its high-water mark."""
        return self._paused

    def pause_writing(self):
        self._paused = True

    def resume_writing(self):
        self._paused = False
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters = []

    async def drain(self):
        if self._paused:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut


class PeerConnection(FlowControl, asyncio.BufferedProtocol):
    """An authenticated connection to a chunk server: with the cluster key,
    or with a ticket (``grant``, a :class:`~..protocol.tickets.Grant`; see
    protocol/tickets.py), which the server holds to its scope."""

    def __init__(self, key, peer, liveness=0.0, grant=None):
        FlowControl.__init__(self)
        self._key = key
        # The ticket this connection is authenticated with (None: the
        # cluster key); replaced by reticket().
        self.grant = grant
        self.peer = peer
        # What the server understands beyond the first release (AUTH_OK's
        # flags: codec.CAP_*).
        self.caps = 0
        self._reader = FrameReader()
        self._pending = {}
        self._transport = None
        # Liveness: while requests are pending, a watchdog ticks every
        # quarter of ``liveness``; a tick that finds nothing received and
        # nothing of ours taken by the peer since the last one sends a
        # PING, which a live peer answers at once however long its
        # requests take, and four silent ticks in a row fail the
        # connection (UrsaTimeout): a hung peer (SIGSTOP, a link dropping
        # packets) is given up after about ``liveness`` seconds, a slow
        # one never.  0 turns it off, and so does a server that does not
        # say it answers PING (AUTH_OK's CAP_PING: an older one closes
        # the connection on it).
        self._liveness = liveness
        self._watch = None
        self._heard = 0              # receive events so far
        self._queued = 0             # bytes handed to the transport
        self._quiet = 0              # silent ticks in a row
        self._mark = None            # (events, bytes taken) at last tick
        # Kept: get_running_loop() costs a getpid() system call per use.
        self._loop = asyncio.get_running_loop()
        self._authed = self._loop.create_future()
        self._client_nonce = os.urandom(codec.NONCE_SIZE)
        self._server_nonce = None
        self.closed = False
        self._error = None
        # Called with this connection when its server says it is about
        # to close it (GOAWAY): its pool stops handing it out.
        self.on_goaway = None
        self.going_away = False

    @classmethod
    async def connect(cls, host, port, key, timeout=10.0, liveness=0.0,
                      grant=None):
        """Connect and authenticate: with ``grant`` (a ticket, when this
        client does not hold the cluster key: ``key`` may be None), else
        with ``key``; over TLS when this process has a data TLS context
        (:func:`set_data_tls`), the server's certificate verified against
        ``host``."""
        loop = asyncio.get_running_loop()
        peer = '%s:%d' % (host, port)
        tls = _data_tls
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: cls(key, peer, liveness, grant), host, port,
                    ssl=tls, server_hostname=host if tls else None),
                timeout)
            await asyncio.wait_for(asyncio.shield(proto._authed), timeout)
        except TimeoutError:
            raise exception.UrsaTimeout(peer=peer, seconds=timeout) from None
        except OSError as e:
            raise exception.UrsaConnectionError(
                peer=peer, reason=e.strerror or str(e)) from e
        return proto

    # asyncio.Protocol
    def connection_made(self, transport):
        self._transport = transport
        tune(transport)

    def get_buffer(self, sizehint):
        return self._reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        self._heard += 1
        try:
            frames = self._reader.buffer_updated(nbytes)
        except exception.ProtocolError as e:
            self._fail(e)
            return
        for frame in frames:
            if not self._authed.done():
                self._auth_step(frame)
                continue
            fut = self._pending.pop(frame.req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
            elif frame.opcode == codec.GOAWAY:
                self._going_away()
        if len(frames) > 1:
            defer_batch(self._loop)

    def _auth_step(self, frame):
        if frame.opcode == codec.CHALLENGE and self._server_nonce is None:
            if len(frame.body) != codec.NONCE_SIZE:
                self._fail(exception.ProtocolError(reason='bad CHALLENGE'))
                return
            self._server_nonce = bytes(frame.body)
            grant = self.grant
            if grant is None:
                mac = codec.client_mac(self._key, self._server_nonce,
                                       self._client_nonce)
                self._transport.write(codec.encode_auth(self._client_nonce,
                                                        mac))
            else:
                mac = codec.client_mac(grant.session_key, self._server_nonce,
                                       self._client_nonce)
                self._transport.write(codec.encode_auth_ticket(
                    self._client_nonce, mac, grant.raw))
        elif frame.opcode == codec.AUTH_OK and self._server_nonce:
            # Under a ticket, only a holder of the cluster key can derive
            # its session key: the same proof.
            key = self._key if self.grant is None else self.grant.session_key
            expect = codec.server_mac(key, self._server_nonce,
                                      self._client_nonce)
            if not hmac.compare_digest(bytes(frame.body), expect):
                self._fail(exception.NotAuthorized(
                    reason='%s failed to prove it holds the cluster key'
                    % self.peer))
                return
            self.caps = frame.flags
            if not frame.flags & codec.CAP_PING:
                # A server older than PING closes the connection on one:
                # no liveness check with it (a rolling upgrade).
                self._liveness = 0.0
            self._authed.set_result(True)
        elif frame.opcode == codec.AUTH | codec.REPLY:
            try:
                codec.reply_status(frame.body)
            except exception.UrsaError as e:
                self._fail(e)
                return
            self._fail(exception.ProtocolError(reason='unexpected auth reply'))
        else:
            self._fail(exception.ProtocolError(
                reason='unexpected %r during authentication' % frame))

    def _going_away(self):
        """The server found this connection idle and closes it soon: no
        new request goes to it (its pool forgets it), the replies of
        those sent already still come, and it is closed once none is
        pending, by us (the server closes it too, later)."""
        if self.going_away:
            return
        LOG.debug('%s closes this idle connection; the next request opens '
                  'a new one', self.peer)
        if self.on_goaway is not None:
            self.on_goaway(self)
        self.retire()

    def retire(self):
        """Send no new request on this connection (its owner forgot it):
        it is closed once the replies of those sent have come."""
        self.going_away = True
        self._close_when_done()

    def _close_when_done(self):
        if self.closed:
            return
        if not self._pending:
            self.close()
            return
        self._loop.call_later(0.5, self._close_when_done)

    def connection_lost(self, exc):
        err = exception.UrsaConnectionError(
            peer=self.peer, reason=str(exc) if exc else 'connection closed')
        self._fail(self._error or err)

    def _fail(self, err):
        if self._error is None:
            self._error = err
        self.closed = True
        if not self._authed.done():
            self._authed.set_exception(err)
            self._authed.exception()  # mark retrieved
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._transport is not None:
            self._transport.close()
        self.resume_writing()

    def send(self, req_id, buffers):
        """Send one request now; return the future of its reply frame."""
        if self.closed:
            raise self._error or exception.UrsaConnectionError(
                peer=self.peer, reason='connection closed')
        fut = self._loop.create_future()
        self._pending[req_id] = fut
        queue_send(self._transport, buffers)
        if self._liveness:
            self._queued += len(buffers) if isinstance(
                buffers, (bytes, bytearray, memoryview)) else sum(
                    map(len, buffers))
            if self._watch is None:
                self._mark = (self._heard, self._taken())
                self._quiet = 0
                self._watch = self._loop.call_later(self._liveness / 4,
                                                    self._tick)
        return fut

    def _taken(self):
        """Bytes of ours the kernel took off the transport's buffer."""
        return self._queued - self._transport.get_write_buffer_size()

    def _tick(self):
        """The liveness watchdog (see __init__)."""
        self._watch = None
        if self.closed or not self._pending:
            return
        # Progress: something received, or, while our write buffer holds
        # bytes (so our own socket buffer is full), more of them taken:
        # the peer's kernel acknowledged them, which it stops doing once
        # a hung reader's socket buffer is full.  Bytes taken while our
        # buffer is empty went into our own socket buffer: no proof.
        heard, taken = self._heard, self._taken()
        last_heard, last_taken = self._mark
        self._mark = (heard, taken)
        if heard != last_heard or (
                taken > last_taken and
                self._transport.get_write_buffer_size()):
            self._quiet = 0
        else:
            self._quiet += 1
            if self._quiet >= 4:
                LOG.warning('%s answered nothing, not even a ping, for %.1f '
                            's with %d request(s) pending: giving up on its '
                            'connection', self.peer, self._liveness,
                            len(self._pending))
                self._fail(exception.UrsaTimeout(peer=self.peer,
                                                 seconds=self._liveness))
                return
            ping = codec.encode_ping(next_req_id())
            self._queued += len(ping)
            queue_send(self._transport, ping)
        self._watch = self._loop.call_later(self._liveness / 4, self._tick)

    async def reticket(self, grant, timeout):
        """Replace this ticket connection's ticket with ``grant`` (a renewed
        one, say, before the first expires) without a new connection:
        TICKET, proved with the new session key over this connection's
        nonces; adopted once the server answered OK (its error raised
        otherwise)."""
        if self.grant is None:
            raise exception.InvalidArgument(
                reason='%s: this connection holds the cluster key; only a '
                       'ticket connection takes a ticket' % self.peer)
        mac = tickets.reticket_mac(grant.session_key, self._server_nonce,
                                   self._client_nonce)
        reply = await self.call(codec.encode_ticket, mac, grant.raw,
                                timeout=timeout)
        codec.reply_status(reply.body)
        self.grant = grant

    def forget(self, req_id):
        """Stop waiting for the reply of ``req_id`` (timed out)."""
        self._pending.pop(req_id, None)

    def expire_later(self, req_id, fut, timeout):
        """A timer failing ``fut`` with UrsaTimeout after ``timeout``
        seconds; cancel it when the reply came."""
        return self._loop.call_later(timeout, self._expire, req_id, fut,
                                     timeout)

    def _expire(self, req_id, fut, timeout):
        if not fut.done():
            self._pending.pop(req_id, None)
            fut.set_exception(exception.UrsaTimeout(peer=self.peer,
                                                    seconds=timeout))

    async def wait(self, req_id, fut, timeout):
        """Wait for the reply of a request sent with :meth:`send`.

        One timer per request instead of ``asyncio.wait_for``, which costs
        a task and several callbacks per call on the hot path.
        """
        timer = self.expire_later(req_id, fut, timeout)
        try:
            if self._paused:
                # The request's time runs while the transport drains: a
                # peer that reads nothing more must not hold us for ever.
                waiter = self._loop.create_future()
                self._waiters.append(waiter)
                await asyncio.wait((waiter, fut),
                                   return_when=asyncio.FIRST_COMPLETED)
            return await fut
        finally:
            timer.cancel()

    async def request(self, req_id, buffers, timeout):
        """Send one request (bytes or a list of buffers); return its reply."""
        return await self.wait(req_id, self.send(req_id, buffers), timeout)

    def call(self, encode, *args, timeout, **kwargs):
        """Send ``encode(request id, *args, **kwargs)`` with a new request
        id; await the result for the reply.  A plain function returning
        :meth:`request`'s coroutine: no extra coroutine per request."""
        req_id = next_req_id()
        return self.request(req_id, encode(req_id, *args, **kwargs), timeout)

    def close(self):
        if not self.closed:
            self._fail(exception.UrsaConnectionError(
                peer=self.peer, reason='closed by us'))


class ConnectionPool:
    """One shared, pipelined connection per peer address.

    A connection its server found idle and is about to close (GOAWAY) is
    forgotten at once: the next request to that address opens a new one,
    and never meets the close (which a caller would take for a failed
    server).

    With ``grant`` (a ticket), connections authenticate with it, not with
    the cluster key (``key`` may then be None); :meth:`regrant` moves
    them all to a renewed one.
    """

    def __init__(self, key, connect_timeout=10.0, liveness=0.0, grant=None):
        self._key = key
        self._conns = {}
        self._locks = {}
        self._timeout = connect_timeout
        self._liveness = liveness
        self.grant = grant

    async def get(self, host, port):
        addr = (host, port)
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            conn = self._conns.get(addr)
            if conn is None or conn.closed:
                conn = await PeerConnection.connect(
                    host, port, self._key, self._timeout, self._liveness,
                    self.grant)
                # A regrant() while it connected did not see it.
                while conn.grant is not self.grant:
                    try:
                        await conn.reticket(self.grant, self._timeout)
                    except exception.UrsaError:
                        conn.close()
                        raise
                conn.on_goaway = functools.partial(self._forget, addr)
                self._conns[addr] = conn
            return conn

    async def regrant(self, grant):
        """From now on connect with ``grant`` (a renewed ticket), and move
        every open connection to it (TICKET); one that fails to take it
        is retired: the next request opens a new one, and those in flight
        on it (under the ticket it still holds) get their replies, not an
        error a writer would take for its server's failure."""
        self.grant = grant
        conns = [(addr, conn) for addr, conn in self._conns.items()
                 if not conn.closed]
        results = await asyncio.gather(
            *(conn.reticket(grant, self._timeout) for _, conn in conns),
            return_exceptions=True)
        for (addr, conn), result in zip(conns, results, strict=True):
            if isinstance(result, BaseException):
                LOG.warning('%s did not take the renewed ticket (%s): its '
                            'connection is retired, the next request opens '
                            'a new one', conn.peer, result)
                self._forget(addr, conn)
                conn.retire()

    def _forget(self, addr, conn):
        if self._conns.get(addr) is conn:
            del self._conns[addr]

    def connected(self, host, port):
        """The open connection to a peer, or None (never connects)."""
        conn = self._conns.get((host, port))
        if conn is not None and not conn.closed:
            return conn
        return None

    def discard(self, host, port):
        conn = self._conns.pop((host, port), None)
        if conn is not None:
            conn.close()

    def close(self):
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


# Limits of servers made without their own (tests, tools): no caps, no
# idle timeout, the authentication deadline.
DEFAULT_LIMITS = limits_mod.ServerLimits()
# Seconds a server keeps serving an idle connection after its GOAWAY, for
# requests its peer sent before it read it.
GOAWAY_GRACE = 30.0


def check_ticket_expiry(ticket):
    """NotAuthorized if ``ticket`` expired (at authentication, renewal and
    every request on its connection)."""
    if ticket.expired():
        raise exception.NotAuthorized(
            reason='the ticket of volume %s expired at %s (UTC): get a new '
                   'one from the master, then renew it on this connection '
                   '(TICKET) or reconnect with it' % (
                       ticket.volume, time.strftime(
                           '%Y-%m-%d %H:%M:%S', time.gmtime(ticket.expires))))


# The TLS context of this process's connections to chunk servers
# (set_data_tls; [ursa] data_tls), None for plain TCP.
_data_tls = None


def set_data_tls(ctx):
    """Make ``ctx`` (an ``ssl.SSLContext`` verifying the chunk servers'
    certificates, or None) the TLS of every data connection this process
    opens from now on."""
    global _data_tls
    _data_tls = ctx


@functools.lru_cache(maxsize=8)
def _ticket_key(key):
    """The ticket key of a cluster key: derived once per server, not per
    connection."""
    return tickets.ticket_key(key)


class ServerConnection(FlowControl, asyncio.BufferedProtocol):
    """Serving side.  ``handler(conn, frame)`` runs synchronously per frame.

    Before authentication only AUTH (or AUTH_TICKET) is accepted, judged
    by its header alone (the right opcode and exactly its 64-byte body, or
    at most MAX_AUTH_TICKET_BODY), into a receive buffer of a few KiB;
    anything else, a bad MAC or no AUTH within ``limits.auth_timeout``
    gets an error reply and the connection is closed.  ``limits`` (a
    :class:`~.limits.ServerLimits` shared by the server's connections)
    also caps how many connections there are and closes those idle for
    ``limits.idle_timeout``.

    With ``accept_tickets`` (a server whose handler holds a ticket
    connection to its scope: the chunk server), AUTH_TICKET is taken as
    well: the peer proves it holds the session key of a ticket the master
    issued (see protocol/tickets.py).  ``ticket`` is then the decoded
    :class:`~..protocol.tickets.Ticket` (None on a cluster-key
    connection), and TICKET frames, which replace it, are answered here:
    the handler never sees them.  A server without ``accept_tickets``
    refuses AUTH_TICKET: its handler would serve a ticket holder
    everything.
    """

    def __init__(self, key, handler, on_close=None, limits=None,
                 accept_tickets=False):
        FlowControl.__init__(self)
        self._key = key
        self._handler = handler
        self._accept_tickets = accept_tickets
        self.ticket = None
        self._client_nonce = None
        self._on_close = on_close
        self._limits = DEFAULT_LIMITS if limits is None else limits
        self._reader = FrameReader(limits_mod.PREAUTH_SCRATCH,
                                   codec.preauth_body_length)
        self._nonce = os.urandom(codec.NONCE_SIZE)
        self.authed = False
        self.transport = None
        self.peer = '?'
        self._host = '?'
        self._admitted = False     # counted in self._limits
        self.closed = False
        self.tasks = set()
        self._backlog = None
        self._loop = None
        self._timer = None         # authentication deadline, idle ticks
        self._heard = 0            # receive events so far
        self._idle_mark = 0        # ... at the last idle tick
        self._idle_since = 0.0
        self._goaway = False       # GOAWAY sent
        # The term a master claimed for this connection (chunk servers'
        # TERM), None for every other client.
        self.master_term = None
        # A TERM above the chunk server's is being confirmed with the
        # masters: the connection's other requests are refused until then.
        self.claiming = False

    def connection_made(self, transport):
        self.transport = transport
        tune(transport)
        peer = transport.get_extra_info('peername')
        if peer:
            self.peer = '%s:%s' % peer[:2]
            self._host = peer[0]
        else:
            self._host = self.peer = 'local'
        self._loop = asyncio.get_running_loop()
        why = self._limits.admit(self._host, self)
        if why is not None:
            transport.write(codec.encode_error(
                codec.AUTH, 0, exception.Unavailable(
                    reason='%s: %s; retry later' % (self._limits.name,
                                                    why))))
            self.closed = True
            transport.close()
            return
        self._admitted = True
        transport.write(codec.encode_challenge(self._nonce))
        if self._limits.auth_timeout:
            self._timer = self._loop.call_later(self._limits.auth_timeout,
                                                self._auth_expired)

    def get_buffer(self, sizehint):
        return self._reader.get_buffer(sizehint)

    # A peer that does not read our replies gets no more served: reading
    # stops, and frames already received wait in the backlog.
    BURST_OUT = 4 * 1024 * 1024  # bytes a burst queues before they leave

    def pause_writing(self):
        super().pause_writing()
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self):
        super().resume_writing()
        if self._backlog and not self.closed:
            frames, self._backlog = self._backlog, None
            self._serve(frames)
        if not (self.closed or self._paused or self._backlog or
                self.transport.is_closing()):
            self.transport.resume_reading()

    def buffer_updated(self, nbytes):
        if self.closed:
            return
        self._heard += 1
        if not self.authed:
            self._preauth(nbytes)
            return
        try:
            frames = self._reader.buffer_updated(nbytes)
        except exception.ProtocolError as e:
            LOG.warning('Dropping %s: %s', self.peer, e)
            self.send(codec.encode_error(0, 0, e))
            self.close()
            return
        if self._backlog:
            self._backlog.extend(frames)
        elif frames:
            self._serve(frames)

    def _preauth(self, nbytes):
        """Bytes of a peer not authenticated yet: one AUTH frame at a
        time (whatever follows it waits in the socket or the small
        buffer until it is verified)."""
        reader = self._reader
        buffers.ReceiveBuffer.buffer_updated(reader, nbytes)
        try:
            frame = reader.next_frame()
        except exception.UrsaError as e:
            self._refuse(e)
            return
        if frame is None:
            return
        self._authenticate(frame)
        if not self.authed:
            return
        # Requests sent right behind the AUTH (ours wait for AUTH_OK).
        try:
            frames = reader.whole()
        except exception.ProtocolError as e:
            LOG.warning('Dropping %s: %s', self.peer, e)
            self.send(codec.encode_error(0, 0, e))
            self.close()
            return
        if frames:
            self._serve(frames)

    def _serve(self, frames):
        opened = len(frames) > 1 and _open_batch()
        try:
            for i, frame in enumerate(frames):
                if self.closed:
                    return
                if self._paused:
                    self._backlog = frames[i:]
                    return
                if frame.opcode == codec.PING:
                    self.send(codec.encode_ok(codec.PING, frame.req_id))
                    continue
                try:
                    self._handler(self, frame)
                except exception.ProtocolError as e:
                    LOG.warning('Dropping %s: %s', self.peer, e)
                    self.send(codec.encode_error(frame.opcode, frame.req_id,
                                                 e))
                    self.close()
                    return
                if opened and _batched(self.transport) > self.BURST_OUT:
                    # Let the transport see it now: past its high-water
                    # mark it pauses us.
                    send_batched(self.transport)
        finally:
            if opened:
                _close_batch()

    def _refuse(self, err):
        """Answer a peer not authenticated with ``err`` and close: logged
        at most every few seconds (anyone can make us say it)."""
        self._limits.log.warning(
            'unauthenticated', '%s: refusing unauthenticated peer %s: %s',
            self._limits.name, self.peer, err)
        self.send(codec.encode_error(codec.AUTH, 0, err))
        self.close()

    def evict(self, reason):
        """Closed to make room (see transport/limits.py): no longer
        counted, told why."""
        self._admitted = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed:
            self.send(codec.encode_error(codec.AUTH, 0, exception.Unavailable(
                reason='%s: %s' % (self._limits.name, reason))))
            self.close()

    def _auth_expired(self):
        self._timer = None
        if self.authed or self.closed:
            return
        self._refuse(exception.NotAuthorized(
            reason='no authentication within %g s' %
            self._limits.auth_timeout))

    def _authenticate(self, frame):
        if frame.opcode == codec.AUTH_TICKET:
            self._authenticate_ticket(frame)
            return
        try:
            client_nonce, mac = codec.decode_auth(frame.body)
        except exception.ProtocolError as e:
            self._refuse(e)
            return
        for key in auth.keys_accepted(self._key):
            expect = codec.client_mac(key, self._nonce, client_nonce)
            if hmac.compare_digest(mac, expect):
                self._authenticated(key, client_nonce)
                return
        self._refuse(exception.NotAuthorized(reason='bad cluster key'))

    def _authenticate_ticket(self, frame):
        """AUTH_TICKET: the session key derived from the ticket presented
        must be the one the client's MAC was made with; only then is the
        ticket decoded and its expiry judged."""
        if not self._accept_tickets:
            self._refuse(exception.NotAuthorized(
                reason='%s takes no ticket: authenticate with the cluster '
                       'key' % self._limits.name))
            return
        try:
            client_nonce, mac, raw = codec.decode_auth_ticket(frame.body)
            skey, ticket = self._proved(raw, mac, functools.partial(
                codec.client_mac, server_nonce=self._nonce,
                client_nonce=client_nonce), 'bad ticket: not issued by '
                'this cluster\'s master, altered, or presented without '
                'its session key')
        except exception.UrsaError as e:
            self._refuse(e)
            return
        self.ticket = ticket
        self._handler = functools.partial(self._ticket_frame, self._handler)
        self._authenticated(skey, client_nonce)

    def _ticket_frame(self, handler, conn, frame):
        """The handler of a ticket connection: TICKET is answered here
        (where the nonces are), every other frame goes to ``handler``."""
        if frame.opcode != codec.TICKET:
            handler(conn, frame)
            return
        try:
            self.reticket(frame)
        except exception.ProtocolError:
            raise
        except exception.UrsaError as e:
            self.send(codec.encode_error(frame.opcode, frame.req_id, e))
            return
        self.send(codec.encode_ok(codec.TICKET, frame.req_id))

    def reticket(self, frame):
        """TICKET: adopt the renewed ticket it carries, proved with its
        session key over this connection's nonces (a replayed TICKET of
        another connection fails); NotAuthorized if it is not proved or
        expired, and on a cluster-key connection, which has no ticket to
        replace."""
        if self.ticket is None:
            raise exception.NotAuthorized(
                reason='TICKET on a connection authenticated with the '
                       'cluster key: it has no ticket to replace')
        mac, raw = codec.decode_ticket(frame.body)
        _, self.ticket = self._proved(raw, mac, functools.partial(
            tickets.reticket_mac, server_nonce=self._nonce,
            client_nonce=self._client_nonce), 'bad renewed ticket: not '
            'issued by this cluster\'s master, altered, or sent without '
            'its session key; the connection keeps its ticket')

    def _proved(self, raw, mac, proof, refusal):
        """(session key, Ticket) of ticket ``raw`` if ``proof(session
        key)`` makes ``mac`` with its session key under the ticket key of
        this server's cluster key or of one it accepts (a rotation's),
        and it has not expired; NotAuthorized (``refusal``) if no key
        proves it.  The MAC is checked before the ticket is decoded."""
        for key in auth.keys_accepted(self._key):
            skey = tickets.session_key(_ticket_key(key), raw)
            if hmac.compare_digest(mac, proof(skey)):
                ticket = tickets.decode(raw)
                check_ticket_expiry(ticket)
                return skey, ticket
        raise exception.NotAuthorized(reason=refusal)

    def _authenticated(self, key, client_nonce):
        """The peer proved it holds ``key`` (the cluster key or a ticket's
        session key): AUTH_OK, proving we hold it too."""
        self.authed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._limits.authenticated(self._host, self)
        # Now it may send any frame, into the full-size buffer.
        self._reader.accept(codec.body_length)
        self._reader.grow()
        self._client_nonce = client_nonce
        self.send(codec.encode_auth_ok(
            codec.server_mac(key, self._nonce, client_nonce),
            codec.CAP_PING | codec.CAP_SINCE))
        if self._limits.idle_timeout:
            self._idle_mark = self._heard
            self._idle_since = self._loop.time()
            self._timer = self._loop.call_later(
                self._limits.idle_timeout / 4, self._idle_tick)

    def _idle_tick(self):
        """Close a connection idle for ``idle_timeout``: nothing received
        since, no request being served or waiting, no reply still
        leaving.  Its peer is told first (GOAWAY) and served for
        GOAWAY_GRACE more seconds: a request it sent before it read the
        GOAWAY is answered, not lost to the close (which a client takes
        for a failed server, and a primary for a failed replica)."""
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        idle = self._limits.idle_timeout
        grace = min(GOAWAY_GRACE, idle)
        if (self._heard != self._idle_mark or self.tasks or self._backlog
                or self._paused or self._reader.holding
                or self.transport.get_write_buffer_size()):
            self._idle_mark = self._heard
            self._idle_since = now
            self._goaway = False    # in use again
        elif not self._goaway:
            if now - self._idle_since >= idle:
                self.send(codec.encode_goaway())
                self._goaway = True
                self._idle_since = now
        elif now - self._idle_since >= grace:
            LOG.debug('Closing %s: idle for %g s', self.peer, idle)
            self.close()
            return
        self._timer = self._loop.call_later(
            (grace if self._goaway else idle) / 4, self._idle_tick)

    def send(self, buffers):
        if self.closed or self.transport.is_closing():
            return
        queue_send(self.transport, buffers)

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def close(self):
        if not self.closed:
            self.closed = True
            send_batched(self.transport)
            self.transport.close()

    def connection_lost(self, exc):
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted:
            self._admitted = False
            self._limits.closed(self._host, self.authed, self)
        self.resume_writing()
        if self._on_close:
            self._on_close(self)
