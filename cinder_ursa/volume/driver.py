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

import contextlib
import math
import os
import tempfile
import time

from cinder import coordination
from cinder import exception as cinder_exc
from cinder import interface
from cinder.i18n import _
from cinder.image import image_utils
from cinder.volume import configuration
from cinder.volume import driver
from cinder.volume import volume_types
from cinder.volume import volume_utils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.client import transfer
from cinder_ursa.common import auth
from cinder_ursa.protocol.rest import QOS_KEYS
from cinder_ursa.volume.opts import ursa_opts

LOG = logging.getLogger(__name__)

VERSION = '1.0.0'
IMAGE_CACHE_PREFIX = 'image-'
IMAGE_CACHE_SNAPSHOT = 'base'

CONF = cfg.CONF
CONF.register_opts(ursa_opts, group=configuration.SHARED_CONF_GROUP)


def _gib(nbytes):
    return nbytes / float(units.Gi)


def _snap_ref(snapshot):
    return '%s@%s' % (snapshot.volume_name, snapshot.name)


@contextlib.contextmanager
def _translated(what, volume=None, snapshot=None):
    """Turn Ursa errors into the Cinder exceptions the manager expects,
    with a message an operator can act on."""
    try:
        yield
    except exception.NotFound as e:
        if snapshot is not None:
            raise cinder_exc.SnapshotNotFound(snapshot_id=snapshot.id) from e
        if volume is not None:
            raise cinder_exc.VolumeNotFound(volume_id=volume.id) from e
        raise cinder_exc.VolumeBackendAPIException(
            data=_('%(what)s: %(err)s') % {'what': what, 'err': e}) from e
    except (exception.Conflict, exception.LeaseHeld) as e:
        if snapshot is not None:
            raise cinder_exc.SnapshotIsBusy(
                snapshot_name=snapshot.name) from e
        if volume is not None:
            raise cinder_exc.VolumeIsBusy(volume_name=volume.name) from e
        raise cinder_exc.VolumeBackendAPIException(
            data=_('%(what)s: %(err)s') % {'what': what, 'err': e}) from e
    except exception.UrsaConnectionError as e:
        raise cinder_exc.VolumeBackendAPIException(
            data=_('%(what)s: cannot reach the Ursa master (%(err)s); check '
                   'ursa_master_urls and that ursa-master runs') %
            {'what': what, 'err': e}) from e
    except exception.NotAuthorized as e:
        raise cinder_exc.VolumeBackendAPIException(
            data=_('%(what)s: the Ursa master refused the cluster key '
                   '(%(err)s); check ursa_cluster_key_file') %
            {'what': what, 'err': e}) from e
    except exception.UrsaError as e:
        raise cinder_exc.VolumeBackendAPIException(
            data=_('%(what)s: %(err)s') % {'what': what, 'err': e}) from e


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
        self._stats = {}

    # --- setup ----------------------------------------------------------

    @classmethod
    def get_driver_options(cls):
        return ursa_opts

    def do_setup(self, context):
        conf = self.configuration
        try:
            self._key = auth.load_key(conf.ursa_cluster_key_file)
        except (OSError, exception.UrsaError) as e:
            raise cinder_exc.VolumeDriverException(
                message=_('Cannot read the Ursa cluster key from %(f)s: '
                          '%(e)s') % {'f': conf.ursa_cluster_key_file,
                                      'e': e}) from e
        self._master = self._make_master()

    def _make_master(self):
        return master_mod.MasterClient(
            self.configuration.ursa_master_urls, self._key,
            timeout=self.configuration.ursa_timeout)

    def check_for_setup_error(self):
        conf = self.configuration
        if conf.ursa_min_replicas > conf.ursa_replicas:
            raise cinder_exc.InvalidConfigurationValue(
                option='ursa_min_replicas', value=conf.ursa_min_replicas)
        with _translated('Checking the Ursa cluster'):
            status = self._master.cluster_status()
        LOG.info('Ursa cluster at %(urls)s: %(health)s, %(up)d chunk '
                 'server(s) up', {'urls': conf.ursa_master_urls,
                                  'health': status['health'],
                                  'up': status['servers']['up']})

    def _data(self):
        """A data-path client (its own loop thread) for image copies."""
        return sync.SyncCluster(self.configuration.ursa_master_urls,
                                self._key)

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
            st = self._master.cluster_status()
            vols = self._master.volumes()
        except exception.UrsaError as e:
            LOG.warning('Ursa stats unavailable: %s', e)
            self._stats = stats
            return
        # Raw bytes hold every replica: a GiB of volume data costs
        # ursa_replicas GiB of disk.
        replicas = conf.ursa_replicas
        stats.update({
            'total_capacity_gb': round(_gib(st['capacity_bytes'])
                                       / replicas, 2),
            'free_capacity_gb': round(_gib(st['free_bytes']) / replicas, 2),
            'provisioned_capacity_gb': round(_gib(st['provisioned_bytes']),
                                             2),
            'allocated_capacity_gb': round(_gib(sum(
                v.get('allocated_bytes', 0) for v in vols)), 2),
            'total_volumes': len(vols),
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

    def create_volume(self, volume):
        with _translated('Creating volume %s' % volume.name):
            self._master.create_volume(volume.name, volume.size * units.Gi,
                                       qos=self._qos(volume) or None,
                                       multiattach=self._multiattach(volume),
                                       **self._create_args())
        LOG.info('Created Ursa volume %(name)s (%(size)d GiB)',
                 {'name': volume.name, 'size': volume.size})

    def delete_volume(self, volume):
        try:
            with _translated('Deleting volume %s' % volume.name,
                             volume=volume):
                self._master.delete_volume(volume.name)
        except cinder_exc.VolumeNotFound:
            LOG.info('Ursa volume %s is already gone', volume.name)

    def extend_volume(self, volume, new_size):
        with _translated('Extending volume %s' % volume.name, volume=volume):
            self._master.grow(volume.name, new_size * units.Gi)
        LOG.info('Extended Ursa volume %(name)s to %(size)d GiB',
                 {'name': volume.name, 'size': new_size})

    def create_snapshot(self, snapshot):
        with _translated('Snapshot %s' % snapshot.name,
                         volume=snapshot.volume):
            self._master.create_snapshot(snapshot.volume_name, snapshot.name)

    def delete_snapshot(self, snapshot):
        try:
            with _translated('Deleting snapshot %s' % snapshot.name,
                             snapshot=snapshot):
                self._master.delete_snapshot(_snap_ref(snapshot))
        except cinder_exc.SnapshotNotFound:
            LOG.info('Ursa snapshot %s is already gone', _snap_ref(snapshot))

    def retype(self, context, volume, new_type, diff, host):
        """Same backend: the QoS limits change in place (open clients
        adopt them within a lease renewal), and so does multiattach (while
        the volume is detached, as Cinder requires)."""
        qos = self._qos_of_type(new_type['id'] if new_type else None)
        specs = (new_type or {}).get('extra_specs') or {}
        multi = specs.get('multiattach', '').replace(' ', '').lower() == \
            '<is>true'
        with _translated('Retyping %s' % volume.name, volume=volume):
            self._master.update_volume(volume.name, qos=qos,
                                       multiattach=multi)
        LOG.info('Volume %(vol)s retyped: QoS limits %(qos)s',
                 {'vol': volume.name, 'qos': qos or 'none'})
        return True, None

    def revert_to_snapshot(self, context, volume, snapshot):
        with _translated('Reverting %s to %s' % (volume.name, snapshot.name),
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
        with _translated('Creating %s from snapshot %s' % (volume.name,
                                                            snapshot.name),
                         snapshot=snapshot):
            self._clone(_snap_ref(snapshot), snapshot.volume_name, volume)

    def create_cloned_volume(self, volume, src_vref):
        # A hidden snapshot of the source, cloned, then deleted: it waits in
        # the trash while the clone reads it and never blocks deleting the
        # source.
        snap = 'clone-%s' % volume.id
        ref = '%s@%s' % (src_vref.name, snap)
        with _translated('Cloning %s into %s' % (src_vref.name, volume.name),
                         volume=src_vref):
            self._master.create_snapshot(src_vref.name, snap)
            try:
                self._clone(ref, src_vref.name, volume)
            finally:
                self._master.delete_snapshot(ref)

    # --- export and attach --------------------------------------------------
    #
    # initialize_connection asks the master to attach the volume to the
    # connector's host; ursa-attach on that host opens it (taking its
    # lease) and serves it as a file, the device_path of a 'local'
    # connection that unmodified os-brick and Nova/Cinder use as is.  The
    # connection info also carries the NBD details for hypervisors whose
    # QEMU reaches ursa-nbd directly.

    def create_export(self, context, volume, connector):
        pass

    def ensure_export(self, context, volume):
        pass

    def remove_export(self, context, volume):
        pass

    def initialize_connection(self, volume, connector, initiator_data=None):
        host = (connector or {}).get('host')
        if not host:
            raise cinder_exc.InvalidConnectorException(
                missing='host')
        conf = self.configuration
        with _translated('Attaching %s to %s' % (volume.name, host),
                         volume=volume):
            att = self._master.attach(volume.name, host)
            deadline = time.monotonic() + conf.ursa_attach_timeout
            while att['status'] == 'attaching':
                if time.monotonic() > deadline:
                    self._master.update_attachment(volume.name, host,
                                                   'detaching')
                    raise cinder_exc.VolumeBackendAPIException(
                        data=_('No ursa-attach exposed volume %(vol)s on '
                               'host %(host)s within %(t)d s: run '
                               'ursa-attach there with [ursa_attach] host = '
                               '%(host)s') % {'vol': volume.name,
                                              'host': host,
                                              't': conf.ursa_attach_timeout})
                time.sleep(0.2)
                att = self._master.attachment(volume.name, host)
        if att['status'] != 'attached':
            raise cinder_exc.VolumeBackendAPIException(
                data=_('ursa-attach on %(host)s could not expose %(vol)s: '
                       '%(err)s') % {'host': host, 'vol': volume.name,
                                     'err': att.get('error')})
        LOG.info('Volume %(vol)s attached to %(host)s at %(path)s',
                 {'vol': volume.name, 'host': host, 'path': att['path']})
        return {'driver_volume_type': 'local',
                'data': {'device_path': att['path'],
                         'ursa_volume': volume.name,
                         'ursa_volume_id': att['volume_id'],
                         'nbd_host': conf.ursa_nbd_host,
                         'nbd_port': conf.ursa_nbd_port,
                         'nbd_export': volume.name}}

    def terminate_connection(self, volume, connector, **kwargs):
        with _translated('Detaching %s' % volume.name, volume=volume):
            if connector and connector.get('host'):
                hosts = [connector['host']]
            else:  # force detach: from everywhere
                hosts = [a['host'] for a in
                         self._master.attachments(volume.name)]
            for host in hosts:
                self._detach(volume, host)

    def _detach(self, volume, host):
        try:
            self._master.update_attachment(volume.name, host, 'detaching')
        except exception.NotFound:
            return
        deadline = time.monotonic() + self.configuration.ursa_attach_timeout
        while time.monotonic() < deadline:
            try:
                self._master.attachment(volume.name, host)
            except exception.NotFound:
                LOG.info('Volume %(vol)s detached from %(host)s',
                         {'vol': volume.name, 'host': host})
                return
            time.sleep(0.2)
        # The host did not let go: fence it, so it can never write again.
        self._master.revoke_lease(volume.name)
        self._master.detach(volume.name, host)
        LOG.warning('Host %(host)s did not release volume %(vol)s within '
                    '%(t)d s: its lease was revoked (fenced)',
                    {'host': host, 'vol': volume.name,
                     't': self.configuration.ursa_attach_timeout})

    # --- images -----------------------------------------------------------

    def copy_image_to_volume(self, context, volume, image_service, image_id,
                             disable_sparse=False):
        with self._fetched(context, image_service, image_id,
                           volume.size) as path:
            self._import(path, volume.name)

    @contextlib.contextmanager
    def _fetched(self, context, image_service, image_id, size_gb):
        """The image as a raw file (qemu-img converts qcow2 and others)."""
        conv = CONF.image_conversion_dir or None
        if conv:
            os.makedirs(conv, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix='ursa-image-', dir=conv)
        os.close(fd)
        try:
            image_utils.fetch_to_raw(
                context, image_service, image_id, path,
                self.configuration.volume_dd_blocksize, size=size_gb,
                run_as_root=False)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _import(self, path, name):
        size = os.path.getsize(path)
        started = time.monotonic()
        progress = _Progress('Writing image into %s' % name, size)
        with _translated('Writing image into %s' % name):
            with self._data() as cluster, \
                    cluster.open_volume(name) as vol, open(path, 'rb') as f:
                if size > vol.size:
                    raise cinder_exc.ImageUnacceptable(
                        image_id=os.path.basename(path),
                        reason=_('the image (%(img)d bytes) is larger than '
                                 'volume %(name)s (%(vol)d bytes)') % {
                            'img': size, 'name': name, 'vol': vol.size})
                cluster.call(transfer.import_file, vol.volume, f.fileno(),
                             size, progress)
        LOG.info('Wrote %(size)d bytes of image data into %(name)s in '
                 '%(t).1f s (zero blocks skipped)',
                 {'size': size, 'name': name,
                  't': time.monotonic() - started})

    def copy_volume_to_image(self, context, volume, image_service,
                             image_meta):
        conv = CONF.image_conversion_dir or None
        fd, path = tempfile.mkstemp(prefix='ursa-upload-', dir=conv)
        try:
            progress = _Progress('Reading %s for image %s'
                                 % (volume.name, image_meta['id']),
                                 volume.size * units.Gi)
            with _translated('Reading %s' % volume.name, volume=volume):
                with self._data() as cluster, cluster.open_volume(
                        volume.name, writable=False) as vol:
                    cluster.call(transfer.export_file, vol.volume, fd,
                                 progress)
            os.close(fd)
            fd = None
            volume_utils.upload_volume(context, image_service, image_meta,
                                       path, volume, run_as_root=False)
        finally:
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def clone_image(self, context, volume, image_location, image_meta,
                    image_service):
        """O(1) clone of the image's cached Ursa volume (made the first
        time an image is used); (None, False) lets Cinder copy instead."""
        if not self.configuration.ursa_image_cache:
            return None, False
        image_id = image_meta['id']
        try:
            base = self._cached_image(context, image_service, image_id,
                                      volume.size)
        except (exception.UrsaError, cinder_exc.CinderException,
                OSError) as e:
            LOG.warning('Ursa image cache: image %(id)s not cached (%(e)s); '
                        'copying it instead', {'id': image_id, 'e': e})
            return None, False
        if base['size'] > volume.size * units.Gi:
            return None, False
        with _translated('Cloning image %s into %s' % (image_id,
                                                        volume.name)):
            self._master.clone('%s@%s' % (base['name'], IMAGE_CACHE_SNAPSHOT),
                               volume.name, volume.size * units.Gi,
                               qos=self._qos(volume) or None,
                               multiattach=self._multiattach(volume))
        LOG.info('Volume %(vol)s is an O(1) clone of cached image %(img)s',
                 {'vol': volume.name, 'img': image_id})
        return {'provider_location': None}, True

    @coordination.synchronized('ursa-image-{image_id}')
    def _cached_image(self, context, image_service, image_id, size_gb):
        name = IMAGE_CACHE_PREFIX + image_id
        try:
            self._master.snapshot('%s@%s' % (name, IMAGE_CACHE_SNAPSHOT))
            return self._master.volume(name)
        except exception.NotFound:
            pass
        with contextlib.suppress(exception.NotFound):
            self._master.delete_volume(name)  # a half-made earlier try
        with self._fetched(context, image_service, image_id,
                           size_gb) as path:
            size = os.path.getsize(path)
            size = -(-size // 4096) * 4096
            self._master.create_volume(name, size, **self._create_args())
            self._import(path, name)
        self._master.create_snapshot(name, IMAGE_CACHE_SNAPSHOT)
        LOG.info('Cached image %(id)s as Ursa volume %(name)s',
                 {'id': image_id, 'name': name})
        return self._master.volume(name)

    # --- manage / unmanage -----------------------------------------------

    def _existing(self, existing_ref):
        name = existing_ref.get('source-name') or existing_ref.get(
            'source-id')
        if not name:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('give source-name (or source-id): an Ursa volume '
                         'name or id'))
        try:
            return self._master.volume(name)
        except exception.NotFound:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('no Ursa volume %s') % name) from None

    def manage_existing(self, volume, existing_ref):
        vol = self._existing(existing_ref)
        if (vol.get('lease') or {}).get('holder'):
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('Ursa volume %(name)s is open for writing by '
                         '%(holder)s') % {'name': vol['name'],
                                          'holder': vol['lease']['holder']})
        with _translated('Managing %s' % vol['name']):
            self._master.rename_volume(vol['id'], volume.name)
            self._apply_qos(volume)
        LOG.info('Ursa volume %(old)s is now Cinder volume %(new)s',
                 {'old': vol['name'], 'new': volume.name})

    def manage_existing_get_size(self, volume, existing_ref):
        return int(math.ceil(_gib(self._existing(existing_ref)['size'])))

    def unmanage(self, volume):
        LOG.info('Ursa volume %s is no longer managed by Cinder; it keeps '
                 'its name and data', volume.name)

    def _existing_snapshot(self, snapshot, existing_ref):
        name = existing_ref.get('source-name') or existing_ref.get(
            'source-id')
        if not name:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('give source-name: the Ursa snapshot name on the '
                         'volume'))
        try:
            return self._master.snapshot('%s@%s' % (snapshot.volume_name,
                                                    name))
        except exception.NotFound:
            raise cinder_exc.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('volume %(vol)s has no Ursa snapshot %(name)s') % {
                    'vol': snapshot.volume_name, 'name': name}) from None

    def manage_existing_snapshot(self, snapshot, existing_ref):
        snap = self._existing_snapshot(snapshot, existing_ref)
        with _translated('Managing snapshot %s' % snap['name']):
            self._master.rename_snapshot(snap['id'], snapshot.name)

    def manage_existing_snapshot_get_size(self, snapshot, existing_ref):
        snap = self._existing_snapshot(snapshot, existing_ref)
        return int(math.ceil(_gib(snap['size'])))

    def unmanage_snapshot(self, snapshot):
        LOG.info('Ursa snapshot %s is no longer managed by Cinder',
                 _snap_ref(snapshot))

    def get_manageable_volumes(self, cinder_volumes, marker, limit, offset,
                               sort_keys, sort_dirs):
        managed = {v.name: v.id for v in cinder_volumes}
        entries = []
        with _translated('Listing Ursa volumes'):
            vols = self._master.volumes()
        for v in vols:
            reason = None
            if v['name'] in managed:
                reason = _('already managed')
            elif v['name'].startswith(IMAGE_CACHE_PREFIX):
                reason = _('Ursa image cache of this backend')
            elif (v.get('lease') or {}).get('holder'):
                reason = _('open for writing by %s') % v['lease']['holder']
            entries.append({
                'reference': {'source-name': v['name']},
                'size': int(math.ceil(_gib(v['size']))),
                'safe_to_manage': reason is None,
                'reason_not_safe': reason,
                'cinder_id': managed.get(v['name']),
                'extra_info': 'allocated %d bytes' % v.get(
                    'allocated_bytes', 0)})
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)

    def get_manageable_snapshots(self, cinder_snapshots, marker, limit,
                                 offset, sort_keys, sort_dirs):
        managed = {(s.volume_name, s.name): s.id for s in cinder_snapshots}
        entries = []
        with _translated('Listing Ursa snapshots'):
            snaps = self._master.snapshots()
        for s in snaps:
            key = (s['volume_name'], s['name'])
            reason = None
            if key in managed:
                reason = _('already managed')
            elif s['name'].startswith('clone-') or \
                    s['volume_name'].startswith(IMAGE_CACHE_PREFIX):
                reason = _('used by this driver')
            entries.append({
                'reference': {'source-name': s['name']},
                'size': int(math.ceil(_gib(s['size']))),
                'safe_to_manage': reason is None,
                'reason_not_safe': reason,
                'cinder_id': managed.get(key),
                'extra_info': None,
                'source_reference': {'source-name': s['volume_name']}})
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)


class _Progress:
    """Bytes-done callback that logs a line every 10 s (and at the end)."""

    def __init__(self, what, total):
        self.what, self.total, self.done = what, total, 0
        self.last = time.monotonic()

    def __call__(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.last >= 10 or self.done >= self.total:
            self.last = now
            LOG.info('%(what)s: %(pct)d%%', {
                'what': self.what,
                'pct': 100 * self.done // max(self.total, 1)})
