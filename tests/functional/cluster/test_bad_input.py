"""Garbage on every port gets an error or a closed connection; the
servers keep serving everybody else."""

import json
import os
import socket
import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import rest
from tests.fixtures.processes import growth_when_flooded

MiB = 1024 * 1024


def cs_port(cluster, i=0):
    with open(os.path.join(cluster.cs_dir(i), 'endpoint.json')) as f:
        return json.load(f)['port']


def raw_exchange(port, payload, read_challenge=True):
    """Send bytes to a chunk server; return what it answers until EOF."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        if read_challenge:
            hdr = s.recv(codec.HEADER_SIZE, socket.MSG_WAITALL)
            assert hdr[:4] == codec.MAGIC and hdr[5] == codec.CHALLENGE
            s.recv(codec.NONCE_SIZE, socket.MSG_WAITALL)
        s.sendall(payload)
        out = b''
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
    return out


def error_of(reply):
    frames = codec.FrameDecoder().feed(reply)
    assert frames, 'no reply before the close: %r' % reply
    with pytest.raises(exception.UrsaError) as ei:
        codec.reply_status(frames[0].body)
    return ei.value


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    """One cluster for the whole module: each test also proves the abuse
    before it left the servers serving."""
    c = AllInOne(str(tmp_path_factory.mktemp('bad-input')), 3, port_base=0,
                 server_timeout=3.0)
    c.start()
    try:
        c.client().create_volume('v', 16 * MiB, chunk_size=4 * MiB)
        yield c
    finally:
        c.stop(kill=True)


def still_serving(cluster):
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, b'ok' * 2048)
        assert v.read(0, 4096) == b'ok' * 2048


def test_garbage_bytes_close_the_connection(cluster):
    port = cs_port(cluster)
    err = error_of(raw_exchange(port, os.urandom(4096)))
    assert isinstance(err, exception.ProtocolError)
    assert 'magic' in str(err)
    still_serving(cluster)


def test_wrong_version_and_huge_length(cluster):
    port = cs_port(cluster)
    hdr = struct.pack('!4sBBHQI', b'URSA', 7, codec.AUTH, 0, 1, 64)
    assert 'version' in str(error_of(raw_exchange(port, hdr)))
    hdr = codec.header(codec.AUTH, 1, 0xFFFFFFF0)
    assert 'exceeds' in str(error_of(raw_exchange(port, hdr)))
    still_serving(cluster)


def test_unauthenticated_requests_get_nothing(cluster):
    port = cs_port(cluster)
    vol = cluster.client().volume('v')
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, b'secret!!' * 512)
    read = codec.encode_read(1, vol['id'], 0, 1, 0, 4096)
    reply = raw_exchange(port, read)
    assert isinstance(error_of(reply), exception.NotAuthorized)
    assert b'secret' not in reply
    # A wrong key: the MAC does not verify.
    bad = codec.encode_auth(b'n' * 32, b'm' * 32) + read
    reply = raw_exchange(port, bad)
    assert isinstance(error_of(reply), exception.NotAuthorized)
    assert b'secret' not in reply
    # A client with the wrong key cannot even connect.
    with pytest.raises(exception.UrsaError):
        with data_client(cluster) as cl:
            cl._cluster.key = b'x' * 64  # noqa: SLF001 - deliberate
            cl._cluster.pool = aio.ConnectionPool(b'x' * 64)
            cl.run(lambda c: c.pool.get('127.0.0.1', port))
    still_serving(cluster)


def test_truncated_handshake_and_truncated_bodies(cluster):
    port = cs_port(cluster)
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        s.sendall(b'URS')  # and hang up
    short = codec.header(codec.AUTH, 1, 10) + b'\0' * 10
    assert isinstance(error_of(raw_exchange(port, short)),
                      exception.ProtocolError)
    still_serving(cluster)


def test_bad_requests_after_authentication(cluster):
    port = cs_port(cluster)
    vol = cluster.client().volume('v')
    sid = next(s['id'] for s in cluster.client().servers()
               if s['port'] == port)

    async def go(c):
        # A real lease and a written chunk: the probes below are refused
        # for what they claim, not for a generation nobody issued.
        v = await c.open_volume('v')
        await v.write(0, b'y' * 4096)
        gen = v.generation
        conn = await c.pool.get('127.0.0.1', port)
        results = {}
        for name, frame in {
            'offset past a chunk': codec.encode_read(
                1, vol['id'], 0, 1, 2 ** 31, 4096),
            'no lease': b''.join(codec.encode_write(
                2, vol['id'], 0, 1, 0, 0, [sid], b'x')),
            'generation never issued': b''.join(codec.encode_write(
                3, vol['id'], 0, 1, gen + 1, 0, [sid], b'x')),
            'not primary': b''.join(codec.encode_write(
                4, vol['id'], 0, 1, gen, 0, [999], b'x')),
            # The master's min_replicas counts, not the request's.
            'a replica set of its own': b''.join(codec.encode_write(
                5, vol['id'], 0, 1, gen, 0, [sid], b'x', min_replicas=1)),
        }.items():
            rid = struct.unpack_from('!Q', frame, 8)[0]
            reply = await conn.request(rid, frame, 5)
            try:
                codec.reply_status(reply.body)
                results[name] = None
            except exception.UrsaError as e:
                results[name] = type(e)
        # An unknown opcode drops the connection.
        rid = aio.next_req_id()
        with pytest.raises(exception.UrsaError):
            r = await conn.request(rid, codec.header(0x7F, rid, 0), 5)
            codec.reply_status(r.body)
        await v.close()
        return results
    with data_client(cluster) as cl:
        results = cl.run(go)
    assert results == {
        'offset past a chunk': exception.OutOfRange,
        'no lease': exception.Fenced,
        'generation never issued': exception.Fenced,
        'not primary': exception.StaleEpoch,
        'a replica set of its own': exception.StaleEpoch,
    }
    still_serving(cluster)


def test_client_refuses_ranges_past_the_volume_end(cluster):
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        with pytest.raises(exception.OutOfRange):
            v.write(16 * MiB - 1, b'ab')
        with pytest.raises(exception.OutOfRange):
            v.read(16 * MiB, 1)
        with pytest.raises(exception.NotFound):
            cl.open_volume('no-such-volume')


@pytest.mark.parametrize('method,path,kwargs,status,code', [
    ('POST', '/volumes', dict(raw=b'{not json'), 400, 'invalid_argument'),
    ('POST', '/volumes', dict(raw=b'[1, 2]'), 400, 'invalid_argument'),
    ('POST', '/volumes', dict(body={'name': 'x'}), 400, 'invalid_argument'),
    ('POST', '/volumes', dict(body={'name': 5, 'size': 4096}), 400,
     'invalid_argument'),
    ('POST', '/volumes', dict(body={'name': 'x', 'size': 'big'}), 400,
     'invalid_argument'),
    ('POST', '/volumes', dict(body={'name': 'x', 'size': 4096,
                                    'replicas': 'three'}), 400,
     'invalid_argument'),
    ('POST', '/volumes', dict(body={'name': 'v', 'size': 4096}), 409,
     'already_exists'),
    ('GET', '/volumes/nope', {}, 404, 'not_found'),
    ('DELETE', '/volumes/nope', {}, 404, 'not_found'),
    ('GET', '/volumes/v/chunks', dict(params='?start=x'), 400,
     'invalid_argument'),
    ('GET', '/volumes/v/chunks', dict(params='?start=1000&count=1'), 416,
     'out_of_range'),
    ('POST', '/volumes/v/lease', dict(body={'holder': 'h', 'ttl': -5}), 400,
     'invalid_argument'),
    ('PUT', '/chunkservers/abc/heartbeat', dict(body={}), 400,
     'invalid_argument'),
    ('GET', '/volumes', dict(sign=False), 401, 'not_authorized'),
])
def test_rest_bad_input_gets_4xx_with_a_message(cluster, method, path,
                                                kwargs, status, code):
    got, body = rest(cluster, method, path, **kwargs)
    assert got == status, body
    assert body['error']['code'] == code
    assert body['error']['message']
    assert rest(cluster, 'GET', '/cluster')[0] == 200


def test_a_peer_that_reads_no_replies_cannot_swell_a_chunk_server(cluster):
    """4 GiB worth of READ frames whose replies are never read: the chunk
    server stops reading that connection (its memory stays bounded) and
    serves everybody else."""
    data = os.urandom(MiB)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, data)
    vol = cluster.client().volume('v')
    chunk = cluster.client().chunk_map(vol['id'], 0, 1)['chunks'][0]
    primary = chunk['replicas'][0]
    i = next(i for i in cluster.cs_procs
             if cs_port(cluster, i) == primary['port'])
    pid = cluster.cs_procs[i].pid
    s = socket.create_connection(('127.0.0.1', primary['port']), timeout=10)
    hdr = s.recv(codec.HEADER_SIZE, socket.MSG_WAITALL)
    server_nonce = s.recv(codec.NONCE_SIZE, socket.MSG_WAITALL)
    assert hdr[5] == codec.CHALLENGE
    nonce = os.urandom(codec.NONCE_SIZE)
    s.sendall(codec.encode_auth(nonce, codec.client_mac(
        cluster.key, server_nonce, nonce)))
    hdr = s.recv(codec.HEADER_SIZE, socket.MSG_WAITALL)
    assert hdr[5] == codec.AUTH_OK
    s.recv(codec.parse_header(hdr, 0)[3], socket.MSG_WAITALL)
    reads = b''.join(codec.encode_read(rid, vol['id'], 0, chunk['epoch'], 0,
                                       MiB) for rid in range(1, 4097))
    grown = growth_when_flooded(s, reads, pid)
    assert grown < 300, 'the chunk server grew by %d MiB' % grown
    still_serving(cluster)
    s.close()

