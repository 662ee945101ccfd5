"""The os-brick connector for Ursa's connection data: the NBD URI and the
libvirt disk built from them, and UrsaConnector on a local file."""

import threading
from xml.etree import ElementTree

import pytest
from os_brick import exception as brick_exc

from cinder_ursa.brick import connector

DATA = {'nbd_host': '192.0.2.7', 'nbd_port': '10809',
        'nbd_export': 'volume-1', 'device_path': None}


def test_nbd_uri():
    assert connector.nbd_uri(DATA) == 'nbd://192.0.2.7:10809/volume-1'


def test_libvirt_disk_quotes_what_it_is_given():
    odd = 'a"<b>&\''
    disk = ElementTree.fromstring(connector.libvirt_disk_xml(
        dict(DATA, nbd_export=odd), target_dev='vdc', bus='scsi'))
    source = disk.find('source')
    assert source.attrib == {'protocol': 'nbd', 'name': odd}
    assert source.find('host').attrib == {'name': '192.0.2.7',
                                          'port': '10809'}
    assert disk.find('target').attrib == {'dev': 'vdc', 'bus': 'scsi'}


def test_properties_name_this_host():
    props = connector.UrsaConnector.get_connector_properties(
        None, host='compute-3')
    assert props == {'host': 'compute-3'}
    assert connector.UrsaConnector.get_connector_properties(None)['host']


def test_connect_returns_the_file_once_it_appears(tmp_path):
    path = tmp_path / 'volume-1'
    c = connector.UrsaConnector(device_scan_attempts=2)
    timer = threading.Timer(0.3, path.write_bytes, [bytes(8192)])
    timer.start()
    try:
        info = c.connect_volume({'device_path': str(path)})
    finally:
        timer.cancel()
    assert info == {'type': 'file', 'path': str(path)}
    assert c.check_valid_device(str(path))
    assert c.get_volume_paths({'device_path': str(path)}) == [str(path)]
    assert c.extend_volume({'device_path': str(path)}) == 8192
    assert c.get_all_available_volumes({'device_path': str(path)}) == [
        str(path)]
    assert c.disconnect_volume({'device_path': str(path)}, info) is None


def test_a_file_that_never_appears_is_device_not_found(tmp_path):
    c = connector.UrsaConnector(device_scan_attempts=0)
    c.wait_seconds = 0.2
    path = str(tmp_path / 'never')
    with pytest.raises(brick_exc.VolumeDeviceNotFound):
        c.connect_volume({'device_path': path})
    assert not c.check_valid_device(path)
    assert c.get_volume_paths({'device_path': path}) == []
    assert c.get_all_available_volumes() == []
