"""Operator control of data movement, with real processes: a drained
chunk server ends up holding nothing (every chunk at 3 replicas on the
others, the data intact, also for a client that held the old chunk map),
and a new server gets its share of the replicas gradually."""

import json
import os
import signal
import threading

import pytest

from cinder_ursa import exception
from cinder_ursa.client import check
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import ursa
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
FAST = ('[ursa_master]\nreplica_grace = 1\nrepair_interval = 0.3\n'
        'rebalance_moves = %d\nrebalance_threshold = 0\n')


def write_volume(cluster, name, size):
    image = os.urandom(size)
    with data_client(cluster) as cl:
        with cl.open_volume(name) as v:
            v.write(0, image)
            v.flush()
    return bytearray(image)


def counts(cluster):
    return {s['id']: s['chunks'] for s in cluster.client().servers()}


def test_a_drained_server_holds_nothing_and_the_data_stays(make_cluster):
    cluster = make_cluster(4, server_timeout=1.0, extra_conf=FAST % 0)
    client = cluster.client()
    vid = client.create_volume('v', 8 * MiB, chunk_size=MiB)['id']
    image = write_volume(cluster, 'v', 8 * MiB)
    victim = server_id(cluster, 0)
    held = [i for i, ids in replica_sets(cluster, 'v').items()
            if victim in ids]
    assert held, 'the victim holds no chunk'
    before = {c['index']: c['epoch']
              for c in client.chunk_map(vid, 0, 8)['chunks']}
    addr = next((s['address'], s['port']) for s in client.servers()
                if s['id'] == victim)

    stop, writing = threading.Event(), threading.Event()
    errors = []

    def writer():
        # Writes go on while the replicas move (its chunk map gets old
        # too), blocks 16 and up of each chunk.
        try:
            with data_client(cluster) as cl:
                with cl.open_volume('v') as v:
                    k = 0
                    while not stop.is_set():
                        off = (k % 8) * MiB + (16 + k * 37 % 240) * 4096
                        data = os.urandom(4096)
                        v.write(off, data)
                        image[off:off + 4096] = data
                        k += 1
                        writing.set()
                    v.flush()
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(repr(e))
        finally:
            writing.set()

    old = data_client(cluster)
    t = threading.Thread(target=writer, daemon=True)
    try:
        v_old = old.open_volume('v', writable=False)
        # Its chunk map is cached now: it names the victim.
        assert v_old.read(0, 8 * MiB) == bytes(image)
        t.start()
        assert writing.wait(30) and errors == []
        try:
            r = ursa(cluster.data_dir, 'server', 'drain', str(victim),
                     '--wait', '--timeout', '120', '-f', 'json')
        finally:
            stop.set()
            t.join(60)
        assert errors == []
        assert 'safe to remove' in r.stderr, r.stderr
        shown = json.loads(r.stdout)
        assert shown['chunks'] == 0 and shown['draining'] is True
        assert shown['safe_to_remove'] is True
        sets = replica_sets(cluster, 'v')
        assert all(len(set(ids)) == 3 and victim not in ids
                   for ids in sets.values()), sets
        # The client with the old map is told the epoch moved on, and
        # reads the current data from the others.
        assert v_old.read(0, 8 * MiB) == bytes(image)
        v_old.close()
    finally:
        old.close()

    async def read_at(cl, index, epoch):
        conn = await cl.pool.get(*addr)
        reply = await conn.call(codec.encode_read, vid, index, epoch, 0,
                                4096, timeout=10)
        return codec.reply_status(reply.body)
    now = {c['index']: c['epoch']
           for c in client.chunk_map(vid, 0, 8)['chunks']}
    with data_client(cluster) as cl:
        for i in held:
            # Whatever asks the retired server with an old map is told
            # to refresh it, never answered with zeros (its copy is gone)
            # or old data: at the map before the drain, and at the last
            # epoch it was a replica (before it left, then was retired).
            for epoch in (before[i], now[i] - 2):
                with pytest.raises((exception.StaleEpoch,
                                    exception.StaleReplica)):
                    cl.run(read_at, i, epoch)

    status = client.cluster_status()
    assert status['servers']['draining'] == 1
    assert status['degraded_chunks'] == 0
    assert status['joining_replicas'] == 0
    assert status['repair']['retired_replicas'] >= len(held)
    assert status['repair']['copied_bytes'] > 0
    # The victim's copies were deleted, not only dropped: nothing is left
    # for ursa cluster check to report.
    r = ursa(cluster.data_dir, 'cluster', 'check', check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 8 * MiB) == bytes(image)
    r = ursa(cluster.data_dir, 'cluster', 'status', '-f', 'json')
    st = json.loads(r.stdout)
    assert st['servers_draining'] == 1 and st['moves_pending'] == 0
    assert 'estimate' in st['to_copy_estimate']
    listed = json.loads(ursa(cluster.data_dir, 'server', 'list', '-f',
                             'json').stdout)
    assert [(s['draining'], s['chunks']) for s in listed
            if s['id'] == victim] == [(True, 0)]
    # Removed: refused while it runs; once stopped, forgotten.
    r = ursa(cluster.data_dir, 'server', 'remove', str(victim), check=False)
    assert r.returncode != 0 and 'stop it first' in r.stderr, r.stderr
    cluster.kill_chunkserver(0, signal.SIGTERM)
    wait_for(lambda: client.server(victim)['state'] == 'down', 30,
             'the drained server to be marked down')
    r = ursa(cluster.data_dir, 'server', 'remove', str(victim))
    assert 'chunk server %d removed' % victim in r.stderr, r.stderr
    assert victim not in counts(cluster)
    r = ursa(cluster.data_dir, 'cluster', 'check', check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_drain_is_cancelled(make_cluster):
    cluster = make_cluster(4, server_timeout=1.0, extra_conf=FAST % 0)
    client = cluster.client()
    victim = server_id(cluster, 0)
    ursa(cluster.data_dir, 'server', 'drain', str(victim))
    assert client.server(victim)['draining'] is True
    ursa(cluster.data_dir, 'server', 'drain', str(victim), '--cancel')
    assert client.server(victim)['draining'] is False


def test_a_new_server_gets_its_share_gradually(make_cluster):
    cluster = make_cluster(3, server_timeout=1.0, extra_conf=FAST % 2)
    client = cluster.client()
    vid = client.create_volume('v', 16 * MiB, chunk_size=MiB)['id']
    image = write_volume(cluster, 'v', 16 * MiB)
    assert sorted(counts(cluster).values()) == [16, 16, 16]
    cluster.start_chunkserver(3)
    cluster.n = 4
    new = server_id(cluster, 3)
    seen = []

    def balanced():
        c = counts(cluster)
        seen.append(c[new])
        st = client.cluster_status()
        return (max(c.values()) - min(c.values()) <= 1 and
                st['repair'].get('running', 0) == 0 and
                st['joining_replicas'] == 0 and c)
    c = wait_for(balanced, 120, lambda: 'replica counts to converge: %s, '
                 'status %s' % (counts(cluster),
                                client.cluster_status()['repair']),
                 interval=0.2)
    assert c[new] == 12 and sum(c.values()) == 48
    # Gradually: the new server's count was seen growing in steps.
    assert len(set(seen)) > 2
    sets = replica_sets(cluster, 'v')
    assert all(len(set(ids)) == 3 for ids in sets.values()), sets
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 16 * MiB) == bytes(image)
    r = ursa(cluster.data_dir, 'cluster', 'check', check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    st = client.cluster_status()['repair']
    assert st['moves_pending'] == 0 and st['retired_replicas'] == 12
    assert st['rate_bytes_per_s'] > 0


def test_a_draining_server_that_is_down_is_not_waited_for(make_cluster):
    # replica_grace of an hour: only the drain makes the copies now.
    cluster = make_cluster(4, server_timeout=1.0, extra_conf=(
        FAST % 0).replace('replica_grace = 1', 'replica_grace = 3600'))
    client = cluster.client()
    vid = client.create_volume('v', 4 * MiB, chunk_size=MiB)['id']
    image = write_volume(cluster, 'v', 4 * MiB)
    victim = server_id(cluster, 0)
    cluster.kill_chunkserver(0)
    wait_for(lambda: client.server(victim)['state'] == 'down', 30,
             'the victim marked down')
    r = ursa(cluster.data_dir, 'server', 'drain', str(victim), '--wait',
             '--timeout', '60')
    assert 'safe to remove' in r.stderr

    def whole():
        return all(len(set(ids)) == 3 and victim not in ids
                   for ids in replica_sets(cluster, 'v').values())
    wait_for(whole, 60, lambda: 'every chunk at 3 replicas without the '
             'drained server: %s' % replica_sets(cluster, 'v'))
    assert client.cluster_status()['degraded_chunks'] == 0
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 4 * MiB) == bytes(image)


def test_cluster_check_repair_fixes_what_it_safely_can(make_cluster):
    # server_timeout well above a loaded machine's heartbeat delays: a
    # spare marked down and registering again is told its copy is stale,
    # and the orphan this test makes is no longer one to report.
    cluster = make_cluster(4, server_timeout=5.0, extra_conf=FAST % 0)
    client = cluster.client()
    vid = client.create_volume('v', 2 * MiB, chunk_size=MiB)['id']
    image = write_volume(cluster, 'v', 2 * MiB)
    servers = {s['id']: s for s in client.servers()}
    sets = replica_sets(cluster, 'v')
    spare = next(s for s in servers if s not in sets[0])
    missing = sets[1][1]

    async def send(cl, sid, encode, *args):
        # As ursa cluster check --repair does: DELETE is a master's
        # command, taken on a connection that claimed the master term.
        conn = await check._as_master(cl, servers[sid], 10)
        try:
            reply = await conn.call(encode, *args, timeout=10)
        finally:
            conn.close()
        return codec.reply_status(reply.body)
    # An orphan: a copy made on the spare for chunk 0, then given up.
    c = client.chunk_map(vid, 0, 1)['chunks'][0]
    j = client.change_members(vid, 0, 'join', spare, c['epoch'])
    bump = codec.WriteRequest(vid, 0, j['epoch'], 0, 0, 0, 0, sets[0], b'',
                              codec.FLAG_IF_ABSENT)
    with data_client(cluster) as cl:
        cl.run(send, spare, codec.encode_replicate, bump, j['epoch'])
        client.change_members(vid, 0, 'abandon', spare, j['epoch'])
        # A replica missing: chunk 1's copy deleted behind the master.
        cl.run(send, missing, control.encode_delete, vid, 1)
    r = ursa(cluster.data_dir, 'cluster', 'check', '-f', 'json', check=False)
    found = {(p['problem'], p['server'], p['index'])
             for p in json.loads(r.stdout)}
    assert r.returncode == 1
    assert found == {('orphan replica', spare, 0),
                     ('missing replica', missing, 1)}, found

    r = ursa(cluster.data_dir, 'cluster', 'check', '--repair', '-f', 'json',
             check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'orphan copy deleted' in r.stderr, r.stderr
    assert 'dropped from the replica set' in r.stderr, r.stderr
    assert 'ran a repair round' in r.stderr, r.stderr
    assert json.loads(r.stdout) == []

    def whole():
        return all(len(set(ids)) == 3
                   for ids in replica_sets(cluster, 'v').values()) and \
            client.cluster_status()['joining_replicas'] == 0
    wait_for(whole, 60, lambda: 'chunk 1 copied again: %s'
             % replica_sets(cluster, 'v'))
    r = ursa(cluster.data_dir, 'cluster', 'check', check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 2 * MiB) == bytes(image)
