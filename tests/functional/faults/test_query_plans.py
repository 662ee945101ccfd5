"""The master's frequent statements against the query plans of every
database it runs on (SQLite, MariaDB, PostgreSQL): each statement a
request or a periodic task runs is recorded, then EXPLAINed, and none
may read a whole big table where an index answers.

* A request about one volume or chunk (show, the chunk map, allocation,
  replica changes, a listing page, a snapshot, a delete) scans neither
  the chunks, nor the volumes, nor the kept figures, nor the snapshots.
* The status reads the kept figures: no scan of the chunks or volumes.
* The periodic work (the metrics summary, a repair round of a healthy
  cluster, the trash sweep, a registration, the resyncs, the lost
  copies) scans no chunk; it may read every volume (a row each).  The
  one exception is bounded: the repair round of a cluster whose servers
  hold unequal counts reads some chunks of the fullest (a LIMIT) to
  rebalance them.

PostgreSQL plans a sequential scan of a small table even where an index
serves, so it runs with ``enable_seqscan = off``: a scan left is one no
index can avoid.  MariaDB's plan shows a scan as ``type = ALL``."""

import re

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
CHUNK = 4 * MiB
BIG = ('chunks', 'volumes', 'chunk_tally', 'snapshots')


@pytest.fixture
def store(any_store):
    s = any_store
    for n in range(4):
        s.register_server('u%d' % n, 'h%d' % n, 'r', '127.0.0.1', 9000 + n,
                          MiB, 0, MiB)
    for n in range(40):
        s.create_volume('v%02d' % n, 8 * CHUNK, chunk_size=CHUNK)
        s.chunk_map('v%02d' % n, 0, 2, allocate=True)
    s.create_volume('big', 1024 * CHUNK, chunk_size=CHUNK)
    s.chunk_map('big', 0, 600, allocate=True)
    snap = s.begin_snapshot('big', 's1')
    s.finish_snapshot(snap['id'], True)
    s.create_volume('clone', 1024 * CHUNK, parent=snap['id'])
    if s.engine.dialect.name != 'sqlite':
        with s.engine.begin() as conn:
            for t in BIG:
                conn.execute(sa.text(
                    'ANALYZE TABLE %s' % t if s.engine.dialect.name ==
                    'mysql' else 'ANALYZE %s' % t))
    return s


def recorded(store, work):
    """The statements ``work()`` runs: [(statement, parameters)]."""
    seen = []

    def note(conn, cursor, statement, params, context, many):
        if many:
            params = params[0] if params else ()
        seen.append((statement, params))
    sa.event.listen(store.engine, 'before_cursor_execute', note)
    try:
        work()
    finally:
        sa.event.remove(store.engine, 'before_cursor_execute', note)
    return seen


def scans(store, statements):
    """{(table, statement)} of the full scans of the big tables in the
    plans of ``statements``."""
    dialect = store.engine.dialect.name
    out = set()
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        if dialect == 'postgresql':
            cur.execute('SET enable_seqscan = off')
        for statement, params in statements:
            if not re.match(r'\s*(SELECT|UPDATE|DELETE)', statement, re.I):
                continue
            if dialect == 'sqlite':
                cur.execute('EXPLAIN QUERY PLAN ' + statement, params)
                for row in cur.fetchall():
                    m = re.match(r'SCAN (\w+)$', row[-1])
                    if m and m.group(1) in BIG:
                        out.add((m.group(1), statement))
            elif dialect == 'mysql':
                cur.execute('EXPLAIN ' + statement, params)
                cols = [d[0] for d in cur.description]
                for row in cur.fetchall():
                    r = dict(zip(cols, row, strict=True))
                    if r['table'] in BIG and r['type'] == 'ALL':
                        out.add((r['table'], statement))
            else:
                cur.execute('EXPLAIN ' + statement, params)
                for (line,) in cur.fetchall():
                    m = re.search(r'Seq Scan on (\w+)', line)
                    if m and m.group(1) in BIG:
                        out.add((m.group(1), statement))
    finally:
        raw.rollback()
        raw.close()
    return out


def test_requests_about_one_volume_scan_nothing(store):
    def work():
        store.get_volume('big')
        store.get_volume(store.get_volume('v07')['id'])
        store.chunk_map('big', 100, 1)
        store.chunk_map('big', 0, 256)
        store.chunk_map('big', 600, 64, allocate=True)
        m = store.chunk_members('big', 5)
        store.drop_replica('big', 5, m['replicas'][0], m['epoch'])
        m = store.chunk_members('big', 5)
        spare = ({s['id'] for s in store.list_servers()} -
                 set(m['replicas'])).pop()
        store.join_replica('big', 5, spare, m['epoch'])
        store.promote_replica('big', 5, spare, m['epoch'] + 1)
        store.list_volumes(limit=10, marker='v10')
        snap = store.begin_snapshot('v03', 'x')
        store.finish_snapshot(snap['id'], True)
        store.delete_snapshot(snap['id'])
        store.resize('v04', 16 * CHUNK)
        vol, _ = store.begin_delete('v05')
        store.finish_delete(vol['id'])
    assert scans(store, recorded(store, work)) == set()


def test_the_status_scans_nothing(store):
    assert scans(store, recorded(store, store.cluster_status)) == set()


def test_periodic_work_scans_no_chunk(store):
    def work():
        store.summary_records()
        store.repair_records(held={}, rebalance=2)
        store.reap()
        store.pending_resyncs()
        store.lost_copies()
        store.register_server('u1', 'h1', 'r', '127.0.0.1', 9001, MiB, 0,
                              MiB, chunks=[
                                  (store.get_volume('big')['id'], i, 1)
                                  for i in range(0, 600, 3)])
        # A server marked down leaves its sets a slice at a time.
        sid = store.list_servers()[0]['id']
        store.mark_down(-1, judged={sid}, drop=False)
        n, after = store.drop_slice(sid, None, 100)
        while after is not None:
            n, after = store.drop_slice(sid, after, 100)
        assert store.get_server(sid)['chunks'] == 0
    found = scans(store, recorded(store, work))
    # But the rebalancing candidates: a read of the fullest server's
    # chunks that stops at its LIMIT (servers differ here).
    assert [s for t, s in found if t == 'chunks' and 'LIMIT' not in s] == []
    assert [s for t, s in found if t == 'chunks'], 'no rebalance read?'
