"""The master's cluster protocols, on a real SQLite store, with the chunk
servers faked at the one seam they have (``ChunkServers.broadcast``): the
order of database commits and broadcasts, and what a failed broadcast
leaves behind."""

import asyncio
import time

import pytest
import sqlalchemy as sa
from tooz import coordination

from cinder_ursa import exception
from cinder_ursa.master import election
from cinder_ursa.master import models
from cinder_ursa.master import service as service_mod
from cinder_ursa.master import store as store_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from tests.fixtures.master import add_servers

MiB = 1024 * 1024


class FakeChunkServers:
    """Records each broadcast (opcode, the database state when sent) and
    fails the servers listed in ``down``."""

    def __init__(self, store):
        self.store = store
        self.sent = []
        self.down = set()
        self.term = None

    def new_term(self, term):
        self.term = term

    async def broadcast(self, servers, make_frame, timeout=5.0):
        frame = codec.FrameDecoder().feed(make_frame(1))[0]
        self.sent.append((frame.opcode, frame.body, [s['id']
                                                     for s in servers]))
        return [s['id'] for s in servers if s['id'] in self.down]

    async def send(self, server, make_frame, timeout=5.0):
        """One server: recorded with the chunk's membership when sent."""
        frame = codec.FrameDecoder().feed(b''.join(
            bytes(b) for b in _parts(make_frame(1))))[0]
        self.sent.append((frame.opcode, frame.body, [server['id']]))
        if server['id'] in self.down:
            raise exception.UrsaConnectionError(peer=server['id'],
                                                reason='down')
        return codec.FrameDecoder().feed(codec.encode_write_ok(1, 0))[0]

    def close(self):
        pass


def _parts(frame):
    return frame if isinstance(frame, list) else [frame]


@pytest.fixture
def service(tmp_path):
    store = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'))
    store.upgrade()
    svc = service_mod.MasterService(store, b'k' * 32)
    svc.chunkservers = FakeChunkServers(store)
    add_servers(store, 3)
    yield svc
    svc.stop()
    store.close()


def run(coro):
    return asyncio.run(coro)


def test_a_new_lease_is_committed_before_it_is_fenced(service):
    service.store.create_volume('v', 8 * MiB)
    lease = run(service.acquire_lease('v', 'host-a:1:x', 30))
    opcode, body, to = service.chunkservers.sent[-1]
    assert opcode == codec.FENCE and len(to) == 3
    vol, gen = control.decode_fence(body)
    assert gen == lease['generation']
    # What chunk servers confirm the FENCE against is already there.
    assert service.store.get_volume('v')['lease']['generation'] == gen
    revoked = run(service.revoke_lease('v'))
    assert control.decode_fence(service.chunkservers.sent[-1][1])[1] == \
        revoked['generation'] == gen + 1


def test_a_snapshot_not_confirmed_by_every_server_is_not_created(service):
    service.store.create_volume('v', 8 * MiB)
    service.chunkservers.down = {2}
    with pytest.raises(exception.Unavailable, match='did not confirm'):
        run(service.create_snapshot('v', 's1'))
    assert service.store.list_snapshots('v') == []
    # The servers that did adopt its sequence are told what is left.
    assert [op for op, *_ in service.chunkservers.sent] == [
        codec.SNAPSHOT, codec.SNAPSHOT]
    service.chunkservers.down = set()
    snap = run(service.create_snapshot('v', 's1'))
    assert snap['name'] == 's1' and snap['status'] == 'available'


def test_deleting_a_volume_tells_the_servers_then_forgets_it(service):
    service.store.create_volume('v', 8 * MiB)
    run(service.delete_volume('v'))
    assert service.chunkservers.sent[-1][0] == codec.DELETE
    with pytest.raises(exception.NotFound):
        service.store.get_volume('v')


def test_usage_from_heartbeats(service):
    vol = service.store.create_volume('v', 8 * MiB, replicas=2,
                                      min_replicas=1)
    service.note_usage(1, {vol['id']: 3 * MiB})
    service.note_usage(2, {vol['id']: 3 * MiB})
    assert service.allocated(dict(vol))['allocated_bytes'] == 3 * MiB
    assert service.allocated_total() == 6 * MiB


def chunk_and_spare(service):
    """A 4th server, and a chunk on the other three: (chunk, its replicas'
    ids, the 4th server's id)."""
    store = service.store
    store.register_server('uuid-4th', 'd', 'r', '127.0.0.1', 9009, 10 ** 12,
                          0, 10 ** 12)
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    held = [r['id'] for r in c['replicas']]
    spare = next(s['id'] for s in store.list_servers()
                 if s['id'] not in held)
    return c, held, spare


def test_joining_copies_no_copy_makes_are_given_up(service, monkeypatch):
    """A copy whose primary (or an earlier master) died mid-way leaves a
    joining entry that would count as a copy for good: the repairer gives
    it up once no copy could still be running, and the chunk is planned
    again."""
    store = service.store
    c, held, spare = chunk_and_spare(service)
    store.join_replica('v', 0, spare, c['epoch'])
    started = []

    async def no_copy(job, source):
        started.append(job)
    monkeypatch.setattr(service, '_run_job', no_copy)
    run(service.repair_round())
    assert store.chunk_members('v', 0)['joining'] == [spare]
    assert started == []                 # the joining copy counts
    monkeypatch.setattr(service_mod, 'REBUILD_TIMEOUT', -1)
    run(service.repair_round())
    assert store.chunk_members('v', 0)['joining'] == []


def test_abandon_joins_needs_a_joining_copy(service):
    store = service.store
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    with pytest.raises(exception.Conflict, match='no joining'):
        store.abandon_joins('v', 0, c['epoch'])


def retire_setup(service):
    """A chunk on servers 1-3 with a 4th replica promoted on server 4."""
    store = service.store
    c, held, spare = chunk_and_spare(service)
    j = store.join_replica('v', 0, spare, c['epoch'])
    p = store.promote_replica('v', 0, spare, j['epoch'])
    return p, held, spare


def test_retiring_a_replica_tells_it_before_it_goes_then_deletes_it(
        service):
    store = service.store
    p, held, spare = retire_setup(service)
    vid = store.get_volume('v')['id']
    sent = service.chunkservers.sent
    sent.clear()
    assert run(service.retire(vid, 0, held[0]))
    m = store.chunk_members(vid, 0)
    assert m['replicas'] == held[1:] + [spare] and m['joining'] == []
    assert m['epoch'] == p['epoch'] + 2
    # Leaving (epoch + 1): told to the leaving server and the replicas;
    # gone (epoch + 2): told to the replicas; then its copy deleted.
    ops = [(op, to[0], codec.decode_replicate(body, 0).epoch
            if op == codec.REPLICATE else None) for op, body, to in sent]
    first = p['epoch'] + 1
    assert sorted(ops[:4]) == sorted(
        [(codec.REPLICATE, sid, first) for sid in held + [spare]])
    assert sorted(ops[4:7]) == sorted(
        [(codec.REPLICATE, sid, first + 1) for sid in held[1:] + [spare]])
    assert ops[7][:2] == (codec.DELETE, held[0])
    assert control.decode_delete(sent[7][1]) == (vid, 0)
    assert len(ops) == 8 and service.retired == 1


def test_a_leaving_server_not_told_keeps_its_copy_and_joins(service):
    store = service.store
    p, held, spare = retire_setup(service)
    vid = store.get_volume('v')['id']
    service.chunkservers.down = {held[1]}
    service.chunkservers.sent.clear()
    assert not run(service.retire(vid, 0, held[1]))
    m = store.chunk_members(vid, 0)
    assert m['joining'] == [held[1]] and held[1] not in m['replicas']
    assert codec.DELETE not in [op for op, *_ in service.chunkservers.sent]
    # Never below the volume's replicas.
    with pytest.raises(exception.Conflict):
        run(service.retire(vid, 0, held[0]))


async def _round_and_its_jobs(service):
    await service.repair_round()
    while service._jobs:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize('changed', [False, True],
                         ids=['told-later', 'chunk-changed-meanwhile'])
def test_a_retire_left_unfinished_is_finished_by_the_next_round(
        service, changed):
    """A leaving server not told (or told an epoch a drop had already moved
    on) stays a joining copy, which counts for a replica the chunk lacks:
    the next repair round finishes the retire, at the chunk's epoch of
    then, instead of the orphans' 10 minutes with nothing copied."""
    store = service.store
    p, held, spare = retire_setup(service)
    vid = store.get_volume('v')['id']
    service.chunkservers.down = {held[1]}
    assert not run(service.retire(vid, 0, held[1]))
    if changed:
        # A primary dropped another replica meanwhile (epoch + 1).
        m = store.chunk_members(vid, 0)
        store.drop_replica(vid, 0, held[2], m['epoch'])
    service.chunkservers.down = set()
    sent = service.chunkservers.sent
    sent.clear()
    run(_round_and_its_jobs(service))
    m = store.chunk_members(vid, 0)
    assert m['joining'] == [] and held[1] not in m['replicas']
    assert (codec.DELETE, [held[1]]) in [(op, to) for op, _, to in sent]
    assert service.retired == 1 and service._leaving == {}
    if changed:
        # The chunk lacks a copy now, and the next round makes it.
        assert len(m['replicas']) == 2
        started = []

        async def no_copy(job, source):
            started.append(job)
        service._run_job = no_copy
        run(service.repair_round())
        assert [j.target for j in started] == [held[2]]


def test_progress_counts_bytes_left_and_moves(service, monkeypatch):
    store = service.store

    async def no_copy(job, source):
        pass
    monkeypatch.setattr(service, '_run_job', no_copy)
    ids = [s['id'] for s in store.list_servers()]
    vol = store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    store.chunk_map('v', 0, 2, allocate=True)
    for sid in ids:
        service.note_usage(sid, {vol['id']: 8 * MiB})   # 4 MiB a replica
    store.set_draining(ids[0], True)
    c = store.chunk_map('v', 0, 1)['chunks'][0]
    store.drop_replica('v', 0, ids[1], c['epoch'])
    service.rebalance_moves = 0
    run(service.repair_round())
    st = service.repair_status()
    # Chunk 0: one copy missing, and its replica on the draining server
    # to move; chunk 1: the move.  Two drains, three copies of 4 MiB.
    assert st['moves_pending'] == 2
    # 24 MiB in 5 replicas: 2 copies of chunk 0, 1 of chunk 1.
    assert st['bytes_left_estimate'] == 2 * 24 * MiB // 5 + 24 * MiB // 5
    assert st['rate_bytes_per_s'] == 0 and st['eta_s'] is None


def test_a_server_that_failed_a_write_is_taken_as_down_until_it_beats(
        service, monkeypatch):
    """A primary dropped a server (it failed a write) before the master
    saw it miss its heartbeats: the planner waits for it as for a server
    down within the grace period, instead of copying to a dead server
    and then elsewhere in full; a heartbeat after the failure clears it."""
    store = service.store
    c, _, _ = chunk_and_spare(service)
    victim = c['replicas'][1]['id']
    store.drop_replica('v', 0, victim, c['epoch'])
    service.note_failure(victim)
    started = []

    async def no_copy(job, source):
        started.append(job)
    monkeypatch.setattr(service, '_run_job', no_copy)
    run(service.repair_round())
    assert started == []
    assert service.repair_status()['waiting'] == 1
    store.heartbeat(victim, 10 ** 12, 0, 10 ** 12)
    run(service.repair_round())
    assert [(j.target, j.priority) for j in started] == [
        (victim, service_mod.repair.RETURNING)]


def test_a_server_that_registers_again_is_no_longer_avoided(service):
    """A copy to a killed server fails and keeps it from being a target
    for a while; started again, it registers and is a target at once (its
    chunks wait for it meanwhile: see the planner)."""
    service._avoid = {3: time.monotonic() + 600, 4: time.monotonic() + 600}
    service.registered(3)
    assert list(service._avoid) == [4]


def test_background_loops_run_on_the_leader_only(tmp_path):
    """With election: nothing runs and nothing is written before this
    master leads; elected, the watcher and the repairer start (the watcher
    first restarts the heartbeat clocks); deposed, they stop and the
    planner refuses."""
    store = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'))
    store.upgrade()
    # As ursa-master builds it (cmd/master.coordination_url).
    coord_url = 'file://%s?timeout=5&executor=synchronous' % (
        tmp_path / 'coordination')
    svc = service_mod.MasterService(store, b'k' * 32,
                                    coordination_url=coord_url,
                                    renew_deadline=2.0)
    svc.chunkservers = FakeChunkServers(store)

    async def go():
        svc.start()
        assert svc._monitor is None and not svc.is_leader()
        with pytest.raises(exception.NotLeader, match='starting'):
            await svc.db(store.create_volume, 'v', 4 * MiB,
                         chunk_size=4 * MiB)
        await svc.start_election('http://me')
        assert svc.is_leader() and svc.masters()['term'] == 1
        assert svc._monitor is not None and svc._repairer is not None
        # Every chunk server hears of the term at once (TERM broadcast).
        assert svc.chunkservers.term == 1
        await svc._announcing
        assert [b for op, b, _ in svc.chunkservers.sent
                if op == codec.TERM] == [control.encode_u64(1)]
        await svc.db(store.create_volume, 'v', 4 * MiB, chunk_size=4 * MiB)
        # Another master (in the group) takes the next term: this one
        # steps down on its next round.
        other = coordination.get_coordinator(coord_url, b'http://other')
        other.start()
        other.join_group(election.GROUP).get()
        assert await svc.db(store.take_term, 1, 'http://other') == 2
        await svc.elector.round()
        assert not svc.is_leader()
        assert svc._monitor is None and svc._repairer is None
        assert svc.chunkservers.term is None
        with pytest.raises(exception.NotLeader, match='http://other'):
            await svc.repair_round()
        await svc.stop_election()
        other.stop()
    try:
        asyncio.run(go())
    finally:
        svc.stop()
        store.close()


def test_a_failed_takeover_neither_hangs_snapshots_nor_stops_the_watcher(
        tmp_path):
    """A database error while settling the previous master's leftovers
    (SQLAlchemy's, not an Ursa error) is logged: snapshot creations, which
    wait for that step, go on, and so does the chunk-server watcher."""
    import sqlalchemy.exc
    store = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'))
    store.upgrade()
    add_servers(store, 3)
    store.create_volume('v', 8 * MiB)
    calls = []
    forget = store.forget_unfinished_snapshots

    def flaky(*args):
        calls.append(args)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError(
                'DELETE', {}, Exception('database is locked'))
        return forget(*args)
    store.forget_unfinished_snapshots = flaky
    svc = service_mod.MasterService(store, b'k' * 32, server_timeout=0.6)
    svc.chunkservers = FakeChunkServers(store)

    async def go():
        svc.start()
        try:
            snap = await asyncio.wait_for(svc.create_snapshot('v', 's'), 10)
            assert snap['status'] == 'available'
            await asyncio.sleep(0.5)
            assert not svc._monitor.done()
        finally:
            svc._stop_loops()

    asyncio.run(go())
    assert calls, 'the sweep never ran: no test'


@pytest.mark.parametrize('error,target_avoided', [
    (exception.UrsaConnectionError(peer='3', reason='refused'), True),
    (exception.Unavailable(reason='volume v was reverted or collected '
                                  'during the copy of chunk 0'), False),
    (exception.ChecksumError(reason='block 3 of the source'), False),
])
def test_a_failed_copy_avoids_the_target_only_when_it_may_be_to_blame(
        service, error, target_avoided):
    """A target that could not be reached may be dead: not chosen again
    for a while.  A copy that failed for the chunk's sake (a snapshot
    collection raced it, a bad source block) holds that chunk back
    briefly and leaves the target alone: it was not to blame, and
    avoiding it left chunks under-replicated while it was healthy."""
    async def failing(server, make_frame, timeout=5.0):
        raise error
    service.chunkservers.send = failing
    job = service_mod.repair.Job('vid', 0, 1, 1, 3, 0, None)
    assert run(service._copy(job, {'id': 1, 'address': 'h', 'port': 1})) \
        is False
    assert (3 in service._avoid) is target_avoided
    held = service._held_back.get(('vid', 0))
    assert (held is None) is target_avoided
    if held is not None:
        assert held[0] - time.monotonic() <= service_mod.HOLD_BACK_MAX


def _heard_ago(store, ages):
    """Set the last heartbeat of servers ({id: seconds ago})."""
    t = models.chunkservers
    with store.begin() as conn:
        for sid, age in ages.items():
            conn.execute(sa.update(t).where(t.c.id == sid).values(
                last_seen=time.time() - age))


def test_a_master_that_hears_no_server_marks_none_down(service):
    """Every server silent at once: the master is the one cut off; once
    one is heard again, the others' silence counts from then."""
    service.server_timeout = 3.0
    _heard_ago(service.store, {1: 5.0, 2: 4.0, 3: 3.5})
    assert run(service._deaf())
    _heard_ago(service.store, {1: 0.0})
    assert not run(service._deaf())
    assert service.store.mark_down(3.0) == []


def test_one_silent_server_among_heard_ones_is_marked_down(service):
    service.server_timeout = 3.0
    _heard_ago(service.store, {1: 5.0, 2: 0.5, 3: 1.0})
    assert not run(service._deaf())
    assert service.store.mark_down(3.0) == [1]


def test_a_new_leader_tells_every_dropped_server_again(service):
    """The drops a master had still to tell (at the servers' next
    heartbeats) die with it: its successor tells every server a chunk
    lists as lost, at the chunk's epoch now."""
    service.store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    chunks = service.store.chunk_map('v', 0, 2, allocate=True)['chunks']
    vid = service.store.get_volume('v')['id']
    dropped = {}
    for c in chunks:
        sid = c['replicas'][-1]['id']
        after = service.store.drop_replica('v', c['index'], sid, c['epoch'])
        dropped.setdefault(sid, []).append([vid, c['index'],
                                            after['epoch']])
    assert all(service.take_drops(sid) == [] for sid in dropped)
    run(service._take_over())
    for sid, drops in dropped.items():
        assert sorted(service.take_drops(sid)) == sorted(drops)


def test_after_a_cold_start_servers_not_heard_yet_are_given_time(service):
    """No server beat for server_timeout before this master took over:
    the whole cluster is starting, and those not heard yet are judged
    only after server_startup_timeout; one heard is judged as usual,
    and so is everyone once that time is over."""
    service.server_timeout = 3.0
    service.server_startup_timeout = 60.0
    _heard_ago(service.store, {1: 30.0, 2: 30.0, 3: 30.0})
    run(service._take_over())
    assert service._judged() == set()
    service.seen(2)
    assert service._judged() == {2}
    service._booting_until = time.monotonic() - 1
    assert service._judged() is None


def test_after_a_failover_every_server_is_judged_as_usual(service):
    """The servers were beating until the take-over (a master restart or
    failover): one that died meanwhile is judged by server_timeout."""
    service.server_timeout = 3.0
    _heard_ago(service.store, {1: 1.0, 2: 0.5, 3: 2.0})
    run(service._take_over())
    assert service._judged() is None


def test_the_deaf_masters_reset_does_not_end_the_startup_time(service):
    """A cold start where no server reports for two thirds of
    server_timeout: the master takes itself for deaf, then resets every
    heartbeat when one is heard; the others still have their time."""
    service.server_timeout = 3.0
    _heard_ago(service.store, {1: 30.0, 2: 30.0, 3: 30.0})
    run(service._take_over())
    _heard_ago(service.store, {1: 5.0, 2: 5.0, 3: 5.0})
    assert run(service._deaf())
    service.store.heartbeat(1, 1, 0, 1)
    service.seen(1)
    assert not run(service._deaf())         # resets every heartbeat
    _heard_ago(service.store, {1: 0.0, 2: 4.0, 3: 4.0})
    assert service.store.mark_down(service.server_timeout, None,
                                   service._judged()) == []
