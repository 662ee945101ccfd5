"""Prometheus metrics of Ursa's processes: cheap statistics per operation
for the data path, gauges read at scrape time, and the ``/metrics``
endpoint.

The data path counts in plain Python lists (:class:`Operations`): one
bisect and a few increments per operation, no lock and no label lookup,
since a process's event loop thread is the only writer.  A scrape turns
them into Prometheus families (a custom collector), so the cost of the
exposition format is paid per scrape, not per I/O.  Gauges that describe
state (connections, capacity, chunks by state) are computed at scrape
time by callbacks (:meth:`ProcessMetrics.gauge`), so nothing keeps them
up to date between scrapes.

prometheus_client's own server (``start_http_server``) spends a thread on
each connection and never times one out, so anyone who can reach the port
holds a thread and a file descriptor per idle connection for as long as
they like (300 idle connections: 302 threads).  :class:`MetricsServer`
serves all connections from one asyncio loop: a connection must send its
request within ``timeout`` seconds and is then answered and closed; at
most ``max_connections`` are open, and a new one beyond that makes room by
closing the one open the longest, so idle connections cannot lock out the
Prometheus scraper.  It runs in a thread of its own (:meth:`start`) or on
the service's running loop (:meth:`serve_here`), where the gauges'
callbacks then read the service's state without racing it.
"""

import asyncio
import bisect
import collections
import logging
import threading

import prometheus_client as prom
from oslo_config import cfg
from prometheus_client import core as prom_core

from cinder_ursa import exception

LOG = logging.getLogger(__name__)

# No ``*_created`` series beside every counter and histogram: they double
# the series Prometheus stores and say only when the process started,
# which process_start_time_seconds says once.
prom.disable_created_metrics()

# Latency buckets (seconds): tens of microseconds resolved at the low end
# (a read served from the page cache over loopback takes about 100 us),
# up to the 10 s a request may wait for a failover.
LATENCY_BUCKETS = (
    10e-6, 25e-6, 50e-6, 75e-6, 100e-6, 150e-6, 250e-6, 500e-6, 750e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0)


def metrics_opts(service):
    """The ``metrics_host`` and ``metrics_port`` options of ``service``
    (its option group's title, for the help text)."""
    return [
        cfg.PortOpt('metrics_port', default=0,
                    help='Port of the Prometheus /metrics endpoint of the '
                         '%s; 0: no endpoint.' % service),
        cfg.HostAddressOpt('metrics_host', default='127.0.0.1',
                           help='Address the /metrics endpoint of the %s '
                                'listens on: loopback unless an address '
                                'reachable by the Prometheus server is '
                                'configured.' % service),
    ]


class _Op:
    __slots__ = ('count', 'bytes', 'errors', 'buckets', 'sum')

    def __init__(self, n):
        self.count = 0
        self.bytes = 0
        self.errors = collections.Counter()
        self.buckets = [0] * (n + 1)     # the last: above the highest
        self.sum = 0.0


class Operations:
    """Counts, bytes, errors by kind and latency histograms of a process's
    operations (``ops``: their names), exposed as::

        <prefix>_operations_total{op}
        <prefix>_operation_bytes_total{op}
        <prefix>_operation_errors_total{op, kind}
        <prefix>_operation_latency_seconds{op}   (a histogram)

    :meth:`done` is called from one thread (the event loop's); a scrape
    from another reads a consistent enough view (each family's count is
    derived from its own buckets)."""

    def __init__(self, prefix, what, ops, buckets=LATENCY_BUCKETS):
        self.prefix = prefix
        self.what = what
        self.bounds = tuple(buckets)
        self._ops = {op: _Op(len(self.bounds)) for op in ops}

    def done(self, op, seconds, nbytes=0, error=None):
        """Count one ``op`` that took ``seconds`` and moved ``nbytes``;
        ``error``: the exception it failed with (counted by kind, its
        latency counted too)."""
        s = self._ops[op]
        s.count += 1
        s.bytes += nbytes
        s.sum += seconds
        s.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        if error is not None:
            s.errors[error_kind(error)] += 1

    def failed(self, op, error):
        """Count an ``op`` refused before it started (no latency)."""
        s = self._ops[op]
        s.count += 1
        s.errors[error_kind(error)] += 1

    def count(self, op):
        return self._ops[op].count

    def errors(self, op):
        return dict(self._ops[op].errors)

    def collect(self):
        p = self.prefix
        count = prom_core.CounterMetricFamily(
            p + '_operations', '%s, by operation' % self.what, labels=['op'])
        nbytes = prom_core.CounterMetricFamily(
            p + '_operation_bytes', 'Bytes moved by %s' % self.what.lower(),
            labels=['op'])
        errors = prom_core.CounterMetricFamily(
            p + '_operation_errors', '%s that failed, by error kind'
            % self.what, labels=['op', 'kind'])
        latency = prom_core.HistogramMetricFamily(
            p + '_operation_latency_seconds', 'Latency of %s'
            % self.what.lower(), labels=['op'])
        for op, s in list(self._ops.items()):
            count.add_metric([op], s.count)
            nbytes.add_metric([op], s.bytes)
            for kind, n in list(s.errors.items()):
                errors.add_metric([op, kind], n)
            cumulative, running = [], 0
            for bound, n in zip(self.bounds + (float('inf'),),
                                list(s.buckets), strict=True):
                running += n
                cumulative.append((_bound(bound), running))
            latency.add_metric([op], cumulative, s.sum)
        yield count
        yield nbytes
        yield errors
        yield latency

    def describe(self):
        return list(self.collect())


def _bound(b):
    return '+Inf' if b == float('inf') else repr(float(b))


def error_kind(error):
    """A short, bounded label for an error: the Ursa exception's class
    name, or the class name of anything else (OSError subclasses by
    name: ConnectionResetError, TimeoutError...)."""
    if isinstance(error, exception.UrsaError):
        return type(error).__name__
    if isinstance(error, BaseException):
        return type(error).__name__
    return str(error)[:40]


class _Gauge:
    """A gauge family computed at scrape time by ``fn``: a number, or a
    {labels tuple: number} dict for a family with labels.  A callback that
    raises is logged, its family left out of that scrape, and counted in
    ``failures`` (a Counter by family name) when one is given."""

    def __init__(self, name, doc, labels, fn, kind='gauge', failures=None):
        self.name, self.doc, self.labels, self.fn = name, doc, labels, fn
        self.kind = kind
        self.failures = failures

    def collect(self):
        cls = (prom_core.CounterMetricFamily if self.kind == 'counter'
               else prom_core.GaugeMetricFamily)
        fam = cls(self.name, self.doc, labels=self.labels)
        try:
            value = self.fn()
        except Exception:  # noqa: BLE001 - a scrape must not fail
            LOG.exception('Metric %s could not be computed', self.name)
            if self.failures is not None:
                self.failures[self.name] += 1
            return
        if self.labels:
            for key, v in value.items():
                if not isinstance(key, tuple):
                    key = (key,)
                fam.add_metric([str(k) for k in key], v)
        elif value is not None:
            fam.add_metric([], value)
        yield fam

    def describe(self):
        return []


class ProcessMetrics:
    """The metrics registry of one Ursa process (``service``: ``master``,
    ``chunkserver``, ``nbd``, ``attach``): the process collector (CPU,
    memory, open files), ``ursa_up`` with the service's name, and what the
    service adds."""

    def __init__(self, service, registry=None):
        self.service = service
        self.registry = registry or prom.CollectorRegistry()
        prom.ProcessCollector(registry=self.registry)
        info = prom.Gauge('ursa_service_info', 'The service this process '
                          'runs (always 1)', ['service'],
                          registry=self.registry)
        info.labels(service).set(1)
        self.server = None
        # Families whose callback raised, by name: a family missing from
        # the scrapes is otherwise silent (an alert on it never fires).
        self.failures = collections.Counter()
        self._failures = _Gauge(
            'ursa_metrics_errors_total', 'Scrapes that left a family out '
            'because computing it failed (see the log), by family',
            ['family'], lambda: dict(self.failures), 'counter')
        self.registry.register(self._failures)

    def operations(self, prefix, what, ops, buckets=LATENCY_BUCKETS):
        """Register and return an :class:`Operations` (see there)."""
        ops = Operations(prefix, what, ops, buckets)
        self.registry.register(ops)
        return ops

    def gauge(self, name, doc, fn, labels=(), kind='gauge'):
        """Register a family computed by ``fn`` at each scrape (see
        :class:`_Gauge`); ``kind='counter'`` for a total kept elsewhere."""
        self.registry.register(_Gauge(name, doc, list(labels), fn, kind,
                                      self.failures))
        # Collected after the gauges (in the order registered): a failure
        # shows in the scrape it happened in.
        self.registry.unregister(self._failures)
        self.registry.register(self._failures)

    def counter(self, name, doc, labels=()):
        return prom.Counter(name, doc, list(labels), registry=self.registry)

    def histogram(self, name, doc, labels=(), buckets=LATENCY_BUCKETS):
        return prom.Histogram(name, doc, list(labels), buckets=buckets,
                              registry=self.registry)

    def text(self):
        """The exposition text (what a scrape gets)."""
        return prom.generate_latest(self.registry).decode()

    async def serve_here(self, host, port, **kw):
        """Serve ``/metrics`` on the running loop (``port`` 0: not at
        all); returns the server (None when off).  An address that cannot
        be listened on ends the process with a message naming the
        options (SystemExit)."""
        if not port:
            return None
        server = MetricsServer(self.registry, host, port, **kw)
        try:
            await server.serve_here()
        except OSError as e:
            raise SystemExit(
                'ursa-%s: cannot serve /metrics on %s port %d (%s): set '
                '[ursa_%s] metrics_host and metrics_port to a free '
                'address, or metrics_port = 0 for no endpoint'
                % (self.service, host, port, e.strerror or e,
                   self.service)) from e
        self.server = server
        LOG.info('Prometheus metrics on http://%s:%d/metrics',
                 host, self.server.port)
        return self.server

    async def close(self):
        if self.server is not None:
            await self.server.close_here()
            self.server = None


class MetricsServer:
    """GET (or HEAD) ``/metrics``, one request per connection (HTTP/1.1
    with ``Connection: close``), from one loop whatever the number of
    connections (see the module's doc).

    A scrape runs the collectors on the loop, which is the service's: the
    data path waits meanwhile.  So that a client asking again and again
    cannot take the loop, the exposition is made at most once per
    ``1/SHARE`` times what it took the last time (10 % of the loop at
    most): a request waits for that, and every request that arrived
    before an exposition began is answered with it (it is newer than the
    request, so never stale).  A reply is written out within ``timeout``
    seconds or the connection is cut: a client that does not read keeps
    neither a file descriptor nor the reply's memory."""

    # A scrape request is a few hundred bytes; a head longer than this is
    # not one.
    MAX_HEAD = 16 * 1024
    # The share of the loop's time expositions may take at most.
    SHARE = 0.1

    def __init__(self, registry, host='127.0.0.1', port=0, timeout=5.0,
                 max_connections=64):
        self.registry = registry
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_connections = max_connections
        self.open = collections.OrderedDict()  # writer -> None, oldest 1st
        self.expositions = 0    # made so far
        self._body = None       # the last exposition ...
        self._made = float('-inf')     # ... the loop time it began
        self._next = float('-inf')     # loop time the next one may begin
        self._loop = None
        self._server = None
        self._thread = None
        self._started = threading.Event()
        self._error = None

    # -- on a thread of its own ---------------------------------------------

    def start(self):
        """Serve from a thread of its own; returns self once listening."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run,
                                        name='metrics-server', daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self):
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.serve_here())
        except OSError as e:
            self._error = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.close_here())
        self._loop.close()

    def shutdown(self):
        """Stop serving and close every connection (:meth:`start`)."""
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    # -- on the running loop --------------------------------------------------

    async def serve_here(self):
        """Listen on the running loop."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=self.MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close_here(self):
        """Stop serving and close every connection (:meth:`serve_here`)."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self.open):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader, writer):
        self.open[writer] = None
        if len(self.open) > self.max_connections:
            oldest = next(iter(self.open))
            LOG.debug('Metrics: %d connections open, closing the oldest',
                      len(self.open))
            oldest.transport.abort()
            self.open.pop(oldest, None)
        done = False
        try:
            head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'),
                                          self.timeout)
            reply = await self._answer(head)
            # Wait until the kernel took all of it, not just most.
            writer.transport.set_write_buffer_limits(0)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), self.timeout)
            done = True
        except (TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError):
            pass  # idle, cut, not a scrape, or not reading: just close it
        finally:
            self.open.pop(writer, None)
            if done:
                writer.close()
            else:
                # close() would keep the socket and what is left of the
                # reply until the peer reads it, which it may never do.
                writer.transport.abort()

    async def _answer(self, head):
        line = head.split(b'\r\n', 1)[0].decode('latin-1').split()
        method, path = (line + ['', ''])[:2]
        if method not in ('GET', 'HEAD'):
            return self._reply('405 Method Not Allowed', b'GET /metrics\n',
                               method)
        if path.split('?', 1)[0] not in ('/metrics', '/'):
            return self._reply('404 Not Found', b'GET /metrics\n', method)
        try:
            body = await self._exposition()
        except Exception as e:  # noqa: BLE001 - tell the scraper, go on
            LOG.exception('Metrics: a collector failed')
            return self._reply('500 Internal Server Error',
                               ('collecting the metrics failed: %s\n'
                                % e).encode(), method)
        return self._reply('200 OK', body, method, prom.CONTENT_TYPE_LATEST)

    async def _exposition(self):
        """The exposition text, made after this call began (see the
        class's doc for how often)."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        wait = self._next - asked
        if wait > 0:
            await asyncio.sleep(wait)
        if self._made >= asked:
            return self._body   # made for another request meanwhile
        began = loop.time()
        self._made = float('-inf')     # until this one is made
        try:
            body = prom.generate_latest(self.registry)
        finally:
            took = loop.time() - began
            self._next = began + min(took / self.SHARE, self.timeout / 2)
            self.expositions += 1
        self._body, self._made = body, began
        return body

    @staticmethod
    def _reply(status, body, method, ctype='text/plain; charset=utf-8'):
        head = ('HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n'
                'Connection: close\r\n\r\n' % (status, ctype, len(body)))
        return head.encode() + (b'' if method == 'HEAD' else body)
