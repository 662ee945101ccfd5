"""Cinder volume driver for Ursa.

Loaded by an unmodified cinder-volume with::

    [ursa]
    volume_driver = cinder_ursa.volume.driver.UrsaDriver
    volume_backend_name = ursa
    ursa_master_urls = http://ursa-master:9380
    ursa_cluster_key_file = /etc/ursa/cluster.key

Every Cinder volume is the Ursa volume of the same name (``volume-<id>``),
every Cinder snapshot the Ursa snapshot ``volume-<id>@snapshot-<id>``.
Volumes are thin; snapshots and clones are O(1) at the master (see the
Ursa storage model).  Metadata calls go to the master's REST API (blocking
urllib, fine under eventlet); data copies (images) run on the client
library's own loop thread.

Clones follow Ceph RBD's "clone v2" rule: a snapshot that clones still
read, when deleted, goes to Ursa's trash and is removed with its last
clone.  So a volume cloned from another (through a hidden snapshot that is
deleted at once) and a volume created from a snapshot never keep their
source from being deleted.  A clone deeper than ``ursa_max_clone_depth``
is flattened when it is created.
"""

import time

from cinder import exception as cinder_exc
from cinder import interface
from cinder.i18n import _
from cinder.volume import configuration
from cinder.volume import driver
from cinder.volume import volume_types
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

from cinder_ursa import exception
from cinder_ursa.backup import naming
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.common import auth
from cinder_ursa.protocol import names
from cinder_ursa.protocol.rest import QOS_KEYS
from cinder_ursa.transport import aio
from cinder_ursa.transport import http
from cinder_ursa.volume import attachments
from cinder_ursa.volume import images
from cinder_ursa.volume import manageable
from cinder_ursa.volume.common import Operation
from cinder_ursa.volume.common import gib
from cinder_ursa.volume.common import snap_ref
from cinder_ursa.volume.common import translated
from cinder_ursa.volume.opts import ursa_opts

LOG = logging.getLogger(__name__)

VERSION = '1.0.0'

CONF = cfg.CONF
CONF.register_opts(ursa_opts, group=configuration.SHARED_CONF_GROUP)


@interface.volumedriver
class UrsaDriver(driver.CloneableImageVD, driver.ManageableVD,
                 driver.ManageableSnapshotsVD, driver.BaseVD):
    """Thin volumes, snapshots and clones on an Ursa cluster."""

    VERSION = VERSION
    # The master keeps all state; any cinder-volume of the cluster can act
    # on any volume (names are unique at the master, clone and snapshot
    # calls are single master transactions).
    SUPPORTS_ACTIVE_ACTIVE = True
    CI_WIKI_NAME = 'cinder-ursa'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(ursa_opts)
        self._master = None
        self._key = None
        # The ssl.SSLContext of https:// masters (ursa_tls_*), or None.
        self._tls = None
        self._principal = None
        self._stats = {}
        self._images = images.ImageCopies(self)
        self._attachments = attachments.Attachments(self)
        self._manageable = manageable.Manageable(self)

    # --- setup ------------------------------------------------------------

    @classmethod
    def get_driver_options(cls):
        return ursa_opts

    def do_setup(self, context):
        conf = self.configuration
        try:
            # No cluster key but a principal: tickets for image copies.
            self._key = None if (
                not conf.ursa_cluster_key_file and conf.ursa_principal
                and conf.ursa_principal != auth.ADMIN) else auth.load_key(
                    conf.ursa_cluster_key_file)
        except (OSError, exception.UrsaError) as e:
            raise cinder_exc.VolumeDriverException(
                message=_('Cannot read the Ursa cluster key from %(f)s: '
                          '%(e)s') % {'f': conf.ursa_cluster_key_file,
                                      'e': e}) from e
        try:
            self._tls = http.client_tls(conf.ursa_tls_ca_file,
                                        conf.ursa_tls_cert_file,
                                        conf.ursa_tls_key_file)
            if conf.ursa_data_tls:
                aio.set_data_tls(http.data_tls(conf.ursa_tls_ca_file,
                                               conf.ursa_tls_cert_file,
                                               conf.ursa_tls_key_file))
        except exception.UrsaError as e:
            raise cinder_exc.VolumeDriverException(
                message=_('Cannot load the Ursa TLS files: %s') % e) from e
        try:
            self._principal = http.principal_from(
                conf.ursa_principal, conf.ursa_principal_key_file)
        except exception.UrsaError as e:
            raise cinder_exc.VolumeDriverException(
                message=_('Cannot use the Ursa principal %(p)s (options '
                          'ursa_principal, ursa_principal_key_file): '
                          '%(e)s') % {'p': conf.ursa_principal,
                                      'e': e}) from e
        self._master = self._make_master()

    def _make_master(self):
        return master_mod.MasterClient(
            self.configuration.ursa_master_urls, self._key,
            timeout=self.configuration.ursa_timeout, tls=self._tls,
            principal=self._principal)

    def check_for_setup_error(self):
        conf = self.configuration
        if conf.ursa_min_replicas > conf.ursa_replicas:
            raise cinder_exc.InvalidConfigurationValue(
                option='ursa_min_replicas', value=conf.ursa_min_replicas)
        # Ursa volumes and snapshots are named after Cinder's (volume-<id>
        # by default): a template making names the master refuses would
        # fail every create, so say so now.
        for opt in ('volume_name_template', 'snapshot_name_template'):
            template = getattr(CONF, opt, None)
            if not template:
                continue
            problem = names.name_problem(
                '[DEFAULT] %s gives the' % opt,
                template % '00000000-0000-0000-0000-000000000000')
            if problem:
                raise cinder_exc.InvalidConfigurationValue(
                    _('%s; change it, or use another backend') % problem)
        with translated('Checking the Ursa cluster'):
            status = self._master.cluster_status()
        LOG.info('Ursa cluster at %(urls)s: %(health)s, %(up)d chunk '
                 'server(s) up', {'urls': conf.ursa_master_urls,
                                  'health': status['health'],
                                  'up': status['servers']['up']})

    def _data(self):
        """A data-path client (its own loop thread) for image copies."""
        return sync.SyncCluster(self.configuration.ursa_master_urls,
                                self._key, tls=self._tls,
                                principal=self._principal)

    # --- stats ------------------------------------------------------------

    def get_volume_stats(self, refresh=False):
        if refresh or not self._stats:
            self._update_volume_stats()
        return self._stats

    def _update_volume_stats(self):
        conf = self.configuration
        name = conf.safe_get('volume_backend_name') or 'ursa'
        stats = {
            'volume_backend_name': name,
            'vendor_name': 'cinder-ursa',
            'driver_version': self.VERSION,
            'storage_protocol': 'ursa',
            'total_capacity_gb': 'unknown',
            'free_capacity_gb': 'unknown',
            'reserved_percentage': conf.safe_get('reserved_percentage') or 0,
            'max_over_subscription_ratio': conf.safe_get(
                'max_over_subscription_ratio') or 20.0,
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'multiattach': True,
            'QoS_support': True,
            'sparse_copy_volume': True,
            'consistencygroup_support': False,
            'online_extend_support': True,
        }
        try:
            # One read of the master's kept figures, whatever the number
            # of volumes (never a listing).
            st = self._master.cluster_status()
        except exception.UrsaError as e:
            LOG.warning('Ursa stats unavailable: %s', e)
            self._stats = stats
            return
        # Raw bytes hold every replica: a GiB of volume data costs
        # ursa_replicas GiB of disk.
        replicas = conf.ursa_replicas
        stats.update({
            'total_capacity_gb': round(gib(st['capacity_bytes'])
                                       / replicas, 2),
            'free_capacity_gb': round(gib(st['free_bytes']) / replicas, 2),
            'provisioned_capacity_gb': round(gib(st['provisioned_bytes']),
                                             2),
            # Raw bytes written, counted once.
            'allocated_capacity_gb': round(gib(st.get(
                'allocated_bytes_total', 0)) / replicas, 2),
            'total_volumes': st['volumes'],
            'location_info': 'ursa:%s' % ','.join(conf.ursa_master_urls),
            'health': st['health'],
        })
        self._stats = stats

    # --- volumes ----------------------------------------------------------

    def _create_args(self):
        conf = self.configuration
        args = {'replicas': conf.ursa_replicas,
                'min_replicas': conf.ursa_min_replicas,
                'chunk_size': conf.ursa_chunk_size_mib * units.Mi}
        if conf.ursa_stripe_unit_kib:
            args['stripe_unit'] = conf.ursa_stripe_unit_kib * units.Ki
            args['stripe_count'] = conf.ursa_stripe_count
        return args

    @staticmethod
    def _qos_of_type(type_id):
        """The QoS limits of a volume type's back-end (or both) spec."""
        if not type_id:
            return {}
        specs = volume_types.get_volume_type_qos_specs(type_id)['qos_specs']
        if not specs or specs.get('consumer') not in ('back-end', 'both'):
            return {}
        out = {}
        for k, v in (specs.get('specs') or {}).items():
            if k in QOS_KEYS:
                try:
                    out[k] = int(float(v))
                except ValueError:
                    LOG.warning('QoS spec %(k)s=%(v)s is not a number: '
                                'ignored', {'k': k, 'v': v})
        return out

    def _qos(self, volume):
        try:
            type_id = volume.volume_type_id
        except Exception:  # noqa: BLE001 - not set on this object
            type_id = None
        return self._qos_of_type(type_id)

    @staticmethod
    def _multiattach(volume):
        try:
            return bool(volume.multiattach)
        except Exception:  # noqa: BLE001 - not set on this object
            return False

    def _apply_qos(self, volume):
        qos = self._qos(volume)
        if qos:
            self._master.set_qos(volume.name, qos)

    # Each Cinder call is one :class:`Operation`: one log line with the
    # Cinder ids, the Ursa names and the time it took.

    @staticmethod
    def _op(verb, done, what, volume=None, snapshot=None, **args):
        """An :class:`Operation` of the driver's log; ``volume`` and
        ``snapshot`` give the %(volume_id)s, %(volume)s (its Ursa name),
        %(snapshot_id)s and %(snapshot)s (its Ursa name) of ``what``."""
        if volume is not None:
            args.update(volume_id=volume.id, volume=volume.name)
        if snapshot is not None:
            args.update(snapshot_id=snapshot.id, snapshot=snap_ref(snapshot))
        return Operation(LOG, verb, done, what, **args)

    def create_volume(self, volume):
        with self._op('create', 'Created', 'volume %(volume_id)s as Ursa '
                      'volume %(volume)s (%(size)s GiB)', volume,
                      size=volume.size), \
                translated('Creating volume %s' % volume.name):
            self._master.create_volume(volume.name, volume.size * units.Gi,
                                       qos=self._qos(volume) or None,
                                       multiattach=self._multiattach(volume),
                                       **self._create_args())

    def _delete_backup_bases(self, volume):
        """Delete the snapshot the Ursa backup driver keeps on a volume
        for its next incremental backup (backup/driver.py), as Cinder
        does not know it: the backups themselves live on."""
        for name in naming.base_snapshots(
                self._master.snapshots(volume.name)):
            try:
                self._master.delete_snapshot('%s@%s' % (volume.name, name))
            except exception.NotFound:
                pass

    def delete_volume(self, volume):
        with self._op('delete', 'Deleted', 'volume %(volume_id)s (Ursa '
                      '%(volume)s)', volume) as op:
            try:
                with translated('Deleting volume %s' % volume.name,
                                volume=volume):
                    self._delete_backup_bases(volume)
                    self._master.delete_volume(volume.name)
            except cinder_exc.VolumeNotFound:
                op.note = 'the Ursa volume was already gone'

    def extend_volume(self, volume, new_size):
        with self._op('extend', 'Extended', 'volume %(volume_id)s (Ursa '
                      '%(volume)s) to %(size)s GiB', volume, size=new_size), \
                translated('Extending volume %s' % volume.name,
                           volume=volume):
            self._master.grow(volume.name, new_size * units.Gi)

    def create_snapshot(self, snapshot):
        with self._op('create', 'Created', 'snapshot %(snapshot_id)s of '
                      'volume %(volume_id)s as Ursa snapshot %(snapshot)s',
                      snapshot=snapshot, volume_id=snapshot.volume_id), \
                translated('Snapshot %s' % snapshot.name,
                           volume=snapshot.volume):
            self._master.create_snapshot(snapshot.volume_name, snapshot.name)

    def delete_snapshot(self, snapshot):
        with self._op('delete', 'Deleted', 'snapshot %(snapshot_id)s (Ursa '
                      '%(snapshot)s)', snapshot=snapshot) as op:
            try:
                with translated('Deleting snapshot %s' % snapshot.name,
                                snapshot=snapshot):
                    self._master.delete_snapshot(snap_ref(snapshot))
            except cinder_exc.SnapshotNotFound:
                op.note = 'the Ursa snapshot was already gone'

    def retype(self, context, volume, new_type, diff, host):
        """Same backend: the QoS limits change in place (open clients
        adopt them within a lease renewal), and so does multiattach (while
        the volume is detached, as Cinder requires)."""
        with self._op('retype', 'Retyped', 'volume %(volume_id)s (Ursa '
                      '%(volume)s) to type %(type)s', volume,
                      type=(new_type or {}).get('name')) as op:
            qos = self._qos_of_type(new_type['id'] if new_type else None)
            specs = (new_type or {}).get('extra_specs') or {}
            multi = specs.get('multiattach', '').replace(' ', '').lower() \
                == '<is>true'
            with translated('Retyping %s' % volume.name, volume=volume):
                self._master.update_volume(volume.name, qos=qos,
                                           multiattach=multi)
            op.note = 'QoS limits %s, multiattach %s' % (qos or 'none',
                                                         multi)
        return True, None

    def revert_to_snapshot(self, context, volume, snapshot):
        with self._op('revert', 'Reverted', 'volume %(volume_id)s (Ursa '
                      '%(volume)s) to snapshot %(snapshot_id)s (Ursa '
                      '%(snapshot)s)', volume, snapshot), \
                translated('Reverting %s to %s' % (volume.name,
                                                   snapshot.name),
                           volume=volume):
            self._master.revert(volume.name, snapshot.name)

    def _depth(self, name):
        """Length of the parent chain of an Ursa volume."""
        depth = 0
        vol = self._master.volume(name)
        while vol.get('parent'):
            depth += 1
            vol = self._master.volume(vol['parent']['volume_id'])
        return depth

    def _clone(self, snap_ref, source_name, volume):
        """Clone ``snap_ref`` into ``volume``; flatten when policy or the
        clone-depth limit says so."""
        conf = self.configuration
        self._master.clone(snap_ref, volume.name, volume.size * units.Gi,
                           qos=self._qos(volume) or None,
                           multiattach=self._multiattach(volume))
        depth = self._depth(source_name) + 1
        if conf.ursa_flatten_volume_from_snapshot or \
                depth > conf.ursa_max_clone_depth:
            LOG.info('Flattening %(name)s (clone depth %(d)d, limit %(max)d)',
                     {'name': volume.name, 'd': depth,
                      'max': conf.ursa_max_clone_depth})
            self._flatten(volume.name)

    def _flatten(self, name):
        rate = self.configuration.ursa_flatten_rate_mib * units.Mi or None
        last = [0.0]

        def progress(done, total):
            now = time.monotonic()
            if now - last[0] >= 10 or done == total:
                last[0] = now
                LOG.info('Flattening %(name)s: %(pct)d%%',
                         {'name': name,
                          'pct': 100 * done // max(total, 1)})
        with self._data() as cluster:
            cluster.flatten(name, progress=progress, rate=rate)

    def create_volume_from_snapshot(self, volume, snapshot):
        with self._op('create', 'Created', 'volume %(volume_id)s as Ursa '
                      'volume %(volume)s (%(size)s GiB) from snapshot '
                      '%(snapshot_id)s (Ursa %(snapshot)s)', volume,
                      snapshot, size=volume.size), \
                translated('Creating %s from snapshot %s' % (volume.name,
                                                              snapshot.name),
                           snapshot=snapshot):
            self._clone(snap_ref(snapshot), snapshot.volume_name, volume)

    def create_cloned_volume(self, volume, src_vref):
        # A hidden snapshot of the source, cloned, then deleted: it waits in
        # the trash while the clone reads it and never blocks deleting the
        # source.
        snap = 'clone-%s' % volume.id
        ref = '%s@%s' % (src_vref.name, snap)
        with self._op('clone', 'Cloned', 'volume %(source_id)s (Ursa '
                      '%(source)s) as volume %(volume_id)s (Ursa %(volume)s, '
                      '%(size)s GiB)', volume, size=volume.size,
                      source_id=src_vref.id, source=src_vref.name), \
                translated('Cloning %s into %s' % (src_vref.name,
                                                   volume.name),
                           volume=src_vref):
            self._master.create_snapshot(src_vref.name, snap)
            try:
                self._clone(ref, src_vref.name, volume)
            finally:
                self._master.delete_snapshot(ref)

    # --- export (ursa-attach exposes volumes: nothing to export) --------

    def create_export(self, context, volume, connector):
        pass

    def ensure_export(self, context, volume):
        pass

    def remove_export(self, context, volume):
        pass


    # --- attach (:mod:`.attachments`) -----------------------------------

    def initialize_connection(self, volume, connector, initiator_data=None):
        with self._op('attach', 'Attached', 'volume %(volume_id)s (Ursa '
                      '%(volume)s) to host %(host)s', volume,
                      host=(connector or {}).get('host')) as op:
            conn = self._attachments.attach(volume, connector,
                                            self._multiattach(volume))
            op.note = 'at %s' % conn['data']['device_path']
        return conn

    def terminate_connection(self, volume, connector, **kwargs):
        host = (connector or {}).get('host')
        with self._op('detach', 'Detached', 'volume %(volume_id)s (Ursa '
                      '%(volume)s) from %(host)s', volume,
                      host='host %s' % host if host else 'every host') as op:
            hosts = self._attachments.detach_all(volume, connector)
            if not host:
                op.note = 'it was attached to %s' % (
                    ', '.join(hosts) or 'none')

    # --- images (:mod:`.images`) -----------------------------------------

    def copy_image_to_volume(self, context, volume, image_service, image_id,
                             disable_sparse=False):
        with self._op('copy', 'Copied', 'image %(image)s into volume '
                      '%(volume_id)s (Ursa %(volume)s, %(size)s GiB)',
                      volume, image=image_id, size=volume.size):
            self._images.copy_to_volume(context, volume, image_service,
                                        image_id)

    def copy_volume_to_image(self, context, volume, image_service,
                             image_meta):
        with self._op('copy', 'Copied', 'volume %(volume_id)s (Ursa '
                      '%(volume)s, %(size)s GiB) to image %(image)s', volume,
                      image=image_meta.get('id'), size=volume.size):
            self._images.copy_to_image(context, volume, image_service,
                                       image_meta)

    def clone_image(self, context, volume, image_location, image_meta,
                    image_service):
        if not self.configuration.ursa_image_cache:
            return None, False  # nothing done on the cluster: no line
        with self._op('clone', 'Cloned', 'image %(image)s into volume '
                      '%(volume_id)s (Ursa %(volume)s, %(size)s GiB)',
                      volume, image=image_meta.get('id'),
                      size=volume.size) as op:
            result = self._images.clone(context, volume, image_location,
                                        image_meta, image_service)
            if not result[1]:
                op.done = 'Did not clone'
                op.note = 'Cinder copies the image instead'
        return result

    # --- manage / unmanage (:mod:`.manageable`) -------------------------

    def manage_existing(self, volume, existing_ref):
        with self._op('manage', 'Managed', 'Ursa volume %(ref)s as volume '
                      '%(volume_id)s (Ursa name %(volume)s)', volume,
                      ref=manageable.ref_name(existing_ref)):
            self._manageable.manage(volume, existing_ref)

    def manage_existing_get_size(self, volume, existing_ref):
        with self._op('size', 'Sized', 'Ursa volume %(ref)s for volume '
                      '%(volume_id)s', volume,
                      ref=manageable.ref_name(existing_ref)) as op:
            size = self._manageable.size(volume, existing_ref)
            op.note = '%d GiB' % size
        return size

    def unmanage(self, volume):
        with self._op('unmanage', 'Unmanaged', 'volume %(volume_id)s (Ursa '
                      '%(volume)s)', volume) as op:
            op.note = 'the Ursa volume keeps its name and data'

    def manage_existing_snapshot(self, snapshot, existing_ref):
        with self._op('manage', 'Managed', 'Ursa snapshot %(ref)s as '
                      'snapshot %(snapshot_id)s (Ursa name %(snapshot)s)',
                      snapshot=snapshot, ref='%s@%s' % (
                          snapshot.volume_name,
                          manageable.ref_name(existing_ref))):
            self._manageable.manage_snapshot(snapshot, existing_ref)

    def manage_existing_snapshot_get_size(self, snapshot, existing_ref):
        with self._op('size', 'Sized', 'Ursa snapshot %(ref)s for snapshot '
                      '%(snapshot_id)s', snapshot=snapshot, ref='%s@%s' % (
                          snapshot.volume_name,
                          manageable.ref_name(existing_ref))) as op:
            size = self._manageable.snapshot_size(snapshot, existing_ref)
            op.note = '%d GiB' % size
        return size

    def unmanage_snapshot(self, snapshot):
        with self._op('unmanage', 'Unmanaged', 'snapshot %(snapshot_id)s '
                      '(Ursa %(snapshot)s)', snapshot=snapshot) as op:
            op.note = 'the Ursa snapshot keeps its name and data'

    def get_manageable_volumes(self, cinder_volumes, marker, limit, offset,
                               sort_keys, sort_dirs):
        return self._manageable.volumes(cinder_volumes, marker, limit,
                                        offset, sort_keys, sort_dirs)

    def get_manageable_snapshots(self, cinder_snapshots, marker, limit,
                                 offset, sort_keys, sort_dirs):
        return self._manageable.snapshots(cinder_snapshots, marker, limit,
                                          offset, sort_keys, sort_dirs)
