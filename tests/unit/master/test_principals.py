"""Keys per role in the master's REST API, in process (aiohttp's test
server over a SQLite store): a principal signs with its own key, its
role limits the routes (403 naming the principal, its role and what to
do), a host principal asks only for its own host, a rotated key works
for its window only, a revoked one not at all, and a signature made for
another master is refused."""

import asyncio
import json
import time

import pytest
from aiohttp import test_utils

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.master import api
from cinder_ursa.master import store as store_mod
from cinder_ursa.protocol import roles

KEY = b'k' * 32
NOVA = b'n' * 64
HOST = b'h' * 64


@pytest.fixture
def store(tmp_path):
    s = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'))
    s.upgrade()
    s.create_principal('ha', 'nova_ha', NOVA)
    s.create_principal('compute-1', 'host', HOST)
    yield s
    s.close()


def call(store, requests, names=None, **api_kwargs):
    """Send ``(principal, key, method, path, body)`` requests, signed v3
    as that principal for the test server's address (or, with the Host
    header saying so, for ``authority`` if a sixth item gives it: a
    request captured on its way there), to a MasterAPI over ``store``.  Returns
    the ``(status, json)`` of each; ``names``: the master's names (a
    callable of the server's own authority)."""
    async def go():
        master = api.MasterAPI(store, KEY, **api_kwargs)
        server = test_utils.TestServer(master.app())
        out = []
        async with test_utils.TestClient(server) as client:
            own = auth.authority(str(client.make_url('/')))
            master.names = names(own) if names else frozenset({own})
            for item in requests:
                principal, key, method, path, body = item[:5]
                authority = item[5] if len(item) > 5 else own
                if body is not None:
                    body = json.dumps(body).encode()
                target, _, query = path.partition('?')
                headers = {auth.HEADER: auth.sign(
                    key, method, target, query, body or b'',
                    principal=principal, authority=authority),
                    'Content-Type': 'application/json'}
                if authority != own:
                    # Sent as it was to the master it was signed for.
                    headers['Host'] = authority
                resp = await client.request(method, path, data=body,
                                            headers=headers)
                out.append((resp.status, await resp.json()
                            if resp.content_type == 'application/json'
                            else None))
        return out
    return asyncio.run(go())


def one(store, principal, key, method, path, body=None, **kw):
    return call(store, [(principal, key, method, path, body)], **kw)[0]


def test_every_role_route_is_a_route_of_the_api(store):
    """A route missing from the API (renamed, a typo) would be refused
    to the role that needs it, with no test noticing."""
    app = api.MasterAPI(store, KEY).app()
    routes = {(r.method, r.resource.canonical[len('/v1'):])
              for r in app.router.routes() if r.resource is not None}
    for role, allowed in roles.ROLES.items():
        assert allowed is None or allowed <= routes, (role,
                                                      allowed - routes)


def test_a_role_is_refused_the_routes_it_does_not_need(store):
    store.create_volume('vol1', 1 << 20, 1, 1, 1 << 20)
    status, reply = one(store, 'ha', NOVA, 'DELETE', '/v1/volumes/vol1')
    assert status == 403, reply
    message = reply['error']['message']
    for words in ("'ha'", 'nova_ha', 'DELETE /volumes/{ref}',
                  'ursa key create'):
        assert words in message, message
    assert store.get_volume('vol1')['name'] == 'vol1'
    # Its own routes work.
    for method, path, body, want in (
            ('GET', '/v1/cluster', None, 200),
            ('POST', '/v1/hosts/compute-9/fence', {'reason': 't'}, 200),
            ('GET', '/v1/hosts/compute-9', None, 200),
            ('DELETE', '/v1/hosts/compute-9/fence', None, 204)):
        status, reply = one(store, 'ha', NOVA, method, path, body)
        assert status == want, (method, path, reply)
    # Admin (the cluster key) may do everything, key management too.
    assert one(store, 'admin', KEY, 'DELETE', '/v1/volumes/vol1')[0] == 204
    assert one(store, 'ha', NOVA, 'GET', '/v1/principals')[0] == 403


def test_a_host_principal_asks_only_for_its_own_host(store):
    vol = store.create_volume('vol1', 1 << 20, 1, 1, 1 << 20)
    store.attach('vol1', 'compute-1')
    ok = one(store, 'compute-1', HOST, 'GET',
             '/v1/attachments?host=compute-1')
    assert ok[0] == 200 and [a['host'] for a in ok[1]['attachments']] == [
        'compute-1']
    for method, path, body in (
            ('GET', '/v1/attachments?host=compute-2', None),
            # No host: every host's attachments.
            ('GET', '/v1/attachments', None),
            ('GET', '/v1/volumes/vol1/attachments/compute-2', None),
            ('DELETE', '/v1/volumes/vol1/attachments/compute-2', None),
            ('POST', '/v1/volumes/vol1/lease',
             {'holder': 'compute-2:1:x'}),
            ('POST', '/v1/volumes/vol1/lease',
             {'holder': 'ursa-attach@compute-2'}),
            # Its own holder, by force: that would revoke another's.
            ('POST', '/v1/volumes/vol1/lease',
             {'holder': 'compute-1:1:x', 'force': True}),
            ('DELETE', '/v1/volumes/vol1/lease?holder=compute-2:1:x'
             '&generation=1', None),
            # Not a host's business at all.
            ('POST', '/v1/volumes/vol1/attachments', {'host': 'compute-1'}),
            ('DELETE', '/v1/volumes/vol1', None)):
        status, reply = one(store, 'compute-1', HOST, method, path, body)
        assert status == 403, (method, path, reply)
    assert one(store, 'compute-1', HOST, 'GET',
               '/v1/volumes/vol1/attachments/compute-1')[0] == 200
    # A lease for a holder on its host is its business (the master
    # answers 503, no chunk server here: past the check).
    status, reply = one(store, 'compute-1', HOST, 'POST',
                        '/v1/volumes/%s/lease' % vol['id'],
                        {'holder': 'compute-1:1:x'})
    assert status != 403, reply
    # A volume not attached to its host: not its business either.
    store.create_volume('vol2', 1 << 20, 1, 1, 1 << 20)
    status, reply = one(store, 'compute-1', HOST, 'POST',
                        '/v1/volumes/vol2/lease', {'holder': 'compute-1:1:x'})
    assert status == 403 and 'not attached to host compute-1' in \
        reply['error']['message'], reply
    # No such volume: 404, as for anyone.
    assert one(store, 'compute-1', HOST, 'POST', '/v1/volumes/vol3/lease',
               {'holder': 'compute-1:1:x'})[0] == 404


def test_a_host_changes_the_chunks_of_its_attached_volumes_only(store):
    """Dropping a replica (what a writer reports of a failed primary)
    and allocating chunks are a writer's: a host may map any volume (a
    clone reads its parents' maps), but change none it has no
    attachment of."""
    store.create_volume('vol2', 1 << 20, 1, 1, 1 << 20)
    for method, path, body in (
            ('POST', '/v1/volumes/vol2/chunks/0/drop',
             {'server_id': 1, 'epoch': 1}),
            ('GET', '/v1/volumes/vol2/chunks?start=0&count=1&allocate=1',
             None)):
        status, reply = one(store, 'compute-1', HOST, method, path, body)
        assert status == 403 and 'not attached to host compute-1' in \
            reply['error']['message'], (path, reply)
    status, reply = one(store, 'compute-1', HOST, 'GET',
                        '/v1/volumes/vol2/chunks?start=0&count=1')
    assert status == 200, reply


def test_rotation_keeps_the_old_key_for_its_window_only(store):
    new = b'2' * 64
    store.rotate_principal('ha', new, 3600)
    assert one(store, 'ha', NOVA, 'GET', '/v1/cluster')[0] == 200
    assert one(store, 'ha', new, 'GET', '/v1/cluster')[0] == 200
    shown = {p['name']: p for p in store.list_principals()}['ha']
    assert shown['previous_key_until'] > time.time() + 3000
    assert 'key' not in json.dumps(shown).replace('previous_key_until', '')
    # A rotation with no window: the old key at once refused.
    newer = b'3' * 64
    store.rotate_principal('ha', newer, 0)
    status, reply = one(store, 'ha', new, 'GET', '/v1/cluster')
    assert status == 401 and "principal 'ha'" in reply['error']['message']
    assert one(store, 'ha', newer, 'GET', '/v1/cluster')[0] == 200


def test_a_revoked_or_unknown_principal_is_refused(store):
    store.revoke_principal('ha')
    for name in ('ha', 'nobody'):
        status, reply = one(store, name, NOVA, 'GET', '/v1/cluster')
        assert status == 401, reply
        assert 'unknown principal %r' % name in reply['error']['message']


def test_a_signature_for_another_master_is_refused(store):
    """Review finding 4: each master has its own replay cache, so a
    request captured on its way to one master must not be accepted by
    another."""
    other = '127.0.0.1:1'
    status, reply = call(store, [('admin', KEY, 'GET', '/v1/volumes', None,
                                  other)])[0]
    assert status == 401
    assert "signed for the master at '127.0.0.1:1'" in \
        reply['error']['message']
    # Its Host header changed to this master's: the signature breaks.
    async def moved():
        master = api.MasterAPI(store, KEY)
        async with test_utils.TestClient(
                test_utils.TestServer(master.app())) as client:
            own = auth.authority(str(client.make_url('/')))
            master.names = frozenset({own})
            resp = await client.get('/v1/volumes', headers={
                auth.HEADER: auth.sign(KEY, 'GET', '/v1/volumes',
                                       principal='admin',
                                       authority=other)})
            return resp.status, await resp.json()
    status, reply = asyncio.run(moved())
    assert status == 401 and 'bad signature' in reply['error']['message']
    # Listed as one of this master's names: accepted.
    status, _ = call(store, [('admin', KEY, 'GET', '/v1/volumes', None,
                              other)],
                     names=lambda own: frozenset({own, other}))[0]
    assert status == 200


def test_v2_is_refused_unless_legacy_signatures_are_accepted(store):
    async def go(legacy):
        master = api.MasterAPI(store, KEY, accept_legacy_signatures=legacy)
        async with test_utils.TestClient(
                test_utils.TestServer(master.app())) as client:
            resp = await client.get('/v1/volumes', headers={
                auth.HEADER: auth.sign(KEY, 'GET', '/v1/volumes')})
            return resp.status, await resp.json()
    assert asyncio.run(go(True))[0] == 200
    status, reply = asyncio.run(go(False))
    assert status == 401 and 'v2 signature refused' in \
        reply['error']['message']


def test_keys_are_managed_wrapped_and_by_admin_only(store):
    key = auth.new_key()
    wrapped, nonce = auth.wrap_key(KEY, key)
    assert key.hex() not in wrapped and key.decode() not in wrapped
    status, reply = call(store, [
        ('admin', KEY, 'POST', '/v1/principals',
         {'name': 'cs1', 'role': 'chunkserver', 'key': wrapped,
          'nonce': nonce}),
        ('cs1', key, 'GET', '/v1/chunkservers', None),
        ('cs1', key, 'GET', '/v1/principals', None),
        ('admin', KEY, 'GET', '/v1/principals', None)])[3]
    assert status == 200
    assert sorted(p['name'] for p in reply['principals']) == [
        'compute-1', 'cs1', 'ha']
    assert key.decode() not in json.dumps(reply)
    results = call(store, [('cs1', key, 'GET', '/v1/chunkservers', None),
                           ('cs1', key, 'GET', '/v1/principals', None),
                           ('admin', KEY, 'DELETE', '/v1/principals/cs1',
                            None),
                           ('cs1', key, 'GET', '/v1/chunkservers', None)])
    assert [s for s, _ in results] == [200, 403, 204, 401]
    # Wrapped with another key than the one that signs: refused, no
    # principal made.
    wrapped, nonce = auth.wrap_key(b'x' * 32, key)
    status, reply = one(store, 'admin', KEY, 'POST', '/v1/principals',
                        {'name': 'cs2', 'role': 'chunkserver',
                         'key': wrapped, 'nonce': nonce})
    assert status == 400 and 'unwrap' in reply['error']['message']
    for name, role in (('admin', 'admin'), ('a b', 'host'),
                       ('cs3', 'root')):
        wrapped, nonce = auth.wrap_key(KEY, key)
        status, reply = one(store, 'admin', KEY, 'POST', '/v1/principals',
                            {'name': name, 'role': role, 'key': wrapped,
                             'nonce': nonce})
        assert status == 400, (name, role, reply)
    assert 'cs2' not in [p['name'] for p in store.list_principals()]


def test_unknown_principals_cost_one_database_read_a_second(store):
    """Anyone can name a principal: a flood of unknown names must not
    become a flood of database reads."""
    reads = []
    real = store.principal_keys

    def counting():
        reads.append(1)
        return real()
    store.principal_keys = counting
    now = [1000.0]
    cache = api.PrincipalCache(store, KEY, clock=lambda: now[0])

    async def db(fn, *args):
        return fn(*args)
    cache.db = db

    async def go():
        for i in range(100):
            assert await cache.lookup('nobody%d' % i) is None
        assert len(reads) == 1
        now[0] += 1.5
        assert await cache.lookup('nobody') is None
        assert len(reads) == 2
        assert (await cache.lookup('ha'))[0] == 'nova_ha'
        assert len(reads) == 2
        assert await cache.lookup('admin') == ('admin', (KEY,))
    asyncio.run(go())


def test_store_checks_names_and_roles(store):
    with pytest.raises(exception.AlreadyExists):
        store.create_principal('ha', 'nova_ha', NOVA)
    with pytest.raises(exception.NotFound):
        store.rotate_principal('nobody', NOVA, 10)
    with pytest.raises(exception.NotFound):
        store.revoke_principal('nobody')
    with pytest.raises(exception.InvalidArgument, match='cluster key'):
        store.revoke_principal('admin')


def test_the_keys_read_last_hold_while_the_database_is_away(store):
    now = [1000.0]
    cache = api.PrincipalCache(store, KEY, clock=lambda: now[0])
    away = []

    async def db(fn, *args):
        if away:
            raise RuntimeError('database away')
        return fn(*args)
    cache.db = db

    async def go():
        assert (await cache.lookup('ha'))[0] == 'nova_ha'
        away.append(1)
        now[0] += 10
        assert (await cache.lookup('ha'))[0] == 'nova_ha'
        # Never read: the error is the caller's (a 500, logged).
        fresh = api.PrincipalCache(store, KEY, clock=lambda: now[0])
        fresh.db = db
        with pytest.raises(RuntimeError):
            await fresh.lookup('ha')
    asyncio.run(go())


def test_a_chunkserver_principal_speaks_for_its_hosts_servers(store):
    key = b'c' * 64
    store.create_principal('stor1', 'chunkserver', key)

    def register(host, uuid):
        return ('stor1', key, 'POST', '/v1/chunkservers',
                {'uuid': uuid, 'host': host, 'address': '10.0.0.21',
                 'port': 9400})
    results = call(store, [register('stor1', 'u1'), register('stor2', 'u2')])
    assert results[0][0] == 200, results[0]
    status, reply = results[1]
    assert status == 403 and "not of 'stor2'" in reply['error']['message']
    own = results[0][1]['server']['id']
    other = store.register_server('u3', 'stor2', 'default', '10.0.0.22',
                                  9400, 0, 0, 0)[0]['id']
    results = call(store, [
        ('stor1', key, 'PUT', '/v1/chunkservers/%d/heartbeat' % own,
         {'uuid': 'u1'}),
        ('stor1', key, 'PUT', '/v1/chunkservers/%d/heartbeat' % other,
         {'uuid': 'u3'}),
        # No such server: no host, refused the same.
        ('stor1', key, 'PUT', '/v1/chunkservers/999/heartbeat', {})])
    assert [s for s, _ in results] == [200, 403, 403], results
