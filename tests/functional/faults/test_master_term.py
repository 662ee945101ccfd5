"""Chunk servers fence deposed masters: every master connection claims its
term (TERM) first, a chunk server keeps the newest term it has seen (on
disk), and refuses every request of a connection whose term is older,
even one it accepted before.  Clients that claim no term (gateways, other
chunk servers, the CLI) are never judged."""

import asyncio

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import server_id

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024


async def _call(conn, encode, *args):
    """Send one request; its reply's body, or the error it carries."""
    reply = await conn.call(encode, *args, timeout=10)
    codec.reply_status(reply.body)
    return reply.body


def test_chunk_servers_refuse_connections_of_an_older_term(make_cluster):
    cluster = make_cluster(3)
    master = cluster.client()
    vid = master.create_volume('v', 4 * MiB, chunk_size=MiB)['id']
    data = b'kept' * 1024
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, data)
            v.flush()
    sid = server_id(cluster, 0)
    cs = next(s for s in master.servers() if s['id'] == sid)

    async def connect():
        return await aio.PeerConnection.connect(cs['address'], cs['port'],
                                                cluster.key)

    async def scenario():
        old, new, plain = await connect(), await connect(), await connect()
        try:
            # A master of term 5 claims its connection and is obeyed.
            assert control.decode_count_ok(
                await _call(old, control.encode_term, 5)) == 5
            await _call(old, control.encode_inventory, vid)
            # A newer leader (term 6) announces itself on its own
            # connection: the chunk server answers with the newest term.
            assert control.decode_count_ok(
                await _call(new, control.encode_term, 6)) == 6
            # The deposed master's connection is refused from now on,
            # reads and deletions alike, and the data stays.
            with pytest.raises(exception.NotLeader, match='term 5 is over'):
                await _call(old, control.encode_inventory, vid)
            with pytest.raises(exception.NotLeader):
                await _call(old, control.encode_delete, vid)
            # Claiming the old term again, or on a new connection, does
            # not help: the reply names the newer term (the master learns
            # it was deposed, and by which term) and the connection's
            # requests are refused.
            assert control.decode_count_ok(
                await _call(old, control.encode_term, 5)) == 6
            again = await connect()
            try:
                assert control.decode_count_ok(
                    await _call(again, control.encode_term, 4)) == 6
                with pytest.raises(exception.NotLeader):
                    await _call(again, control.encode_delete, vid)
                # Terms above what the database can hold are refused.
                with pytest.raises(exception.ProtocolError):
                    await _call(again, control.encode_term, 2 ** 64 - 1)
            finally:
                again.close()
            # A connection that claims no term (a client) is not judged.
            held = control.decode_inventory_ok(
                await _call(plain, control.encode_inventory, vid))
            assert held, 'the replica is gone'
            await _call(new, control.encode_inventory, vid)
        finally:
            for c in (old, new, plain):
                c.close()

    asyncio.run(scenario())
    # The newest term is kept on disk: after a crash and restart the
    # deposed master is still refused.
    cluster.kill_chunkserver(0)
    cluster.start_chunkserver(0)

    async def after_restart():
        conn = await connect()
        try:
            assert control.decode_count_ok(
                await _call(conn, control.encode_term, 5)) == 6
            with pytest.raises(exception.NotLeader, match='term 6'):
                await _call(conn, control.encode_inventory, vid)
        finally:
            conn.close()

    asyncio.run(after_restart())
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            assert v.read(0, len(data)) == data
