"""GET /v1/volumes in process: pages of at most ``limit`` volumes in name
order, the next one named by ``volumes_links``, filters, and a clear 400
for every bad paging parameter."""

import pytest

from tests.unit.master.test_api import MiB
from tests.unit.master.test_api import assert_400
from tests.unit.master.test_api import call
from tests.unit.master.test_api import one

NAMES = ['vol-%02d' % i for i in range(7)]


@pytest.fixture
def seven(store):
    for n in reversed(NAMES):
        store.create_volume(n, 4 * MiB, chunk_size=4 * MiB)
    return store


def names(body):
    return [v['name'] for v in body['volumes']]


def next_href(body):
    links = body.get('volumes_links')
    if links is None:
        return None
    (link,) = links
    assert link['rel'] == 'next'
    return link['href']


def walk(store, path, **api_kwargs):
    """Every page from ``path`` on, following the next links: the
    replies."""
    pages = []
    while path is not None:
        status, body = one(store, 'GET', path, **api_kwargs)
        assert status == 200, body
        pages.append(body)
        path = next_href(body)
        assert len(pages) < 20, 'the links go round in circles'
    return pages


def test_links_walk_every_volume_once_in_name_order(seven):
    pages = walk(seven, '/v1/volumes?limit=3')
    assert [names(p) for p in pages] == [NAMES[:3], NAMES[3:6], NAMES[6:]]
    assert next_href(pages[0]) == '/v1/volumes?limit=3&marker=vol-02'
    # The last page has no link; a page has what the API always gave.
    assert 'volumes_links' not in pages[-1]
    v = pages[0]['volumes'][0]
    assert {'allocated_chunks', 'allocated_bytes', 'lease', 'qos'} <= set(v)
    # Exactly a page's worth left: no empty page after it.
    assert len(walk(seven, '/v1/volumes?limit=7')) == 1
    back = walk(seven, '/v1/volumes?limit=4&sort_dir=desc')
    assert [names(p) for p in back] == [NAMES[:2:-1], NAMES[2::-1]]


def test_the_links_keep_the_filters(seven):
    seven.create_volume('other', 4 * MiB, chunk_size=4 * MiB)
    pages = walk(seven, '/v1/volumes?name_prefix=VOL-&status=available'
                        '&limit=5')
    assert [names(p) for p in pages] == [NAMES[:5], NAMES[5:]]
    assert next_href(pages[0]) == (
        '/v1/volumes?name_prefix=VOL-&status=available&limit=5'
        '&marker=vol-04')
    status, body = one(seven, 'GET', '/v1/volumes?name_contains=l-0'
                                     '&status=deleting,reverting')
    assert status == 200 and names(body) == []
    status, body = one(seven, 'GET', '/v1/volumes?name_contains=THE')
    assert status == 200 and names(body) == ['other']


def test_limit_is_capped_and_defaults_to_max_list_limit(seven):
    capped = walk(seven, '/v1/volumes?limit=100000', max_list_limit=3)
    assert [len(names(p)) for p in capped] == [3, 3, 1]
    assert next_href(capped[0]).endswith('limit=3&marker=vol-02')
    # A client of this release asks with a limit or a filter: a filter
    # alone gets a page of max_list_limit.
    status, body = one(seven, 'GET', '/v1/volumes?sort_dir=asc',
                       max_list_limit=2)
    assert names(body) == NAMES[:2] and next_href(body)


def test_a_request_without_parameters_gets_everything_while_legacy(seven):
    """Clients older than pagination send no parameter: every volume, in
    one answer, while [ursa_master] legacy_full_listings is true."""
    status, body = one(seven, 'GET', '/v1/volumes', max_list_limit=2)
    assert status == 200 and names(body) == NAMES
    assert 'volumes_links' not in body
    pages = walk(seven, '/v1/volumes', max_list_limit=2,
                 legacy_full_listings=False)
    assert [names(p) for p in pages] == [NAMES[:2], NAMES[2:4], NAMES[4:6],
                                         NAMES[6:]]


@pytest.mark.parametrize('query,words', [
    ('limit=-1', ('"limit"', '1 or more')),
    ('limit=0', ('"limit"', '1 or more', 'max_list_limit')),
    ('limit=ten', ('"limit"', 'integer')),
    ('limit=1.5', ('"limit"', 'integer')),
    ('limit=', ('"limit"', 'integer')),
    ('limit=%d' % 2 ** 64, ('"limit"', 'out of range')),
    ('limit=' + '9' * 5000, ('"limit"',)),
    ('limit=1&limit=2', ('"limit"', 'more than once')),
    ('marker=', ('"marker"', 'empty')),
    ('sort_dir=up', ('"sort_dir"', '"asc" or "desc"')),
    ('status=availabel', ('"status"', 'available, reverting, deleting')),
    ('status=,', ('"status"',)),
    ('stauts=available', ('"stauts"', 'name_prefix')),
    ('sort_key=size', ('"sort_key"',)),
])
def test_bad_paging_parameters_are_400(seven, query, words):
    assert_400(one(seven, 'GET', '/v1/volumes?' + query), *words)


def test_a_marker_naming_no_volume_is_400(seven):
    for marker in ('nope', 'vol-99', '%00'):
        status, body = one(seven, 'GET', '/v1/volumes?limit=2&marker='
                           + marker)
        assert status == 400, body
        assert body['error']['code'] == 'marker_not_found'
        assert 'names no volume' in body['error']['message']
    # A marker deleted between two pages: the same 400.
    first = one(seven, 'GET', '/v1/volumes?limit=2')[1]
    vol, _ = seven.begin_delete('vol-01')
    seven.finish_delete(vol['id'])
    status, body = one(seven, 'GET', next_href(first))
    assert status == 400 and 'vol-01' in body['error']['message']
    # By id: the same position as by name.
    vid = seven.get_volume('vol-02')['id']
    (s1, by_id), (s2, by_name) = call(seven, [
        ('GET', '/v1/volumes?limit=2&marker=' + vid, None),
        ('GET', '/v1/volumes?limit=2&marker=vol-02', None)])
    assert s1 == s2 == 200 and names(by_id) == names(by_name) == NAMES[3:5]


def test_a_full_listing_is_logged_once_per_peer(seven, caplog):
    caplog.set_level('WARNING', logger='cinder_ursa.master.api')
    call(seven, [('GET', '/v1/volumes', None)] * 3 +
         [('GET', '/v1/volumes?limit=1', None)])
    warned = [r for r in caplog.records
              if 'legacy_full_listings = false' in r.getMessage()]
    assert len(warned) == 1
    assert 'admin' in warned[0].getMessage()


def test_snapshot_pages_link_by_volume_and_name(seven):
    for vol in ('vol-01', 'vol-00'):
        for name in ('s1', 's2'):
            sid = seven.begin_snapshot(vol, name)['id']
            seven.finish_snapshot(sid, True)
    every = ['vol-00@s1', 'vol-00@s2', 'vol-01@s1', 'vol-01@s2']
    pages = []
    path = '/v1/snapshots?limit=3'
    while path is not None:
        status, body = one(seven, 'GET', path)
        assert status == 200, body
        pages.append(['%s@%s' % (s['volume_name'], s['name'])
                      for s in body['snapshots']])
        links = body.get('snapshots_links')
        path = links and links[0]['href']
    assert pages == [every[:3], every[3:]]
    status, body = one(seven, 'GET', '/v1/volumes/vol-01/snapshots?limit=1'
                                     '&name_prefix=S')
    assert status == 200, body
    assert [s['name'] for s in body['snapshots']] == ['s1']
    assert body['snapshots_links'][0]['href'] == (
        '/v1/volumes/vol-01/snapshots?name_prefix=S&limit=1'
        '&marker=vol-01%40s1')
    status, body = one(seven, 'GET', '/v1/snapshots?marker=vol-00@s9')
    assert status == 400 and body['error']['code'] == 'marker_not_found'
    assert_400(one(seven, 'GET', '/v1/snapshots?status=deleting'),
               '"status"', 'creating, available')
    assert_400(one(seven, 'GET', '/v1/snapshots?limit=0'), '"limit"')
    # Without parameters: every snapshot (legacy_full_listings).
    status, body = one(seven, 'GET', '/v1/snapshots', max_list_limit=1)
    assert len(body['snapshots']) == 4 and 'snapshots_links' not in body
