"""A hypervisor without the cluster key: ursa-nbd and the client library
sign as the host's principal and reach the chunk servers with the
tickets the master issues for the volumes attached to the host.  They
serve those volumes (a clone reads its parent through the same ticket),
and nothing else: the master refuses a ticket for a volume not attached
there, the chunk servers refuse the ticket of one volume for another,
and fencing the host revokes its tickets at once."""

import asyncio
import os

import pytest

from cinder_ursa import exception
from cinder_ursa.client import sync
from cinder_ursa.nbd import protocol as p
from cinder_ursa.protocol import codec
from tests.fixtures.cluster import data_client
from tests.functional.nbd.test_host_principal import host_principal
from tests.functional.nbd.test_nbd import request
from tests.functional.nbd.test_security import SAFE
from tests.functional.nbd.test_security import export

MiB = 1024 * 1024


@pytest.fixture
def keyless(make_cluster, tmp_path):
    """A cluster whose ursa-nbd holds the host principal's key only."""
    c = make_cluster(3, extra_conf=SAFE)
    host, key = host_principal(c, tmp_path, 'cluster_key_file =\n')
    return c, host, key


def test_ursa_nbd_serves_a_clone_with_tickets_only(keyless):
    c, host, _ = keyless
    admin = c.client()
    admin.create_volume('base', 8 * MiB, chunk_size=4 * MiB)
    base = os.urandom(8 * MiB)
    with data_client(c) as cl:
        with cl.open_volume('base') as v:
            v.write(0, base)
    admin.create_snapshot('base', 'gold')
    admin.clone('base@gold', 'vm1')
    att = admin.attach('vm1', host)
    c.start_nbd()
    with open(os.path.join(c.data_dir, 'nbd.log')) as f:
        assert 'No cluster key: the chunk servers are reached with the ' \
            'tickets' in f.read()

    s, size = export(c, 'vm1~%s' % att['export_token'])
    assert size == 8 * MiB
    # Unwritten blocks come from the parent's chunks, under vm1's ticket.
    assert request(s, p.CMD_READ, 4 * MiB - 4096, 8192) == (
        0, base[4 * MiB - 4096:4 * MiB + 4096])
    data = os.urandom(4096)
    assert request(s, p.CMD_WRITE, 4096, len(data), data=data)[0] == 0
    assert request(s, p.CMD_FLUSH, 0, 0)[0] == 0
    s.close()
    with data_client(c) as cl:
        with cl.open_volume('vm1', writable=False) as v:
            assert v.read(0, 3 * 4096) == base[:4096] + data + \
                base[8192:3 * 4096]
    with open(os.path.join(c.data_dir, 'nbd.log')) as f:
        text = f.read()
    assert 'NotAuthorized' not in text and 'Forbidden' not in text, text


def test_a_tickets_client_reads_and_writes_its_attached_volumes_only(
        keyless):
    c, host, key = keyless
    admin = c.client()
    for name in ('mine', 'theirs'):
        admin.create_volume(name, 4 * MiB, chunk_size=4 * MiB)
    with data_client(c) as cl:
        with cl.open_volume('theirs') as v:
            v.write(0, b't' * 4096)
    admin.attach('mine', host)
    theirs = admin.chunk_map(admin.volume('theirs')['id'], 0, 1)
    chunk = theirs['chunks'][0]
    primary = chunk['replicas'][0]

    with sync.SyncCluster([c.master_url], None,
                          principal=(host, key)) as cl:
        # Not attached to this host: the master issues no ticket.
        with pytest.raises(exception.Forbidden):
            cl.open_volume('theirs', writable=False)
        # Nor does the client have anything to reach chunk servers with.
        with pytest.raises(exception.NotAuthorized, match='no cluster key'):
            cl.run(lambda cluster: cluster.pool.get(primary['address'],
                                                    primary['port']))
        with cl.open_volume('mine', holder=host + ':test') as v:
            v.write(0, b'm' * 4096)
            v.flush()
            assert v.read(0, 4096) == b'm' * 4096

            async def read_theirs_with_my_ticket(_cluster):
                conn = await v.volume.pool.get(primary['address'],
                                             primary['port'])
                reply = await conn.request(9, codec.encode_read(
                    9, theirs['volume']['id'], 0, chunk['epoch'], 0, 4096),
                    10)
                codec.reply_status(reply.body)
            with pytest.raises(exception.NotAuthorized, match='ticket'):
                cl.run(read_theirs_with_my_ticket)

            # Fencing the host revokes the ticket of its lease: the chunk
            # servers refuse its writes, before any lease renewal.
            admin.fence_host(host, reason='test')

            async def write_after_fence(_cluster):
                for _ in range(50):
                    try:
                        await v.volume.write(0, b'x' * 4096)
                    except (exception.NotAuthorized, exception.Fenced) as e:
                        return e
                    await asyncio.sleep(0.1)
                return None
            assert cl.run(write_after_fence) is not None


def test_detaching_revokes_the_ticket_of_the_hosts_lease(keyless):
    """A host whose volume is detached writes nothing more through the
    ticket it holds, whatever its client does: the detach revoked the
    lease of the client there, and the chunk servers learned the newer
    generation."""
    c, host, key = keyless
    admin = c.client()
    admin.create_volume('vol', 4 * MiB, chunk_size=4 * MiB)
    admin.attach('vol', host)
    with sync.SyncCluster([c.master_url], None,
                          principal=(host, key)) as cl:
        v = cl.open_volume('vol', holder=host + ':test')
        v.write(0, b'a' * 4096)
        v.flush()
        admin.detach('vol', host)
        with pytest.raises((exception.NotAuthorized, exception.Fenced)):
            v.write(0, b'b' * 4096)
        try:
            v.close()
        except exception.UrsaError:
            pass        # its last flush is refused as well
    with data_client(c) as cl:
        with cl.open_volume('vol', writable=False) as v:
            assert v.read(0, 4096) == b'a' * 4096
