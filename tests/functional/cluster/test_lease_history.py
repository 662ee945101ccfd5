"""A volume's lease history against real processes: the events of
acquire, release, a host fenced (by ``ursa host fence``, and by nova_ha's
fencing while the host's guest still writes, its volume then taken by
another host) and unfenced, read through ``ursa volume lease-history``
and the REST API alike; ``--check`` passes them and names the events of
a history with two writers; and two masters write one history, in the
database they share, trimmed to ``lease_history_per_volume`` by the
leader of the moment; and the table, its trimming and its text columns
on MariaDB and PostgreSQL, the databases several masters share."""

import contextlib
import json
import os
import time

import pytest
import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.common import auth
from cinder_ursa.master import models
from cinder_ursa.master import store as store_mod
from cinder_ursa.protocol import lease_history
from nova_ha import fence
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import rest
from tests.fixtures.cluster import ursa
from tests.fixtures.wait import wait_for
from tests.functional.faults.test_master_failover import CONF
from tests.functional.faults.test_master_failover import FAILOVER_BOUND
from tests.functional.faults.test_master_failover import leads
from tests.functional.faults.test_master_failover import masters_of

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
BLOCK = 4096


def new_volume(cluster, name):
    cluster.client().create_volume(name, 16 * MiB, chunk_size=4 * MiB,
                                   replicas=1, min_replicas=1)


def summary(events):
    return [(e['event'], e['generation'], e['holder']) for e in events]


def close_fenced(vol):
    """Close a volume whose lease was fenced: its last flush may be
    refused too; its release then changes (and records) nothing."""
    with contextlib.suppress(exception.Fenced):
        vol.close()


def cli_history(cluster, ref, *args, check=True):
    return ursa(cluster.data_dir, 'volume', 'lease-history', ref, *args,
                check=check)


def test_acquire_release_fence_unfence_through_cli_and_rest(make_cluster):
    c = make_cluster(1)
    new_volume(c, 'v')
    started = time.time()
    with data_client(c) as client:
        vol = client.open_volume('v', holder='cmp-a:1:x')
        vol.write(0, b'1' * BLOCK)
        vol.close()
        vol = client.open_volume('v', holder='cmp-a:2:y')
        vol.write(0, b'2' * BLOCK)
        vol.flush()
        ursa(c.data_dir, 'host', 'fence', 'cmp-a', '--reason', 'repair')
        with pytest.raises(exception.Fenced):
            vol.write(BLOCK, b'3' * BLOCK)
        # Fenced hosts take no lease: nothing is recorded.
        with pytest.raises(exception.Fenced):
            client.open_volume('v', holder='cmp-a:3:z')
        close_fenced(vol)
        ursa(c.data_dir, 'host', 'unfence', 'cmp-a')
        vol = client.open_volume('v', holder='cmp-a:4:w')
        assert vol.read(0, 2 * BLOCK) == b'2' * BLOCK + bytes(BLOCK)
        vol.close()
    status, body = rest(c, 'GET', '/volumes/v/lease-history')
    assert status == 200, body
    events = body['lease_history']
    assert summary(events) == [
        ('acquire', 1, 'cmp-a:1:x'), ('release', 1, 'cmp-a:1:x'),
        ('acquire', 2, 'cmp-a:2:y'), ('fence', 2, 'cmp-a:2:y'),
        ('acquire', 4, 'cmp-a:4:w'), ('release', 4, 'cmp-a:4:w')]
    assert events[3]['reason'] == 'host cmp-a fenced: repair'
    assert {e['by'] for e in events} == {'admin from 127.0.0.1'}
    assert [e['id'] for e in events] == sorted(e['id'] for e in events)
    assert started <= events[0]['at'] <= events[-1]['at'] <= time.time()
    assert lease_history.check(events, shared_ok=False) == []
    # The CLI shows the same events; the client library reads them too.
    shown = json.loads(cli_history(c, 'v', '-f', 'json').stdout)
    assert [(r['id'], r['event'], r['generation'], r['holder'], r['by'],
             r['reason']) for r in shown] == [
        (e['id'], e['event'], e['generation'], e['holder'], e['by'],
         e['reason'] or '') for e in events]
    assert c.client().lease_history('v', limit=2) == events[-2:]
    r = cli_history(c, 'v', '--check')
    assert 'lease history of v: 6 event(s), 3 generation(s) taken, one ' \
        'writer at a time' in r.stderr, r.stderr
    assert 'host cmp-a fenced: repair' in r.stdout


def test_a_fenced_hosts_guest_writes_no_more_and_its_volume_moves(
        make_cluster):
    """nova_ha's case: the host is fenced while its guest still writes;
    the instance is evacuated and opens its volume on another host.
    The history shows one writer at a time, and the fence by nova_ha's
    own principal; a history with two writers fails the check."""
    c = make_cluster(1)
    new_volume(c, 'vm-disk')
    admin = c.client()
    key = auth.new_key()
    admin.create_principal('nova-ha', 'nova_ha', key)
    fencer = fence.UrsaFence(master_mod.MasterClient(
        list(c.master_urls), c.key, principal=('nova-ha', key)))
    with data_client(c) as cmp_a, data_client(c) as cmp_b:
        guest = cmp_a.open_volume('vm-disk', holder='cmp-a:1:guest')
        guest.write(0, b'a' * BLOCK)
        guest.flush()
        assert fencer.fence('cmp-a', 'host failed: evacuating') == \
            '1 Ursa lease(s) revoked'
        with pytest.raises(exception.Fenced):
            guest.write(BLOCK, b'A' * BLOCK)
        evacuated = cmp_b.open_volume('vm-disk', holder='cmp-b:1:guest')
        evacuated.write(2 * BLOCK, b'b' * BLOCK)
        evacuated.flush()
        # The old guest goes on trying, and its host restarts its client:
        # refused both.
        with pytest.raises(exception.Fenced):
            guest.write(BLOCK, b'A' * BLOCK)
        with pytest.raises(exception.Fenced):
            cmp_a.open_volume('vm-disk', holder='cmp-a:2:guest')
        assert evacuated.read(0, 3 * BLOCK) == \
            b'a' * BLOCK + bytes(BLOCK) + b'b' * BLOCK
        evacuated.close()
        close_fenced(guest)
    events = admin.lease_history('vm-disk')
    assert summary(events) == [
        ('acquire', 1, 'cmp-a:1:guest'), ('fence', 1, 'cmp-a:1:guest'),
        ('acquire', 3, 'cmp-b:1:guest'), ('release', 3, 'cmp-b:1:guest')]
    assert (events[1]['by'], events[1]['reason']) == (
        'nova-ha from 127.0.0.1', 'host cmp-a fenced: host failed: '
                                  'evacuating')
    assert lease_history.check(events, shared_ok=False) == []
    assert 'one writer at a time' in cli_history(
        c, 'vm-disk', '--check').stderr
    # What a master granting a lease while another was held would have
    # written, added beside the running master: --check exits 1 naming
    # both events.
    s = store_mod.MetadataStore('sqlite:///%s' % os.path.join(
        c.data_dir, 'master', 'ursa.sqlite'))
    try:
        with s.engine.begin() as conn:
            for gen, holder in ((4, 'cmp-c:1:x'), (5, 'cmp-d:1:y')):
                conn.execute(models.lease_events.insert().values(
                    volume_id=events[0]['volume_id'], generation=gen,
                    holder=holder, event='acquire', at=time.time(),
                    by='test'))
    finally:
        s.close()
    first, second = [e['id'] for e in admin.lease_history('vm-disk')[-2:]]
    r = cli_history(c, 'vm-disk', '--check', check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'lease history of vm-disk: 1 problem(s) in 6 event(s)' in \
        r.stderr, r.stderr
    assert 'event #%d (and #%d): two writers: #%d (acquire of generation 5 ' \
        'by cmp-d:1:y) while #%d (acquire of generation 4 by cmp-c:1:x) ' \
        'had not ended' % (second, first, second, first) in r.stderr, \
        r.stderr


def test_two_masters_write_one_history(make_cluster):
    """The history is a table of the database the masters share: what the
    leader recorded is there when its standby takes over, which records
    on, trimming to the newest lease_history_per_volume events."""
    c = make_cluster(1, masters=2, extra_conf=CONF +
                     'lease_history_per_volume = 4\n')
    first, second = c.master_urls
    wait_for(lambda: leads(c, first, [second]), 10,
             'master 0 leading with master 1 as standby')
    new_volume(c, 'v')
    with sync.SyncCluster(list(c.master_urls), c.key,
                          io_timeout=30.0) as client:
        client.open_volume('v', holder='cmp-a:1:x').close()
        c.kill_master()
        wait_for(lambda: (masters_of(c, second) or {}).get('leader') ==
                 second, FAILOVER_BOUND, 'master 1 leading')
        client.open_volume('v', holder='cmp-b:1:x').close()
        held = client.open_volume('v', holder='cmp-c:1:x')
        try:
            assert c.client().volume('v')['lease']['generation'] == 3
            shown = json.loads(cli_history(c, 'v', '-f', 'json').stdout)
        finally:
            held.close()
    # Five events, the oldest trimmed: the acquire master 0 recorded.
    assert [(r['event'], r['generation'], r['holder']) for r in shown] == [
        ('release', 1, 'cmp-a:1:x'), ('acquire', 2, 'cmp-b:1:x'),
        ('release', 2, 'cmp-b:1:x'), ('acquire', 3, 'cmp-c:1:x')]
    events = c.client().lease_history('v')
    assert summary(events)[-1] == ('release', 3, 'cmp-c:1:x')
    assert len(events) == 4
    assert lease_history.check(events, shared_ok=False) == []


@pytest.mark.parametrize('backend', ['mariadb', 'postgresql'])
def test_the_history_on_the_databases_masters_share(request, backend):
    s = store_mod.MetadataStore(request.getfixturevalue(backend)
                                .new_database(), lease_history_per_volume=3)
    try:
        s.upgrade()
        s.create_volume('v', 16 * MiB, chunk_size=4 * MiB)
        # A requester longer than the column is cut to it, never refused.
        token = store_mod.REQUESTER.set('p' * 300)
        try:
            for i in (1, 2):
                s.acquire_lease('v', 'cmp-a:%d:x' % i, 30)
                s.release_lease('v', 'cmp-a:%d:x' % i, i)
            s.acquire_lease('v', 'cmp-b:1:x', 30)
            s.fence_host('cmp-b', 'r' * 2000)
        finally:
            store_mod.REQUESTER.reset(token)
        events = s.lease_history('v')
        assert summary(events) == [
            ('release', 2, 'cmp-a:2:x'), ('acquire', 3, 'cmp-b:1:x'),
            ('fence', 3, 'cmp-b:1:x')]
        assert {e['by'] for e in events} == {'p' * 255}
        assert events[-1]['reason'] == 'host cmp-b fenced: ' + 'r' * 2000
        assert lease_history.check(events, shared_ok=False) == []
        vid = events[0]['volume_id']
        s.begin_delete('v')
        s.finish_delete(vid)
        with s.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(
                models.lease_events)).scalar() == 0
    finally:
        s.close()
