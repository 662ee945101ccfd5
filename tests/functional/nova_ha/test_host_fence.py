"""nova_ha's storage fencing on a real Ursa cluster: once the evacuator
fenced a failed compute host, that host's writes are refused (FENCED) and
it cannot take a lease again, while the evacuated instance's new host
writes normally, and so does another host's writer of a multiattach
volume it shared with the failed one."""

import time

import pytest

from cinder_ursa import exception
from nova_ha import fence
from tests.fixtures.cluster import data_client
from tests.fixtures.novaha import make_conf
from tests.fixtures.novaha import make_evacuator
from tests.fixtures.novaha import run_until

MiB = 1024 * 1024


def test_fenced_host_cannot_write_its_evacuated_volumes(
        make_cluster, tmp_path, fake_nova, members):  # noqa: F811
    cluster = make_cluster(3)
    master = cluster.client()
    master.create_volume('vm-disk', 16 * MiB, chunk_size=4 * MiB)
    master.create_volume('shared', 16 * MiB, chunk_size=4 * MiB,
                         multiattach=True)
    master.attach('vm-disk', 'compute-1')
    conf = make_conf(tmp_path, fake_nova.url)
    n = fake_nova.nova
    m = members(conf)
    for h in ('compute-1', 'compute-2'):
        n.add_host(h)
        m.join(h)
    vm = n.add_server('vm', 'compute-1', metadata={'HA_enabled': 'true'})
    ursa = fence.UrsaFence(master)
    ev = make_evacuator(conf, [ursa])
    ev.step()

    with data_client(cluster) as old, data_client(cluster) as new:
        # The instance's disk, written by compute-1's client, and a
        # multiattach volume it shares with compute-2.
        disk = old.open_volume('vm-disk', holder='compute-1:4242:abc')
        disk.write(0, b'o' * 4096)
        disk.flush()
        both_old = old.open_volume('shared', holder='ursa-attach@compute-1')
        both_new = new.open_volume('shared', holder='ursa-attach@compute-2')
        assert master.host('compute-1')['live_leases'] == 2

        # compute-1 dies (its client keeps running: the worst case).
        m.leave('compute-1')
        n.compute_down('compute-1')
        run_until([ev], lambda: ev.store.recoveries() and
                  ev.store.recoveries()[0]['state'] == 'done',
                  what='recovery of compute-1')
        rec = ev.store.recoveries()[0]
        assert rec['fenced_by'].startswith('ursa (2 Ursa lease(s) revoked')
        assert n.servers[vm]['OS-EXT-SRV-ATTR:host'] == 'compute-2'

        status = master.host('compute-1')
        assert status['fenced'] and status['live_leases'] == 0
        assert 'nova-ha recovery' in status['fence_reason']
        assert master.attachments(host='compute-1') == []
        # The old host's writes are refused from now on...
        with pytest.raises(exception.Fenced):
            disk.write(0, b'X' * 4096)
            disk.flush()
        with pytest.raises(exception.Fenced):
            both_old.write(0, b'X' * 4096)
        # compute-2's writer of the multiattach volume they shared was
        # re-admitted at the new generation: it writes on, unopened.
        both_new.write(4096, b's' * 4096)
        both_new.flush()
        assert master.volume('shared')['lease']['generation'] == 2
        assert both_new.read(0, 8192) == bytes(4096) + b's' * 4096
        # ...and it cannot come back for a new lease.
        with pytest.raises(exception.Fenced) as e:
            old.open_volume('vm-disk', holder='compute-1:4243:def')
        assert 'ursa host unfence compute-1' in str(e.value)
        with pytest.raises(exception.Fenced):
            master.attach('vm-disk', 'compute-1')

        # The evacuated instance's new host attaches and writes.
        master.attach('vm-disk', 'compute-2')
        moved = new.open_volume('vm-disk', holder='ursa-attach@compute-2')
        assert moved.read(0, 4096) == b'o' * 4096
        moved.write(4096, b'n' * 4096)
        moved.flush()
        assert moved.read(0, 8192) == b'o' * 4096 + b'n' * 4096
        both_new.write(0, b's' * 4096)
        both_new.flush()
        moved.close()
        both_new.close()

        # Repaired and re-enabled: compute-1 may take leases again.
        m.join('compute-1')
        n.compute_up('compute-1')
        ev.store.set_host_flag('compute-1', enable_requested=True)
        run_until([ev], lambda: ev.store.hosts()['compute-1']['state']
                  == 'ok', what='compute-1 enabled')
        assert not master.host('compute-1')['fenced']
        back = old.open_volume('vm-disk', holder='compute-1:4244:ghi')
        assert back.read(0, 8192) == b'o' * 4096 + b'n' * 4096
        back.close()
    ev.close()


def test_second_opinion_a_host_renewing_its_leases_is_not_failed(
        make_cluster, tmp_path, fake_nova, members):  # noqa: F811
    cluster = make_cluster(3)
    master = cluster.client()
    master.create_volume('disk', 16 * MiB, chunk_size=4 * MiB)
    conf = make_conf(tmp_path, fake_nova.url, ursa_second_opinion=True,
                     grace_period=0.5)
    n = fake_nova.nova
    m = members(conf)
    for h in ('compute-1', 'compute-2', 'compute-3'):
        n.add_host(h)
        m.join(h)
    n.add_server('vm', 'compute-1', metadata={'HA_enabled': 'true'})
    ev = make_evacuator(conf, [fence.UrsaFence(master)])
    ev.step()
    with data_client(cluster) as c:
        # Cut off from the group and from Nova, but still writing to its
        # disks: it is alive.
        vol = c.open_volume('disk', holder='compute-1:1:a', lease_ttl=3)
        m.leave('compute-1')
        n.compute_down('compute-1')
        # Five seconds of this (a duration, not a wait for a condition).
        end = time.monotonic() + 5
        while time.monotonic() < end:
            ev.step()
            vol.write(0, b'a' * 4096)
            time.sleep(0.2)
        h = ev.store.hosts()['compute-1']
        assert h['state'] == 'suspect'
        assert 'still renews 1 Ursa lease' in h['note']
        assert ev.store.recoveries() == [] and n.evacuate_calls() == []
        vol.close()
    # Its lease gone, the host is failed, fenced and evacuated.
    run_until([ev], lambda: ev.store.recoveries() and
              ev.store.recoveries()[0]['state'] == 'done',
              what='recovery of compute-1')
    assert [c['name'] for c in n.evacuate_calls()] == ['vm']
    ev.close()
