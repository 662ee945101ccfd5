"""A chunk server that dies for good has its chunks copied elsewhere,
snapshots included, while the volume keeps being written: every chunk is
back at its volume's number of replicas, in distinct failure domains, and
every replica holds the same blocks."""

import json
import os
import threading

from cinder_ursa.client import check
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import server_index
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
REPAIR_FAST = ('[ursa_master]\nreplica_grace = 1\nrepair_interval = 0.3\n')


def test_a_dead_servers_chunks_are_copied_elsewhere_under_writes(
        make_cluster):
    # Racks are the failure domain, and two servers share r4: a copy may
    # go to either, but never next to a replica already in r4.
    cluster = make_cluster(5, server_timeout=1.0, extra_conf=REPAIR_FAST,
                           failure_domain='rack',
                           racks=['r1', 'r2', 'r3', 'r4', 'r4'])
    client = cluster.client()
    vid = client.create_volume('v', 8 * MiB, chunk_size=MiB)['id']
    image = bytearray(os.urandom(8 * MiB))
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, bytes(image))
            v.flush()
    snap = client.create_snapshot('v', 's1')
    before = bytes(image)
    victim = 0
    dead = server_id(cluster, victim)
    held = [i for i, ids in replica_sets(cluster, 'v').items() if dead in ids]
    assert held, 'the victim holds no chunk'

    stop = threading.Event()
    errors = []

    def writer():
        # Overwrites (copy-on-write into the snapshot's layer) while the
        # chunks are copied.
        with data_client(cluster) as cl:
            with cl.open_volume('v') as v:
                k = 0
                while not stop.is_set():
                    off = (k * 37 % 2048) * 4096
                    data = os.urandom(4096)
                    try:
                        v.write(off, data)
                        image[off:off + 4096] = data
                    except Exception as e:  # noqa: BLE001 - reported
                        errors.append(repr(e))
                    k += 1
                v.flush()
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        cluster.kill_chunkserver(victim)

        def whole():
            sets = replica_sets(cluster, 'v')
            return all(len(ids) == 3 and dead not in ids
                       for ids in sets.values())
        wait_for(whole, 90, lambda: 'every chunk back at 3 replicas: %s, '
                 'status %s' % (replica_sets(cluster, 'v'),
                                client.cluster_status()['repair']))
    finally:
        stop.set()
        t.join(60)
    assert errors == []
    status = client.cluster_status()
    assert status['degraded_chunks'] == 0 and status['joining_replicas'] == 0
    # Copied by the repair: not a whole MiB per chunk, as the blocks the
    # writer's forwarded writes gave a joining copy are not pushed again
    # (3.2 of 5 MiB on a loaded CI machine); that every block arrived is
    # proven below, by the deep check and the reads.
    assert status['repair']['copied_bytes'] > 0
    # Distinct failure domains.
    racks = {s['id']: s['rack'] for s in client.servers()}
    for ids in replica_sets(cluster, 'v').values():
        assert len({racks[i] for i in ids}) == 3, (ids, racks)
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']
        # The dead server holds nothing the cluster needs: removed, and
        # ursa cluster check finds no orphan, leak or missing copy.
        client.remove_server(dead)
        report = cl.run(check.check_cluster)
        assert report['problems'] == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 8 * MiB) == bytes(image)
        with cl.open_volume('v@s1', writable=False) as s:
            assert s.read(0, 8 * MiB) == before
    assert snap['seq'] >= 1


def test_chunks_left_with_one_copy_get_a_second_at_once(make_cluster):
    """Two of four servers die: the chunks left with one replica get a
    second one at once (a one-copy chunk never waits for the grace
    period, here an hour), those left with two wait for it."""
    cluster = make_cluster(4, server_timeout=1.0, extra_conf=(
        '[ursa_master]\nreplica_grace = 3600\nrepair_interval = 0.3\n'))
    client = cluster.client()
    vid = client.create_volume('v', 8 * MiB, chunk_size=MiB)['id']
    image = os.urandom(8 * MiB)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, image)
            v.flush()
    before = replica_sets(cluster, 'v')
    dead = set(before[0][:2])       # two servers sharing chunk 0 at least
    one_copy = [i for i, ids in before.items() if len(set(ids) - dead) == 1]
    assert one_copy, 'no chunk left with one copy: %s' % before
    for sid in dead:
        cluster.kill_chunkserver(server_index(cluster, sid))
    # Writes drop the dead servers from every chunk.
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            for i in range(8):
                v.write(i * MiB, image[i * MiB:i * MiB + 4096])
            v.flush()

    def two_each():
        sets = replica_sets(cluster, 'v')
        return all(len(ids) == 2 and not dead & set(ids)
                   for ids in sets.values())
    wait_for(two_each, 60, lambda: 'two live replicas each: %s %s' % (
        replica_sets(cluster, 'v'), client.cluster_status()['repair']))
    assert client.cluster_status()['one_copy_chunks'] == 0
    # Then every chunk waits for the dead servers (grace period: an hour).
    wait_for(lambda: client.cluster_status()['repair'].get('waiting') == 8,
             10, lambda: 'every chunk waiting: %s' % json.dumps(
                 client.cluster_status()['repair']))
    assert replica_sets(cluster, 'v') == wait_for(
        lambda: replica_sets(cluster, 'v'), 1)
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        problems = [p for p in report['problems']
                    if not p['problem'].startswith('degraded: 2 of 3')]
        assert problems == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 8 * MiB) == image


def test_a_rotten_block_on_the_source_is_repaired_then_the_copy_made(
        make_cluster):
    """A block that fails its CRC on the chunk's primary cannot be sent
    (the target refuses it): the primary repairs it from a replica that
    holds it valid, and the next try makes the copy."""
    cluster = make_cluster(4, server_timeout=1.0, extra_conf=(
        '[ursa_master]\nreplica_grace = 1\nrepair_interval = 0.3\n'))
    client = cluster.client()
    vid = client.create_volume('v', MiB, chunk_size=MiB)['id']
    image = os.urandom(64 * 4096)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, image)
            v.flush()
    ids = replica_sets(cluster, 'v')[0]
    path = os.path.join(cluster.cs_dir(server_index(cluster, ids[0])),
                        'chunks', vid, '0.data')
    with open(path, 'r+b') as f:                # rot in block 7
        f.seek(7 * 4096 + 100)
        old = f.read(3)
        f.seek(7 * 4096 + 100)
        f.write(bytes(b ^ 0xff for b in old))
    cluster.kill_chunkserver(server_index(cluster, ids[2]))
    def copied():
        # One look at the set: two (its length, then whether the dead
        # server left it) passed between the drop and the copy.
        now = replica_sets(cluster, 'v')[0]
        return len(now) == 3 and ids[2] not in now
    wait_for(copied, 60,
             lambda: 'the chunk copied: %s %s' % (
                 replica_sets(cluster, 'v'),
                 client.cluster_status()['repair']))
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 64 * 4096) == image
