"""paging.Pages, the walk over a paginated listing, against an in-memory
master that follows the REST API's paging rules (keyset by name, a 400
for a marker naming no volume), while volumes come and go between pages;
and against a master older than pagination."""

import random
import urllib.parse

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import paging
from cinder_ursa.protocol import rest


class PagingMaster:
    """GET /v1/volumes as the master answers it; ``between`` runs before
    every request after the first (volumes created and deleted while a
    client walks the pages)."""

    def __init__(self, names, between=None):
        self.names = set(names)
        self.between = between
        self.requests = []

    def send(self, req):
        assert (req.method, req.path) == ('GET', '/volumes')
        if self.requests and self.between:
            self.between(self)
        params = dict(req.params or {})
        self.requests.append(params)
        desc = params.get('sort_dir') == 'desc'
        listed = sorted(self.names, reverse=desc)
        marker = params.get('marker')
        if marker is not None:
            if marker not in self.names:
                raise exception.MarkerNotFound(reason='%s names no volume'
                                               % marker)
            listed = [n for n in listed if (n < marker if desc
                                            else n > marker)]
        limit = params['limit']
        reply = {'volumes': [{'name': n} for n in listed[:limit]]}
        if len(listed) > limit:
            query = dict(params, marker=listed[limit - 1])
            reply['volumes_links'] = [{'rel': 'next', 'href': (
                '/v1/volumes?' + urllib.parse.urlencode(query))}]
        return reply


def walk(master, pages):
    """Items of ``pages`` as the clients' _walk hands them on."""
    out = []
    while (req := pages.request()) is not None:
        try:
            reply = master.send(req)
        except exception.MarkerNotFound:
            if not pages.marker_lost():
                raise
            continue
        out.extend(i['name'] for i in pages.answer(reply))
    return out


def names(n, prefix='v'):
    return ['%s%04d' % (prefix, i) for i in range(n)]


def test_pages_hand_on_every_volume_once():
    master = PagingMaster(names(25))
    assert walk(master, paging.volume_pages(page_size=10)) == names(25)
    assert [r.get('marker') for r in master.requests] == [
        None, 'v0009', 'v0019']
    assert all(r['limit'] == 10 for r in master.requests)
    master = PagingMaster(names(25))
    assert walk(master, paging.volume_pages(page_size=10,
                                          descending=True)) == names(25)[::-1]


@pytest.mark.parametrize('gone,markers', [
    # The marker and the one before it: 2, then 3 back from the end.
    ({'v0009', 'v0008'}, [None, 'v0009', 'v0008', 'v0007', 'v0019']),
    # Three: 5 back (v0005), past v0006, which is seen again, skipped.
    ({'v0009', 'v0008', 'v0007'},
     [None, 'v0009', 'v0008', 'v0007', 'v0005', 'v0018', 'v0028']),
    # The whole first page: from the start again, all of it skipped.
    (set(names(10)), [None, 'v0009', 'v0008', 'v0007', 'v0005', 'v0001',
                      None, 'v0019']),
])
def test_a_marker_deleted_between_two_pages_steps_back(gone, markers):
    def between(m):
        # Before the second page: the marker (the last volume of the
        # first page), and maybe volumes before it, are deleted.
        if len(m.requests) == 1:
            m.names -= gone
    master = PagingMaster(names(30), between)
    got = walk(master, paging.volume_pages(page_size=10))
    assert got == names(30)     # the deleted were handed on before
    assert [r.get('marker') for r in master.requests] == markers


def test_every_volume_that_stays_is_handed_on_once_under_churn():
    rng = random.Random(7)
    stay = set(names(300, 's'))
    counter = iter(range(10 ** 6))

    def churn(m):
        # Create some, delete some (the marker too, often).
        for _ in range(rng.randrange(8)):
            m.names.add('c%06d' % next(counter) if rng.random() < .5 else
                        's%04d.%d' % (rng.randrange(300), next(counter)))
        goners = [n for n in m.names if n not in stay]
        last = m.requests[-1].get('marker')
        for n in rng.sample(goners, min(len(goners), rng.randrange(8))):
            m.names.discard(n)
        if last in m.names and last not in stay:
            m.names.discard(last)
    for seed in range(5):
        rng.seed(seed)
        start = set(stay) | {'t%04d' % i for i in range(100)}
        master = PagingMaster(start, churn)
        got = walk(master, paging.volume_pages(page_size=rng.choice(
            [1, 3, 7, 50])))
        assert len(got) == len(set(got)), 'a volume handed on twice'
        assert stay <= set(got), sorted(stay - set(got))[:5]


def test_a_limit_stops_the_walk_and_names_where_to_go_on():
    master = PagingMaster(names(25))
    pages = paging.volume_pages(limit=12, page_size=5)
    assert walk(master, pages) == names(12)
    assert pages.next_marker == 'v0011'
    assert [r['limit'] for r in master.requests] == [5, 5, 2]
    pages = paging.volume_pages(limit=5, marker='v0019')
    assert walk(master, pages) == names(25)[20:]
    assert pages.next_marker is None
    pages = paging.volume_pages(limit=25)
    assert walk(master, pages) == names(25) and pages.next_marker is None
    # A master whose pages are smaller than the limit (max_list_limit):
    # asked again until the limit is reached.
    small = PagingMaster(names(25))
    real = small.send
    small.send = lambda req: real(req._replace(params=dict(
        req.params, limit=min(req.params['limit'], 4))))
    pages = paging.volume_pages(limit=10)
    assert walk(small, pages) == names(10)
    assert pages.next_marker == 'v0009'


def test_the_callers_own_marker_naming_nothing_raises():
    master = PagingMaster(names(5))
    with pytest.raises(exception.MarkerNotFound):
        walk(master, paging.volume_pages(marker='nope'))
    assert len(master.requests) == 1


@pytest.mark.parametrize('limit', [0, -1])
def test_a_limit_below_one_is_refused_before_any_request(limit):
    with pytest.raises(exception.InvalidArgument):
        paging.volume_pages(limit=limit)


def test_a_master_older_than_pagination_is_asked_once():
    """It ignores the parameters and sends every volume, without links:
    the walk does not ask again (forever) from the last one."""
    requests = []

    def old_master(req):
        requests.append(req)
        return {'volumes': [{'name': n} for n in names(2500)]}
    pages = paging.volume_pages()
    got = []
    while (req := pages.request()) is not None:
        got.extend(pages.answer(old_master(req)))
    assert len(requests) == 1 and len(got) == 2500
    # With a limit: the first ``limit`` of them.
    pages = paging.volume_pages(limit=10)
    assert [i['name'] for i in pages.answer(old_master(pages.request()))] \
        == names(10)
    assert pages.request() is None


def test_a_link_back_to_the_same_marker_ends_the_walk():
    def stuck(req):
        return {'volumes': [{'name': 'a'}], 'volumes_links': [
            {'rel': 'next', 'href': '/v1/volumes?limit=1&marker=a'}]}
    pages = paging.volume_pages(page_size=1)
    sent = 0
    while (req := pages.request()) is not None:
        sent += 1
        pages.answer(stuck(req))
        assert sent < 5
    assert sent == 2


def test_the_request_carries_the_filters():
    req = rest.volumes(3, 'm', descending=True, name_prefix='db',
                       name_contains='x', status=['available', 'deleting'])
    assert req.params == {'limit': 3, 'marker': 'm', 'sort_dir': 'desc',
                          'name_prefix': 'db', 'name_contains': 'x',
                          'status': 'available,deleting'}
    assert rest.volumes().params is None
    assert paging.next_marker({'volumes_links': [
        {'rel': 'next', 'href': '/v1/volumes?limit=2&marker=a%40b+c'}]},
        'volumes') == 'a@b c'
    assert paging.next_marker({'volumes': []}, 'volumes') is None


@pytest.mark.parametrize('marker', [
    'vol-01', 'a@b', 'a b+c%d', 'caf\u00e9 \u2603', '&=?#', '100%'])
def test_the_next_marker_is_decoded_as_urllib_would(marker):
    href = '/v1/volumes?' + urllib.parse.urlencode(
        {'limit': 5, 'marker': marker, 'status': 'available'},
        quote_via=urllib.parse.quote)
    assert paging.next_marker({'volumes_links': [
        {'rel': 'next', 'href': href}]}, 'volumes') == marker
    plus = '/v1/volumes?' + urllib.parse.urlencode({'marker': marker})
    assert paging.next_marker({'volumes_links': [
        {'rel': 'next', 'href': plus}]}, 'volumes') == marker


def test_snapshot_pages_name_snapshots_volume_at_name():
    every = [{'volume_name': v, 'name': n}
             for v in ('a', 'b') for n in ('s1', 's2', 's3')]

    def send(req):
        assert req.path in ('/snapshots', '/volumes/a/snapshots')
        keys = [paging.snapshot_key(s) for s in every]
        start = 0
        if req.params.get('marker'):
            start = keys.index(req.params['marker']) + 1
        page = every[start:start + req.params['limit']]
        reply = {'snapshots': page}
        if start + len(page) < len(every):
            reply['snapshots_links'] = [{'rel': 'next', 'href': (
                '/v1/snapshots?marker=' + urllib.parse.quote(
                    paging.snapshot_key(page[-1])))}]
        return reply
    pages = paging.snapshot_pages(page_size=4)
    got, sent = [], []
    while (req := pages.request()) is not None:
        sent.append(req.params)
        got.extend(pages.answer(send(req)))
    assert got == every
    assert [p.get('marker') for p in sent] == [None, 'b@s1']
    assert rest.snapshots('a', 2, 'a@s1', status='available').path == \
        '/volumes/a/snapshots'
    assert rest.snapshots().params is None
