"""PeerConnection.call: one request id per call, handed to the encoder."""

import asyncio

from cinder_ursa.transport import aio


class _Conn(aio.PeerConnection):
    def __init__(self):
        self.sent = []

    async def request(self, req_id, buffers, timeout):
        self.sent.append((req_id, buffers, timeout))
        return 'reply %d' % req_id


def test_call_allocates_the_request_id_and_passes_the_arguments():
    conn = _Conn()

    def encode(rid, a, b, flag=False):
        return (rid, a, b, flag)

    async def go():
        return [await conn.call(encode, 1, 2, timeout=5),
                await conn.call(encode, 3, 4, flag=True, timeout=7)]
    replies = asyncio.run(go())
    (r1, f1, t1), (r2, f2, t2) = conn.sent
    assert r2 > r1 > 0
    assert (f1, t1) == ((r1, 1, 2, False), 5)
    assert (f2, t2) == ((r2, 3, 4, True), 7)
    assert replies == ['reply %d' % r1, 'reply %d' % r2]
