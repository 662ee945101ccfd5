"""A TCP proxy that injects network faults, for tests and the all-in-one
cluster (as asyncpg's TCPFuzzingProxy); never for production.

``FaultProxy`` listens on one address and forwards every connection to a
target, byte for byte, until told otherwise:

``partition(existing='stall', new='stall')``
    Nothing passes in either direction.  Connections already open are
    *stalled* (their bytes wait in the proxy, as in a real partition where
    TCP keeps retransmitting; they flow again after ``heal()``) or *cut*
    (both ends reset at once).  New connections are *stalled* (accepted, then
    silent: a connect through a partition that hangs) or *refused* (the
    listening socket is closed: connection refused).
``heal()``
    Everything passes again; stalled bytes are delivered in order.
``delay(ms)``
    Every chunk of bytes is forwarded ``ms`` milliseconds after it arrived,
    in both directions (0 to stop).

The proxy is asyncio; ``ProxyThread`` runs proxies on an event loop of its
own in a daemon thread and offers the same controls as blocking calls, for
synchronous callers such as ``AllInOne`` and the tests.  It lives here, in
the commands package, because ``cinder_ursa.cmd.allinone`` (the launcher
the functional tests use) puts one in front of each chunk server.
"""

import asyncio
import threading

BUFFER = 256 * 1024
QUEUED = 64      # chunks held per direction before the proxy stops reading


class FaultProxy:
    """Forwards ``listen_host:listen_port`` to ``target_host:target_port``
    (port 0: a free one, see ``port`` once started)."""

    def __init__(self, listen_host, listen_port, target_host, target_port):
        self.listen = (listen_host, listen_port)
        self.target = (target_host, target_port)
        self.port = None
        self.connections = 0        # accepted so far
        self._server = None
        self._links = set()
        self._open = asyncio.Event()
        self._open.set()
        self._delay = 0.0
        self._refusing = False

    async def start(self):
        await self._listen(self.listen[1])
        return self

    async def _listen(self, port):
        self._server = await asyncio.start_server(
            self._accept, self.listen[0], port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self):
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.cut()
        self._open.set()

    # --- faults ------------------------------------------------------------

    @property
    def partitioned(self):
        return not self._open.is_set()

    async def partition(self, existing='stall', new='stall'):
        if existing not in ('stall', 'cut') or new not in ('stall', 'refuse'):
            raise ValueError('partition(existing=stall|cut, '
                             'new=stall|refuse)')
        self._open.clear()
        if existing == 'cut':
            for link in list(self._links):
                link.cut()
        if new == 'refuse' and self._server is not None:
            self._server.close()
            self._server = None
            self._refusing = True

    async def heal(self):
        if self._refusing:
            self._refusing = False
            await self._listen(self.port)
        self._open.set()

    async def delay(self, ms):
        self._delay = max(ms, 0) / 1000.0

    # --- forwarding ----------------------------------------------------------

    async def _accept(self, reader, writer):
        self.connections += 1
        link = _Link(self, reader, writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, proxy, reader, writer):
        self.proxy = proxy
        self.down = (reader, writer)    # the client's side
        self.up = None                  # the target's side
        self._tasks = []
        self._cut = False

    async def run(self):
        proxy = self.proxy
        # Accepted during a partition: silent until it heals.
        await proxy._open.wait()
        if self._cut:
            return
        try:
            self.up = await asyncio.open_connection(*proxy.target)
        except OSError:
            self._abort(self.down[1])
            return
        if self._cut:
            self._abort(self.up[1])
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pipe(self.down[0], self.up[1])),
            loop.create_task(self._pipe(self.up[0], self.down[1]))]
        try:
            await asyncio.gather(*self._tasks)
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            for _, w in (self.down, self.up):
                w.close()

    async def _pipe(self, reader, writer):
        """Forward one direction: chunks wait for the delay and for the
        partition to heal, in order; reading stops when too many wait."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue(QUEUED)

        async def read():
            while True:
                try:
                    data = await reader.read(BUFFER)
                except OSError:
                    data = b''
                await queue.put((loop.time(), data))
                if not data:
                    return

        reading = loop.create_task(read())
        try:
            while True:
                arrived, data = await queue.get()
                wait = arrived + self.proxy._delay - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.proxy._open.wait()
                if not data:
                    # EOF: close both sides once what is buffered is sent
                    # (the data protocol never half-closes).
                    self._finish()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            self.cut()
        finally:
            reading.cancel()

    def _finish(self):
        for _, w in (self.down, self.up):
            w.close()
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()

    def cut(self):
        """Reset both ends now."""
        self._cut = True
        self._abort(self.down[1])
        if self.up is not None:
            self._abort(self.up[1])
        for t in self._tasks:
            t.cancel()

    @staticmethod
    def _abort(writer):
        transport = writer.transport
        if not transport.is_closing():
            transport.abort()


class ProxyThread:
    """Fault proxies on an event loop in a daemon thread, controlled with
    blocking calls: ``add()`` returns a ``ProxyControl``."""

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name='fault-proxies', daemon=True)
        self._thread.start()
        self.proxies = []

    def call(self, coro, timeout=30.0):
        return asyncio.run_coroutine_threadsafe(
            coro, self._loop).result(timeout)

    def add(self, listen_host, listen_port, target_host, target_port):
        proxy = FaultProxy(listen_host, listen_port, target_host, target_port)
        self.call(proxy.start())
        self.proxies.append(proxy)
        return ProxyControl(self, proxy)

    def close(self):
        for proxy in self.proxies:
            self.call(proxy.close())
        self.proxies.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


class ProxyControl:
    """Blocking controls of one proxy of a ``ProxyThread``."""

    def __init__(self, thread, proxy):
        self._thread = thread
        self.proxy = proxy

    @property
    def port(self):
        return self.proxy.port

    @property
    def connections(self):
        return self.proxy.connections

    @property
    def partitioned(self):
        return self.proxy.partitioned

    def partition(self, existing='stall', new='stall'):
        self._thread.call(self.proxy.partition(existing, new))

    def heal(self):
        self._thread.call(self.proxy.heal())

    def delay(self, ms):
        self._thread.call(self.proxy.delay(ms))

    def close(self):
        self._thread.call(self.proxy.close())
