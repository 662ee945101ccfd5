"""The master's listening socket, with bounds on the connections.

aiohttp alone keeps any number of connections open, and one that never
completes its request headers was kept until the keep-alive timeout
(about an hour by default) or, before aiohttp 3.10, for ever: the audit
(F6, F20) held 500 partial-header connections open on a master.  Here:

* at most ``max_connections`` connections are open at once.  At the
  limit a new connection closes the oldest one that has not sent a
  signed request yet (a slow or hostile peer: a legitimate client sends
  its signed request at once; the unsigned version list does not count),
  so peers without the key cannot lock legitimate clients out; if every
  open connection has sent a signed request, the new one is answered
  503 and closed.
* a connection that has not completed its TLS handshake
  ``header_timeout`` seconds after it was accepted, or the headers of
  its first request ``header_timeout`` seconds after that, is closed
  (dripping bytes does not extend it);
* the body deadline and the idle keep-alive timeout are kept by
  ``MasterAPI`` (after the signature check) and aiohttp
  (``keepalive_timeout``).

A request that fails the signature check is answered with ``Connection:
close`` (``api._errors``): an unauthenticated peer cannot keep a
connection that counts as used.
"""

import asyncio
import logging

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
    """One accepted connection: counted by the guard, handed to an
    aiohttp request handler if admitted, else answered 503 and closed.

    A thin proxy of the asyncio protocol callbacks: aiohttp's handler
    takes no attributes nor weak references, and the guard must see
    every connection come and go (the server's own list lags behind
    accepts made in one loop iteration)."""

    __slots__ = ('guard', 'handler', 'transport', 'used', 'deadline')

    def __init__(self, guard):
        self.guard = guard
        self.handler = None
        self.transport = None
        self.used = False
        self.deadline = None

    def connection_made(self, transport):
        self.transport = transport
        if not self.guard.admit(self):
            transport.write(_BUSY % (len(_BUSY_BODY), _BUSY_BODY))
            transport.close()
            return
        self.handler = self.guard.server()
        self.guard.admitted(self)
        self.handler.connection_made(transport)

    def connection_lost(self, exc):
        self.guard.gone(self)
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
        if self.handler is not None:
            self.handler.force_close()
        elif self.transport is not None:
            self.transport.close()


class ConnectionGuard:
    """Counts and bounds the connections of one aiohttp server; the
    MasterAPI marks those that sent a request (:meth:`request_seen`)."""

    def __init__(self, max_connections=512, header_timeout=10.0):
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        # The aiohttp server (web.Server) that handles admitted
        # connections; None: no connection goes through this guard (as
        # in tests that serve the app otherwise).
        self.server = None
        # Admitted connections, oldest first: aiohttp handler -> its
        # _Connection.
        self._conns = {}
        self.evicted = 0
        self.refused = 0
        self._warned = False

    def __len__(self):
        return len(self._conns)

    def factory(self, server):
        """The protocol factory for ``loop.create_server`` in front of the
        aiohttp ``server`` (a ``web.Server``)."""
        self.server = server
        return lambda: _Connection(self)

    def admit(self, conn):
        """Whether ``conn``, just connected (TLS handshake done), may be
        served: room is made by closing the oldest connection that has
        not sent a request, if need be."""
        if len(self._conns) >= self.max_connections and not self._evict():
            self.refused += 1
            self._warn()
            return False
        conn.deadline = asyncio.get_running_loop().call_later(
            self.header_timeout, self._expire, conn)
        return True

    def admitted(self, conn):
        self._conns[conn.handler] = conn

    def gone(self, conn):
        if conn.deadline is not None:
            conn.deadline.cancel()
        self._conns.pop(conn.handler, None)

    def request_seen(self, request):
        conn = self._conns.get(request.protocol)
        if conn is not None and not conn.used:
            conn.used = True
            conn.deadline.cancel()

    def _evict(self):
        for handler, conn in self._conns.items():
            if not conn.used:
                del self._conns[handler]
                conn.close()
                self.evicted += 1
                self._warn()
                return True
        return False

    def _expire(self, conn):
        if not conn.used:
            self._conns.pop(conn.handler, None)
            conn.close()

    def _warn(self):
        if not self._warned:
            self._warned = True
            LOG.warning('ursa-master reached [ursa_master] max_connections '
                        '(%d): connections that sent no request are closed '
                        'first, then new ones refused; raise the limit if '
                        'the clients are legitimate', self.max_connections)


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
        self._server = await loop.create_server(
            self._guard.factory(self._runner.server), self._host,
            self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address,
            # A TLS handshake counts against the header deadline too.
            ssl_handshake_timeout=(self._guard.header_timeout
                                   if self._ssl_context else None))
