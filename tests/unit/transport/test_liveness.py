"""PeerConnection's liveness watchdog over real loopback connections: a
peer whose requests are slow but which answers PING keeps its
connection for as long as the request timeout allows; a peer that stops
reading (what SIGSTOP or a dead link looks like from here) is given up
after about ``liveness`` seconds, with every pending request failed."""

import asyncio
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio

KEY = b'k' * 32


async def _serve(behaviour):
    """A ServerConnection on 127.0.0.1 whose handler answers every
    request after ``behaviour`` seconds, or, for 'hang', stops reading
    at the first request and never answers (the PINGs behind it are
    never read).  Returns (server, port, the frames the handler saw)."""
    loop = asyncio.get_running_loop()
    seen = []

    def handler(conn, frame):
        seen.append(frame.opcode)
        if behaviour == 'hang':
            conn.transport.pause_reading()
            return
        loop.call_later(behaviour, conn.send,
                        codec.encode_ok(frame.opcode, frame.req_id))

    # Kept: a connection whose reading is paused and that has nothing to
    # write is referenced by nothing else, and the garbage collector
    # would close it (a reset) under the test.
    conns = []

    def factory():
        conns.append(aio.ServerConnection(KEY, handler))
        return conns[-1]

    server = await loop.create_server(factory, '127.0.0.1', 0)
    server.conns = conns
    return server, server.sockets[0].getsockname()[1], seen


def _run(behaviour, liveness, timeout):
    """One FLUSH request; (the reply or the error, seconds it took,
    whether the connection was closed, the opcodes the server handled)."""
    async def go():
        server, port, seen = await _serve(behaviour)
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY,
                                                liveness=liveness)
        t0 = time.monotonic()
        try:
            result = await conn.call(codec.encode_flush,
                                     '00000000-0000-0000-0000-000000000001',
                                     timeout=timeout)
        except exception.UrsaError as e:
            result = e
        took = time.monotonic() - t0
        closed = conn.closed
        conn.close()
        server.close()
        return result, took, closed, seen
    return asyncio.run(go())


def test_a_slow_peer_that_answers_pings_keeps_its_connection():
    result, took, closed, seen = _run(2.0, liveness=0.4, timeout=10)
    assert isinstance(result, codec.Frame), result
    codec.reply_status(result.body)
    assert took >= 2.0
    assert not closed
    # PINGs are the transport's: the handler saw the request alone.
    assert seen == [codec.FLUSH]


def test_a_peer_that_stops_reading_is_given_up_after_the_liveness_time():
    result, took, closed, _ = _run('hang', liveness=0.4, timeout=30)
    assert isinstance(result, exception.UrsaTimeout), result
    assert 0.4 <= took < 5, took
    assert closed


def test_without_liveness_a_hung_peer_waits_for_the_request_timeout():
    result, took, closed, _ = _run('hang', liveness=0, timeout=1.5)
    assert isinstance(result, exception.UrsaTimeout), result
    assert took >= 1.5
    assert not closed


def test_every_pending_request_fails_and_new_ones_are_refused():
    async def go():
        server, port, _ = await _serve('hang')
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY,
                                                liveness=0.4)
        calls = [asyncio.ensure_future(conn.call(
            codec.encode_flush, '00000000-0000-0000-0000-00000000000%d' % i,
            timeout=30)) for i in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        with pytest.raises(exception.UrsaTimeout):
            conn.send(aio.next_req_id(), codec.encode_ping(1))
        server.close()
        return results
    results = asyncio.run(go())
    assert all(isinstance(r, exception.UrsaTimeout) for r in results)


def test_an_idle_connection_is_never_given_up():
    async def go():
        server, port, _ = await _serve(0)
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY,
                                                liveness=0.2)
        await conn.call(codec.encode_flush,
                        '00000000-0000-0000-0000-000000000001', timeout=5)
        # Nothing pending: no watchdog, however long it stays quiet.
        await asyncio.sleep(1.0)
        assert conn._watch is None and not conn.closed
        reply = await conn.call(codec.encode_flush,
                                '00000000-0000-0000-0000-000000000002',
                                timeout=5)
        conn.close()
        server.close()
        return reply
    codec.reply_status(asyncio.run(go()).body)


def test_a_hung_peer_is_given_up_with_megabytes_queued_for_it():
    # The peer stops reading while 16 MiB are on their way: our write
    # buffer holds most of it and grows by each ping, which must not pass
    # for progress.
    async def go():
        server, port, _ = await _serve('hang')
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY,
                                                liveness=0.4)
        first = conn.send(aio.next_req_id(), codec.encode_flush(
            aio.next_req_id(), '00000000-0000-0000-0000-000000000001'))
        rid = aio.next_req_id()
        big = codec.header(codec.WRITE, rid, 16 << 20) + bytes(16 << 20)
        t0 = time.monotonic()
        try:
            await conn.request(rid, [big], timeout=60)
        except exception.UrsaError as e:
            result = e
        took = time.monotonic() - t0
        with pytest.raises(exception.UrsaTimeout):
            await first
        server.close()
        return result, took
    result, took = asyncio.run(go())
    assert isinstance(result, exception.UrsaTimeout), result
    assert took < 5, took


def test_without_liveness_a_request_stuck_behind_a_full_buffer_times_out():
    async def go():
        server, port, _ = await _serve('hang')
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY,
                                                liveness=0)
        conn.send(aio.next_req_id(), codec.encode_flush(
            aio.next_req_id(), '00000000-0000-0000-0000-000000000001'))
        rid = aio.next_req_id()
        big = codec.header(codec.WRITE, rid, 32 << 20) + bytes(32 << 20)
        t0 = time.monotonic()
        with pytest.raises(exception.UrsaTimeout):
            await asyncio.wait_for(conn.request(rid, [big], timeout=1.0),
                                   20)
        server.close()
        return time.monotonic() - t0
    assert asyncio.run(go()) < 5


def test_a_server_that_does_not_announce_ping_is_never_pinged(monkeypatch):
    # A server of the release before PING: AUTH_OK without CAP_PING, and
    # PING an unknown opcode that closes the connection.
    real = codec.encode_auth_ok
    monkeypatch.setattr(codec, 'encode_auth_ok',
                        lambda mac, flags=0: real(mac))
    monkeypatch.setattr(codec, 'PING', -1)  # the transport does not know it

    def old_handler(conn, frame):
        if frame.opcode == 0x1F:
            raise exception.ProtocolError(reason='unknown opcode 0x1f')
        asyncio.get_running_loop().call_later(
            1.5, conn.send, codec.encode_ok(frame.opcode, frame.req_id))

    async def go():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: aio.ServerConnection(KEY, old_handler), '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY,
                                                liveness=0.4)
        reply = await conn.call(codec.encode_flush,
                                '00000000-0000-0000-0000-000000000001',
                                timeout=10)
        conn.close()
        server.close()
        return reply
    codec.reply_status(asyncio.run(go()).body)
