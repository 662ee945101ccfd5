"""Two masters over one database (ursa-aio --masters 2, a tooz file://
backend): a standby takes over from a leader killed with SIGKILL or
stopped with SIGSTOP past its lease; clients given both URLs follow; the
volumes made before are intact; a stopped leader that wakes up changes
nothing and steps down."""

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver.store.fencing import MASTER_TERM
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.common import auth
from cinder_ursa.master import models
from cinder_ursa.master import store as store_mod
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio
from tests.fixtures import cluster as cluster_fixtures
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
LEASE = 2
# Short lease and deadline; chunk servers a little longer, as a heartbeat
# sent to a stopped leader waits for its client timeout (10 s) before it
# goes to the other master.
CONF = ('[ursa_master]\nleader_lease = %d\nleader_renew_deadline = 1.2\n'
        % LEASE)
SERVER_TIMEOUT = 15.0
# A new leader within the lease, a renewal round and the client's poll.
FAILOVER_BOUND = LEASE + 8.0


def call(cluster, url, method, path, body=None):
    """A signed REST call to master ``url`` alone: (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + '/v1' + path, data=data,
                                 method=method)
    req.add_header(auth.HEADER, auth.sign(cluster.key, method, '/v1' + path,
                                          body=data or b''))
    req.add_header('Content-Type', 'application/json')
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b'{}')
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def masters_of(cluster, url):
    """What master ``url`` says of the masters, if it leads, else None."""
    status, body = call(cluster, url, 'GET', '/cluster')
    return body['masters'] if status == 200 else None


def leads(cluster, url, standbys):
    m = masters_of(cluster, url)
    return m if m and m['leader'] == url and \
        m['standbys'] == standbys else None


@pytest.fixture
def two_masters(make_cluster):
    c = make_cluster(3, masters=2, server_timeout=SERVER_TIMEOUT,
                     extra_conf=CONF)
    first, second = c.master_urls
    # The first started leads at once; the second joins as a standby.
    m = wait_for(lambda: leads(c, first, [second]), 10,
                 'master 0 leading with master 1 as standby')
    return c, m['term']


def test_standby_answers_503_naming_the_leader(two_masters):
    c, term = two_masters
    status, body = call(c, c.master_urls[1], 'GET', '/volumes')
    assert status == 503
    assert body['error']['code'] == 'not_leader'
    assert body['error']['leader'] == c.master_urls[0]
    # The CLI, given both URLs, shows who leads.
    out = json.loads(cluster_fixtures.ursa(
        c.data_dir, 'cluster', 'status', '-f', 'json').stdout)
    assert (out['leader'], out['term'], out['standbys']) == (
        c.master_urls[0], term, c.master_urls[1])


def sqlite_store(cluster):
    """The masters' shared SQLite database, opened beside them (no term
    guard: it writes as the dead leader's last transaction would)."""
    return store_mod.MetadataStore('sqlite:///%s' % os.path.join(
        cluster.data_dir, 'master', 'ursa.sqlite'))


def claim_on_each_server(cluster, term, then=None):
    """Claim ``term`` on a new connection to every chunk server; return,
    per server, the term its reply names and what ``then(connection)``
    returns."""
    async def claim():
        out = []
        for s in cluster.client().servers():
            conn = await aio.PeerConnection.connect(s['address'], s['port'],
                                                    cluster.key)
            try:
                reply = await conn.call(control.encode_term, term,
                                        timeout=10)
                out.append((control.decode_count_ok(reply.body),
                            then and await then(conn)))
            finally:
                conn.close()
        return out
    return asyncio.run(claim())


def refuse_terms_below(cluster, term):
    """Every chunk server has seen ``term`` (as one learns it from a
    leader of that term; a TERM claim alone no longer makes it take a
    term its masters do not confirm): written into its data directory
    while it is stopped."""
    for i in range(3):
        cluster.kill_chunkserver(i)
        with open(os.path.join(cluster.cs_dir(i), MASTER_TERM), 'w') as f:
            f.write('%d\n' % term)
        cluster.start_chunkserver(i)
    assert [t for t, _ in claim_on_each_server(cluster, term)] == \
        [term] * 3


def refused(cluster, term):
    """Whether every chunk server refuses a master of ``term`` (its
    reply names a newer one, and a request on that connection fails)."""
    async def inventory_refused(conn):
        reply = await conn.call(control.encode_inventory, timeout=10)
        try:
            control.decode_inventory_ok(reply.body)
            return False
        except exception.NotLeader:
            return True
    return all(newer > term and no for newer, no in claim_on_each_server(
        cluster, term, inventory_refused))


def test_sigkill_leader_clients_follow_and_volumes_survive(two_masters):
    c, term = two_masters
    client = c.client()
    client.create_volume('before', 8 * MiB, chunk_size=4 * MiB)
    payload = bytes(range(256)) * 16
    with sync.SyncCluster(list(c.master_urls), c.key) as data:
        with data.open_volume('before') as v:
            v.write(4096, payload)
            v.flush()
    # The leader dies in the middle of a snapshot's creation (begun in the
    # database, never finished) and after dropping a chunk's primary but
    # before comparing its replicas (the chunk is marked).
    db = sqlite_store(c)
    try:
        db.begin_snapshot('before', 'mid-way')
        with db.begin() as conn:
            conn.execute(models.chunks.update().values(resync=True))
        assert db.pending_resyncs()
    finally:
        db.close()
    c.kill_master(signal.SIGKILL, 0)
    start = time.monotonic()
    # Master 0 refuses connections, master 1 says NotLeader until its
    # election: the client polls them until one answers.
    client.create_volume('after', 8 * MiB, chunk_size=4 * MiB)
    took = time.monotonic() - start
    assert took < FAILOVER_BOUND, took
    m = masters_of(c, c.master_urls[1])
    assert m['leader'] == c.master_urls[1] and m['term'] == term + 1
    assert {v['name'] for v in client.volumes()} == {'before', 'after'}
    with sync.SyncCluster(list(c.master_urls), c.key) as data:
        with data.open_volume('before') as v:
            assert v.read(4096, len(payload)) == payload
    servers = client.servers()
    assert [s['state'] for s in servers] == ['up'] * 3
    # The client's retry of that snapshot succeeds at once: the new leader
    # forgot what the dead one left unfinished (not after a minute).
    assert client.create_snapshot('before', 'mid-way')['status'] == \
        'available'
    # Every chunk server heard of the new term: the dead leader, were it
    # to come back with its old connections, would be refused.
    assert refused(c, term)
    # The new leader compared the replicas its predecessor had not.
    db = sqlite_store(c)
    try:
        wait_for(lambda: not db.pending_resyncs(), 30,
                 'the marked chunk resynced by the new leader')
    finally:
        db.close()


def test_sigstop_leader_is_replaced_and_steps_down_on_waking(two_masters):
    c, term = two_masters
    old, new = c.master_urls
    c.master_proc.send_signal(signal.SIGSTOP)
    start = time.monotonic()
    try:
        m = wait_for(lambda: masters_of(c, new), FAILOVER_BOUND,
                     'master 1 leading')
        took = time.monotonic() - start
        assert m['leader'] == new and m['term'] == term + 1
        # No sooner than the lease: the stopped leader's group membership
        # expires first.
        assert took >= LEASE - 1.0, took
        status, _ = call(c, new, 'POST', '/volumes',
                         {'name': 'by-new', 'size': 4 * MiB})
        assert status == 201
    finally:
        c.master_proc.send_signal(signal.SIGCONT)
    # Woken up, the old leader changes nothing: its deadline has passed
    # (and its term is over).
    status, body = call(c, old, 'POST', '/volumes',
                        {'name': 'by-old', 'size': 4 * MiB})
    assert status == 503 and body['error']['code'] == 'not_leader', body
    # It reads the new term, steps down and names the new leader.
    wait_for(lambda: call(c, old, 'GET', '/volumes')[1].get(
        'error', {}).get('leader') == new, 10, 'master 0 naming master 1')
    wait_for(lambda: leads(c, new, [old]), 10,
             'master 0 listed as a standby')
    client = master_mod.MasterClient([old, new], c.key)
    assert {v['name'] for v in client.volumes()} == {'by-new'}
    with open(os.path.join(c.data_dir, 'master.log')) as f:
        assert 'is no longer the leader of term %d' % term in f.read()
    # The chunk servers refuse the old leader's term, and take the new
    # leader's commands (a snapshot reaches every one of them).
    assert refused(c, term)
    assert client.create_snapshot('by-new', 's')['status'] == 'available'
    # And nothing either of them did left replicas or metadata astray.
    r = cluster_fixtures.ursa(c.data_dir, 'cluster', 'check', '-f', 'json',
                              check=False)
    assert (r.returncode, json.loads(r.stdout or '[]')) == (0, []), \
        r.stdout + r.stderr


def test_a_leader_refused_by_chunk_servers_steps_down_and_climbs(
        two_masters):
    """Chunk servers have seen a newer term than the database holds (it
    was restored from a backup): the leader's first command is refused,
    it steps down at once and takes the next term, until its term is the
    newest; the client's call, retried meanwhile, then succeeds."""
    c, term = two_masters
    client = c.client()
    client.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    # Far ahead: the master jumps past the chunk servers' term at once (one
    # term at a time took 2.5 s per term with the defaults).
    ahead = term + 1000
    refuse_terms_below(c, ahead)
    assert client.create_snapshot('v', 's')['status'] == 'available'
    m = masters_of(c, c.master_urls[0])
    assert m['leader'] == c.master_urls[0] and m['term'] == ahead + 1, m
    assert [s['name'] for s in client.snapshots('v')] == ['s']
    with open(os.path.join(c.data_dir, 'master.log')) as f:
        assert 'a chunk server refused it' in f.read()


def test_a_forged_term_does_not_depose_the_leader(two_masters):
    """A holder of the cluster key (every chunk server, gateway and attach
    host has it) claims the highest term there is on every chunk server:
    the masters do not confirm it, so no chunk server takes it, and the
    leader keeps commanding them.  A request sent behind the claim, on
    its connection, is refused while the claim is judged."""
    c, term = two_masters
    client = c.client()
    client.create_volume('v', 8 * MiB, chunk_size=4 * MiB)

    async def forge(conn):
        claim, behind = await asyncio.gather(
            conn.call(control.encode_term, control.MAX_TERM, timeout=10),
            conn.call(control.encode_inventory, timeout=10))
        out = []
        for reply in (claim, behind):
            with pytest.raises(exception.Unavailable) as e:
                control.decode_count_ok(reply.body)
            out.append(str(e.value))
        return out

    async def claims():
        out = []
        for s in client.servers():
            conn = await aio.PeerConnection.connect(s['address'], s['port'],
                                                    c.key)
            try:
                out.append(await forge(conn))
            finally:
                conn.close()
        return out
    for claim, behind in asyncio.run(claims()):
        assert 'is not confirmed by the masters' in claim, claim
        assert 'not confirmed yet' in behind, behind
    # Every chunk server still follows the leader's term, which keeps
    # commanding them (a snapshot reaches every one of them).
    assert [t for t, _ in claim_on_each_server(c, term)] == [term] * 3
    assert client.create_snapshot('v', 's')['status'] == 'available'
    m = masters_of(c, c.master_urls[0])
    assert m['leader'] == c.master_urls[0] and m['term'] == term, m
