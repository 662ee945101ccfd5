"""Blocking facade over the async client, for the CLI and the Cinder driver.

The async core runs on its own event loop in a native thread; calls hand
coroutines to it and wait for the result.  When eventlet has monkey-patched
the process (cinder-volume's default), waiting happens in eventlet's native
thread pool, so other green threads keep running; the loop thread is always
a real OS thread.  No asyncio loop is ever started on the calling thread.
"""

import asyncio
import sys

from cinder_ursa.client import cluster as cluster_mod


def _native_threading():
    """The real threading module, even under eventlet's monkey patching."""
    eventlet = sys.modules.get('eventlet.patcher')
    if eventlet is not None and eventlet.is_monkey_patched('thread'):
        return eventlet.original('threading'), True
    import threading
    return threading, False


def _new_loop():
    """uvloop where installed (libuv does the I/O, also under eventlet's
    patched socket module), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _LoopThread:

    def __init__(self):
        self._threading, self._green = _native_threading()
        self.loop = _new_loop()
        ready = self._threading.Event()
        self._thread = self._threading.Thread(
            target=self._run, args=(ready,), name='ursa-client-loop',
            daemon=True)
        self._thread.start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def call(self, coro):
        done = self._threading.Event()
        box = {}

        def start():
            task = box['running'] = self.loop.create_task(coro)

            def finished(t):
                box['task'] = t
                done.set()
            task.add_done_callback(finished)
        self.loop.call_soon_threadsafe(start)
        if self._green:
            from eventlet import tpool
            tpool.execute(done.wait)
        else:
            try:
                done.wait()
            except KeyboardInterrupt:
                # Ctrl-C (or the CLI's SIGTERM): the task is cancelled and
                # waited for, so what it undoes on the way out (an
                # import's revert) is done before the loop stops.
                self.loop.call_soon_threadsafe(
                    lambda: box.get('running') and box['running'].cancel())
                done.wait()
                raise
        return box['task'].result()

    def stop(self):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


class SyncCluster:
    """``with SyncCluster(urls, key) as c: v = c.open_volume('vol')``."""

    def __init__(self, master_urls, key, **kwargs):
        self._lt = _LoopThread()
        self._cluster = self._lt.call(self._make(master_urls, key, kwargs))

    @staticmethod
    async def _make(urls, key, kwargs):
        return cluster_mod.Cluster(urls, key, **kwargs)

    def open_volume(self, ref, writable=True, holder=None, force=False,
                    lease_ttl=None, lease='eager'):
        """``lease``: 'eager' (the lease at open) or 'on-write' (at the
        first write, as a handover: Cluster.open_volume)."""
        vol = self._lt.call(self._cluster.open_volume(
            ref, writable, holder, force, lease_ttl, lease))
        return SyncVolume(self._lt, vol)

    # Snapshot and clone calls for the tools that already hold a data
    # cluster; metadata-only callers use client.master.MasterClient.
    def create_snapshot(self, volume, name):
        return self._lt.call(self._cluster.create_snapshot(volume, name))

    def delete_snapshot(self, ref):
        self._lt.call(self._cluster.delete_snapshot(ref))

    def clone(self, snapshot, name, size=None, **kwargs):
        return self._lt.call(self._cluster.clone(snapshot, name, size,
                                                 **kwargs))

    def revert(self, volume, snapshot):
        return self._lt.call(self._cluster.revert(volume, snapshot))

    def resize(self, volume, size, force=False):
        """Grow a volume, or shrink it with ``force`` (the tail is zeroed
        first)."""
        return self._lt.call(self._cluster.resize(volume, size, force))

    def flatten(self, volume, progress=None, rate=None):
        """Copy what a clone reads from its parent into it and detach it;
        ``progress`` is called on the loop thread."""
        return self._lt.call(self._cluster.flatten(volume, progress, rate))

    def run(self, coro_fn, *args):
        """Run ``coro_fn(cluster, *args)`` on the client loop (bulk work)."""
        return self._lt.call(coro_fn(self._cluster, *args))

    def call(self, coro_fn, *args):
        """Run ``coro_fn(*args)`` on the client loop (with async volumes
        opened by this cluster, e.g. ``transfer.import_file``)."""
        return self._lt.call(coro_fn(*args))

    def close(self):
        try:
            self._lt.call(self._cluster.close())
        finally:
            self._lt.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SyncVolume:

    def __init__(self, lt, vol):
        self._lt = lt
        self.volume = vol
        self.size = vol.size
        self.name = vol.name
        self.id = vol.id

    def read(self, offset, length):
        return self._lt.call(self.volume.read(offset, length))

    def write(self, offset, data, fua=False):
        self._lt.call(self.volume.write(offset, data, fua))

    def write_zeroes(self, offset, length, fua=False):
        self._lt.call(self.volume.write_zeroes(offset, length, fua))

    def block_status(self, offset, length):
        return self._lt.call(self.volume.block_status(offset, length))

    def flush(self):
        self._lt.call(self.volume.flush())

    def hand_over(self):
        """Give the write lease to a live migration's destination that
        asked for it (Volume.hand_over); True once handed over."""
        return self._lt.call(self.volume.hand_over())

    def close(self):
        self._lt.call(self.volume.close())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
