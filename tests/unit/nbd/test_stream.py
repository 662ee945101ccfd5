"""NbdStream's transmission side over a stand-in transport: requests are
handed over in order, none while the server holds, the rest once it lets
go, and a bad request magic ends transmission with a ProtocolError."""

import asyncio

import pytest

from cinder_ursa import exception
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import stream as stream_mod


class Transport:
    def __init__(self):
        self.reading = True

    def is_closing(self):
        return False

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


def request(cmd, handle, length=0, data=b''):
    return p.REQUEST.pack(p.REQUEST_MAGIC, 0, cmd, handle, 0, length) + data


def deliver(stream, data):
    while data:
        buf = stream.get_buffer(-1)
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        data = data[n:]
        stream.buffer_updated(n)


def run(body):
    async def main():
        s = stream_mod.NbdStream(None)
        s.transport = Transport()
        s._loop = asyncio.get_running_loop()
        return await body(s)
    return asyncio.run(main())


def test_requests_wait_while_held_and_come_in_order():
    async def body(s):
        got = []

        def on_request(flags, cmd, handle, offset, length, payload):
            got.append((handle, bytes(payload)))
            if handle == 2:
                s.hold(True)
        done = s.serve_requests(on_request)
        big = b'w' * 100000
        deliver(s, request(p.CMD_READ, 1, 4096) +
                request(p.CMD_WRITE, 2, 3, b'abc') +
                request(p.CMD_READ, 3, 4096) +
                request(p.CMD_WRITE, 4, len(big), big))
        assert [h for h, _ in got] == [1, 2]
        assert not s.transport.reading
        s.hold(False)
        assert got == [(1, b''), (2, b'abc'), (3, b''), (4, big)]
        deliver(s, request(p.CMD_DISC, 5))
        s.stop()
        await done
    run(body)


def test_a_burst_is_sent_as_one_batch_also_after_a_hold(monkeypatch):
    """Requests handed over together (received in one burst, or kept back
    by a hold and let go at once) have what they send to chunk servers
    leave together: the stream defers the batch flush first."""
    batches = []
    monkeypatch.setattr(stream_mod.aio, 'defer_batch',
                        lambda loop: batches.append(loop))

    async def body(s):
        got = []

        def on_request(flags, cmd, handle, offset, length, payload):
            got.append(handle)
            if handle == 1:
                s.hold(True)
        done = s.serve_requests(on_request)
        deliver(s, request(p.CMD_READ, 1, 4096) +
                request(p.CMD_READ, 2, 4096) + request(p.CMD_READ, 3, 4096))
        assert got == [1] and len(batches) == 1
        s.hold(False)
        assert got == [1, 2, 3] and len(batches) == 2
        deliver(s, request(p.CMD_READ, 4, 4096))
        assert got == [1, 2, 3, 4] and len(batches) == 2  # one: no batch
        s.stop()
        await done
    run(body)


def test_a_bad_magic_ends_transmission():
    async def body(s):
        done = s.serve_requests(lambda *a: None)
        deliver(s, b'\0' * p.REQUEST.size)
        with pytest.raises(exception.ProtocolError):
            await done
    run(body)


def test_the_handshake_costs_kib_and_bytes_ahead_reach_transmission():
    """Before transmission a connection holds a 4 KiB buffer, not the
    256 KiB scratch (1000 idle connections used to cost 250 MiB); a
    request sent right behind the last option is not lost when the
    transmission's buffer takes over."""
    async def body(s):
        assert isinstance(s._rx, stream_mod.HandshakeBuffer)
        assert len(s.get_buffer(-1)) == stream_mod.HandshakeBuffer.START
        option = b'o' * 3000
        deliver(s, option + request(p.CMD_READ, 5, 4096))
        assert await s.readexactly(3000) == option
        got = []
        done = s.serve_requests(
            lambda flags, cmd, handle, *rest: got.append((cmd, handle)))
        assert got == [(p.CMD_READ, 5)]
        assert len(s.get_buffer(-1)) > 200 * 1024  # scratch, now
        s.stop()
        await done
    run(body)


def test_the_handshake_buffer_grows_to_a_large_option_then_stops_reading():
    async def body(s):
        big = b'b' * p.MAX_OPTION_DATA
        deliver(s, big)
        assert await s.readexactly(len(big)) == big
        # A client far ahead: reading pauses at LIMIT, the buffer stays
        # within LIMIT plus one read.
        deliver(s, b'x' * stream_mod.HandshakeBuffer.LIMIT)
        assert not s.transport.reading
        assert len(s._rx._buf) <= 2 * stream_mod.HandshakeBuffer.LIMIT
    run(body)
