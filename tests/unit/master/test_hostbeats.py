"""Client hosts' storage heartbeats at the master (nova_ha's second
heartbeat): kept in the leader's memory, read all at once, bounded, and
their answer says whether nova_ha fenced the host."""

import asyncio

import pytest

from cinder_ursa.master import api
from cinder_ursa.master import hostbeats
from tests.unit.master.test_principals import HOST
from tests.unit.master.test_principals import KEY
from tests.unit.master.test_principals import NOVA
from tests.unit.master.test_principals import call
from tests.unit.master.test_principals import one
from tests.unit.master.test_principals import store  # noqa: F401


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_ages_count_from_the_last_beat_and_a_new_leader_forgets():
    clock = Clock()
    beats = hostbeats.HostBeats(clock)
    beats.beat('c1', 1.0)
    clock.now += 2.5
    beats.beat('c2', 0.5)
    clock.now += 0.5
    status = beats.status()
    assert status == {'leading_for': 3.0, 'hosts': {
        'c1': {'age': 3.0, 'interval': 1.0, 'stopping': False},
        'c2': {'age': 0.5, 'interval': 0.5, 'stopping': False}}}
    # What it heard while it led before says nothing of the silence
    # since: a master that leads again starts from nobody.
    beats.reset()
    clock.now += 1
    assert beats.status() == {'leading_for': 1.0, 'hosts': {}}


def test_the_table_is_bounded(monkeypatch):
    monkeypatch.setattr(hostbeats, 'MAX_HOSTS', 3)
    clock = Clock()
    beats = hostbeats.HostBeats(clock)
    for h in ('a', 'b', 'c'):
        beats.beat(h, 1)
        clock.now += 1
    beats.beat('a', 1)          # known: nobody goes
    beats.beat('d', 1)          # the one silent the longest (b) goes
    assert sorted(beats.status()['hosts']) == ['a', 'c', 'd']
    clock.now += hostbeats.FORGET_AFTER + 1
    beats.beat('c', 1)
    beats.beat('e', 1)          # every silent one forgotten at once
    assert sorted(beats.status()['hosts']) == ['c', 'e']


def beat(host, interval=1.0):
    return ('PUT', '/v1/hosts/%s/heartbeat' % host, {'interval': interval})


def test_heartbeats_are_read_at_once_and_say_when_nova_ha_fenced(
        store):  # noqa: F811
    results = call(store, [
        ('ha',) + (NOVA,) + beat('compute-1'),
        ('ha', NOVA, 'GET', '/v1/host-heartbeats', None),
        ('admin', KEY, 'POST', '/v1/hosts/compute-1/fence',
         {'reason': 'nova-ha recovery 7'}),
        ('ha',) + (NOVA,) + beat('compute-1'),
        ('admin', KEY, 'DELETE', '/v1/hosts/compute-1/fence', None),
        ('ha',) + (NOVA,) + beat('compute-1', 0.5),
        ('ha', NOVA, 'GET', '/v1/host-heartbeats', None)])
    assert [s for s, _ in results] == [200, 200, 200, 200, 204, 200, 200]
    first = results[0][1]['heartbeat']
    assert first['host'] == 'compute-1' and first['fenced'] is False
    assert first['fence_reason'] is None and first['leading_for'] >= 0
    view = results[1][1]['heartbeats']
    assert list(view['hosts']) == ['compute-1']
    assert 0 <= view['hosts']['compute-1']['age'] < 5
    assert view['hosts']['compute-1']['interval'] == 1.0
    # Fenced and unfenced through this master: told at the next beat,
    # not a second later.
    fenced = results[3][1]['heartbeat']
    assert fenced['fenced'] is True
    assert fenced['fence_reason'] == 'nova-ha recovery 7'
    assert results[5][1]['heartbeat']['fenced'] is False
    assert results[6][1]['heartbeats']['hosts']['compute-1'][
        'interval'] == 0.5


@pytest.mark.parametrize('body,words', [
    ({}, ('"interval"', 'required')),
    ({'interval': 0}, ('interval',)),
    ({'interval': -1}, ('interval',)),
    ({'interval': 3601}, ('interval', '3600')),
    ({'interval': 'soon'}, ('"interval"', 'number')),
    ({'interval': True}, ('"interval"', 'number')),
    ({'interval': 1e999}, ('"interval"', 'finite')),
    ([1], ('JSON object',)),
])
def test_bad_heartbeats_are_400(store, body, words):  # noqa: F811
    status, reply = one(store, 'ha', NOVA, 'PUT',
                        '/v1/hosts/compute-1/heartbeat', body)
    assert status == 400, reply
    for w in words:
        assert w in reply['error']['message'], reply


def test_a_host_beats_for_itself_only(store):  # noqa: F811
    results = call(store, [
        ('compute-1', HOST) + beat('compute-1'),
        ('compute-1', HOST) + beat('compute-2'),
        ('compute-1', HOST, 'GET', '/v1/host-heartbeats', None),
        ('admin', KEY) + beat('x' * 300),
        ('ha', NOVA, 'GET', '/v1/host-heartbeats', None)])
    assert [s for s, _ in results] == [200, 403, 403, 400, 200]
    assert 'its own host' in results[1][1]['error']['message']
    assert list(results[4][1]['heartbeats']['hosts']) == ['compute-1']


def test_many_heartbeats_share_one_read_of_the_fenced_hosts(
        store):  # noqa: F811
    """After a fence (or an election) hundreds of heartbeats arrive
    before the fenced hosts are read: one read serves them all, and the
    fence made through this master is in every answer at once."""
    reads = []
    real = store.list_fenced_hosts

    def counting():
        reads.append(1)
        return real()
    store.list_fenced_hosts = counting

    async def go():
        service = api.MasterAPI(store, KEY).service
        hosts = ['h%d' % i for i in range(200)]
        first = await asyncio.gather(*(service.host_heartbeat(h, 1.0)
                                       for h in hosts))
        assert len(reads) == 1
        assert {a['fenced'] for a in first} == {False}
        await service.fence_host('h7', 'nova-ha recovery 1')
        again = await asyncio.gather(*(service.host_heartbeat(h, 1.0)
                                       for h in hosts))
        assert [a['host'] for a in again if a['fenced']] == ['h7']
        assert again[7]['fence_reason'] == 'nova-ha recovery 1'
        assert len(reads) <= 2
        # A fence on top of it, with another reason: both are kept, in
        # the answers at once and in the database; a retry adds nothing.
        await service.fence_host('h7', 'by ops')
        await service.fence_host('h7', 'nova-ha recovery 1')
        answer = await service.host_heartbeat('h7', 1.0)
        assert answer['fence_reason'] == 'nova-ha recovery 1; by ops'
        assert [r['reason'] for r in store.list_fenced_hosts()] == [
            'nova-ha recovery 1; by ops']
        await service.unfence_host('h7')
        assert (await service.host_heartbeat('h7', 1.0))['fenced'] is False
    asyncio.run(go())


def test_an_unreadable_fenced_list_answers_unknown_not_500(
        store):  # noqa: F811
    def broken():
        raise RuntimeError('database away')
    store.list_fenced_hosts = broken

    async def go():
        service = api.MasterAPI(store, KEY).service
        answer = await service.host_heartbeat('h1', 1.0)
        assert answer['fenced'] is None
        assert service.host_beats.status()['hosts']['h1']['age'] < 5
    asyncio.run(go())


def test_fence_reasons_add_up_bounded():
    from cinder_ursa.master.store import common
    assert common.fence_reasons(None, 'a') == 'a'
    assert common.fence_reasons('a', None) == 'a'
    assert common.fence_reasons('a', 'a') == 'a'
    assert common.fence_reasons('a; b', 'b') == 'a; b'
    assert common.fence_reasons('ab', 'b') == 'ab; b'
    long = common.fence_reasons('x' * common.MAX_FENCE_REASON, 'newest')
    assert len(long) == common.MAX_FENCE_REASON
    assert long.endswith('; newest')
