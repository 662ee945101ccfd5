"""Paginated, filtered volume listings of the store (keyset pagination by
name) on a real SQLite file."""

import pytest
import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from tests.fixtures.master import add_servers

MiB = 1024 * 1024


def names(vols):
    return [v['name'] for v in vols]


def make(store, *vol_names):
    for n in vol_names:
        store.create_volume(n, 4 * MiB, chunk_size=4 * MiB)


def test_pages_follow_the_name_order_from_a_marker(store):
    make(store, 'c', 'a', 'e', 'b', 'd')
    assert names(store.list_volumes()) == ['a', 'b', 'c', 'd', 'e']
    assert names(store.list_volumes(limit=2)) == ['a', 'b']
    assert names(store.list_volumes(limit=2, marker='b')) == ['c', 'd']
    assert names(store.list_volumes(limit=2, marker='d')) == ['e']
    assert names(store.list_volumes(limit=2, marker='e')) == []
    # By id as well as by name.
    bid = store.get_volume('b')['id']
    assert names(store.list_volumes(limit=2, marker=bid)) == ['c', 'd']
    assert names(store.list_volumes(limit=2, descending=True)) == ['e', 'd']
    assert names(store.list_volumes(marker='c', descending=True)) == [
        'b', 'a']


def test_a_marker_that_names_nothing_listed_is_marker_not_found(store):
    make(store, 'a', 'b')
    for marker in ('zz', 'a\x00', '', store.get_volume('a')['id'] + 'x'):
        with pytest.raises(exception.MarkerNotFound) as e:
            store.list_volumes(limit=1, marker=marker)
        assert 'earlier volume' in str(e.value)
        assert e.value.http_status == 400
    # A deleted volume is no marker.
    vol, _ = store.begin_delete('a')
    store.finish_delete(vol['id'])
    with pytest.raises(exception.MarkerNotFound):
        store.list_volumes(marker='a')


def test_a_volume_in_the_trash_is_neither_listed_nor_a_marker(store):
    make(store, 'a', 'b')
    vid = store.get_volume('a')['id']
    with store.begin() as conn:
        conn.execute(models.volumes.update().where(
            models.volumes.c.id == vid).values(status='trash'))
    assert names(store.list_volumes()) == ['b']
    with pytest.raises(exception.MarkerNotFound):
        store.list_volumes(marker=vid)


def test_filters_by_name_and_status(store):
    make(store, 'db-01', 'db-02', 'DB-03', 'web-01', 'web_db', 'xpy')
    with store.begin() as conn:
        conn.execute(models.volumes.update().where(
            models.volumes.c.name == 'db-02').values(status='deleting'))
        # A name from before the naming rule.
        conn.execute(models.volumes.update().where(
            models.volumes.c.name == 'xpy').values(name='x%y'))
    assert names(store.list_volumes(name_prefix='db-')) == [
        'DB-03', 'db-01', 'db-02']
    assert names(store.list_volumes(name_contains='db')) == [
        'DB-03', 'db-01', 'db-02', 'web_db']
    # "_" and "%" are no wildcards.
    assert names(store.list_volumes(name_contains='b_d')) == ['web_db']
    assert names(store.list_volumes(name_contains='%')) == ['x%y']
    assert names(store.list_volumes(name_prefix='web_')) == ['web_db']
    assert names(store.list_volumes(statuses=['deleting'])) == ['db-02']
    assert names(store.list_volumes(
        statuses=['available'], name_prefix='db')) == ['DB-03', 'db-01']
    # The marker is a position: it need not match the filters.
    assert names(store.list_volumes(name_prefix='web',
                                    marker='db-01')) == [
        'web-01', 'web_db']


def test_a_page_reads_no_chunk_row(store):
    """A volume's allocated chunks are kept (store/tally.py): a page of
    the listing reads the volumes of the page, never the chunks."""
    add_servers(store, 3)
    make(store, 'a', 'b', 'c')
    store.create_volume('big', 64 * MiB, chunk_size=4 * MiB)
    store.chunk_map('big', 0, 3, allocate=True)
    store.chunk_map('b', 0, 1, allocate=True)
    every = {v['name']: v['allocated_chunks'] for v in store.list_volumes()}
    assert every == {'a': 0, 'b': 1, 'big': 3, 'c': 0}
    statements = []

    def seen(conn, cursor, statement, params, context, many):
        statements.append((statement, params))
    sa.event.listen(store.engine, 'before_cursor_execute', seen)
    try:
        page = store.list_volumes(limit=2, marker='a')
    finally:
        sa.event.remove(store.engine, 'before_cursor_execute', seen)
    assert [(v['name'], v['allocated_chunks']) for v in page] == [
        ('b', 1), ('big', 3)]
    assert statements
    assert not [st for st, p in statements if 'chunks' in st.split(
        'FROM', 1)[-1]]


def snaps(store, **kwargs):
    return ['%s@%s' % (s['volume_name'], s['name'])
            for s in store.list_snapshots(**kwargs)]


def test_snapshot_pages_follow_volume_name_then_sequence(store):
    make(store, 'b', 'a')
    for vol, name in (('b', 'x1'), ('a', 'z1'), ('b', 'Nightly-2'),
                      ('a', 'nightly-1')):
        sid = store.begin_snapshot(vol, name)['id']
        store.finish_snapshot(sid, True)
    every = ['a@z1', 'a@nightly-1', 'b@x1', 'b@Nightly-2']
    assert snaps(store) == every
    assert snaps(store, limit=2) == every[:2]
    assert snaps(store, limit=2, marker='a@nightly-1') == every[2:]
    sid = store.get_snapshot('b@x1')['id']
    assert snaps(store, marker=sid) == every[3:]
    assert snaps(store, marker='b@x1', descending=True) == every[1::-1]
    assert snaps(store, volume='b', marker='a@z1') == every[2:]
    assert snaps(store, name_prefix='NIGHTLY') == ['a@nightly-1',
                                                   'b@Nightly-2']
    assert snaps(store, name_contains='1', limit=1,
                 marker='a@z1') == ['a@nightly-1']
    assert snaps(store, statuses=['creating']) == []
    for marker in ('a@gone', 'gone@z1', 'nothing', 'a@b@c', '\x00'):
        with pytest.raises(exception.MarkerNotFound) as e:
            store.list_snapshots(marker=marker)
        assert 'earlier snapshot' in str(e.value)
