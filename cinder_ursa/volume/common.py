"""What the driver's parts share: the one place Ursa errors become the
Cinder exceptions the volume manager expects (:func:`translated`), the Ursa
name of a Cinder snapshot, sizes in GiB."""

import contextlib

from cinder import exception as cinder_exc
from cinder.i18n import _
from oslo_utils import units

from cinder_ursa import exception


def gib(nbytes):
    return nbytes / float(units.Gi)


def snap_ref(snapshot):
    return '%s@%s' % (snapshot.volume_name, snapshot.name)


@contextlib.contextmanager
def translated(what, volume=None, snapshot=None):
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



class DriverPart:
    """A part of :class:`~cinder_ursa.volume.driver.UrsaDriver`: its
    master client and configuration are the driver's, looked up at each
    call (``do_setup`` sets the client)."""

    def __init__(self, driver):
        self.driver = driver

    @property
    def _master(self):
        return self.driver._master

    @property
    def configuration(self):
        return self.driver.configuration
