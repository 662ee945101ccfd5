"""Chunk servers fence deposed masters: every master connection claims its
term (TERM) first, a chunk server keeps the newest term it has seen (on
disk), and refuses every request of a connection whose term is older.
A term newer than it knows is taken only once the masters confirm it
(their heartbeat reply names the leader's term): a holder of the cluster
key cannot depose the real master by claiming a huge term.  Clients that
claim no term (gateways, other chunk servers, the CLI) are never
judged."""

import asyncio
import os

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver.store.fencing import MASTER_TERM
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


def _learn(cluster, i, term):
    """Chunk server ``i`` has seen ``term``, as it would from a leader of
    that term (a TERM claim alone no longer makes it take a term the
    masters do not confirm): written into its data directory while it is
    stopped."""
    cluster.kill_chunkserver(i)
    with open(os.path.join(cluster.cs_dir(i), MASTER_TERM), 'w') as f:
        f.write('%d\n' % term)
    cluster.start_chunkserver(i)


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
    _learn(cluster, 0, 5)

    async def connect():
        return await aio.PeerConnection.connect(cs['address'], cs['port'],
                                                cluster.key)

    async def scenario():
        old, plain = await connect(), await connect()
        try:
            # A master of term 5 claims its connection and is obeyed.
            assert control.decode_count_ok(
                await _call(old, control.encode_term, 5)) == 5
            await _call(old, control.encode_inventory, vid)
            # Claiming an older term: the reply names the newer one (the
            # master learns it was deposed, and by which term) and the
            # connection's requests are refused.
            again = await connect()
            try:
                assert control.decode_count_ok(
                    await _call(again, control.encode_term, 4)) == 5
                with pytest.raises(exception.NotLeader,
                                   match='term 4 is over'):
                    await _call(again, control.encode_delete, vid)
                # Terms above what the database can hold are refused.
                with pytest.raises(exception.ProtocolError):
                    await _call(again, control.encode_term, 2 ** 64 - 1)
            finally:
                again.close()
            # A newer term that the masters do not confirm (this master
            # runs without election: it confirms none) is not taken.
            forged = await connect()
            try:
                for term in (6, control.MAX_TERM):
                    with pytest.raises(exception.Unavailable,
                                       match='not confirmed'):
                        await _call(forged, control.encode_term, term)
                # Once refused, the connection is a client's again (no
                # term claimed): the master's commands are not for it.
                with pytest.raises(exception.UrsaError,
                                   match='master'):
                    await _call(forged, control.encode_delete, vid)
            finally:
                forged.close()
            # The term-5 master keeps commanding this server.
            await _call(old, control.encode_inventory, vid)
            assert control.decode_count_ok(
                await _call(old, control.encode_term, 5)) == 5
            # A connection that claims no term (a client) is not judged.
            held = control.decode_inventory_ok(
                await _call(plain, control.encode_inventory, vid))
            assert held, 'the replica is gone'
        finally:
            for c in (old, plain):
                c.close()

    asyncio.run(scenario())
    # The real master (it follows the chunk server's term) still
    # commands it: a snapshot reaches every chunk server.
    assert master.create_snapshot('v', 's')['status'] == 'available'
    # A newer leader's term, once seen, is kept on disk: after a crash
    # and restart a master of the older term is refused.
    _learn(cluster, 0, 6)

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
