"""A copy joining a chunk (being brought up to date before it becomes a
replica) takes every write the primary applies, serves no read, counts
for no acknowledgement, and is given up, not the write, when it fails.

Copies are joined here through the master's REST API (what the repair
worker does before it copies the chunk's blocks)."""

import os
import signal
import threading

import pytest

from cinder_ursa import exception
from cinder_ursa.client import check
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import rest
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import server_index
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BS = 4096


@pytest.fixture
def joined(make_cluster):
    """Four chunk servers, a 3-replica volume with one chunk written, and
    the fourth server joining that chunk."""
    cluster = make_cluster(4)
    client = cluster.client()
    vid = client.create_volume('v', MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, b'a' * BS)
    chunk = client.chunk_map(vid, 0, 1)['chunks'][0]
    held = [r['id'] for r in chunk['replicas']]
    spare = next(server_id(cluster, i) for i in range(4)
                 if server_id(cluster, i) not in held)
    chunk = client.change_members(vid, 0, 'join', spare, chunk['epoch'])
    assert [r['id'] for r in chunk['joining']] == [spare]
    return cluster, vid, spare


def _raw_head(cluster, vid, sid, first, count):
    """(entries, data) of a server's copy of chunk 0, read from its files
    (a joining copy answers no read request)."""
    i = server_index(cluster, sid)
    base = os.path.join(cluster.cs_dir(i), 'chunks', vid, '0')
    with open(base + '.meta', 'rb') as f:
        f.seek(first * 8)
        entries = f.read(count * 8)
    with open(base + '.data', 'rb') as f:
        f.seek(first * BS)
        data = f.read(count * BS)
    return entries, data


def test_a_joining_copy_takes_writes_and_serves_no_reads(joined):
    cluster, vid, spare = joined
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(BS, b'b' * BS)
            v.flush()
            assert v.read(0, 2 * BS) == b'a' * BS + b'b' * BS
    # The write reached the joining copy (the one before it did not: its
    # blocks come from the copy the repair worker makes).
    _, data = _raw_head(cluster, vid, spare, 1, 1)
    assert data == b'b' * BS
    # It answers no read, and says why.
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    addr = next(s for s in cluster.client().servers() if s['id'] == spare)

    async def read(c):
        conn = await c.pool.get(addr['address'], addr['port'])
        reply = await conn.request(5, codec.encode_read(
            5, vid, 0, chunk['epoch'], BS, BS), 10)
        codec.reply_status(reply.body)
    with data_client(cluster) as cl:
        with pytest.raises(exception.StaleReplica, match='brought up to'):
            cl.run(read)
    # Also after a restart of its server (the mark is on disk).
    i = server_index(cluster, spare)
    cluster.kill_chunkserver(i, signal.SIGTERM)
    cluster.start_chunkserver(i)
    with data_client(cluster) as cl:
        with pytest.raises(exception.StaleReplica, match='brought up to'):
            cl.run(read)
    status = cluster.client().cluster_status()
    assert status['joining_replicas'] == 1
    assert status['degraded_chunks'] == 0


def test_a_joining_copy_that_fails_is_given_up_not_the_write(joined):
    cluster, vid, spare = joined
    cluster.kill_chunkserver(server_index(cluster, spare))
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(BS, b'c' * BS)           # acknowledged on the replicas
            v.flush()
            assert v.read(BS, BS) == b'c' * BS
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    assert chunk['joining'] == []
    assert spare not in [r['id'] for r in chunk['replicas']]
    assert len(chunk['replicas']) == 3


def test_a_returning_server_whose_copy_was_deleted_answers_no_read(
        joined):
    """A server dropped from a chunk, back after a restart, whose old copy
    was deleted (as a new copy starts): a map that still names it gets no
    zeros from it, since it asks the master whether it is a replica."""
    cluster, vid, _ = joined
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    replica = chunk['replicas'][1]
    status, _ = rest(cluster, 'POST', '/volumes/%s/chunks/0/drop' % vid,
                     {'server_id': replica['id'], 'epoch': chunk['epoch']})
    assert status == 200
    i = server_index(cluster, replica['id'])
    cluster.kill_chunkserver(i, signal.SIGTERM)
    cluster.start_chunkserver(i)

    async def delete_then_read(c):
        # DELETE is a master's command: on a connection that claimed
        # the term the server follows, as ursa cluster check --repair's.
        conn = await check._as_master(c, replica, 10)
        try:
            reply = await conn.request(6, control.encode_delete(6, vid, 0),
                                       10)
            codec.reply_status(reply.body)
            reply = await conn.request(7, codec.encode_read(
                7, vid, 0, chunk['epoch'], 0, BS), 10)
            codec.reply_status(reply.body)
        finally:
            conn.close()
    with data_client(cluster) as cl:
        with pytest.raises((exception.StaleReplica, exception.StaleEpoch)):
            cl.run(delete_then_read)


def test_a_dropped_replica_that_was_not_told_stops_serving_old_maps(
        make_cluster):
    """A replica dropped while alive but unreachable from its primary (a
    partition; here the drop is made through the REST API, so no primary
    tells it) learns it left with its next heartbeat: a client holding
    the old chunk map then gets no read from it, stale or not."""
    cluster = make_cluster(3, server_timeout=1.5)
    client = cluster.client()
    vid = client.create_volume('v', MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, b'a' * BS)
    old = client.chunk_map(vid, 0, 1)['chunks'][0]
    dropped = old['replicas'][2]
    status, _ = rest(cluster, 'POST', '/volumes/%s/chunks/0/drop' % vid,
                     {'server_id': dropped['id'], 'epoch': old['epoch']})
    assert status == 200
    addr = (dropped['address'], dropped['port'])

    async def read(c):
        conn = await c.pool.get(*addr)
        reply = await conn.request(7, codec.encode_read(
            7, vid, 0, old['epoch'], 0, BS), 10)
        return bytes(codec.reply_status(reply.body))

    def refused():
        with data_client(cluster) as cl:
            try:
                cl.run(read)
            except exception.StaleReplica:
                return True
        return False
    wait_for(refused, 10, 'the dropped replica to refuse old maps')


def _control(cluster, sid, frame):
    """Send one control frame to server ``sid``; return the reply body."""
    s = next(s for s in cluster.client().servers() if s['id'] == sid)

    async def send(c):
        # Claimed the master term: DELETE is taken on no other connection.
        conn = await check._as_master(c, s, 10)
        try:
            reply = await conn.request(9, frame, 10)
        finally:
            conn.close()
        return reply.body
    with data_client(cluster) as cl:
        return cl.run(send)


def test_a_copy_being_brought_up_to_date_is_not_deleted_nor_a_replica_joined(
        joined):
    """A DELETE of a joining copy (ursa cluster check --repair racing a
    copy) is refused while the master lists it joining; ENTRIES with
    FLAG_JOIN is refused for a replica, and checks its range before it
    changes anything."""
    cluster, vid, spare = joined
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(BS, b'b' * BS)       # the joining copy now holds one
    body = _control(cluster, spare, control.encode_delete(9, vid, 0))
    with pytest.raises(exception.Conflict, match='brought up to date'):
        codec.reply_status(body)
    _, data = _raw_head(cluster, vid, spare, 1, 1)
    assert data == b'b' * BS
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    replica = chunk['replicas'][1]['id']
    body = _control(cluster, replica, control.encode_entries(
        9, vid, 0, 0, 0, join=True))
    with pytest.raises(exception.Conflict, match='is a replica'):
        control.decode_entries_ok(body)
    body = _control(cluster, replica, control.encode_entries(
        9, vid, 0, 2 ** 32 - 1, 4096, join=True))
    with pytest.raises(exception.OutOfRange):
        control.decode_entries_ok(body)
    # The replica still serves reads.
    with data_client(cluster) as cl:
        with cl.open_volume('v', writable=False) as v:
            assert v.read(0, 2 * BS) == b'a' * BS + b'b' * BS
    # Given up by the master, the copy may go.
    chunk = cluster.client().change_members(vid, 0, 'abandon', spare,
                                            chunk['epoch'])
    codec.reply_status(_control(cluster, spare,
                                control.encode_delete(9, vid, 0)))
    assert not os.path.exists(os.path.join(
        cluster.cs_dir(server_index(cluster, spare)), 'chunks', vid,
        '0.meta'))


def test_a_copy_given_up_leaves_a_stale_copy_not_an_orphan(make_cluster):
    """A copy the primary gives up (here a snapshot deleted while it
    runs: its collection is broadcast, not forwarded in write order) is
    marked
    stale on its target at once, so ``ursa cluster check`` finds no
    orphan: the target is told the chunk's new epoch, which lists it
    nowhere.  (Before, the copy stayed "joining" until the joining-copy
    sweep, minutes later, and a check in between reported it.)"""
    slow = ('[ursa_chunkserver]\nrecovery_rate_min = 1\n'
            'recovery_rate_max = 1\n')
    cluster = make_cluster(4, extra_conf=slow)
    client = cluster.client()
    vid = client.create_volume('v', 4 * MiB, chunk_size=4 * MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, os.urandom(4 * MiB))
            v.flush()
    client.create_snapshot('v', 's1')
    chunk = client.chunk_map(vid, 0, 1)['chunks'][0]
    held = [r['id'] for r in chunk['replicas']]
    servers = {s['id']: s for s in client.servers()}
    spare = next(s for s in servers if s not in held)

    async def rebuild(c):
        # What the master's planner sends: a copy to the spare, at 1 MiB/s
        # (4 s for the chunk's 4 MiB).
        conn = await check._as_master(c, servers[held[0]], 10)
        try:
            reply = await conn.request(8, control.encode_rebuild(
                8, vid, 0, chunk['epoch'], spare), 60)
            codec.reply_status(reply.body)
        finally:
            conn.close()

    def collect_while_copying():
        wait_for(lambda: client.chunk_map(vid, 0, 1)['chunks'][0]
                 ['joining'], timeout=10, what='the spare joining')
        client.delete_snapshot('v@s1')
    worker = threading.Thread(target=collect_while_copying)
    worker.start()
    try:
        with data_client(cluster) as cl:
            with pytest.raises(exception.Unavailable,
                               match='reverted or collected'):
                cl.run(rebuild)
    finally:
        worker.join()
    chunk = client.chunk_map(vid, 0, 1)['chunks'][0]
    assert chunk['joining'] == [] and spare not in [
        r['id'] for r in chunk['replicas']]
    base = os.path.join(cluster.cs_dir(server_index(cluster, spare)),
                        'chunks', vid, '0')
    assert os.path.exists(base + '.stale'), 'the given-up copy is not stale'
    with data_client(cluster) as cl:
        report = cl.run(check.check_cluster)
    assert report['problems'] == []
