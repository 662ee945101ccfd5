"""Chunk servers hold a ticket connection to its ticket's scope, on every
request (see protocol/tickets.py and chunkserver/server.py).

Each test plays the master: it issues tickets with the cluster key for a
principal's key, and speaks the data protocol with the grant alone (no
cluster key), in raw frames, to the real chunk servers of a cluster:
reads and writes in scope are served; another volume, a write on a
read-only ticket, a master's or a replica's command, an expired,
altered or revoked ticket are refused, each with an error that says
what to do."""

import asyncio
import time
import uuid

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol import tickets
from cinder_ursa.transport import aio
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import module_cluster
from tests.fixtures.cluster import rest

MiB = 1024 * 1024
BS = 4096
PRINCIPAL_KEY = b'p' * 32
RW = tickets.RIGHT_READ | tickets.RIGHT_WRITE


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, 'tickets')


class Vol:
    """A volume with block 0 written (b'a'), leased to a gateway for an
    hour (its generation, what its tickets carry), and its chunk 0."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        client = cluster.client()
        self.id = client.create_volume(name, 2 * MiB, chunk_size=MiB)['id']
        with data_client(cluster) as cl:
            with cl.open_volume(name) as v:
                v.write(0, b'a' * BS)
                v.flush()
        status, body = rest(cluster, 'POST', '/volumes/%s/lease' % self.id,
                            {'holder': 'gw-%s' % name, 'ttl': 3600})
        assert status == 201, body
        self.generation = body['lease']['generation']
        self.chunk = client.chunk_map(self.id, 0, 1)['chunks'][0]
        self.primary = self.chunk['replicas'][0]

    def grant(self, generation=None, rights=RW, readable=(), ttl=600):
        reply = tickets.issue(
            self.cluster.key, PRINCIPAL_KEY, volume=self.id,
            generation=self.generation if generation is None else generation,
            expires=int(time.time()) + ttl, rights=rights, readable=readable,
            principal='cmp1', host='cmp1')
        return tickets.grant_from(reply, PRINCIPAL_KEY)

    def read(self, rid, offset=0, length=BS, volume=None, snap=0):
        vol = volume or self
        return codec.encode_read(rid, vol.id, 0, vol.chunk['epoch'], offset,
                                 length, snap)

    def write(self, rid, data, offset=0, generation=None, volume=None):
        vol = volume or self
        return codec.encode_write(
            rid, vol.id, 0, vol.chunk['epoch'],
            self.generation if generation is None else generation, offset,
            [r['id'] for r in vol.chunk['replicas']], data, min_replicas=1)


@pytest.fixture
def vol(cluster):
    return Vol(cluster, 'v-' + uuid.uuid4().hex[:12])


async def _connect(server, grant):
    return await aio.PeerConnection.connect(server['address'],
                                            server['port'], None, timeout=10,
                                            grant=grant)


async def _ask(conn, frame_fn):
    """One request on ``conn``; the reply's payload (raises its error)."""
    rid = aio.next_req_id()
    reply = await conn.request(rid, frame_fn(rid), 30)
    codec.reply_status(reply.body)
    return bytes(reply.body[2:])


def _run(server, grant, *frame_fns):
    """Connect with ``grant`` and send each request in turn: their
    payloads (the first error raised)."""
    async def go():
        conn = await _connect(server, grant)
        try:
            return [await _ask(conn, fn) for fn in frame_fns]
        finally:
            conn.close()
    return asyncio.run(go())


def test_reads_and_writes_in_scope_are_served(cluster, vol):
    grant = vol.grant()
    _, _, data = _run(
        vol.primary, grant,
        lambda rid: vol.write(rid, b'b' * BS, offset=BS),
        lambda rid: codec.encode_flush(rid, vol.id),
        lambda rid: vol.read(rid, 0, 2 * BS))
    assert data == b'a' * BS + b'b' * BS
    # Written through to every replica (forwarded with the primary's key).
    for server in vol.chunk['replicas']:
        assert _run(server, grant, lambda rid: vol.read(rid, BS))[0] == \
            b'b' * BS
    # A copy-up carries the ticket's generation like any write.
    _run(vol.primary, grant, lambda rid: codec.encode_write(
        rid, vol.id, 0, vol.chunk['epoch'], vol.generation, 2 * BS,
        [r['id'] for r in vol.chunk['replicas']], b'c' * BS,
        flags=codec.FLAG_IF_ABSENT))
    with pytest.raises(exception.NotAuthorized, match='generation 0 on a '
                       'ticket of generation %d' % vol.generation):
        _run(vol.primary, grant, lambda rid: codec.encode_write(
            rid, vol.id, 0, vol.chunk['epoch'], 0, 3 * BS,
            [r['id'] for r in vol.chunk['replicas']], b'd' * BS,
            flags=codec.FLAG_IF_ABSENT))


def test_other_volumes_are_refused_unless_the_ticket_names_them(cluster,
                                                                vol):
    other = Vol(cluster, 'other-' + uuid.uuid4().hex[:8])
    grant = vol.grant()
    with pytest.raises(exception.NotAuthorized,
                       match='WRITE of volume %s.*writable ticket' % other.id):
        _run(other.primary, grant,
             lambda rid: vol.write(rid, b'x' * BS, volume=other))
    with pytest.raises(exception.NotAuthorized,
                       match='FLUSH of volume %s' % other.id):
        _run(other.primary, grant,
             lambda rid: codec.encode_flush(rid, other.id))
    for fn in (lambda rid: vol.read(rid, volume=other),
               lambda rid: control.encode_repair(
                   rid, other.id, 0, other.chunk['epoch'], 0, 1)):
        with pytest.raises(exception.NotAuthorized,
                           match='does not name it'):
            _run(other.primary, grant, fn)
    # Named among the volumes it may read (a clone's parent): read as
    # the snapshot the clone was made from, not as another, not its
    # current data, and never written.
    seq = cluster.client().create_snapshot(other.name, 's1')['seq']
    parent = vol.grant(readable={other.id: seq})
    assert _run(other.primary, parent,
                lambda rid: vol.read(rid, volume=other, snap=seq)) == \
        [b'a' * BS]
    for snap in (0, seq + 1):
        with pytest.raises(exception.NotAuthorized,
                           match='only as the snapshot the clone'):
            _run(other.primary, parent,
                 lambda rid, snap=snap: vol.read(rid, volume=other,
                                                 snap=snap))
    with pytest.raises(exception.NotAuthorized, match='writable ticket'):
        _run(other.primary, parent,
             lambda rid: vol.write(rid, b'x' * BS, volume=other))
    assert _run(other.primary, other.grant(),
                lambda rid: vol.read(rid, volume=other)) == [b'a' * BS]


def test_a_parent_is_read_only_as_the_snapshot_named(cluster, vol):
    """A clone's ticket reads its parent as the snapshot it was made
    from: not the parent's current data, not an older snapshot (what
    the parent held before, maybe overwritten since on purpose), not
    the metadata of its current blocks (CHUNK_INFO: a fingerprint per
    block), and it sends the parent no REPAIR (a clone repairs its own
    chunks only)."""
    client = cluster.client()
    name = 'parent-' + uuid.uuid4().hex[:8]
    pid = client.create_volume(name, 2 * MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume(name) as v:
            v.write(0, b'secret!!' * (BS // 8))
            v.flush()
    old = client.create_snapshot(pid, 'old')
    with data_client(cluster) as cl:
        with cl.open_volume(name) as v:
            v.write(0, b'p' * BS)
            v.flush()
    made_from = client.create_snapshot(pid, 'base')
    chunk = client.chunk_map(pid, 0, 1)['chunks'][0]
    grant = vol.grant(readable={pid: made_from['seq']})

    def read(snap, flags=0):
        return lambda rid: codec.encode_read(rid, pid, 0, chunk['epoch'], 0,
                                             BS, snap, flags)
    assert _run(chunk['replicas'][0], grant, read(made_from['seq'])) == \
        [b'p' * BS]
    for fn in (read(0), read(old['seq']), read(old['seq'], codec.FLAG_RAW),
               read(made_from['seq'] + 1),
               lambda rid: control.encode_chunk_info(rid, pid, 0),
               lambda rid: control.encode_repair(rid, pid, 0, chunk['epoch'],
                                                 0, 1)):
        with pytest.raises(exception.NotAuthorized):
            _run(chunk['replicas'][0], grant, fn)


def test_a_read_only_ticket_reads_and_never_writes(cluster, vol):
    grant = vol.grant(generation=0, rights=tickets.RIGHT_READ)
    assert _run(vol.primary, grant, lambda rid: vol.read(rid)) == \
        [b'a' * BS]
    for fn in (lambda rid: vol.write(rid, b'x' * BS),
               lambda rid: vol.write(rid, b'x' * BS, generation=0),
               lambda rid: codec.encode_flush(rid, vol.id)):
        with pytest.raises(exception.NotAuthorized,
                           match='on a ticket to read volume'):
            _run(vol.primary, grant, fn)
    assert _run(vol.primary, grant, lambda rid: vol.read(rid)) == \
        [b'a' * BS]


def test_a_write_under_another_generation_is_refused(cluster, vol):
    with pytest.raises(exception.NotAuthorized,
                       match='WRITE of lease generation %d on a ticket of '
                             'generation %d' % (vol.generation + 1,
                                                vol.generation)):
        _run(vol.primary, vol.grant(), lambda rid: vol.write(
            rid, b'x' * BS, generation=vol.generation + 1))


@pytest.mark.parametrize('opname,frame_fn', [
    ('REPLICATE', lambda vol, rid: codec.encode_replicate(
        rid, codec.WriteRequest(vol.id, 0, vol.chunk['epoch'],
                                vol.generation, 0, 0, BS, [], b'x' * BS),
        vol.chunk['epoch'])),
    ('DELETE', lambda vol, rid: control.encode_delete(rid, vol.id)),
    ('INVENTORY', lambda vol, rid: control.encode_inventory(rid, vol.id)),
    ('CHUNK_INFO', lambda vol, rid: control.encode_chunk_info(rid, vol.id,
                                                              0)),
    ('TERM', lambda vol, rid: control.encode_term(rid, 1)),
    ('FENCE', lambda vol, rid: control.encode_fence(rid, vol.id,
                                                    vol.generation + 1)),
])
def test_a_ticket_sends_no_replica_or_master_command(cluster, vol, opname,
                                                     frame_fn):
    for server in vol.chunk['replicas']:
        with pytest.raises(exception.NotAuthorized,
                           match='%s is not taken on a ticket connection: '
                                 'only the cluster key' % opname):
            _run(server, vol.grant(), lambda rid: frame_fn(vol, rid))
    # Nothing happened: every copy still reads.
    for server in vol.chunk['replicas']:
        assert _run(server, vol.grant(), lambda rid: vol.read(rid)) == \
            [b'a' * BS]


def test_an_expired_ticket_is_refused_at_auth_and_on_its_connection(
        cluster, vol):
    with pytest.raises(exception.NotAuthorized, match='expired.*get a new '
                       'one from the master'):
        _run(vol.primary, vol.grant(ttl=-1), lambda rid: vol.read(rid))

    async def go():
        grant = vol.grant(ttl=2)
        conn = await _connect(vol.primary, grant)
        try:
            assert await _ask(conn, vol.read) == b'a' * BS
            await asyncio.sleep(grant.ticket.expires - time.time() + 0.2)
            with pytest.raises(exception.NotAuthorized, match='expired'):
                await _ask(conn, vol.read)
            with pytest.raises(exception.NotAuthorized, match='expired'):
                await _ask(conn, lambda rid: vol.write(rid, b'x' * BS))
            # Renewed on the same connection, it serves again.
            await conn.reticket(vol.grant(), 10)
            assert await _ask(conn, vol.read) == b'a' * BS
        finally:
            conn.close()
    asyncio.run(go())


def test_reticket_extends_an_open_connections_life(cluster, vol):
    async def go():
        short = vol.grant(ttl=2)
        conn = await _connect(vol.primary, short)
        left = await _connect(vol.primary, short)
        try:
            await conn.reticket(vol.grant(ttl=600), 10)
            await asyncio.sleep(short.ticket.expires - time.time() + 0.2)
            assert await _ask(conn, vol.read) == b'a' * BS
            # The connection not renewed is done.
            with pytest.raises(exception.NotAuthorized, match='expired'):
                await _ask(left, vol.read)
            # A renewal the master did not issue is refused; the
            # connection keeps the ticket it holds.
            forged = vol.grant(ttl=3600)
            forged = tickets.Grant(forged.raw, b'f' * 32, forged.ticket)
            with pytest.raises(exception.NotAuthorized,
                               match='bad renewed ticket'):
                await conn.reticket(forged, 10)
            assert await _ask(conn, vol.read) == b'a' * BS
        finally:
            conn.close()
            left.close()
    asyncio.run(go())


def test_altered_ticket_bytes_are_refused(cluster, vol):
    grant = vol.grant(generation=0, rights=tickets.RIGHT_READ)
    other = str(uuid.uuid4())
    for raw in (
            # Read-only made writable.
            grant.raw[:1] + bytes((grant.raw[1] | tickets.RIGHT_WRITE,))
            + grant.raw[2:],
            # Another volume.
            tickets.encode(other, 0, grant.ticket.expires,
                           tickets.RIGHT_READ, principal='cmp1',
                           host='cmp1', issued=grant.ticket.issued),
            # Living longer.
            tickets.encode(vol.id, 0, grant.ticket.expires + 3600,
                           tickets.RIGHT_READ, principal='cmp1',
                           host='cmp1', issued=grant.ticket.issued)):
        altered = tickets.Grant(raw, grant.session_key, tickets.decode(raw))
        with pytest.raises(exception.NotAuthorized, match='bad ticket'):
            _run(vol.primary, altered, lambda rid: vol.read(rid))


def test_a_newer_lease_generation_revokes_older_tickets(cluster, vol):
    writer = vol.grant()
    reader = vol.grant(generation=0, rights=tickets.RIGHT_READ)

    async def go():
        conn = await _connect(vol.primary, writer)
        try:
            assert await _ask(conn, vol.read) == b'a' * BS
            # Another holder takes the lease by force: the master fences
            # every chunk server before it answers.
            status, body = await asyncio.to_thread(
                rest, vol.cluster, 'POST', '/volumes/%s/lease' % vol.id,
                {'holder': 'thief', 'force': True})
            assert status == 201, body
            new = body['lease']['generation']
            assert new > vol.generation
            match = ('ticket of lease generation %d revoked: volume %s is '
                     'at %d' % (vol.generation, vol.id, new))
            for fn in (vol.read, lambda rid: vol.write(rid, b'x' * BS)):
                with pytest.raises(exception.NotAuthorized, match=match):
                    await _ask(conn, fn)
            return match
        finally:
            conn.close()
    match = asyncio.run(go())
    # On every replica, on a new connection too.
    for server in vol.chunk['replicas']:
        with pytest.raises(exception.NotAuthorized, match=match):
            _run(server, writer, lambda rid: vol.read(rid))
        # A read-only ticket is bound to no lease.
        assert _run(server, reader, lambda rid: vol.read(rid)) == \
            [b'a' * BS]


def test_ticket_on_a_cluster_key_connection_is_refused(cluster, vol):
    grant = vol.grant()

    async def go():
        conn = await aio.PeerConnection.connect(
            vol.primary['address'], vol.primary['port'], cluster.key)
        try:
            with pytest.raises(exception.NotAuthorized,
                               match='cluster key: it has no ticket'):
                await _ask(conn, lambda rid: codec.encode_ticket(
                    rid, b'\0' * codec.MAC_SIZE, grant.raw))
            assert await _ask(conn, vol.read) == b'a' * BS
        finally:
            conn.close()
    asyncio.run(go())


def test_an_oversized_auth_ticket_is_refused_before_authentication(
        cluster, vol):
    async def go():
        reader, writer = await asyncio.open_connection(
            vol.primary['address'], vol.primary['port'])
        try:
            hdr = await reader.readexactly(codec.HEADER_SIZE)
            await reader.readexactly(codec.parse_header(hdr)[3])
            # The header alone: none of the body is sent.
            writer.write(codec.header(codec.AUTH_TICKET, 0,
                                      codec.MAX_AUTH_TICKET_BODY + 1))
            data = await asyncio.wait_for(reader.read(65536), 10)
            frame = codec.FrameDecoder().feed(data)[0]
            with pytest.raises(exception.ProtocolError,
                               match='AUTH_TICKET body of %d bytes'
                                     % (codec.MAX_AUTH_TICKET_BODY + 1)):
                codec.reply_status(frame.body)
            assert await asyncio.wait_for(reader.read(), 10) == b''
        finally:
            writer.close()
    asyncio.run(go())
