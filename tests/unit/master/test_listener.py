"""The master's connection guard with HTTPS (listener.BoundedSite): a
connection counts from its TCP accept, its TLS handshake included, so
peers that never finish one cannot hold more than max_connections file
descriptors; under asyncio's loop and uvloop (the master's)."""

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl

import pytest
from aiohttp import web

from cinder_ursa.master import listener


def _certificate(path):
    """A self-signed certificate for 127.0.0.1 and its key, in
    ``path``: (cert.pem, key.pem)."""
    x509 = pytest.importorskip('cryptography.x509')
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address('127.0.0.1'))]), critical=False)
            .sign(key, hashes.SHA256()))
    (path / 'cert.pem').write_bytes(
        cert.public_bytes(serialization.Encoding.PEM))
    (path / 'key.pem').write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path / 'cert.pem', path / 'key.pem'


@pytest.fixture(scope='module')
def tls(tmp_path_factory):
    """(server context, client context) for a self-signed 127.0.0.1."""
    cert, key = _certificate(tmp_path_factory.mktemp('master'))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return server, client


@pytest.fixture(scope='module')
def mtls(tmp_path_factory):
    """(server context requiring a client certificate, client context
    with one, client context without), as cmd.master.server_tls makes
    them with tls_ca_file."""
    cert, key = _certificate(tmp_path_factory.mktemp('master'))
    ccert, ckey = _certificate(tmp_path_factory.mktemp('admin'))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    server.load_verify_locations(cafile=ccert)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=cert)
    client.load_cert_chain(ccert, ckey)
    return server, client, ssl.create_default_context(cafile=cert)


def _loop_list():
    yield pytest.param(asyncio.new_event_loop, id='asyncio')
    try:
        import uvloop
    except ImportError:
        return
    yield pytest.param(uvloop.new_event_loop, id='uvloop')


LOOPS = list(_loop_list())


def _run(new_loop, scenario):
    loop = new_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def _served(tls, cap, timeout, handler=None, method='GET', **app):
    """A BoundedSite on 127.0.0.1 behind a guard of ``cap`` connections
    and ``timeout``: yields (guard, port, socks), the raw sockets the
    test opens into ``socks`` being closed after it.  ``handler(guard)``
    makes the route's handler (default: 'ok', the request seen)."""
    guard = listener.ConnectionGuard(cap, timeout)

    async def hello(request):
        guard.request_seen(request)
        return web.Response(text='ok')
    web_app = web.Application(**app)
    web_app.router.add_route(method, '/',
                             handler(guard) if handler else hello)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = listener.BoundedSite(runner, '127.0.0.1', 0, guard,
                                ssl_context=tls)
    await site.start()
    socks = []
    try:
        yield guard, runner.addresses[0][1], socks
    finally:
        for s in socks:
            s.close()
        await runner.cleanup()


async def _get(port, tls):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        '127.0.0.1', port, ssl=tls), 5)
    try:
        writer.write(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def _flood(port, n, partial):
    """``n`` raw connections (non-blocking), half of them sending the
    start of a ClientHello if ``partial``."""
    socks = []
    loop = asyncio.get_running_loop()
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ('127.0.0.1', port))
        if partial and i % 2:
            s.send(b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03')
        socks.append(s)
    return socks


@pytest.mark.parametrize('new_loop', LOOPS)
def test_handshakes_in_progress_count_and_make_room(tls, new_loop):
    server_tls, client_tls = tls

    async def scenario():
        async with _served(server_tls, 8, 30.0) as (guard, port, socks):
            assert await _get(port, client_tls) == b'HTTP/1.1 200 OK\r\n'
            socks += await _flood(port, 100, partial=True)
            for _ in range(100):
                if guard.evicted >= 100 - 8:
                    break
                await asyncio.sleep(0.02)
            # Counted from the accept: at most the cap is held, and each
            # new connection closed the oldest handshake not over.
            assert len(guard) <= 8
            assert guard.evicted >= 100 - 8
            # A client that finishes its handshake gets in at once.
            assert await _get(port, client_tls) == b'HTTP/1.1 200 OK\r\n'
    _run(new_loop, scenario)


@pytest.mark.parametrize('new_loop', LOOPS)
def test_a_stalled_handshake_is_closed_at_the_deadline(tls, new_loop):
    server_tls, client_tls = tls

    async def scenario():
        async with _served(server_tls, 64, 0.5) as (guard, port, socks):
            socks += await _flood(port, 6, partial=True)
            await asyncio.sleep(0.2)
            assert len(guard) == 6
            loop = asyncio.get_running_loop()
            start = loop.time()
            while len(guard) and loop.time() - start < 3:
                await asyncio.sleep(0.05)
            assert len(guard) == 0
            for s in socks:
                # Closed by the master: EOF or a reset.
                try:
                    assert await asyncio.wait_for(
                        loop.sock_recv(s, 10), 2) == b''
                except ConnectionResetError:
                    pass
            assert await _get(port, client_tls) == b'HTTP/1.1 200 OK\r\n'
    _run(new_loop, scenario)


def _open_fds():
    return len(os.listdir('/proc/self/fd'))


@pytest.mark.parametrize('new_loop', LOOPS)
def test_evicted_tls_connections_free_their_descriptors_at_once(
        tls, new_loop):
    """Peers that finish their handshake, then send nothing and never
    answer the server's close_notify: each evicted one is aborted, not
    left waiting ssl_shutdown_timeout with its file descriptor open
    while the guard counts it no more."""
    server_tls, client_tls = tls
    # Handshakes made by blocking sockets, in threads: they never read
    # again, so no close_notify is ever answered.
    def handshake(port):
        raw = socket.create_connection(('127.0.0.1', port), timeout=5)
        return client_tls.wrap_socket(raw, server_hostname='127.0.0.1')

    async def scenario():
        async with _served(server_tls, 8, 30.0) as (guard, port, socks):
            loop = asyncio.get_running_loop()
            before = _open_fds()
            for _ in range(40):
                socks.append(await loop.run_in_executor(
                    None, handshake, port))
            await asyncio.sleep(0.5)
            assert len(guard) <= 8 and guard.evicted >= 32
            # Ours (40), the master's kept ones (8), and a few more.
            assert _open_fds() - before <= 40 + 8 + 4
    _run(new_loop, scenario)


@pytest.mark.parametrize('new_loop', LOOPS)
def test_mutual_tls_large_bodies_and_keep_alive_through_the_guard(
        mtls, new_loop):
    """The TLS layer the guard puts in place is the server's: a client
    certificate is still required and seen by the request, 8 MiB bodies
    arrive whole (the layer's flow control), two requests share one
    connection, and a refused handshake leaves nothing counted."""
    server_tls, client_tls, anonymous = mtls
    body = os.urandom(8 << 20)

    def make_echo(guard):
        async def echo(request):
            guard.request_seen(request)
            data = await request.read()
            cert = request.transport.get_extra_info('peercert')
            subject = dict(x[0] for x in cert['subject'])
            return web.json_response({'len': len(data),
                                      'same': data == body,
                                      'cn': subject['commonName']})
        return echo

    async def scenario():
        async with _served(server_tls, 8, 5.0, make_echo, 'POST',
                           client_max_size=16 << 20) as (guard, port, _):
            reader, writer = await asyncio.open_connection(
                '127.0.0.1', port, ssl=client_tls)
            for _ in range(2):
                writer.write(b'POST / HTTP/1.1\r\nHost: x\r\n'
                             b'Content-Length: %d\r\n\r\n' % len(body))
                writer.write(body)
                head = await asyncio.wait_for(
                    reader.readuntil(b'\r\n\r\n'), 10)
                assert head.startswith(b'HTTP/1.1 200 OK')
                n = int([h for h in head.split(b'\r\n')
                         if h.lower().startswith(b'content-length')][0]
                        .split(b':')[1])
                got = await reader.readexactly(n)
                assert b'"len": %d' % len(body) in got
                assert b'"same": true' in got and b'"cn": "admin' in got
            assert len(guard) == 1
            writer.close()
            # Without a client certificate: no request, nothing counted.
            with pytest.raises((ssl.SSLError, ConnectionError,
                                asyncio.IncompleteReadError)):
                r, w = await asyncio.open_connection('127.0.0.1', port,
                                                     ssl=anonymous)
                w.write(b'POST / HTTP/1.1\r\nHost: x\r\n'
                        b'Content-Length: 0\r\n\r\n')
                await asyncio.wait_for(r.readuntil(b'\r\n\r\n'), 5)
            for _ in range(100):
                if len(guard) == 0:
                    break
                await asyncio.sleep(0.02)
            assert len(guard) == 0
    _run(new_loop, scenario)
