"""Output batching: what the callbacks of one burst send leaves in one
writev per transport, and a batch belongs to one thread."""

import asyncio
import threading

from cinder_ursa.transport import aio


class Transport:
    def __init__(self):
        self.calls = []

    def write(self, data):
        self.calls.append([data])

    def writelines(self, buffers):
        self.calls.append(list(buffers))

    def is_closing(self):
        return False


def burst(defer):
    """Three tasks woken by one burst of replies, each sending once."""
    t = Transport()

    async def main():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(3)]

        async def task(fut, i):
            await fut
            aio.queue_send(t, b'reply %d' % i)

        tasks = [loop.create_task(task(f, i)) for i, f in enumerate(futs)]
        await asyncio.sleep(0)
        for f in futs:
            f.set_result(None)
        if defer:
            aio.defer_batch(loop)
        await asyncio.gather(*tasks)
        await asyncio.sleep(0)
        aio.queue_send(t, b'later')  # the batch is closed by now

    asyncio.run(main())
    return t.calls


def test_callbacks_of_one_burst_send_in_one_writev():
    assert burst(True) == [[b'reply 0', b'reply 1', b'reply 2'], [b'later']]
    assert burst(False) == [[b'reply 0'], [b'reply 1'], [b'reply 2'],
                            [b'later']]


def test_a_batch_belongs_to_its_thread():
    assert aio._open_batch()
    try:
        other = Transport()
        th = threading.Thread(target=aio.queue_send, args=(other, b'x'))
        th.start()
        th.join()
        assert other.calls == [[b'x']]  # not held by this thread's batch
        mine = Transport()
        aio.queue_send(mine, b'y')
        assert mine.calls == []
    finally:
        aio._close_batch()
    assert mine.calls == [[b'y']]


def test_a_loop_that_stops_with_its_batch_open_leaves_none_behind():
    """run_until_complete returns as soon as its future is done: a burst
    received in that last pass queues the batch's closing callback for a
    pass that never comes.  The thread's next loop must send at once."""
    left = Transport()
    loop = asyncio.new_event_loop()
    try:
        async def last_pass():
            aio.defer_batch(loop)       # its _close_batch never runs
            aio.queue_send(left, b'held')
        loop.call_soon(loop.stop)
        loop.run_until_complete(last_pass())
    finally:
        loop.close()
    assert left.calls == []             # held by the orphaned batch

    t = Transport()

    async def later():
        aio.queue_send(t, b'now')
        assert t.calls == [[b'now']]    # not held for a loop that is gone
        assert aio._open_batch()        # and a new batch opens
        aio._close_batch()
    asyncio.run(later())
    assert left.calls == [[b'held']]    # what was held went out then
