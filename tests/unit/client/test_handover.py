"""The client's write lease at the first write (``lease='on-write'``) and
its hand_over, without processes: a fake master answers the lease calls,
and the volume's I/O (``_write``, ``_write_zeroes``, ``_flush``) is
recorded instead of sent, with the generation it would carry."""

import asyncio
import time
import types

import pytest

from cinder_ursa import exception
from cinder_ursa.client import cluster as cluster_mod
from cinder_ursa.client import volume as volume_mod

MiB = 1 << 20
INFO = {'id': 'vid', 'name': 'vm', 'size': 16 * MiB, 'chunk_size': 4 * MiB,
        'stripe_unit': 4 * MiB, 'stripe_count': 1, 'min_replicas': 1,
        'replicas': 1, 'snap_seq': 0, 'qos': {}, 'parent': None,
        'multiattach': False}


class FakeMaster:
    """The lease calls of AsyncMasterClient: ``pending`` acquires are
    answered HandoverPending (a source handing over) first."""

    def __init__(self, log, pending=0, retry_after=10.0):
        self.log = log
        self.pending = pending
        self.retry_after = retry_after
        self.generation = 0
        self.asked = []         # (monotonic time, handover) of acquires

    async def volume(self, ref):
        return dict(INFO)

    async def servers(self):
        return [{'address': 'cs', 'port': 1, 'state': 'up'}]

    async def acquire_lease(self, vid, holder, force=False, ttl=None,
                            handover=False):
        self.asked.append((time.monotonic(), handover))
        await asyncio.sleep(0.001)
        if self.pending:
            self.pending -= 1
            e = exception.HandoverPending(
                volume='vm', holder='ursa-attach@src', requester=holder,
                since=0.0, timeout=10)
            e.retry_after = self.retry_after
            raise e
        self.generation += 1
        self.log.append(('acquire', self.generation))
        return {'volume_id': vid, 'holder': holder,
                'generation': self.generation,
                'expires_at': time.time() + 30, 'ttl': 30}

    async def renew_lease(self, vid, holder, generation, ttl):
        return {'generation': generation, 'ttl': ttl}

    async def release_lease(self, vid, holder, generation):
        self.log.append(('release', generation))

    async def close(self):
        pass



def open_volume(run, master, lease='on-write', io_timeout=60.0):
    """A volume of a cluster whose master is ``master``, its I/O
    recorded in ``master.log``: ('write', generation), ('flush', dirty)."""
    async def go():
        cl = cluster_mod.Cluster(['http://127.0.0.1:1'], b'k' * 32,
                                 io_timeout=io_timeout)
        cl.master = master
        vol = await cl.open_volume('vm', holder='ursa-attach@dst',
                                   lease=lease)
        vol.gate = asyncio.Event()
        vol.gate.set()

        async def write(offset, data, fua):
            await vol.gate.wait()
            master.log.append(('write', vol.generation))
            vol._dirty[('cs', 1)] = {0: 1}

        async def write_zeroes(offset, length, fua):
            master.log.append(('zero', vol.generation))

        async def flush():
            master.log.append(('flush', bool(vol._dirty)))
            vol._dirty = {}
        vol._write, vol._write_zeroes, vol._flush = write, write_zeroes, flush
        return vol
    return run(go())


def test_on_write_takes_the_lease_at_the_first_write_only(run):
    log = []
    m = FakeMaster(log, pending=3)
    vol = open_volume(run, m)
    assert m.asked == [] and vol.lease_mode == 'on-write'
    # A flush of a volume that wrote nothing takes no lease.
    run(vol.flush())
    assert m.asked == [] and log == [('flush', False)]
    log.clear()

    async def writes():
        # Concurrent first writes share one acquisition.
        await asyncio.gather(*(vol.write(i * 4096, b'x' * 4096)
                               for i in range(5)),
                             vol.write_zeroes(0, 4096))
    run(writes())
    # Three pending answers, retried from 20 ms on, backing off.
    assert [h for _, h in m.asked] == [True] * 4
    gaps = [b[0] - a[0] for a, b in zip(m.asked, m.asked[1:],
                                        strict=False)]
    assert [round(g, 2) >= d for g, d in zip(gaps, (0.02, 0.04, 0.08),
                                             strict=True)] == [True] * 3
    assert max(gaps) < 1.0, gaps
    assert log == [('acquire', 1)] + [('write', 1)] * 5 + [('zero', 1)]
    assert vol._held and vol._lease_task is not None
    run(vol.close())
    assert log[-2:] == [('flush', True), ('release', 1)]


def test_eager_opens_take_the_lease_at_once(run):
    log = []
    m = FakeMaster(log)
    vol = open_volume(run, m, lease='eager')
    assert [h for _, h in m.asked] == [False] and vol._held
    with pytest.raises(exception.InvalidArgument, match='lease must be one '
                       'of eager, on-write'):
        volume_mod.Volume(vol.cluster, INFO, True, lease='lazy')
    with pytest.raises(exception.InvalidArgument, match='not with '
                       'lease=on-write'):
        run(vol.cluster.open_volume('vm', force=True, lease='on-write'))
    run(vol.close())


def test_hand_over_waits_for_writes_flushes_releases_and_ping_pongs(run):
    log = []
    m = FakeMaster(log)
    vol = open_volume(run, m, lease='eager')

    async def scenario():
        vol.gate.clear()        # a write in flight, not answered yet
        first = asyncio.ensure_future(vol.write(0, b'a' * 4096))
        await asyncio.sleep(0.01)
        assert vol._inflight == 1
        handing = asyncio.ensure_future(vol.hand_over())
        await asyncio.sleep(0.01)
        # Writes arriving meanwhile wait; the flush too.
        later = asyncio.ensure_future(vol.write(4096, b'b' * 4096))
        flushed = asyncio.ensure_future(vol.flush())
        await asyncio.sleep(0.01)
        assert not handing.done() and not later.done()
        assert ('release', 1) not in log
        vol.gate.set()
        assert await handing is True
        await first
        await flushed
        # The later write took the lease back (ping-pong).
        await later
        assert vol._held and vol.generation == 2
    run(scenario())
    # (The flush that waited found nothing to flush.)
    assert [x for x in log if x != ('flush', False)] == [
        ('acquire', 1), ('write', 1), ('flush', True), ('release', 1),
        ('acquire', 2), ('write', 2)]
    assert [h for _, h in m.asked] == [False, True]
    # Handed over again: nothing held, nothing renewed, no second call
    # running at once.
    log.clear()

    async def twice():
        return await asyncio.gather(vol.hand_over(), vol.hand_over())
    assert run(twice()) == [True, True]
    assert log == [('flush', True), ('release', 2)]
    assert not vol._held and vol._lease_task is None
    assert vol.lease_mode == 'on-write'
    assert run(vol.hand_over()) is False        # nothing to hand over
    run(vol.close())
    assert log[-1] == ('flush', False)          # no release: not held


def test_a_failed_flush_keeps_the_lease(run):
    log = []
    vol = open_volume(run, FakeMaster(log), lease='eager')
    calls = []

    async def failing():
        calls.append(1)
        if len(calls) == 1:
            raise exception.InsufficientReplicas(have=0, need=1, reason='x')
        log.append(('flush', True))
    vol._flush = failing
    with pytest.raises(exception.InsufficientReplicas):
        run(vol.hand_over())
    assert vol._held and vol._lease_task is not None
    run(vol.write(0, b'c' * 4096))
    # The agent tries again at its next look: handed over.
    assert run(vol.hand_over()) is True
    assert log == [('acquire', 1), ('write', 1), ('flush', True),
                   ('release', 1)]
    run(vol.close())


def test_hand_over_against_close_and_fence(run):
    log = []
    vol = open_volume(run, FakeMaster(log), lease='eager')

    async def both():
        return await asyncio.gather(vol.hand_over(), vol.close())
    assert run(both())[0] is True
    # Released once (by the handover); closing gave back nothing more.
    assert [x for x in log if x[0] == 'release'] == [('release', 1)]
    assert run(vol.hand_over()) is False
    # A fenced volume has nothing to hand over, and writes no more.
    vol = open_volume(run, FakeMaster(log), lease='eager')
    vol._fenced = exception.Fenced(reason='generation 2 took over')
    assert run(vol.hand_over()) is False
    with pytest.raises(exception.Fenced):
        run(vol.write(0, b'd' * 4096))
    run(vol.close())


def test_a_handover_never_done_fails_the_write_after_its_deadline(
        run, monkeypatch):
    monkeypatch.setattr(volume_mod, 'HANDOVER_MARGIN', 0.2)
    log = []
    m = FakeMaster(log, pending=10 ** 6, retry_after=0.1)
    vol = open_volume(run, m, io_timeout=0.1)
    t0 = time.monotonic()
    with pytest.raises(exception.Unavailable, match=r'volume vm: no write '
                       r'lease after 0\.[2-4]\d* s of trying .*hand it '
                       r'over to ursa-attach@dst'):
        run(vol.write(0, b'e' * 4096))
    # The master's deadline (0.1 s) and the margin, not io_timeout alone.
    assert 0.25 < time.monotonic() - t0 < 1.0
    assert ('write', 0) not in log and not vol._held
    # The next write tries again.
    m.pending = 0
    run(vol.write(0, b'e' * 4096))
    assert log == [('acquire', 1), ('write', 1)]
    run(vol.close())


def test_closing_during_the_acquisition_gives_the_lease_back(run):
    log = []
    m = FakeMaster(log, pending=2)
    vol = open_volume(run, m)

    async def scenario():
        w = asyncio.ensure_future(vol.write(0, b'f' * 4096))
        await asyncio.sleep(0.005)
        await vol.close()
        with pytest.raises(exception.InvalidArgument, match='closed'):
            await w
    run(scenario())
    assert not any(x[0] == 'write' for x in log)
    assert log.count(('acquire', 1)) == log.count(('release', 1))


def test_a_chunk_map_fetched_before_the_lease_caches_no_holes(run):
    """A read's chunk map asked before the first write took the lease
    (the source could still allocate chunks: they are absent in it) and
    answered after: its absent chunks are not cached as never written,
    which only the lease's holder may (its reads would then return
    zeros for what the source wrote, its write_zeroes skip them)."""
    log = []
    m = FakeMaster(log)

    async def chunk_map(vid, start, count, allocate=False):
        await m.map_gate.wait()
        return {'chunks': []}
    m.chunk_map = chunk_map
    vol = open_volume(run, m)

    async def scenario():
        m.map_gate = asyncio.Event()
        reading = asyncio.ensure_future(vol._chunk(1, False))
        await asyncio.sleep(0.01)
        await vol.write(0, b'x' * 4096)
        assert vol._held and vol.generation == 1
        m.map_gate.set()
        assert await reading is None
        assert vol._map == {}
        # Asked under the lease: the holes are cached, as ever.
        assert await vol._chunk(1, False) is None
        assert vol._map == {i: None for i in range(4)}
        # And not across a hand_over and a new lease (ping-pong).
        vol._map.clear()
        m.map_gate.clear()
        reading = asyncio.ensure_future(vol._chunk(1, False))
        await asyncio.sleep(0.01)
        assert await vol.hand_over() is True
        await vol.write(0, b'y' * 4096)
        assert vol._held and vol.generation == 2
        m.map_gate.set()
        assert await reading is None
        assert vol._map == {}
    run(scenario())
    run(vol.close())


def test_a_read_ticket_retried_after_a_handover_never_replaces_the_lease(
        run):
    """Where tickets are used, a handover goes back to a read ticket; if
    the master could not issue it then (its failover), it is asked
    again every second.  An answer that comes once the volume took the
    lease again (a write: ping-pong) must not replace the lease's
    ticket (the chunk servers would refuse its writes, and read ticket
    renewals would fight the lease's), nor one that comes once the
    volume is closed start renewing a ticket for ever."""
    def volume():
        m = FakeMaster([])
        m.granted = []
        m.fail = 1

        async def ticket(vid, copy_up=False):
            if m.fail:
                m.fail -= 1
                raise exception.Unavailable(reason='no leader yet')
            await m.ticket_gate.wait()
            return 'read'
        m.ticket = ticket
        acquire = m.acquire_lease

        async def acquire_lease(*args, **kwargs):
            lease = await acquire(*args, **kwargs)
            return dict(lease, ticket='lease-%d' % lease['generation'])
        m.acquire_lease = acquire_lease
        vol = open_volume(run, m, lease='eager')

        async def use_ticket(reply):
            m.granted.append(reply)
            vol._grant = types.SimpleNamespace(ticket=types.SimpleNamespace(
                expires=time.time() + 60))
        vol._use_ticket = use_ticket
        vol.cluster.tickets = True
        return m, vol

    async def scenario(m, vol, then):
        m.ticket_gate = asyncio.Event()
        assert await vol.hand_over() is True
        # The retry asks again after a second; its answer comes late.
        await asyncio.sleep(1.1)
        await then()
        m.ticket_gate.set()
        await asyncio.sleep(0.05)
        return [t for t in asyncio.all_tasks()
                if '_renew_ticket' in repr(t) and not t.done()]

    m, vol = volume()

    async def write_again():
        await vol.write(0, b'z' * 4096)
    renewing = run(scenario(m, vol, write_again))
    assert vol._held and m.granted[-1] == 'lease-2', m.granted
    assert not renewing
    run(vol.close())

    m, vol = volume()
    renewing = run(scenario(m, vol, vol.close))
    assert vol.closed and m.granted == [], m.granted
    assert not renewing
