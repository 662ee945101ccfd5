"""Authentication with a ticket over real loopback connections (see
protocol/tickets.py): the client proves it holds the session key of a
ticket the cluster's master issued, the server proves it holds the
cluster key, and anything else (a wrong session key, altered ticket
bytes, an expired ticket, a server that takes no ticket) is refused
before the handler sees a frame.  TICKET renews a connection's ticket in
place, proved over that connection's nonces; a pool moves all its
connections to a renewed grant."""

import asyncio
import time
import uuid

import pytest

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import tickets
from cinder_ursa.transport import aio

KEY = b'k' * 32
HOST_KEY = b'h' * 32
VOL = str(uuid.uuid4())


def _grant(key=KEY, principal_key=HOST_KEY, expires=None, **fields):
    fields = {'volume': VOL, 'generation': 3, 'rights': tickets.RIGHT_READ,
              'principal': 'cmp1', 'host': 'cmp1', **fields}
    reply = tickets.issue(key, principal_key,
                          expires=expires or time.time() + 600, **fields)
    return tickets.grant_from(reply, principal_key)


async def _serve(made, key=KEY, accept_tickets=True):
    """A server answering every request with OK (the handler sees no
    TICKET: the transport answers it); ``made`` gets every connection."""
    loop = asyncio.get_running_loop()
    seen = []

    def handler(conn, frame):
        seen.append(frame.opcode)
        conn.send(codec.encode_ok(frame.opcode, frame.req_id))

    def factory():
        conn = aio.ServerConnection(key, handler,
                                      accept_tickets=accept_tickets)
        made.append(conn)
        return conn
    server = await loop.create_server(factory, '127.0.0.1', 0)
    return server, server.sockets[0].getsockname()[1], seen


async def _flush(conn):
    reply = await conn.call(codec.encode_flush, VOL, timeout=5)
    codec.reply_status(reply.body)


def test_a_ticket_authenticates_both_ways_and_is_the_connections():
    grant = _grant()

    async def go():
        made = []
        server, port, seen = await _serve(made)
        conn = await aio.PeerConnection.connect('127.0.0.1', port, None,
                                                grant=grant)
        await _flush(conn)
        # A cluster-key connection to the same server has no ticket.
        plain = await aio.PeerConnection.connect('127.0.0.1', port, KEY)
        await _flush(plain)
        conn.close()
        plain.close()
        server.close()
        return made, seen
    made, seen = asyncio.run(go())
    assert made[0].ticket == grant.ticket
    assert made[1].ticket is None
    assert seen == [codec.FLUSH, codec.FLUSH]


@pytest.mark.parametrize('case,match', [
    ('wrong session key', 'bad ticket'),
    ('altered ticket', 'bad ticket'),
    ('other cluster', 'bad ticket'),
    ('expired', 'expired'),
    ('no tickets here', 'takes no ticket'),
])
def test_a_ticket_not_proved_or_expired_is_refused(case, match):
    grant = _grant(expires=time.time() - 1 if case == 'expired' else None)
    server_key = KEY
    accept = True
    if case == 'wrong session key':
        # The ticket as seen on the wire, unwrapped with another key.
        grant = tickets.Grant(grant.raw, b'x' * 32, grant.ticket)
    elif case == 'altered ticket':
        # Read-only made writable: its session key is no longer the one
        # the server derives from it.
        raw = bytearray(grant.raw)
        raw[1] |= tickets.RIGHT_WRITE
        grant = tickets.Grant(bytes(raw), grant.session_key,
                              tickets.decode(bytes(raw)))
    elif case == 'other cluster':
        server_key = b'o' * 32
    elif case == 'no tickets here':
        accept = False

    async def go():
        made = []
        server, port, seen = await _serve(made, server_key, accept)
        try:
            with pytest.raises(exception.NotAuthorized, match=match):
                await aio.PeerConnection.connect('127.0.0.1', port, None,
                                                 timeout=5, grant=grant)
        finally:
            server.close()
        return made, seen
    made, seen = asyncio.run(go())
    assert not made[0].authed and made[0].ticket is None and seen == []


def test_the_client_refuses_a_server_that_cannot_derive_the_session_key():
    """A server that does not hold the cluster key (here: one that takes
    any AUTH_TICKET and answers with a MAC under the cluster key it
    guesses) is not believed."""
    grant = _grant()

    async def impostor(reader, writer):
        nonce = b'n' * codec.NONCE_SIZE
        writer.write(codec.encode_challenge(nonce))
        hdr = await reader.readexactly(codec.HEADER_SIZE)
        body = await reader.readexactly(codec.parse_header(hdr)[3])
        client_nonce = codec.decode_auth_ticket(body)[0]
        writer.write(codec.encode_auth_ok(
            codec.server_mac(b'g' * 32, nonce, client_nonce),
            codec.CAP_PING))
        await reader.read()
        writer.close()

    async def go():
        server = await asyncio.start_server(impostor, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(exception.NotAuthorized,
                               match='failed to prove'):
                await aio.PeerConnection.connect('127.0.0.1', port, None,
                                                 timeout=5, grant=grant)
        finally:
            server.close()
    asyncio.run(go())


def test_ticket_renews_a_connections_ticket_in_place():
    first = _grant(expires=time.time() + 60)
    renewed = _grant(expires=time.time() + 3600)

    async def go():
        made = []
        server, port, seen = await _serve(made)
        conn = await aio.PeerConnection.connect('127.0.0.1', port, None,
                                                grant=first)
        await conn.reticket(renewed, 5)
        await _flush(conn)
        conn.close()
        server.close()
        return conn, made, seen
    conn, made, seen = asyncio.run(go())
    assert conn.grant is renewed
    assert made[0].ticket == renewed.ticket
    assert seen == [codec.FLUSH]


@pytest.mark.parametrize('case,match', [
    ('wrong session key', 'bad renewed ticket'),
    ('expired', 'expired'),
    ('replayed', 'bad renewed ticket'),
])
def test_a_renewal_not_proved_or_expired_is_refused(case, match):
    """The connection keeps its ticket, and serves on."""
    first = _grant()
    renewed = _grant(expires=time.time() - 1 if case == 'expired'
                     else time.time() + 3600, generation=4)
    if case == 'wrong session key':
        renewed = tickets.Grant(renewed.raw, b'x' * 32, renewed.ticket)

    async def go():
        made = []
        server, port, _ = await _serve(made)
        conn = await aio.PeerConnection.connect('127.0.0.1', port, None,
                                                grant=first)
        try:
            if case == 'replayed':
                # A TICKET proved over another connection's nonces.
                other = await aio.PeerConnection.connect(
                    '127.0.0.1', port, None, grant=first)
                mac = tickets.reticket_mac(renewed.session_key,
                                           other._server_nonce,
                                           other._client_nonce)
                other.close()
                reply = await conn.request(9, codec.encode_ticket(
                    9, mac, renewed.raw), 5)
                with pytest.raises(exception.NotAuthorized, match=match):
                    codec.reply_status(reply.body)
            else:
                with pytest.raises(exception.NotAuthorized, match=match):
                    await conn.reticket(renewed, 5)
            await _flush(conn)
        finally:
            conn.close()
            server.close()
        return conn, made
    conn, made = asyncio.run(go())
    assert conn.grant is first
    assert made[0].ticket == first.ticket


def test_a_cluster_key_connection_takes_no_ticket():
    async def go():
        made = []
        server, port, _ = await _serve(made)
        conn = await aio.PeerConnection.connect('127.0.0.1', port, KEY)
        try:
            with pytest.raises(exception.InvalidArgument,
                               match='cluster key'):
                await conn.reticket(_grant(), 5)
            # Nor does the server let TICKET renew anything on it.
            with pytest.raises(exception.NotAuthorized, match='cluster key'):
                made[0].reticket(codec.Frame(codec.TICKET, 0, 1, memoryview(
                    b'\0' * 64)))
        finally:
            conn.close()
            server.close()
    asyncio.run(go())


def test_a_pool_connects_with_its_grant_and_regrant_moves_its_connections():
    first = _grant()
    renewed = _grant(generation=4)
    stale = _grant(expires=time.time() - 1)

    async def go():
        made = []
        server, port, _ = await _serve(made)
        pool = aio.ConnectionPool(None, connect_timeout=5, grant=first)
        try:
            conn = await pool.get('127.0.0.1', port)
            await pool.regrant(renewed)
            # The same connection, on the renewed ticket.
            assert await pool.get('127.0.0.1', port) is conn
            assert conn.grant is renewed and made[0].ticket == renewed.ticket
            await _flush(conn)
            # One that refuses the renewal is closed and forgotten; the
            # next connection presents the pool's grant.
            await pool.regrant(stale)
            assert conn.closed and pool.connected('127.0.0.1', port) is None
            assert pool.grant is stale
            pool.grant = renewed
            again = await pool.get('127.0.0.1', port)
            await _flush(again)
            assert made[1].ticket == renewed.ticket
        finally:
            pool.close()
            server.close()
    asyncio.run(go())


def test_a_connection_made_during_a_regrant_takes_the_new_grant():
    first = _grant()
    renewed = _grant(generation=4)

    async def go():
        made = []
        server, port, _ = await _serve(made)
        pool = aio.ConnectionPool(None, connect_timeout=5, grant=first)
        try:
            getting = asyncio.ensure_future(pool.get('127.0.0.1', port))
            await asyncio.sleep(0)      # connecting with ``first``
            await pool.regrant(renewed)
            conn = await getting
            await _flush(conn)
            assert conn.grant is renewed
            assert made[0].ticket == renewed.ticket
        finally:
            pool.close()
            server.close()
    asyncio.run(go())


def test_a_connection_that_refuses_a_regrant_finishes_its_requests():
    """A regrant that fails on a connection (refused, or timed out behind
    a busy link) retires it: no new request goes to it, but those in
    flight, sent under the ticket it still holds, get their replies (a
    write failed by our own close would be taken for its server's
    failure, and that replica dropped)."""
    stale = _grant(expires=time.time() - 1)

    async def go():
        loop = asyncio.get_running_loop()
        held = []

        def handler(conn, frame):
            held.append((conn, frame))      # answered later

        server = await loop.create_server(
            lambda: aio.ServerConnection(KEY, handler, accept_tickets=True),
            '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        pool = aio.ConnectionPool(None, connect_timeout=5, grant=_grant())
        try:
            conn = await pool.get('127.0.0.1', port)
            flushing = asyncio.ensure_future(_flush(conn))
            while not held:
                await asyncio.sleep(0.01)
            await pool.regrant(stale)
            assert pool.connected('127.0.0.1', port) is None
            server_conn, frame = held[0]
            server_conn.send(codec.encode_ok(frame.opcode, frame.req_id))
            await flushing
            for _ in range(100):
                if conn.closed:
                    break
                await asyncio.sleep(0.05)
            assert conn.closed
        finally:
            pool.close()
            server.close()
    asyncio.run(go())


def test_a_rotation_accepts_the_other_key_and_its_tickets():
    """[ursa] accepted_cluster_key_files: a server that uses one cluster
    key and accepts another takes peers and tickets of both (so the key
    can be changed one process at a time), and nothing of a third."""
    new = b'n' * 32

    async def go(accepted):
        auth.set_accepted_keys(accepted)
        made = []
        server, port, _ = await _serve(made, key=KEY)
        try:
            for key in (KEY, new):
                conn = await aio.PeerConnection.connect('127.0.0.1', port,
                                                        key)
                await _flush(conn)
                conn.close()
                conn = await aio.PeerConnection.connect(
                    '127.0.0.1', port, None, grant=_grant(key=key))
                await _flush(conn)
                # Renewed with a ticket under the other key.
                other = KEY if key == new else new
                await conn.reticket(_grant(key=other), 5)
                await _flush(conn)
                conn.close()
            with pytest.raises(exception.NotAuthorized, match='cluster key'):
                await aio.PeerConnection.connect('127.0.0.1', port,
                                                 b'x' * 32)
            with pytest.raises(exception.NotAuthorized, match='bad ticket'):
                await aio.PeerConnection.connect(
                    '127.0.0.1', port, None, grant=_grant(key=b'x' * 32))
        finally:
            server.close()
            auth.set_accepted_keys(())
    asyncio.run(go([new]))
    # Without it, the other key is refused.
    with pytest.raises(exception.NotAuthorized):
        asyncio.run(go([]))
