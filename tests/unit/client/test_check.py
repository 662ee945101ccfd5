"""``ursa cluster check --repair`` on a fake cluster: what it deletes,
what it drops, and the copies it never deletes (the last one)."""

import asyncio

from cinder_ursa.client import check
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control


class FakeConn:
    def __init__(self, sid, sent, master=False):
        self.sid, self.sent, self.master = sid, sent, master
        self.closed = False

    def close(self):
        self.closed = True

    async def call(self, encode, *args, timeout):
        frame = codec.FrameDecoder().feed(encode(1, *args))[0]
        if frame.opcode == codec.DELETE:
            # A master's command: on a connection that claimed the term.
            assert self.master and not self.closed
        self.sent.append((self.sid, frame.opcode, frame.body))
        return codec.FrameDecoder().feed(codec.encode_ok(frame.opcode,
                                                         1))[0]


class FakePool:
    def __init__(self, sent):
        self.sent = sent

    async def get(self, address, port):
        return FakeConn(port - 9000, self.sent)


class FakeMaster:
    def __init__(self, chunks):
        self.chunks = chunks        # {(volume, index): chunk}
        self.dropped = []

    async def servers(self):
        return [{'id': i, 'address': '127.0.0.1', 'port': 9000 + i}
                for i in range(1, 6)]

    async def chunk_map(self, volume, start, count):
        c = self.chunks.get((volume, start))
        return {'chunks': [c] if c else []}

    async def drop_replica(self, volume, index, server_id, epoch):
        self.dropped.append((volume, index, server_id, epoch))
        c = self.chunks[(volume, index)]
        return dict(c, epoch=epoch + 1, replicas=[
            r for r in c['replicas'] if r['id'] != server_id])


class FakeCluster:
    def __init__(self, chunks):
        self.master = FakeMaster(chunks)
        self.sent = []
        self.pool = FakePool(self.sent)
        self.master_conns = []


VID = '6b0c1b3e-8e0a-4c5e-9a7e-2f1d3c4b5a69'


def member(i):
    return {'id': i, 'address': '127.0.0.1', 'port': 9000 + i}


def orphan(server, index=0, volume_id=VID):
    return {'problem': 'orphan replica', 'server': server, 'volume': 'v',
            'volume_id': volume_id, 'index': index, 'bytes': 4096,
            'detail': ''}


def run_repair(cluster, problems, held):
    """``held``: the servers whose CHUNK_INFO finds a copy."""
    async def info(cl, vid, index, replica, timeout, deep=False):
        return (1, 0, 0, []) if replica['id'] in held else None
    async def as_master(cl, server, timeout):
        conn = FakeConn(server['id'], cl.sent, master=True)
        cl.master_conns.append(conn)
        return conn
    real = check._info, check._as_master
    check._info, check._as_master = info, as_master
    try:
        return asyncio.run(check.repair_cluster(cluster, problems))
    finally:
        check._info, check._as_master = real


def chunk(replicas, joining=(), epoch=7):
    return {'index': 0, 'epoch': epoch,
            'replicas': [member(i) for i in replicas],
            'joining': [member(i) for i in joining]}


def test_an_orphan_is_deleted_while_a_replica_holds_a_copy():
    cluster = FakeCluster({(VID, 0): chunk([1, 2, 3])})
    done = run_repair(cluster, [orphan(4)], held={2})
    assert 'orphan copy deleted' in done[0]
    assert [(sid, op) for sid, op, _ in cluster.sent] == [
        (4, codec.DELETE)]
    assert control.decode_delete(cluster.sent[0][2]) == (VID, 0)
    # Its own connection, closed after (see check._as_master).
    assert [c.closed for c in cluster.master_conns] == [True]


def test_the_last_copy_is_never_deleted():
    cluster = FakeCluster({(VID, 0): chunk([1, 2, 3])})
    done = run_repair(cluster, [orphan(4)], held=set())
    assert 'may be the last' in done[0] and cluster.sent == []


def test_copies_of_members_and_of_unknown_chunks_are_kept():
    cluster = FakeCluster({(VID, 0): chunk([1, 2, 3], joining=[4])})
    problems = [orphan(4), orphan(5, index=1), orphan(5, volume_id=None)]
    done = run_repair(cluster, problems, held={1, 2, 3})
    assert 'member of the chunk again' in done[0]
    assert 'knows no such chunk' in done[1]
    assert 'kept' in done[2]
    assert cluster.sent == []


def test_a_missing_replica_is_dropped_unless_it_is_the_last():
    cluster = FakeCluster({(VID, 0): chunk([1, 2, 3])})
    p = dict(orphan(2), problem='missing replica')
    done = run_repair(cluster, [p], held={1, 3})
    assert cluster.master.dropped == [(VID, 0, 2, 7)]
    assert 'dropped from the replica set' in done[0]
    cluster = FakeCluster({(VID, 0): chunk([2])})
    cluster.master.drop_replica = _keeps_last(cluster.master.chunks)
    done = run_repair(cluster, [p], held=set())
    assert 'kept in the replica set' in done[0]


def _keeps_last(chunks):
    async def drop(volume, index, server_id, epoch):
        return chunks[(volume, index)]     # the store keeps a last replica
    return drop


def test_other_problems_are_left_to_the_master():
    cluster = FakeCluster({})
    p = dict(orphan(1), problem='half-made snapshot')
    assert run_repair(cluster, [p], held=set()) == []
