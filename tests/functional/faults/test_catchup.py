"""A chunk server that comes back after an absence gets only what changed
while it was away: its old copies are compared with the primaries' and
the blocks that differ are copied, not whole chunks; a copy being brought
up to date never answers a read."""

import os
import random
import time

import pytest

from cinder_ursa.client import check
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import server_index
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BS = 4096
SIZE = 16 * MiB


def _conf(grace):
    return '[ursa_master]\nreplica_grace = %d\nrepair_interval = 0.3\n' % (
        grace)


def _fill(cluster):
    cluster.client().create_volume('v', SIZE, chunk_size=4 * MiB)
    image = bytearray(os.urandom(SIZE))
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, bytes(image))
            v.flush()
    return image


def _change(cluster, image, blocks, rng):
    """Overwrite ``blocks`` distinct random 4 KiB blocks; return them."""
    changed = sorted(rng.sample(range(SIZE // BS), blocks))
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            for b in changed:
                data = os.urandom(BS)
                v.write(b * BS, data)
                image[b * BS:(b + 1) * BS] = data
            v.flush()
    return changed


def _whole(cluster, victim):
    sets = replica_sets(cluster, 'v')
    status = cluster.client().cluster_status()
    return (all(len(ids) == 3 for ids in sets.values()) and
            status['joining_replicas'] == 0 and
            not status['repair'].get('running') and
            any(victim in ids for ids in sets.values()))


def _check_identical(cluster, image):
    vid = cluster.client().volume('v')['id']
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, SIZE) == bytes(image)


@pytest.mark.parametrize('how', ['restart-within-grace', 'maintenance'])
def test_a_returning_server_copies_only_the_blocks_that_changed(
        make_cluster, how):
    """1% of the volume changes while one of 4 servers is away (killed,
    back within the grace period; or in maintenance, down past the grace
    period): nothing is copied to the other servers meanwhile, and when
    it returns, the bytes copied to it are the bytes changed (not whole
    chunks), within 1.1x."""
    grace = 600 if how == 'restart-within-grace' else 1
    cluster = make_cluster(4, server_timeout=1.0, extra_conf=_conf(grace))
    client = cluster.client()
    image = _fill(cluster)
    # The victim: a server holding chunks (placement may leave one empty).
    victim = replica_sets(cluster, 'v')[0][1]
    vi = server_index(cluster, victim)
    held = [i for i, ids in replica_sets(cluster, 'v').items()
            if victim in ids]
    if how == 'maintenance':
        client.set_maintenance(victim, True)
    cluster.kill_chunkserver(vi)
    rng = random.Random(17)
    changed = _change(cluster, image, SIZE // BS // 100, rng)
    in_held = [b for b in changed if b * BS // (4 * MiB) in held]
    assert in_held, 'no change in a chunk the victim holds'
    sets = replica_sets(cluster, 'v')
    for i in {b * BS // (4 * MiB) for b in in_held}:
        assert victim not in sets[i], 'a write did not drop the victim'
    wait_for(lambda: client.cluster_status()['repair'].get('waiting'), 30,
             lambda: 'chunks waiting for the victim: %s, %s' % (
                 client.cluster_status()['repair'],
                 replica_sets(cluster, 'v')))
    if how == 'maintenance':
        time.sleep(grace + 2)   # past the grace period: still no copy
    assert client.cluster_status()['repair']['copied_bytes'] == 0
    cluster.start_chunkserver(vi)
    if how == 'maintenance':
        client.set_maintenance(victim, False)
    wait_for(lambda: _whole(cluster, victim), 60,
             lambda: 'every chunk back at 3 replicas: %s, status %s' % (
                 replica_sets(cluster, 'v'),
                 client.cluster_status()['repair']))
    copied = client.cluster_status()['repair']['copied_bytes']
    assert len(in_held) * BS <= copied <= 1.1 * len(in_held) * BS, (
        copied, len(in_held) * BS)
    # The victim is back where it was.
    assert sorted(i for i, ids in replica_sets(cluster, 'v').items()
                  if victim in ids) == held
    _check_identical(cluster, image)


def test_a_snapshot_taken_while_away_reaches_the_returning_server(
        make_cluster):
    """A snapshot and overwrites while a server is away: it gets the
    changed blocks of the head and the blocks the snapshot preserved, and
    both the volume and the snapshot read the same on every replica."""
    cluster = make_cluster(3, server_timeout=1.0, extra_conf=_conf(600))
    client = cluster.client()
    image = _fill(cluster)
    cluster.kill_chunkserver(1)
    victim = server_id(cluster, 1)
    rng = random.Random(5)
    _change(cluster, image, 20, rng)
    wait_for(lambda: any(s['id'] == victim and s['state'] == 'down'
                         for s in client.servers()), 30, 'server marked down')
    client.create_snapshot('v', 's1')
    before = bytes(image)
    changed = _change(cluster, image, 40, rng)
    cluster.start_chunkserver(1)
    wait_for(lambda: _whole(cluster, victim), 60,
             lambda: 'every chunk back at 3 replicas: %s, status %s' % (
                 replica_sets(cluster, 'v'),
                 client.cluster_status()['repair']))
    copied = client.cluster_status()['repair']['copied_bytes']
    # 20 + 40 blocks of the head, and at most 40 preserved in the layer.
    assert copied <= (20 + 2 * len(changed)) * BS, copied
    _check_identical(cluster, image)
    with data_client(cluster) as cl:
        with cl.open_volume('v@s1', writable=False) as s:
            assert s.read(0, SIZE) == before
