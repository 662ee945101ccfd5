"""The figures the master keeps instead of counting (store/tally.py):
after any sequence of changes they equal a full recount, and the status,
the listings and the metrics read them.

The model test drives a real store (SQLite) through random creates,
allocations, snapshots, clones, deletes (through the trash), resizes,
replica drops, copies joining, promoted and abandoned, servers marked
down, failed, restarted after a crash and removed, resyncs and lost
copies forgotten; any path that forgot the figures fails it."""

import time

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

from cinder_ursa import exception
from cinder_ursa.master import store as store_mod
from cinder_ursa.master.store import tally

MiB = 1024 * 1024
CHUNK = 4 * MiB
ERRORS = (exception.Conflict, exception.NotFound, exception.InvalidArgument,
          exception.InsufficientReplicas, exception.AlreadyExists)


def _register(store, n, **kw):
    return store.register_server(
        'uuid-%d' % n, 'host-%d' % n, 'rack', '127.0.0.1', 9000 + n,
        100 * MiB, 0, 100 * MiB, **kw)[0]['id']


class KeptFigures(RuleBasedStateMachine):
    """Random changes to a store; the kept figures always match."""

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.TemporaryDirectory()
        self.store = store_mod.MetadataStore(
            'sqlite:///%s/m.sqlite' % self.dir.name, failure_domain='host')
        self.store.upgrade()
        self.servers = {}       # number -> id
        self.volumes = []       # names
        self.snapshots = []     # ids
        self.trashed = []       # ids of volumes in the trash
        self.n = 0

    def teardown(self):
        self.store.close()
        self.dir.cleanup()

    @initialize()
    def servers_join(self):
        for n in range(4):
            self.servers[n] = _register(self.store, n)

    def _try(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except ERRORS:
            return None

    @rule(replicas=st.integers(1, 3), chunks=st.integers(1, 12),
          parent=st.booleans())
    def create(self, replicas, chunks, parent):
        self.n += 1
        name = 'v%d' % self.n
        snap = self.snapshots[-1] if parent and self.snapshots else None
        vol = self._try(self.store.create_volume, name, chunks * CHUNK,
                        replicas=replicas, min_replicas=1,
                        chunk_size=CHUNK, parent=snap)
        if vol:
            self.volumes.append(name)

    @precondition(lambda self: self.volumes)
    @rule(data=st.data())
    def allocate(self, data):
        name = data.draw(st.sampled_from(self.volumes))
        vol = self._try(self.store.get_volume, name)
        if vol is None:
            return
        n = vol['size'] // CHUNK
        start = data.draw(st.integers(0, n - 1))
        count = data.draw(st.integers(1, n - start))
        self._try(self.store.chunk_map, name, start, count, allocate=True)

    @precondition(lambda self: self.volumes)
    @rule(data=st.data(), ok=st.booleans())
    def snapshot(self, data, ok):
        name = data.draw(st.sampled_from(self.volumes))
        self.n += 1
        snap = self._try(self.store.begin_snapshot, name, 's%d' % self.n)
        if snap and self.store.finish_snapshot(snap['id'], ok):
            self.snapshots.append(snap['id'])

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def delete_snapshot(self, data):
        sid = data.draw(st.sampled_from(self.snapshots))
        if self._try(self.store.delete_snapshot, sid):
            self.snapshots.remove(sid)

    @precondition(lambda self: self.volumes)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(self.volumes))
        got = self._try(self.store.begin_delete, name)
        if got is None:
            return
        self.volumes.remove(name)
        vol, action = got
        if action == 'delete':
            self.store.finish_delete(vol['id'])
        else:
            self.trashed.append(vol['id'])

    @precondition(lambda self: self.trashed)
    @rule(data=st.data())
    def delete_trashed(self, data):
        """A volume in the trash deleted again, by its id."""
        vid = data.draw(st.sampled_from(self.trashed))
        got = self._try(self.store.begin_delete, vid)
        if got is not None and got[1] == 'delete':
            self.trashed.remove(vid)
            self.store.finish_delete(vid)

    @rule()
    def reap_one_step(self):
        """One step of emptying the trash (other changes come between
        two)."""
        got = self.store.reap()
        if got is not None and got[0] == 'volume':
            self.store.finish_delete(got[1]['id'])

    @rule()
    def reap(self):
        for _ in range(5):
            got = self.store.reap()
            if got is None:
                break
            if got[0] == 'volume':
                self.store.finish_delete(got[1]['id'])

    @precondition(lambda self: self.volumes)
    @rule(data=st.data(), more=st.integers(-2, 3))
    def resize(self, data, more):
        name = data.draw(st.sampled_from(self.volumes))
        vol = self._try(self.store.get_volume, name)
        if vol is not None:
            self._try(self.store.resize, name,
                      max(vol['size'] + more * CHUNK, CHUNK), force=True)

    def _chunk(self, data):
        """A random allocated chunk: (volume name, index, members)."""
        name = data.draw(st.sampled_from(self.volumes))
        vol = self._try(self.store.get_volume, name)
        if vol is None:
            return None
        got = self._try(self.store.chunk_map, name, 0,
                        vol['size'] // CHUNK)
        if not got or not got['chunks']:
            return None
        idx = data.draw(st.sampled_from(got['chunks']))['index']
        return name, idx, self.store.chunk_members(name, idx)

    @precondition(lambda self: self.volumes)
    @rule(data=st.data())
    def drop(self, data):
        got = self._chunk(data)
        if got:
            name, idx, m = got
            sid = data.draw(st.sampled_from(m['replicas'] + m['joining']))
            self._try(self.store.drop_replica, name, idx, sid, m['epoch'])

    @rule(data=st.data())
    def forget_lost(self, data):
        lost = self.store.lost_copies()
        if lost:
            sid, vid, idx, _ = data.draw(st.sampled_from(lost))
            self.store.forget_lost(vid, idx, [sid])

    @rule(data=st.data())
    def resync_done(self, data):
        marked = self.store.pending_resyncs()
        if marked:
            vid, idx = data.draw(st.sampled_from(marked))
            epoch = self.store.chunk_members(vid, idx)['epoch']
            self.store.resync_done(vid, idx, epoch)

    @precondition(lambda self: self.volumes)
    @rule(data=st.data(), step=st.sampled_from(
        ['join', 'promote', 'abandon', 'abandon_all', 'leave', 'forget',
         'resync']))
    def membership(self, data, step):
        got = self._chunk(data)
        if not got:
            return
        name, idx, m = got
        s = self.store
        sid = data.draw(st.sampled_from(sorted(self.servers.values())))
        joining = m['joining'] or [sid]
        if step == 'join':
            self._try(s.join_replica, name, idx, sid, m['epoch'])
        elif step == 'promote':
            self._try(s.promote_replica, name, idx, joining[0], m['epoch'])
        elif step == 'abandon':
            self._try(s.abandon_join, name, idx, joining[0], m['epoch'])
        elif step == 'abandon_all':
            self._try(s.abandon_joins, name, idx, m['epoch'])
        elif step == 'leave':
            self._try(s.leave_replica, name, idx, sid, m['epoch'])
        elif step == 'forget':
            self._try(s.forget_lost, name, idx, m['lost'][:1])
        else:
            vid = s.get_volume(name)['id']
            for v, i in s.pending_resyncs():
                if (v, i) == (vid, idx):
                    s.resync_done(v, i, m['epoch'])

    @rule(data=st.data(), how=st.sampled_from(
        ['down', 'failed', 'crashed', 'back', 'remove']))
    def server(self, data, how):
        n = data.draw(st.sampled_from(sorted(self.servers)))
        sid = self.servers[n]
        s = self.store
        if how == 'down':
            s.mark_down(-1, judged={sid})
        elif how == 'failed':
            _register(s, n, failure='disk gone')
        elif how == 'crashed':
            _register(s, n, lost_cache=True,
                      live=set(self.servers.values()) - {sid})
        elif how == 'back':
            _register(s, n)
        else:
            with s.engine.begin() as conn:
                conn.execute(sa.text(
                    'UPDATE chunkservers SET state = :st, last_seen = 0 '
                    'WHERE id = :id'), {'st': 'down', 'id': sid})
            if self._try(s.remove_server, sid) is not None:
                # A new, empty server in its place.
                self.n += 1
                s.failures.pop(sid, None)
                del self.servers[n]
                self.servers[100 + self.n] = _register(s, 100 + self.n)

    @invariant()
    def figures_match_a_recount(self):
        assert self.store.tally_drift() == {}


KeptFigures.TestCase.settings = hypothesis.settings(
    max_examples=30, stateful_step_count=40, deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck))
test_kept_figures_equal_a_recount = KeptFigures.TestCase


def test_status_reads_the_kept_figures(store):
    for n in range(3):
        _register(store, n)
    store.create_volume('a', 10 * CHUNK, replicas=3, chunk_size=CHUNK)
    store.create_volume('b', 4 * CHUNK, replicas=2, chunk_size=CHUNK)
    store.chunk_map('a', 0, 10, allocate=True)
    store.chunk_map('b', 1, 2, allocate=True)
    status = store.cluster_status()
    assert (status['volumes'], status['chunks']) == (2, 12)
    assert status['provisioned_bytes'] == 14 * CHUNK
    assert status['degraded_chunks'] == 0
    assert store.get_volume('a')['allocated_chunks'] == 10
    assert [v['allocated_chunks'] for v in store.list_volumes()] == [10, 2]
    held = [s['chunks'] for s in store.list_servers()]
    assert sum(held) == 10 * 3 + 2 * 2 and min(held) >= 10
    # A server down: every chunk it held is degraded, the figures say so
    # without a scan.
    sid = store.list_servers()[0]['id']
    store.mark_down(-1, judged={sid})
    status = store.cluster_status()
    held = store.get_server(sid)
    assert held['chunks'] == 0
    assert status['degraded_chunks'] == 12 - sum(
        1 for v in ('a', 'b') for c in store.chunk_map(
            v, 0, store.get_volume(v)['size'] // CHUNK)['chunks']
        if len(c['replicas']) >= store.get_volume(v)['replicas'])
    assert status['degraded_chunks'] > 0
    assert store.tally_drift() == {}


def test_a_drift_is_found_and_recounted(store):
    _register(store, 0)
    store.create_volume('a', 4 * CHUNK, replicas=1, min_replicas=1,
                        chunk_size=CHUNK)
    store.chunk_map('a', 0, 4, allocate=True)
    with store.engine.begin() as conn:
        conn.execute(sa.text(
            "UPDATE cluster_counters SET value = 99 WHERE name = 'chunks'"))
        conn.execute(sa.text('UPDATE volumes SET allocated_chunks = 1'))
    drift = store.tally_drift()
    assert drift['counters'] == {'chunks': (99, 4)}
    assert drift['volumes'] == {store.get_volume('a')['id']: (1, 4)}
    assert store.recount_tallies() == drift
    assert store.tally_drift() == {}
    assert store.cluster_status()['chunks'] == 4


def test_the_upgrade_counts_what_an_older_schema_holds(tmp_path):
    """A database of the revision before the kept figures gets them at
    the upgrade, counted from its rows."""
    import alembic.command
    import alembic.config
    s = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'o.sqlite'),
                                failure_domain='host')
    try:
        cfg = alembic.config.Config()
        cfg.set_main_option('script_location', store_mod.MIGRATIONS)
        with s.engine.begin() as conn:
            cfg.attributes['connection'] = conn
            alembic.command.upgrade(cfg, '0014')
        vid = 'a0000000-0000-0000-0000-000000000015'
        with s.engine.begin() as conn:
            for n in (1, 2):
                conn.execute(sa.text(
                    "INSERT INTO chunkservers (id, uuid, host, rack, "
                    "address, port, capacity, used, free, state, "
                    "last_seen, created_at) VALUES (:n, :u, :h, 'r', "
                    "'127.0.0.1', :p, 1, 0, 1, 'up', :t, 0)"),
                    {'n': n, 'u': 'u%d' % n, 'h': 'h%d' % n, 'p': 9000 + n,
                     't': time.time()})
            conn.execute(sa.text(
                "INSERT INTO volumes (id, name, size, chunk_size, "
                "stripe_unit, stripe_count, replicas, min_replicas, status, "
                "created_at, lease_generation, lease_expires, snap_seq) "
                "VALUES (:v, 'old', :size, :cs, :cs, 1, 2, 1, 'available', "
                "0, 0, 0, 0)"), {'v': vid, 'size': 8 * CHUNK, 'cs': CHUNK})
            for idx, (reps, lost) in enumerate(
                    [('1,2', ''), ('2', '1'), ('1,2', ''), ('1', '')]):
                conn.execute(sa.text(
                    "INSERT INTO chunks (volume_id, idx, epoch, replicas, "
                    "joining, lost, resync) VALUES (:v, :i, 1, :r, '', :l, "
                    "0)"), {'v': vid, 'i': idx, 'r': reps, 'l': lost})
        s.upgrade()
        assert s.schema_version() == '0015'
        status = s.cluster_status()
        assert (status['volumes'], status['chunks']) == (1, 4)
        assert (status['degraded_chunks'], status['one_copy_chunks']) == \
            (2, 2)
        assert status['provisioned_bytes'] == 8 * CHUNK
        assert {x['id']: x['chunks'] for x in s.list_servers()} == \
            {1: 3, 2: 3}
        assert s.get_volume('old')['allocated_chunks'] == 4
        assert s.tally_drift() == {}
    finally:
        s.close()


@pytest.mark.parametrize('size', [2 ** 63 - 4096])
def test_provisioned_bytes_never_overflow(store, size):
    """Two volumes of the largest size pass 2**63 bytes: the counter
    keeps 4 KiB blocks."""
    store.create_volume('x', size, replicas=1, min_replicas=1)
    store.create_volume('y', size, replicas=1, min_replicas=1)
    assert store.cluster_status()['provisioned_bytes'] == 2 * size
    n = store.counters()
    assert n[tally.PROVISIONED_TIB] == 2 * (size >> 40)
    assert tally.provisioned_bytes(n) == 2 * size


def test_the_migrations_make_the_models_schema(store):
    """The tables, columns and indexes of models.py are those the
    migrations make (a column or index added to one only would differ
    between new and upgraded databases)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cinder_ursa.master import models
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn),
                                models.metadata)
    assert diff == []


def test_a_server_marked_down_leaves_its_sets_a_slice_at_a_time(store):
    ids = [_register(store, n) for n in range(4)]
    store.create_volume('a', 64 * CHUNK, replicas=3, chunk_size=CHUNK)
    store.create_volume('b', 64 * CHUNK, replicas=2, chunk_size=CHUNK)
    store.chunk_map('a', 0, 64, allocate=True)
    store.chunk_map('b', 0, 64, allocate=True)
    sid = ids[1]
    held = store.get_server(sid)['chunks']
    assert held > 40
    assert store.mark_down(-1, judged={sid}, drop=False) == [sid]
    # Marked, not dropped yet; a master taking over would go on.
    assert store.get_server(sid)['chunks'] == held
    assert store.servers_to_drop() == [sid]
    after, total, slices, primaries = None, 0, 0, []
    while True:
        n, after = store.drop_slice(sid, after, 10, primaries)
        total, slices = total + n, slices + 1
        assert store.tally_drift() == {}
        if after is None:
            break
    assert total == held and slices >= held // 10
    assert store.get_server(sid)['chunks'] == 0
    assert store.servers_to_drop() == []
    assert primaries and all(
        store.chunk_members(v, i)['replicas'][0] != sid
        for v, i in primaries)
    # A server back up is not dropped by a slice left over.
    other = ids[2]
    store.mark_down(-1, judged={other}, drop=False)
    _register(store, 2)
    assert store.drop_slice(other, None, 10) == (0, None)
    assert store.get_server(other)['chunks'] > 0


def test_deleting_a_volume_already_in_the_trash_counts_it_once(store):
    """A volume in the trash deleted again (by its id, its name is the
    trash's now: ``DELETE /v1/volumes/<id>``, an operator's retry) stays
    one volume in the trash: the status still lists its live clone."""
    _register(store, 0)
    vid = store.create_volume('a', 4 * CHUNK, replicas=1, min_replicas=1,
                              chunk_size=CHUNK)['id']
    store.chunk_map('a', 0, 4, allocate=True)
    snap = store.begin_snapshot('a', 's')
    store.finish_snapshot(snap['id'], True)
    store.create_volume('clone', 4 * CHUNK, parent=snap['id'])
    assert store.delete_snapshot(snap['id'])[1] == 'trash'
    assert store.begin_delete('a')[1] == 'trash'
    assert store.tally_drift() == {}
    assert store.begin_delete(vid)[1] == 'trash'
    assert store.tally_drift() == {}
    status = store.cluster_status()
    assert (status['volumes'], status['trash_volumes']) == (1, 1)


def test_a_revert_ending_after_its_volume_went_to_the_trash(store):
    """A revert runs (the chunk servers take up to minutes) while its
    snapshot is deleted (a clone keeps it in the trash) and then its
    volume (to the trash too): the revert's end leaves the volume in
    the trash, counted there, not "available" under its trash name."""
    vid = store.create_volume('a', 4 * CHUNK, replicas=1, min_replicas=1,
                              chunk_size=CHUNK)['id']
    snap = store.begin_snapshot('a', 's')
    store.finish_snapshot(snap['id'], True)
    store.create_volume('clone', 4 * CHUNK, parent=snap['id'])
    _, seq = store.begin_revert('a', snap['id'])
    assert store.delete_snapshot(snap['id'])[1] == 'trash'
    assert store.begin_delete('a')[1] == 'trash'
    store.finish_revert(vid, seq)
    assert store.get_volume(vid)['status'] == 'trash'
    assert [v['name'] for v in store.list_volumes()] == ['clone']
    assert store.tally_drift() == {}


def test_a_volume_deleted_from_the_trash_once_its_snapshots_are_gone(store):
    """Between two steps of emptying the trash (its last snapshot reaped,
    the volume not yet), the trashed volume is deleted by its id: it
    leaves the trash, and trash_volumes counts it no more."""
    vid = store.create_volume('a', 4 * CHUNK, replicas=1, min_replicas=1,
                              chunk_size=CHUNK)['id']
    snap = store.begin_snapshot('a', 's')
    store.finish_snapshot(snap['id'], True)
    clone = store.create_volume('clone', 4 * CHUNK, parent=snap['id'])
    assert store.delete_snapshot(snap['id'])[1] == 'trash'
    assert store.begin_delete('a')[1] == 'trash'
    assert store.begin_delete('clone')[1] == 'delete'
    store.finish_delete(clone['id'])
    assert store.reap()[0] == 'snapshot'
    # The next step would take the volume; a delete comes first.
    vol, action = store.begin_delete(vid)
    assert action == 'delete'
    store.finish_delete(vid)
    assert store.reap() is None
    assert store.tally_drift() == {}
    assert store.cluster_status()['trash_volumes'] == 0
