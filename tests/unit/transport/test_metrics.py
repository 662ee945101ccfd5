"""The metrics every Ursa process exports: per-operation statistics
counted in plain lists and exposed in Prometheus's format at scrape time,
gauges computed at scrape time, and the /metrics server on a service's
own loop (a busy port ends the process with a message naming the
options)."""

import asyncio
import os
import socket
import threading
import time

import pytest
from prometheus_client import core as prom_core
from prometheus_client import parser

from cinder_ursa import exception
from cinder_ursa.transport import metrics


def families(pm):
    return {f.name: f for f in parser.text_string_to_metric_families(
        pm.text())}


def samples(fam, name=None, **labels):
    return [s for s in fam.samples
            if (name is None or s.name == name)
            and all(s.labels.get(k) == v for k, v in labels.items())]


def test_operations_are_counted_with_bytes_errors_and_latency():
    pm = metrics.ProcessMetrics('chunkserver')
    ops = pm.operations('ursa_t', 'Requests', ['read', 'write'])
    ops.done('read', 30e-6, 4096)
    ops.done('read', 100e-6, 4096)       # exactly on a bucket's bound
    ops.done('write', 2e-3, 8192, exception.Fenced(reason='x'))
    ops.failed('write', ConnectionResetError())
    f = families(pm)
    count = f['ursa_t_operations']
    assert samples(count, op='read')[0].value == 2
    assert samples(count, op='write')[0].value == 2
    nbytes = f['ursa_t_operation_bytes']
    assert samples(nbytes, op='read')[0].value == 8192
    assert samples(nbytes, op='write')[0].value == 8192
    errors = f['ursa_t_operation_errors']
    assert samples(errors, op='write', kind='Fenced')[0].value == 1
    assert samples(errors, op='write',
                   kind='ConnectionResetError')[0].value == 1
    assert not samples(errors, op='read')
    lat = f['ursa_t_operation_latency_seconds']
    buckets = {s.labels['le']: s.value for s in samples(
        lat, 'ursa_t_operation_latency_seconds_bucket', op='read')}
    assert buckets['2.5e-05'] == 0
    assert buckets['5e-05'] == 1
    assert buckets['0.0001'] == 2        # le: the bound is included
    assert buckets['+Inf'] == 2
    assert samples(lat, 'ursa_t_operation_latency_seconds_count',
                   op='read')[0].value == 2
    assert samples(lat, 'ursa_t_operation_latency_seconds_sum',
                   op='read')[0].value == pytest.approx(130e-6)
    # A refused operation (no latency) is counted, not timed.
    assert samples(lat, 'ursa_t_operation_latency_seconds_count',
                   op='write')[0].value == 1
    assert ops.count('write') == 2
    assert ops.errors('write') == {'Fenced': 1, 'ConnectionResetError': 1}


def test_an_unknown_operation_is_a_bug_not_a_new_series():
    ops = metrics.Operations('ursa_t', 'Requests', ['read'])
    with pytest.raises(KeyError):
        ops.done('bogus', 1e-3)


def test_gauges_are_computed_at_scrape_time_and_a_failing_one_is_skipped():
    pm = metrics.ProcessMetrics('nbd')
    state = {'conns': {('client',): 2, ('peer',): 1}, 'n': 5}
    pm.gauge('ursa_t_connections', 'Connections', lambda: state['conns'],
             ['kind'])
    pm.gauge('ursa_t_things', 'Things', lambda: state['n'])
    pm.gauge('ursa_t_kept_total', 'A total kept elsewhere', lambda: 7,
             kind='counter')
    pm.gauge('ursa_t_broken', 'Raises', lambda: 1 / 0)
    f = families(pm)
    assert samples(f['ursa_t_connections'], kind='client')[0].value == 2
    assert f['ursa_t_things'].samples[0].value == 5
    assert f['ursa_t_kept'].type == 'counter'
    assert 'ursa_t_broken' not in f
    # ... and counted, so that an alert can see a family go missing.
    assert samples(f['ursa_metrics_errors'],
                   family='ursa_t_broken')[0].value == 1
    assert samples(f['ursa_service_info'], service='nbd')[0].value == 1
    assert 'process_cpu_seconds' in f
    state['n'] = 6
    state['conns'] = {}
    f = families(pm)
    assert f['ursa_t_things'].samples[0].value == 6
    assert not f['ursa_t_connections'].samples


def _get(port, request):
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        s.sendall(request)
        out = b''
        while True:
            got = s.recv(65536)
            if not got:
                return out
            out += got


def test_the_server_answers_scrapes_on_the_services_loop():
    async def main():
        pm = metrics.ProcessMetrics('master')
        pm.gauge('ursa_t_things', 'Things', lambda: 3)
        server = await pm.serve_here('127.0.0.1', free_port())
        loop = asyncio.get_running_loop()
        get = await loop.run_in_executor(None, _get, server.port,
                                         b'GET /metrics HTTP/1.1\r\n\r\n')
        head = await loop.run_in_executor(None, _get, server.port,
                                          b'HEAD /metrics HTTP/1.1\r\n\r\n')
        other = await loop.run_in_executor(None, _get, server.port,
                                           b'GET /x HTTP/1.1\r\n\r\n')
        post = await loop.run_in_executor(None, _get, server.port,
                                          b'POST /metrics HTTP/1.1\r\n\r\n')
        await pm.close()
        return get, head, other, post

    get, head, other, post = asyncio.run(main())
    assert get.startswith(b'HTTP/1.1 200 OK') and b'ursa_t_things 3.0' in get
    assert head.startswith(b'HTTP/1.1 200 OK') and b'ursa_t_things' not in head
    assert other.startswith(b'HTTP/1.1 404')
    assert post.startswith(b'HTTP/1.1 405')


def test_no_port_no_server():
    async def main():
        pm = metrics.ProcessMetrics('nbd')
        return await pm.serve_here('127.0.0.1', 0)
    assert asyncio.run(main()) is None


def test_a_busy_port_ends_the_process_with_a_message_naming_the_options():
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        port = busy.getsockname()[1]

        async def main():
            await metrics.ProcessMetrics('chunkserver').serve_here(
                '127.0.0.1', port)
        with pytest.raises(SystemExit) as e:
            asyncio.run(main())
    msg = str(e.value.code)
    assert 'ursa-chunkserver' in msg and str(port) in msg
    assert '[ursa_chunkserver] metrics_host and metrics_port' in msg


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class _Huge:
    """A collector whose exposition is larger than what the kernel buffers
    for one connection."""

    def collect(self):
        yield prom_core.GaugeMetricFamily('ursa_t_huge', 'x' * (24 << 20),
                                          value=1)

    def describe(self):
        return []


def _fds(port):
    """This process's fds of TCP connections to or from ``port`` (not the
    whole fd table: other tests' sockets, closed by the garbage collector
    meanwhile, would count)."""
    inodes = set()
    for table in ('/proc/self/net/tcp', '/proc/self/net/tcp6'):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                ports = {int(local.rsplit(':', 1)[1], 16),
                         int(remote.rsplit(':', 1)[1], 16)}
                if port in ports and state != '0A':     # not LISTEN
                    inodes.add(fields[9])
    n = 0
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/' + fd)
        except OSError:
            continue        # closed meanwhile
        if target.startswith('socket:[') and target[8:-1] in inodes:
            n += 1
    return n


def test_a_client_that_never_reads_its_reply_keeps_no_fd():
    pm = metrics.ProcessMetrics('attach')
    pm.registry.register(_Huge())
    server = metrics.MetricsServer(pm.registry, timeout=0.5).start()
    try:
        before = _fds(server.port)
        clients = []
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(('127.0.0.1', server.port))
            s.sendall(b'GET /metrics HTTP/1.1\r\n\r\n')
            clients.append(s)
        deadline = time.monotonic() + 5
        while _fds(server.port) < before + 6 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert _fds(server.port) == before + 6  # both ends of each
        deadline = time.monotonic() + 5
        while _fds(server.port) > before + 3 and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        # Only the clients' own sockets are left: the server cut its ends
        # (and dropped the replies' memory) at its timeout.
        assert _fds(server.port) == before + 3
        for s in clients:
            s.close()
    finally:
        server.shutdown()


def test_scrapes_in_a_row_take_a_bounded_share_of_the_loop():
    calls = []

    def costly():
        calls.append(time.monotonic())
        time.sleep(0.02)        # an exposition of 20 ms, on the loop
        return len(calls)
    pm = metrics.ProcessMetrics('chunkserver')
    pm.gauge('ursa_t_costly', 'Costs 20 ms', costly)
    server = metrics.MetricsServer(pm.registry).start()
    try:
        replies = []

        def client():
            for _ in range(5):
                replies.append(_get(server.port,
                                    b'GET /metrics HTTP/1.1\r\n\r\n'))
        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
    finally:
        server.shutdown()
    assert len(replies) == 40
    assert all(r.startswith(b'HTTP/1.1 200 OK') for r in replies)
    # 40 requests, far fewer expositions: at most one per 10 times its
    # cost (200 ms), plus the first.
    assert len(calls) <= took / 0.2 + 2, (len(calls), took)
    assert len(calls) < 20


def test_a_scrape_sees_what_happened_before_it():
    state = {'n': 0}
    pm = metrics.ProcessMetrics('nbd')
    pm.gauge('ursa_t_n', 'N', lambda: state['n'])
    server = metrics.MetricsServer(pm.registry).start()
    try:
        for n in range(1, 6):
            state['n'] = n
            got = _get(server.port, b'GET /metrics HTTP/1.1\r\n\r\n')
            assert b'ursa_t_n %d.0' % n in got
    finally:
        server.shutdown()


class _Broken:
    def collect(self):
        raise RuntimeError('dictionary changed size during iteration')
        yield

    def describe(self):
        return []


def test_a_collector_that_fails_is_a_500_not_a_dropped_connection():
    pm = metrics.ProcessMetrics('chunkserver')
    broken = _Broken()
    pm.registry.register(broken)
    server = metrics.MetricsServer(pm.registry).start()
    try:
        got = _get(server.port, b'GET /metrics HTTP/1.1\r\n\r\n')
        assert got.startswith(b'HTTP/1.1 500')
        assert b'dictionary changed size' in got
        pm.registry.unregister(broken)
        got = _get(server.port, b'GET /metrics HTTP/1.1\r\n\r\n')
        assert got.startswith(b'HTTP/1.1 200 OK')
    finally:
        server.shutdown()
