"""A chunk server's recent disk latency, as its heartbeat reports it to
the master (which compares the servers: master/slowdisk.py).

Three kinds, each the disk-bound part of the work only, not the network:
``read`` (a READ's store.read_blocks), ``write`` (the local apply of a
WRITE or REPLICATE: store.write) and ``sync`` (one fdatasync batch:
store.sync).  Each kind keeps a ring of ``BUCKETS`` time buckets covering
the last ``window`` seconds; a bucket is a fixed log-scale histogram (a
list of counts), so recording is a bisect and an increment, and the
quantiles of the window are read from the merged buckets when a heartbeat
is sent.

Reads and writes are recorded on the event loop's thread; syncs run in
worker threads and are recorded under a lock (one per fdatasync batch).
"""

import bisect
import contextlib
import threading
import time

# Bucket bounds (seconds): 50 us to 10 s, each 1.5 times the one before
# (a quantile is known within that factor, interpolated inside it).
BOUNDS = tuple(50e-6 * 1.5 ** i for i in range(31))
KINDS = ('read', 'write', 'sync')
BUCKETS = 6          # time buckets per window
DEFAULT_WINDOW = 60.0

clock = time.perf_counter


class Window:
    """The latencies of one kind over the last ``window`` seconds."""

    def __init__(self, window=DEFAULT_WINDOW, lock=False):
        self._lock = threading.Lock() if lock else None
        self.reset(window)

    def reset(self, window):
        self.window = float(window)
        self.width = self.window / BUCKETS
        # Ring of [bucket number, counts, sum]; bucket number is
        # floor(time / width).
        self._ring = [[-1, [0] * (len(BOUNDS) + 1), 0.0]
                      for _ in range(BUCKETS)]
        self._cur = self._ring[0]

    def add(self, seconds, now):
        """Count one operation that took ``seconds``, ended at ``now``
        (a perf_counter reading)."""
        if self._lock is None:
            self._add(seconds, now)
        else:
            with self._lock:
                self._add(seconds, now)

    def _add(self, seconds, now):
        cur = self._cur
        n = int(now / self.width)
        if cur[0] != n:
            cur = self._ring[n % BUCKETS]
            if cur[0] != n:
                cur[0] = n
                cur[1] = [0] * (len(BOUNDS) + 1)
                cur[2] = 0.0
            self._cur = cur
        cur[1][bisect.bisect_left(BOUNDS, seconds)] += 1
        cur[2] += seconds

    def summary(self, now):
        """{count, mean, p50, p99} over the window ending at ``now``
        (seconds; None without samples)."""
        if self._lock is None:
            merged, total = self._merge(now)
        else:
            with self._lock:
                merged, total = self._merge(now)
        count = sum(merged)
        if not count:
            return {'count': 0, 'mean': None, 'p50': None, 'p99': None}
        return {'count': count, 'mean': total / count,
                'p50': quantile(merged, 0.5), 'p99': quantile(merged, 0.99)}

    def _merge(self, now):
        first = int(now / self.width) - BUCKETS + 1
        merged = [0] * (len(BOUNDS) + 1)
        total = 0.0
        for n, counts, s in self._ring:
            if n >= first:
                for i, c in enumerate(counts):
                    merged[i] += c
                total += s
        return merged, total


def quantile(counts, q):
    """The ``q`` quantile of a histogram over :data:`BOUNDS`, interpolated
    linearly inside its bucket."""
    total = sum(counts)
    rank = q * total
    running = 0
    for i, c in enumerate(counts):
        if c and running + c >= rank:
            lo = BOUNDS[i - 1] if i > 0 else 0.0
            hi = BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1] * 1.5
            return lo + (hi - lo) * max(rank - running, 0) / c
        running += c
    return BOUNDS[-1]


class DiskLatency:
    """The read, write and sync windows of a chunk server."""

    def __init__(self, window=DEFAULT_WINDOW):
        self.read = Window(window)
        self.write = Window(window)
        self.sync = Window(window, lock=True)

    @property
    def window(self):
        return self.read.window

    def set_window(self, window):
        """The master asks for another window (its slow_disk_period): the
        counts start again."""
        if window and float(window) != self.read.window:
            for w in (self.read, self.write, self.sync):
                with w._lock or contextlib.nullcontext():
                    w.reset(window)

    def report(self, now=None):
        """What the heartbeat carries: {kind: {count, mean, p50, p99}}
        (seconds) and the window."""
        now = clock() if now is None else now
        out = {k: getattr(self, k).summary(now) for k in KINDS}
        out['window'] = self.window
        return out

