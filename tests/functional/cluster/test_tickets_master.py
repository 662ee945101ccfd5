"""Tickets from a real master to principals made with ``ursa key``: a
hypervisor's host principal gets, through the client library's master
clients, a ticket with its lease and a read-only one for a volume
attached to its host, unwraps each with its own key into the session key
the chunk servers derive from the cluster key, and is refused one for a
volume attached elsewhere; nova_ha and chunkserver principals get
none."""

import asyncio
import os
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.common import auth
from cinder_ursa.protocol import tickets
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import module_cluster
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


@pytest.fixture(scope='module')
def shared_cluster(tmp_path_factory):
    """Three chunk servers, for the tests below: each makes volumes and
    principals of its own."""
    yield from module_cluster(tmp_path_factory, 'tickets-master')


def test_the_cinder_driver_flattens_a_clone_without_the_cluster_key(
        shared_cluster, tmp_path):
    """Flatten, keyless: a read-only open brings a read ticket, then a
    copy-up ticket replaces it (its grant moves the open connections);
    the parent is read at the clone's snapshot through it, the copy-ups
    land under generation 0, and the clone, detached, reads the same."""
    c = shared_cluster
    admin = c.client()
    admin.create_volume('base', 2 << 20, chunk_size=1 << 20)
    base = os.urandom(2 << 20)
    with data_client(c) as cl:
        with cl.open_volume('base') as v:
            v.write(0, base)
    admin.create_snapshot('base', 'gold')
    admin.clone('base@gold', 'vm1')
    with data_client(c) as cl:
        with cl.open_volume('base') as v:
            v.write(0, b'n' * 4096)        # after the snapshot: not vm1's
        with cl.open_volume('vm1') as v:
            v.write(4096, b'w' * 4096)
    key = auth.load_key(create(c, tmp_path, 'cinder', 'volume'))
    with sync.SyncCluster([c.master_url], None,
                          principal=('cinder', key)) as cl:
        cl.flatten('vm1')
    assert admin.volume('vm1').get('parent') is None
    want = base[:4096] + b'w' * 4096 + base[8192:]
    with data_client(c) as cl:
        with cl.open_volume('vm1', writable=False) as v:
            assert v.read(0, 2 << 20) == want


def test_an_open_clone_reads_on_after_it_is_flattened(shared_cluster,
                                                      tmp_path):
    """A clone open keyless while it is flattened: the renewal of its
    lease brings a ticket that no longer names the parent, and blocks
    neither ever wrote (flatten leaves them absent: they read as zeros)
    still read, as zeros, not as the parent's refusal."""
    c = shared_cluster
    admin = c.client()
    admin.create_volume('base2', 2 << 20, chunk_size=1 << 20)
    with data_client(c) as cl:
        with cl.open_volume('base2') as v:
            v.write((1 << 20) + 8192, b'x' * 4096)
    admin.create_snapshot('base2', 'gold')
    admin.clone('base2@gold', 'vm2')
    key = auth.load_key(create(c, tmp_path, 'cinder2', 'volume'))
    with sync.SyncCluster([c.master_url], None,
                          principal=('cinder2', key)) as cl:
        with cl.open_volume('vm2', holder='compute-1:1:x',
                            lease_ttl=3) as v:
            assert v.read(1 << 20, 3 * 4096) == bytes(8192) + b'x' * 4096
            with data_client(c) as admin_cl:
                admin_cl.flatten('vm2')
            time.sleep(2.5)         # a lease renewal: a new ticket
            assert v.read(1 << 20, 3 * 4096) == bytes(8192) + b'x' * 4096
            v.write(0, b'w' * 4096)
            assert v.read(0, 8192) == b'w' * 4096 + bytes(4096)


def test_a_host_detached_from_a_multiattach_volume_stops_writing(
        shared_cluster, tmp_path):
    """The master's detach of one host of a multiattach volume revokes
    the shares of that host's writers (generation + 1, pushed to the
    chunk servers: the ticket it holds, not expired, is refused at
    once) and re-admits the other host's: compute-2's client, whose
    ticket of the old generation is refused the same way (reads and
    flushes too), renews into the new generation's and writes on
    without an error; compute-1's renewal is refused, and it writes
    nothing more."""
    c = shared_cluster
    admin = c.client()
    admin.create_volume('shared', 1 << 20, chunk_size=1 << 20,
                        multiattach=True)
    keys = {}
    for host in ('compute-1', 'compute-2'):
        admin.attach('shared', host)
        keys[host] = auth.load_key(create(c, tmp_path, host, 'host'))
    with sync.SyncCluster([c.master_url], None,
                          principal=('compute-1', keys['compute-1'])) as cl, \
            sync.SyncCluster([c.master_url], None, principal=(
                'compute-2', keys['compute-2'])) as cl2:
        v = cl.open_volume('shared', holder='compute-1:1:x', lease_ttl=30)
        w = cl2.open_volume('shared', holder='compute-2:1:x', lease_ttl=30)
        v.write(0, b'a' * 4096)
        w.write(4096, b'c' * 4096)
        w.flush()
        admin.detach('shared', 'compute-1')
        # compute-2 first reads, flushes and writes, each with the
        # ticket of generation 1: re-admitted, no error.
        assert w.read(0, 8192) == b'a' * 4096 + b'c' * 4096
        w.flush()
        w.write(8192, b'd' * 4096)
        w.flush()
        # No wait for a renewal: its first write is refused, and the
        # master answers the renewal it asks.
        with pytest.raises(exception.Forbidden,
                           match='not attached to host compute-1'):
            v.write(0, b'b' * 4096)
        with pytest.raises(exception.Forbidden):
            v.write(12288, b'b' * 4096)
        try:
            v.close()
        except exception.UrsaError:
            pass
        w.write(12288, b'e' * 4096)
        w.close()
    assert admin.volume('shared')['lease']['generation'] == 2
    with data_client(c) as cl:
        with cl.open_volume('shared', writable=False) as v:
            assert v.read(0, 4 * 4096) == b''.join(
                x * 4096 for x in (b'a', b'c', b'd', b'e'))
