"""A chunk server's disk fails under it (EIO on every read, write and
sync, from a FUSE filesystem that fails on demand): volumes keep serving
reads and writes from the other replicas, and the failed disk's replicas
leave the replica sets of the chunks written since; after
``disk_error_limit`` errors the server declares its data directory failed,
the master marks it failed and its chunks are copied elsewhere at once,
however long ``replica_grace`` is."""

import os
import random

from cinder_ursa.cmd.allinone import AllInOne
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
CHUNKS = 24


def test_failing_disk_reads_and_writes_go_on(tmp_path, faulty_disk):
    mount, trigger = faulty_disk
    cluster = AllInOne(str(tmp_path / 'cluster'), 3, port_base=0,
                       server_timeout=3.0)
    cluster.start()
    try:
        _exercise(cluster, trigger)
    finally:
        cluster.stop(kill=True)


def _fill(cluster, seed):
    """Volume v written with random bytes: (master client, the bytes, the
    bytes to write next, the id of the server whose disk fails)."""
    master = cluster.client()
    master.create_volume('v', CHUNKS * MiB, chunk_size=MiB)
    rng = random.Random(seed)
    old = rng.randbytes(CHUNKS * MiB)
    new = rng.randbytes(CHUNKS * MiB)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, old)
            v.flush()
    return master, old, new, server_id(cluster, 0)


def _exercise(cluster, trigger):
    master, old, new, sick = _fill(cluster, 7)
    with data_client(cluster) as cl:
        sets = replica_sets(cluster, 'v')
        assert all(sick in ids for ids in sets.values())
        # Exercise both roles: primary of some chunks, replica of others.
        assert any(ids[0] == sick for ids in sets.values())
        assert any(ids[0] != sick for ids in sets.values())

        trigger.touch()  # the disk dies
        with cl.open_volume('v') as v:
            assert v.read(0, CHUNKS * MiB) == old
            v.write(0, new)
            v.flush()
            assert v.read(0, CHUNKS * MiB) == new
    sets = replica_sets(cluster, 'v')
    assert all(sick not in ids and len(ids) == 2 for ids in sets.values()), \
        sets
    status = master.cluster_status()
    assert status['degraded_chunks'] == CHUNKS
    assert status['health'] == 'HEALTH_WARN'
    log = open(os.path.join(cluster.data_dir, 'cs0.log')).read()
    assert 'Input/output error' in log


def test_a_failed_disk_is_out_at_once_and_its_chunks_copied(
        tmp_path, faulty_disk):
    _, trigger = faulty_disk
    # A grace period far longer than the test: the copies cannot be the
    # grace period's doing.
    cluster = AllInOne(str(tmp_path / 'cluster'), 4, port_base=0,
                       server_timeout=3.0, extra_conf=(
                           '[ursa_master]\nreplica_grace = 3600\n'
                           'repair_interval = 0.5\n'))
    cluster.start()
    try:
        _fail_and_recover(cluster, trigger)
    finally:
        cluster.stop(kill=True)


def _fail_and_recover(cluster, trigger):
    master, old, new, sick = _fill(cluster, 8)
    with data_client(cluster) as cl:
        assert any(sick in ids for ids in replica_sets(cluster, 'v').values())
        trigger.touch()  # the disk dies
        with cl.open_volume('v') as v:
            assert v.read(0, CHUNKS * MiB) == old
            v.write(0, new)
            v.flush()

        def failed():
            return {s['id']: s for s in master.servers()}[sick]['state'] \
                == 'failed'
        wait_for(failed, 30, lambda: 'server %d marked failed: %s' % (
            sick, master.servers()))

        def whole():
            return all(len(ids) == 3 and sick not in ids
                       for ids in replica_sets(cluster, 'v').values())
        wait_for(whole, 90, lambda: 'every chunk back at 3 copies: %s, '
                 'repair %s' % (replica_sets(cluster, 'v'),
                                master.cluster_status()['repair']))
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, CHUNKS * MiB) == new
    s = {x['id']: x for x in master.servers()}[sick]
    assert 'disk errors within 60 s' in s['failure'], s
    status = master.cluster_status()
    assert status['servers']['failed'] == 1
    assert status['degraded_chunks'] == 0, status
    log = open(os.path.join(cluster.data_dir, 'cs0.log')).read()
    assert 'DATA DIRECTORY' in log and 'FAILED' in log
    # It stays failed while it runs, and serves nothing.
    trigger.unlink()
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, old[:MiB])
        v.flush()
    assert {x['id']: x for x in master.servers()}[sick]['state'] == 'failed'
