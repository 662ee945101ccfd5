"""UrsaBackupDriver against two real clusters (the volumes' and the
backups') and Cinder's own objects in a real (SQLite) Cinder database:
full and incremental backups, what they read, every restore point byte
for byte, restores onto the original and after the source is gone, the
deletes, and a backup cluster that cannot be reached."""

import hashlib
import json
import os
import random
import threading

import pytest
from cinder import context as cinder_context
from cinder import coordination
from cinder import exception as cinder_exc
from cinder import objects
from oslo_config import cfg

from cinder_ursa.backup import driver as backup_driver
from cinder_ursa.backup import naming
from cinder_ursa.client import diff as diff_mod
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import module_cluster
from tests.functional.driver.test_driver import make_driver

GiB = 1024 ** 3
MiB = 1024 ** 2
BLOCK = 4096
objects.register_all()


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, 'bk-src')


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    """The cluster the backups are kept in."""
    yield from module_cluster(tmp_path_factory, 'bk-store')


@pytest.fixture(scope='module')
def ctx(tmp_path_factory):
    """An admin context on a real Cinder database: SQLite in memory, as
    Cinder's own test base has it (tests/unit/volume shares the process
    under eventlet: the same URL, and a fresh database after ours); and
    Cinder's tooz coordinator, which cinder-backup starts."""
    from cinder.db import api as db_api
    from cinder.db import migration
    cfg.CONF([], project='cinder')
    cfg.CONF.set_override('connection', 'sqlite://', group='database')
    cfg.CONF.set_override('backend_url', 'file://%s' % tmp_path_factory
                          .mktemp('coord'), group='coordination')
    db_api.dispose_engine()
    migration.db_sync()
    coordination.COORDINATOR.start()
    yield cinder_context.get_admin_context()
    coordination.COORDINATOR.stop()
    db_api.dispose_engine()
    cfg.CONF.clear_override('connection', group='database')


@pytest.fixture
def conf(source, store):
    values = {'backup_ursa_master_urls': [store.master_url],
              'backup_ursa_cluster_key_file': store.key_file,
              'backup_ursa_source_master_urls': [source.master_url],
              'backup_ursa_source_cluster_key_file': source.key_file,
              'backup_ursa_chunk_size_mib': 4}
    for k, v in values.items():
        cfg.CONF.set_override(k, v)
    yield values
    for k in values:
        cfg.CONF.clear_override(k)


@pytest.fixture
def drv(ctx, conf):
    d = backup_driver.UrsaBackupDriver(ctx)
    d.check_for_setup_error()
    return d


@pytest.fixture
def vdrv(source, tmp_path, ctx):
    return make_driver(source, tmp_path)


def new_volume(ctx, vdrv, size_gb):
    vol = objects.Volume(context=ctx, size=size_gb,
                         host='test@ursa#ursa', status='available',
                         user_id='u', project_id='p', display_name='v')
    vol.create()
    vdrv.create_volume(vol)
    return vol


def new_backup(ctx, vol, parent=None, snapshot=None):
    b = objects.Backup(context=ctx, volume_id=vol.id,
                       user_id='u', project_id='p', status='creating',
                       parent_id=parent.id if parent else None,
                       snapshot_id=snapshot.id if snapshot else None,
                       size=vol.size)
    b.create()
    return b


def finish(b, updates):
    b.update(updates)
    b.status = 'available'
    b.save()


class Changes:
    """Random writes of about ``fraction`` of a volume, in 1 MiB pieces at
    block-aligned offsets, remembering the blocks they touched."""

    def __init__(self, cluster, name, size, seed):
        self.cluster, self.name, self.size = cluster, name, size
        self.rng = random.Random(seed)

    def write(self, nbytes, piece=MiB):
        touched = set()
        with data_client(self.cluster) as cl, cl.open_volume(self.name) as v:
            for _ in range(nbytes // piece):
                offset = self.rng.randrange(0, (self.size - piece)
                                            // BLOCK) * BLOCK
                v.write(offset, os.urandom(piece))
                touched.update(range(offset // BLOCK,
                                     (offset + piece) // BLOCK))
        return len(touched) * BLOCK


def digest_of_volume(cluster, ref):
    """(sha256 of the data extents' bytes, the extents): a volume's or a
    snapshot's content, reading only what it holds."""
    with data_client(cluster) as cl:
        async def run(c):
            view = await c.open_volume(ref, writable=False)
            try:
                ext = await diff_mod.changed_extents(view)
                h = hashlib.sha256()
                for e in ext:
                    for at in range(0, e.length, 8 * MiB):
                        n = min(8 * MiB, e.length - at)
                        data = await view.read(e.offset + at, n)
                        h.update(_nonzero(e.offset + at, data))
                return h.hexdigest()
            finally:
                await view.close()
        return cl.run(run)


def digest_of_file(path):
    """The same digest of a sparse file: only its data regions read."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for at in range(start, end, 8 * MiB):
                n = min(8 * MiB, end - at)
                h.update(_nonzero(at, os.pread(fd, n, at)))
            pos = end
    return h.hexdigest()


def _nonzero(offset, data):
    """The non-zero blocks of ``data`` with their offsets: equal for two
    copies whatever extents or holes each keeps zeros in."""
    out = []
    zero = bytes(BLOCK)
    for i in range(0, len(data), BLOCK):
        blk = data[i:i + BLOCK]
        if blk != zero[:len(blk)]:
            out.append((offset + i).to_bytes(8, 'big') + blk)
    return b''.join(out)


def restore(drv, b, vol, path, new=True):
    if new:
        with open(path, 'wb') as f:
            f.truncate(vol.size * GiB)
    b.status = 'restoring'
    b.save()
    with open(path, 'r+b') as f:
        drv.restore(b, vol.id, f, new)
    b.status = 'available'
    b.save()
    return digest_of_file(path)


def test_incrementals_read_only_what_changed_and_every_point_restores(
        drv, vdrv, ctx, source, store, tmp_path):
    """A 10 GiB volume: a full backup, then three rounds each changing
    1% of it and backing up incrementally.  Each incremental reads what
    changed (at most 1.2 times the bytes written), and each backup
    restores exactly what the volume held when it was taken."""
    vol = new_volume(ctx, vdrv, 10)
    size = 10 * GiB
    changes = Changes(source, vol.name, size, seed=1)
    changes.write(64 * MiB)
    points = []
    full = new_backup(ctx, vol)
    finish(full, drv.backup(full, None))
    assert drv.last_transfer['kind'] == 'full'
    assert drv.last_transfer['read'] <= 64 * MiB
    points.append((full, digest_of_volume(source, vol.name)))
    parent = full
    for rnd in range(3):
        changed = changes.write(size // 100)
        b = new_backup(ctx, vol, parent=parent)
        finish(b, drv.backup(b, None))
        t = drv.last_transfer
        assert t['kind'] == 'incremental'
        assert changed <= t['read'] <= 1.2 * changed, (rnd, t, changed)
        points.append((b, digest_of_volume(source, vol.name)))
        parent = b
    # Only the newest base snapshot stays on the volume.
    bases = naming.base_snapshots(source.client().snapshots(vol.name))
    assert bases == [naming.BASE % parent.id]
    for b, want in points:
        assert restore(drv, b, vol, tmp_path / 'r.raw') == want, b.id
    chain = store.client().snapshots(naming.CHAIN % vol.name)
    assert sorted(s['name'] for s in chain) == sorted(
        naming.POINT % b.id for b, _ in points)

    # Restore onto the original (not new): what was written since reads
    # as the backup again, zeros included.
    first = points[0]
    changes.write(8 * MiB)
    with data_client(source) as cl, cl.open_volume(vol.name) as v:
        v.write(size - MiB, b'\xff' * MiB)
    original = tmp_path / 'original.raw'
    with data_client(source) as cl, cl.open_volume(vol.name,
                                                   writable=False) as v, \
            open(original, 'wb') as f:
        f.truncate(size)
        for e in cl.run(_extents_of, vol.name):
            f.seek(e.offset)
            f.write(v.read(e.offset, e.length))
    assert restore(drv, first[0], vol, original, new=False) == first[1]

    # The source volume goes (its base snapshot with it): every backup
    # still restores.
    vdrv.delete_volume(vol)
    assert vol.name not in {v['name'] for v in source.client().volumes()}
    b, want = points[2]
    assert restore(drv, b, vol, tmp_path / 'after.raw') == want

    # Deleting the backups, newest first (Cinder's order for a chain),
    # empties the chain; the last delete removes it.
    for b, _ in reversed(points):
        drv.delete_backup(b)
    names = {v['name'] for v in store.client().volumes()}
    assert naming.CHAIN % vol.name not in names
    assert not [n for n in names if n.startswith(vol.name)]


async def _extents_of(cluster, ref):
    view = await cluster.open_volume(ref, writable=False)
    try:
        return await diff_mod.changed_extents(view)
    finally:
        await view.close()


def test_an_incremental_after_its_parents_base_is_gone_copies_all(
        drv, vdrv, ctx, source, tmp_path):
    """The newest backup deleted (its base with it), the next incremental
    has the one before as parent, whose base is gone: it copies every
    extent, and still restores right.  A backup of a Cinder snapshot
    reads the snapshot."""
    vol = new_volume(ctx, vdrv, 1)
    changes = Changes(source, vol.name, GiB, seed=2)
    changes.write(16 * MiB)
    a = new_backup(ctx, vol)
    finish(a, drv.backup(a, None))
    changes.write(4 * MiB)
    b = new_backup(ctx, vol, parent=a)
    finish(b, drv.backup(b, None))
    drv.delete_backup(b)
    assert naming.base_snapshots(source.client().snapshots(vol.name)) == []
    changes.write(4 * MiB)
    c = new_backup(ctx, vol, parent=a)
    finish(c, drv.backup(c, None))
    assert drv.last_transfer['kind'] == 'full'
    want = digest_of_volume(source, vol.name)
    assert restore(drv, c, vol, tmp_path / 'c.raw') == want

    snap = objects.Snapshot(context=ctx,
                            volume_id=vol.id, volume_size=1,
                            user_id='u', project_id='p',
                            status='available')
    snap.create()
    vdrv.create_snapshot(snap)
    at_snap = digest_of_volume(source, vol.name)
    changes.write(4 * MiB)
    d = new_backup(ctx, vol, parent=c, snapshot=snap)
    finish(d, drv.backup(d, None))
    assert restore(drv, d, vol, tmp_path / 'd.raw') == at_snap
    for x in (d, c, a):
        drv.delete_backup(x)
    vdrv.delete_snapshot(snap)
    vdrv.delete_volume(vol)


def test_an_unreachable_backup_cluster_fails_cleanly(ctx, conf, vdrv,
                                                     source):
    """No backup cluster: a clear error, and nothing left behind on the
    volume (no base snapshot)."""
    cfg.CONF.set_override('backup_ursa_master_urls', ['http://127.0.0.1:9'])
    cfg.CONF.set_override('backup_ursa_timeout', 2.0)
    try:
        d = backup_driver.UrsaBackupDriver(ctx)
        with pytest.raises(cinder_exc.BackupDriverException,
                           match='backup_ursa_master_urls'):
            d.check_for_setup_error()
        vol = new_volume(ctx, vdrv, 1)
        b = new_backup(ctx, vol)
        with pytest.raises(cinder_exc.BackupDriverException,
                           match='cannot reach an Ursa master'):
            d.backup(b, None)
        assert source.client().snapshots(vol.name) == []
        vdrv.delete_volume(vol)
    finally:
        cfg.CONF.clear_override('backup_ursa_timeout')


def test_a_snapshots_backup_after_an_extend_and_a_regular_file_target(
        drv, vdrv, ctx, source, tmp_path):
    """A backup of a snapshot taken before the volume grew, after a
    backup of the grown volume: the chain is cut back to the snapshot's
    size, and its restore holds only what the snapshot held.  A regular
    file as the target, opened 'wb' as Cinder opens it (so emptied):
    it gets its size back."""
    vol = new_volume(ctx, vdrv, 1)
    changes = Changes(source, vol.name, GiB, seed=3)
    changes.write(8 * MiB)
    snap = objects.Snapshot(context=ctx, volume_id=vol.id, volume_size=1,
                            user_id='u', project_id='p', status='available')
    snap.create()
    vdrv.create_snapshot(snap)
    at_snap = digest_of_volume(source, '%s@%s' % (vol.name, snap.name))
    a = new_backup(ctx, vol)
    finish(a, drv.backup(a, None))
    vdrv.extend_volume(vol, 2)
    vol.size = 2
    vol.save()
    with data_client(source) as cl, cl.open_volume(vol.name) as v:
        v.write(3 * GiB // 2, b'g' * MiB)
    b = new_backup(ctx, vol, parent=a)
    finish(b, drv.backup(b, None))
    c = new_backup(ctx, vol, snapshot=snap)
    c.size = 1
    c.save()
    finish(c, drv.backup(c, None))
    target = tmp_path / 'file-volume'
    with open(target, 'wb') as f:
        f.write(b'x' * MiB)
    c.status = 'restoring'
    c.save()
    with open(target, 'wb') as f:          # as Cinder opens it
        drv.restore(c, vol.id, f, False)
    assert os.path.getsize(target) == GiB
    assert digest_of_file(target) == at_snap
    for x in (c, b, a):
        drv.delete_backup(x)
    vdrv.delete_snapshot(snap)
    vdrv.delete_volume(vol)


def test_a_volume_of_another_backend_is_read_from_its_device(
        drv, ctx, store, tmp_path):
    """cinder-backup serves every backend: a volume the volumes' cluster
    does not have is read in full from the device Cinder attached, and
    an incremental stores only what differs from its parent."""
    vol = objects.Volume(context=ctx, size=1, host='test@lvm#lvm',
                         status='available', user_id='u', project_id='p',
                         display_name='lvm')
    vol.create()
    device = tmp_path / 'lvm-device'
    with open(device, 'wb') as f:
        f.truncate(GiB)
        f.seek(5 * MiB)
        f.write(os.urandom(2 * MiB))
    a = new_backup(ctx, vol)
    with open(device, 'rb') as f:
        finish(a, drv.backup(a, f))
    assert drv.last_transfer['read'] == GiB
    assert drv.last_transfer['written'] == 4 * MiB      # the piece of it
    with open(device, 'r+b') as f:
        f.seek(100 * MiB)
        f.write(b'n' * MiB)
    want = digest_of_file(device)
    b = new_backup(ctx, vol, parent=a)
    with open(device, 'rb') as f:
        finish(b, drv.backup(b, f))
    assert drv.last_transfer['written'] <= 4 * MiB      # one piece
    assert restore(drv, b, vol, tmp_path / 'r.raw') == want
    for x in (b, a):
        drv.delete_backup(x)
    assert naming.CHAIN % vol.name not in {
        v['name'] for v in store.client().volumes()}


def test_backups_of_one_chain_wait_for_each_other(drv, vdrv, ctx, source):
    """A backup waits while another holds its chain (they revert the
    chain's head and snapshot it: two at once would mix their data)."""
    vol = new_volume(ctx, vdrv, 1)
    Changes(source, vol.name, GiB, seed=4).write(2 * MiB)
    a = new_backup(ctx, vol)
    lock = coordination.COORDINATOR.get_lock(
        'ursa-backup-%s' % (naming.CHAIN % vol.name))
    done = threading.Event()
    result = {}

    def run():
        result['updates'] = drv.backup(a, None)
        done.set()
    with lock:
        t = threading.Thread(target=run)
        t.start()
        assert not done.wait(2.0), 'the backup did not wait for the lock'
    assert done.wait(120)
    t.join()
    finish(a, result['updates'])
    drv.delete_backup(a)
    vdrv.delete_volume(vol)


def test_a_record_imported_under_another_id_restores_and_deletes(
        drv, vdrv, ctx, source, store, tmp_path):
    """backup-export, then backup-import of the record under a new id (as
    Tempest's export/import test does, the original still there): the
    imported backup restores the same data, named after the id it was
    made under; deleting it deletes that data."""
    vol = new_volume(ctx, vdrv, 1)
    Changes(source, vol.name, GiB, seed=7).write(4 * MiB)
    b = new_backup(ctx, vol)
    finish(b, drv.backup(b, None))
    want = digest_of_volume(source, vol.name)
    assert json.loads(b.service_metadata)['id'] == b.id
    imported = new_backup(ctx, vol)
    finish(imported, {'service_metadata': b.service_metadata})
    assert imported.id != b.id
    assert restore(drv, imported, vol, tmp_path / 'i.raw') == want
    drv.delete_backup(imported)
    # Its only point gone, the chain went with it.
    assert naming.CHAIN % vol.name not in {
        v['name'] for v in store.client().volumes()}
    drv.delete_backup(b)        # already gone: nothing left to do
    vdrv.delete_volume(vol)
