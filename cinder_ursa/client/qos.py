"""Per-volume QoS limits, enforced where the I/O starts (the client
library, so the NBD gateway, the attach agent and every other user).

Each limit is a token bucket that refills at its rate and holds at most one
second of it (the burst).  A request takes what it needs and, if the bucket
went into debt, waits until the debt is paid: concurrent requests queue
behind each other in arrival order and the average never exceeds the limit.
"""

import asyncio
import time

from cinder_ursa.protocol.rest import QOS_KEYS


class _Bucket:
    __slots__ = ('rate', 'level', 'stamp')

    def __init__(self, rate, now):
        self.rate = float(rate)
        self.level = self.rate  # start full: one second of burst
        self.stamp = now

    def take(self, amount, now):
        """Take ``amount``; return the seconds to wait before going on."""
        self.level = min(self.rate, self.level
                         + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= amount
        return -self.level / self.rate if self.level < 0 else 0.0


class Limiter:
    """The limits of one volume; ``update`` replaces them in place."""

    def __init__(self, limits=None, clock=time.monotonic):
        self.clock = clock
        self.limits = {}
        self._buckets = {}
        self.update(limits or {})

    def update(self, limits):
        limits = {k: v for k, v in (limits or {}).items()
                  if k in QOS_KEYS and v}
        if limits == self.limits:
            return
        now = self.clock()
        self.limits = limits
        self._buckets = {k: _Bucket(v, now) for k, v in limits.items()}

    def __bool__(self):
        return bool(self._buckets)

    def delay(self, kind, nbytes):
        """Seconds a ``kind`` ('read' or 'write') request of ``nbytes``
        must wait (its share is taken from every bucket it counts in)."""
        now = self.clock()
        wait = 0.0
        for key in ('%s_iops_sec' % kind, 'total_iops_sec'):
            b = self._buckets.get(key)
            if b is not None:
                wait = max(wait, b.take(1, now))
        if nbytes:
            for key in ('%s_bytes_sec' % kind, 'total_bytes_sec'):
                b = self._buckets.get(key)
                if b is not None:
                    wait = max(wait, b.take(nbytes, now))
        return wait

    async def acquire(self, kind, nbytes):
        wait = self.delay(kind, nbytes)
        if wait > 0:
            await asyncio.sleep(wait)
