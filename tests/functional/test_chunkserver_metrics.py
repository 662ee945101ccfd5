"""The chunk servers' Prometheus metrics, scraped over HTTP from a real
cluster: each request is counted once, under its operation, on the server
that served it (a client's write on the chunk's primary, its forwards on
the other replicas), with its bytes and its latency; a write under a
fenced lease is counted as an error and a refusal; the gauges describe
the server."""

import json
import os

import pytest

from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio
from tests.fixtures import metrics as metrics_fixture
from tests.fixtures.cluster import NO_REBALANCE
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import server_index
from tests.fixtures.processes import free_port
from tests.functional.conftest import STARTUP_TIMEOUT
from tests.functional.conftest import watch_logs

MiB = 1024 * 1024
BS = 4096
OPS = ('read', 'write', 'replicate', 'flush', 'repair', 'catchup', 'scrub')


@pytest.fixture
def cluster(request, tmp_path):
    """Three chunk servers, each with /metrics on a port of its own."""
    d = str(tmp_path / 'cluster')
    c = AllInOne(d, 3, port_base=0, server_timeout=3.0,
                 server_startup_timeout=STARTUP_TIMEOUT,
                 extra_conf=NO_REBALANCE)
    c.ports = [free_port() for _ in range(3)]
    for i, port in enumerate(c.ports):
        c.cs_extra_conf[i] = 'metrics_port = %d' % port
    watch_logs(request, d)
    try:
        c.start()
        yield c
    finally:
        c.stop(kill=True)


def endpoint(cluster, i):
    with open(os.path.join(cluster.cs_dir(i), 'endpoint.json')) as f:
        return json.load(f)


def scrape(cluster, i):
    """{(sample name, frozenset of labels): value} of chunk server i."""
    return metrics_fixture.samples(endpoint(cluster, i)['metrics_port'])


value = metrics_fixture.value


def ops(sample, op):
    return value(sample, 'ursa_chunkserver_operations_total', op=op)


def nbytes(sample, op):
    return value(sample, 'ursa_chunkserver_operation_bytes_total', op=op)


def test_requests_are_counted_where_they_are_served(cluster):
    for i, port in enumerate(cluster.ports):
        assert endpoint(cluster, i)['metrics_port'] == port
    vol = cluster.client().create_volume('v', 64 * MiB)
    before = [scrape(cluster, i) for i in range(3)]
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            for k in range(8):
                v.write(k * BS, bytes([k + 1]) * BS)
            v.flush()
            for k in range(4):
                assert v.read(k * BS, BS) == bytes([k + 1]) * BS
            old_generation = v.volume.generation
            after = [scrape(cluster, i) for i in range(3)]
        sets = replica_sets(cluster, 'v')
        primary = server_index(cluster, sets[0][0])
        assert len(sets[0]) == 3

        def grew(op, what=ops):
            return [what(a, op) - what(b, op)
                    for a, b in zip(after, before, strict=True)]
        # One client write on the primary, forwarded to the two others.
        assert grew('write') == [8 if i == primary else 0
                                 for i in range(3)]
        assert grew('write', nbytes) == [8 * BS if i == primary else 0
                                         for i in range(3)]
        assert grew('replicate') == [0 if i == primary else 8
                                     for i in range(3)]
        assert sum(grew('replicate', nbytes)) == 16 * BS
        # A writable volume's first flush goes to every server up.
        assert grew('flush') == [1, 1, 1]
        assert sum(grew('read')) == 4
        assert sum(grew('read', nbytes)) == 4 * BS
        for i, s in enumerate(after):
            for op in OPS:
                # Every reply has its latency counted.
                assert value(
                    s, 'ursa_chunkserver_operation_latency_seconds_count',
                    op=op) == ops(s, op), (i, op)
            assert not any(
                name == 'ursa_chunkserver_operation_errors_total'
                for name, _ in s), 'no request failed'
            assert value(s, 'ursa_chunkserver_in_flight_requests') == 0
            assert value(s, 'ursa_chunkserver_server_id') == \
                server_id(cluster, i)
            for gauge in ('capacity', 'free', 'used'):
                assert value(s, 'ursa_chunkserver_%s_bytes' % gauge) > 0
            assert value(s, 'ursa_chunkserver_chunks') >= 1
            assert value(s, 'ursa_chunkserver_stale_chunks') == 0
            assert value(s, 'ursa_chunkserver_failed_volumes') == 0
            assert value(s, 'ursa_chunkserver_disk_failed') == 0
            assert value(
                s, 'ursa_chunkserver_disk_sync_latency_seconds_count') >= 1
            # The primary's forwards reach the others on a connection of
            # a peer; the client's own connections count as a client's.
            if i != primary:
                assert value(s, 'ursa_chunkserver_connections',
                             kind='peer') >= 1
        assert value(after[primary], 'ursa_chunkserver_connections',
                     kind='client') >= 1

        # A new lease fences the old one: a write under it is refused.
        with cl.open_volume('v') as v2:
            assert v2.volume.generation > old_generation
            v2.write(0, b'n' * BS)
            before = scrape(cluster, primary)
            assert stale_write(cluster, vol, primary,
                               old_generation) == 'Fenced'
            after = scrape(cluster, primary)
    assert value(after, 'ursa_chunkserver_refused_writes_total',
                 reason='Fenced') - value(
        before, 'ursa_chunkserver_refused_writes_total', reason='Fenced') == 1
    assert value(after, 'ursa_chunkserver_operation_errors_total',
                 op='write', kind='Fenced') - value(
        before, 'ursa_chunkserver_operation_errors_total', op='write',
        kind='Fenced') == 1
    assert ops(after, 'write') - ops(before, 'write') == 1


def stale_write(cluster, vol, i, generation):
    """WRITE chunk 0 of ``vol`` on chunk server ``i`` under lease
    ``generation``, with the cluster key; the error's class name."""
    chunk = cluster.client().chunk_map(vol['id'], 0, 1)['chunks'][0]
    replicas = [r['id'] for r in chunk['replicas']]
    port = endpoint(cluster, i)['port']

    async def go(_):
        pool = aio.ConnectionPool(cluster.key)
        try:
            conn = await pool.get('127.0.0.1', port)
            rid = aio.next_req_id()
            reply = await conn.request(rid, b''.join(codec.encode_write(
                rid, vol['id'], 0, chunk['epoch'], generation, 0, replicas,
                b'o' * BS)), 5)
        finally:
            pool.close()
        try:
            codec.decode_write_ok(reply.body)
        except Exception as e:  # noqa: BLE001 - what is refused is the test
            return type(e).__name__
        return None
    with data_client(cluster) as cl:
        return cl.run(go)
