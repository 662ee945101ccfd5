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


def _rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 >> 20


def test_write_headers_alone_cannot_make_buffers_beyond_the_budget():
    """A WRITE's payload buffer is made (and filled with zeros: resident)
    as its 28-byte header arrives.  32 connections sending one header of
    a 32 MiB WRITE each made 1032 MiB resident against a 64 MiB budget;
    now a buffer counts in the budget from its header on, and a stream
    without room stops reading until a request is handed over."""
    from cinder_ursa.nbd import server as server_mod

    async def main():
        budget = server_mod.InflightBudget(64 << 20)
        handed = []
        streams = []
        done = []
        base = _rss_mib()
        for i in range(32):
            s = stream_mod.NbdStream(None)
            s.transport = Transport()
            s._loop = asyncio.get_running_loop()
            s.budget = budget
            done.append(s.serve_requests(
                lambda flags, cmd, handle, *rest: handed.append(handle)))
            deliver(s, request(p.CMD_WRITE, i, p.MAX_REQUEST))
            streams.append(s)
        grown = _rss_mib() - base
        print("RSS +%d MiB" % grown)
        assert grown < 128
        assert budget.used == 64 << 20
        stalled = [s for s in streams if not s.transport.reading]
        assert len(stalled) == 30
        # The first WRITE arrives whole and is handed over: its buffer's
        # share goes back, and one stalled stream gets a buffer.
        deliver(streams[0], b'x' * p.MAX_REQUEST)
        assert handed == [0]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert budget.used == 64 << 20
        assert len([s for s in streams if not s.transport.reading]) == 29
        # A connection lost gives back what its buffer counted.
        streams[1].connection_lost(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert budget.used == 64 << 20
        assert sum(s._reserved > 0 for s in streams) == 2
        waiting = [s for s in streams[2:] if not s.transport.reading]
        assert len(waiting) == 28 and all(s._stalled for s in waiting)
        for s in streams:
            s.connection_lost(None)
        assert budget.used == 0 and not budget.waiting
        await asyncio.gather(*done, return_exceptions=True)
    asyncio.run(main())


def test_a_stalled_stream_admitted_on_another_path_reads_again():
    """A stream waiting for the budget is parsed again when the server
    lets a hold go, and its header admitted then: it must read again
    (it stayed paused, its wake-up spent, when nothing else was left in
    flight to wake it)."""
    from cinder_ursa.nbd import server as server_mod

    async def main():
        budget = server_mod.InflightBudget(64 << 20)
        budget.take(48 << 20)
        s = stream_mod.NbdStream(None)
        s.transport = Transport()
        s._loop = asyncio.get_running_loop()
        s.budget = budget
        done = s.serve_requests(lambda *args: None)
        deliver(s, request(p.CMD_WRITE, 1, p.MAX_REQUEST))
        assert s._stalled and not s.transport.reading
        budget.used = 0     # given back without waking anyone
        s.hold(True)
        s.hold(False)
        assert not s._stalled and s.transport.reading
        assert budget.used == p.MAX_REQUEST
        s.connection_lost(None)
        assert budget.used == 0
        await asyncio.gather(done, return_exceptions=True)
    asyncio.run(main())


class _Abortable(Transport):
    aborted = False

    def abort(self):
        self.aborted = True

    def get_extra_info(self, name):
        return ('192.0.2.1', 1234) if name == 'peername' else None


def _budgeted_stream(budget, handed):
    s = stream_mod.NbdStream(None)
    s.transport = _Abortable()
    s._loop = asyncio.get_running_loop()
    s.budget = budget
    done = s.serve_requests(
        lambda flags, cmd, handle, *rest: handed.append(handle))
    return s, done


def test_a_write_whose_data_never_comes_is_dropped(monkeypatch, caplog):
    """A client that sends a WRITE's header and then its data slowly, or
    never, kept that WRITE's share of the budget for good (a few such
    headers fill it: every session of the gateway waits)."""
    monkeypatch.setattr(stream_mod, 'PAYLOAD_TIMEOUT', 0.05)
    from cinder_ursa.nbd import server as server_mod

    async def main():
        budget = server_mod.InflightBudget(64 << 20)
        s, done = _budgeted_stream(budget, [])
        deliver(s, request(p.CMD_WRITE, 1, p.MAX_REQUEST) + b'x' * 1000)
        assert budget.used == p.MAX_REQUEST
        await asyncio.sleep(0.03)
        deliver(s, b'x' * 1000)   # trickling does not extend it
        await asyncio.sleep(0.05)
        assert s.transport.aborted and budget.used == 0
        assert 'did not arrive within' in caplog.text
        s.connection_lost(None)
        await asyncio.gather(done, return_exceptions=True)
    asyncio.run(main())


def test_the_data_clock_stops_while_the_gateway_holds_the_client(
        monkeypatch):
    # Long enough that a loaded machine's delays do not reach it.
    monkeypatch.setattr(stream_mod, 'PAYLOAD_TIMEOUT', 0.5)
    from cinder_ursa.nbd import server as server_mod

    async def main():
        budget = server_mod.InflightBudget(64 << 20)
        handed = []
        s, done = _budgeted_stream(budget, handed)
        deliver(s, request(p.CMD_WRITE, 1, p.MAX_REQUEST) + b'x' * 1000)
        await asyncio.sleep(0.05)
        s.hold(True)              # not reading: the client cannot send
        await asyncio.sleep(1.0)
        s.hold(False)
        assert not s.transport.aborted
        deliver(s, b'x' * (p.MAX_REQUEST - 1000))
        assert handed == [1]
        await asyncio.sleep(0.6)  # its clock stopped with it
        assert not s.transport.aborted
        s.connection_lost(None)
        await asyncio.gather(done, return_exceptions=True)
    asyncio.run(main())


def test_a_client_not_reading_its_replies_is_on_the_data_clock(
        monkeypatch):
    """Not reading the replies pauses the gateway's reading too: that
    time is the client's, or a WRITE's share of the budget could be
    kept for good that way."""
    monkeypatch.setattr(stream_mod, 'PAYLOAD_TIMEOUT', 0.05)
    from cinder_ursa.nbd import server as server_mod

    async def main():
        budget = server_mod.InflightBudget(64 << 20)
        s, done = _budgeted_stream(budget, [])
        deliver(s, request(p.CMD_WRITE, 1, p.MAX_REQUEST) + b'x' * 1000)
        s.pause_writing()
        assert not s.transport.reading
        await asyncio.sleep(0.1)
        assert s.transport.aborted and budget.used == 0
        s.connection_lost(None)
        await asyncio.gather(done, return_exceptions=True)
    asyncio.run(main())


def test_a_client_that_reads_no_reply_is_dropped(monkeypatch, caplog):
    """A client that sends READs and reads nothing kept what the gateway
    queued for it (a quarter of the shared budget) for good: after
    SEND_TIMEOUT with its replies unread it is dropped, and one that
    reads them meanwhile is not."""
    monkeypatch.setattr(stream_mod, 'SEND_TIMEOUT', 1.0)
    from cinder_ursa.nbd import server as server_mod

    async def main():
        budget = server_mod.InflightBudget(64 << 20)
        s, done = _budgeted_stream(budget, [])
        s.pause_writing()
        await asyncio.sleep(0.6)
        s.resume_writing()            # it read: the clock starts over
        s.pause_writing()
        await asyncio.sleep(0.6)
        assert not s.transport.aborted
        await asyncio.sleep(0.8)
        assert s.transport.aborted
        assert 'read none of its replies' in caplog.text
        s.connection_lost(None)
        await asyncio.gather(done, return_exceptions=True)
    asyncio.run(main())
