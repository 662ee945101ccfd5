"""A multiattach volume's writer re-admitted at a newer lease generation
(another host's writers were fenced or detached), without processes: a
fake master answers the lease calls, a fake chunk server refuses the
writes of a generation older than the one it knows (Fenced; NotAuthorized
on a ticket connection, whose ticket was revoked with it), and the
client's write path (``_write_extent``, ``write_soon``), read path and
flushes are the real ones."""

import asyncio
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.client import cluster as cluster_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ZERO
from cinder_ursa.transport import aio

MiB = 1 << 20
BS = 4096
INFO = {'id': '6f1c9b8e-1d7e-4c58-9a52-0e9d4e3c2a11', 'name': 'shared',
        'size': 16 * MiB, 'chunk_size': 4 * MiB, 'stripe_unit': 4 * MiB,
        'stripe_count': 1, 'min_replicas': 1, 'replicas': 1, 'snap_seq': 0,
        'qos': {}, 'parent': None, 'multiattach': True}
HOLDER = 'ursa-attach@cmp2'


class FakeMaster:
    """The master's lease and chunk map calls.  ``generation``: the
    volume's; ``member``: whether this holder is a member of it
    (re-admitted), else its renewals of an older one are Fenced;
    ``renew_delay``: how long a renewal takes; ``down``: renewals raise
    Unavailable (a failover)."""

    def __init__(self, multiattach=True):
        self.info = dict(INFO, multiattach=multiattach)
        self.generation = 1
        self.member = True
        self.renew_delay = 0.02
        self.down = False
        self.renewals = []          # the generation each renewal named

    async def volume(self, ref):
        return dict(self.info)

    async def servers(self):
        return [{'id': 1, 'address': 'cs', 'port': 1, 'state': 'up'}]

    async def acquire_lease(self, vid, holder, force=False, ttl=None,
                            handover=False):
        return {'volume_id': vid, 'holder': holder,
                'generation': self.generation,
                'expires_at': time.time() + 30, 'ttl': 30}

    async def renew_lease(self, vid, holder, generation, ttl):
        self.renewals.append(generation)
        await asyncio.sleep(self.renew_delay)
        if self.down:
            raise exception.Unavailable(reason='no leader')
        if generation != self.generation and not (
                self.member and generation < self.generation and
                self.info['multiattach']):
            raise exception.Fenced(reason='generation %d was replaced by '
                                          '%d' % (generation,
                                                  self.generation))
        return {'volume_id': vid, 'holder': holder,
                'generation': self.generation, 'ttl': ttl,
                'expires_at': time.time() + ttl,
                'ticket': {'generation': self.generation}}

    async def release_lease(self, vid, holder, generation):
        pass

    async def chunk_map(self, vid, start, count, allocate=False):
        return {'volume': {'min_replicas': 1},
                'chunks': [{'index': i, 'epoch': 1, 'replicas': [
                    {'id': 1, 'address': 'cs', 'port': 1}]}
                    for i in range(start, start + count)]}

    async def drop_replica(self, vid, index, sid, epoch):
        raise AssertionError('no replica is dropped: the server is fine')

    async def close(self):
        pass


class FakeServer:
    """A chunk server that knows lease generation ``known`` of the volume:
    a write of an older one is refused as Fenced (with ``tickets``: the
    connection's ticket, of an older generation, is refused for every
    request, NotAuthorized).  ``apply_refused``: a refused write was
    applied first (a replica that knew the new generation refused it
    after the primary applied it, and the primary made every replica
    the same: chunkserver.replication ``_conclude``)."""

    def __init__(self, tickets=False):
        self.known = 1
        self.tickets = tickets
        self.ticket_generation = 1
        self.apply_refused = False
        self.blocks = {}
        self.log = []               # (opcode name, generation, offset)

    def serve(self, raw):
        if isinstance(raw, list):
            raw = b''.join(bytes(x) for x in raw)
        opcode, flags, rid, _ = codec.parse_header(raw)
        body = memoryview(raw)[codec.HEADER_SIZE:]
        if self.tickets and self.ticket_generation < self.known:
            self.log.append(('refused', self.ticket_generation, None))
            raise exception.NotAuthorized(
                reason='ticket of lease generation %d revoked'
                       % self.ticket_generation)
        if opcode == codec.FLUSH:
            self.log.append(('flush', None, None))
            return codec.Frame(opcode | codec.REPLY, 0, rid,
                               codec.encode_ok(opcode, rid)[
                                   codec.HEADER_SIZE:])
        if opcode == codec.READ:
            req = codec.decode_read(body)
            self.log.append(('read', None, req.offset))
            data = b''.join(self.blocks.get(o, bytes(BS)) for o in range(
                req.offset, req.offset + req.length, BS))
            states = None
            if flags & (codec.FLAG_STATES | codec.FLAG_MAP_ONLY):
                states = bytes(DATA if o in self.blocks else ZERO
                               for o in range(req.offset, req.offset +
                                              req.length, BS))
                if flags & codec.FLAG_MAP_ONLY:
                    data = b''
            reply = codec.encode_read_ok(rid, data, states)
            if isinstance(reply, list):
                reply = b''.join(bytes(x) for x in reply)
            return codec.Frame(opcode | codec.REPLY, 0, rid,
                               reply[codec.HEADER_SIZE:])
        req = codec.decode_write(body, flags)
        refused = req.generation < self.known
        self.log.append(('refused' if refused else 'write', req.generation,
                         req.offset))
        if not refused or self.apply_refused:
            for k in range(0, req.length, BS):
                self.blocks[req.offset + k] = bytes(BS) if req.zero else \
                    bytes(req.data[k:k + BS])
        if refused:
            raise exception.Fenced(reason='lease generation %d of volume %s '
                                          'is older than %d' % (
                                              req.generation, req.volume,
                                              self.known))
        return codec.Frame(opcode | codec.REPLY, 0, rid,
                           codec.encode_write_ok(rid, 1)[codec.HEADER_SIZE:])

    def fence(self, generation):
        """The master's FENCE: a new generation."""
        self.known = generation


class FakeConn:
    paused = False
    closed = False
    peer = 'cs:1'

    def __init__(self, server):
        self.server = server

    def call(self, encode, *args, timeout, **kwargs):
        rid = aio.next_req_id()
        frame = encode(rid, *args, **kwargs)

        async def answer():
            await asyncio.sleep(0.001)
            return self.server.serve(frame)
        return answer()

    def send(self, rid, frame):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def answer():
            try:
                fut.set_result(self.server.serve(frame))
            except exception.UrsaError as e:
                fut.set_exception(e)
        loop.call_later(0.001, answer)
        return fut

    def expire_later(self, rid, fut, timeout):
        return asyncio.get_running_loop().call_later(timeout, lambda: None)


class FakePool:
    def __init__(self, server):
        self.conn = FakeConn(server)

    async def get(self, host, port):
        return self.conn

    def connected(self, host, port):
        return self.conn

    def discard(self, host, port):
        pass

    def close(self):
        pass



def open_volume(run, master, server, io_timeout=5.0):
    async def go():
        cl = cluster_mod.Cluster(['http://127.0.0.1:1'], b'k' * 32,
                                 io_timeout=io_timeout)
        cl.master = master
        cl.pool.close()
        cl.pool = FakePool(server)
        vol = await cl.open_volume('shared', holder=HOLDER)
        vol.pool = cl.pool
        if server.tickets:
            # Its ticket: the generation it names is what the fake
            # server checks (the real one: tickets.py, aio.py).
            async def use_ticket(reply):
                server.ticket_generation = reply['generation']
            vol._use_ticket = use_ticket
            vol._grant = 'a ticket'
            cl.tickets = True
        return vol
    return run(go())


def block(n):
    return bytes([n % 251 + 1]) * BS


def test_concurrent_writes_refused_as_fenced_share_one_renewal(run):
    master, server = FakeMaster(), FakeServer()
    vol = open_volume(run, master, server)
    run(vol.write(0, block(0)))
    # The other host fenced: the master re-admitted this writer at
    # generation 2 and told the chunk servers.
    master.generation = 2
    server.fence(2)

    async def writes():
        await asyncio.gather(*(vol.write(n * BS, block(n))
                               for n in range(1, 9)),
                             vol.write_zeroes(9 * BS, BS))
    run(writes())
    assert master.renewals == [1]       # one, for all nine
    assert vol.generation == 2 and vol._fenced is None
    refused = [x for x in server.log if x[0] == 'refused']
    assert len(refused) == 9 and {x[1] for x in refused} == {1}
    assert sorted(x[2] for x in server.log if x[0] == 'write' and
                  x[1] == 2) == [n * BS for n in range(1, 10)]
    assert run(vol.read(0, 10 * BS)) == b''.join(
        block(n) for n in range(9)) + bytes(BS)
    # The volume's renewals go on at the new generation.
    run(vol._renew_once(30))
    assert master.renewals == [1, 2]
    run(vol.close())


def test_a_refused_write_that_was_applied_is_written_again_the_same(run):
    """The primary applied the write before a replica refused it: sent
    again, it leaves the block as the writer meant it."""
    master, server = FakeMaster(), FakeServer()
    server.apply_refused = True
    vol = open_volume(run, master, server)
    master.generation = 2
    server.fence(2)
    run(vol.write(BS, block(7)))
    assert [x for x in server.log if x[2] == BS] == [
        ('refused', 1, BS), ('write', 2, BS)]
    assert server.blocks[BS] == block(7)
    run(vol.close())


def test_the_fast_path_write_is_retried_too(run):
    master, server = FakeMaster(), FakeServer()
    vol = open_volume(run, master, server)
    run(vol.write(0, block(0)))         # the chunk map is cached now
    master.generation = 2
    server.fence(2)

    async def soon():
        done = asyncio.get_running_loop().create_future()
        assert vol.write_soon(BS, block(1), False, done.set_result)
        return await done
    assert run(soon()) is None
    assert server.log[-2:] == [('refused', 1, BS), ('write', 2, BS)]
    run(vol.close())


def test_a_writer_not_re_admitted_is_fenced_for_good(run):
    master, server = FakeMaster(), FakeServer()
    vol = open_volume(run, master, server)
    master.generation, master.member = 2, False
    server.fence(2)

    async def writes():
        return await asyncio.gather(*(vol.write(n * BS, block(n))
                                      for n in range(4)),
                                    return_exceptions=True)
    errors = run(writes())
    assert master.renewals == [1]
    assert all(isinstance(e, exception.Fenced) for e in errors), errors
    # The master's answer, kept: every later write fails at once.
    assert vol._fenced is errors[0] and 'replaced by 2' in str(errors[0])
    sent = len(server.log)
    with pytest.raises(exception.Fenced, match='replaced by 2'):
        run(vol.write(0, block(0)))
    assert len(server.log) == sent and master.renewals == [1]
    assert not any(x[0] == 'write' and x[1] == 2 for x in server.log)
    run(vol.close())


def test_an_exclusive_volume_is_not_retried(run):
    master, server = FakeMaster(multiattach=False), FakeServer()
    vol = open_volume(run, master, server)
    master.generation = 2
    server.fence(2)
    with pytest.raises(exception.Fenced, match='older than 2'):
        run(vol.write(0, block(0)))
    assert master.renewals == [] and vol.generation == 1
    # Nor does its renewal adopt a generation (the master never gives
    # an exclusive holder another: this one is Fenced).
    with pytest.raises(exception.Fenced):
        run(vol._renew_once(30))
    run(vol.close())


def test_the_retry_waits_for_the_master_within_io_timeout(run):
    master, server = FakeMaster(), FakeServer()
    vol = open_volume(run, master, server, io_timeout=1.0)
    master.generation = 2
    server.fence(2)
    master.down = True
    t0 = time.monotonic()
    with pytest.raises(exception.Fenced, match='older than 2'):
        run(vol.write(0, block(0)))
    took = time.monotonic() - t0
    assert 0.9 < took < 2.0, took
    assert len(master.renewals) > 2
    # Not fenced for good: the master could not say.  Back, it
    # re-admits the next write.
    assert vol._fenced is None
    master.down = False
    run(vol.write(0, block(0)))
    assert vol.generation == 2
    run(vol.close())


def test_a_renewal_adopts_a_newer_generation(run):
    master, server = FakeMaster(), FakeServer()
    vol = open_volume(run, master, server)
    master.generation = 2
    server.fence(2)
    run(vol._renew_once(30))
    assert vol.generation == 2
    run(vol.write(0, block(0)))
    assert server.log == [('write', 2, 0)]
    run(vol.close())


def test_a_revoked_ticket_is_renewed_for_reads_writes_and_flushes(run):
    """On a ticket connection every request of the old generation's
    ticket is refused (NotAuthorized), reads and flushes too: each asks
    for the re-admission, none drops a replica."""
    for first in ('read', 'write', 'flush'):
        master, server = FakeMaster(), FakeServer(tickets=True)
        vol = open_volume(run, master, server)
        run(vol.write(0, block(3)))
        master.generation = 2
        server.fence(2)
        if first == 'read':
            assert run(vol.read(0, BS)) == block(3)
        elif first == 'write':
            run(vol.write(BS, block(4)))
        else:
            run(vol.flush())
        assert master.renewals == [1], first
        assert server.ticket_generation == 2 and vol.generation == 2
        assert server.log[1][0] == 'refused'
        run(vol.close())


def test_re_admitted_again_at_each_other_hosts_fence(run):
    master, server = FakeMaster(), FakeServer()
    vol = open_volume(run, master, server)
    for generation in (2, 3):
        master.generation = generation
        server.fence(generation)

        async def writes():
            await asyncio.gather(*(vol.write(n * BS, block(n))
                                   for n in range(4)))
        run(writes())
        assert vol.generation == generation
    assert master.renewals == [1, 2]
    run(vol.close())


PARENT_ID = '0b6f3a52-93c4-4b8e-a7a1-5d2f6c1e9b07'


class CloneMaster(FakeMaster):
    """The volume is a clone of a snapshot of volume PARENT_ID, and has
    written (allocated) no chunk of its own: every block reads from the
    parent snapshot, through the clone's connections (its ticket names
    the parent readable)."""

    def __init__(self):
        super().__init__()
        self.info['parent'] = {'snapshot_id': 'snap-1', 'snapshot_name':
                               's', 'volume_id': PARENT_ID,
                               'volume_name': 'base', 'seq': 1,
                               'size': INFO['size']}

    async def snapshot(self, ref):
        return {'id': 'snap-1', 'name': 's', 'volume_id': PARENT_ID,
                'volume_name': 'base', 'seq': 1, 'size': INFO['size'],
                'chunk_size': INFO['chunk_size'],
                'stripe_unit': INFO['stripe_unit'], 'stripe_count': 1,
                'parent': None}

    async def chunk_map(self, vid, start, count, allocate=False):
        reply = await super().chunk_map(vid, start, count, allocate)
        if vid != PARENT_ID and not allocate:
            reply['chunks'] = []
        return reply


def test_a_clones_parent_read_on_a_revoked_ticket_re_admits(run):
    """A multiattach clone reads the blocks it never wrote from its
    parent snapshot on its own ticket connections; once another host is
    fenced, that ticket is revoked on every chunk server, and the first
    request refused may be a parent read (a chunk the clone never
    allocated asks no server of its own): it must ask for the
    re-admission like the clone's own requests, not fail the read of a
    writer that was re-admitted."""
    master, server = CloneMaster(), FakeServer(tickets=True)
    server.blocks[0] = block(5)
    server.blocks[BS] = block(6)
    vol = open_volume(run, master, server)
    assert run(vol.read(0, BS)) == block(5)
    master.generation = 2
    server.fence(2)
    assert run(vol.read(0, BS)) == block(5)
    assert master.renewals == [1]
    assert vol.generation == 2 and server.ticket_generation == 2
    # A partial-block write copies the parent's block up first: the
    # same, at the next fence.
    master.generation = 3
    server.fence(3)
    run(vol.write(BS + 512, b'x' * 512))
    assert master.renewals == [1, 2] and vol.generation == 3
    assert [x for x in server.log if x[0] == 'write'] == [
        ('write', 3, BS), ('write', 3, BS + 512)]
    # The block status of a chunk the clone never wrote (allocated) is
    # the parent's: asked through the clone's connections too.
    # (The fake server keeps blocks by offset in a chunk, whatever the
    # chunk: blocks 0 and 1 hold data.)
    master.generation = 4
    server.fence(4)
    assert run(vol.block_status(4 * MiB, 3 * BS)) == [(2 * BS, DATA),
                                                       (BS, ZERO)]
    assert master.renewals == [1, 2, 3] and vol.generation == 4
    run(vol.close())


def test_a_fenced_writers_flush_drops_no_replica(run):
    """A flush refused because this writer is fenced (its ticket
    revoked, NotAuthorized) is no failure of the chunk server's: the
    server is fine, and dropping it from the replica sets (what a flush
    does to a server that failed it) would take healthy replicas from
    the writers that replaced this one.  Not after the re-admission is
    refused (the volume fenced for good: later flushes ask no more), nor
    on an exclusive volume, whose refusals are never retried."""
    for multiattach in (True, False):
        master = FakeMaster(multiattach=multiattach)
        server = FakeServer(tickets=True)
        vol = open_volume(run, master, server)
        run(vol.write(0, block(1)))
        master.generation, master.member = 2, False
        server.fence(2)
        for _ in range(2):
            # (FakeMaster.drop_replica fails the test.)
            with pytest.raises((exception.Fenced, exception.NotAuthorized)):
                run(vol.flush())
        assert master.renewals == ([1] if multiattach else [])
        if multiattach:
            run(vol.close())        # fenced: nothing to flush
        else:
            # (Not told it is fenced: its close flushes, refused too.)
            with pytest.raises(exception.NotAuthorized):
                run(vol.close())
        assert vol.closed
