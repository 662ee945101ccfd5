"""The driver's log: one line per operation it performs on the cluster,
with the Cinder ids, the Ursa names and the time it took; one line per
failure, with the same and the time until the failure, at WARNING when
the request was refused and ERROR otherwise.  Against the in-memory master
of test_driver; the image copies' data path (a real cluster, covered by
tests/functional/driver) is replaced by a stand-in."""

import logging
import re
import time
import uuid

import fixtures
from cinder import context as cinder_context
from cinder import exception as cinder_exc
from cinder import objects
from cinder.tests.unit import test
from cinder.volume import configuration as conf_mod
from cinder.volume import driver as base_driver
from cinder.volume import volume_types

from cinder_ursa.volume import driver as ursa_driver
from tests.unit.volume.test_driver import FakeMaster

GiB = 1024 ** 3

DRIVER_LOG = ursa_driver.__name__
DURATION = re.compile(r' (in|after) (\d+\.\d\d) s\b')


class OperationLogTestCase(test.TestCase):

    def setUp(self):
        super().setUp()
        self.ctx = cinder_context.get_admin_context()
        self.master = FakeMaster()
        self.cfg = conf_mod.Configuration(base_driver.volume_opts,
                                          config_group='ursa_unit')
        self.drv = ursa_driver.UrsaDriver(configuration=self.cfg)
        self.drv._master = self.master
        self.drv._flatten = lambda name: None
        self.records = []
        handler = logging.Handler()
        handler.emit = self.records.append
        self.useFixture(fixtures.LogHandler(handler, name='cinder_ursa.volume',
                                            level=logging.INFO))

    def volume(self, size=1):
        return objects.Volume(context=self.ctx, id=str(uuid.uuid4()),
                              _name_id=None, size=size, display_name='v')

    def snapshot(self, vol):
        return objects.Snapshot(context=self.ctx, id=str(uuid.uuid4()),
                                volume_id=vol.id, volume=vol,
                                volume_size=vol.size)

    def logged(self, call, *args, **kwargs):
        """Run one driver call; its driver log lines as (level, message
        with the duration as T), and the durations."""
        del self.records[:]
        call(*args, **kwargs)
        return self.lines()

    def lines(self):
        out, seconds = [], []
        for r in self.records:
            if r.name != DRIVER_LOG:
                continue  # the parts' own lines
            level, msg = r.levelname, r.getMessage()
            m = DURATION.search(msg)
            if m:
                seconds.append(float(m.group(2)))
            out.append((level, DURATION.sub(r' \1 T s', msg)))
        return out, seconds

    def assert_line(self, want, call, *args, **kwargs):
        lines, seconds = self.logged(call, *args, **kwargs)
        self.assertEqual([('INFO', want)], lines)
        self.assertEqual(1, len(seconds))
        return seconds[0]

    def assert_failure(self, level, want, exc, call, *args, **kwargs):
        del self.records[:]
        raised = self.assertRaises(exc, call, *args, **kwargs)
        lines, seconds = self.lines()
        self.assertEqual(1, len(lines), lines)
        self.assertEqual(level, lines[0][0])
        self.assertTrue(lines[0][1].startswith(want), (want, lines[0][1]))
        self.assertEqual(1, len(seconds))
        return raised

    def test_every_operation_logs_one_line(self):
        a, b, c = self.volume(size=10), self.volume(size=20), self.volume()
        s = self.snapshot(a)
        sref = '%s@%s' % (a.name, s.name)
        self.assert_line(
            'Created volume %s as Ursa volume %s (10 GiB) in T s' % (
                a.id, a.name), self.drv.create_volume, a)
        self.assert_line(
            'Extended volume %s (Ursa %s) to 12 GiB in T s' % (a.id, a.name),
            self.drv.extend_volume, a, 12)
        self.assert_line(
            'Created snapshot %s of volume %s as Ursa snapshot %s in T s' % (
                s.id, a.id, sref), self.drv.create_snapshot, s)
        self.assert_line(
            'Created volume %s as Ursa volume %s (20 GiB) from snapshot %s '
            '(Ursa %s) in T s' % (b.id, b.name, s.id, sref),
            self.drv.create_volume_from_snapshot, b, s)
        self.assert_line(
            'Cloned volume %s (Ursa %s) as volume %s (Ursa %s, 1 GiB) in '
            'T s' % (a.id, a.name, c.id, c.name),
            self.drv.create_cloned_volume, c, a)
        self.assert_line(
            'Reverted volume %s (Ursa %s) to snapshot %s (Ursa %s) in T s'
            % (a.id, a.name, s.id, sref),
            self.drv.revert_to_snapshot, self.ctx, a, s)
        plain = volume_types.create(self.ctx, 'plain', {})
        self.assert_line(
            'Retyped volume %s (Ursa %s) to type plain in T s; QoS limits '
            'none, multiattach False' % (a.id, a.name),
            self.drv.retype, self.ctx, a, plain, {}, {'host': 'h'})
        self.assert_line(
            'Attached volume %s (Ursa %s) to host compute-1 in T s; at '
            '/attach/%s' % (a.id, a.name, a.name),
            self.drv.initialize_connection, a, {'host': 'compute-1'})
        self.assert_line(
            'Detached volume %s (Ursa %s) from host compute-1 in T s' % (
                a.id, a.name),
            self.drv.terminate_connection, a, {'host': 'compute-1'})
        self.drv.initialize_connection(a, {'host': 'compute-1'})
        self.assert_line(
            'Detached volume %s (Ursa %s) from every host in T s; it was '
            'attached to compute-1' % (a.id, a.name),
            self.drv.terminate_connection, a, None)
        self.assert_line(
            'Deleted snapshot %s (Ursa %s) in T s' % (s.id, sref),
            self.drv.delete_snapshot, s)
        self.assert_line(
            'Deleted snapshot %s (Ursa %s) in T s; the Ursa snapshot was '
            'already gone' % (s.id, sref), self.drv.delete_snapshot, s)
        self.assert_line(
            'Deleted volume %s (Ursa %s) in T s' % (b.id, b.name),
            self.drv.delete_volume, b)
        self.assert_line(
            'Deleted volume %s (Ursa %s) in T s; the Ursa volume was '
            'already gone' % (b.id, b.name), self.drv.delete_volume, b)

    def test_manage_and_unmanage_log_the_names_before_and_after(self):
        self.master.create_volume('disk1', 2 * GiB)
        v = self.volume()
        ref = {'source-name': 'disk1'}
        self.assert_line(
            'Sized Ursa volume disk1 for volume %s in T s; 2 GiB' % v.id,
            self.drv.manage_existing_get_size, v, ref)
        self.assert_line(
            'Managed Ursa volume disk1 as volume %s (Ursa name %s) in T s'
            % (v.id, v.name), self.drv.manage_existing, v, ref)
        self.master.create_snapshot(v.name, 'snap1')
        s = self.snapshot(v)
        sref = '%s@%s' % (v.name, s.name)
        ref = {'source-name': 'snap1'}
        self.assert_line(
            'Sized Ursa snapshot %s@snap1 for snapshot %s in T s; 2 GiB' % (
                v.name, s.id),
            self.drv.manage_existing_snapshot_get_size, s, ref)
        self.assert_line(
            'Managed Ursa snapshot %s@snap1 as snapshot %s (Ursa name %s) in '
            'T s' % (v.name, s.id, sref),
            self.drv.manage_existing_snapshot, s, ref)
        self.master.snapshot(sref)  # renamed
        self.assert_line(
            'Unmanaged snapshot %s (Ursa %s) in T s; the Ursa snapshot keeps '
            'its name and data' % (s.id, sref), self.drv.unmanage_snapshot, s)
        self.assert_line(
            'Unmanaged volume %s (Ursa %s) in T s; the Ursa volume keeps its '
            'name and data' % (v.id, v.name), self.drv.unmanage, v)

    def test_image_operations_log_the_image_and_the_time(self):
        v = self.volume(size=4)
        self.drv.create_volume(v)
        # The cached image already on the cluster: a clone, no data path.
        self.master.create_volume('image-abc', GiB)
        self.master.create_snapshot('image-abc', 'base')
        meta = {'id': 'abc'}
        c = self.volume(size=2)
        self.assert_line(
            'Cloned image abc into volume %s (Ursa %s, 2 GiB) in T s' % (
                c.id, c.name),
            self.drv.clone_image, self.ctx, c, None, meta, None)
        small = self.volume(size=0)  # smaller than the image: a copy
        self.assert_line(
            'Did not clone image abc into volume %s (Ursa %s, 0 GiB) in T s; '
            'Cinder copies the image instead' % (small.id, small.name),
            self.drv.clone_image, self.ctx, small, None, meta, None)
        self.assertEqual([c.name], [v['name'] for v in self.master.volumes()
                                    if v['parent_snapshot_id']])
        self.override_config('ursa_image_cache', False, group='ursa_unit')
        self.assertEqual(([], []), self.logged(
            self.drv.clone_image, self.ctx, c, None, meta, None))
        # The copies' time is the time the data took.
        self.drv._images.copy_to_volume = lambda *a: time.sleep(0.05)
        took = self.assert_line(
            'Copied image abc into volume %s (Ursa %s, 4 GiB) in T s' % (
                v.id, v.name),
            self.drv.copy_image_to_volume, self.ctx, v, None, 'abc')
        self.assertGreaterEqual(took, 0.05)
        self.drv._images.copy_to_image = lambda *a: None
        self.assert_line(
            'Copied volume %s (Ursa %s, 4 GiB) to image abc in T s' % (
                v.id, v.name),
            self.drv.copy_volume_to_image, self.ctx, v, None, meta)

    def test_failures_log_once_with_the_ids_and_raise_unchanged(self):
        a = self.volume()
        self.drv.create_volume(a)
        s = self.snapshot(a)
        self.drv.create_snapshot(s)
        # Refused: the cluster is fine, a WARNING.
        self.assert_failure(
            'WARNING', 'Failed to delete volume %s (Ursa %s) after T s: '
            'VolumeIsBusy: ' % (a.id, a.name),
            cinder_exc.VolumeIsBusy, self.drv.delete_volume, a)
        self.assert_failure(
            'WARNING', 'Failed to manage Ursa volume None as volume %s '
            '(Ursa name %s) after T s: ManageExistingInvalidReference: ' % (
                a.id, a.name), cinder_exc.ManageExistingInvalidReference,
            self.drv.manage_existing, a, {})
        self.assert_failure(
            'WARNING', 'Failed to attach volume %s (Ursa %s) to host None '
            'after T s: InvalidConnectorException: ' % (a.id, a.name),
            cinder_exc.InvalidConnectorException,
            self.drv.initialize_connection, a, {})
        # Failed: an ERROR.
        self.assert_failure(
            'ERROR', 'Failed to create volume %s as Ursa volume %s (1 GiB) '
            'after T s: VolumeBackendAPIException: ' % (a.id, a.name),
            cinder_exc.VolumeBackendAPIException, self.drv.create_volume, a)
        ghost = self.volume()
        self.assert_failure(
            'ERROR', 'Failed to extend volume %s (Ursa %s) to 2 GiB after '
            'T s: VolumeNotFound: ' % (ghost.id, ghost.name),
            cinder_exc.VolumeNotFound, self.drv.extend_volume, ghost, 2)
        ghost_snap = self.snapshot(a)
        b = self.volume()
        self.assert_failure(
            'ERROR', 'Failed to create volume %s as Ursa volume %s (1 GiB) '
            'from snapshot %s (Ursa %s@%s) after T s: SnapshotNotFound: ' % (
                b.id, b.name, ghost_snap.id, a.name, ghost_snap.name),
            cinder_exc.SnapshotNotFound,
            self.drv.create_volume_from_snapshot, b, ghost_snap)
        # The exception is the very one raised, and the time the one until
        # it was.
        boom = cinder_exc.ImageCopyFailure(reason='glance went away')

        def fails(*a):
            time.sleep(0.05)
            raise boom
        self.drv._images.copy_to_image = fails
        raised = self.assert_failure(
            'ERROR', 'Failed to copy volume %s (Ursa %s, 1 GiB) to image abc '
            'after T s: ImageCopyFailure: Failed to copy image to volume: '
            'glance went away' % (a.id, a.name), cinder_exc.ImageCopyFailure,
            self.drv.copy_volume_to_image, self.ctx, a, None, {'id': 'abc'})
        self.assertIs(boom, raised)
        self.assertGreaterEqual(self.lines()[1][0], 0.05)

    def test_an_unforeseen_error_logs_its_traceback(self):
        def broken(*a, **k):
            raise TypeError('a bug')
        self.master.grow = broken
        a = self.volume()
        self.assert_failure(
            'ERROR', 'Failed to extend volume %s (Ursa %s) to 2 GiB after '
            'T s: TypeError: a bug' % (a.id, a.name), TypeError,
            self.drv.extend_volume, a, 2)
        self.assertIsInstance(self.records[-1].exc_info[1], TypeError)
        # A Cinder exception is foreseen: its line only.
        del self.master.grow
        self.assert_failure('ERROR', 'Failed to extend', cinder_exc.
                            VolumeNotFound, self.drv.extend_volume, a, 2)
        self.assertIsNone(self.records[-1].exc_info)
