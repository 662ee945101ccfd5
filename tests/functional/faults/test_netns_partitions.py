"""Real network partitions: the master, every chunk server and the NBD
gateway on hosts of their own (network namespaces on one bridge,
tests/fixtures/netns.py), each chunk server its own failure domain, and
links cut between them by packet filters, both ways or one way.

Unlike the fault proxy (test_partitions.py), a cut here also stops the
heartbeats of the server it isolates, and can isolate a server from the
master alone, or from one peer alone, or in one direction: the shapes of
partition the proxy cannot make.

Each test writes with a verifying writer (the client library with a
model of the acknowledged writes, or fio verifying through ursa-nbd),
injects the fault, heals it, then checks the contract: no acknowledged
write is lost, no stale replica serves a read, and once healed the
cluster converges: every chunk has all its replicas again, identical
(``ursa cluster check``)."""

import asyncio
import os
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from tests.fixtures import netns
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_index
from tests.fixtures.cluster import ursa
from tests.fixtures.wait import wait_for
from tests.functional.faults.test_failover_io import fio_job
from tests.functional.faults.test_failover_io import fio_result
from tests.functional.faults.test_failover_io import start_fio
from tests.functional.faults.test_partitions import verify
from tests.functional.faults.test_partitions import write_load
from tests.functional.nbd.test_nbd import need

MiB = 1024 * 1024
BS = 64 * 1024
SIZE = 16 * MiB
# The planner runs often: convergence after a heal is quick.
REPAIR = '[ursa_master]\nrepair_interval = 0.3\n'


def cs(cluster, sid):
    """The host name (netns.Network) of the chunk server the master calls
    ``sid``."""
    return 'cs%d' % server_index(cluster, sid)


def converged(cluster, name='v', replicas=3):
    """Every chunk of ``name`` has ``replicas`` replicas, none joining,
    no repair running."""
    sets = replica_sets(cluster, name)
    status = cluster.client().cluster_status()
    return (all(len(ids) == replicas for ids in sets.values()) and
            status['joining_replicas'] == 0 and
            not status['repair'].get('running'))


def check_converged(cluster, model, failed, name='v', timeout=45):
    """Wait for convergence, then the contract: the data, no divergent
    replica, ``ursa cluster check`` clean."""
    wait_for(lambda: converged(cluster, name), timeout,
             'every chunk of %s back to 3 replicas' % name, interval=0.3)
    report = verify(cluster, name, model, failed)
    assert report['problems'] == [], report
    r = ursa(cluster.data_dir, 'cluster', 'check', check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def write_through(cluster, fault, heal, seconds, name='v', writers=4,
                  before=40, **client):
    """Verifying writers on ``name``: ``fault()`` after ``before``
    acknowledged writes, ``heal()`` ``seconds`` later, then ``before``
    more acknowledged writes and a flush.  Returns (model, failed
    writes, [(block, sent, acknowledged)] of every acknowledged write,
    (fault, heal) loop times)."""
    model = bytearray(SIZE)
    acked = []
    marks = []
    client.setdefault('io_timeout', 10.0)
    client.setdefault('request_timeout', 3.0)
    with data_client(cluster, **client) as cl:
        async def body(c):
            stop = asyncio.Event()
            load = asyncio.ensure_future(write_load(
                c, name, model, writers, stop, acked))
            loop = asyncio.get_running_loop()

            async def until(n):
                while len(acked) < n:
                    if load.done():
                        return await load   # raises what failed
                    await asyncio.sleep(0.05)
            try:
                await asyncio.wait_for(until(before), 30)
                await loop.run_in_executor(None, fault)
                marks.append(loop.time())
                await asyncio.sleep(seconds)
            finally:
                await loop.run_in_executor(None, heal)
                marks.append(loop.time())
            try:
                await asyncio.wait_for(until(len(acked) + before), 40)
            finally:
                stop.set()
            return await asyncio.wait_for(load, 40)
        failed = cl.run(body)
    return model, failed, acked, marks


def faulty(cluster, network, host, fault):
    """(fault, heal) for write_through: ``fault(network)``, then on heal
    the replica set of chunk 0 as the fault left it is appended to the
    list returned third."""
    seen = []

    def heal():
        seen.append(replica_sets(cluster, 'v')[0])
        network.heal(host)
    return lambda: fault(network), heal, seen


def acked_during(acked, marks, after=0.0):
    """How many writes were acknowledged between ``after`` s into the
    fault and its heal."""
    start, end = marks
    return sum(1 for _, _, at in acked if start + after < at < end)


def raw_read(cluster, sid, volume_id, index, epoch, length):
    """READ ``length`` bytes of a chunk straight from server ``sid`` (or
    the master's dict of a server) at ``epoch``, as a client holding that
    epoch's map does: the bytes, or the error the server answered."""
    server = sid if isinstance(sid, dict) else next(
        s for s in cluster.client().servers() if s['id'] == sid)
    with data_client(cluster, io_timeout=10.0) as cl:
        async def read(c):
            conn = await c.pool.get(server['address'], server['port'])
            try:
                reply = await conn.call(codec.encode_read, volume_id, index,
                                        epoch, 0, length, timeout=10.0)
                return bytes(codec.reply_status(reply.body))
            except exception.UrsaError as e:
                return e
        return cl.run(read)


def chunk0(cluster, name='v'):
    client = cluster.client()
    vol = client.volume(name)
    return vol['id'], client.chunk_map(vol['id'], 0, 1)['chunks'][0]


@pytest.fixture
def nscluster(make_ns_cluster):
    """Master, three chunk servers on hosts of their own; a primary waits
    1 s for a replica; a silent server is down after 2 s."""
    c = make_ns_cluster(3, server_timeout=2.0, replication_timeout=1.0,
                        extra_conf=REPAIR)
    c.client().create_volume('v', SIZE, chunk_size=SIZE)
    with data_client(c) as cl, cl.open_volume('v') as v:
        v.write(0, bytes(BS))       # allocates the chunk
    return c


def test_hosts_are_apart_and_chunk_servers_advertise_their_address(
        nscluster, network):
    """Each process listens on its own host's address; the master knows
    each chunk server by it and as a host of its own (failure domain)."""
    servers = nscluster.client().servers()
    assert sorted(s['address'] for s in servers) == sorted(
        network.address('cs%d' % i) for i in range(3))
    assert len({s['host'] for s in servers}) == 3
    assert nscluster.master_url.startswith(
        'http://%s:' % network.address('master'))


def test_a_primary_cut_off_from_its_replicas_acknowledges_nothing(
        nscluster, network):
    """The primary of a chunk loses both its replicas (both ways; it
    still reaches the master and the client): a write is never
    acknowledged on fewer than min_replicas (2) copies: the primary drops
    the replicas it cannot reach through the master (epoch + 1 each) and
    answers InsufficientReplicas.  Once healed, the dropped replicas are
    brought up to date from the primary (catch-up) and writes go on."""
    cluster = nscluster
    old = os.urandom(2 * BS)
    model = bytearray(SIZE)
    model[:2 * BS] = old
    primary, *others = replica_sets(cluster, 'v')[0]
    with data_client(cluster, io_timeout=6.0, request_timeout=4.0) as cl:
        with cl.open_volume('v') as v:
            v.write(0, old)
            v.flush()
            for r in others:
                network.cut(cs(cluster, primary), cs(cluster, r))
            try:
                t0 = time.monotonic()
                new = os.urandom(BS)
                with pytest.raises(exception.InsufficientReplicas):
                    v.write(0, new)
                assert time.monotonic() - t0 < 30
                # Nothing was acknowledged: the primary is alone.
                assert replica_sets(cluster, 'v')[0] == [primary]
            finally:
                network.heal()
            back = v.read(0, 2 * BS)
            assert back[:BS] in (old[:BS], new)
            assert back[BS:] == old[BS:]
            model[:BS] = back[:BS]
            # Writable again once the replicas are back.
            wait_for(lambda: converged(cluster), 45,
                     'both replicas back', interval=0.3)
            again = os.urandom(BS)
            v.write(BS, again)
            v.flush()
            model[BS:2 * BS] = again
    check_converged(cluster, model, {})


@pytest.mark.parametrize('direction', ['both', 'in', 'out'])
def test_a_replica_cut_off_from_the_master_serves_no_stale_read(
        nscluster, network, direction):
    """A replica loses the master alone (it still reaches the client and
    its peers), both ways or one way (over TCP, one way is as good as
    both: no connection opens, and on an open one nothing is
    acknowledged): the master marks it down and drops it (epoch + 1), and
    writes go on without it.  A reader still holding the map of before
    must not get the old bytes from it, neither by a READ naming the old
    epoch nor through the client library trying it first; once healed,
    it rejoins, brought up to date."""
    cluster = nscluster
    old = os.urandom(BS)
    new = os.urandom(BS)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, old)
        v.flush()
    vid, chunk = chunk0(cluster)
    primary, replica, _ = [r['id'] for r in chunk['replicas']]
    with data_client(cluster, io_timeout=10.0) as reader:
        rv = reader.open_volume('v', writable=False)
        assert rv.read(0, BS) == old            # its map: the old epoch
        network.cut(cs(cluster, replica), 'master', direction)
        try:
            wait_for(lambda: replica not in replica_sets(cluster, 'v')[0],
                     20, 'the master to drop the silent replica',
                     interval=0.2)
            with data_client(cluster) as cl, cl.open_volume('v') as v:
                v.write(0, new)
                v.flush()
            got = raw_read(cluster, replica, vid, 0, chunk['epoch'], BS)
            assert got != old, 'a dropped replica served the old bytes'
            assert isinstance(got, exception.UrsaError) or got == new
            # The library reads the suspects last: the primary last here.

            async def suspect(c):
                c.suspect(primary)
            reader.run(suspect)
            assert rv.read(0, BS) == new
        finally:
            network.heal()
        rv.close()
    model = bytearray(SIZE)
    model[:BS] = new
    check_converged(cluster, model, {})
    assert replica in replica_sets(cluster, 'v')[0]


def test_a_replica_cut_off_from_its_primary_alone_serves_no_stale_read(
        make_ns_cluster, network):
    """A replica loses its primary alone (it still reaches the master and
    the client): the primary has the master drop it at the first write it
    misses (epoch + 1), and cannot tell it.  A reader holding the map of
    before must not get the old bytes from it, although its next
    heartbeat, which tells it, may be seconds away (5 s here)."""
    cluster = make_ns_cluster(3, server_timeout=15.0,
                              replication_timeout=1.0, extra_conf=REPAIR)
    cluster.client().create_volume('v', SIZE, chunk_size=SIZE)
    old = os.urandom(BS)
    new = os.urandom(BS)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, old)
        v.flush()
    vid, chunk = chunk0(cluster)
    primary, replica, _ = [r['id'] for r in chunk['replicas']]
    network.cut(cs(cluster, replica), cs(cluster, primary))
    try:
        with data_client(cluster) as cl, cl.open_volume('v') as v:
            v.write(0, new)
        assert replica not in replica_sets(cluster, 'v')[0]
        got = raw_read(cluster, replica, vid, 0, chunk['epoch'], BS)
        assert got != old, 'a dropped replica served the old bytes'
        assert isinstance(got, exception.UrsaError) or got == new
    finally:
        network.heal()
    model = bytearray(SIZE)
    model[:BS] = new
    check_converged(cluster, model, {})


def test_the_client_cut_off_from_a_primary_goes_on_without_it(
        nscluster, network):
    """The client loses the primary of the chunk it writes (both ways;
    the primary still reaches the master and its replicas): the client
    reports it, the master replaces it, writes go on, nothing
    acknowledged is lost.  The old primary, still in touch with the
    master and its peers, is brought up to date as a replica again, even
    before the heal: the client reads primaries first, and any server it
    could not reach last."""
    cluster = nscluster
    primary = replica_sets(cluster, 'v')[0][0]
    host = cs(cluster, primary)
    fault, heal, seen = faulty(cluster, network, host,
                               lambda n: n.cut(host, netns.CLIENT))
    model, failed, acked, marks = write_through(cluster, fault, heal, 6)
    # Replaced as the primary; it may be back as a replica already: the
    # master and the new primary still reach it, and a catch-up is quick.
    assert seen[0][0] != primary, seen
    assert acked_during(acked, marks, after=4) > 10
    check_converged(cluster, model, failed)
    assert replica_sets(cluster, 'v')[0][0] != primary


def test_a_primary_cut_off_from_the_master_loses_no_write(nscluster,
                                                         network):
    """The primary of the chunk loses the master alone (it still reaches
    the client and its replicas): the master marks it down and makes
    another replica the primary (epoch + 1).  Writes go on, through the
    old primary while the replicas do not know the new epoch, then
    through the new one; nothing acknowledged is lost, no replica
    diverges, and once healed the old primary is brought up to date."""
    cluster = nscluster
    primary = replica_sets(cluster, 'v')[0][0]
    host = cs(cluster, primary)
    fault, heal, seen = faulty(cluster, network, host,
                               lambda n: n.cut(host, 'master'))
    model, failed, acked, marks = write_through(cluster, fault, heal, 6)
    assert primary not in seen[0] and len(seen[0]) == 2, seen
    assert acked_during(acked, marks) > 10
    check_converged(cluster, model, failed)


@pytest.mark.parametrize('direction', ['in', 'out'])
def test_a_one_way_partition_between_primary_and_replica(
        nscluster, network, direction):
    """A replica stops receiving from the primary (``in``: its replies
    and heartbeats still go out) or its packets to the primary are lost
    (``out``: it still receives the writes).  Either way a write needs an
    answer the replica cannot give: the primary drops it (epoch + 1),
    writes go on with two copies, no acknowledged write is lost, and once
    healed the replica is brought up to date."""
    cluster = nscluster
    primary, replica, _ = replica_sets(cluster, 'v')[0]
    host = cs(cluster, replica)
    fault, heal, seen = faulty(
        cluster, network, host,
        lambda n: n.cut(host, cs(cluster, primary), direction))
    model, failed, acked, marks = write_through(cluster, fault, heal, 5)
    assert seen[0][0] == primary and replica not in seen[0], seen
    assert len(seen[0]) == 2, seen
    assert acked_during(acked, marks, after=3) > 10
    check_converged(cluster, model, failed)


def test_packet_loss_on_a_replica_loses_no_write(nscluster, network):
    """A fifth of the packets to and from a replica are lost for a while:
    TCP retransmits, writes slow down or drop the replica, nothing
    acknowledged is lost, and the replicas converge once it ends."""
    cluster = nscluster
    replica = replica_sets(cluster, 'v')[0][1]
    host = cs(cluster, replica)
    fault, heal, seen = faulty(cluster, network, host,
                               lambda n: n.loss(host, 20))
    model, failed, acked, marks = write_through(cluster, fault, heal, 5)
    assert acked_during(acked, marks) > 10
    check_converged(cluster, model, failed)


def test_the_gateway_cut_off_from_a_chunk_server_serves_on(
        make_ns_cluster, network, tmp_path):
    """ursa-nbd, on a host of its own, loses the primary of a chunk
    (both ways; that server still reaches the master and its peers) while
    fio writes and verifies through it: the gateway reports the server,
    the master replaces it as primary, fio sees no error and every block
    it wrote verifies; once healed, the server is brought up to date."""
    need('fio')
    cluster = make_ns_cluster(
        3, nbd=True, server_timeout=2.0, replication_timeout=1.0,
        extra_conf=REPAIR + '[ursa]\nrequest_timeout = 3\n')
    cluster.client().create_volume('fio', 12 * MiB, chunk_size=4 * MiB)
    job = fio_job(tmp_path / 'cut.fio', 'nbd://%s:%d/fio' % (
        network.address('nbd'), cluster.nbd_port), 16)
    fio = start_fio(job)
    try:
        # fio's jobs mapped all three chunks: they are allocated.
        wait_for(lambda: fio.poll() is None and
                 len(replica_sets(cluster, 'fio')) == 3, 30,
                 'fio writing to every chunk', interval=0.2)
        primary = replica_sets(cluster, 'fio')[0][0]
        host = cs(cluster, primary)
        network.cut(host, 'nbd')
        try:
            wait_for(lambda: replica_sets(cluster, 'fio')[0][0] != primary,
                     30, 'the gateway to have the primary replaced',
                     interval=0.2)
            time.sleep(2)       # fio writes on without it a while
        finally:
            network.heal(host)
        fio_result(fio, job, timeout=120)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.communicate()
    wait_for(lambda: converged(cluster, 'fio'), 45,
             'every chunk of fio back to 3 replicas', interval=0.3)
    r = ursa(cluster.data_dir, 'cluster', 'check', check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_io_goes_on_while_the_master_is_cut_off_from_everyone(
        make_ns_cluster, network):
    """The master's host loses everyone for less than server_timeout (as
    in a failover, about 8 s against 15 s by default): mapped chunks are
    written without it, no write fails, nothing is dropped, and the chunk
    servers still serve reads on their own (their lease on the master's
    word has not run out)."""
    cluster = make_ns_cluster(3, server_timeout=8.0,
                              replication_timeout=1.0, extra_conf=REPAIR)
    cluster.client().create_volume('v', SIZE, chunk_size=SIZE)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, bytes(BS))
    before = replica_sets(cluster, 'v')
    vid, chunk = chunk0(cluster)
    servers = cluster.client().servers()
    reads = []

    def heal():
        # Read from every replica at the chunk's epoch while the master
        # is still away.
        for s in servers:
            reads.append(raw_read(cluster, s, vid, 0, chunk['epoch'], BS))
        network.heal('master')
    model, failed, acked, marks = write_through(
        cluster, lambda: network.cut('master'), heal, 3)
    assert failed == {}
    assert acked_during(acked, marks) > 10
    assert [type(r) for r in reads] == [bytes] * 3, reads
    assert replica_sets(cluster, 'v') == before
    check_converged(cluster, model, failed)


def test_a_master_that_hears_no_chunk_server_drops_none(make_ns_cluster,
                                                        network):
    """The master's host loses everyone for longer than server_timeout:
    every chunk server looks silent to it at once.  It is the master that
    is cut off, not all its servers that died: it must not mark them all
    down and strip every chunk to one replica when it hears them again
    (the writes acknowledged meanwhile are on all three)."""
    cluster = make_ns_cluster(3, server_timeout=2.0,
                              replication_timeout=1.0, extra_conf=REPAIR)
    cluster.client().create_volume('v', SIZE, chunk_size=SIZE)
    with data_client(cluster) as cl, cl.open_volume('v') as v:
        v.write(0, bytes(BS))
    before = replica_sets(cluster, 'v')
    model, failed, acked, marks = write_through(
        cluster, lambda: network.cut('master'),
        lambda: network.heal('master'), 5)
    assert failed == {}
    assert replica_sets(cluster, 'v') == before
    assert all(s['state'] == 'up' for s in cluster.client().servers())
    check_converged(cluster, model, failed)
