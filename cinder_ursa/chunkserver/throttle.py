"""How fast a chunk server sends recovery traffic: a rate with a floor and
a ceiling.

Every block a chunk server pushes to bring another copy up to date (a
copy, :mod:`.rebuild`; a resync, :mod:`.resync`) goes through one token
bucket.  Its rate is the ceiling while no client uses this server, and
the floor while clients do (a read or write served in the last second):
client I/O keeps most of the disk and the network, and recovery still
makes progress under full load.  A rate of 0 is no limit.
"""

import asyncio
import time

BUSY_WINDOW = 1.0        # s after a client request this server counts busy
BURST = 0.1              # s of the rate that may go at once


class Throttle:
    """``floor`` and ``ceiling`` in bytes per second (0: no limit); the
    server adds one to ``client_ops`` per client request it serves."""

    def __init__(self, floor=0, ceiling=0, clock=time.monotonic,
                 sleep=asyncio.sleep):
        self.floor, self.ceiling = floor, ceiling
        self.client_ops = 0
        self._clock, self._sleep = clock, sleep
        self._seen = 0
        self._busy_until = 0.0
        self._tokens = 0.0
        self._at = clock()

    def rate(self):
        """The rate now: the floor while clients are busy here."""
        now = self._clock()
        if self.client_ops != self._seen:
            self._seen = self.client_ops
            self._busy_until = now + BUSY_WINDOW
        return self.floor if now < self._busy_until else self.ceiling

    def busy(self):
        self.rate()
        return self._clock() < self._busy_until

    async def take(self, nbytes):
        """Wait until ``nbytes`` more may be sent."""
        rate = self.rate()
        if not rate:
            self._tokens, self._at = 0.0, self._clock()
            return
        now = self._clock()
        self._tokens = min(self._tokens + (now - self._at) * rate,
                           rate * BURST)
        self._at = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await self._sleep(-self._tokens / rate)
