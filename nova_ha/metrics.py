"""Prometheus metrics of the evacuator, and the small HTTP server that
serves them.

prometheus_client's own server (``start_http_server``) spends a thread on
each connection and never times one out, so anyone who can reach the port
holds a thread and a file descriptor per idle connection for as long as
they like (300 idle connections: 302 threads).  MetricsServer serves all
connections from one asyncio loop in one thread: a connection must send
its request within ``timeout`` seconds and is then answered and closed;
at most ``max_connections`` are open, and a new one beyond that makes
room by closing the one open the longest, so idle connections cannot
lock out the Prometheus scraper.
"""

import asyncio
import collections
import logging
import threading

import prometheus_client as prom

LOG = logging.getLogger(__name__)

HOST_STATES = ('ok', 'degraded', 'suspect', 'failed', 'returned',
               'maintenance')


class Metrics:
    def __init__(self, registry=None):
        self.registry = registry or prom.CollectorRegistry()
        r = self.registry
        self.leader = prom.Gauge('nova_ha_leader',
                                 '1 while this evacuator is the acting one',
                                 registry=r)
        self.coordination_up = prom.Gauge(
            'nova_ha_coordination_up',
            '1 while the tooz backend answers', registry=r)
        self.paused = prom.Gauge(
            'nova_ha_paused', '1 while recoveries are paused (mass-failure '
            'guard or operator)', registry=r)
        self.hosts = prom.Gauge('nova_ha_hosts',
                                'Compute hosts by state', ['state'],
                                registry=r)
        self.guard_trips = prom.Counter(
            'nova_ha_guard_trips', 'Times the mass-failure guard paused '
            'recoveries', registry=r)
        self.fences = prom.Counter('nova_ha_fences',
                                   'Fence attempts', ['method', 'result'],
                                   registry=r)
        self.recoveries = prom.Counter('nova_ha_recoveries',
                                       'Finished host recoveries',
                                       ['result'], registry=r)
        self.evacuations = prom.Counter(
            'nova_ha_instances', 'Instances of failed hosts by outcome',
            ['result'], registry=r)
        self.recovery_seconds = prom.Histogram(
            'nova_ha_recovery_seconds',
            'From the first sign of failure to the last instance evacuated',
            buckets=(10, 30, 60, 120, 300, 600, 1200, 3600), registry=r)

    def set_hosts(self, counts):
        for state in HOST_STATES:
            self.hosts.labels(state).set(counts.get(state, 0))

    def serve(self, port, addr='127.0.0.1', timeout=5.0,
              max_connections=64):
        """Serve ``/metrics`` on ``addr``:``port`` in a thread; return
        the started MetricsServer (``shutdown()`` stops it)."""
        server = MetricsServer(self.registry, addr, port, timeout,
                               max_connections)
        server.start()
        return server


class MetricsServer:
    """GET (or HEAD) ``/metrics``, one request per connection (HTTP/1.1
    with ``Connection: close``), from one thread whatever the number of
    connections (see the module's doc)."""

    # A scrape request is a few hundred bytes; a head longer than this is
    # not one.
    MAX_HEAD = 16 * 1024

    def __init__(self, registry, host='127.0.0.1', port=0, timeout=5.0,
                 max_connections=64):
        self.registry = registry
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_connections = max_connections
        self.open = collections.OrderedDict()  # writer -> None, oldest 1st
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self._run,
                                        name='metrics-server', daemon=True)
        self._started = threading.Event()
        self._error = None

    def start(self):
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self):
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, self.host, self.port,
                                     limit=self.MAX_HEAD))
        except OSError as e:
            self._error = e
            self._started.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._close())
        self._loop.close()

    async def _close(self):
        self._server.close()
        for writer in list(self.open):
            writer.transport.abort()
        await self._server.wait_closed()

    def shutdown(self):
        """Stop serving and close every connection."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    async def _serve(self, reader, writer):
        self.open[writer] = None
        if len(self.open) > self.max_connections:
            oldest = next(iter(self.open))
            LOG.debug('Metrics: %d connections open, closing the oldest',
                      len(self.open))
            oldest.transport.abort()
            self.open.pop(oldest, None)
        try:
            head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'),
                                          self.timeout)
            writer.write(self._answer(head))
            await asyncio.wait_for(writer.drain(), self.timeout)
        except (TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError):
            pass  # idle, cut, or not a scrape: just close it
        finally:
            self.open.pop(writer, None)
            writer.close()

    def _answer(self, head):
        line = head.split(b'\r\n', 1)[0].decode('latin-1').split()
        method, path = (line + ['', ''])[:2]
        if method not in ('GET', 'HEAD'):
            return self._reply('405 Method Not Allowed', b'GET /metrics\n',
                               method)
        if path.split('?', 1)[0] not in ('/metrics', '/'):
            return self._reply('404 Not Found', b'GET /metrics\n', method)
        return self._reply('200 OK', prom.generate_latest(self.registry),
                           method, prom.CONTENT_TYPE_LATEST)

    @staticmethod
    def _reply(status, body, method, ctype='text/plain; charset=utf-8'):
        head = ('HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n'
                'Connection: close\r\n\r\n' % (status, ctype, len(body)))
        return head.encode() + (b'' if method == 'HEAD' else body)
