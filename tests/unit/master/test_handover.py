"""A live migration's handover of a volume's write lease, in the store
(and the service's fence after it): the standby attachment of the
destination, the handover it asks for at its first write, released by
the source or taken by force after lease_handover_timeout, and what the
source's host sees in its attachment listing."""

import asyncio
import json
import time

import pytest
from aiohttp import test_utils

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.master import api
from cinder_ursa.master import service as service_mod
from cinder_ursa.master import store as store_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol import lease_history
from tests.fixtures.master import add_servers
from tests.unit.master.test_service import FakeChunkServers

MiB = 1024 * 1024
SRC, DST = 'ursa-attach@src', 'ursa-attach@dst'


def summary(events):
    return [(e['event'], e['generation'], e['holder'], e['reason'])
            for e in events]


def flags(store, ref):
    """{host: (standby, release_requested)} of the volume's attachments,
    as each host's own listing shows them."""
    out = {}
    for a in store.list_attachments(ref=ref):
        mine = [x for x in store.list_attachments(host=a['host'])
                if x['volume_id'] == a['volume_id']]
        assert mine == [a]
        out[a['host']] = (a['standby'], a['release_requested'])
    return out


@pytest.fixture
def migrating(store):
    """Volume 'vm' attached to host src, whose agent holds its lease,
    and attached as a standby to host dst."""
    store.create_volume('vm', 16 * MiB, chunk_size=4 * MiB)
    store.attach('vm', 'src')
    store.acquire_lease('vm', SRC, 30)
    att = store.attach('vm', 'dst', standby=True)
    assert (att['standby'], att['release_requested']) == (True, False)
    return store


def test_only_a_standby_may_be_a_second_attachment(store):
    store.create_volume('vm', 16 * MiB, chunk_size=4 * MiB)
    # Attached nowhere else: an ordinary attachment, standby or not.
    assert store.attach('vm', 'src', standby=True)['standby'] is False
    with pytest.raises(exception.Conflict, match='attached to src; detach '
                       'it there first .a live migration.s destination '
                       'attaches as a standby'):
        store.attach('vm', 'dst')
    assert store.attach('vm', 'dst', standby=True)['standby'] is True
    # Idempotent, as it is.
    assert store.attach('vm', 'dst', standby=True)['standby'] is True
    assert store.attach('vm', 'dst')['standby'] is True
    # One migration at a time.
    with pytest.raises(exception.Conflict, match=r'attached to src, dst '
                       r'\(standby\): a standby attachment is one more'):
        store.attach('vm', 'third', standby=True)
    assert flags(store, 'vm') == {'src': (False, False),
                                  'dst': (True, False)}
    # No standby beside a source being detached.
    store.detach('vm', 'dst')
    store.update_attachment('vm', 'src', 'detaching')
    with pytest.raises(exception.Conflict, match='being detached from src'):
        store.attach('vm', 'dst', standby=True)
    # A multiattach volume's hosts all write: no standbys.
    store.create_volume('shared', 16 * MiB, chunk_size=4 * MiB,
                        multiattach=True)
    store.attach('shared', 'a')
    assert store.attach('shared', 'b', standby=True)['standby'] is False


def test_a_handover_released_by_the_source(migrating):
    s = migrating
    # Without asking for a handover, the lease is held as ever.
    with pytest.raises(exception.LeaseHeld):
        s.acquire_lease('vm', DST, 30)
    with pytest.raises(exception.HandoverPending) as ei:
        s.acquire_lease('vm', DST, 30, handover=True)
    assert 'held by %s, which was asked 0.0 s ago to hand it over to %s' % (
        SRC, DST) in str(ei.value)
    assert 'lease_handover_timeout' in str(ei.value)
    assert 9 < ei.value.retry_after <= 10
    lease = s.get_volume('vm')['lease']
    assert (lease['holder'], lease['generation'], lease['handover_to']) == (
        SRC, 1, DST)
    # The source's host is asked (its agent polls its attachments).
    assert flags(s, 'vm') == {'src': (False, True), 'dst': (True, False)}
    # Asking again does not start the wait again.
    time.sleep(0.05)
    with pytest.raises(exception.HandoverPending) as ei:
        s.acquire_lease('vm', DST, 30, handover=True)
    assert ei.value.retry_after < 9.95
    # The source renews meanwhile, then releases: handed over.
    s.renew_lease('vm', SRC, 1, 30)
    s.release_lease('vm', SRC, 1)
    assert flags(s, 'vm') == {'src': (False, False), 'dst': (True, False)}
    lease = s.acquire_lease('vm', DST, 30, handover=True)
    assert lease['generation'] == 2
    vol = s.get_volume('vm')
    assert (vol['lease']['holder'], vol['lease']['handover_to'],
            vol['lease']['handover_since']) == (DST, None, None)
    # The destination writes; the source is the standby now.
    assert flags(s, 'vm') == {'src': (True, False), 'dst': (False, False)}
    events = s.lease_history('vm')
    assert summary(events) == [
        ('acquire', 1, SRC, None),
        ('release', 1, SRC, 'handed over to %s' % DST),
        ('acquire', 2, DST, None)]
    assert lease_history.check(events, shared_ok=False) == []
    # The migration ends: the source is detached; nothing is revoked.
    assert s.detach('vm', 'src') is None
    assert flags(s, 'vm') == {'dst': (False, False)}


def test_a_source_that_does_not_hand_over_is_fenced_after_the_timeout(
        tmp_path):
    store = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'),
                                    lease_handover_timeout=0.3)
    store.upgrade()
    svc = service_mod.MasterService(store, b'k' * 32)
    svc.chunkservers = FakeChunkServers(store)
    add_servers(store, 3)
    try:
        store.create_volume('vm', 16 * MiB, chunk_size=4 * MiB)
        store.attach('vm', 'src')
        asyncio.run(svc.acquire_lease('vm', SRC, 30))
        store.attach('vm', 'dst', standby=True)
        sent = len(svc.chunkservers.sent)
        with pytest.raises(exception.HandoverPending):
            asyncio.run(svc.acquire_lease('vm', DST, 30, handover=True))
        # Nothing is fenced while the source may still hand over.
        assert len(svc.chunkservers.sent) == sent
        time.sleep(0.35)
        lease = asyncio.run(svc.acquire_lease('vm', DST, 30,
                                              handover=True))
        assert lease['generation'] == 2
        # The new generation is pushed: the source's writes are refused.
        opcode, body, to = svc.chunkservers.sent[-1]
        assert opcode == codec.FENCE and len(to) == 3
        assert control.decode_fence(body)[1] == 2
        with pytest.raises(exception.Fenced):
            store.renew_lease('vm', SRC, 1, 30)
        events = store.lease_history('vm')
        assert summary(events) == [
            ('acquire', 1, SRC, None),
            ('takeover', 1, SRC, 'taken by %s: the holder did not hand '
                                 'over in 0.3 s' % DST),
            ('acquire', 2, DST, None)]
        assert lease_history.check(events, shared_ok=False) == []
        assert flags(store, 'vm') == {'src': (True, False),
                                      'dst': (False, False)}
    finally:
        svc.stop()
        store.close()


def test_only_a_standby_asks_and_only_an_attached_holder_is_asked(store):
    store.create_volume('vm', 16 * MiB, chunk_size=4 * MiB)
    store.attach('vm', 'src')
    # A client holding the lease from a host with no attachment (a
    # tool's): nobody may ask it for a handover.
    store.acquire_lease('vm', 'tool-host:1:x', 30)
    store.attach('vm', 'dst', standby=True)
    with pytest.raises(exception.LeaseHeld):
        store.acquire_lease('vm', DST, 30, handover=True)
    store.release_lease('vm', 'tool-host:1:x', 1)
    store.acquire_lease('vm', SRC, 30)
    # A host with no attachment, or an ordinary one, asks nothing.
    with pytest.raises(exception.LeaseHeld):
        store.acquire_lease('vm', 'ursa-attach@third', 30, handover=True)
    store.detach('vm', 'dst')
    store.attach('vm', 'third', standby=True)
    store.update_attachment('vm', 'third', 'detaching')
    with pytest.raises(exception.LeaseHeld):
        store.acquire_lease('vm', 'ursa-attach@third', 30, handover=True)
    assert store.get_volume('vm')['lease']['handover_to'] is None
    # The holder asking again is the holder as before.
    assert store.acquire_lease('vm', SRC, 30, handover=True)[
        'generation'] == 3


def test_a_rolled_back_migration_forgets_the_handover(migrating):
    s = migrating
    with pytest.raises(exception.HandoverPending):
        s.acquire_lease('vm', DST, 30, handover=True)
    # Nova rolls the migration back: the destination is detached.
    assert s.detach('vm', 'dst') is None
    vol = s.get_volume('vm')
    assert (vol['lease']['holder'], vol['lease']['generation'],
            vol['lease']['handover_to']) == (SRC, 1, None)
    assert flags(s, 'vm') == {'src': (False, False)}
    # Migrated again later: the wait starts anew.
    s.attach('vm', 'dst', standby=True)
    with pytest.raises(exception.HandoverPending) as ei:
        s.acquire_lease('vm', DST, 30, handover=True)
    assert ei.value.retry_after > 9.9
    # The destination's host fenced (nova_ha): forgotten too.
    s.fence_host('dst', 'failed')
    assert s.get_volume('vm')['lease']['handover_to'] is None
    assert flags(s, 'vm') == {'src': (False, False)}
    assert [(e['event'], e['holder']) for e in s.lease_history('vm')] == [
        ('acquire', SRC)]


def test_a_standby_left_alone_is_the_volumes_attachment(migrating):
    """The source detached before the destination wrote (a guest that
    did not write yet): the destination's attachment is the volume's
    attachment, and the source's lease is revoked with its detach."""
    s = migrating
    fence = s.detach('vm', 'src')
    assert fence['generation'] == 2
    assert flags(s, 'vm') == {'dst': (False, False)}
    # Its first write takes the lease as any.
    assert s.acquire_lease('vm', DST, 30, handover=True)[
        'generation'] == 3
    # And it may be migrated in turn.
    assert s.attach('vm', 'next', standby=True)['standby'] is True


def test_ping_pong(migrating):
    """A source that writes again after handing over asks for the lease
    back as the destination did (as with RBD's exclusive lock)."""
    s = migrating
    with pytest.raises(exception.HandoverPending):
        s.acquire_lease('vm', DST, 30, handover=True)
    s.release_lease('vm', SRC, 1)
    s.acquire_lease('vm', DST, 30, handover=True)
    with pytest.raises(exception.HandoverPending):
        s.acquire_lease('vm', SRC, 30, handover=True)
    assert flags(s, 'vm') == {'src': (True, False), 'dst': (False, True)}
    s.release_lease('vm', DST, 2)
    assert s.acquire_lease('vm', SRC, 30, handover=True)['generation'] == 3
    assert flags(s, 'vm') == {'src': (False, False), 'dst': (True, False)}
    events = s.lease_history('vm')
    assert [e['reason'] for e in events if e['event'] == 'release'] == [
        'handed over to %s' % DST, 'handed over to %s' % SRC]
    assert lease_history.check(events, shared_ok=False) == []


def test_migration_0014_adds_standby_and_handover(store):
    """Attachments made before are no standbys, no handover pending (the
    fixture upgraded from nothing; the columns' server defaults are
    what rows of before get)."""
    import sqlalchemy as sa
    with store.engine.begin() as conn:
        cols = {c['name']: c for c in sa.inspect(conn).get_columns(
            'attachments')}
        vcols = {c['name'] for c in sa.inspect(conn).get_columns(
            'volumes')}
    assert not cols['standby']['nullable']
    assert cols['standby']['default'] is not None
    assert {'handover_to', 'handover_since'} <= vcols


# --- through the REST API, signed by each host's principal ------------------

SRC_KEY, DST_KEY, CINDER_KEY = b's' * 64, b'd' * 64, b'c' * 64


def call(store, requests):
    """Send ``(principal, key, method, path, body)`` requests, signed as
    that principal, to a MasterAPI over ``store``: the ``(status, json or
    None)`` of each."""
    async def go():
        master = api.MasterAPI(store, b'k' * 32)
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
                out.append((resp.status, await resp.json()
                            if resp.content_type == 'application/json'
                            else None))
        return out
    return asyncio.run(go())


def test_the_rest_api_of_a_handover(store):
    """Cinder (role volume) attaches the destination as a standby; each
    host's agent (role host) asks for and releases only what its host
    may: the destination's standby asks for the handover, a host with
    no standby attachment cannot."""
    store.create_principal('src', 'host', SRC_KEY)
    store.create_principal('dst', 'host', DST_KEY)
    store.create_principal('other', 'host', b'o' * 64)
    store.create_principal('cinder', 'volume', CINDER_KEY)
    store.create_volume('vm', 16 * MiB, chunk_size=4 * MiB)
    lease = '/v1/volumes/vm/lease'
    cinder = ('cinder', CINDER_KEY)
    src, dst = ('src', SRC_KEY), ('dst', DST_KEY)
    replies = call(store, [
        cinder + ('POST', '/v1/volumes/vm/attachments', {'host': 'src'}),
        src + ('POST', lease, {'holder': SRC}),
        cinder + ('POST', '/v1/volumes/vm/attachments', {'host': 'dst'}),
        cinder + ('POST', '/v1/volumes/vm/attachments',
                  {'host': 'dst', 'standby': True}),
        dst + ('POST', lease, {'holder': DST}),
        dst + ('POST', lease, {'holder': DST, 'handover': True}),
        src + ('GET', '/v1/attachments?host=src', None),
        ('other', b'o' * 64, 'POST', lease,
         {'holder': 'ursa-attach@other', 'handover': True}),
        cinder + ('POST', '/v1/volumes/vm/attachments',
                  {'host': 'dst', 'standby': 'yes'}),
        src + ('DELETE', lease + '?holder=%s&generation=1' % SRC, None),
        dst + ('POST', lease, {'holder': DST, 'handover': True}),
        dst + ('GET', '/v1/attachments?host=dst', None),
    ])
    (att_src, got_src, plain, standby, held, pending, listed, other, bad,
     released, got_dst, listed_dst) = replies
    assert att_src[0] == 201 and att_src[1]['attachment']['standby'] is False
    assert got_src[0] == 201
    assert plain[0] == 409 and 'attaches as a standby' in \
        plain[1]['error']['message']
    assert standby[0] == 201 and standby[1]['attachment']['standby'] is True
    assert held[0] == 409 and held[1]['error']['code'] == 'lease_held'
    assert pending[0] == 409, pending
    assert pending[1]['error']['code'] == 'handover_pending'
    assert 9 < pending[1]['error']['retry_after'] <= 10
    assert listed[1]['attachments'][0]['release_requested'] is True
    # Not attached there: refused before the store is asked.
    assert other[0] == 403 and 'not attached to host other' in \
        other[1]['error']['message']
    assert bad[0] == 400 and '"standby" must be of type bool' in \
        bad[1]['error']['message']
    assert released[0] == 204
    assert got_dst[0] == 201 and got_dst[1]['lease']['generation'] == 2
    assert got_dst[1]['ticket'] is not None
    assert listed_dst[1]['attachments'][0]['standby'] is False


def test_a_handover_pending_is_rebuilt_with_its_retry_after():
    from cinder_ursa.protocol import rest
    exc = rest.error_from_body(409, '{"error": {"code": "handover_pending", '
                                    '"message": "m", "retry_after": 2.5}}')
    assert isinstance(exc, exception.HandoverPending)
    assert exc.retry_after == 2.5
    assert rest.acquire_lease('v', 'h', handover=True).body == {
        'holder': 'h', 'force': False, 'handover': True}
    assert rest.attach('v', 'h', standby=True).body == {'host': 'h',
                                                        'standby': True}
    assert rest.attach('v', 'h').body == {'host': 'h'}
