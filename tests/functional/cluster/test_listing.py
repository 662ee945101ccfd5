"""Paginated volume listings against a real ursa-master (pages of at most
[ursa_master] max_list_limit = 4 here): the clients walk every page and
hand on each volume once while volumes are created and deleted between
pages, bad paging parameters are clear 400s, a client older than
pagination still gets every volume, and ``ursa volume list`` lists them
all by default."""

import json
import os

import pytest

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from tests.fixtures.cluster import module_cluster
from tests.fixtures.cluster import rest
from tests.fixtures.cluster import ursa

PAGE = 4
MiB = 1024 * 1024


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    yield from module_cluster(
        tmp_path_factory, 'listing', chunkservers=1,
        extra_conf='[ursa_master]\nmax_list_limit = %d\n' % PAGE)


@pytest.fixture
def volumes(cluster):
    """Volumes vol-00 .. vol-10 (eleven: three pages less one), deleted
    after the test with whatever the test made."""
    client = cluster.client()
    made = ['vol-%02d' % i for i in range(11)]
    for name in made:
        client.create_volume(name, 4 * MiB, chunk_size=4 * MiB,
                             replicas=1, min_replicas=1)
    yield made
    for v in client.volumes():
        client.delete_volume(v['name'])


def test_every_page_once_while_volumes_come_and_go(cluster, volumes):
    client = cluster.client()

    def create(name):
        client.create_volume(name, 4 * MiB, chunk_size=4 * MiB,
                             replicas=1, min_replicas=1)
    got = []
    # Pages of 3: the client asks for the next one once it has handed on
    # the last volume of the previous one.
    for v in client.iter_volumes(page_size=3):
        got.append(v['name'])
        if v['name'] == 'vol-02':
            # The end of the first page: its marker and a volume of the
            # next page go, one volume comes behind the walk, one ahead.
            client.delete_volume('vol-02')
            client.delete_volume('vol-03')
            create('vol-00a')
            create('vol-05a')
        elif v['name'] == 'vol-05a':
            # The end of the second: the marker again, and the next one.
            client.delete_volume('vol-05a')
            client.delete_volume('vol-06')
    assert got == ['vol-00', 'vol-01', 'vol-02', 'vol-04', 'vol-05',
                   'vol-05a', 'vol-07', 'vol-08', 'vol-09', 'vol-10']
    # Every volume there from start to end, once; none of the others
    # twice; the one created behind the walk not at all.
    stay = set(volumes) - {'vol-02', 'vol-03', 'vol-06'}
    assert stay <= set(got) and len(got) == len(set(got))


def test_volumes_lists_them_all_in_pages(cluster, volumes):
    client = cluster.client()
    assert [v['name'] for v in client.volumes()] == volumes
    page, following = client.volumes_page(6)
    assert [v['name'] for v in page] == volumes[:6]
    assert following == 'vol-05'
    page, following = client.volumes_page(6, following)
    assert [v['name'] for v in page] == volumes[6:] and following is None
    desc, _ = client.volumes_page(2, descending=True)
    assert [v['name'] for v in desc] == ['vol-10', 'vol-09']
    assert [v['name'] for v in client.volumes(name_contains='VOL-1')] == [
        'vol-10']
    with pytest.raises(exception.MarkerNotFound) as e:
        client.volumes_page(2, 'vol-99')
    assert e.value.http_status == 400


def test_a_page_holds_max_list_limit_at_most_and_links_the_next(
        cluster, volumes):
    status, body = rest(cluster, 'GET', '/volumes', params='?limit=1000')
    assert status == 200, body
    assert [v['name'] for v in body['volumes']] == volumes[:PAGE]
    assert body['volumes_links'] == [{
        'rel': 'next',
        'href': '/v1/volumes?limit=%d&marker=vol-03' % PAGE}]
    status, body = rest(cluster, 'GET', '/volumes',
                        params='?limit=%d&marker=vol-07' % PAGE)
    assert status == 200, body
    assert [v['name'] for v in body['volumes']] == volumes[8:]
    assert 'volumes_links' not in body


@pytest.mark.parametrize('query,words', [
    ('limit=-5', ('"limit"', '1 or more')),
    ('limit=0', ('"limit"', '1 or more')),
    ('limit=many', ('"limit"', 'integer')),
    ('limit=%d' % 10 ** 30, ('"limit"', 'out of range')),
    ('limit=2&colour=red', ('"colour"',)),
    ('sort_dir=sideways', ('"sort_dir"',)),
    ('status=broken', ('"status"', 'available')),
])
def test_bad_paging_parameters_are_clear_400s(cluster, query, words):
    status, body = rest(cluster, 'GET', '/volumes', params='?' + query)
    assert status == 400, body
    assert body['error']['code'] == 'invalid_argument'
    for word in words:
        assert word in body['error']['message'], body


def test_an_unknown_marker_is_a_400_saying_what_to_do(cluster, volumes):
    status, body = rest(cluster, 'GET', '/volumes',
                        params='?limit=2&marker=no-such-volume')
    assert status == 400, body
    assert body['error']['code'] == 'marker_not_found'
    assert 'no-such-volume' in body['error']['message']
    assert 'without a marker' in body['error']['message']


def test_a_client_older_than_pagination_still_gets_every_volume(
        cluster, volumes):
    """No parameter at all, as clients before this release ask: every
    volume in one answer ([ursa_master] legacy_full_listings), and the
    master says who still asks so."""
    status, body = rest(cluster, 'GET', '/volumes')
    assert status == 200, body
    assert [v['name'] for v in body['volumes']] == volumes
    assert 'volumes_links' not in body
    with open(os.path.join(cluster.data_dir, 'master.log')) as f:
        assert 'legacy_full_listings = false' in f.read()


def test_the_cli_lists_every_volume_by_default(cluster, volumes):
    r = ursa(cluster.data_dir, 'volume', 'list', '-f', 'json',
             '--page-size', '2')
    assert [v['name'] for v in json.loads(r.stdout)] == volumes
    r = ursa(cluster.data_dir, 'volume', 'list', '-f', 'json')
    assert [v['name'] for v in json.loads(r.stdout)] == volumes


def test_the_cli_pages_and_filters(cluster, volumes):
    r = ursa(cluster.data_dir, 'volume', 'list', '-f', 'value', '-c',
             'name', '--limit', '5', '--marker', 'vol-02')
    assert r.stdout.split() == volumes[3:8]
    assert 'ursa volume list --marker vol-07 --limit 5' in r.stderr
    r = ursa(cluster.data_dir, 'volume', 'list', '-f', 'value', '-c',
             'name', '--limit', '5', '--marker', 'vol-07')
    assert r.stdout.split() == volumes[8:] and r.stderr == ''
    r = ursa(cluster.data_dir, 'volume', 'list', '-f', 'value', '-c',
             'name', '--name-prefix', 'VOL-0', '--name-contains', '9',
             '--status', 'available', '--sort-dir', 'desc')
    assert r.stdout.split() == ['vol-09']
    r = ursa(cluster.data_dir, 'volume', 'list', '--marker', 'gone',
             check=False)
    assert r.returncode != 0
    assert 'gone' in r.stderr and 'names no volume' in r.stderr
    r = ursa(cluster.data_dir, 'volume', 'list', '--limit', '0',
             check=False)
    assert r.returncode != 0 and '1 or more' in r.stderr


def test_an_old_master_ignoring_the_parameters_is_asked_once(
        cluster, volumes, monkeypatch):
    """A master older than pagination answers every volume and no link,
    whatever the query: the new client takes them and stops."""
    client = master_mod.MasterClient(cluster.master_url, cluster.key)
    sent = []
    real = client._http.send

    def old_master(req):
        sent.append(req)
        return real(req._replace(params=None))
    monkeypatch.setattr(client._http, 'send', old_master)
    assert [v['name'] for v in client.volumes()] == volumes
    assert len(sent) == 1


def test_snapshot_pages_and_the_cli(cluster, volumes):
    client = cluster.client()
    for vol in ('vol-02', 'vol-01'):
        for name in ('a', 'b', 'c'):
            client.create_snapshot(vol, name)
    every = ['%s@%s' % (v, n) for v in ('vol-01', 'vol-02')
             for n in ('a', 'b', 'c')]
    got = [rest_key(s) for s in client.iter_snapshots(page_size=2)]
    assert got == every
    page, following = client.snapshots_page(4)
    assert [rest_key(s) for s in page] == every[:4]
    assert following == 'vol-02@a'
    assert [s['name'] for s in client.snapshots('vol-02')] == ['a', 'b', 'c']
    status, body = rest(cluster, 'GET', '/snapshots', params='?limit=100')
    assert len(body['snapshots']) == PAGE
    assert body['snapshots_links'][0]['href'].endswith(
        'marker=vol-02%40a')
    r = ursa(cluster.data_dir, 'snapshot', 'list', '-f', 'value', '-c',
             'volume', '-c', 'name', '--limit', '2', '--marker', 'vol-01@b')
    assert r.stdout.split() == ['vol-01', 'c', 'vol-02', 'a']
    assert '--marker vol-02@a --limit 2' in r.stderr
    r = ursa(cluster.data_dir, 'snapshot', 'list', '-f', 'value', '-c',
             'name', '--volume', 'vol-01', '--sort-dir', 'desc')
    assert r.stdout.split() == ['c', 'b', 'a']
    for ref in every:
        client.delete_snapshot(ref)


def rest_key(snap):
    return '%s@%s' % (snap['volume_name'], snap['name'])
