"""The master's connections to chunk servers claim its term: over real
connections on 127.0.0.1 to a scripted server speaking the data protocol
(a current chunk server, a deposed master's view of one, and one of a
version before TERM)."""

import asyncio

import pytest

from cinder_ursa import exception
from cinder_ursa.master import chunkservers as cs_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio

KEY = b'k' * 32
VOL = '6a9c1b7e-3d2f-4c5a-8b9e-0f1a2b3c4d5e'


class Scripted:
    """Answers FENCE with OK; TERM as a chunk server at ``term`` would, or
    as one that predates TERM (``legacy``: an unknown opcode closes the
    connection)."""

    def __init__(self, term=0, legacy=False):
        self.term, self.legacy = term, legacy
        self.seen = []          # (opcode, claimed term of the connection)

    def handle(self, conn, frame):
        self.seen.append((frame.opcode, conn.master_term))
        if frame.opcode == codec.TERM:
            if self.legacy:
                raise exception.ProtocolError(reason='unknown opcode 0x1e')
            term = control.decode_term(frame.body)
            conn.master_term = term
            self.term = max(self.term, term)
            conn.send(codec.encode_ok(frame.opcode, frame.req_id,
                                      control.encode_u64(self.term)))
        else:
            conn.send(codec.encode_ok(frame.opcode, frame.req_id))


async def _serve(script):
    server = await asyncio.get_running_loop().create_server(
        lambda: aio.ServerConnection(KEY, script.handle), '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    return server, {'id': 1, 'address': '127.0.0.1', 'port': port}


def _fence(rid):
    return control.encode_fence(rid, VOL, 1)


def test_each_connection_claims_the_term_once_and_again_after_a_new_one():
    script = Scripted()

    async def go():
        server, s = await _serve(script)
        css = cs_mod.ChunkServers(KEY)
        try:
            css.new_term(3)
            await css.send(s, _fence)
            await css.send(s, _fence)
            css.new_term(4)     # elected again: connections start anew
            await css.send(s, _fence)
        finally:
            css.close()
            server.close()

    asyncio.run(go())
    assert script.seen == [(codec.TERM, None), (codec.FENCE, 3),
                           (codec.FENCE, 3), (codec.TERM, None),
                           (codec.FENCE, 4)]


def test_a_refused_term_deposes_the_master_and_sends_nothing():
    script = Scripted(term=9)
    deposed = []

    async def go():
        server, s = await _serve(script)
        css = cs_mod.ChunkServers(
            KEY, deposed=lambda e, newer=None: deposed.append((e, newer)))
        try:
            css.new_term(5)
            with pytest.raises(exception.NotLeader):
                await css.send(s, _fence)
        finally:
            css.close()
            server.close()

    asyncio.run(go())
    assert [op for op, _ in script.seen] == [codec.TERM]
    # Told which term the chunk server follows: its next election jumps
    # past it.
    assert [(type(e), newer) for e, newer in deposed] == [
        (exception.NotLeader, 9)]


def test_a_standby_commands_nobody():
    script = Scripted()

    def guard():
        raise exception.NotLeader(reason='a standby')

    async def go():
        server, s = await _serve(script)
        css = cs_mod.ChunkServers(KEY, guard=guard)
        try:
            with pytest.raises(exception.NotLeader):
                await css.send(s, _fence)
            # Not counted as the chunk server's failure either.
            with pytest.raises(exception.NotLeader):
                await css.broadcast([s], _fence)
        finally:
            css.close()
            server.close()

    asyncio.run(go())
    assert script.seen == []


def test_a_chunk_server_older_than_term_is_still_commanded():
    """During an upgrade (masters first) a chunk server that does not know
    TERM closes the connection on it: the master reconnects and sends its
    command unfenced, and warns."""
    script = Scripted(legacy=True)

    async def go():
        server, s = await _serve(script)
        css = cs_mod.ChunkServers(KEY)
        try:
            css.new_term(2)
            await css.send(s, _fence)
            await css.send(s, _fence)
        finally:
            css.close()
            server.close()

    asyncio.run(go())
    assert script.seen == [(codec.TERM, None), (codec.FENCE, None),
                           (codec.FENCE, None)]


@pytest.mark.parametrize('follows', [0, 7])
def test_a_master_without_election_claims_the_term_followed(follows):
    """A lone master claims a term too (the chunk servers take DELETE,
    SNAPSHOT, REVERT and REBUILD only on a connection that claimed one):
    0, or the term the chunk server follows (a cluster that once ran
    elections), never a newer one; and it is not deposed by it."""
    script = Scripted(term=follows)
    deposed = []

    async def go():
        server, s = await _serve(script)
        css = cs_mod.ChunkServers(
            KEY, deposed=lambda e, newer=None: deposed.append(e))
        try:
            await css.send(s, _fence)
            await css.send(s, _fence)
        finally:
            css.close()
            server.close()

    asyncio.run(go())
    claims = [(codec.TERM, None)] + ([(codec.TERM, 0)] if follows else [])
    assert script.seen == claims + [(codec.FENCE, follows)] * 2
    assert script.term == follows and deposed == []
