"""What the driver's parts share: the one place Ursa errors become the
Cinder exceptions the volume manager expects (:func:`translated`), the one
log line of each operation (:class:`Operation`), the Ursa name of a Cinder
snapshot, sizes in GiB."""

import contextlib
import logging
import time

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
        # Cinder's own messages would say "deleting ... that has
        # snapshot(s)" whatever the conflict: Ursa's says what it is.
        message = _('%(what)s: %(err)s') % {'what': what, 'err': e}
        if snapshot is not None:
            raise cinder_exc.SnapshotIsBusy(
                message=message, snapshot_name=snapshot.name) from e
        if volume is not None:
            raise cinder_exc.VolumeIsBusy(message=message,
                                          volume_name=volume.name) from e
        raise cinder_exc.VolumeBackendAPIException(
            data=_('%(what)s: %(err)s') % {'what': what, 'err': e}) from e
    except exception.MarkerNotFound as e:
        # A listing's marker names nothing (Cinder's paginated listings
        # answer 400 for it).
        raise cinder_exc.InvalidInput(
            reason=_('%(what)s: %(err)s') % {'what': what, 'err': e}) from e
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


# Failures where Cinder or its caller asked for what cannot be done (a busy
# volume, a bad manage reference or connector, an image too large or in an
# unusable format): the cluster is fine, a WARNING.  (Not all of Cinder's
# Invalid: ImageCopyFailure is one.)
REFUSED = (cinder_exc.VolumeIsBusy, cinder_exc.SnapshotIsBusy,
           cinder_exc.ManageExistingInvalidReference,
           cinder_exc.InvalidConnectorException,
           cinder_exc.ImageUnacceptable)


class Operation:
    """Times one driver operation and logs it once, with the Cinder ids
    and the Ursa names it acts on, so that an operator can follow each
    request of cinder-volume.log to the cluster: at INFO when it is done,
    at ERROR (WARNING when it was refused, see :data:`REFUSED`) when it
    fails, with the time until the failure.  The exception goes on as it
    was.

    ``verb`` and ``done`` ('create', 'Created') and ``what``, a template
    over ``args`` ('volume %(volume_id)s as Ursa volume %(volume)s'), make
    "Created volume 3f2... as Ursa volume volume-3f2... in 0.12 s" and
    "Failed to create volume 3f2... as Ursa volume volume-3f2... after
    0.05 s: VolumeIsBusy: ...".  In the block, ``note`` may add what came
    of it ("it was already gone") and ``done`` may change.
    """

    def __init__(self, log, verb, done, what, **args):
        self.log, self.verb, self.done, self.what = log, verb, done, what
        self.args = args
        self.note = None
        self.started = None

    def __enter__(self):
        self.started = time.monotonic()
        return self

    def __exit__(self, etype, exc, tb):
        args = dict(self.args, seconds=time.monotonic() - self.started)
        if exc is None:
            msg = self.done + ' ' + self.what + ' in %(seconds).2f s'
            if self.note:
                msg += '; %(note)s'
                args['note'] = self.note
            self.log.info(msg, args)
            return False
        args['error'] = '%s: %s' % (type(exc).__name__, exc)
        msg = ('Failed to ' + self.verb + ' ' + self.what +
               ' after %(seconds).2f s: %(error)s')
        if isinstance(exc, cinder_exc.CinderException):
            self.log.log(logging.WARNING if isinstance(exc, REFUSED)
                         else logging.ERROR, msg, args)
        elif isinstance(exc, Exception):
            # Unforeseen: a bug of ours, or a library's.  Its traceback.
            self.log.error(msg, args, exc_info=(etype, exc, tb))
        else:  # the thread was killed (GreenletExit, KeyboardInterrupt)
            self.log.warning(msg, args)
        return False


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
