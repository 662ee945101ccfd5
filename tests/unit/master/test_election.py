"""Leader election of several masters over one SQLite file and a tooz
file:// backend in a temporary directory: a lone master leads at once,
a second stands by, a leader past its renew deadline refuses writes, a
deposed leader steps down, a standby takes over from a silent leader."""

import asyncio
import os

import pytest

from cinder_ursa import exception
from cinder_ursa.master import election
from cinder_ursa.master import store as store_mod

MiB = 1024 * 1024


class Master:
    """A store and an elector, as one ursa-master has."""

    def __init__(self, tmp_path, url, lease=1):
        self.store = store_mod.MetadataStore(
            'sqlite:///%s' % (tmp_path / 'm.sqlite'))
        self.store.upgrade()
        coord = tmp_path / 'coordination'
        os.makedirs(coord, exist_ok=True)
        self.events = []
        self.elector = election.Elector(
            self.store, self._db, url,
            # As ursa-master builds it (cmd/master.coordination_url).
            'file://%s?timeout=%d&executor=synchronous' % (coord, lease),
            renew_deadline=0.5,
            on_elected=lambda term, prev: self.events.append(('elected',
                                                              term, prev)),
            on_deposed=lambda: self.events.append(('deposed',)))
        self.store.guard = self.elector.guard

    async def _db(self, fn, *args):
        return fn(*args)

    def close(self):
        asyncio.run(self.elector.stop())
        self.store.close()


@pytest.fixture
def masters(tmp_path):
    made = []

    def make(url):
        made.append(Master(tmp_path, url))
        return made[-1]
    yield make
    for m in made:
        m.close()


def test_a_lone_master_leads_at_once_and_writes(masters):
    a = masters('http://a')
    asyncio.run(a.elector.round())
    assert a.elector.is_leader() and a.elector.term == 1
    assert a.events == [('elected', 1, None)]
    a.store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)


def test_a_second_master_stands_by_and_names_the_leader(masters):
    a, b = masters('http://a'), masters('http://b')
    asyncio.run(a.elector.round())
    asyncio.run(b.elector.round())
    asyncio.run(a.elector.round())
    assert not b.elector.is_leader()
    assert a.elector.status() == {'leader': 'http://a', 'term': 1,
                                  'standbys': ['http://b']}
    with pytest.raises(exception.NotLeader, match='the leader is http://a') \
            as e:
        b.store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    assert e.value.leader == 'http://a'


def test_a_leader_past_its_renew_deadline_refuses_writes(masters):
    a = masters('http://a')
    asyncio.run(a.elector.round())
    a.elector.renewed -= 1.0
    assert not a.elector.is_leader()
    with pytest.raises(exception.NotLeader):
        a.store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    # Renewed (nobody took its term), it acts again.
    asyncio.run(a.elector.round())
    assert a.elector.is_leader()


def test_a_deposed_leader_steps_down_on_its_next_round(masters):
    a, b = masters('http://a'), masters('http://b')
    asyncio.run(a.elector.round())
    asyncio.run(b.elector.round())
    # b takes the next term (as if a had gone silent).
    assert b.store.take_term(1, 'http://b') == 2
    with pytest.raises(exception.NotLeader, match='term 1 is over'):
        a.store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    asyncio.run(a.elector.round())
    assert a.events == [('elected', 1, None), ('deposed',)]
    assert a.elector.term is None and a.elector.leader == 'http://b'


def test_a_standby_takes_over_from_a_silent_leader(masters):
    a, b = masters('http://a'), masters('http://b')
    asyncio.run(a.elector.round())
    asyncio.run(b.elector.round())
    assert not b.elector.is_leader()
    # a's membership file is older than the 1 s lease.
    group = os.path.join(a.elector.coordination_url[len('file://'):]
                         .split('?')[0], 'groups')
    for root, _, files in os.walk(group):
        for f in files:
            if f.endswith('.raw'):
                os.utime(os.path.join(root, f), (1, 1))
    asyncio.run(b.elector.round())
    assert b.elector.is_leader() and b.elector.term == 2
    assert b.events == [('elected', 2, 'http://a')]
    # Its status, in the round it took over, lists not itself as a
    # standby.
    assert b.elector.status() == {'leader': 'http://b', 'term': 2,
                                  'standbys': []}


def test_a_stopping_leader_hands_over_at_the_next_round(masters):
    """A leader that stops gives its term up and leaves the group: a
    standby takes over at its next round, though the stopped leader's
    membership has not expired."""
    a, b = masters('http://a'), masters('http://b')
    asyncio.run(a.elector.round())
    asyncio.run(b.elector.round())
    asyncio.run(a.elector.stop())
    assert not a.elector.is_leader()
    assert a.events == [('elected', 1, None), ('deposed',)]
    assert a.store.leader_record()['leader'] is None
    with pytest.raises(exception.NotLeader):
        a.store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    asyncio.run(b.elector.round())
    assert b.elector.is_leader() and b.elector.term == 2
    assert b.events == [('elected', 2, None)]
    b.store.create_volume('v', 4 * MiB, chunk_size=4 * MiB)


def test_a_stopping_standby_leaves_the_leader_alone(masters):
    a, b = masters('http://a'), masters('http://b')
    asyncio.run(a.elector.round())
    asyncio.run(b.elector.round())
    asyncio.run(b.elector.stop())
    record = a.store.leader_record()
    assert (record['term'], record['leader']) == (1, 'http://a')
    asyncio.run(a.elector.round())
    assert a.elector.is_leader() and a.elector.status()['standbys'] == []
