"""Placement: distinct failure domains, balanced by free space."""

import collections
import random

import pytest

from cinder_ursa.master import placement


def servers(spec):
    """spec: [(host, rack, free)]"""
    return [{'id': i + 1, 'host': h, 'rack': r, 'free': f, 'state': 'up'}
            for i, (h, r, f) in enumerate(spec)]


def test_replicas_on_distinct_hosts():
    ss = servers([('a', 'r1', 100), ('a', 'r1', 100), ('b', 'r1', 100),
                  ('b', 'r2', 100), ('c', 'r2', 100)])
    hosts = {s['id']: s['host'] for s in ss}
    rng = random.Random(1)
    for _ in range(500):
        ids = placement.choose(ss, 3, 'host', rng=rng)
        assert len(ids) == 3
        assert len({hosts[i] for i in ids}) == 3


def test_racks_limit_the_replica_count():
    ss = servers([('a', 'r1', 1), ('b', 'r1', 1), ('c', 'r2', 1)])
    ids = placement.choose(ss, 3, 'rack', rng=random.Random(2))
    assert len(ids) == 2
    assert {ss[i - 1]['rack'] for i in ids} == {'r1', 'r2'}


def test_down_servers_are_never_chosen():
    ss = servers([('a', 'r', 100), ('b', 'r', 100), ('c', 'r', 100)])
    ss[1]['state'] = 'down'
    for _ in range(100):
        assert 2 not in placement.choose(ss, 3, 'server')


def test_equal_servers_get_equal_shares():
    ss = servers([(h, 'r', 1000) for h in 'abcdef'])
    rng = random.Random(3)
    counts = collections.Counter()
    for _ in range(3000):
        counts.update(placement.choose(ss, 3, 'host', rng=rng))
    # 9000 replicas over 6 servers: 1500 each, within 10%.
    for sid in range(1, 7):
        assert 1350 < counts[sid] < 1650, counts


def test_fuller_servers_get_fewer_chunks():
    ss = servers([('a', 'r', 900), ('b', 'r', 900), ('c', 'r', 900),
                  ('d', 'r', 100)])
    rng = random.Random(4)
    counts = collections.Counter()
    for _ in range(2000):
        counts.update(placement.choose(ss, 2, 'host', rng=rng))
    assert counts[4] < counts[1] / 2


@pytest.mark.parametrize('level', placement.DOMAINS)
def test_excluded_domains(level):
    ss = servers([('a', 'r1', 1), ('b', 'r2', 1)])
    dom = placement.domain_of(ss[0], level)
    assert placement.choose(ss, 2, level, exclude_domains={dom}) == [2]
