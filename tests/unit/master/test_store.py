"""The SQL metadata store on a real SQLite file."""

import pytest

from cinder_ursa import exception
from cinder_ursa.master import store as store_mod
from tests.fixtures.master import add_servers

MiB = 1024 * 1024


def one_chunk(store):
    """Four servers and volume 'v' with one chunk allocated: (the chunk,
    its replicas' server ids, the server holding no copy)."""
    ids = add_servers(store, 4)
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    held = [r['id'] for r in c['replicas']]
    return c, held, next(i for i in ids if i not in held)


def test_schema_is_versioned_and_upgrade_is_idempotent(store):
    assert store.schema_version() == '0015'
    store.upgrade()
    assert store.schema_version() == '0015'


def test_volume_lifecycle(store):
    v = store.create_volume('v1', 100 * MiB, chunk_size=4 * MiB)
    assert v['name'] == 'v1' and v['stripe_unit'] == 4 * MiB
    assert store.get_volume('v1')['id'] == v['id']
    assert store.get_volume(v['id'])['name'] == 'v1'
    with pytest.raises(exception.AlreadyExists):
        store.create_volume('v1', 100 * MiB)
    assert [x['name'] for x in store.list_volumes()] == ['v1']
    vol, servers = store.begin_delete('v1')
    store.finish_delete(vol['id'])
    with pytest.raises(exception.NotFound):
        store.get_volume('v1')


@pytest.mark.parametrize('kwargs,match', [
    (dict(size=0), 'positive'),
    (dict(size=4097), '4 KiB'),
    (dict(replicas=0), 'replicas'),
    (dict(replicas=2, min_replicas=3), 'min_replicas'),
    (dict(chunk_size=3 * MiB), 'power of two'),
    (dict(stripe_unit=3000), 'stripe unit'),
    (dict(stripe_count=0), 'stripe count'),
])
def test_volume_validation(store, kwargs, match):
    args = dict(name='v', size=8 * MiB)
    args.update(kwargs)
    with pytest.raises(exception.InvalidArgument, match=match):
        store.create_volume(**args)


# Each breaks something: a file name of ursa-attach's mount (".", "..",
# "/", NUL, a leading "." hides it or takes the trash's prefix), an NBD
# export name ("@" names a snapshot), a command's argument (a leading
# "-"), a log line (newline, control characters), or bytes vs characters.
BAD_NAMES = ['', '.', '..', '.hidden', '.trash-1', '-rf', 'x@y', 'a/b',
             'a b', 'a\nb', 'a\rb', 'a\x00b', 'tab\t', 'del\x7f', '%2e%2e',
             'caf\u00e9', '\u4e2d\u6587', '\U0001f680', 'n' * 256, 5, None]
GOOD_NAMES = ['v', 'volume-1b4e28ba-2fa1-11d2-883f-0016d3cca427', '_x',
              'a.b_c-d', '9', 'snapshot-1.2', 'n' * 255]


@pytest.mark.parametrize('name', BAD_NAMES, ids=ascii)
def test_names_outside_the_safe_set_are_refused(store, name):
    store.create_volume('v', 4 * MiB)
    snap = store.begin_snapshot('v', 's')
    store.finish_snapshot(snap['id'], True)
    for what, create in (
            ('volume name', lambda: store.create_volume(name, 4 * MiB)),
            ('volume name', lambda: store.create_volume(
                name, 4 * MiB, parent=snap['id'])),
            # (None there means "keep the name".)
            ('volume name', lambda: store.update_volume(
                'v', name=name if name is not None else 5)),
            ('snapshot name', lambda: store.begin_snapshot('v', name)),
            ('snapshot name', lambda: store.rename_snapshot(snap['id'],
                                                            name))):
        with pytest.raises(exception.InvalidArgument) as ei:
            create()
        msg = str(ei.value)
        # Says what is allowed, and stays one line whatever the name.
        assert what in msg and 'A-Z a-z 0-9 . _ -' in msg, msg
        assert '\n' not in msg and '\x00' not in msg and len(msg) < 300
    assert [v['name'] for v in store.list_volumes()] == ['v']
    assert [x['name'] for x in store.list_snapshots()] == ['s']


def test_names_in_the_safe_set_are_taken(store):
    store.create_volume('base', 4 * MiB)
    for name in GOOD_NAMES:
        snap = store.begin_snapshot('base', name)
        store.finish_snapshot(snap['id'], True)
        assert store.create_volume(name, 4 * MiB)['name'] == name
        renamed = (name + '.x')[:255]
        assert store.update_volume(name, name=renamed)['name'] == renamed
    assert len(store.list_volumes()) == len(GOOD_NAMES) + 1


def test_a_name_from_before_the_rule_keeps_working(store):
    """An upgrade keeps the names volumes and snapshots already have:
    they are found, grown, snapshotted and renamed (to a valid name)."""
    from cinder_ursa.master import models
    old = 'x@y \u00e9'
    vid = store.create_volume('v', 4 * MiB)['id']
    sid = store.begin_snapshot('v', 's')['id']
    store.finish_snapshot(sid, True)
    with store.engine.begin() as conn:
        conn.execute(models.volumes.update().values(name=old))
        conn.execute(models.snapshots.update().values(name='s 1'))
    assert store.get_volume(old)['id'] == vid
    assert store.resize(old, 8 * MiB)['size'] == 8 * MiB
    assert store.update_volume(old, qos={'read_iops_sec': 5})['name'] == old
    snap = store.begin_snapshot(old, 's2')
    store.finish_snapshot(snap['id'], True)
    assert store.get_snapshot('%s@s 1' % old)['id'] == sid
    assert store.rename_snapshot('%s@s 1' % old, 's1')['name'] == 's1'
    assert store.update_volume(old, name='renamed')['id'] == vid


def test_thin_allocation_on_demand(store):
    add_servers(store, 4)
    v = store.create_volume('v', 40 * MiB, chunk_size=4 * MiB)
    m = store.chunk_map('v', 0, 10)
    assert m['chunks'] == []
    m = store.chunk_map('v', 3, 2, allocate=True)
    assert [c['index'] for c in m['chunks']] == [3, 4]
    for c in m['chunks']:
        assert c['epoch'] == 1 and len(c['replicas']) == 3
    assert store.get_volume(v['id'])['allocated_chunks'] == 2
    # Allocating again returns the same replica sets.
    again = store.chunk_map('v', 3, 2, allocate=True)['chunks']
    assert again == m['chunks']
    with pytest.raises(exception.OutOfRange):
        store.chunk_map('v', 9, 2)


def test_a_dropped_primary_marks_its_chunk_for_a_resync(store):
    """Kept in the database, so that a master taking over compares the
    replicas its predecessor had not."""
    add_servers(store, 4)
    store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    vid = store.get_volume('v')['id']
    c0, c1 = store.chunk_map('v', 0, 2, allocate=True)['chunks']
    # A replica that is not the primary: nothing to compare.
    store.drop_replica('v', 0, c0['replicas'][1]['id'], c0['epoch'])
    assert store.pending_resyncs() == []
    store.drop_replica('v', 1, c1['replicas'][0]['id'], c1['epoch'])
    assert store.pending_resyncs() == [(vid, 1)]
    # Compared at an epoch since changed (another drop): still marked.
    store.resync_done(vid, 1, c1['epoch'])
    assert store.pending_resyncs() == [(vid, 1)]
    store.resync_done(vid, 1, c1['epoch'] + 1)
    assert store.pending_resyncs() == []
    # A server marked down (or failed) that was a primary marks its
    # chunks in the same transaction.
    first = store.chunk_map('v', 0, 1)['chunks'][0]['replicas'][0]['id']
    primaries = []
    with store.begin() as conn:
        store._drop_server_replicas(conn, first, primaries)
    # (It may be chunk 1's primary too, since its first was dropped.)
    assert (vid, 0) in primaries
    assert sorted(store.pending_resyncs()) == sorted(primaries)


def test_allocation_needs_min_replicas_domains(store):
    add_servers(store, 3, hosts='aab')
    store.create_volume('v', 8 * MiB, replicas=3, min_replicas=2,
                        chunk_size=4 * MiB)
    chunk = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    assert len(chunk['replicas']) == 2  # two hosts only
    store.create_volume('w', 8 * MiB, replicas=3, min_replicas=3,
                        chunk_size=4 * MiB)
    with pytest.raises(exception.InsufficientReplicas):
        store.chunk_map('w', 0, 1, allocate=True)


def test_drop_replica_bumps_epoch_once(store):
    add_servers(store, 3)
    store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    victim = c['replicas'][1]['id']
    d = store.drop_replica('v', 0, victim, c['epoch'])
    assert d['epoch'] == 2
    assert victim not in [r['id'] for r in d['replicas']]
    assert d['min_replicas'] == 2
    # Idempotent; and a server that failed a write leaves even when the
    # caller's epoch is old (something else changed the set meanwhile).
    assert store.drop_replica('v', 0, victim, 1)['epoch'] == 2
    other = d['replicas'][0]['id']
    d = store.drop_replica('v', 0, other, 1)
    assert d['epoch'] == 3 and other not in [r['id'] for r in d['replicas']]


def test_registration_reports_stale_and_orphan_chunks(store):
    ids = add_servers(store, 3)
    v = store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    victim = c['replicas'][0]['id']
    store.drop_replica('v', 0, victim, 1)
    uuid = 'uuid-%d' % ids.index(victim)
    _, stale, orphans, gens, _, _ = store.register_server(
        uuid, 'a', 'r', '127.0.0.1', 1, 1, 0, 1,
        chunks=[(v['id'], 0, 1), (v['id'], 1, 1), ('gone', 0, 1)])
    assert stale == [(v['id'], 0)]
    assert sorted(orphans) == sorted([(v['id'], 1), ('gone', 0)])


def test_lease_generations(store):
    store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    a = store.acquire_lease('v', 'host-a', 30)
    assert a['generation'] == 1
    # The same holder may take it again; another may not, unless forced.
    assert store.acquire_lease('v', 'host-a', 30)['generation'] == 2
    with pytest.raises(exception.LeaseHeld):
        store.acquire_lease('v', 'host-b', 30)
    b = store.acquire_lease('v', 'host-b', 30, force=True)
    assert b['generation'] == 3
    with pytest.raises(exception.Fenced):
        store.renew_lease('v', 'host-a', 2, 30)
    store.renew_lease('v', 'host-b', 3, 30)
    with pytest.raises(exception.Conflict):
        store.begin_delete('v')
    store.release_lease('v', 'host-b', 3)
    assert store.revoke_lease('v')['generation'] == 4
    # An expired lease is free for anyone.
    store.acquire_lease('v', 'host-c', 1)
    import time
    time.sleep(1.1)
    assert store.acquire_lease('v', 'host-d', 30)['generation'] == 6


def test_servers_marked_down(store):
    add_servers(store, 2)
    assert store.mark_down(3600) == []
    down = store.mark_down(-1)
    assert len(down) == 2
    assert {s['state'] for s in store.list_servers()} == {'down'}
    with pytest.raises(exception.NotFound):
        store.heartbeat(down[0], 1, 0, 1)  # a down server re-registers
    store.register_server('uuid-0', 'a', 'r', '127.0.0.1', 9000, 1, 0, 1)
    assert store.list_servers()[0]['state'] == 'up'
    with pytest.raises(exception.NotFound):
        store.heartbeat(999, 1, 0, 1)
    assert store.cluster_status()['servers'] == {
        'total': 2, 'up': 1, 'down': 1, 'failed': 0, 'maintenance': 0,
        'draining': 0}
    servers = {s['uuid']: s for s in store.list_servers()}
    assert servers['uuid-0']['down_since'] is None
    assert servers['uuid-1']['down_since'] > 0


def test_only_the_servers_judged_are_marked_down(store):
    """``judged``: the servers whose silence counts (after a cold start,
    those heard since); None: every one."""
    import time
    booted, booting = add_servers(store, 2)
    store.reset_heartbeats()
    time.sleep(0.06)
    assert store.mark_down(0.04, None, judged=set()) == []
    assert store.mark_down(0.04, None, judged={booted}) == [booted]
    assert {s['id']: s['state'] for s in store.list_servers()} == {
        booted: 'down', booting: 'up'}
    assert store.mark_down(0.04, None, judged=None) == [booting]


def test_resetting_heartbeats_says_when_the_last_one_came(store):
    import time
    assert store.reset_heartbeats() is None         # no server up
    add_servers(store, 2)
    before = time.time()
    newest = store.reset_heartbeats()
    assert newest is not None and before - 5 < newest <= before


def test_a_down_server_leaves_every_replica_set(store):
    ids = add_servers(store, 4)
    store.create_volume('v', 40 * MiB, chunk_size=4 * MiB)
    chunks = store.chunk_map('v', 0, 10, allocate=True)['chunks']
    victim = ids[0]
    holding = [c['index'] for c in chunks
               if victim in [r['id'] for r in c['replicas']]]
    assert holding
    # Only the victim goes silent.
    for sid in ids[1:]:
        store.heartbeat(sid, 1, 0, 1)
    import time
    time.sleep(0.05)
    for sid in ids[1:]:
        store.heartbeat(sid, 1, 0, 1)
    primaries = []
    assert store.mark_down(0.04, primaries) == [victim]
    # The chunks it was the primary of are to be compared (resync).
    vid = store.get_volume('v')['id']
    assert sorted(primaries) == [(vid, c['index']) for c in chunks
                                 if c['replicas'][0]['id'] == victim]
    after = {c['index']: c for c in store.chunk_map('v', 0, 10)['chunks']}
    for c in chunks:
        ids_after = [r['id'] for r in after[c['index']]['replicas']]
        assert victim not in ids_after
        expect = c['epoch'] + (1 if c['index'] in holding else 0)
        assert after[c['index']]['epoch'] == expect
    assert store.cluster_status()['degraded_chunks'] == len(holding)


def test_a_server_whose_disk_failed_leaves_every_replica_set(store):
    ids = add_servers(store, 4)
    store.create_volume('v', 40 * MiB, chunk_size=4 * MiB)
    chunks = store.chunk_map('v', 0, 10, allocate=True)['chunks']
    victim = ids[0]
    holding = [c['index'] for c in chunks
               if victim in [r['id'] for r in c['replicas']]]
    assert holding
    store.heartbeat(victim, 0, 0, 0, failure='5 disk errors within 60 s')
    s = {x['id']: x for x in store.list_servers()}[victim]
    assert s['state'] == 'failed' and s['chunks'] == 0
    assert s['failure'] == '5 disk errors within 60 s'
    since = s['down_since']
    assert since > 0
    for c in store.chunk_map('v', 0, 10)['chunks']:
        assert victim not in [r['id'] for r in c['replicas']]
        if c['index'] in holding:
            assert store.chunk_members('v', c['index'])['lost'] == [victim]
    st = store.cluster_status()
    assert st['servers'] == {'total': 4, 'up': 3, 'down': 0, 'failed': 1,
                             'maintenance': 0, 'draining': 0}
    assert st['degraded_chunks'] == len(holding)
    assert st['health'] == 'HEALTH_WARN'
    # It keeps saying so; silent, it stays failed (never "down", which
    # the planner would wait for).
    store.heartbeat(victim, 0, 0, 0, failure='again')
    assert store.mark_down(-1) == ids[1:]
    s = {x['id']: x for x in store.list_servers()}[victim]
    assert s['state'] == 'failed' and s['down_since'] == since
    # A heartbeat without the failure is no longer taken; a registration
    # with it keeps it failed; one without (a restart) brings it up.
    with pytest.raises(exception.NotFound):
        store.heartbeat(victim, 1, 0, 1)
    store.register_server('uuid-0', 'a', 'r', '127.0.0.1', 9000, 0, 0, 0,
                          failure='still')
    assert store.list_servers()[0]['state'] == 'failed'
    store.register_server('uuid-0', 'a', 'r', '127.0.0.1', 9000, 1, 0, 1)
    s = store.list_servers()[0]
    assert s['state'] == 'up' and 'failure' not in s


def test_a_dropped_replica_is_remembered_as_lost(store):
    add_servers(store, 3)
    store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    victim = c['replicas'][2]['id']
    store.drop_replica('v', 0, victim, c['epoch'])
    assert store.chunk_members('v', 0)['lost'] == [victim]
    # Forgotten once replaced elsewhere.
    store.forget_lost('v', 0, [victim])
    assert store.chunk_members('v', 0)['lost'] == []


def test_a_server_marked_down_is_lost_for_its_chunks_and_leaves_joins(
        store):
    ids = add_servers(store, 4)
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    held = [r['id'] for r in c['replicas']]
    spare = next(i for i in ids if i not in held)
    c = store.join_replica('v', 0, spare, c['epoch'])
    victim = held[1]
    import time
    for sid in ids:
        if sid not in (victim, spare):
            store.heartbeat(sid, 1, 0, 1)
    time.sleep(0.05)
    for sid in ids:
        if sid not in (victim, spare):
            store.heartbeat(sid, 1, 0, 1)
    assert sorted(store.mark_down(0.04)) == sorted([victim, spare])
    chunk = store.chunk_members('v', 0)
    assert chunk['lost'] == [victim]           # a joining copy is not
    assert chunk['joining'] == []
    assert chunk['replicas'] == [i for i in held if i != victim]
    assert chunk['epoch'] == c['epoch'] + 2     # one bump per server


def test_a_joining_copy_takes_writes_then_becomes_a_replica(store):
    ids = add_servers(store, 4)
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    held = [r['id'] for r in c['replicas']]
    victim, spare = held[2], next(i for i in ids if i not in held)
    c = store.drop_replica('v', 0, victim, c['epoch'])
    status = store.cluster_status()
    assert (status['degraded_chunks'], status['one_copy_chunks']) == (1, 0)
    j = store.join_replica('v', 0, spare, c['epoch'])
    assert j['epoch'] == c['epoch'] + 1
    assert [r['id'] for r in j['joining']] == [spare]
    assert spare not in [r['id'] for r in j['replicas']]
    assert store.cluster_status()['joining_replicas'] == 1
    # Only at the current epoch, once, and for a server that is up.
    with pytest.raises(exception.Conflict, match='epoch'):
        store.join_replica('v', 0, victim, c['epoch'])
    with pytest.raises(exception.Conflict, match='already holds'):
        store.join_replica('v', 0, spare, j['epoch'])
    with pytest.raises(exception.Conflict, match='not joining'):
        store.promote_replica('v', 0, victim, j['epoch'])
    p = store.promote_replica('v', 0, spare, j['epoch'])
    assert p['epoch'] == j['epoch'] + 1
    assert [r['id'] for r in p['replicas']] == held[:2] + [spare]
    assert p['joining'] == []
    status = store.cluster_status()
    assert (status['degraded_chunks'], status['joining_replicas']) == (0, 0)
    # The returning victim's copy: lost until it catches up itself.
    assert store.chunk_members('v', 0)['lost'] == [victim]


def test_a_failed_join_is_abandoned(store):
    c, _, spare = one_chunk(store)
    j = store.join_replica('v', 0, spare, c['epoch'])
    a = store.abandon_join('v', 0, spare, j['epoch'])
    assert a['joining'] == [] and a['epoch'] == j['epoch'] + 1


def test_a_membership_change_racing_another_is_a_conflict(store, tmp_path):
    """Two masters on one database: B joins a server between A's read and
    A's update; A's join must fail, not report success it never had."""
    ids = add_servers(store, 5)
    other = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'),
                                    failure_domain='host')
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    spare = [i for i in ids if i not in [r['id'] for r in c['replicas']]]
    real = store._servers

    def servers_then_b_joins(conn):
        out = real(conn)
        store._servers = real
        other.join_replica('v', 0, spare[1], c['epoch'])
        return out
    store._servers = servers_then_b_joins
    try:
        with pytest.raises(exception.Conflict, match='changed meanwhile'):
            store.join_replica('v', 0, spare[0], c['epoch'])
    finally:
        store._servers = real
        other.close()
    m = store.chunk_members('v', 0)
    assert m['joining'] == [spare[1]] and m['epoch'] == c['epoch'] + 1


def test_a_drop_racing_a_promotion_loses_neither(store, tmp_path,
                                                 monkeypatch):
    from cinder_ursa.master.store import chunks as chunks_mod
    ids = add_servers(store, 4)
    other = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'),
                                    failure_domain='host')
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    held = [r['id'] for r in c['replicas']]
    spare = next(i for i in ids if i not in held)
    j = store.join_replica('v', 0, spare, c['epoch'])
    real = chunks_mod.without_server

    def promote_first(row, server_id):
        monkeypatch.setattr(chunks_mod, 'without_server', real)
        other.promote_replica('v', 0, spare, j['epoch'])
        return real(row, server_id)
    monkeypatch.setattr(chunks_mod, 'without_server', promote_first)
    try:
        d = store.drop_replica('v', 0, held[2], j['epoch'])
    finally:
        other.close()
    # Neither change is lost: the promotion stands, and the server that
    # failed leaves although its drop names the epoch before it.
    m = store.chunk_members('v', 0)
    assert m['replicas'] == held[:2] + [spare] and m['joining'] == []
    assert m['lost'] == [held[2]]
    assert [r['id'] for r in d['replicas']] == held[:2] + [spare]
    assert d['epoch'] == m['epoch'] == j['epoch'] + 2


def test_dropping_a_joining_copy_abandons_it(store):
    c, _, spare = one_chunk(store)
    j = store.join_replica('v', 0, spare, c['epoch'])
    d = store.drop_replica('v', 0, spare, j['epoch'])
    assert d['joining'] == [] and d['epoch'] == j['epoch'] + 1
    assert store.chunk_members('v', 0)['lost'] == []
    with pytest.raises(exception.Conflict, match='not joining'):
        store.abandon_join('v', 0, spare, d['epoch'])


def test_dropping_the_primary_abandons_the_joining_copies(store):
    ids = add_servers(store, 4)
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    held = [r['id'] for r in c['replicas']]
    spare = next(i for i in ids if i not in held)
    j = store.join_replica('v', 0, spare, c['epoch'])
    d = store.drop_replica('v', 0, held[1], j['epoch'])   # not the primary
    assert [r['id'] for r in d['joining']] == [spare]
    d = store.drop_replica('v', 0, held[0], d['epoch'])   # the primary
    assert d['joining'] == [] and d['epoch'] == j['epoch'] + 2
    assert [r['id'] for r in d['replicas']] == [held[2]]


def test_a_joining_copy_is_not_reported_stale_at_registration(store):
    ids = add_servers(store, 4)
    v = store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    spare = next(i for i in ids
                 if i not in [r['id'] for r in c['replicas']])
    store.join_replica('v', 0, spare, c['epoch'])
    _, stale, *_ = store.register_server(
        'uuid-%d' % ids.index(spare), 'x', 'r', '127.0.0.1', 1, 1, 0, 1,
        chunks=[(v['id'], 0, c['epoch'] + 1)])
    assert stale == []


def test_one_copy_chunks_are_counted(store):
    add_servers(store, 3)
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    c = store.chunk_map('v', 0, 1, allocate=True)['chunks'][0]
    for r in c['replicas'][1:]:
        c = store.drop_replica('v', 0, r['id'], c['epoch'])
    status = store.cluster_status()
    assert (status['degraded_chunks'], status['one_copy_chunks']) == (1, 1)


def test_maintenance_is_set_and_shown(store):
    ids = add_servers(store, 2)
    s = store.set_maintenance(ids[1], True)
    assert s['maintenance'] is True
    assert [x['maintenance'] for x in store.list_servers()] == [False, True]
    assert store.cluster_status()['servers']['maintenance'] == 1
    assert store.set_maintenance(ids[1], False)['maintenance'] is False
    with pytest.raises(exception.NotFound):
        store.set_maintenance(999, True)


def test_draining_is_set_and_shown_and_takes_no_new_chunk(store):
    ids = add_servers(store, 4)
    s = store.set_draining(ids[3], True)
    assert s['draining'] is True and s['chunks'] == 0
    assert [x['draining'] for x in store.list_servers()] == [
        False, False, False, True]
    assert store.cluster_status()['servers']['draining'] == 1
    store.create_volume('v', 64 * MiB, chunk_size=4 * MiB)
    chunks = store.chunk_map('v', 0, 16, allocate=True)['chunks']
    assert all(ids[3] not in [r['id'] for r in c['replicas']]
               for c in chunks)
    shown = store.get_server(ids[0])
    assert (shown['chunks'], shown['joining']) == (16, 0)
    assert store.set_draining(ids[3], False)['draining'] is False
    with pytest.raises(exception.NotFound):
        store.set_draining(999, True)
    with pytest.raises(exception.NotFound):
        store.get_server(999)


def test_a_replica_too_many_leaves_then_is_abandoned(store):
    c, held, spare = one_chunk(store)
    j = store.join_replica('v', 0, spare, c['epoch'])
    p = store.promote_replica('v', 0, spare, j['epoch'])
    # The primary leaves: the next replica is the primary; the leaving
    # server is a joining copy (it takes the writes, serves no reads).
    left = store.leave_replica('v', 0, held[0], p['epoch'])
    assert left['epoch'] == p['epoch'] + 1
    assert [r['id'] for r in left['replicas']] == held[1:] + [spare]
    assert [r['id'] for r in left['joining']] == [held[0]]
    out = store.abandon_join('v', 0, held[0], left['epoch'])
    assert out['joining'] == [] and out['epoch'] == left['epoch'] + 1
    m = store.chunk_members('v', 0)
    assert m['lost'] == [] and m['replicas'] == held[1:] + [spare]
    assert store.get_server(held[0])['chunks'] == 0


def test_leaving_never_takes_a_chunk_below_its_replicas(store):
    c, held, spare = one_chunk(store)
    with pytest.raises(exception.Conflict, match='would keep 2 of the 3'):
        store.leave_replica('v', 0, held[1], c['epoch'])
    with pytest.raises(exception.Conflict, match='not a replica'):
        store.leave_replica('v', 0, spare, c['epoch'])
    j = store.join_replica('v', 0, spare, c['epoch'])
    with pytest.raises(exception.Conflict, match='epoch'):
        store.leave_replica('v', 0, held[1], c['epoch'])    # CAS
    with pytest.raises(exception.Conflict, match='copies being made'):
        store.leave_replica('v', 0, held[1], j['epoch'])
    p = store.promote_replica('v', 0, spare, j['epoch'])
    store.leave_replica('v', 0, held[1], p['epoch'])
    assert store.chunk_members('v', 0)['epoch'] == p['epoch'] + 1


def test_attachments_one_host_at_a_time(store):
    store.create_volume('att', 100 * MiB, chunk_size=4 * MiB)
    a = store.attach('att', 'h1')
    assert (a['status'], a['path']) == ('attaching', None)
    assert store.attach('att', 'h1')['status'] == 'attaching'  # idempotent
    with pytest.raises(exception.Conflict, match='attached to h1'):
        store.attach('att', 'h2')
    store.update_attachment('att', 'h1', 'attached', path='/a/att')
    assert [x['path'] for x in store.list_attachments(host='h1')] == [
        '/a/att']
    assert store.list_attachments(host='h2') == []
    with pytest.raises(exception.Conflict, match='detach it first'):
        store.begin_delete('att')
    with pytest.raises(exception.InvalidArgument):
        store.update_attachment('att', 'h1', 'bogus')
    store.update_attachment('att', 'h1', 'detaching')
    # Attaching again while detaching starts over.
    assert store.attach('att', 'h1')['status'] == 'attaching'
    store.detach('att', 'h1')
    store.detach('att', 'h1')  # gone already: fine
    with pytest.raises(exception.NotFound):
        store.get_attachment('att', 'h1')
    store.attach('att', 'h2')
    store.detach('att', 'h2')
    assert store.begin_delete('att')[1] == 'delete'


def test_an_attachment_has_its_own_export_token(store):
    """ursa-nbd asks TCP clients for it: unguessable, the same while the
    attachment lasts, new for each attachment."""
    store.create_volume('tok', 100 * MiB, chunk_size=4 * MiB)
    store.create_volume('tok2', 100 * MiB, chunk_size=4 * MiB)
    t1 = store.attach('tok', 'h1')['export_token']
    assert len(t1) >= 32
    assert store.attach('tok', 'h1')['export_token'] == t1
    assert store.get_attachment('tok', 'h1')['export_token'] == t1
    assert [a['export_token'] for a in
            store.list_attachments(host='h1')] == [t1]
    assert store.attach('tok2', 'h1')['export_token'] != t1
    # Attached again after a detach was asked: the old token is void.
    store.update_attachment('tok', 'h1', 'detaching')
    t2 = store.attach('tok', 'h1')['export_token']
    assert t2 != t1
    store.detach('tok', 'h1')
    assert store.attach('tok', 'h1')['export_token'] not in (t1, t2)


def test_migration_0011_gives_existing_attachments_a_token(tmp_path):
    """Attachments made before export tokens get one at the upgrade (an
    attachment without one could be opened over TCP by no client)."""
    import alembic.command
    import alembic.config
    import sqlalchemy as sa
    s = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'o.sqlite'),
                                failure_domain='host')
    try:
        cfg = alembic.config.Config()
        cfg.set_main_option('script_location', store_mod.MIGRATIONS)
        with s.engine.begin() as conn:
            cfg.attributes['connection'] = conn
            alembic.command.upgrade(cfg, '0010')
        # In SQL: today's models name columns of later revisions.
        vid = 'a0000000-0000-0000-0000-000000000011'
        with s.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO volumes (id, name, size, chunk_size, "
                "stripe_unit, stripe_count, replicas, min_replicas, status, "
                "created_at, lease_generation, lease_expires, snap_seq) "
                "VALUES (:v, 'old', :size, :cs, :cs, 1, 1, 1, 'available', "
                "0, 0, 0, 0)"), {'v': vid, 'size': 8 * MiB, 'cs': 4 * MiB})
            for host in ('h1', 'h2'):
                conn.execute(sa.text(
                    "INSERT INTO attachments (volume_id, host, status, "
                    "created_at) VALUES (:v, :h, 'attached', 0)"),
                    {'v': vid, 'h': host})
        s.upgrade()
        tokens = [a['export_token'] for a in s.list_attachments(ref='old')]
        assert len(set(tokens)) == 2 and all(len(t) >= 32 for t in tokens)
    finally:
        s.close()


def test_multiattach_writers_share_the_lease(store):
    store.create_volume('shared', 100 * MiB, chunk_size=4 * MiB,
                        multiattach=True)
    a = store.acquire_lease('shared', 'host-a', 30)
    b = store.acquire_lease('shared', 'host-b', 30)
    assert a['generation'] == b['generation']
    store.renew_lease('shared', 'host-a', a['generation'], 30)
    # Both hosts may attach it.
    store.attach('shared', 'host-a')
    store.attach('shared', 'host-b')
    assert len(store.list_attachments(ref='shared')) == 2
    # One leaving keeps the lease; the last one frees it.
    store.release_lease('shared', 'host-a', a['generation'])
    assert store.get_volume('shared')['lease']['holder']
    store.release_lease('shared', 'host-b', b['generation'])
    assert not store.get_volume('shared')['lease']['holder']
    # Revoking fences every writer.
    c = store.acquire_lease('shared', 'host-a', 30)
    assert c['generation'] == a['generation'] + 1
    store.revoke_lease('shared')
    with pytest.raises(exception.Fenced):
        store.renew_lease('shared', 'host-a', c['generation'], 30)
    # The flag changes only while nobody has the volume.
    with pytest.raises(exception.Conflict, match='detach it'):
        store.update_volume('shared', multiattach=False)
    store.detach('shared', 'host-a')
    store.detach('shared', 'host-b')
    assert store.update_volume('shared', multiattach=False)[
        'multiattach'] is False
    store.acquire_lease('shared', 'host-a', 30)
    with pytest.raises(exception.LeaseHeld):
        store.acquire_lease('shared', 'host-b', 30)


def test_cluster_status_sums_sizes_past_64_bits(store):
    """SQLite's SUM raised "integer overflow" once the sizes summed past
    2**63 - 1 (GET /v1/cluster, ursa cluster status)."""
    big = 2 ** 63 - 4096
    store.create_volume('a', big)
    store.create_volume('b', big)
    st = store.cluster_status()
    assert st['provisioned_bytes'] == 2 * big
    assert st['volumes'] == 2


@pytest.mark.parametrize('qos', [
    {'read_iops_sec': 2 ** 53 + 1}, {'read_iops_sec': 2 ** 80},
    {'read_iops_sec': '9' * 5000}, {'read_iops_sec': '\u00b2'},
    {'read_iops_sec': -1}, {'read_iops_sec': 1.5},
])
def test_qos_limits_are_bounded(qos):
    with pytest.raises(exception.InvalidArgument, match='read_iops_sec'):
        store_mod.validate_qos(qos)


def test_qos_limits_up_to_2_53_are_kept():
    assert store_mod.validate_qos({'read_iops_sec': 2 ** 53,
                                   'write_iops_sec': '100',
                                   'total_iops_sec': 0}) == {
        'read_iops_sec': 2 ** 53, 'write_iops_sec': 100}


def test_a_server_whose_machine_crashed_leaves_its_chunks_at_registration(
        store):
    """It may have lost writes it acknowledged: it leaves every chunk
    with another live replica (stale, to be brought up to date), not one
    it is the last replica of, nor one whose other replicas may be dead
    or crashed too."""
    ids = add_servers(store, 3)
    store.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    vid = store.get_volume('v')['id']
    c0, c1 = store.chunk_map('v', 0, 2, allocate=True)['chunks']
    victim = c0['replicas'][0]['id']
    for sid in ids:
        if sid != victim:
            store.drop_replica('v', 1, sid, c1['epoch'])
    assert [r['id'] for r in store.chunk_map('v', 1, 1)['chunks'][0][
        'replicas']] == [victim]
    s = store.list_servers()[ids.index(victim)]
    held = [(vid, 0, c0['epoch']), (vid, 1, c1['epoch'])]

    def register(live):
        primaries = []
        stale = store.register_server(
            s['uuid'], s['host'], s['rack'], s['address'], s['port'], 1, 0,
            1, held, lost_cache=True, primaries=primaries, live=live)[1]
        return stale, primaries
    # No other replica known to hold what it acknowledged (none reached
    # the master since it started): it stays, the crash resync compares.
    assert register(set()) == ([], [])
    assert victim in store.chunk_members('v', 0)['replicas']
    others = set(ids) - {victim}
    assert register(others) == ([(vid, 0)], [(vid, 0)])
    m = store.chunk_members('v', 0)
    assert victim not in m['replicas'] and victim in m['lost']
    assert store.chunk_members('v', 1)['replicas'] == [victim]


def test_a_server_gone_for_good_is_removed_once_nothing_counts_on_it(store):
    import time
    c, held, spare = one_chunk(store)
    victim = held[1]
    with pytest.raises(exception.Conflict, match='is up .* stop it first'):
        store.remove_server(victim)
    others = [i for i in held + [spare] if i != victim]
    for sid in others:
        store.heartbeat(sid, 1, 0, 1)
    time.sleep(0.05)
    for sid in others:
        store.heartbeat(sid, 1, 0, 1)
    # Marked down: dropped from every replica set, lost for the chunk;
    # still refused while it was heard from within the quiet time.
    assert store.mark_down(0.04) == [victim]
    assert store.chunk_members('v', 0)['lost'] == [victim]
    with pytest.raises(exception.Conflict, match='is down .* stop it'):
        store.remove_server(victim, quiet_for=60)
    assert store.remove_server(victim)['id'] == victim
    assert store.chunk_members('v', 0)['lost'] == []
    assert victim not in [s['id'] for s in store.list_servers()]
    with pytest.raises(exception.NotFound):
        store.remove_server(victim)


def test_a_down_servers_last_replica_keeps_it(store):
    import time
    ids = add_servers(store, 1)
    store.create_volume('v', 4 * MiB, chunk_size=4 * MiB, replicas=1,
                        min_replicas=1)
    store.chunk_map('v', 0, 1, allocate=True)
    time.sleep(0.05)
    assert store.mark_down(0.04) == ids
    with pytest.raises(exception.Conflict, match='1 replica'):
        store.remove_server(ids[0])


def test_a_heartbeat_for_an_id_that_names_another_server_is_refused(store):
    ids = add_servers(store, 2)
    uuid = next(s['uuid'] for s in store.list_servers() if s['id'] == ids[0])
    store.heartbeat(ids[0], 1, 0, 1, server_uuid=uuid)
    with pytest.raises(exception.NotFound):
        store.heartbeat(ids[0], 1, 0, 1, server_uuid='someone-else')
    store.heartbeat(ids[0], 1, 0, 1)     # a server that sends no uuid


def test_the_rebalance_reads_the_fullest_servers_own_chunks(store):
    """The repair round reads some chunks of the fullest server to move:
    chunks of servers whose id only contains its id (10, 11 for 1) are
    not its, and must not fill the read's LIMIT, leaving it no
    candidate (the cluster would never rebalance)."""
    import time

    import sqlalchemy as sa

    from cinder_ursa.master import models
    from cinder_ursa.master import repair
    ids = add_servers(store, 12, hosts='abcdefghijkl')
    assert ids == list(range(1, 13))
    vid = store.create_volume('v', 256 * 4 * MiB, replicas=2,
                              min_replicas=1, chunk_size=4 * MiB)['id']
    sets = ['10,11'] * 100 + ['1,2'] * 110 + ['1,3'] * 5
    with store.engine.begin() as conn:
        conn.execute(models.chunks.insert(), [
            {'volume_id': vid, 'idx': i, 'epoch': 1, 'replicas': r,
             'joining': '', 'lost': '', 'resync': False}
            for i, r in enumerate(sets)])
        assert conn.execute(sa.select(sa.func.count()).select_from(
            models.chunks)).scalar() == 215
    store.recount_tallies()
    counts = {s['id']: s['chunks'] for s in store.list_servers()}
    assert max(counts, key=lambda s: (counts[s], s)) == 1
    assert counts[1] == 115 and counts[12] == 0
    rebalance = 2       # [ursa_master] rebalance_moves' default
    chunks, goals, servers = store.repair_records({}, rebalance)
    jobs, summary = repair.plan(chunks, goals, servers, time.time(), 600,
                                'host', rebalance=rebalance)
    assert [j.retire for j in jobs] == [1] * rebalance, (len(chunks),
                                                         summary)
