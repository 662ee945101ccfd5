"""What a peer can make a data protocol server hold before and after it
authenticates, over real loopback connections: a header claiming 64 MiB
is refused from the header alone, a silent peer is closed at the
authentication deadline, connections past the caps are refused at once
(and said so in the log once, not once each), an idle connection is
closed after GOAWAY without its pooled client ever seeing an error."""

import asyncio
import hmac
import logging
import os
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio
from cinder_ursa.transport import buffers
from cinder_ursa.transport import limits as limits_mod

KEY = b'k' * 32
VOL = '00000000-0000-0000-0000-000000000001'


async def _serve(limits, made=None):
    """A ServerConnection server answering FLUSH with OK; ``made`` gets
    every connection."""
    loop = asyncio.get_running_loop()

    def handler(conn, frame):
        conn.send(codec.encode_ok(frame.opcode, frame.req_id))

    def factory():
        conn = aio.ServerConnection(KEY, handler, limits=limits)
        if made is not None:
            made.append(conn)
        return conn
    server = await loop.create_server(factory, '127.0.0.1', 0)
    return server, server.sockets[0].getsockname()[1]


async def _raw(port, host='127.0.0.1'):
    """A raw connection; returns (reader, writer, the CHALLENGE frame or
    the error frame the server sent instead)."""
    reader, writer = await asyncio.open_connection(
        '127.0.0.1', port, local_addr=(host, 0))
    hdr = await reader.readexactly(codec.HEADER_SIZE)
    n = codec.parse_header(hdr)[3]
    body = await reader.readexactly(n)
    return reader, writer, codec.FrameDecoder().feed(hdr + body)[0]


async def _answer(reader, timeout=5.0):
    """The error the server answered and whether it closed the
    connection (EOF) right after."""
    data = await asyncio.wait_for(reader.read(65536), timeout)
    frame = codec.FrameDecoder().feed(data)[0]
    with pytest.raises(exception.UrsaError) as ei:
        codec.reply_status(frame.body)
    rest = await asyncio.wait_for(reader.read(), timeout)
    return ei.value, rest == b''


@pytest.mark.parametrize('opcode,length,error', [
    (codec.AUTH, 64 * 1024 * 1024, exception.ProtocolError),
    (codec.READ, 64 * 1024 * 1024, exception.NotAuthorized),
    (codec.AUTH, 65, exception.ProtocolError),
])
def test_a_header_claiming_a_body_is_refused_before_any_of_it(
        monkeypatch, opcode, length, error):
    """Before authentication a header is judged alone: no buffer for its
    body is taken, the refusal comes without the body, and the
    connection's buffer stays at a few KiB."""
    taken = []
    real_get = buffers.POOL.get
    monkeypatch.setattr(buffers.POOL, 'get',
                        lambda n: taken.append(n) or real_get(n))

    async def go():
        made = []
        server, port = await _serve(limits_mod.ServerLimits(), made)
        reader, writer, _ = await _raw(port)
        assert made[0]._reader.size == limits_mod.PREAUTH_SCRATCH
        writer.write(codec.header(opcode, 1, length))
        err, closed = await _answer(reader)
        writer.close()
        server.close()
        return err, closed
    err, closed = asyncio.run(go())
    assert isinstance(err, error) and closed
    assert taken == []


def test_the_buffer_grows_once_authenticated():
    async def go():
        made = []
        server, port = await _serve(limits_mod.ServerLimits(), made)
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY)
        # A frame larger than the first buffer, after authentication.
        payload = os.urandom(100 * 1024)
        reply = await conn.request(5, codec.header(codec.FLUSH, 5,
                                                   len(payload)) + payload,
                                   5)
        codec.reply_status(reply.body)
        size = made[0]._reader.size
        conn.close()
        server.close()
        return size
    assert asyncio.run(go()) == buffers.ReceiveBuffer.SCRATCH


@pytest.mark.parametrize('send', [b'', b'URSA\x01\x02'])
def test_a_silent_or_slow_peer_is_closed_at_the_deadline(send):
    limits = limits_mod.ServerLimits(auth_timeout=0.5)

    async def go():
        server, port = await _serve(limits)
        reader, writer, _ = await _raw(port)
        writer.write(send)
        t0 = time.monotonic()
        err, closed = await _answer(reader)
        took = time.monotonic() - t0
        writer.close()
        server.close()
        return err, closed, took
    err, closed, took = asyncio.run(go())
    assert isinstance(err, exception.NotAuthorized) and closed
    assert 'no authentication within' in str(err)
    assert 0.3 < took < 3.0
    assert limits.total == limits.unauthenticated == 0


def test_at_the_caps_the_oldest_stranger_makes_room(caplog):
    """At a cap on connections not authenticated yet, the oldest of them
    (from the same address, for the per-host cap) is told it was evicted
    and closed, and the new one is served: strangers holding connections
    cannot lock a key holder out.  One log line says so for a burst.
    Past max_connections, with every connection authenticated, a new one
    is refused."""
    limits = limits_mod.ServerLimits(max_unauthenticated=4,
                                     max_unauthenticated_per_host=2,
                                     max_connections=6)

    async def evicted(reader):
        err, eof = await _answer(reader)
        assert isinstance(err, exception.Unavailable), err
        assert eof
        return str(err)

    async def go():
        nonlocal port
        server, port = await _serve(limits)
        held = [await _raw(port) for _ in range(2)]
        assert all(f.opcode == codec.CHALLENGE for _, _, f in held)
        # A third from the same address: the oldest of its two goes.
        held.append(await _raw(port))
        assert held[-1][2].opcode == codec.CHALLENGE
        msg = await evicted(held.pop(0)[0])
        assert 'max_unauthenticated_per_host' in msg
        # Twenty more: each evicts this address's oldest, never more
        # than two are held.
        for _ in range(20):
            held.append(await _raw(port))
            await evicted(held.pop(0)[0])
        assert limits.unauthenticated == 2
        # Another address fills the global cap; one more evicts the
        # oldest of all.
        held += [await _raw(port, '127.0.0.2') for _ in range(2)]
        held.append(await _raw(port, '127.0.0.3'))
        assert 'max_unauthenticated allows' not in await evicted(
            held.pop(0)[0])
        assert limits.unauthenticated == 4
        # The holder of the key gets in, however many strangers wait.
        ok = [await aio.PeerConnection.connect('127.0.0.1', port, KEY)
              for _ in range(3)]
        await asyncio.sleep(0.1)
        # 3 authenticated + strangers: at max_connections, strangers
        # make room; once all 6 are authenticated, a new one is refused.
        ok += [await aio.PeerConnection.connect('127.0.0.1', port, KEY)
               for _ in range(3)]
        assert limits.total == 6 and limits.unauthenticated == 0
        reader, writer, frame = await _raw(port, '127.0.0.4')
        assert frame.opcode == codec.AUTH | codec.REPLY
        with pytest.raises(exception.Unavailable, match='max_connections'):
            codec.reply_status(frame.body)
        writer.close()
        for c in ok:
            c.close()
        for _, w, _ in held:
            w.close()
        await asyncio.sleep(0.2)
        server.close()

    port = None
    with caplog.at_level(logging.WARNING, logger=limits_mod.__name__):
        asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records
             if 'evicted an unauthenticated' in r.getMessage()]
    assert len(lines) == 1, lines       # a burst, one line
    assert limits.evicted >= 22 and limits.refused == 1
    assert limits.total == limits.unauthenticated == 0


def test_a_burst_of_refusals_is_logged_once_then_counted(caplog):
    now = [0.0]
    log = limits_mod.RateLimitedLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=limits_mod.__name__):
        for i in range(100):
            log.warning('k', 'refused %d', i)
        now[0] = 10.5
        log.warning('k', 'refused %d', 100)
        log.warning('other', 'another kind')
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ['refused 0',
                    'refused 100 (and 99 more like it in the last 10 s)',
                    'another kind']


def test_an_idle_pooled_connection_is_replaced_without_an_error(
        monkeypatch):
    """The server tells an idle connection GOAWAY before it closes it:
    the pool forgets it, the client closes it, and the next request goes
    on a new connection, without an error.  A connection in use is never
    closed."""
    monkeypatch.setattr(aio, 'GOAWAY_GRACE', 0.4)
    limits = limits_mod.ServerLimits(idle_timeout=0.4)

    async def go():
        made = []
        server, port = await _serve(limits, made)
        pool = aio.ConnectionPool(KEY)
        first = await pool.get('127.0.0.1', port)
        # Busy for 3 idle timeouts: kept.
        for _ in range(12):
            await first.call(codec.encode_flush, VOL, timeout=5)
            await asyncio.sleep(0.1)
        assert not first.closed and made[0].closed is False
        await asyncio.sleep(1.2)
        assert first.going_away and first.closed
        conn = await pool.get('127.0.0.1', port)
        assert conn is not first
        codec.reply_status((await conn.call(codec.encode_flush, VOL,
                                            timeout=5)).body)
        await asyncio.sleep(0.2)
        total = limits.total
        pool.close()
        server.close()
        return total
    assert asyncio.run(go()) == 1


def test_a_request_sent_behind_goaway_is_still_answered(monkeypatch):
    """A client that did not read GOAWAY yet (or does not know it) and
    sends a request is served: the server closes only a connection idle
    through the grace after its GOAWAY."""
    monkeypatch.setattr(aio, 'GOAWAY_GRACE', 0.8)
    limits = limits_mod.ServerLimits(idle_timeout=0.4)

    class Deaf(aio.PeerConnection):
        def _going_away(self):
            self.told = True        # as a client older than GOAWAY

    async def go():
        server, port = await _serve(limits)
        conn = await Deaf.connect('127.0.0.1', port, KEY)
        conn.told = False
        t0 = time.monotonic()
        while not conn.told:
            await asyncio.sleep(0.05)
        told = time.monotonic() - t0
        reply = await conn.call(codec.encode_flush, VOL, timeout=5)
        codec.reply_status(reply.body)
        # Served, and idle again: closed after the idle time and grace.
        while not conn.closed and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        closed = conn.closed
        server.close()
        return told, closed
    told, closed = asyncio.run(go())
    assert 0.3 < told < 2.0
    assert closed


def test_both_sides_compare_macs_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, 'compare_digest',
                        lambda a, b: calls.append(1) or real(a, b))

    async def go():
        server, port = await _serve(limits_mod.ServerLimits())
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY)
        conn.close()
        server.close()
    asyncio.run(go())
    assert len(calls) == 2


def test_the_buffer_pool_keeps_a_bounded_amount():
    pool = buffers.BufferPool()
    held = [pool.get(8 * 1024 * 1024) for _ in range(40)]
    held += [pool.get(4 * 1024 * 1024) for _ in range(40)]
    assert pool.kept <= pool.KEEP_BYTES
    del held
    again = pool.get(8 * 1024 * 1024)
    assert len(again) == 8 * 1024 * 1024
