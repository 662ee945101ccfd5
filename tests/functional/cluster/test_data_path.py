"""Replicated I/O through real master and chunk server processes: a
contract that holds on every cluster shape (tests.fixtures.cluster.SHAPES:
one server without replication, three servers with three replicas on
SQLite and on MariaDB, five servers in three racks with rack as the
failure domain).  The tests that only add and remove volumes of their
own share a cluster per shape; the one that restarts everything has one
of its own."""

import hashlib
import os
import random
import time

from cinder_ursa.client import check
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets

MiB = 1024 * 1024


def chunk_files(cluster, volume_id):
    """{(index): {server dir: sha256 of the replica's data file}}"""
    out = {}
    for i in range(cluster.n):
        vdir = os.path.join(cluster.cs_dir(i), 'chunks', volume_id)
        if not os.path.isdir(vdir):
            continue
        for name in os.listdir(vdir):
            if name.endswith('.data'):
                with open(os.path.join(vdir, name), 'rb') as f:
                    digest = hashlib.sha256(f.read().rstrip(b'\0')).digest()
                out.setdefault(int(name[:-5]), {})[i] = digest
    return out


def distinct_domains(cluster, shape, replicas):
    """Whether the servers with ids ``replicas`` are all in different
    failure domains of the shape's level."""
    servers = {s['id']: s for s in cluster.client().servers()}
    key = {'server': 'id', 'host': 'host', 'rack': 'rack'}[
        shape.failure_domain]
    return len({servers[r][key] for r in replicas}) == len(replicas)


def test_random_io_across_chunk_and_stripe_boundaries(module_shaped_cluster,
                                                      cluster_shape):
    cluster = module_shaped_cluster
    size = 256 * MiB
    vol = cluster.client().create_volume(
        'v', size, chunk_size=4 * MiB, stripe_unit=64 * 1024, stripe_count=3)
    model = bytearray(size)
    rng = random.Random(7)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        writes = []
        # Writes straddling every kind of boundary, then random ones.
        for boundary in (64 * 1024, 3 * 64 * 1024, 4 * MiB, 12 * MiB,
                         size - 4096):
            writes.append((boundary - 1000, 5000))
        for _ in range(250):
            length = rng.choice([1, 512, 4096, 5000, 65536, 300000, MiB])
            writes.append((rng.randrange(size - length), length))
        for off, length in writes:
            length = min(length, size - off)
            data = rng.randbytes(length)
            v.write(off, data)
            model[off:off + length] = data
        v.flush()
        for off in range(0, size, 8 * MiB):
            assert v.read(off, 8 * MiB) == bytes(model[off:off + 8 * MiB]), \
                'mismatch in the 8 MiB at %d' % off
        # Unaligned reads too.
        for _ in range(50):
            off = rng.randrange(size - 70000)
            assert v.read(off, 70000) == bytes(model[off:off + 70000])
        report = cl.run(check.check_volume, 'v')
    assert report['problems'] == []
    replicas = cluster_shape.replicas
    assert report['chunks'] > 0
    assert report['replicas'] == replicas * report['chunks']
    # Each chunk's replicas are in distinct failure domains.
    for index, servers in replica_sets(cluster, 'v').items():
        assert len(servers) == replicas, index
        assert distinct_domains(cluster, cluster_shape, servers), index
    # Independent of the protocol: the replica files are identical on disk.
    files = chunk_files(cluster, vol['id'])
    assert len(files) == report['chunks']
    for index, replicas in files.items():
        assert len(replicas) == cluster_shape.replicas, index
        assert len(set(replicas.values())) == 1, 'chunk %d differs' % index


def test_thin_volumes_allocate_only_written_chunks(module_shaped_cluster):
    cluster = module_shaped_cluster
    client = cluster.client()
    # The cluster's other tests' volumes keep their chunks.
    before = client.cluster_status()['chunks']
    client.create_volume('thin', 1024 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as cl, cl.open_volume('thin') as v:
        assert v.read(500 * MiB, 4096) == bytes(4096)
        v.write(100 * MiB + 5, b'hello')
        v.write(900 * MiB, b'x' * 4096, fua=True)
    vol = client.volume('thin')
    assert vol['allocated_chunks'] == 2
    assert client.cluster_status()['chunks'] == before + 2


def test_delete_frees_every_replica(module_shaped_cluster):
    cluster = module_shaped_cluster
    client = cluster.client()
    others = sorted(v['name'] for v in client.volumes())
    vol = client.create_volume('gone', 64 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as cl, cl.open_volume('gone') as v:
        v.write(0, os.urandom(16 * MiB))
    assert chunk_files(cluster, vol['id'])
    client.delete_volume('gone')
    assert chunk_files(cluster, vol['id']) == {}
    assert sorted(v['name'] for v in client.volumes()) == others


def test_restart_of_everything_keeps_every_volume_and_byte(shaped_cluster,
                                                           cluster_shape):
    cluster = shaped_cluster
    client = cluster.client()
    client.create_volume('a', 64 * MiB, chunk_size=4 * MiB)
    # And one with fewer replicas than the default, where there are more.
    client.create_volume('b', 32 * MiB, chunk_size=1 * MiB,
                         replicas=min(2, cluster_shape.replicas),
                         min_replicas=1)
    data_a = os.urandom(20 * MiB)
    data_b = os.urandom(3 * MiB)
    with data_client(cluster) as cl:
        with cl.open_volume('a') as v:
            v.write(1234, data_a)
        with cl.open_volume('b') as v:
            v.write(7 * MiB, data_b)
    # Crash everything (flushed on close), then start it all again.
    cluster.kill_master()
    for i in list(cluster.cs_procs):
        cluster.kill_chunkserver(i)
    # Down for longer than server_timeout, as a whole cluster restarting
    # is: the master takes it for a cold start.
    time.sleep(cluster.server_timeout + 0.5)
    cluster.start_master()
    for i in range(cluster.n):
        if i == cluster.n - 1:
            # The last one boots slowly: past server_timeout, within the
            # startup timeout, it keeps its replicas.
            time.sleep(cluster.server_timeout + 1)
        cluster.start_chunkserver(i)
    client = cluster.client()
    assert sorted(v['name'] for v in client.volumes()) == ['a', 'b']
    with data_client(cluster) as cl:
        with cl.open_volume('a', writable=False) as v:
            assert v.read(1234, len(data_a)) == data_a
        with cl.open_volume('b', writable=False) as v:
            assert v.read(7 * MiB, len(data_b)) == data_b
        assert cl.run(check.check_volume, 'a')['problems'] == []
    assert client.cluster_status()['health'] == 'HEALTH_OK'
