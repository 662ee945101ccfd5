"""UrsaDriver on Cinder's own test base, against an in-memory fake of the
master's REST client that follows the master's documented rules (thin
volumes, snapshots, clones reading their parent, clone-v2 trash).  Plus
the compliance check Cinder's own one is not: every method of every driver
interface we claim is really implemented."""

import inspect
import itertools
import json
import uuid

from cinder import context as cinder_context
from cinder import exception as cinder_exc
from cinder import objects
from cinder.interface import volume_driver
from cinder.interface import volume_manageable_driver
from cinder.interface import volume_snapshot_revert
from cinder.interface import volume_snapshotmanagement_driver
from cinder.tests.unit import test
from cinder.volume import configuration as conf_mod
from cinder.volume import driver as base_driver
from cinder.volume import volume_utils

from cinder_ursa import exception
from cinder_ursa.protocol import names
from cinder_ursa.volume import driver as ursa_driver

GiB = 1024 ** 3

CLAIMED = (volume_driver.VolumeDriverCore,
           volume_snapshot_revert.VolumeSnapshotRevertDriver,
           volume_manageable_driver.VolumeListManageableDriver,
           volume_snapshotmanagement_driver.VolumeSnapshotManagementDriver)
# Interface methods where Cinder's BaseVD behaviour is the right one for
# Ursa (hooks, bookkeeping, and generic migration).
INHERITED = {'after_volume_copy', 'before_volume_copy', 'init_capabilities',
             'set_initialized', 'set_throttle', 'update_provider_info',
             'migrate_volume', 'update_migrated_volume',
             'initialized', 'supported'}


class FakeMaster:
    """In-memory ursa-master, as seen through client.master.MasterClient."""

    def __init__(self):
        self.vols = {}    # id -> dict
        self.snaps = {}   # id -> dict
        self.ids = itertools.count(1)
        self.capacity = 3000 * GiB
        self.agents = {'compute-1'}  # hosts running ursa-attach
        self.urls = ['http://fake']

    def _vol(self, ref, trash=False):
        for v in self.vols.values():
            if ref in (v['id'], v['name']) and (trash or
                                               v['status'] != 'trash'):
                return v
        raise exception.NotFound(kind='volume', name=ref)

    def _snap(self, ref):
        vname, _, sname = ref.rpartition('@')
        for s in self.snaps.values():
            if s['id'] == ref or (s['name'] == sname and
                                  self.vols[s['volume_id']]['name'] == vname
                                  and s['status'] != 'trash'):
                return s
        raise exception.NotFound(kind='snapshot', name=ref)

    def cluster_status(self):
        used = sum(v['allocated_bytes'] for v in self.vols.values()) * 3
        return {'health': 'ok', 'servers': {'up': 3, 'down': 0},
                'capacity_bytes': self.capacity,
                'free_bytes': self.capacity - used, 'used_bytes': used,
                'provisioned_bytes': sum(v['size'] for v in
                                         self.vols.values()),
                'allocated_bytes_total': used,
                'volumes': len(self.volumes())}

    def volumes(self):
        return [dict(v) for v in self.vols.values()
                if v['status'] != 'trash']

    def iter_volumes(self):
        self.walks = getattr(self, 'walks', 0) + 1
        return iter(sorted(self.volumes(), key=lambda v: v['name']))

    def volumes_page(self, limit, marker=None, descending=False):
        """The master's paging rules: name order, after the marker (a
        400, MarkerNotFound, when it names no volume)."""
        self.pages = getattr(self, 'pages', []) + [(limit, marker,
                                                    descending)]
        listed = sorted(self.volumes(), key=lambda v: v['name'],
                        reverse=descending)
        if marker is not None:
            at = [v['name'] for v in listed]
            if marker not in at:
                raise exception.MarkerNotFound(
                    reason='marker %r names no volume' % marker)
            listed = listed[at.index(marker) + 1:]
        return listed[:limit], (listed[limit - 1]['name']
                                if len(listed) > limit else None)

    def volume(self, ref):
        v = dict(self._vol(ref))
        p = self.snaps.get(v['parent_snapshot_id'])
        v['parent'] = p and {'volume_id': p['volume_id'],
                             'volume_name': self.vols[p['volume_id']][
                                 'name'], 'snapshot_name': p['name']}
        return v

    @staticmethod
    def _check_name(what, name):
        # The master's own rule: every name the driver makes must pass.
        problem = names.name_problem(what, name)
        if problem:
            raise exception.InvalidArgument(reason=problem)

    def create_volume(self, name, size, **kwargs):
        self._check_name('volume name', name)
        if any(v['name'] == name for v in self.vols.values()):
            raise exception.AlreadyExists(kind='volume', name=name)
        vid = str(uuid.uuid4())
        qos = kwargs.pop('qos', None) or {}
        multiattach = kwargs.pop('multiattach', False)
        self.vols[vid] = {'id': vid, 'name': name, 'size': size,
                          'status': 'available', 'allocated_bytes': 0,
                          'parent_snapshot_id': None, 'lease': None,
                          'args': kwargs, 'qos': qos,
                          'multiattach': multiattach}
        return dict(self.vols[vid])

    def delete_volume(self, ref):
        v = self._vol(ref)
        snaps = [s for s in self.snaps.values() if s['volume_id'] == v['id']]
        if any(s['status'] != 'trash' for s in snaps):
            raise exception.Conflict(reason='volume has snapshots')
        if snaps:
            v['status'] = 'trash'
        else:
            del self.vols[v['id']]
        self._reap()

    def _children(self, sid):
        return [v for v in self.vols.values()
                if v['parent_snapshot_id'] == sid]

    def _reap(self):
        for s in list(self.snaps.values()):
            if s['status'] == 'trash' and not self._children(s['id']):
                del self.snaps[s['id']]
                return self._reap()
        for v in list(self.vols.values()):
            if v['status'] == 'trash' and not any(
                    s['volume_id'] == v['id'] for s in self.snaps.values()):
                del self.vols[v['id']]
                return self._reap()

    def grow(self, ref, size):
        v = self._vol(ref)
        if size < v['size']:
            raise exception.InvalidArgument(reason='shrinking')
        v['size'] = size
        return dict(v)

    def create_snapshot(self, volume, name):
        self._check_name('snapshot name', name)
        v = self._vol(volume)
        sid = str(uuid.uuid4())
        self.snaps[sid] = {'id': sid, 'name': name, 'volume_id': v['id'],
                           'size': v['size'], 'status': 'available',
                           'volume_name': v['name']}
        return dict(self.snaps[sid])

    def delete_snapshot(self, ref):
        s = self._snap(ref)
        if self._children(s['id']):
            s['status'] = 'trash'
        else:
            del self.snaps[s['id']]
        self._reap()

    def snapshot(self, ref):
        return dict(self._snap(ref))

    def snapshots(self, volume=None):
        return [dict(s, volume_name=self.vols[s['volume_id']]['name'])
                for s in self.snaps.values() if s['status'] != 'trash']

    def clone(self, snapshot, name, size=None, **kwargs):
        s = self._snap(snapshot)
        v = self.create_volume(name, size or s['size'],
                               qos=kwargs.get('qos'),
                               multiattach=kwargs.get('multiattach'))
        self.vols[v['id']]['parent_snapshot_id'] = s['id']
        return v

    def revert(self, ref, snapshot):
        v = self._vol(ref)
        self._snap('%s@%s' % (v['name'], snapshot))
        if v['lease']:
            raise exception.Conflict(reason='open for writing')
        return dict(v)

    # Attachments, with the host's agent answering on the next look.
    def attach(self, ref, host, standby=False):
        v = self._vol(ref)
        others = [h for h in v.setdefault('att', {}) if h != host]
        v.setdefault('standby', {})
        standby = bool(standby and others and not v['multiattach'])
        if others and not v['multiattach'] and not (
                standby and len(others) == 1 and
                not v['standby'].get(others[0])):
            raise exception.Conflict(reason='attached to %s' % others)
        if host not in v['att']:
            v['att'][host] = 'attaching'
            v['standby'][host] = standby
        return self.attachment(ref, host)

    def attachment(self, ref, host):
        v = self._vol(ref)
        if host not in v.get('att', {}):
            raise exception.NotFound(kind='attachment', name=host)
        st = v['att'][host]
        if host in self.agents:
            if st == 'attaching':
                st = v['att'][host] = 'attached'
            elif st == 'detaching':
                del v['att'][host]
                raise exception.NotFound(kind='attachment', name=host)
        return {'volume_id': v['id'], 'host': host, 'status': st,
                'path': '/attach/%s' % v['name'] if st == 'attached'
                else None, 'error': None,
                'export_token': 'tok-%s-%s' % (v['id'], host),
                'standby': v.get('standby', {}).get(host, False)}

    def attachments(self, ref=None, host=None):
        v = self._vol(ref)
        return [{'host': h} for h in v.get('att', {})]

    def update_attachment(self, ref, host, status, path=None, error=None):
        v = self._vol(ref)
        if host not in v.get('att', {}):
            raise exception.NotFound(kind='attachment', name=host)
        v['att'][host] = status

    def detach(self, ref, host):
        self._vol(ref).get('att', {}).pop(host, None)
        self._vol(ref).get('standby', {}).pop(host, None)

    def revoke_lease(self, ref):
        self._vol(ref)['revoked'] = True

    def set_qos(self, ref, qos):
        self._vol(ref)['qos'] = dict(qos)
        return dict(self._vol(ref))

    def update_volume(self, ref, qos, multiattach):
        v = self._vol(ref)
        v['qos'] = dict(qos)
        v['multiattach'] = multiattach
        return dict(v)

    def rename_volume(self, ref, name):
        self._check_name('volume name', name)
        v = self._vol(ref)
        v['name'] = name
        return dict(v)

    def rename_snapshot(self, ref, name):
        self._check_name('snapshot name', name)
        s = self._snap(ref)
        s['name'] = name
        return dict(s)


class UrsaDriverTestCase(test.TestCase):

    def setUp(self):
        super().setUp()
        self.ctx = cinder_context.get_admin_context()
        self.master = FakeMaster()
        self.cfg = conf_mod.Configuration(base_driver.volume_opts,
                                          config_group='ursa_unit')
        self.override_config('volume_backend_name', 'ursa-unit',
                             group='ursa_unit')
        self.drv = ursa_driver.UrsaDriver(configuration=self.cfg)
        self.drv._master = self.master
        self.flattened = []
        self.drv._flatten = self.flattened.append

    def volume(self, size=1):
        return objects.Volume(context=self.ctx, id=str(uuid.uuid4()),
                              _name_id=None, size=size, display_name='v')

    def snapshot(self, vol):
        return objects.Snapshot(context=self.ctx, id=str(uuid.uuid4()),
                                volume_id=vol.id, volume=vol,
                                volume_size=vol.size)

    def test_create_uses_the_configured_layout(self):
        self.override_config('ursa_replicas', 2, group='ursa_unit')
        self.override_config('ursa_stripe_unit_kib', 64, group='ursa_unit')
        self.override_config('ursa_stripe_count', 4, group='ursa_unit')
        v = self.volume(size=3)
        self.drv.create_volume(v)
        info = self.master.volume(v.name)
        self.assertEqual(3 * GiB, info['size'])
        self.assertEqual({'replicas': 2, 'min_replicas': 2,
                          'chunk_size': 64 * 1024 ** 2,
                          'stripe_unit': 64 * 1024, 'stripe_count': 4},
                         info['args'])

    def test_qos_specs_of_the_type_reach_ursa_and_retype_changes_them(self):
        from cinder.volume import qos_specs
        from cinder.volume import volume_types
        spec = qos_specs.create(self.ctx, 'fast', {
            'consumer': 'back-end', 'total_iops_sec': '500',
            'read_bytes_sec': '1048576', 'something_else': 'x'})
        front = qos_specs.create(self.ctx, 'front', {
            'consumer': 'front-end', 'total_iops_sec': '7'})
        fast = volume_types.create(self.ctx, 'fast', {})
        plain = volume_types.create(self.ctx, 'plain', {})
        nova_side = volume_types.create(self.ctx, 'nova-side', {})
        qos_specs.associate_qos_with_type(self.ctx, spec['id'], fast['id'])
        qos_specs.associate_qos_with_type(self.ctx, front['id'],
                                          nova_side['id'])
        v = self.volume()
        v.volume_type_id = fast['id']
        self.drv.create_volume(v)
        want = {'total_iops_sec': 500, 'read_bytes_sec': 1048576}
        self.assertEqual(want, self.master.volume(v.name)['qos'])
        # Clones take the QoS of their own type.
        c = self.volume()
        c.volume_type_id = fast['id']
        self.drv.create_cloned_volume(c, v)
        self.assertEqual(want, self.master.volume(c.name)['qos'])
        self.assertEqual((True, None), self.drv.retype(
            self.ctx, v, plain, {}, {'host': 'h'}))
        self.assertEqual({}, self.master.volume(v.name)['qos'])
        # Front-end specs are Nova's business.
        self.drv.retype(self.ctx, v, nova_side, {}, {'host': 'h'})
        self.assertEqual({}, self.master.volume(v.name)['qos'])
        self.assertTrue(self.drv.get_volume_stats(True)['QoS_support'])

    def test_multiattach_volumes_attach_to_several_hosts(self):
        from cinder.volume import volume_types
        multi = volume_types.get_volume_type(self.ctx, volume_types.create(
            self.ctx, 'multi', {'multiattach': '<is> True'})['id'])
        self.master.agents.add('compute-2')
        v = self.volume()
        v.multiattach = True
        self.drv.create_volume(v)
        self.assertTrue(self.master.volume(v.name)['multiattach'])
        paths = [self.drv.initialize_connection(v, {'host': h})['data'][
            'device_path'] for h in ('compute-1', 'compute-2')]
        self.assertEqual(2, len(paths))
        for h in ('compute-1', 'compute-2'):
            self.drv.terminate_connection(v, {'host': h})
        # Retype to a type without multiattach turns it off, and back.
        plain = self.volume()
        self.drv.create_volume(plain)
        self.assertFalse(self.master.volume(plain.name)['multiattach'])
        self.drv.retype(self.ctx, plain, multi, {}, {'host': 'h'})
        self.assertTrue(self.master.volume(plain.name)['multiattach'])
        self.assertTrue(self.drv.get_volume_stats(True)['multiattach'])

    def test_stats_divide_raw_capacity_by_replicas(self):
        v = self.volume(size=10)
        self.drv.create_volume(v)
        self.master.vols[self.master.volume(v.name)['id']][
            'allocated_bytes'] = 2 * GiB
        st = self.drv.get_volume_stats(refresh=True)
        self.assertEqual(1000, st['total_capacity_gb'])
        self.assertEqual(1000 - 2, st['free_capacity_gb'])
        self.assertEqual(10, st['provisioned_capacity_gb'])
        self.assertEqual(2, st['allocated_capacity_gb'])
        self.assertTrue(st['thin_provisioning_support'])
        self.assertEqual('ursa-unit', st['volume_backend_name'])
        self.assertIs(st, self.drv.get_volume_stats())

    def test_stats_survive_an_unreachable_master(self):
        def down():
            raise exception.UrsaConnectionError(peer='m', reason='refused')
        self.master.cluster_status = down
        st = self.drv.get_volume_stats(refresh=True)
        self.assertEqual('unknown', st['free_capacity_gb'])

    def test_clone_depth_and_flatten_policy(self):
        self.override_config('ursa_max_clone_depth', 2, group='ursa_unit')
        a = self.volume()
        self.drv.create_volume(a)
        chain = [a]
        for _ in range(3):
            nxt = self.volume()
            self.drv.create_cloned_volume(nxt, chain[-1])
            chain.append(nxt)
        # Depths 1 and 2 are kept, depth 3 is flattened.
        self.assertEqual([chain[3].name], self.flattened)
        self.override_config('ursa_flatten_volume_from_snapshot', True,
                             group='ursa_unit')
        s = self.snapshot(a)
        self.drv.create_snapshot(s)
        b = self.volume(size=2)
        self.drv.create_volume_from_snapshot(b, s)
        self.assertEqual(b.name, self.flattened[-1])
        self.assertEqual(2 * GiB, self.master.volume(b.name)['size'])

    def test_cloned_source_can_be_deleted(self):
        a, b = self.volume(), self.volume()
        self.drv.create_volume(a)
        self.drv.create_cloned_volume(b, a)
        self.assertEqual([], self.master.snapshots(a.name))
        self.drv.delete_volume(a)
        self.assertIn(b.name, [v['name'] for v in self.master.volumes()])
        self.drv.delete_volume(b)
        self.assertEqual({}, self.master.vols)
        self.assertEqual({}, self.master.snaps)

    def test_setup_check_refuses_name_templates_ursa_refuses(self):
        self.drv.check_for_setup_error()  # volume-%s, snapshot-%s
        for opt, bad in (('volume_name_template', 'vol %s'),
                         ('snapshot_name_template', '.snap@%s')):
            self.override_config(opt, bad)
            exc = self.assertRaises(cinder_exc.InvalidConfigurationValue,
                                    self.drv.check_for_setup_error)
            self.assertIn(opt, str(exc))
            self.assertIn('A-Z a-z 0-9 . _ -', str(exc))
            self.override_config(opt, opt.split('_')[0] + '_%s')
        self.drv.check_for_setup_error()

    def test_error_translation(self):
        ghost = self.volume()
        self.assertRaises(cinder_exc.VolumeNotFound,
                          self.drv.extend_volume, ghost, 2)
        self.drv.delete_volume(ghost)  # already gone: fine
        a = self.volume()
        self.drv.create_volume(a)
        s = self.snapshot(a)
        self.drv.create_snapshot(s)
        self.assertRaises(cinder_exc.VolumeIsBusy, self.drv.delete_volume, a)
        self.assertRaises(cinder_exc.VolumeBackendAPIException,
                          self.drv.create_volume, a)
        self.master.vols[self.master.volume(a.name)['id']]['lease'] = 'h'
        self.assertRaises(cinder_exc.VolumeIsBusy,
                          self.drv.revert_to_snapshot, self.ctx, a, s)
        ghost_snap = self.snapshot(a)
        self.assertRaises(cinder_exc.SnapshotNotFound,
                          self.drv.create_volume_from_snapshot,
                          self.volume(), ghost_snap)
        self.drv.delete_snapshot(ghost_snap)  # already gone: fine

        def refused(*a, **k):
            raise exception.NotAuthorized(reason='bad signature')
        self.master.create_volume = refused
        exc = self.assertRaises(cinder_exc.VolumeBackendAPIException,
                                self.drv.create_volume, self.volume())
        self.assertIn('ursa_cluster_key_file', str(exc))

    def test_manageable_lists_page_and_flag(self):
        for i in range(5):
            self.master.create_volume('disk%d' % i, (i + 1) * GiB)
        self.master.create_volume('image-abc', GiB)
        managed = self.volume()
        self.drv.create_volume(managed)
        entries = self.drv.get_manageable_volumes(
            [managed], None, 3, 1, ['size'], ['asc'])
        self.assertEqual(3, len(entries))
        self.assertEqual([1, 1, 2], sorted(e['size'] for e in entries))
        every = {e['reference']['source-name']: e for e in
                 self.drv.get_manageable_volumes([managed], None, 100, 0,
                                                 ['size'], ['asc'])}
        self.assertFalse(every['image-abc']['safe_to_manage'])
        self.assertFalse(every[managed.name]['safe_to_manage'])
        self.assertEqual(managed.id, every[managed.name]['cinder_id'])
        self.assertTrue(every['disk3']['safe_to_manage'])

    def test_manageable_pages_through_the_cluster_as_cinder_would(self):
        """Sorted by reference (Cinder's default, desc), the driver asks
        the cluster for offset + limit volumes past the marker only, and
        answers what Cinder's paginate_entries_list over every volume
        would."""
        for i in range(12):
            self.master.create_volume('disk%02d' % i, (i % 3 + 1) * GiB)
        managed = self.volume()
        self.drv.create_volume(managed)
        every = self.drv.get_manageable_volumes([managed], None, 1000, 0,
                                                ['size'], ['asc'])
        self.assertEqual(13, len(every))
        cases = [
            (None, 5, 0, 'desc'), (None, 5, 0, 'asc'),
            ({'source-name': 'disk07'}, 3, 0, 'desc'),
            ('{"source-name": "disk07"}', 3, 2, 'asc'),
            ({'source-name': 'disk02'}, 100, 1, 'asc'),
            ({'source-name': 'disk00'}, 4, 0, 'desc'),
            (None, 3, 20, 'asc'),
        ]
        for marker, limit, offset, sort_dir in cases:
            self.master.pages = []
            expected = volume_utils.paginate_entries_list(
                every, marker, limit, offset, ['reference'], [sort_dir])
            got = self.drv.get_manageable_volumes(
                [managed], marker, limit, offset, ['reference'],
                [sort_dir])
            self.assertEqual(expected, got, (marker, limit, offset))
            name = marker and (marker if isinstance(marker, dict) else
                               json.loads(marker))['source-name']
            self.assertEqual([(offset + limit, name, sort_dir == 'desc')],
                             self.master.pages)
        self.assertEqual([], self.drv.get_manageable_volumes(
            [], None, 0, 0, ['reference'], ['desc']))

    def test_manageable_markers_naming_nothing_are_invalid_input(self):
        self.master.create_volume('disk', GiB)
        for marker in ({'source-name': 'gone'}, '{"source-name": "gone"}',
                       {'source-id': 'disk'}, 'not json', '[1]',
                       {'source-name': 'disk', 'other': 1}):
            for keys in (['reference'], ['size']):
                self.assertRaises(
                    cinder_exc.InvalidInput,
                    self.drv.get_manageable_volumes, [], marker, 10, 0,
                    keys, ['asc'])

    def test_manage_needs_a_reference_and_a_closed_volume(self):
        self.master.create_volume('busy', GiB)
        self.master.vols[self.master.volume('busy')['id']]['lease'] = {
            'holder': 'host-7'}
        v = self.volume()
        self.assertRaises(cinder_exc.ManageExistingInvalidReference,
                          self.drv.manage_existing, v, {})
        exc = self.assertRaises(cinder_exc.ManageExistingInvalidReference,
                                self.drv.manage_existing, v,
                                {'source-name': 'busy'})
        self.assertIn('host-7', str(exc))
        self.master.create_volume('odd', GiB + 4096)
        self.assertEqual(2, self.drv.manage_existing_get_size(
            v, {'source-name': 'odd'}))

    def test_connection_is_local_with_nbd_details(self):
        v = self.volume()
        self.drv.create_volume(v)
        conn = self.drv.initialize_connection(v, {'host': 'compute-1'})
        self.assertEqual('local', conn['driver_volume_type'])
        self.assertEqual('/attach/%s' % v.name, conn['data']['device_path'])
        # ursa-nbd opens it over TCP only under the attachment's token.
        self.assertEqual('%s~tok-%s-compute-1' % (
            v.name, conn['data']['ursa_volume_id']),
                         conn['data']['nbd_export'])
        self.assertRaises(cinder_exc.VolumeIsBusy,
                          self.drv.initialize_connection, v,
                          {'host': 'compute-2'})
        self.drv.terminate_connection(v, {'host': 'compute-1'})
        self.assertEqual([], self.master.attachments(v.name))
        self.assertNotIn('revoked', self.master.vols[
            self.master.volume(v.name)['id']])

    def _cinder_attachments(self, v, *atts):
        """Set the volume's Cinder attachments: (instance, host, status)."""
        v.volume_attachment = objects.VolumeAttachmentList(objects=[
            objects.VolumeAttachment(
                context=self.ctx, id=str(uuid.uuid4()), volume_id=v.id,
                instance_uuid=inst, attached_host=host, attach_status=st)
            for inst, host, st in atts])

    def test_a_live_migrations_destination_attaches_as_a_standby(self):
        """Nova attaches the destination host (a second attachment of
        the same instance) while the source is attached: a standby,
        whose agent takes the lease over at the first write there."""
        self.master.agents |= {'compute-2', 'compute-3'}
        vm, other = str(uuid.uuid4()), str(uuid.uuid4())
        v = self.volume()
        self.drv.create_volume(v)
        self._cinder_attachments(v, (vm, None, 'attaching'))
        self.drv.initialize_connection(v, {'host': 'compute-1'})
        vid = self.master.volume(v.name)['id']
        self.assertEqual({'compute-1': False},
                         self.master.vols[vid]['standby'])
        # Another instance attached to compute-2: refused, as ever.
        self._cinder_attachments(v, (vm, 'compute-1', 'attached'),
                                 (other, None, 'attaching'))
        self.assertRaises(cinder_exc.VolumeIsBusy,
                          self.drv.initialize_connection, v,
                          {'host': 'compute-2'})
        # The same instance: a live migration's destination.
        self._cinder_attachments(v, (vm, 'compute-1', 'attached'),
                                 (vm, None, 'attaching'))
        conn = self.drv.initialize_connection(v, {'host': 'compute-2'})
        self.assertEqual('/attach/%s' % v.name, conn['data']['device_path'])
        self.assertEqual({'compute-1': False, 'compute-2': True},
                         self.master.vols[vid]['standby'])
        # Nova detaches the source once the migration is done.
        self.drv.terminate_connection(v, {'host': 'compute-1'})
        self.assertEqual(['compute-2'], [
            a['host'] for a in self.master.attachments(v.name)])

    def test_a_silent_hosts_detach_revokes_no_other_hosts_lease(self):
        """A live migration's two hosts: detaching the one whose agent
        does not answer must not revoke the volume's lease, which the
        other host holds (a rollback whose destination died would fence
        the source still running the guest; the end of a migration
        whose source hangs, the destination).  The master's detach
        revokes the lease of the host it detaches, if it holds it."""
        self.override_config('ursa_attach_timeout', 1, group='ursa_unit')
        self.master.agents |= {'compute-2'}
        vm = str(uuid.uuid4())
        v = self.volume()
        self.drv.create_volume(v)
        self._cinder_attachments(v, (vm, None, 'attaching'))
        self.drv.initialize_connection(v, {'host': 'compute-1'})
        self._cinder_attachments(v, (vm, 'compute-1', 'attached'),
                                 (vm, None, 'attaching'))
        self.drv.initialize_connection(v, {'host': 'compute-2'})
        vol = self.master.vols[self.master.volume(v.name)['id']]
        # Rolled back, the destination's agent gone silent.
        self.master.agents.discard('compute-2')
        self.drv.terminate_connection(v, {'host': 'compute-2'})
        self.assertEqual(['compute-1'], [
            a['host'] for a in self.master.attachments(v.name)])
        self.assertNotIn('revoked', vol)
        # Migrated again, and done: the source hangs at its detach.
        self.master.agents |= {'compute-2'}
        self.drv.initialize_connection(v, {'host': 'compute-2'})
        self.master.agents.discard('compute-1')
        self.drv.terminate_connection(v, {'host': 'compute-1'})
        self.assertEqual(['compute-2'], [
            a['host'] for a in self.master.attachments(v.name)])
        self.assertNotIn('revoked', vol)
        # Alone, a silent host's lease is revoked as before.
        self.master.agents.discard('compute-2')
        self.drv.terminate_connection(v, {'host': 'compute-2'})
        self.assertTrue(vol['revoked'])

    def test_a_silent_hosts_detach_of_a_multiattach_volume(self):
        """The master's detach of the silent host revokes its writers'
        shares only (the other hosts' are re-admitted): the driver
        revokes no lease of a multiattach volume still attached
        elsewhere, but for a force detach from every host."""
        self.override_config('ursa_attach_timeout', 1, group='ursa_unit')
        self.master.agents |= {'compute-2'}
        v = self.volume()
        v.multiattach = True
        self.drv.create_volume(v)
        vol = self.master.vols[self.master.volume(v.name)['id']]
        vol['multiattach'] = True
        for host in ('compute-1', 'compute-2'):
            self.drv.initialize_connection(v, {'host': host})
        self.master.agents.discard('compute-2')
        self.drv.terminate_connection(v, {'host': 'compute-2'})
        self.assertEqual(['compute-1'], [
            a['host'] for a in self.master.attachments(v.name)])
        self.assertNotIn('revoked', vol)
        # A force detach (no connector), compute-1 silent too: every
        # writer's lease revoked.
        self.master.agents |= {'compute-2'}
        self.drv.initialize_connection(v, {'host': 'compute-2'})
        self.master.agents -= {'compute-1', 'compute-2'}
        self.drv.terminate_connection(v, None)
        self.assertTrue(vol['revoked'])
        self.assertEqual({}, vol['att'])

    def test_which_attachments_are_a_live_migration(self):
        from cinder_ursa.volume import attachments as att_mod
        vm, other = str(uuid.uuid4()), str(uuid.uuid4())
        v = self.volume()

        def standby(*atts, host='dst', multiattach=False):
            self._cinder_attachments(v, *atts)
            return att_mod.live_migration_destination(v, host, multiattach)
        self.assertTrue(standby((vm, 'src', 'attached'),
                                (vm, 'dst', 'attaching')))
        self.assertTrue(standby((vm, 'src', 'attached'), (vm, None,
                                                          'reserved')))
        # Nothing else attached, another instance, the same host, the
        # source not attached (yet), or a multiattach volume: no.
        self.assertFalse(standby((vm, None, 'attaching')))
        self.assertFalse(standby((vm, 'src', 'attached'),
                                 (other, None, 'attaching')))
        self.assertFalse(standby((vm, 'dst', 'attached'),
                                 (vm, 'dst', 'attaching')))
        self.assertFalse(standby((vm, 'src', 'attaching'),
                                 (vm, None, 'attaching')))
        self.assertFalse(standby((vm, 'src', 'attached'),
                                 (vm, None, 'attaching'), multiattach=True))
        # An object without its attachments loaded: no.
        self.assertFalse(att_mod.live_migration_destination(
            object(), 'dst', False))

    def test_the_second_attachment_is_read_from_cinders_database(self):
        """The volume manager hands the driver the volume as Cinder's API
        loaded it, before it made the live migration's second attachment:
        the object lists the source's only, Cinder's database both."""
        from cinder_ursa.volume import attachments as att_mod
        vm = str(uuid.uuid4())
        v = self.volume()
        self._cinder_attachments(v, (vm, 'src', 'attached'))
        both = list(v.volume_attachment) + [objects.VolumeAttachment(
            context=self.ctx, id=str(uuid.uuid4()), volume_id=v.id,
            instance_uuid=vm, attached_host=None, attach_status='reserved')]
        self.assertFalse(att_mod.live_migration_destination(v, 'dst', False))
        self.mock_object(objects.VolumeAttachmentList,
                         'get_all_by_volume_id', return_value=both)
        self.assertTrue(att_mod.live_migration_destination(v, 'dst', False))

    def test_a_conflict_says_what_it_is(self):
        """Not Cinder's "deleting volume ... that has snapshot"."""
        self.master.agents |= {'compute-1', 'compute-2'}
        v = self.volume()
        self.drv.create_volume(v)
        self.drv.initialize_connection(v, {'host': 'compute-1'})
        exc = self.assertRaises(cinder_exc.VolumeIsBusy,
                                self.drv.initialize_connection, v,
                                {'host': 'compute-2'})
        self.assertIn('Conflict: attached to', str(exc))
        self.assertNotIn('snapshot', str(exc))

    def test_unanswered_attach_and_detach(self):
        self.override_config('ursa_attach_timeout', 1, group='ursa_unit')
        v = self.volume()
        self.drv.create_volume(v)
        exc = self.assertRaises(cinder_exc.VolumeBackendAPIException,
                                self.drv.initialize_connection, v,
                                {'host': 'silent'})
        self.assertIn('run ursa-attach there', str(exc))
        # Forced detach (no connector) fences the silent host.
        self.drv.terminate_connection(v, None)
        vol = self.master.vols[self.master.volume(v.name)['id']]
        self.assertTrue(vol['revoked'])
        self.assertEqual({}, vol['att'])
        self.assertRaises(cinder_exc.InvalidConnectorException,
                          self.drv.initialize_connection, v, {})


class ComplianceTestCase(test.TestCase):
    """Every method of the interfaces UrsaDriver claims is its own, or one
    of the listed BaseVD behaviours, with the interface's arguments."""

    def test_interfaces_are_implemented(self):
        missing, bad_args = [], []
        for iface in CLAIMED:
            for name, fn in inspect.getmembers(iface, inspect.isfunction):
                if name.startswith('_') or name in INHERITED:
                    continue
                mine = ursa_driver.UrsaDriver.__dict__.get(name)
                if mine is None:
                    missing.append('%s.%s' % (iface.__name__, name))
                    continue
                want = inspect.getfullargspec(fn).args
                have = inspect.getfullargspec(mine).args
                if len(want) != len(have):
                    bad_args.append((name, want, have))
        self.assertEqual([], missing)
        self.assertEqual([], bad_args)

    def test_inherited_ones_exist_in_basevd(self):
        for name in INHERITED:
            self.assertTrue(hasattr(base_driver.BaseVD, name), name)

    def test_the_check_is_not_blind(self):
        class Empty(base_driver.BaseVD):
            pass
        found = [name for iface in CLAIMED
                 for name, _ in inspect.getmembers(iface,
                                                   inspect.isfunction)
                 if not name.startswith('_') and name not in INHERITED
                 and name not in Empty.__dict__]
        self.assertIn('create_volume', found)
        self.assertIn('manage_existing_snapshot', found)
