"""The fault proxy in front of a local echo server: it forwards, and
partition (stalled or cut, new connections stalled or refused), heal and
delay do what they say."""

import socket
import socketserver
import threading
import time

import pytest

from cinder_ursa.cmd import faultproxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def proxy():
    server = _Server(('127.0.0.1', 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxies = faultproxy.ProxyThread()
    try:
        yield proxies.add('127.0.0.1', 0, '127.0.0.1',
                          server.server_address[1])
    finally:
        proxies.close()
        server.shutdown()
        server.server_close()


def connect(proxy, timeout=5.0):
    return socket.create_connection(('127.0.0.1', proxy.port), timeout)


def echo(sock, data=b'ping'):
    sock.sendall(data)
    got = b''
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, 'closed after %r' % got
        got += chunk
    return got


def test_forwards_both_ways(proxy):
    with connect(proxy) as s:
        assert echo(s, b'x' * 1000000) == b'x' * 1000000
    assert proxy.connections == 1


def test_a_stalled_partition_holds_bytes_until_it_heals(proxy):
    with connect(proxy) as s:
        assert echo(s) == b'ping'
        proxy.partition()
        assert proxy.partitioned
        s.sendall(b'held')
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(10)
        # A new connection is accepted and says nothing either.
        with connect(proxy, timeout=0.5) as other:
            other.sendall(b'new')
            with pytest.raises(TimeoutError):
                other.recv(10)
            proxy.heal()
            other.settimeout(5)
            assert other.recv(10) == b'new'
        s.settimeout(5)
        assert s.recv(10) == b'held'
        assert echo(s) == b'ping'


def test_a_cut_partition_resets_connections_and_refuses_new_ones(proxy):
    with connect(proxy) as s:
        assert echo(s) == b'ping'
        proxy.partition(existing='cut', new='refuse')
        try:
            got = s.recv(10)
        except ConnectionResetError:
            got = b''
        assert got == b''
        with pytest.raises(ConnectionRefusedError):
            connect(proxy)
    proxy.heal()
    with connect(proxy) as s:
        assert echo(s) == b'ping'


def test_delay_delays_each_direction(proxy):
    with connect(proxy) as s:
        t0 = time.monotonic()
        echo(s)
        fast = time.monotonic() - t0
        proxy.delay(200)
        t0 = time.monotonic()
        assert echo(s) == b'ping'
        slow = time.monotonic() - t0
        proxy.delay(0)
    # 200 ms there and 200 ms back.
    assert slow >= 0.4 > fast, (fast, slow)


def test_bad_partition_arguments_are_refused(proxy):
    with pytest.raises(ValueError):
        proxy.partition(existing='drop')
