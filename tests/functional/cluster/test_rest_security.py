"""The master's REST API against a real ursa-master process (no chunk
servers needed): a signature is good for one request once (audit F9),
v1 signatures only in the legacy mode, HTTPS and mutual TLS, and bounded
connections (F20)."""

import asyncio
import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.common import auth
from cinder_ursa.transport import http as http_mod
from tests.fixtures.wait import wait_for

KEY = b'k' * 32


class Master:
    """One ursa-master process on 127.0.0.1 with ``conf`` added to its
    [ursa_master] section; stopped by :meth:`stop`."""

    def __init__(self, path, conf=''):
        os.makedirs(path, exist_ok=True)
        self.dir = path
        self.key_file = os.path.join(path, 'cluster.key')
        with open(self.key_file, 'wb') as f:
            f.write(KEY)
        self.conf_file = os.path.join(path, 'ursa.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[ursa]\ncluster_key_file = %s\n[ursa_master]\n'
                    'bind_host = 127.0.0.1\nbind_port = 0\nstate_dir = %s\n'
                    '%s\n' % (self.key_file, path, conf))
        self.log = os.path.join(path, 'master.log')
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'cinder_ursa.cmd.master',
                 '--config-file', self.conf_file],
                stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        self.url = wait_for(self._endpoint, 30, 'ursa-master to start')
        self.port = int(self.url.rsplit(':', 1)[1])

    def _endpoint(self):
        assert self.proc.poll() is None, self.log_text()
        try:
            with open(os.path.join(self.dir, 'endpoint.json')) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        return info['url'] if info.get('pid') == self.proc.pid else None

    def log_text(self):
        with open(self.log, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def stop(self):
        # Its state is thrown away: killed, not asked to stop.
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def start_master(tmp_path):
    masters = []

    def start(conf='', name='m'):
        m = Master(str(tmp_path / name), conf)
        masters.append(m)
        return m
    yield start
    for m in masters:
        m.stop()


def send(master, method, target, header, body=b'', context=None):
    """One request with ``X-Ursa-Auth: header`` as given: (status, JSON
    body, whether the master closed the connection)."""
    if context:
        conn = http.client.HTTPSConnection('127.0.0.1', master.port,
                                           timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection('127.0.0.1', master.port,
                                          timeout=10)
    try:
        headers = {'Content-Type': 'application/json'}
        if header is not None:
            headers[auth.HEADER] = header
        conn.request(method, target, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        closed = (resp.getheader('Connection') or '').lower() == 'close'
        return resp.status, json.loads(data) if data else {}, closed
    finally:
        conn.close()


def signed(method, target, body=b'', **kw):
    path, _, query = target.partition('?')
    return auth.sign(KEY, method, path, query, body, **kw)


def test_a_signature_is_good_for_one_request_once(start_master):
    master = start_master()
    body = json.dumps({'name': 'vol1', 'size': 1 << 20}).encode()
    sig = signed('POST', '/v1/volumes', body)
    assert send(master, 'POST', '/v1/volumes', sig, body)[0] == 201
    # The same request again: refused, and the connection closed.
    status, reply, closed = send(master, 'POST', '/v1/volumes', sig, body)
    assert (status, closed) == (401, True), reply
    assert 'replayed' in reply['error']['message']
    # The audit's replays (F9), each with a signature never used before.
    other = json.dumps({'name': 'vol2', 'size': 1 << 20}).encode()
    sig = signed('POST', '/v1/volumes', body)
    status, reply, _ = send(master, 'POST', '/v1/volumes', sig, other)
    assert status == 401 and 'not the one signed' in \
        reply['error']['message'], reply
    target = '/v1/volumes/vol1/chunks?start=0&count=1'
    sig = signed('GET', target)
    status, reply, _ = send(
        master, 'GET', '/v1/volumes/vol1/chunks?start=0&count=5&allocate=1',
        sig)
    assert status == 401 and 'bad signature' in reply['error']['message']
    for method, path in (('DELETE', '/v1/volumes/vol1'),
                         ('GET', '/v1/volumes/vol2')):
        sig = signed('GET', '/v1/volumes/vol1')
        status, reply, _ = send(master, method, path, sig)
        assert status == 401 and 'bad signature' in \
            reply['error']['message'], (method, path, reply)
    # Outside the window, either way.
    for off in (-61, 61):
        sig = signed('GET', '/v1/volumes', now=time.time() + off)
        status, reply, _ = send(master, 'GET', '/v1/volumes', sig)
        assert status == 401 and 'clocks' in reply['error']['message']
    # Nothing of the above got through; a fresh signature still does.
    client = master_mod.MasterClient(master.url, KEY)
    assert [v['name'] for v in client.volumes()] == ['vol1']
    # A canonical query: repeated keys, another order, other quoting.
    target = '/v1/volumes/vol1/chunks?count=1&start=0&start=0'
    status, _, _ = send(master, 'GET', target, auth.sign(
        KEY, 'GET', '/v1/volumes/vol1/chunks', 'start=0&start=%30&count=1'))
    assert status in (200, 400)     # accepted: the handler answered


def test_legacy_v1_signatures_only_when_accepted(start_master):
    legacy = start_master(name='legacy')             # the default: true
    strict = start_master('accept_legacy_signatures = false', 'strict')
    v1 = auth.sign_v1(KEY, 'GET', '/v1/volumes')
    status, reply, _ = send(legacy, 'GET', '/v1/volumes', v1)
    assert status == 200, reply
    # Accepted again (v1 has no nonce: why it is deprecated) and logged
    # once for this peer.
    assert send(legacy, 'GET', '/v1/volumes', v1)[0] == 200
    log = legacy.log_text()
    assert log.count('deprecated X-Ursa-Auth v1') == 1, log
    assert 'accept_legacy_signatures is true' in log
    status, reply, _ = send(strict, 'GET', '/v1/volumes', v1)
    assert status == 401
    assert 'accept_legacy_signatures' in reply['error']['message']
    # v2 works on both.
    for m in (legacy, strict):
        assert master_mod.MasterClient(m.url, KEY).volumes() == []


# --- TLS ------------------------------------------------------------------

def _pki(path):
    """A CA, a server certificate for 127.0.0.1 and a client certificate,
    as PEM files in ``path``: {name: file}."""
    x509 = pytest.importorskip('cryptography.x509')
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    files = {}

    def write(name, data):
        files[name] = str(path / name)
        with open(files[name], 'wb') as f:
            f.write(data)

    def key_pem(key):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(name, key, issuer, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(
                 NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                            critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'test CA')])
    ca = cert('test CA', ca_key, ca_name, ca_key, ca=True)
    write('ca.pem', ca.public_bytes(serialization.Encoding.PEM))
    for name, san in (('server', [x509.IPAddress(
            ipaddress.ip_address('127.0.0.1'))]), ('client', None)):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(name, key, ca_name, ca_key, san=san)
        write(name + '.pem', c.public_bytes(serialization.Encoding.PEM))
        write(name + '.key', key_pem(key))
    return files


def _both_clients(url, tls):
    """The volumes as the blocking and the asyncio client see them."""
    blocking = master_mod.MasterClient(url, KEY, timeout=5, tls=tls)

    async def via_aiohttp():
        c = master_mod.AsyncMasterClient(url, KEY, timeout=5, tls=tls)
        try:
            return await c.volumes()
        finally:
            await c.close()
    return blocking.volumes(), asyncio.run(via_aiohttp())


def test_https_master(start_master, tmp_path):
    pki = _pki(tmp_path)
    master = start_master('tls_cert_file = %s\ntls_key_file = %s'
                          % (pki['server.pem'], pki['server.key']))
    assert master.url.startswith('https://127.0.0.1:')
    good = http_mod.client_tls(pki['ca.pem'])
    assert _both_clients(master.url, good) == ([], [])
    # Without the CA: the master's certificate is not trusted.
    for client in (master_mod.MasterClient(master.url, KEY, timeout=5),):
        with pytest.raises(exception.UrsaConnectionError,
                           match='tls_ca_file'):
            client.volumes()

    async def untrusting():
        c = master_mod.AsyncMasterClient(master.url, KEY, timeout=5)
        try:
            await c.volumes()
        finally:
            await c.close()
    with pytest.raises(exception.UrsaConnectionError, match='certificate'):
        asyncio.run(untrusting())
    # Plain HTTP to the HTTPS port: no answer.
    with pytest.raises(exception.UrsaConnectionError):
        master_mod.MasterClient(master.url.replace('https', 'http'), KEY,
                                timeout=5).volumes()


def test_mutual_tls_master(start_master, tmp_path):
    pki = _pki(tmp_path)
    master = start_master(
        'tls_cert_file = %s\ntls_key_file = %s\ntls_ca_file = %s'
        % (pki['server.pem'], pki['server.key'], pki['ca.pem']))
    with_cert = http_mod.client_tls(pki['ca.pem'], pki['client.pem'],
                                    pki['client.key'])
    assert _both_clients(master.url, with_cert) == ([], [])
    without = http_mod.client_tls(pki['ca.pem'])
    with pytest.raises(exception.UrsaConnectionError):
        master_mod.MasterClient(master.url, KEY, timeout=5,
                                tls=without).volumes()
    ctx = ssl.create_default_context(cafile=pki['ca.pem'])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        send(master, 'GET', '/v1/volumes', signed('GET', '/v1/volumes'),
             context=ctx)


def test_client_tls_files_are_checked(tmp_path):
    with pytest.raises(exception.InvalidArgument, match='tls_ca_file'):
        http_mod.client_tls(str(tmp_path / 'missing.pem'))


def test_master_refuses_half_tls_config(tmp_path):
    m = os.path.join(str(tmp_path), 'm')
    os.makedirs(m)
    conf = os.path.join(m, 'ursa.conf')
    with open(os.path.join(m, 'key'), 'wb') as f:
        f.write(KEY)
    with open(conf, 'w') as f:
        f.write('[ursa]\ncluster_key_file = %s/key\n[ursa_master]\n'
                'bind_port = 0\nstate_dir = %s\ntls_key_file = %s/key\n'
                % (m, m, m))
    r = subprocess.run([sys.executable, '-m', 'cinder_ursa.cmd.master',
                        '--config-file', conf], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert 'tls_cert_file' in r.stderr


# --- connection bounds (F20) ------------------------------------------------

def _closed_within(sock, seconds):
    """Whether the master closed ``sock`` within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_partial_request_header_is_cut_off(start_master):
    master = start_master('http_header_timeout = 1.0')
    s = socket.create_connection(('127.0.0.1', master.port))
    try:
        start = time.monotonic()
        s.sendall(b'GET /v1/volumes HTTP/1.1\r\nHost: x\r\nX-Slow: ')
        # Dripping more header bytes does not extend the deadline.
        for _ in range(3):
            time.sleep(0.2)
            s.sendall(b'a')
        assert _closed_within(s, 5)
        assert 0.9 <= time.monotonic() - start < 3
    finally:
        s.close()
    # Connections that sent a request are not cut off between requests
    # before the idle timeout: a client's keep-alive connection lives on.
    conn = http.client.HTTPConnection('127.0.0.1', master.port, timeout=5)
    for _ in range(2):
        conn.request('GET', '/v1/volumes', headers={
            auth.HEADER: signed('GET', '/v1/volumes')})
        assert conn.getresponse().read()
        time.sleep(1.5)
    conn.close()


def test_idle_connections_beyond_the_cap_do_not_lock_clients_out(
        start_master):
    cap = 8
    master = start_master('max_connections = %d\nhttp_header_timeout = 60'
                          % cap)
    idle = [socket.create_connection(('127.0.0.1', master.port))
            for _ in range(4 * cap)]
    try:
        # Only the newest cap connections are kept (each new one closed
        # the oldest that sent nothing); a signed client still works.
        assert master_mod.MasterClient(master.url, KEY).volumes() == []
        closed = sum(_closed_within(s, 0.5) for s in idle)
        assert closed >= 3 * cap, closed
        # Busy connections (each sent a request) are not closed: past
        # the cap, a new connection is answered 503.
        busy = []
        for _ in range(cap):
            c = http.client.HTTPConnection('127.0.0.1', master.port,
                                           timeout=5)
            c.request('GET', '/v1/volumes', headers={
                auth.HEADER: signed('GET', '/v1/volumes')})
            assert c.getresponse().read()
            busy.append(c)
        status, reply, _ = send(master, 'GET', '/v1/volumes',
                                signed('GET', '/v1/volumes'))
        assert status == 503
        assert 'max_connections' in reply['error']['message']
        for c in busy:
            c.close()
        wait_for(lambda: send(master, 'GET', '/v1/volumes',
                              signed('GET', '/v1/volumes'))[0] == 200,
                 10, 'the master to take connections again')
        assert 'max_connections' in master.log_text()
    finally:
        for s in idle:
            s.close()


def _open_fds(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


# The first bytes of a TLS ClientHello record that announces 512 bytes
# and sends a few of them.
PARTIAL_HELLO = b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + b'r' * 20


def test_tls_handshakes_in_progress_are_counted(start_master, tmp_path):
    """With HTTPS, connections that never finish their TLS handshake
    (silent, or a partial ClientHello) count against max_connections
    from the TCP accept: a flood of them holds at most the cap of the
    master's file descriptors, the oldest are closed as new ones come,
    the rest at http_header_timeout, and a signed client gets in
    meanwhile."""
    pki = _pki(tmp_path)
    cap, deadline, flood = 16, 5.0, 300
    master = start_master(
        'tls_cert_file = %s\ntls_key_file = %s\nmax_connections = %d\n'
        'http_header_timeout = %s' % (pki['server.pem'], pki['server.key'],
                                      cap, deadline))
    good = http_mod.client_tls(pki['ca.pem'])
    assert master_mod.MasterClient(master.url, KEY, timeout=5,
                                   tls=good).volumes() == []
    before = _open_fds(master.proc.pid)
    socks = []
    try:
        start = time.monotonic()
        for i in range(flood):
            s = socket.create_connection(('127.0.0.1', master.port))
            if i % 2:
                s.sendall(PARTIAL_HELLO)
            socks.append(s)
        # Bounded at once (not only at the deadline): as the master
        # accepts the flood, each new connection closes the oldest, and
        # it holds about the cap, not the flood.
        wait_for(lambda: sum(_closed_within(s, 0.01) for s in socks)
                 >= flood - cap, deadline, 'the oldest connections closed')
        assert time.monotonic() - start < deadline - 0.5
        held = _open_fds(master.proc.pid) - before
        print('%d connections without a finished TLS handshake: the '
              'master holds %d more file descriptors (max_connections '
              '%d)' % (flood, held, cap))
        assert held <= cap + 4, held
        # A signed client with the CA still gets in, through the flood.
        assert master_mod.MasterClient(master.url, KEY, timeout=5,
                                       tls=good).volumes() == []
        # The survivors are closed at the deadline, counted from their
        # accept.
        assert all(_closed_within(s, deadline + 2) for s in socks)
        assert time.monotonic() - start < 2 * deadline + 3
        wait_for(lambda: _open_fds(master.proc.pid) <= before + 1, 5,
                 'the master to close the flood\'s connections')
    finally:
        for s in socks:
            s.close()
    assert master_mod.MasterClient(master.url, KEY, timeout=5,
                                   tls=good).volumes() == []
    assert 'max_connections' in master.log_text()


def test_unsigned_version_lists_do_not_hold_connections(start_master):
    """A peer without the key that keeps its connections busy with the
    unsigned version list (GET /) holds none of them: a signed client
    still gets in (each new connection closes the oldest that sent no
    signed request)."""
    cap = 8
    master = start_master('max_connections = %d\nhttp_header_timeout = 60'
                          % cap)
    held = []
    try:
        for _ in range(2 * cap):
            c = http.client.HTTPConnection('127.0.0.1', master.port,
                                           timeout=5)
            try:
                c.request('GET', '/')
                c.getresponse().read()
            except (OSError, http.client.HTTPException):
                pass
            held.append(c)
        assert master_mod.MasterClient(master.url, KEY).volumes() == []
    finally:
        for c in held:
            c.close()


def test_a_slow_body_is_cut_off(start_master):
    master = start_master('http_body_timeout = 1.0')
    body = json.dumps({'name': 'slow', 'size': 1 << 20}).encode()
    s = socket.create_connection(('127.0.0.1', master.port))
    try:
        s.sendall(b'POST /v1/volumes HTTP/1.1\r\nHost: x\r\n'
                  b'Content-Type: application/json\r\n'
                  b'Content-Length: %d\r\n%s: %s\r\n\r\n%s' % (
                      len(body), auth.HEADER.encode(),
                      signed('POST', '/v1/volumes', body).encode(),
                      body[:5]))
        s.settimeout(5)
        reply = s.recv(65536)
        assert reply.startswith(b'HTTP/1.1 408'), reply
        assert b'http_body_timeout' in reply
        assert _closed_within(s, 5)
    finally:
        s.close()
