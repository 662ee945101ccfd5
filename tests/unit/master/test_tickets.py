"""Tickets from the master's REST API, in process (aiohttp's test server
over a SQLite store): a lease reply carries a ticket for the holder's
generation, a read-only ticket is issued on demand, both wrapped for the
principal that signed and naming every volume a read may reach (clone
parents, up the chain, through snapshots too); a host principal gets one
only for a volume attached to its host, nova_ha and chunkserver
principals none."""

import asyncio
import json
import math
import time

import pytest
from aiohttp import test_utils

from cinder_ursa.common import auth
from cinder_ursa.master import api
from cinder_ursa.master import opts
from cinder_ursa.master import store as store_mod
from cinder_ursa.protocol import tickets

KEY = b'k' * 32                 # the cluster key
HOST = b'h' * 64                # compute-1's (role host)
CINDER = b'c' * 64              # cinder's (role volume)
NOVA = b'n' * 64                # ha's (role nova_ha)
STOR = b's' * 64                # stor-1's (role chunkserver)
MiB = 1 << 20
BOTH = tickets.RIGHT_READ | tickets.RIGHT_WRITE


@pytest.fixture
def store(tmp_path):
    s = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'))
    s.upgrade()
    s.create_principal('compute-1', 'host', HOST)
    s.create_principal('cinder', 'volume', CINDER)
    s.create_principal('ha', 'nova_ha', NOVA)
    s.create_principal('stor-1', 'chunkserver', STOR)
    yield s
    s.close()


def call(store, requests, **api_kwargs):
    """Send ``(principal, key, method, path, body)`` requests, signed as
    that principal, to a MasterAPI over ``store``; the ``(status, json)``
    of each."""
    async def go():
        master = api.MasterAPI(store, KEY, **api_kwargs)
        out = []
        async with test_utils.TestClient(
                test_utils.TestServer(master.app())) as client:
            own = auth.authority(str(client.make_url('/')))
            for principal, key, method, path, body in requests:
                data = b'' if body is None else json.dumps(body).encode()
                target, _, query = path.partition('?')
                headers = {auth.HEADER: auth.sign(
                    key, method, target, query, data, principal=principal,
                    authority=own), 'Content-Type': 'application/json'}
                resp = await client.request(method, path, data=data or None,
                                            headers=headers)
                out.append((resp.status, await resp.json()))
        return out
    return asyncio.run(go())


def one(store, principal, key, method, path, body=None, **kw):
    return call(store, [(principal, key, method, path, body)], **kw)[0]


def snapshot(store, volume, name):
    taken = store.begin_snapshot(volume, name)
    store.finish_snapshot(taken['id'], True)
    return taken['id']


def clone(store, snap, name):
    return store.create_volume(name, MiB, 1, 1, MiB, parent=snap)['id']


def chain(store):
    """base <- mid (clone of base@s) <- top (clone of mid@t), and top
    attached to compute-1: {name: id}."""
    ids = {'base': store.create_volume('base', MiB, 1, 1, MiB)['id']}
    ids['mid'] = clone(store, snapshot(store, 'base', 's'), 'mid')
    ids['top'] = clone(store, snapshot(store, 'mid', 't'), 'top')
    store.attach('top', 'compute-1')
    return ids


def granted(reply, key):
    """The grant in a ticket reply, checked to be the one the chunk
    servers derive from the ticket and the cluster key."""
    grant = tickets.grant_from(reply, key)
    assert grant.session_key == tickets.session_key(
        tickets.ticket_key(KEY), grant.raw)
    assert reply['expires'] == grant.ticket.expires
    return grant


def test_a_lease_reply_carries_a_ticket_for_the_holder(store):
    ids = chain(store)
    holder = 'compute-1:7:x'
    (status, got), (renew_status, renewed) = call(store, [
        ('compute-1', HOST, 'POST', '/v1/volumes/top/lease',
         {'holder': holder, 'ttl': 10}),
        ('compute-1', HOST, 'PUT', '/v1/volumes/top/lease',
         {'holder': holder, 'generation': 1, 'ttl': 300})])
    assert status == 201, got
    lease = got['lease']
    grant = granted(got['ticket'], HOST)
    t = grant.ticket
    assert (t.volume, t.generation, t.rights, t.principal, t.host) == (
        ids['top'], lease['generation'], BOTH, 'compute-1', 'compute-1')
    assert set(t.readable) == set(ids.values())
    # The parents only as the snapshots the clones were made from.
    assert t.readable == {ids['top']: None,
                          ids['mid']: store.get_snapshot('mid@t')['seq'],
                          ids['base']: store.get_snapshot('base@s')['seq']}
    assert not t.may_read(ids['mid'], 0)
    assert t.expires == math.ceil(lease['expires_at']) + \
        api.TICKET_CLOCK_SLACK
    # Wrapped for compute-1: another key unwraps something else.
    assert tickets.grant_from(got['ticket'], CINDER).session_key != \
        grant.session_key
    # Renewing the lease renews the ticket: same generation, later expiry.
    assert renew_status == 200, renewed
    again = granted(renewed['ticket'], HOST).ticket
    assert again.generation == t.generation
    assert again.readable == t.readable
    assert again.expires >= t.expires + 280
    assert again.expires == math.ceil(renewed['lease']['expires_at']) + \
        api.TICKET_CLOCK_SLACK


def test_the_holders_host_is_named_as_holder_checks_derive_it(store):
    """ursa-attach's holders are ``agent@host``; a volume principal may
    take a lease for any host's holder."""
    ids = chain(store)
    status, got = one(store, 'cinder', CINDER, 'POST',
                      '/v1/volumes/%s/lease' % ids['mid'],
                      {'holder': 'ursa-attach@compute-5'})
    assert status == 201, got
    t = granted(got['ticket'], CINDER).ticket
    assert (t.volume, t.principal, t.host, set(t.readable)) == (
        ids['mid'], 'cinder', 'compute-5', {ids['mid'], ids['base']})


def test_a_read_only_ticket_for_an_attached_volume(store):
    ids = chain(store)
    before = time.time()
    for ref in ('top', ids['top']):
        status, got = one(store, 'compute-1', HOST, 'POST',
                          '/v1/volumes/%s/tickets' % ref, ticket_ttl=120)
        assert status == 201, got
        t = granted(got['ticket'], HOST).ticket
        assert (t.volume, t.generation, t.rights, t.principal, t.host) == (
            ids['top'], 0, tickets.RIGHT_READ, 'compute-1', 'compute-1')
        assert not t.writable
        assert set(t.readable) == set(ids.values())
        assert before + 120 <= t.expires <= time.time() + 121
    # An empty JSON object is no different; anything else is no body.
    assert one(store, 'compute-1', HOST, 'POST', '/v1/volumes/top/tickets',
               {})[0] == 201
    assert one(store, 'compute-1', HOST, 'POST', '/v1/volumes/top/tickets',
               ['x'])[0] == 400


def test_the_ticket_ttl_defaults_to_ten_minutes(store):
    chain(store)
    status, got = one(store, 'cinder', CINDER, 'POST',
                      '/v1/volumes/top/tickets')
    assert status == 201, got
    assert abs(got['ticket']['expires'] - (time.time() + 600)) <= 2
    option = {o.name: o for _, group in opts.list_opts()
              for o in group}['ticket_ttl']
    assert (option.default, option.type.min, option.type.max) == (
        600.0, 10.0, 86400.0)


def test_who_gets_a_read_only_ticket(store):
    ids = chain(store)
    # Not attached to compute-1: not its business.
    status, got = one(store, 'compute-1', HOST, 'POST',
                      '/v1/volumes/mid/tickets')
    assert status == 403, got
    assert 'not attached to host compute-1' in got['error']['message']
    # The Cinder driver and admin: any volume, named by no host.
    for name, key in (('cinder', CINDER), ('admin', KEY)):
        status, got = one(store, name, key, 'POST', '/v1/volumes/mid/tickets')
        assert status == 201, (name, got)
        t = granted(got['ticket'], key).ticket
        assert (t.volume, t.principal, t.host) == (ids['mid'], name, '')
    # Roles with no business on the data path.
    for name, key in (('ha', NOVA), ('stor-1', STOR)):
        status, got = one(store, name, key, 'POST', '/v1/volumes/mid/tickets')
        assert status == 403, (name, got)
        assert 'POST /volumes/{ref}/tickets' in got['error']['message']
    # No such volume: 404, as elsewhere (a host principal too).
    for name, key in (('cinder', CINDER), ('compute-1', HOST)):
        status, got = one(store, name, key, 'POST', '/v1/volumes/nope/tickets')
        assert status == 404, (name, got)


def test_a_rotated_principals_old_key_unwraps_what_it_signed_for(store):
    chain(store)
    store.rotate_principal('compute-1', b'2' * 64, 3600)
    for key in (HOST, b'2' * 64):
        status, got = one(store, 'compute-1', key, 'POST',
                          '/v1/volumes/top/tickets')
        assert status == 201, got
        granted(got['ticket'], key)


def test_snapshots_keep_the_parent_a_flattened_clone_let_go(store):
    """detach-parent: a flattened clone reads no parent any more, but
    a snapshot taken before still does (it keeps its parent), and a
    volume's ticket covers its snapshots' reads."""
    ids = chain(store)
    ids['flat'] = clone(store, store.get_snapshot('mid@t')['id'], 'flat')
    store.detach_parent('flat')
    snapshot(store, 'top', 'before')
    store.detach_parent('top')
    got = call(store, [('cinder', CINDER, 'POST', '/v1/volumes/%s/tickets'
                        % v, None) for v in ('flat', 'top')])
    flat, top = (granted(g['ticket'], CINDER).ticket for _, g in got)
    assert set(flat.readable) == {ids['flat']}
    assert set(top.readable) == {ids['top'], ids['mid'], ids['base']}


def test_more_ancestors_than_a_ticket_names_is_refused_clearly(store):
    """v0 <- v1 <- ... : v<n> reads through n other volumes; a ticket
    names at most MAX_READABLE, and no lease is taken on a volume that
    no ticket can cover."""
    n = tickets.MAX_READABLE + 1
    store.create_volume('v0', MiB, 1, 1, MiB)
    for i in range(1, n + 1):
        clone(store, snapshot(store, 'v%d' % (i - 1), 's'), 'v%d' % i)
    (ok, got), (status, refused), (lease_status, lease) = call(store, [
        ('cinder', CINDER, 'POST', '/v1/volumes/v%d/tickets' % (n - 1),
         None),
        ('cinder', CINDER, 'POST', '/v1/volumes/v%d/tickets' % n, None),
        ('cinder', CINDER, 'POST', '/v1/volumes/v%d/lease' % n,
         {'holder': 'compute-1:1:x'})])
    assert ok == 201, got
    assert len(granted(got['ticket'], CINDER).ticket.readable) == n
    for st, reply in ((status, refused), (lease_status, lease)):
        assert st == 409, reply
        message = reply['error']['message']
        for words in ('v%d' % n, 'more than %d' % tickets.MAX_READABLE,
                      'ursa volume flatten'):
            assert words in message, message
    assert store.get_volume('v%d' % n)['lease']['generation'] == 0


def test_a_holder_whose_host_no_ticket_holds_gets_no_lease(store):
    """255 characters fit the database, not always 255 bytes of UTF-8."""
    chain(store)
    status, got = one(store, 'cinder', CINDER, 'POST', '/v1/volumes/top/lease',
                      {'holder': '\u00e9' * 200 + ':1:x'})
    assert status == 400, got
    assert '255 bytes' in got['error']['message']
    assert store.get_volume('top')['lease']['generation'] == 0


def test_a_detached_host_renews_no_lease_and_gets_no_ticket(store):
    """A multiattach volume's shared lease outlives a detach (its
    generation is every writer's, nothing bumps it), and renewing joins
    the holder again: without a check of the attachment on renewal, a
    detached host would renew, and get a fresh write ticket, forever."""
    store.create_volume('shared', MiB, 1, 1, MiB, multiattach=True)
    store.attach('shared', 'compute-1')
    holder = 'compute-1:7:x'
    (status, got), = call(store, [
        ('compute-1', HOST, 'POST', '/v1/volumes/shared/lease',
         {'holder': holder, 'ttl': 10})])
    assert status == 201, got
    store.detach('shared', 'compute-1')
    status, got = one(store, 'compute-1', HOST, 'PUT',
                      '/v1/volumes/shared/lease',
                      {'holder': holder, 'ttl': 300,
                       'generation': got['lease']['generation']})
    assert status == 403, got
    assert 'not attached to host compute-1' in got['error']['message']


def test_a_re_admitted_writer_renews_into_a_ticket_of_the_new_generation(
        store):
    """compute-2 fenced, compute-1's writer of the multiattach volume they
    shared renews the generation it knows: the reply, and the ticket it
    writes with from then on, are of the new generation; compute-2's own
    renewals are refused."""
    other = b'o' * 64
    store.create_principal('compute-2', 'host', other)
    store.create_volume('shared', MiB, 1, 1, MiB, multiattach=True)
    for host in ('compute-1', 'compute-2'):
        store.attach('shared', host)
    (s1, one_got), (s2, _) = call(store, [
        ('compute-1', HOST, 'POST', '/v1/volumes/shared/lease',
         {'holder': 'compute-1:7:x', 'ttl': 30}),
        ('compute-2', other, 'POST', '/v1/volumes/shared/lease',
         {'holder': 'compute-2:7:x', 'ttl': 30})])
    assert (s1, s2) == (201, 201)
    assert one_got['lease']['generation'] == 1
    store.fence_host('compute-2')
    (status, got), (refused, why) = call(store, [
        ('compute-1', HOST, 'PUT', '/v1/volumes/shared/lease',
         {'holder': 'compute-1:7:x', 'generation': 1, 'ttl': 30}),
        ('compute-2', other, 'PUT', '/v1/volumes/shared/lease',
         {'holder': 'compute-2:7:x', 'generation': 1, 'ttl': 30})])
    assert status == 200, got
    assert got['lease']['generation'] == 2
    assert granted(got['ticket'], HOST).ticket.generation == 2
    # (Fenced, its attachment went with it.)
    assert refused == 403, why


def test_a_copy_up_ticket_is_for_a_clone_only(store):
    """A copy-up ticket writes, under no lease, every block its volume
    never wrote: nothing a volume that reads no parent needs, and on a
    volume in use, data slipped under its writer."""
    ids = chain(store)
    store.create_volume('plain', MiB, 1, 1, MiB)
    (ok, got), (bad, refused), (typed, wrong) = call(store, [
        ('cinder', CINDER, 'POST', '/v1/volumes/top/tickets',
         {'copy_up': True}),
        ('cinder', CINDER, 'POST', '/v1/volumes/plain/tickets',
         {'copy_up': True}),
        ('cinder', CINDER, 'POST', '/v1/volumes/top/tickets',
         {'copy_up': 'yes'})])
    assert ok == 201, got
    t = granted(got['ticket'], CINDER).ticket
    assert (t.volume, t.generation, t.rights) == (ids['top'], 0, BOTH)
    assert bad == 409, refused
    assert 'not a clone' in refused['error']['message']
    assert typed == 400, wrong
