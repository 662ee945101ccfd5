"""Tickets from a real master to principals made with ``ursa key``: a
hypervisor's host principal gets, through the client library's master
clients, a ticket with its lease and a read-only one for a volume
attached to its host, unwraps each with its own key into the session key
the chunk servers derive from the cluster key, and is refused one for a
volume attached elsewhere; nova_ha and chunkserver principals get
none."""

import asyncio
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.common import auth
from cinder_ursa.protocol import tickets
from tests.functional.cluster.test_principals import as_principal
from tests.functional.cluster.test_principals import create

TTL = 45        # [ursa_master] ticket_ttl of the cluster


def granted(cluster, reply, key):
    grant = tickets.grant_from(reply, key)
    assert grant.session_key == tickets.session_key(
        tickets.ticket_key(cluster.key), grant.raw)
    return grant.ticket


def test_a_host_gets_tickets_for_what_is_attached_to_it(make_cluster,
                                                        tmp_path):
    c = make_cluster(1, extra_conf='[ursa_master]\nticket_ttl = %d\n' % TTL)
    admin = c.client()
    ids = {'base': admin.create_volume('base', 1 << 20, replicas=1,
                                       min_replicas=1)['id']}
    admin.create_snapshot('base', 's')
    ids['mid'] = admin.clone('base@s', 'mid')['id']
    admin.create_snapshot('mid', 't')
    ids['top'] = admin.clone('mid@t', 'top')['id']
    admin.attach('top', 'cmp1')
    path = create(c, tmp_path, 'cmp1', 'host')
    key = auth.load_key(path)
    host = as_principal(c, 'cmp1', path)

    # Read-only, for [ursa_master] ticket_ttl.
    before = time.time()
    t = granted(c, host.ticket('top'), key)
    assert (t.volume, t.generation, t.rights, t.principal, t.host) == (
        ids['top'], 0, tickets.RIGHT_READ, 'cmp1', 'cmp1')
    assert set(t.readable) == set(ids.values())
    assert before + TTL - 1 <= t.expires <= time.time() + TTL + 1

    # Not attached to cmp1.
    with pytest.raises(exception.Forbidden, match='not attached to host'):
        host.ticket('mid')
    # No data path for these roles.
    for name, role in (('ha', 'nova_ha'), ('stor1', 'chunkserver')):
        other = as_principal(c, name, create(c, tmp_path, name, role))
        with pytest.raises(exception.Forbidden, match='tickets'):
            other.ticket('top')

    # With the lease (the data path's client), renewed with it.
    async def lease():
        m = master_mod.AsyncMasterClient(list(c.master_urls), c.key,
                                         timeout=10, principal=('cmp1', key))
        try:
            got = await m.acquire_lease('top', 'cmp1:1:x', ttl=10)
            again = await m.renew_lease('top', 'cmp1:1:x',
                                        got['generation'], 60)
            await m.release_lease('top', 'cmp1:1:x', got['generation'])
            return got, again
        finally:
            await m.close()

    got, again = asyncio.run(lease())
    t = granted(c, got['ticket'], key)
    assert (t.volume, t.generation, t.principal, t.host, t.writable) == (
        ids['top'], got['generation'], 'cmp1', 'cmp1', True)
    assert set(t.readable) == set(ids.values())
    assert t.expires > got['expires_at']
    renewed = granted(c, again['ticket'], key)
    assert renewed.generation == t.generation
    assert renewed.expires >= t.expires + 45
