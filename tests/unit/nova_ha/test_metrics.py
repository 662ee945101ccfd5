"""The evacuator's /metrics endpoint: served from one thread, idle
connections closed after the timeout and never more than
``max_connections`` open, while Prometheus still scrapes."""

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from nova_ha import metrics as metrics_mod

IDLE = 300


@pytest.fixture
def served():
    m = metrics_mod.Metrics()
    m.leader.set(1)
    server = m.serve(0, timeout=1.0, max_connections=64)
    yield server
    server.shutdown()


def scrape(server, path='/metrics', method='GET'):
    req = urllib.request.Request('http://127.0.0.1:%d%s' % (server.port,
                                                            path),
                                 method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read().decode()


def closed_by_peer(sock):
    try:
        return sock.recv(1) == b''
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_take_no_thread_and_are_closed(served):
    threads = threading.active_count()
    idle = [socket.create_connection(('127.0.0.1', served.port))
            for _ in range(IDLE)]
    try:
        time.sleep(0.3)  # every one accepted
        # One thread serves them all (prometheus_client's server: one
        # thread each, 302 with 300 idle connections).  Not one more
        # thread than before (an earlier test's may have ended since).
        assert threading.active_count() <= threads
        # At most max_connections are kept: the oldest made room.
        assert len(served.open) <= 64
        # Prometheus still gets its answer.
        status, text = scrape(served)
        assert status == 200 and 'nova_ha_leader 1.0' in text
        # Past the timeout (1 s), the server closed every idle one.
        start = time.monotonic()
        for s in idle:
            s.settimeout(max(0.1, start + 3 - time.monotonic()))
        assert all(closed_by_peer(s) for s in idle)
        assert time.monotonic() - start < 3
        assert len(served.open) == 0
    finally:
        for s in idle:
            s.close()


def test_only_get_metrics_is_answered(served):
    assert scrape(served, '/')[0] == 200
    assert scrape(served, '/metrics?x=1', method='HEAD') == (200, '')
    for path, method, status in (('/nope', 'GET', 404),
                                 ('/metrics', 'POST', 405)):
        with pytest.raises(urllib.error.HTTPError) as ei:
            scrape(served, path, method)
        assert ei.value.code == status
    # A request head past 16 KiB is not a scrape: closed unanswered.
    with socket.create_connection(('127.0.0.1', served.port)) as s:
        s.settimeout(5)
        s.sendall(b'GET /metrics HTTP/1.1\r\nX: ' + b'a' * 20000)
        assert closed_by_peer(s)
    assert scrape(served)[0] == 200


def test_a_port_in_use_is_an_error_at_once():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        with pytest.raises(OSError):
            metrics_mod.Metrics().serve(s.getsockname()[1])
