"""Every Cinder workflow on the Ursa backend, through real cinder-api,
cinder-scheduler, cinder-volume and cinder-backup, driven by
openstackclient and python-cinderclient as Keystone's admin; the bytes
inside volumes are checked through the Ursa NBD gateway (qemu-io)."""

import base64
import json
import subprocess
import time
import uuid

from tests.e2e import harness
from tests.fixtures.wait import wait_for

GiB = 1024 ** 3


def wait(osc, kind, ref, want, timeout=180):
    seen = []

    def there():
        seen[:] = [osc(*kind.split(), 'show', ref)['status']]
        assert 'error' not in seen[0], '%s %s went %s' % (kind, ref, seen[0])
        return seen[0] if seen[0] in want else None
    return wait_for(there, timeout, lambda: '%s %s to be %s, still %s' % (
        kind, ref, want, seen), interval=1)


def nbd(stack, volume_id):
    return 'nbd://127.0.0.1:%d/volume-%s' % (stack.ursa.nbd_port, volume_id)


def qemu_io(stack, volume_id, cmd):
    r = subprocess.run(['qemu-io', '-f', 'raw', '-c', cmd,
                        nbd(stack, volume_id)], capture_output=True,
                       text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and 'failed' not in out.lower(), out
    return out


def pattern_is(stack, volume_id, byte, length=1024 * 1024):
    qemu_io(stack, volume_id, 'read -P 0x%02x 0 %d' % (byte, length))


def test_every_workflow(stack):
    osc = harness.OpenStackClient(stack.keystone)
    master = stack.ursa.client()
    t0 = time.monotonic()

    v1 = osc('volume', 'create', '--size', '1', 'v1')['id']
    wait(osc, 'volume', v1, ['available'])
    assert master.volume('volume-' + v1)['size'] == GiB
    qemu_io(stack, v1, 'write -P 0x11 0 1M')

    s1 = osc('volume', 'snapshot', 'create', '--volume', v1, 's1')['id']
    wait(osc, 'volume snapshot', s1, ['available'])
    qemu_io(stack, v1, 'write -P 0x22 0 1M')

    # From the snapshot, larger; a clone of the volume.
    v2 = osc('volume', 'create', '--snapshot', s1, '--size', '2', 'v2')['id']
    v3 = osc('volume', 'create', '--source', v1, 'v3')['id']
    for v in (v2, v3):
        wait(osc, 'volume', v, ['available'])
    pattern_is(stack, v2, 0x11)
    assert master.volume('volume-' + v2)['size'] == 2 * GiB
    pattern_is(stack, v3, 0x22)

    # Revert to the (latest) snapshot, then extend.
    osc('volume', 'revert', s1, json_out=False)
    wait(osc, 'volume', v1, ['available'])
    pattern_is(stack, v1, 0x11)
    osc('volume', 'set', '--size', '2', v1, json_out=False)
    wait_for(lambda: osc('volume', 'show', v1)['size'] == 2, 60,
             'the extend to show', interval=1)
    assert master.volume('volume-' + v1)['size'] == 2 * GiB

    # Backups through the Ursa backup driver (cinder-backup attaches the
    # volume through ursa-attach; the driver reads the cluster itself):
    # a full one, then an incremental after a change; each restores.
    b1 = osc('volume', 'backup', 'create', '--name', 'b1', v1)['id']
    wait(osc, 'volume backup', b1, ['available'], timeout=300)
    assert master.attachments('volume-' + v1) == []
    restored = osc('volume', 'backup', 'restore', b1, 'restored')
    rv = restored.get('volume_id') or restored.get('id')
    wait(osc, 'volume', rv, ['available'])
    pattern_is(stack, rv, 0x11)
    qemu_io(stack, v1, 'write -P 0x33 1M 1M')
    b2 = osc('volume', 'backup', 'create', '--incremental', '--name', 'b2',
             v1)['id']
    wait(osc, 'volume backup', b2, ['available'], timeout=300)
    assert osc('volume', 'backup', 'show', b2)['is_incremental'] is True
    chain = 'volume-%s.backups' % v1
    assert sorted(s['name'] for s in master.snapshots(chain)) == sorted(
        ['backup-' + b1, 'backup-' + b2])
    # The volume keeps one snapshot for the next incremental: b2's.
    assert [s['name'] for s in master.snapshots('volume-' + v1)
            if s['name'].startswith('backup-')] == ['backup-%s.base' % b2]
    r2 = osc('volume', 'backup', 'restore', b2, 'restored2')
    r2 = r2.get('volume_id') or r2.get('id')
    wait(osc, 'volume', r2, ['available'])
    pattern_is(stack, r2, 0x11)
    qemu_io(stack, r2, 'read -P 0x33 1M 1M')
    # Restored onto an existing volume: it reads as the backup, zeros
    # where the backup has none.
    qemu_io(stack, rv, 'write -P 0x44 1M 1M')
    osc('volume', 'backup', 'restore', '--force', b1, rv)
    wait(osc, 'volume', rv, ['available'])
    qemu_io(stack, rv, 'read -P 0 1M 1M')
    pattern_is(stack, rv, 0x11)
    # Cinder's rule: no deleting a backup an incremental depends on.
    cc = _cinderclient(stack)
    from cinderclient import exceptions as cc_exc
    try:
        cc.backups.delete(b1)
    except cc_exc.BadRequest as e:
        assert 'ncremental' in str(e), e
    else:
        raise AssertionError('b1 was deleted under its incremental')

    # QoS spec on a volume type.
    osc('volume', 'qos', 'create', '--consumer', 'back-end', '--property',
        'total_iops_sec=500', 'q1')
    osc('volume', 'type', 'create', '--property',
        'volume_backend_name=ursa', 't1')
    osc('volume', 'qos', 'associate', 'q1', 't1', json_out=False)
    v4 = osc('volume', 'create', '--type', 't1', '--size', '1', 'v4')['id']
    wait(osc, 'volume', v4, ['available'])
    assert master.volume('volume-' + v4)['qos'] == {'total_iops_sec': 500}
    # Retype in place to a type without QoS: the limits go.
    osc('volume', 'type', 'create', '--property',
        'volume_backend_name=ursa', 't2')
    osc('volume', 'set', '--type', 't2', '--retype-policy', 'never', v4,
        json_out=False)
    wait_for(lambda: osc('volume', 'show', v4)['type'] == 't2', 60,
             'the retype to show', interval=1)
    assert master.volume('volume-' + v4)['qos'] == {}

    # python-cinderclient.
    vc = cc.volumes.create(1, name='from-cinderclient')
    _wait_cc(cc, vc.id)
    assert master.volume('volume-' + vc.id)['size'] == GiB

    # Delete everything; Ursa keeps nothing behind.  The backed up volume
    # first (the driver's snapshot goes with it): its backups still
    # restore.
    osc('volume', 'snapshot', 'delete', s1, json_out=False)
    wait_for(lambda: not [s for s in osc('volume', 'snapshot', 'list')],
             60, 'the snapshot deleted', interval=1)
    osc('volume', 'delete', v1, json_out=False)
    wait_for(lambda: 'volume-' + v1 not in
             {v['name'] for v in master.volumes()}, 60, 'v1 gone',
             interval=1)
    r3 = osc('volume', 'backup', 'restore', b2, 'restored3')
    r3 = r3.get('volume_id') or r3.get('id')
    wait(osc, 'volume', r3, ['available'])
    qemu_io(stack, r3, 'read -P 0x33 1M 1M')
    # b2's record exported, then imported under a new id (as Tempest's
    # export and import test does, b2 still there): it restores the same.
    record = cc.backups.export_record(b2)
    assert record['backup_service'] == \
        'cinder_ursa.backup.driver.UrsaBackupDriver', record
    fields = json.loads(base64.b64decode(record['backup_url']))
    fields['id'] = str(uuid.uuid4())
    imported = cc.backups.import_record(
        record['backup_service'],
        base64.b64encode(json.dumps(fields).encode()).decode())['id']
    wait(osc, 'volume backup', imported, ['available'])
    r4 = osc('volume', 'backup', 'restore', imported, 'restored4')
    r4 = r4.get('volume_id') or r4.get('id')
    wait(osc, 'volume', r4, ['available'])
    qemu_io(stack, r4, 'read -P 0x33 1M 1M')
    osc('volume', 'backup', 'delete', imported, json_out=False)
    wait_for(lambda: imported not in {x['ID'] for x in osc(
        'volume', 'backup', 'list')}, 120, 'the imported backup deleted',
        interval=1)
    for b in (b2, b1):
        osc('volume', 'backup', 'delete', b, json_out=False)
        wait_for(lambda b=b: b not in {x['ID'] for x in osc(
            'volume', 'backup', 'list')}, 120, 'backup %s deleted' % b,
            interval=1)
    cc.volumes.delete(vc.id)
    for v in (v2, v3, rv, v4, r2, r3, r4):
        osc('volume', 'delete', v, json_out=False)
    wait_for(lambda: not osc('volume', 'list'), 120,
             lambda: 'no volumes, not %s' % osc('volume', 'list'), interval=1)
    assert [v['name'] for v in master.volumes()] == []
    print('\ne2e: workflows took %.0f s' % (time.monotonic() - t0))


def test_big_clone_and_parallel_creates(stack):
    """The closing note's timings: a 10 GiB volume from a snapshot, and 20
    volumes created at once."""
    osc = harness.OpenStackClient(stack.keystone)
    big = osc('volume', 'create', '--size', '10', 'big')['id']
    wait(osc, 'volume', big, ['available'])
    snap = osc('volume', 'snapshot', 'create', '--volume', big, 'bigsnap')[
        'id']
    wait(osc, 'volume snapshot', snap, ['available'])
    cc = _cinderclient(stack)
    t0 = time.monotonic()
    clone = cc.volumes.create(10, snapshot_id=snap, name='bigclone')
    _wait_cc(cc, clone.id)
    clone_s = time.monotonic() - t0
    t0 = time.monotonic()
    many = [cc.volumes.create(1, name='p%d' % i) for i in range(20)]
    for v in many:
        _wait_cc(cc, v.id)
    many_s = time.monotonic() - t0
    print('\ne2e: 10 GiB volume from a snapshot %.1f s; 20 volumes in '
          'parallel %.1f s' % (clone_s, many_s))
    for v in many + [clone]:
        cc.volumes.delete(v.id)
    cc.volume_snapshots.delete(snap)
    wait_for(lambda: len(cc.volumes.list()) <= 1 and not
             cc.volume_snapshots.list(), 120, 'the deletes', interval=1)
    cc.volumes.delete(big)


def _cinderclient(stack):
    """python-cinderclient as the admin: Cinder's endpoint from the
    Keystone catalog, as a user's would be."""
    from cinderclient import client as cinder_client
    return cinder_client.Client(harness.VOLUME_API,
                                session=stack.keystone.session())


def _wait_cc(cc, vid, timeout=180):
    def available():
        st = cc.volumes.get(vid).status
        assert 'error' not in st, st
        return st == 'available'
    wait_for(available, timeout, 'volume %s to be available' % vid,
             interval=0.5)
