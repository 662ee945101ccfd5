"""A chunk server's disk fails under it (EIO on every read, write and
sync, from a FUSE filesystem that fails on demand): volumes keep serving
reads and writes from the other replicas, and the failed disk's replicas
leave the replica sets of the chunks written since."""

import os
import random

from cinder_ursa.cmd.allinone import AllInOne
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id

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
        cluster.stop()


def _exercise(cluster, trigger):
    master = cluster.client()
    master.create_volume('v', CHUNKS * MiB, chunk_size=MiB)
    rng = random.Random(7)
    old = rng.randbytes(CHUNKS * MiB)
    new = rng.randbytes(CHUNKS * MiB)
    sick = server_id(cluster, 0)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, old)
            v.flush()
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
