"""The master's listening socket, with bounds on the connections.

aiohttp alone keeps any number of connections open, and one that never
completes its request headers was kept until the keep-alive timeout
(about an hour by default) or, before aiohttp 3.10, for ever: the audit
(F6, F20) held 500 partial-header connections open on a master.  Here:

* at most ``max_connections`` connections are open at once, counted
  from the TCP accept: with HTTPS, a connection whose TLS handshake is
  not over counts too (a TLS server's protocol hears of a connection
  only after its handshake, so peers that never finished one held file
  descriptors no bound counted: the listener speaks plain TCP and each
  connection makes its own handshake).  At the limit a new connection
  closes the oldest one that has not sent a signed request yet (a slow
  or hostile peer, or a handshake not over: a legitimate client
  handshakes and sends its signed request at once; the unsigned
  version list does not count), so peers without the key cannot lock
  legitimate clients out; if every open connection has sent a signed
  request, the new one is answered 503 (over plain HTTP; closed, with
  HTTPS) and closed.
* a connection that has not completed its TLS handshake and the
  headers of its first request ``header_timeout`` seconds after it was
  accepted is closed (dripping bytes does not extend it);
* the body deadline and the idle keep-alive timeout are kept by
  ``MasterAPI`` (after the signature check) and aiohttp
  (``keepalive_timeout``).

A request that fails the signature check is answered with ``Connection:
close`` (``api._errors``): an unauthenticated peer cannot keep a
connection that counts as used.
"""

import asyncio
import logging
from asyncio import sslproto

from aiohttp import web

LOG = logging.getLogger(__name__)

# The answer to a connection over the limit.
_BUSY = (b'HTTP/1.1 503 Service Unavailable\r\n'
         b'Content-Type: application/json\r\n'
         b'Connection: close\r\n'
         b'Content-Length: %d\r\n\r\n%s')
_BUSY_BODY = (b'{"error": {"code": "unavailable", "message": "Unavailable: '
              b'ursa-master has too many open connections ([ursa_master] '
              b'max_connections); retry later"}}')


class _Connection(asyncio.Protocol):
    """One accepted TCP connection: counted by the guard from the accept,
    through its TLS handshake, then handed to an aiohttp request handler;
    or closed (answered 503 over plain HTTP) if the guard has no room.

    The TLS layer is put in place here, in ``connection_made``, before
    the first byte is read: a TLS server's protocol hears of nothing
    until the handshake is over, so a peer that never finished one held
    a file descriptor no bound counted; and ``loop.start_tls``, a step
    later, let uvloop read the ClientHello into the plain protocol
    first, where it was lost.  The layer is asyncio's own SSLProtocol,
    the one ``create_server(ssl=...)`` uses under asyncio's loop.

    A thin proxy of the asyncio protocol callbacks: aiohttp's handler
    takes no attributes nor weak references, and the guard must see
    every connection come and go (the server's own list lags behind
    accepts made in one loop iteration)."""

    __slots__ = ('guard', 'handler', 'transport', 'used', 'deadline',
                 'done')

    def __init__(self, guard):
        self.guard = guard
        self.handler = None
        # The TCP transport until the handshake is over, then the TLS one.
        self.transport = None
        self.used = False
        self.deadline = None
        self.done = False       # gone: the guard no longer counts it

    def connection_made(self, transport):
        if self.transport is not None:
            # Called again, by the TLS layer: the handshake is over.
            if self.done:
                # Evicted or expired as it finished.
                transport.abort()
                return
            self._serve(transport)
            return
        self.transport = transport
        if not self.guard.admit(self):
            if self.guard.tls is None:
                transport.write(_BUSY % (len(_BUSY_BODY), _BUSY_BODY))
                transport.close()
            else:
                # Nothing readable can be said before a handshake.
                transport.abort()
            return
        if self.guard.tls is None:
            self._serve(transport)
            return
        loop = asyncio.get_running_loop()
        handshake = loop.create_future()
        # A TLS close waits for the peer's close_notify no longer than a
        # new connection waits for its handshake (30 s by default).
        layer = sslproto.SSLProtocol(
            loop, self, self.guard.tls, handshake, server_side=True,
            ssl_handshake_timeout=self.guard.header_timeout,
            ssl_shutdown_timeout=self.guard.header_timeout)
        transport.set_protocol(layer)
        layer.connection_made(transport)
        handshake.add_done_callback(self._handshake_done)

    def _handshake_done(self, fut):
        # A handshake that succeeded made the handler first.
        if self.handler is None:
            self.gone()
            self.transport.abort()
            if not fut.cancelled() and fut.exception() is not None and \
                    LOG.isEnabledFor(logging.DEBUG):
                LOG.debug('TLS handshake failed: %s', fut.exception())

    def _serve(self, transport):
        self.transport = transport
        self.handler = self.guard.server()
        self.guard.served(self)
        self.handler.connection_made(transport)

    def gone(self):
        if not self.done:
            self.done = True
            self.guard.gone(self)

    def connection_lost(self, exc):
        self.gone()
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def data_received(self, data):
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self):
        if self.handler is not None:
            return self.handler.eof_received()
        return None

    def pause_writing(self):
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self):
        if self.handler is not None:
            self.handler.resume_writing()

    def close(self):
        """Close it now (evicted, or past its deadline): aborted, not
        closed, as a TLS close waits up to ssl_shutdown_timeout for the
        peer's close_notify, holding the file descriptor of a connection
        the guard counts no more."""
        if self.handler is not None:
            self.handler.force_close()
        if self.transport is not None:
            # Before the handshake is over: the TCP connection goes, and
            # with it the handshake.
            self.transport.abort()


class ConnectionGuard:
    """Counts and bounds the connections of one aiohttp server, from
    their TCP accept; the MasterAPI marks those that sent a signed
    request (:meth:`request_seen`)."""

    def __init__(self, max_connections=512, header_timeout=10.0):
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        # The aiohttp server (web.Server) that handles admitted
        # connections; None: no connection goes through this guard (as
        # in tests that serve the app otherwise).
        self.server = None
        # The server's TLS context (None: plain HTTP): each _Connection
        # makes its handshake, counted.
        self.tls = None
        # Open connections, oldest first (a dict as an ordered set), and
        # those with a request handler by their handler.
        self._conns = {}
        self._handlers = {}
        self.evicted = 0
        self.refused = 0
        self._warned = False

    def __len__(self):
        return len(self._conns)

    def factory(self, server, tls=None):
        """The protocol factory for ``loop.create_server`` (listening
        without TLS: ``tls`` is the context each connection's handshake
        is made with) in front of the aiohttp ``server`` (a
        ``web.Server``)."""
        self.server = server
        self.tls = tls
        return lambda: _Connection(self)

    def admit(self, conn):
        """Whether ``conn``, just accepted (before any TLS handshake),
        may be served: room is made by closing the oldest connection
        that has not sent a signed request (its handshake not over,
        perhaps), if need be."""
        if len(self._conns) >= self.max_connections and not self._evict():
            self.refused += 1
            self._warn()
            return False
        self._conns[conn] = None
        # One deadline for the handshake and the first request's headers.
        conn.deadline = asyncio.get_running_loop().call_later(
            self.header_timeout, self._expire, conn)
        return True

    def served(self, conn):
        """``conn`` has its request handler (its handshake is over)."""
        self._handlers[conn.handler] = conn

    def gone(self, conn):
        if conn.deadline is not None:
            conn.deadline.cancel()
        self._conns.pop(conn, None)
        self._handlers.pop(conn.handler, None)

    def request_seen(self, request):
        conn = self._handlers.get(request.protocol)
        if conn is not None and not conn.used:
            conn.used = True
            conn.deadline.cancel()

    def _evict(self):
        for conn in self._conns:
            if not conn.used:
                self._drop(conn)
                self.evicted += 1
                self._warn()
                return True
        return False

    def _expire(self, conn):
        if not conn.used:
            self._drop(conn)

    def _drop(self, conn):
        # Not counted from now on, whenever its close completes.
        conn.done = True
        self.gone(conn)
        conn.close()

    def _warn(self):
        if not self._warned:
            self._warned = True
            LOG.warning('ursa-master reached [ursa_master] max_connections '
                        '(%d): connections that sent no signed request '
                        '(or have not finished their TLS handshake) are '
                        'closed first, then new ones refused; raise the '
                        'limit if the clients are legitimate',
                        self.max_connections)


class BoundedSite(web.TCPSite):
    """A TCPSite whose connections go through a :class:`ConnectionGuard`.
    """

    __slots__ = ('_guard',)

    def __init__(self, runner, host, port, guard, **kwargs):
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard

    async def start(self):
        # BaseSite.start registers the site with the runner (which stops
        # it on cleanup); TCPSite.start would listen with the bare server.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        # Listening without TLS: each connection puts its TLS layer in
        # place (see _Connection), counted from the accept.
        self._server = await loop.create_server(
            self._guard.factory(self._runner.server, self._ssl_context),
            self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address)
