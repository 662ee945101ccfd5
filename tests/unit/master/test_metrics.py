"""The master's metrics: the chunk states, the summary read in SQL (checked
against the same classification made chunk by chunk), the cached summary
the leader refreshes, the REST and database families, and the log lines
naming who asked."""

import asyncio
import collections
import json
import logging
import time

import pytest
from aiohttp import test_utils

from cinder_ursa.common import auth
from cinder_ursa.master import api
from cinder_ursa.master import metrics
from cinder_ursa.master import models
from cinder_ursa.transport import metrics as common_metrics
from tests.fixtures.master import add_servers

KEY = b'k' * 32
MiB = 1024 * 1024


# --- the chunk states ------------------------------------------------------

@pytest.mark.parametrize('replicas,joining,target,floor,only_up,state', [
    (3, 0, 3, 2, True, 'healthy'),
    (4, 0, 3, 2, True, 'healthy'),      # a replica too many: lacks none
    (3, 1, 3, 2, True, 'healthy'),      # a move: lacks none
    (1, 0, 1, 1, True, 'healthy'),
    (2, 0, 3, 2, True, 'degraded'),
    (2, 1, 3, 2, True, 'repairing'),
    (2, 0, 3, 3, True, 'below_min'),
    (2, 1, 3, 3, True, 'below_min'),    # writes refused: worse than repair
    (1, 0, 3, 2, True, 'one_copy'),
    (1, 1, 3, 1, True, 'one_copy'),
    (1, 0, 3, 2, False, 'no_copy'),     # its only server is not up
    (1, 0, 1, 1, False, 'no_copy'),
    (0, 0, 3, 2, True, 'no_copy'),
])
def test_chunk_state(replicas, joining, target, floor, only_up, state):
    assert metrics.chunk_state(replicas, joining, target, floor,
                               only_up) == state


def server(sid, host, state='up', capacity=100, used=10, **flags):
    return dict(id=sid, host=host, rack='r', state=state, capacity=capacity,
                used=used, maintenance=flags.get('maintenance', False),
                draining=flags.get('draining', False))


def test_summarize_counts_each_chunk_once_and_estimates_recovery():
    records = {
        # volume, replicas, joining, only server, resync, chunks, lost
        'chunks': [('v', 3, 0, '', 0, 10, 0),
                   ('v', 2, 0, '', 1, 4, 4),
                   ('v', 2, 1, '', 0, 2, 2),
                   ('v', 1, 0, '1', 0, 1, 2),
                   ('v', 1, 0, '3', 0, 3, 0),     # server 3 is down
                   ('w', 1, 0, '3', 0, 5, 0),     # w: one replica asked
                   ('gone', 1, 0, '1', 0, 7, 0)],
        'volumes': [('v', 'available', 40 * MiB, 3, 2, 4 * MiB),
                    ('w', 'available', 20 * MiB, 1, 1, 4 * MiB),
                    ('t', 'trash', 8 * MiB, 3, 2, 4 * MiB)],
        'snapshots': {'available': 2, 'creating': 1, 'trash': 4},
        'leases': 3,
        'servers': [server(1, 'a'), server(2, 'b', draining=True),
                    server(3, 'b', state='down'),
                    server(4, 'c', state='failed', maintenance=True)]}
    # v: 10*3 + 4*2 + 2*2 + 1 + 3 = 46 replicas hold 46 MiB.
    usage = {1: {'v': 30 * MiB}, 2: {'v': 16 * MiB, 'w': MiB}}
    s = metrics.summarize(records, usage, 'host')
    assert s['chunks'] == {'healthy': 10, 'degraded': 4, 'repairing': 2,
                           'below_min': 0, 'one_copy': 1, 'no_copy': 3 + 5}
    # Below target: v's 4 + 2 + 1 + 3 (w's chunks have their one).
    assert s['recovery_chunks_left'] == 10
    # Copies left: 4*1 + 2*1 (the joining ones) + 1*2 + 3*2 = 14, of 1 MiB
    # per replica.
    assert s['recovery_bytes_left'] == 14 * MiB
    assert s['resync'] == 4 and s['stale_copies'] == 8
    assert s['servers'] == {'up': 2, 'down': 1, 'failed': 1,
                            'maintenance': 1, 'draining': 1}
    assert s['server_up'] == {('1', 'a', 'host:a'): 1, ('2', 'b', 'host:b'): 1,
                              ('3', 'b', 'host:b'): 0,
                              ('4', 'c', 'host:c'): 0}
    # Only servers up count; a domain with none up is there, at 0.
    assert s['capacity'] == {'host:a': 100, 'host:b': 100, 'host:c': 0}
    assert s['used'] == {'host:a': 10, 'host:b': 10, 'host:c': 0}
    assert s['volumes'] == 2 and s['provisioned'] == 60 * MiB
    assert s['snapshots'] == 3 and s['leases'] == 3


def test_recovery_bytes_without_usage_count_chunk_sizes():
    records = {'chunks': [('v', 1, 0, '1', 0, 2, 0)],
               'volumes': [('v', 'available', 8 * MiB, 2, 1, 4 * MiB)],
               'snapshots': {}, 'leases': 0, 'servers': [server(1, 'a')]}
    s = metrics.summarize(records, {}, 'host')
    assert s['recovery_bytes_left'] == 2 * 4 * MiB


# --- the SQL summary against the records ------------------------------------

def per_chunk(store):
    """The chunk states classified chunk by chunk, from what the repair
    planner reads."""
    chunks, goals, servers = store.repair_records(everything=True)
    floors = {c['volume_id']: c['floor'] for c in chunks}
    out = collections.Counter(dict.fromkeys(metrics.STATES, 0))
    for c in chunks:
        n = len(c['replicas'])
        only_up = n != 1 or servers[c['replicas'][0]]['state'] == 'up'
        out[metrics.chunk_state(n, len(c['joining']), goals[c['volume_id']],
                                floors[c['volume_id']], only_up)] += 1
    return dict(out)


def test_summary_records_agree_with_each_chunk(store):
    ids = add_servers(store, 5)
    store.create_volume('r3', 40 * MiB, chunk_size=4 * MiB)
    store.create_volume('r3m3', 40 * MiB, replicas=3, min_replicas=3,
                        chunk_size=4 * MiB)
    store.create_volume('r1', 16 * MiB, replicas=1, min_replicas=1,
                        chunk_size=4 * MiB)
    store.chunk_map('r3', 0, 10, allocate=True)
    store.chunk_map('r3m3', 0, 6, allocate=True)
    r1 = store.chunk_map('r1', 0, 4, allocate=True)['chunks']
    assert per_chunk(store)['healthy'] == 20
    # r3 chunks 0-2 lose a replica; chunk 1 gets a copy joining; chunk 2
    # loses another: one copy.  r3m3 chunk 0 loses one: below min.
    for idx in range(3):
        m = store.chunk_members('r3', idx)
        store.drop_replica('r3', idx, m['replicas'][1], m['epoch'])
    m = store.chunk_members('r3', 1)
    spare = next(i for i in ids if i not in m['replicas'] + m['lost'])
    store.join_replica('r3', 1, spare, m['epoch'])
    m = store.chunk_members('r3', 2)
    store.drop_replica('r3', 2, m['replicas'][1], m['epoch'])
    m = store.chunk_members('r3m3', 0)
    store.drop_replica('r3m3', 0, m['replicas'][0], m['epoch'])
    # The only server of one of r1's chunks goes down (not r3 chunk 2's
    # last one): no copy reachable.  Its state is set as mark_down sets
    # it, without mark_down's dropping it from the other replica sets,
    # which would move the other chunks' states by where placement put
    # their replicas.
    last = store.chunk_members('r3', 2)['replicas'][0]
    down = next(c['replicas'][0]['id'] for c in r1
                if c['replicas'][0]['id'] != last)
    t = models.chunkservers
    with store.begin() as conn:
        conn.execute(t.update().where(t.c.id == down).values(
            state='down', down_since=time.time()))
    expected = per_chunk(store)
    s = metrics.summarize(store.summary_records(), {}, 'host')
    assert s['chunks'] == expected
    assert expected['degraded'] >= 1 and expected['repairing'] == 1
    assert expected['one_copy'] == 1 and expected['below_min'] >= 1
    assert expected['no_copy'] >= 1
    assert sum(s['chunks'].values()) == 20
    assert s['resync'] >= 1          # r3m3's primary was dropped
    assert s['stale_copies'] >= 5
    assert s['volumes'] == 3 and s['provisioned'] == 96 * MiB
    assert s['servers']['up'] + s['servers']['down'] == 5


def test_summary_counts_leases_and_snapshots(store):
    add_servers(store, 3)
    store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    store.create_volume('m', 8 * MiB, chunk_size=4 * MiB, multiattach=True)
    store.create_volume('idle', 8 * MiB, chunk_size=4 * MiB)
    store.acquire_lease('v', 'h1:1:a', 30)
    store.acquire_lease('m', 'h1:1:a', 30)
    store.acquire_lease('m', 'h2:1:b', 30)
    snap = store.begin_snapshot('v', 's1')
    store.finish_snapshot(snap['id'], True)
    s = metrics.summarize(store.summary_records(), {}, 'host')
    assert s['leases'] == 3
    assert s['snapshots'] == 1 and s['volumes'] == 3


# --- the cached summary, REST and database families ------------------------

def sample(text, name, **labels):
    """The value of sample ``name{labels}`` in exposition ``text`` (None:
    absent)."""
    for line in text.splitlines():
        if line.startswith('#'):
            continue
        key, _, value = line.rpartition(' ')
        if key.split('{')[0] != name:
            continue
        if all('%s="%s"' % kv in key for kv in labels.items()):
            return float(value)
    return None


async def request(client, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else b''
    target, _, query = path.partition('?')
    headers = {auth.HEADER: auth.sign(KEY, method, target, query, data),
               'Content-Type': 'application/json'}
    resp = await client.request(method, path, data=data or None,
                                headers=headers)
    await resp.read()
    return resp.status


def test_leader_refreshes_the_cache_and_a_standby_exports_none(store):
    add_servers(store, 3)
    registry = common_metrics.ProcessMetrics('master')

    async def go():
        master = api.MasterAPI(store, KEY, metrics=registry)
        mm = master.metrics
        mm.interval = 3600          # refreshed by hand below
        text = registry.text()
        # Not read yet: no cluster family has samples.
        assert sample(text, 'ursa_master_volumes') is None
        assert sample(text, 'ursa_master_chunks', state='healthy') is None
        assert sample(text, 'ursa_master_leader') == 1.0
        assert sample(text, 'ursa_master_term') == 0.0
        server = test_utils.TestServer(master.app())
        async with test_utils.TestClient(server) as client:
            assert await request(client, 'POST', '/v1/volumes', {
                'name': 'v', 'size': 8 * MiB, 'chunk_size': 4 * MiB}) == 201
            assert await request(client, 'GET', '/v1/volumes/v') == 200
            assert await request(client, 'GET', '/v1/volumes/nope') == 404
            assert await request(client, 'GET', '/v1/nothing') == 404
            await master.db(store.chunk_map, 'v', 0, 2, True)
            # The leader's loops started the summary: its first read.
            for _ in range(100):
                if mm.summary is not None and mm.summary['volumes']:
                    break
                await asyncio.sleep(0.05)
                await mm.refresh()
            text = registry.text()
            assert sample(text, 'ursa_master_volumes') == 1
            assert sample(text, 'ursa_master_provisioned_bytes') == 8 * MiB
            assert sample(text, 'ursa_master_chunks', state='healthy') == 2
            assert sample(text, 'ursa_master_chunks', state='degraded') == 0
            assert sample(text, 'ursa_master_servers', state='up') == 3
            assert sample(text, 'ursa_master_server_up', server_id='1',
                          host='a', domain='host:a') == 1
            assert sample(text, 'ursa_master_capacity_bytes',
                          domain='host:b') == 10 ** 12
            assert sample(text, 'ursa_master_recovery_chunks_left') == 0
            assert sample(text, 'ursa_master_rest_requests_total',
                          method='POST', endpoint='/v1/volumes',
                          status='201') == 1
            assert sample(text, 'ursa_master_rest_requests_total',
                          method='GET', endpoint='/v1/volumes/{ref}',
                          status='404') == 1
            assert sample(text, 'ursa_master_rest_requests_total',
                          endpoint='unmatched', status='404') == 1
            assert sample(text, 'ursa_master_rest_latency_seconds_count',
                          endpoint='/v1/volumes/{ref}') == 2
            assert sample(text, 'ursa_master_db_latency_seconds_count',
                          op='create_volume') == 1
            assert sample(text, 'ursa_master_db_latency_seconds_count',
                          op='read_summary') >= 1
            # Deposed (its loops stop): the cluster's state is the
            # leader's to export.
            master.service._stop_loops()
            text = registry.text()
            assert sample(text, 'ursa_master_volumes') is None
            assert sample(text, 'ursa_master_chunks', state='healthy') is None
            assert sample(text, 'ursa_master_rest_requests_total',
                          method='POST', endpoint='/v1/volumes',
                          status='201') == 1
    asyncio.run(go())


def test_the_summary_waits_longer_when_it_is_slow(store, monkeypatch):
    """A summary taking a while to read (a large chunks table) is read
    less often: at most SUMMARY_SHARE of the database thread."""
    master = api.MasterAPI(store, KEY,
                           metrics=common_metrics.ProcessMetrics('master'))
    mm = master.metrics
    mm.interval = 0.01
    reads = []

    def slow(usage, level):
        reads.append(level)
        time.sleep(0.02)
        return {}
    monkeypatch.setattr(mm, 'read_summary', slow)

    async def go():
        task = asyncio.get_running_loop().create_task(mm.run())
        await asyncio.sleep(1.0)
        task.cancel()
    asyncio.run(go())
    master.service._db.shutdown()
    # 20 ms per read, at most 5 % of the time: about 1 read per 0.4 s.
    assert 1 <= len(reads) <= 4


def test_changes_are_logged_with_who_asked(store, caplog):
    add_servers(store, 3)
    caplog.set_level(logging.INFO, logger='cinder_ursa.master')

    async def go():
        master = api.MasterAPI(store, KEY)
        server = test_utils.TestServer(master.app())
        async with test_utils.TestClient(server) as client:
            assert await request(client, 'POST', '/v1/volumes', {
                'name': 'v', 'size': 8 * MiB, 'chunk_size': 4 * MiB}) == 201
            assert await request(client, 'PUT', '/v1/volumes/v/size', {
                'size': 16 * MiB}) == 200
            assert await request(client, 'PUT', '/v1/chunkservers/1/draining',
                                 {'draining': True}) == 200
            assert await request(client, 'POST', '/v1/volumes/v/lease', {
                'holder': 'h:1:x'}) == 201
            assert await request(
                client, 'DELETE',
                '/v1/volumes/v/lease?holder=h:1:x&generation=1') == 204
    asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records]
    for start in ('Volume v (', 'Volume v resized', 'Chunk server 1 ',
                  'Volume v: lease generation 1 to h:1:x',
                  'Volume v: lease generation 1 released'):
        line = next((m for m in lines if m.startswith(start)), None)
        assert line is not None, (start, lines)
        assert line.endswith('by admin from 127.0.0.1'), line
    # Outside a request (the master's own work), no peer is named.
    caplog.clear()
    store.resize('v', 32 * MiB)
    assert caplog.records[-1].getMessage().endswith('by the master')
