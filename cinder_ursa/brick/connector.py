"""Host side of an Ursa connection, in os-brick's connector shape.

The driver's ``initialize_connection`` returns ``driver_volume_type =
'local'`` with these data::

    device_path   the volume's file, served by ursa-attach on the host
    ursa_volume   volume name; ursa_volume_id: its id
    nbd_host, nbd_port, nbd_export   where ursa-nbd serves it

Which path suits which deployment:

* ``device_path`` (os-brick's own ``local`` connector, so unmodified Nova,
  cinder-backup, generic migration): every host where volumes are
  attached runs ``ursa-attach``; I/O goes through FUSE on that host.  Works
  everywhere FUSE does; needs no NBD kernel module.
* NBD (``nbd_uri`` / ``libvirt_disk_xml`` below): hypervisors whose QEMU
  connects to ``ursa-nbd`` itself (a libvirt network disk); no FUSE hop,
  the fastest path, but the host's orchestration must build the disk from
  these data (unmodified Nova uses ``device_path``).
* A kernel NBD device (``nbd-client HOST PORT -N EXPORT /dev/nbdX``) where
  the ``nbd`` module exists, for tools that need a block device.

:class:`UrsaConnector` implements os-brick's ``InitiatorConnector`` for
these data, for code that drives os-brick connectors itself.
"""

import os
import socket
import time
from xml.sax import saxutils

from os_brick import exception as brick_exc
from os_brick.initiator import initiator_connector


def nbd_uri(data):
    """nbd://host:port/export of a connection's data."""
    return 'nbd://%s:%d/%s' % (data['nbd_host'], int(data['nbd_port']),
                               data['nbd_export'])


def libvirt_disk_xml(data, target_dev='vdb', bus='virtio'):
    """A libvirt network disk reading the volume through ursa-nbd."""
    q = saxutils.quoteattr
    return (
        '<disk type="network" device="disk">'
        '<driver name="qemu" type="raw" cache="none" io="native"/>'
        '<source protocol="nbd" name=%s><host name=%s port=%s/></source>'
        '<target dev=%s bus=%s/></disk>' % (
            q(data['nbd_export']), q(data['nbd_host']),
            q(str(int(data['nbd_port']))), q(target_dev), q(bus)))


class UrsaConnector(initiator_connector.InitiatorConnector):
    """Connects Ursa volumes through the file ursa-attach serves."""

    def __init__(self, root_helper=None, driver=None, execute=None,
                 device_scan_attempts=3, **kwargs):
        super().__init__(root_helper, driver=driver, execute=execute,
                         device_scan_attempts=device_scan_attempts,
                         **kwargs)
        self.wait_seconds = max(1, device_scan_attempts) * 2

    @staticmethod
    def get_connector_properties(root_helper, *args, **kwargs):
        # The driver attaches to connector['host']: ursa-attach on this
        # host must use the same name ([ursa_attach] host).
        return {'host': kwargs.get('host') or socket.gethostname()}

    def check_valid_device(self, path, run_as_root=True):
        try:
            with open(path, 'rb') as f:
                f.read(4096)
            return True
        except OSError:
            return False

    def connect_volume(self, connection_properties):
        path = connection_properties['device_path']
        deadline = time.monotonic() + self.wait_seconds
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise brick_exc.VolumeDeviceNotFound(device=path)
            time.sleep(0.2)
        return {'type': 'file', 'path': path}

    def disconnect_volume(self, connection_properties, device_info,
                          force=False, ignore_errors=False):
        # The driver's terminate_connection has ursa-attach flush and close
        # the volume; nothing is left to undo on this side.
        return None

    def get_volume_paths(self, connection_properties):
        path = connection_properties.get('device_path')
        return [path] if path and os.path.exists(path) else []

    def get_search_path(self):
        return None

    def extend_volume(self, connection_properties):
        return os.path.getsize(connection_properties['device_path'])

    def get_all_available_volumes(self, connection_properties=None):
        path = (connection_properties or {}).get('device_path')
        if path and os.path.isdir(os.path.dirname(path)):
            d = os.path.dirname(path)
            return [os.path.join(d, n) for n in sorted(os.listdir(d))]
        return []
