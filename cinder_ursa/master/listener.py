"""The master's listening socket, with bounds on the connections.

aiohttp alone keeps any number of connections open, and one that never
completes its request headers was kept until the keep-alive timeout
(about an hour by default) or, before aiohttp 3.10, for ever: the audit
(F6, F20) held 500 partial-header connections open on a master.  Here:

* at most ``max_connections`` connections are open at once.  At the
  limit a new connection closes the oldest one that has not sent a
  complete request yet (a slow or hostile peer: a legitimate client
  sends its request at once), so such peers cannot lock legitimate
  clients out; if every open connection has sent a request, the new
  one is answered 503 and closed.
* a connection that has not completed its TLS handshake and the headers
  of its first request ``header_timeout`` seconds after it was accepted
  is closed;
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

_BUSY = (b'HTTP/1.1 503 Service Unavailable\r\n'
         b'Content-Type: application/json\r\n'
         b'Connection: close\r\n'
         b'Content-Length: %d\r\n\r\n%s')
_BUSY_BODY = (b'{"error": {"code": "unavailable", "message": "Unavailable: '
              b'ursa-master has too many open connections ([ursa_master] '
              b'max_connections); retry later"}}')


class _Refuse(asyncio.Protocol):
    """A connection over the limit: one 503, then closed."""

    def connection_made(self, transport):
        transport.write(_BUSY % (len(_BUSY_BODY), _BUSY_BODY))
        transport.close()


class ConnectionGuard:
    """Counts and bounds the connections of one aiohttp server; the
    MasterAPI marks those that sent a request (:meth:`request_seen`)."""

    def __init__(self, max_connections=512, header_timeout=10.0):
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        # The aiohttp server whose connections are guarded (None: none,
        # as in tests that serve the app otherwise).
        self._server = None
        # Handlers (connections) that have sent complete request headers;
        # pruned of closed ones as it grows (aiohttp's handlers take no
        # weak references).
        self._used = set()
        # Handler -> its header deadline, until it sends a request.
        self._deadlines = {}
        self.evicted = 0
        self.refused = 0
        self._warned = False

    def request_seen(self, request):
        if self._server is None:
            return
        handler = request.protocol
        deadline = self._deadlines.pop(handler, None)
        if deadline is not None:
            deadline.cancel()
        self._used.add(handler)
        if len(self._used) > self.max_connections:
            self._used &= set(self._server.connections)

    def factory(self, server):
        """The protocol factory for ``loop.create_server`` in front of the
        aiohttp ``server`` (a ``web.Server``)."""
        self._server = server

        def make():
            loop = asyncio.get_running_loop()
            conns = server.connections
            if len(conns) >= self.max_connections and \
                    not self._evict(conns):
                self.refused += 1
                self._warn()
                return _Refuse()
            handler = server()
            self._deadlines[handler] = loop.call_later(
                self.header_timeout, self._expire, handler)
            return handler
        return make

    def _evict(self, conns):
        # Oldest first: the server lists its connections as they came.
        for handler in conns:
            if handler not in self._used:
                handler.force_close()
                self.evicted += 1
                self._warn()
                return True
        return False

    def _expire(self, handler):
        self._deadlines.pop(handler, None)
        if handler not in self._used and handler.transport is not None:
            handler.force_close()

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
            reuse_address=self._reuse_address)
