"""The recovery throttle on a fake clock: the floor while clients use the
server, the ceiling while they do not, no limit at 0."""

import asyncio

from cinder_ursa.chunkserver import throttle

MiB = 1024 * 1024


class Clock:
    def __init__(self):
        self.now = 100.0
        self.slept = 0.0

    def __call__(self):
        return self.now

    async def sleep(self, s):
        self.slept += s
        self.now += s


def _send(t, clock, total, step=MiB, clients=False):
    async def run():
        for _ in range(total // step):
            if clients:
                t.client_ops += 1     # clients keep using the server
            await t.take(step)
    start = clock.now
    asyncio.run(run())
    return clock.now - start


def test_idle_clients_get_the_ceiling_busy_ones_the_floor():
    clock = Clock()
    t = throttle.Throttle(10 * MiB, 100 * MiB, clock=clock,
                          sleep=clock.sleep)
    # 200 MiB at 100 MiB/s, with a burst of 0.1 s.
    assert 1.8 < _send(t, clock, 200 * MiB) <= 2.0
    t.client_ops += 1              # a client request now
    assert t.busy() and t.rate() == 10 * MiB
    elapsed = _send(t, clock, 20 * MiB, clients=True)
    assert 1.8 < elapsed <= 2.2   # 20 MiB at 10 MiB/s
    clock.now += 1.5
    # No client request for a second: back to the ceiling.
    assert not t.busy() and t.rate() == 100 * MiB


def test_a_rate_of_zero_is_no_limit():
    clock = Clock()
    t = throttle.Throttle(0, 0, clock=clock, sleep=clock.sleep)
    assert _send(t, clock, 500 * MiB) == 0 and clock.slept == 0
    t = throttle.Throttle(0, 50 * MiB, clock=clock, sleep=clock.sleep)
    t.client_ops += 1
    assert _send(t, clock, 100 * MiB) == 0     # busy: the floor, 0
