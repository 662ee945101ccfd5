"""The master's REST API in process (aiohttp's test server over a SQLite
store, no chunk servers): absurd numbers and bodies are a 400 that names
the field, never a 500 or an accepted request that breaks things later."""

import asyncio
import json

import pytest
from aiohttp import test_utils

from cinder_ursa.common import auth
from cinder_ursa.common import units
from cinder_ursa.master import api
from cinder_ursa.master import store as store_mod

KEY = b'k' * 32
MiB = units.Mi


@pytest.fixture
def store(tmp_path):
    s = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'))
    s.upgrade()
    yield s
    s.close()


def call(store, requests, **api_kwargs):
    """Send ``(method, path, body)`` requests, signed, to a MasterAPI over
    ``store``; ``body`` is JSON-encoded unless it is bytes.  Returns the
    ``(status, json)`` of each."""
    async def go():
        master = api.MasterAPI(store, KEY, **api_kwargs)
        server = test_utils.TestServer(master.app())
        out = []
        async with test_utils.TestClient(server) as client:
            for method, path, body in requests:
                if body is not None and not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                target, _, query = path.partition('?')
                headers = {auth.HEADER: auth.sign(
                    KEY, method, target, query, body or b''),
                    'Content-Type': 'application/json'}
                resp = await client.request(method, path, data=body,
                                            headers=headers)
                out.append((resp.status, await resp.json()
                            if resp.content_type == 'application/json'
                            else None))
        return out
    return asyncio.run(go())


def one(store, method, path, body=None, **api_kwargs):
    return call(store, [(method, path, body)], **api_kwargs)[0]


def assert_400(result, *words):
    status, body = result
    assert status == 400, body
    assert body['error']['code'] == 'invalid_argument'
    for w in words:
        assert w in body['error']['message'], body


def vol(size, **kw):
    body = dict(name='x', size=size, chunk_size=4 * MiB)
    body.update(kw)
    return body


@pytest.mark.parametrize('body,words', [
    # Past 64 bits: a 500 before.
    (vol(2 ** 80), ('"size"', 'out of range')),
    (vol(2 ** 63), ('"size"', 'out of range')),
    (vol(-2 ** 63), ('"size"', 'out of range')),
    (vol('9' * 5000), ('"size"',)),
    (vol('99999999999T'), ('"size"', 'out of range')),
    # In 64 bits but past max_volume_size: accepted before.
    (vol(2 ** 63 - 4096), ('max_volume_size', '[ursa_master]', '1 PiB')),
    (vol(2 ** 62), ('max_volume_size', '1 PiB')),
    (vol(units.Pi + 4096), ('max_volume_size',)),
    (vol(4096, replicas=2 ** 80), ('"replicas"', 'out of range')),
    (vol(4096, chunk_size=2 ** 64), ('"chunk_size"', 'out of range')),
    (vol(4096, stripe_count=-2 ** 70), ('"stripe_count"', 'out of range')),
    # QoS limits: 2**80 was a 500.
    (vol(4096, qos={'read_iops_sec': 2 ** 80}), ('read_iops_sec', '2**53')),
    (vol(4096, qos={'total_bytes_sec': 2 ** 53 + 1}),
     ('total_bytes_sec', '2**53')),
    (vol(4096, qos={'read_iops_sec': '9' * 5000}), ('read_iops_sec',)),
    (vol(4096, qos={'read_iops_sec': '\u00b2'}), ('read_iops_sec',)),
    (vol(4096, qos={'read_iops_sec': -1}), ('read_iops_sec',)),
])
def test_absurd_volume_numbers_are_400(store, body, words):
    assert_400(one(store, 'POST', '/v1/volumes', body), *words)
    assert store.list_volumes() == []


def test_the_largest_volumes_allowed_are_created(store):
    (s1, v1), (s2, v2), (s3, _) = call(store, [
        ('POST', '/v1/volumes', vol(units.Pi)),
        ('POST', '/v1/volumes', dict(vol(4096, qos={
            'read_iops_sec': 2 ** 53, 'write_bytes_sec': str(2 ** 53)}),
            name='y')),
        ('GET', '/v1/cluster', None)])
    assert (s1, s2, s3) == (201, 201, 200), (v1, v2)
    assert v1['volume']['size'] == units.Pi
    assert v2['volume']['qos'] == {'read_iops_sec': 2 ** 53,
                                   'write_bytes_sec': 2 ** 53}


def test_max_volume_size_is_configurable(store):
    big = 2 ** 63 - 4096
    status, body = one(store, 'POST', '/v1/volumes', vol(big),
                       max_volume_size=big)
    assert status == 201, body
    assert_400(one(store, 'POST', '/v1/volumes', dict(vol(8 * MiB),
                                                      name='y'),
                   max_volume_size=4 * MiB),
               'max_volume_size', '4 MiB')


def test_resize_and_clone_above_the_limit_are_400(store):
    gib = units.Gi
    results = call(store, [
        ('POST', '/v1/volumes', vol(2 * gib)),
        ('POST', '/v1/volumes/x/snapshots', {'name': 's'}),
        ('PUT', '/v1/volumes/x/size', {'size': 4 * gib}),
    ], max_volume_size=4 * gib)
    assert [s for s, _ in results] == [201, 201, 200], results
    limit = dict(max_volume_size=gib)
    # Resizing, also within 64 bits; cloning with or without a size.
    assert_400(one(store, 'PUT', '/v1/volumes/x/size', {'size': 2 * gib},
                   **limit), 'max_volume_size', '1 GiB')
    assert_400(one(store, 'PUT', '/v1/volumes/x/size', {'size': 2 ** 64},
                   **limit), '"size"', 'out of range')
    assert_400(one(store, 'POST', '/v1/volumes',
                   {'name': 'c', 'snapshot': 'x@s'}, **limit),
               'max_volume_size')
    assert_400(one(store, 'POST', '/v1/volumes',
                   {'name': 'c', 'snapshot': 'x@s', 'size': 4 * gib},
                   **limit), 'max_volume_size', '4 GiB')
    assert_400(one(store, 'POST', '/v1/volumes',
                   {'name': 'c', 'snapshot': 'x@s', 'size': 2 ** 70},
                   **limit), '"size"', 'out of range')
    assert store.get_volume('x')['size'] == 4 * gib
    assert [v['name'] for v in store.list_volumes()] == ['x']


@pytest.mark.parametrize('raw,words', [
    # 100,000 levels: json raised RecursionError (a 500 and a traceback).
    (b'[' * 100000 + b']' * 100000, ('nested too deeply',)),
    (b'{"name": ' + b'[' * 100000 + b']' * 100000 + b'}',
     ('nested too deeply',)),
    # An integer of 5,000 digits: int() raised ValueError.
    (b'{"name": "x", "size": ' + b'9' * 5000 + b'}', ('number',)),
])
def test_unparsable_bodies_are_400(store, raw, words):
    assert_400(one(store, 'POST', '/v1/volumes', raw), *words)


def test_every_integer_read_is_bounded(store):
    """Bodies, queries and paths: an integer past 64 bits names what it
    was in a 400 (it reached SQL and failed there, a 500)."""
    assert call(store, [('POST', '/v1/volumes', vol(16 * MiB))])[0][0] == 201
    huge = 2 ** 64
    cases = [
        ('GET', '/v1/volumes/x/chunks?start=%d' % huge, None,
         'query parameter "start"'),
        ('GET', '/v1/volumes/x/chunks?count=-%d' % huge, None,
         'query parameter "count"'),
        ('DELETE', '/v1/volumes/x/lease?holder=h&generation=%d' % huge,
         None, 'query parameter "generation"'),
        ('PUT', '/v1/chunkservers/%d/heartbeat' % huge, {}, 'id'),
        ('PUT', '/v1/chunkservers/1/heartbeat', {'capacity': huge},
         '"capacity"'),
        ('POST', '/v1/volumes/x/chunks/%d/drop' % huge,
         {'server_id': 1, 'epoch': 1}, 'idx'),
        ('POST', '/v1/volumes/x/chunks/0/drop',
         {'server_id': huge, 'epoch': 1}, '"server_id"'),
        ('POST', '/v1/volumes/x/chunks/0/drop',
         {'server_id': 1, 'epoch': -huge}, '"epoch"'),
        ('PUT', '/v1/volumes/x/lease',
         {'holder': 'h', 'generation': huge}, '"generation"'),
        # float(10**400) raised OverflowError.
        ('POST', '/v1/volumes/x/lease', {'holder': 'h', 'ttl': 10 ** 400},
         '"ttl"'),
        ('POST', '/v1/volumes/x/lease', b'{"holder": "h", "ttl": NaN}',
         '"ttl"'),
        ('POST', '/v1/chunkservers', {
            'uuid': 'u', 'host': 'h', 'address': '127.0.0.1', 'port': 1,
            'chunks': [['v', huge, 1]]}, '"chunks"'),
        ('POST', '/v1/chunkservers', b'{"uuid": "u", "host": "h", '
         b'"address": "127.0.0.1", "port": 1, "chunks": [["v", Infinity, '
         b'1]]}', '"chunks"'),
        ('POST', '/v1/chunkservers', {
            'uuid': 'u', 'host': 'h', 'address': '127.0.0.1',
            'port': 2 ** 80}, '"port"'),
    ]
    results = call(store, [(m, p, b) for m, p, b, _ in cases])
    for (method, path, _, word), result in zip(cases, results, strict=True):
        assert result[0] == 400, (method, path, result)
        assert_400(result, word)
    assert store.list_servers() == []


def test_cluster_status_with_volumes_summing_past_64_bits(store):
    """SUM(size) in SQL overflowed: GET /v1/cluster was a 500."""
    big = 2 ** 63 - 4096
    for name in ('a', 'b', 'c'):
        store.create_volume(name, big, chunk_size=4 * MiB)
    status, body = one(store, 'GET', '/v1/cluster')
    assert status == 200, body
    assert body['provisioned_bytes'] == 3 * big
    assert body['volumes'] == 3


def test_unauthenticated_garbage_is_401(store):
    async def go():
        master = api.MasterAPI(store, KEY)
        out = []
        async with test_utils.TestClient(
                test_utils.TestServer(master.app())) as client:
            for value in ('9' * 400 + ':' + 'a' * 64, '1:' + 'z' * 64,
                          '%d:%s' % (2 ** 70, 'a' * 64)):
                resp = await client.get('/v1/volumes',
                                        headers={auth.HEADER: value})
                out.append((resp.status, await resp.json()))
        return out
    for status, body in asyncio.run(go()):
        assert status == 401, body
        assert body['error']['code'] == 'not_authorized'
        assert auth.HEADER in body['error']['message']


def test_maintenance_takes_a_boolean_for_a_known_server(store):
    sid = store.register_server('u', 'h', 'r', '127.0.0.1', 9000, 1, 0,
                                1)[0]['id']
    path = '/v1/chunkservers/%d/maintenance' % sid
    status, body = one(store, 'PUT', path, {'maintenance': True})
    assert status == 200 and body['server']['maintenance'] is True
    assert_400(one(store, 'PUT', path, {'maintenance': 'yes'}),
               'maintenance', 'bool')
    assert_400(one(store, 'PUT', path, {}), 'maintenance', 'required')
    status, body = one(store, 'PUT', '/v1/chunkservers/77/maintenance',
                       {'maintenance': False})
    assert status == 404, body
    status, body = one(store, 'GET', '/v1/chunkservers')
    assert [s['maintenance'] for s in body['chunkservers']] == [True]


def test_draining_takes_a_boolean_and_a_server_is_shown(store):
    sid = store.register_server('u', 'h', 'r', '127.0.0.1', 9000, 1, 0,
                                1)[0]['id']
    path = '/v1/chunkservers/%d/draining' % sid
    status, body = one(store, 'PUT', path, {'draining': True})
    assert status == 200 and body['server']['draining'] is True
    assert_400(one(store, 'PUT', path, {'draining': 1}), 'draining', 'bool')
    assert_400(one(store, 'PUT', path, {}), 'draining', 'required')
    status, body = one(store, 'PUT', '/v1/chunkservers/77/draining',
                       {'draining': False})
    assert status == 404, body
    status, body = one(store, 'GET', '/v1/chunkservers/%d' % sid)
    assert status == 200 and body['server']['chunks'] == 0
    assert body['server']['draining'] is True
    status, body = one(store, 'GET', '/v1/cluster')
    assert body['servers']['draining'] == 1
    for key in ('bytes_left_estimate', 'rate_bytes_per_s', 'eta_s',
                'moves_pending'):
        assert key in body['repair'], key


def test_a_repair_round_runs_on_demand(store):
    status, body = one(store, 'POST', '/v1/repair', {})
    assert status == 200, body
    assert body['repair']['started'] == [] and body['repair']['running'] == 0


def test_a_heartbeat_reports_a_failed_data_directory(store):
    sid = store.register_server('u', 'h', 'r', '127.0.0.1', 9000, 1, 0,
                                1)[0]['id']
    path = '/v1/chunkservers/%d/heartbeat' % sid
    status, body = one(store, 'PUT', path, {'failure': 'x' * 10000})
    assert status == 200, body
    status, body = one(store, 'GET', '/v1/chunkservers')
    s = body['chunkservers'][0]
    assert s['state'] == 'failed' and len(s['failure']) == api.FAILURE_MAX
    assert_400(one(store, 'PUT', path, {'failure': 5}), 'failure')
    status, body = one(store, 'GET', '/v1/cluster')
    assert body['servers']['failed'] == 1


def test_heartbeats_carry_the_scrub_progress_shown_by_the_cluster(store):
    sid = store.register_server('u', 'h', 'r', '127.0.0.1', 9000, 1, 0,
                                1)[0]['id']
    path = '/v1/chunkservers/%d/heartbeat' % sid
    report = {'state': 'scrubbing', 'bytes_done': 3 * MiB,
              'bytes_total': 4 * MiB, 'rate_bytes_per_s': MiB, 'eta_s': 1,
              'pass_started': 1700000000.5, 'bad_blocks_found': 2,
              'bad_blocks_repaired': 1, 'bad_blocks_unrepaired': 1,
              'last_error': 'e' * 10000, 'junk': [1, 2],
              'light': {'blocks_made_identical': 4, 'deeper': {'x': 1}}}
    results = call(store, [('PUT', path, {'scrub': report}),
                           ('GET', '/v1/cluster', None)])
    assert results[0][0] == 200, results[0]
    sc = results[1][1]['scrub']
    assert (sc['bytes_done'], sc['bytes_total'], sc['eta_s']) == (
        3 * MiB, 4 * MiB, 1)
    assert (sc['bad_blocks_found'], sc['bad_blocks_repaired'],
            sc['bad_blocks_unrepaired']) == (2, 1, 1)
    assert sc['light_blocks_made_identical'] == 4
    assert sc['oldest_pass_started'] == 1700000000.5
    # Kept short and flat: only what is shown.
    assert len(sc['errors']) == 1
    assert len(sc['errors'][0]) < api.SCRUB_TEXT_MAX + 20
    mine = sc['servers'][str(sid)]
    assert 'junk' not in mine and 'deeper' not in mine['light']
    assert_400(one(store, 'PUT', path, {'scrub': 'fast'}), 'scrub')


@pytest.mark.parametrize('method,path,body,what', [
    ('POST', '/v1/volumes', vol(4096, name='x@y'), 'volume name'),
    ('POST', '/v1/volumes', vol(4096, name='..'), 'volume name'),
    ('PATCH', '/v1/volumes/ok', {'name': 'a\nb'}, 'volume name'),
    ('POST', '/v1/volumes/ok/snapshots', {'name': 's@t'}, 'snapshot name'),
])
def test_names_outside_the_safe_set_are_400(store, method, path, body,
                                            what):
    store.create_volume('ok', 4096)
    assert_400(one(store, method, path, body), what,
               'A-Z a-z 0-9 . _ -', 'starting with a letter')
    assert [v['name'] for v in store.list_volumes()] == ['ok']
    assert store.list_snapshots() == []


def _registration(**fields):
    return dict({'uuid': 'big', 'host': 'h', 'address': '127.0.0.1',
                 'port': 9000}, **fields)


def test_a_registration_may_list_millions_of_replicas(store):
    """A server holding more replicas than a 4 MiB body lists sends them
    grouped by volume ("held"); the master reads every one (and says how
    many), and classifies them."""
    from cinder_ursa.chunkserver import controlplane
    vid = store.create_volume('v', 2 ** 40, replicas=1, min_replicas=1,
                              chunk_size=4 * MiB)['id']
    n = 400000          # ~3.9 MB as "held", ~20 MB as a list
    chunks = [(vid, i, 1) for i in range(n)] + [('nobody', 0, 1)]
    fields = controlplane.held_fields(chunks)
    assert set(fields) == {'held'}
    body = json.dumps(_registration(**fields), separators=(',', ':')).encode()
    assert len(body) < 4 * MiB < len(json.dumps(chunks))
    status, reply = one(store, 'POST', '/v1/chunkservers', body)
    assert status == 200, reply
    assert reply['reported'] == n + 1
    # None allocated: every one is an orphan to delete.
    assert len(reply['orphans']) == n + 1
    # Over 4 MiB: refused elsewhere, read here up to the option.
    big = json.dumps(_registration(
        chunks=[[vid, i, 1] for i in range(120000)])).encode()
    assert len(big) > 4 * MiB
    status, reply = one(store, 'POST', '/v1/chunkservers', big)
    assert status == 200 and reply['reported'] == 120000
    status, _ = one(store, 'POST', '/v1/chunkservers', big,
                    registration_max_body=4 * MiB)
    assert status == 413
    status, _ = one(store, 'PATCH', '/v1/volumes/v', big)
    assert status == 413


def test_small_servers_still_send_the_list_every_master_reads():
    from cinder_ursa.chunkserver import controlplane
    chunks = [('v', i, 1) for i in range(10)]
    assert controlplane.held_fields(chunks) == {'chunks': chunks}


@pytest.mark.parametrize('held', [
    {'v': [1]}, {'v': [1, 'x']}, {'v': 'ab'}, {'v': [1, 2 ** 63]},
    {'v': [1.5, 2]}, {'v': [True, 1]}])
def test_malformed_held_replicas_are_400(store, held):
    status, body = one(store, 'POST', '/v1/chunkservers',
                       _registration(held=held))
    assert status == 400 and 'held' in body['error']['message'], body


def test_one_request_allocates_at_most_8192_chunks(store):
    store.register_server('u', 'h', 'r', '127.0.0.1', 9000, 1, 0, 1)
    store.create_volume('many', 2 ** 40, replicas=1, min_replicas=1,
                        chunk_size=4 * MiB)
    assert_400(one(store, 'GET', '/v1/volumes/many/chunks?start=0&count='
                   '8193&allocate=1'), 'limited to 8192')
    status, body = one(store, 'GET', '/v1/volumes/many/chunks?start=0&'
                       'count=8192&allocate=1')
    assert status == 200 and len(body['chunks']) == 8192
    status, body = one(store, 'GET', '/v1/volumes/many/chunks?start=0&'
                       'count=65536')
    assert status == 200 and len(body['chunks']) == 8192
