"""The primary's count of forwarded writes not answered yet, by volume and
lease generation, and a FENCE's wait for those of older generations
(replication.ReplicationMixin.forwarded)."""

import asyncio

from cinder_ursa.chunkserver import replication


class Primary(replication.ReplicationMixin):
    def __init__(self):
        self._loop = asyncio.get_running_loop()
        self._forwarding = {}
        self._fence_waits = []

    def forward(self, volume, generation):
        counts = self._forwarding.setdefault(volume, {})
        counts[generation] = counts.get(generation, 0) + 1


def run(coro):
    return asyncio.run(coro)


def test_a_fence_with_nothing_older_in_flight_waits_for_nothing():
    async def go():
        p = Primary()
        p.forward('v', 2)               # the new holder's: not waited for
        assert not p.forwarding_older('v', 2)
        assert await p.forwarded('v', 2, 0.01) is True
        assert await p.forwarded('w', 9, 0.01) is True
    run(go())


def test_a_fence_waits_until_every_older_write_is_answered():
    async def go():
        p = Primary()
        for gen in (1, 1, 2, 3):
            p.forward('v', gen)
        waiting = asyncio.ensure_future(p.forwarded('v', 3, 5))
        await asyncio.sleep(0)
        p._unforward('v', 1)
        p._unforward('v', 3)            # a newer one: irrelevant
        await asyncio.sleep(0)
        assert not waiting.done()
        p._unforward('v', 1)
        await asyncio.sleep(0)
        assert not waiting.done()       # generation 2 still in flight
        p._unforward('v', 2)
        assert await waiting is True
        # Everything answered: nothing kept, no waiter left behind.
        assert p._forwarding == {} and p._fence_waits == []
    run(go())


def test_a_fence_gives_up_after_its_time_and_says_so():
    async def go():
        p = Primary()
        p.forward('v', 1)
        assert await p.forwarded('v', 2, 0.05) is False
        assert p._fence_waits == []
        p._unforward('v', 1)            # answered later: no waiter woken
        assert p._forwarding == {}
    run(go())


def test_fences_of_other_volumes_are_not_woken():
    async def go():
        p = Primary()
        p.forward('v', 1)
        p.forward('w', 1)
        on_v = asyncio.ensure_future(p.forwarded('v', 2, 5))
        on_w = asyncio.ensure_future(p.forwarded('w', 2, 5))
        await asyncio.sleep(0)
        p._unforward('v', 1)
        assert await on_v is True
        await asyncio.sleep(0)
        assert not on_w.done()
        p._unforward('w', 1)
        assert await on_w is True
    run(go())
