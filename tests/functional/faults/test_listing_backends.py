"""Paginated listings on every database the master runs on (SQLite,
MariaDB, PostgreSQL): the name filters ignore case and take "_" and "%"
literally on each (PostgreSQL's LIKE is case-sensitive, MariaDB's and
SQLite's are not), and walking the pages gives the full listing, in the
database's own name order, each volume once."""

import pytest

from cinder_ursa import exception
from cinder_ursa.master import models

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
NAMES = ['db-01', 'DB-02', 'db_03', 'dbx04', 'web-01', 'Web_db', 'a', 'B',
         'z-9', '_x', 'vol.1', 'vol-1', 'vol1']


@pytest.fixture
def store(any_store):
    s = any_store
    for n in NAMES:
        s.create_volume(n, 4 * MiB, chunk_size=4 * MiB)
    with s.begin() as conn:
        # A name from before the naming rule, with a LIKE wildcard.
        conn.execute(models.volumes.update().where(
            models.volumes.c.name == 'a').values(name='a%b'))
    return s


def names(vols):
    return [v['name'] for v in vols]


def walk(store, size, **kwargs):
    out, marker = [], None
    while True:
        page = store.list_volumes(limit=size, marker=marker, **kwargs)
        out += names(page)
        if len(page) < size:
            return out
        marker = page[-1]['name']


def test_the_filters_mean_the_same_everywhere(store):
    assert sorted(names(store.list_volumes(name_prefix='DB'))) == sorted(
        ['db-01', 'DB-02', 'db_03', 'dbx04'])
    assert sorted(names(store.list_volumes(name_prefix='db_'))) == [
        'db_03']
    assert sorted(names(store.list_volumes(name_contains='_DB'))) == [
        'Web_db']
    assert names(store.list_volumes(name_contains='%')) == ['a%b']
    assert sorted(names(store.list_volumes(name_contains='VOL'))) == sorted(
        ['vol.1', 'vol-1', 'vol1'])


@pytest.mark.parametrize('descending', [False, True])
def test_pages_walk_the_full_listing(store, descending):
    every = names(store.list_volumes(descending=descending))
    assert sorted(every) == sorted(NAMES[:6] + ['a%b'] + NAMES[7:])
    assert len(every) == len(set(every))
    for size in (1, 2, 5):
        assert walk(store, size, descending=descending) == every
    # From a marker by id: the same position as by name.
    third = store.get_volume(every[2])
    assert names(store.list_volumes(marker=third['id'], limit=3,
                                    descending=descending)) == every[3:6]
    with pytest.raises(exception.MarkerNotFound):
        store.list_volumes(marker='no-such', limit=1)
