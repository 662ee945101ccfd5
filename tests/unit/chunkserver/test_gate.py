"""Held chunks: requests wait in order behind one step, bounded, and a
failed confirmation answers them all at once."""

import asyncio

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver import gate as gate_mod

KEY = ('vol', 0)


class Frame:
    def __init__(self, n):
        self.body = bytes(n)


class Conn:
    closed = False


def item(name, size=10, conn=None):
    return (name, conn or Conn(), Frame(size))


def test_requests_wait_in_order_behind_a_step():
    served = []
    g = gate_mod.Gate(lambda it, confirmed, failed: served.append(
        (it[0], confirmed, failed)))

    async def go():
        release = asyncio.Event()

        async def step():
            await release.wait()
        g.hold(KEY, step(), item('first'), confirms=True)
        assert g.held(KEY)
        g.wait(KEY, item('second'))
        closed = Conn()
        closed.closed = True
        g.wait(KEY, item('gone', conn=closed))
        assert [it[0] for it in g.waiting(KEY)] == ['first', 'second', 'gone']
        await asyncio.sleep(0)
        assert served == []
        release.set()
        await asyncio.sleep(0.01)
    asyncio.run(go())
    assert served == [('first', True, None), ('second', True, None)]
    assert not g.held(KEY) and not g.waiting(KEY)
    assert g._bytes == 0


def test_a_failed_confirmation_answers_every_waiter_and_is_remembered():
    served = []
    g = gate_mod.Gate(lambda it, confirmed, failed: served.append(
        (it[0], confirmed, type(failed))))

    async def go():
        async def step():
            raise exception.Unavailable(reason='master down')
        g.hold(KEY, step(), item('a'), confirms=True)
        g.wait(KEY, item('b'))
        await asyncio.sleep(0.01)
    asyncio.run(go())
    assert served == [('a', False, exception.Unavailable),
                      ('b', False, exception.Unavailable)]
    assert isinstance(g.recent_failure(KEY), exception.Unavailable)
    assert g.recent_failure(('vol', 1)) is None


def test_the_queues_are_bounded(monkeypatch):
    monkeypatch.setattr(gate_mod, 'MAX_PER_CHUNK', 2)
    monkeypatch.setattr(gate_mod, 'MAX_BYTES', 100)
    g = gate_mod.Gate(lambda *a: None)

    async def go():
        never = asyncio.Event()
        g.hold(KEY, never.wait())
        g.wait(KEY, item('a'))
        g.wait(KEY, item('b'))
        with pytest.raises(exception.Unavailable, match='busy'):
            g.wait(KEY, item('c'))
        g.hold(('vol', 1), never.wait())
        with pytest.raises(exception.Unavailable, match='busy'):
            g.wait(('vol', 1), item('big', size=90))
        await asyncio.sleep(0)   # the steps start
        g.cancel()
        await asyncio.sleep(0.01)
    asyncio.run(go())
