"""The masters' fencing term: compare and swap, and the check every write
transaction makes (a deposed leader's writes fail)."""

import pytest

from cinder_ursa import exception
from cinder_ursa.master import store as store_mod

MiB = 1024 * 1024


def _store(path):
    s = store_mod.MetadataStore('sqlite:///%s' % path)
    s.upgrade()
    return s


@pytest.fixture
def pair(tmp_path):
    """Two stores over one database, as two masters have."""
    a, b = (_store(tmp_path / 'm.sqlite') for _ in range(2))
    yield a, b
    a.close()
    b.close()


def test_no_leader_at_first(pair):
    a, _ = pair
    assert a.leader_record() == {'term': 0, 'leader': None,
                                 'elected_at': None}


def test_take_term_is_compare_and_swap(pair):
    a, b = pair
    assert a.take_term(0, 'http://a') == 1
    # b saw term 0 too: it lost the race.
    assert b.take_term(0, 'http://b') is None
    rec = b.leader_record()
    assert rec['term'] == 1 and rec['leader'] == 'http://a'
    assert b.take_term(1, 'http://b') == 2
    assert a.leader_record()['leader'] == 'http://b'


def test_writes_unchecked_without_guard(pair):
    a, _ = pair
    a.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    assert a.get_volume('v')['name'] == 'v'


def test_leader_writes_with_its_term(pair):
    a, _ = pair
    term = a.take_term(0, 'http://a')
    a.guard = lambda: term
    a.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    assert a.get_volume('v')['size'] == 4 * MiB
    # The check leaves the term as it was.
    assert a.leader_record()['term'] == term


def test_deposed_leader_writes_fail_and_change_nothing(pair):
    a, b = pair
    term_a = a.take_term(0, 'http://a')
    a.guard = lambda: term_a
    a.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    term_b = b.take_term(term_a, 'http://b')
    b.guard = lambda: term_b
    with pytest.raises(exception.NotLeader, match='term 1 is over'):
        a.create_volume('w', 4 * MiB, chunk_size=4 * MiB)
    with pytest.raises(exception.NotLeader):
        a.delete_snapshot('nothing@none')
    with pytest.raises(exception.NotFound):
        b.get_volume('w')
    # The new leader writes.
    b.create_volume('w', 4 * MiB, chunk_size=4 * MiB)
    assert {v['name'] for v in b.list_volumes()} == {'v', 'w'}


def test_guard_refusal_reaches_no_database(pair):
    a, _ = pair

    def standby():
        raise exception.NotLeader(reason='the leader is http://b')
    a.guard = standby
    with pytest.raises(exception.NotLeader, match='http://b'):
        a.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    a.guard = None
    assert a.list_volumes() == []


def test_a_term_is_taken_above_what_chunk_servers_have_seen(tmp_path):
    """The database restored from an older backup: chunk servers follow a
    newer term; the next election jumps past it, in one step."""
    store = _store(tmp_path / 'm.sqlite')
    assert store.take_term(0, 'http://a', above=41) == 42
    assert store.leader_record()['term'] == 42
    assert store.take_term(42, 'http://a', above=7) == 43   # below: +1
    with pytest.raises(exception.NotLeader, match='master-term'):
        store.take_term(43, 'http://a', above=2 ** 63 - 1)
    assert store.leader_record()['term'] == 43
