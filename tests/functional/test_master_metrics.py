"""The master's Prometheus metrics on a real cluster: what it exports
follows the volumes, snapshots and chunks made through it, and a chunk
server killed shows as down and its chunks as degraded."""

import json
import os
import urllib.request

from tests.fixtures.cluster import data_client
from tests.fixtures.processes import free_port
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
CHUNK = 4 * MiB


def scrape(port):
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port,
                                timeout=5) as resp:
        return resp.read().decode()


def samples(text, name, **labels):
    """{labels text: value} of the samples of ``name`` having ``labels``."""
    out = {}
    for line in text.splitlines():
        if line.startswith('#') or not line.strip():
            continue
        key, _, value = line.rpartition(' ')
        if key.split('{')[0] != name:
            continue
        if all('%s="%s"' % kv in key for kv in labels.items()):
            out[key] = float(value)
    return out


def value(text, name, **labels):
    """The one sample of ``name`` having ``labels`` (None: none)."""
    found = samples(text, name, **labels)
    assert len(found) <= 1, found
    return next(iter(found.values()), None)


def test_master_metrics_follow_the_cluster(make_cluster):
    port = free_port()
    cluster = make_cluster(
        3, extra_conf='[ursa_master]\nmetrics_port = %d\n' % port)
    with open(os.path.join(cluster.master_dir(0), 'endpoint.json')) as f:
        assert json.load(f)['metrics_port'] == port
    text = scrape(port)
    assert value(text, 'ursa_master_leader') == 1
    assert value(text, 'ursa_master_term') >= 1
    assert value(text, 'ursa_service_info', service='master') == 1

    client = cluster.client()
    client.create_volume('a', 16 * MiB, chunk_size=CHUNK)
    client.create_volume('b', 8 * MiB, chunk_size=CHUNK)
    with data_client(cluster) as cl:
        with cl.open_volume('a') as v:
            v.write(0, os.urandom(16 * MiB))
        cl.create_snapshot('a', 's1')

    def settled():
        t = scrape(port)
        return t if (value(t, 'ursa_master_volumes') == 2 and
                     value(t, 'ursa_master_snapshots') == 1 and
                     value(t, 'ursa_master_chunks', state='healthy') == 4
                     ) else None
    last = {}
    text = wait_for(settled, timeout=30, interval=0.5,
                    what=lambda: last.setdefault('t', scrape(port)))
    assert value(text, 'ursa_master_provisioned_bytes') == 24 * MiB
    assert value(text, 'ursa_master_servers', state='up') == 3
    up = samples(text, 'ursa_master_server_up')
    assert sorted(up.values()) == [1, 1, 1], up
    for state in ('degraded', 'repairing', 'below_min', 'one_copy',
                  'no_copy'):
        assert value(text, 'ursa_master_chunks', state=state) == 0
    assert value(text, 'ursa_master_recovery_chunks_left') == 0
    assert value(text, 'ursa_master_leases') == 0     # closed
    assert sum(samples(text, 'ursa_master_capacity_bytes').values()) > 0
    assert value(text, 'ursa_master_rest_requests_total', method='POST',
                 endpoint='/v1/volumes', status='201') == 2
    assert value(text, 'ursa_master_rest_requests_total', method='POST',
                 endpoint='/v1/volumes/{ref}/snapshots', status='201') == 1
    beats = value(text, 'ursa_master_rest_requests_total', method='PUT',
                  endpoint='/v1/chunkservers/{id}/heartbeat', status='200')
    assert beats >= 3
    assert value(text, 'ursa_master_db_latency_seconds_count',
                 op='create_volume') == 2

    # Chunk server 0 dies: it is marked down after server_timeout (3 s),
    # and the chunks it held are left with two replicas of three.
    with open(os.path.join(cluster.cs_dir(0), 'endpoint.json')) as f:
        cs_port = json.load(f)['port']
    sid = next(s['id'] for s in client.servers() if s['port'] == cs_port)
    cluster.kill_chunkserver(0)

    def degraded():
        t = scrape(port)
        return t if (value(t, 'ursa_master_server_up',
                           server_id=str(sid)) == 0 and
                     value(t, 'ursa_master_chunks', state='degraded') > 0
                     ) else None
    text = wait_for(degraded, timeout=40, interval=0.5,
                    what='server %d down and chunks degraded' % sid)
    assert value(text, 'ursa_master_servers', state='down') == 1
    assert value(text, 'ursa_master_servers', state='up') == 2
    assert value(text, 'ursa_master_chunks', state='degraded') + value(
        text, 'ursa_master_chunks', state='healthy') == 4
    assert value(text, 'ursa_master_recovery_chunks_left') == value(
        text, 'ursa_master_chunks', state='degraded')
    assert value(text, 'ursa_master_recovery_bytes_left') > 0
    assert value(text, 'ursa_master_stale_copies') >= 1
    assert value(text, 'ursa_master_rest_requests_total', method='PUT',
                 endpoint='/v1/chunkservers/{id}/heartbeat',
                 status='200') > beats
    assert value(text, 'ursa_master_leader') == 1
