"""Requests for a chunk wait, in order, while one step for it runs.

A chunk server applies a chunk's writes synchronously, in arrival order,
and forwards them in that order.  Three things must happen before a
request can go on and take time: asking the master to confirm an epoch or
lease generation the request names (:mod:`.authority`), a repair, during
which no write may reach the blocks being mended (:mod:`.repair`), and
the sync of the blocks a write copied into a snapshot layer, which must
be durable before the write overwrites them (:mod:`.replication`).  While
such a step runs for a chunk, the chunk is *held*: the requests that come
for it wait in a queue, and are served in arrival order once the step is
done, as if they had come after it.  Reads that need no confirmation are
not held (they do not change the chunk, and the writes queued are not
acknowledged yet, so a read may see them or not).

The queues are bounded (a client that keeps sending while the master is
unreachable must not exhaust the server's memory), requests of closed
connections are dropped, and a failed confirmation answers every request
that needed it at once, and the same ones for :data:`FAILED_TTL` seconds,
instead of each waiting for its own master timeout.
"""

import asyncio
import logging
import time

from cinder_ursa import exception

LOG = logging.getLogger(__name__)

MAX_PER_CHUNK = 1024              # requests waiting for one chunk
MAX_BYTES = 64 * 1024 * 1024      # frame bytes waiting, all chunks
FAILED_TTL = 1.0                  # s a failed confirmation is remembered


class Gate:
    """The held chunks of a chunk server.  ``serve(item, confirmed,
    failed)`` serves a request ``item`` (a tuple whose third element is
    its frame and second its connection) once its chunk is free again;
    ``confirmed``: the master was just asked; ``failed``: asking it
    failed with this error.  ``dropped(item)`` is told of a request not
    served because its connection closed while it waited."""

    def __init__(self, serve, dropped=None):
        self._serve = serve
        self._dropped = dropped
        self._queues = {}      # key -> [item] of a held chunk
        self._bytes = 0
        self._failed = {}      # key -> (time, error) of a failed confirm
        self._tasks = set()

    def held(self, key):
        return key in self._queues

    def wait(self, key, item):
        """Queue ``item`` behind the step running for ``key``; refuse it
        (Unavailable, which clients retry) when too much already waits."""
        queue = self._queues[key]
        n = len(item[2].body)
        if len(queue) >= MAX_PER_CHUNK or self._bytes + n > MAX_BYTES:
            raise exception.Unavailable(
                reason='chunk server busy: %d requests (%d MiB in all) wait '
                       'for chunk %s/%d, whose epoch or lease the master '
                       'has not confirmed yet, which is being repaired, or '
                       'whose snapshot copies are being synced; retry'
                       % (len(queue), self._bytes >> 20, *key))
        queue.append(item)
        self._bytes += n

    def waiting(self, key):
        """The items waiting for ``key``, in the order they will be
        served (nothing when it is not held)."""
        return self._queues.get(key, ())

    def recent_failure(self, key):
        """The error of a confirmation of ``key`` that failed less than
        FAILED_TTL seconds ago, or None."""
        failed = self._failed.get(key)
        if failed is None:
            return None
        if time.monotonic() - failed[0] < FAILED_TTL:
            return failed[1]
        del self._failed[key]
        return None

    def hold(self, key, step, first=None, confirms=False):
        """Hold chunk ``key`` while the coroutine ``step`` runs, with
        ``first`` (an item) at the head of its queue; ``confirms``: the
        step asks the master, and its failure is remembered."""
        assert key not in self._queues, key
        self._queues[key] = []
        if first is not None:
            self._queues[key].append(first)
            self._bytes += len(first[2].body)
        task = asyncio.get_running_loop().create_task(
            self._run(key, step, confirms))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key, step, confirms):
        failed, cancelled = None, False
        try:
            await step
        except asyncio.CancelledError:
            failed = exception.Unavailable(reason='the chunk server is '
                                                  'stopping')
            cancelled = True
        except Exception as e:  # noqa: BLE001 - answer what waits, never hang
            failed = e
            if confirms:
                if len(self._failed) > 4096:
                    self._failed.clear()
                self._failed[key] = (time.monotonic(), e)
        self._drain(key, confirms and failed is None, failed)
        if cancelled:
            raise asyncio.CancelledError()

    def _drain(self, key, confirmed, failed):
        queue = self._queues.pop(key, [])
        for i, item in enumerate(queue):
            self._bytes -= len(item[2].body)
            if item[1].closed:
                if self._dropped is not None:
                    self._dropped(item)
                continue
            self._serve(item, confirmed, failed)
            if key in self._queues:   # held again: the rest waits
                self._queues[key][:0] = queue[i + 1:]
                break

    def cancel(self):
        for task in list(self._tasks):
            task.cancel()
