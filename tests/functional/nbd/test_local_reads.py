"""Short-circuit reads of replicas on this host (``[ursa_nbd]
local_chunkserver_dirs``): they return exactly what a read through the
chunk servers returns, are used only where that is guaranteed, and fall
back to the chunk servers on any doubt."""

import os
import random

import pytest

from cinder_ursa.client import localread
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import module_cluster
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BLOCK = 4096


def _local(cluster, *servers):
    return localread.LocalReplicas([cluster.cs_dir(i) for i in servers])


def test_local_reads_match_the_model_through_writes_and_trims(make_cluster):
    cluster = make_cluster(3)
    cluster.client().create_volume('v', 8 * MiB, chunk_size=2 * MiB)
    local = _local(cluster, 0, 1, 2)
    rng = random.Random(3)
    model = bytearray(8 * MiB)
    with data_client(cluster, local=local) as cl, \
            cl.open_volume('v') as v:
        assert v.read(0, 8 * MiB) == bytes(8 * MiB)  # never written
        for _ in range(60):
            off = rng.randrange(0, 8 * MiB - 1)
            n = rng.randint(1, min(300 * 1024, 8 * MiB - off))
            if rng.random() < 0.2:
                v.write_zeroes(off, n)
                model[off:off + n] = bytes(n)
            else:
                data = rng.randbytes(n)
                v.write(off, data)
                model[off:off + n] = data
            a = rng.randrange(0, 8 * MiB - 1)
            b = rng.randint(1, 8 * MiB - a)
            assert v.read(a, b) == bytes(model[a:a + b])
        assert v.read(0, 8 * MiB) == bytes(model)
    assert local.hits > 50
    assert local.fallbacks == 0


def _non_primary(cluster, name):
    primary = replica_sets(cluster, name)[0][0]
    return next(i for i in range(3) if server_id(cluster, i) != primary)


def test_a_dropped_replica_is_never_read_locally(make_cluster):
    """Reads may use only replicas in the writer's current map: the files
    of a replica dropped under writes keep the old bytes (readable whether
    or not its server runs), and they must never be served."""
    cluster = make_cluster(3, server_timeout=1.5)
    cluster.client().create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, b'1' * MiB)
        v.flush()
    # The victim is a replica the primary forwards to: the write that
    # drops it says so only through the new epoch of its reply.
    i = _non_primary(cluster, 'v')
    victim = server_id(cluster, i)
    local = _local(cluster, i)          # only the victim is "local"
    with data_client(cluster, local=local) as cl, \
            cl.open_volume('v') as v:
        assert v.read(0, MiB) == b'1' * MiB
        hits = local.hits
        assert hits > 0
        cluster.kill_chunkserver(i)
        v.write(0, b'2' * MiB)          # the primary drops the victim
        assert v.read(0, MiB) == b'2' * MiB
        with open(os.path.join(cluster.cs_dir(i), 'chunks', v.id,
                               '0.data'), 'rb') as f:
            assert f.read(4) == b'1111'  # its files still hold old bytes
        v.flush()
        cluster.start_chunkserver(i)
        wait_for(lambda: victim not in replica_sets(cluster, 'v')[0], 10,
                 'the victim out of the replica set')
        assert v.read(0, MiB) == b'2' * MiB
        assert local.hits == hits


def test_a_bad_block_falls_back_to_the_chunk_servers(make_cluster):
    cluster = make_cluster(3)
    cluster.client().create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, b'a' * 64 * 1024)
        v.flush()
        vid = v.id
    # Corrupt block 3 on a replica that is not the primary, and read it
    # "locally" from there.
    i = _non_primary(cluster, 'v')
    path = os.path.join(cluster.cs_dir(i), 'chunks', vid, '0.data')
    with open(path, 'r+b') as f:
        f.seek(3 * BLOCK + 10)
        f.write(b'X')
    local = _local(cluster, i)
    with data_client(cluster, local=local) as cl, \
            cl.open_volume('v') as v:
        assert v.read(0, 64 * 1024) == b'a' * 64 * 1024
        assert v.read(0, BLOCK) == b'a' * BLOCK      # a good block: local
    assert local.fallbacks >= 1 and local.hits >= 1


@pytest.fixture(scope='module')
def shared_cluster(tmp_path_factory):
    """One cluster for the cases that each read a volume of their own."""
    yield from module_cluster(tmp_path_factory, 'local-reads')


@pytest.mark.parametrize('kind', ['read-only', 'multiattach', 'clone'])
def test_no_local_reads_without_an_exclusive_writer(shared_cluster, kind):
    cluster = shared_cluster
    master = cluster.client()
    name = 'v-' + kind
    master.create_volume(name, 4 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as cl:
        with cl.open_volume(name) as v:
            v.write(0, b'z' * BLOCK)
            v.flush()
        if kind == 'multiattach':
            master.update_volume(name, multiattach=True)
        if kind == 'clone':
            cl.create_snapshot(name, 's')
            cl.clone(name + '@s', 'c-' + kind)
    local = _local(cluster, 0, 1, 2)
    ref = 'c-' + kind if kind == 'clone' else name
    with data_client(cluster, local=local) as cl, \
            cl.open_volume(ref, writable=kind != 'read-only') as v:
        assert v.read(0, BLOCK) == b'z' * BLOCK
    assert local.hits == 0
