"""Attach and detach through the master: the master records the volume's
attachment to the connector's host, ursa-attach on that host opens it
(taking its lease) and serves it as a file, the ``device_path`` of a
``local`` connection that unmodified os-brick and Nova/Cinder use as is.
The connection info also carries the NBD details for hypervisors whose
QEMU reaches ursa-nbd directly.  A host that does not let go of a volume
in time is fenced (its lease revoked).

A live migration attaches the volume to the destination host while the
source still writes: the destination is attached as a standby, whose
ursa-attach opens the volume without its lease and takes it over (a
handover: the source flushes and releases) at the first write there."""

import time

from cinder import exception as cinder_exc
from cinder import objects
from cinder.i18n import _
from oslo_log import log as logging

from cinder_ursa import exception
from cinder_ursa.volume.common import DriverPart
from cinder_ursa.volume.common import translated

LOG = logging.getLogger(__name__)


def export_name(volume_name, att):
    """The name ursa-nbd serves this attachment under: VOLUME~TOKEN with
    the attachment's export token (the gateway opens an attached volume
    for a TCP client without a client certificate only under it: every
    local user of the host shares 127.0.0.1); the plain name from a
    master older than export tokens."""
    token = att.get('export_token')
    return '%s~%s' % (volume_name, token) if token else volume_name


def _attachments_of(volume):
    """The volume's Cinder attachments: those the volume object lists and
    those in Cinder's database now.  The volume manager hands the driver
    the volume as the API loaded it, before it made a live migration's
    second attachment: the object alone lists the source's only."""
    found = {}
    try:
        for a in volume.volume_attachment or ():
            found[a.id] = a
    except Exception:  # noqa: BLE001 - not set on this object
        pass
    ctx, vid = getattr(volume, '_context', None), getattr(volume, 'id', None)
    if ctx is not None and vid:
        try:
            for a in objects.VolumeAttachmentList.get_all_by_volume_id(
                    ctx, vid):
                found[a.id] = a
        except Exception as e:  # noqa: BLE001 - the object's list then
            LOG.debug('Attachments of volume %s not read: %s', vid, e)
    return list(found.values())


def live_migration_destination(volume, host, multiattach):
    """Whether attaching ``volume`` to ``host`` is a live migration's
    second attachment: the volume is not multiattach, and among its
    Cinder attachments one is attached on another host for an instance
    that has another attachment of it too (Nova attaches the
    destination before it detaches the source, for the same
    instance)."""
    if multiattach:
        return False
    atts = _attachments_of(volume)
    for a in atts:
        if (getattr(a, 'attach_status', None) == 'attached'
                and a.instance_uuid and a.attached_host
                and a.attached_host != host
                and any(b is not a and b.instance_uuid == a.instance_uuid
                        for b in atts)):
            return True
    return False


class Attachments(DriverPart):
    """The connection calls of
    :class:`~cinder_ursa.volume.driver.UrsaDriver`."""

    def attach(self, volume, connector, multiattach=False):
        host = (connector or {}).get('host')
        if not host:
            raise cinder_exc.InvalidConnectorException(
                missing='host')
        conf = self.configuration
        standby = live_migration_destination(volume, host, multiattach)
        if standby:
            LOG.info('Volume %(vol)s: attaching to %(host)s as a live '
                     'migration\'s destination (a standby: it takes the '
                     'write lease over from the source at its first '
                     'write)', {'vol': volume.name, 'host': host})
        with translated('Attaching %s to %s' % (volume.name, host),
                        volume=volume):
            att = self._master.attach(volume.name, host, standby=standby)
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
        return {'driver_volume_type': 'local',
                'data': {'device_path': att['path'],
                         'ursa_volume': volume.name,
                         'ursa_volume_id': att['volume_id'],
                         'nbd_host': conf.ursa_nbd_host,
                         'nbd_port': conf.ursa_nbd_port,
                         'nbd_export': export_name(volume.name, att)}}

    def detach_all(self, volume, connector):
        """Detach from the connector's host, or (force detach, no
        connector) from every host; the hosts it was attached to."""
        with translated('Detaching %s' % volume.name, volume=volume):
            if connector and connector.get('host'):
                hosts = [connector['host']]
            else:  # force detach: from everywhere
                hosts = [a['host'] for a in
                         self._master.attachments(volume.name)]
            for host in hosts:
                self.detach(volume, host, everywhere=not (
                    connector and connector.get('host')))
        return hosts

    def detach(self, volume, host, everywhere=False):
        """Ask ``host``'s agent to let go of the volume; one that does
        not in time is fenced off it.  ``everywhere``: a force detach
        from every host (a multiattach volume's lease is then revoked
        for every writer, not only that host's)."""
        try:
            self._master.update_attachment(volume.name, host, 'detaching')
        except exception.NotFound:
            return
        deadline = time.monotonic() + self.configuration.ursa_attach_timeout
        while time.monotonic() < deadline:
            try:
                self._master.attachment(volume.name, host)
            except exception.NotFound:
                LOG.debug('Volume %(vol)s detached from %(host)s',
                          {'vol': volume.name, 'host': host})
                return
            time.sleep(0.2)
        # The host did not let go: fence it, so it can never write again.
        # The master's detach revokes the lease a client of that host
        # holds (generation + 1, pushed to the chunk servers), and a
        # multiattach volume's shares held there (the other hosts'
        # writers are re-admitted at the new generation).  Revoking the
        # volume's lease whoever holds it would fence another host still
        # attached: a live migration's other side (the source a rolled
        # back migration leaves running, the destination once the source
        # is detached), a multiattach volume's other writers.  A force
        # detach from every host revokes it for everyone.
        others = [a['host'] for a in self._master.attachments(volume.name)
                  if a['host'] != host]
        if not others or everywhere and self._master.volume(
                volume.name).get('multiattach'):
            self._master.revoke_lease(volume.name)
        self._master.detach(volume.name, host)
        LOG.warning('Host %(host)s did not release volume %(vol)s within '
                    '%(t)d s: its lease was revoked (fenced)',
                    {'host': host, 'vol': volume.name,
                     't': self.configuration.ursa_attach_timeout})
