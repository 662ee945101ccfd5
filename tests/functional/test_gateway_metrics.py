"""The Prometheus metrics of ursa-nbd and ursa-attach on a real cluster:
scraped over HTTP from the port their endpoint files name, after I/O by
real clients (the tests' own NBD client, qemu-io, file I/O through the
FUSE mount).  Under CI=true a missing qemu-io, or no root or /dev/fuse
for ursa-attach, is a failure, elsewhere a skip."""

import json
import os
import socket
import struct
import subprocess

import pytest

from cinder_ursa.nbd import protocol as p
from tests.fixtures import metrics as metrics_fixture
from tests.fixtures.processes import free_port
from tests.fixtures.wait import wait_for
from tests.functional.nbd.test_nbd import connect
from tests.functional.nbd.test_nbd import need
from tests.functional.nbd.test_nbd import request

MiB = 1024 * 1024
OPS = ('read', 'write', 'flush', 'trim', 'write_zeroes', 'block_status',
       'cache')


scrape = metrics_fixture.samples
value = metrics_fixture.value


def nbd_cluster(make_cluster):
    c = make_cluster(1)
    c.service_extra_conf['nbd'] = '[ursa_nbd]\nmetrics_port = %d\n' % (
        free_port())
    c.start_nbd()
    with open(os.path.join(c.data_dir, 'nbd', 'endpoint.json')) as f:
        port = json.load(f)['metrics_port']
    c.client().create_volume('mvol', 8 * MiB, replicas=1, min_replicas=1,
                             chunk_size=4 * MiB)
    return c, port


def test_requests_connections_and_volume_bytes(make_cluster):
    c, port = nbd_cluster(make_cluster)
    m0 = scrape(port)
    assert value(m0, 'ursa_service_info', service='nbd') == 1
    assert value(m0, 'ursa_nbd_connections') == 0
    assert value(m0, 'ursa_nbd_operations_total', op='write') == 0

    s, size, _ = connect(c, 'mvol')
    assert size == 8 * MiB
    data = os.urandom(64 * 1024)
    for i in range(3):
        assert request(s, p.CMD_WRITE, i * len(data), len(data),
                       data=data)[0] == 0
    assert request(s, p.CMD_READ, 0, 4096) == (0, data[:4096])
    assert request(s, p.CMD_READ, 8 * MiB - 10, 20)[0] == p.NBD_EINVAL
    assert request(s, p.CMD_TRIM, 4 * MiB, MiB)[0] == 0
    assert request(s, p.CMD_FLUSH, 0, 0)[0] == 0

    m = scrape(port)
    assert value(m, 'ursa_nbd_connections') == 1
    assert value(m, 'ursa_nbd_exports_open') == 1
    assert value(m, 'ursa_nbd_leases_held') == 1
    assert value(m, 'ursa_nbd_in_flight_requests') == 0
    assert value(m, 'ursa_nbd_handshakes_total', result='ok') == 1
    for op, n, nbytes in (('write', 3, 3 * len(data)), ('read', 2, 4096),
                          ('trim', 1, MiB), ('flush', 1, 0)):
        assert value(m, 'ursa_nbd_operations_total', op=op) == n, op
        assert value(m, 'ursa_nbd_operation_bytes_total', op=op) == nbytes
    # The read past the end: refused before the backend, by its name.
    assert value(m, 'ursa_nbd_operation_errors_total', op='read',
                 kind='NBD_EINVAL') == 1
    assert value(m, 'ursa_nbd_operation_errors_total', op='write',
                 kind='NBD_EINVAL') == 0
    for op in OPS:
        assert value(m, 'ursa_nbd_operation_latency_seconds_count',
                     op=op) == value(m, 'ursa_nbd_operations_total', op=op)
    # Served in well under a second each (loopback, one replica).
    assert value(m, 'ursa_nbd_operation_latency_seconds_bucket', op='write',
                 le='1.0') == 3
    # The volume's own bytes, while its export is open.
    assert value(m, 'ursa_nbd_volume_bytes_total', volume='mvol',
                 op='write') == 3 * len(data)
    assert value(m, 'ursa_nbd_volume_bytes_total', volume='mvol',
                 op='read') == 4096

    # An export that does not exist: the handshake is refused.
    r = socket.create_connection(('127.0.0.1', c.nbd_port), timeout=10)
    r.recv(18, socket.MSG_WAITALL)
    r.sendall(struct.pack('>I', 3) + p.OPTION.pack(
        p.IHAVEOPT, p.OPT_EXPORT_NAME, 4) + b'nope')
    assert r.recv(10) == b''
    r.close()

    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))
    s.close()

    def closed():
        m = scrape(port)
        return (value(m, 'ursa_nbd_connections') == 0 and
                value(m, 'ursa_nbd_exports_open') == 0) and m

    m = wait_for(closed, 30, 'the connections and the export to close')
    assert value(m, 'ursa_nbd_handshakes_total', result='refused') == 1
    assert value(m, 'ursa_nbd_handshakes_total', result='ok') == 1
    assert value(m, 'ursa_nbd_leases_held') == 0
    # The export closed: its volume's series are gone, the totals stay.
    assert not [k for k in m if k[0] == 'ursa_nbd_volume_bytes_total']
    assert value(m, 'ursa_nbd_operation_bytes_total', op='write') == \
        3 * len(data)


def test_qemu_io_is_counted(make_cluster):
    need('qemu-io')
    c, port = nbd_cluster(make_cluster)
    m0 = scrape(port)
    out = subprocess.run(
        ['qemu-io', '-f', 'raw', '-c', 'write -P 0x5a 1M 2M',
         '-c', 'read -P 0x5a 1M 2M', '-c', 'flush',
         'nbd://127.0.0.1:%d/mvol' % c.nbd_port],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    m = wait_for(lambda: (value(scrape(port), 'ursa_nbd_connections') == 0
                          and scrape(port)), 30, 'qemu-io to disconnect')

    def grew(name, **labels):
        return value(m, name, **labels) - value(m0, name, **labels)

    # qemu may split or add requests of its own (a flush at close): at
    # least what was asked for, every one with its latency.
    assert grew('ursa_nbd_operation_bytes_total', op='write') >= 2 * MiB
    assert grew('ursa_nbd_operation_bytes_total', op='read') >= 2 * MiB
    assert grew('ursa_nbd_operations_total', op='flush') >= 1
    assert grew('ursa_nbd_handshakes_total', result='ok') == 1
    for op in OPS:
        assert value(m, 'ursa_nbd_operation_latency_seconds_count',
                     op=op) == value(m, 'ursa_nbd_operations_total', op=op)
        assert value(m, 'ursa_nbd_operation_errors_total', op=op,
                     kind='NBD_EINVAL') == 0


def test_attach_agent_metrics(make_cluster, tmp_path):
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('ursa-attach needs root and /dev/fuse')
        pytest.skip('ursa-attach needs root and /dev/fuse')
    c = make_cluster(1)
    c.service_extra_conf['attach'] = (
        '[ursa_attach]\nmetrics_port = %d\n' % free_port())
    c.attach_dir = str(tmp_path / 'attached')
    c.write_config()
    c.start_attach()
    with open(os.path.join(c.data_dir, 'attach', 'endpoint.json')) as f:
        port = json.load(f)['metrics_port']
    assert value(scrape(port), 'ursa_attach_attachments') == 0
    master = c.client()
    master.create_volume('avol', 8 * MiB, replicas=1, min_replicas=1)
    master.attach('avol', c.attach_host)
    wait_for(lambda: master.attachment('avol', c.attach_host)['status']
             == 'attached', 30, 'the attachment')
    path = os.path.join(c.attach_dir, 'avol')
    data = os.urandom(MiB)
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pwrite(fd, data, 0) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    m = scrape(port)
    assert value(m, 'ursa_attach_attachments') == 1
    assert value(m, 'ursa_attach_leases_held') == 1
    assert value(m, 'ursa_attach_operations_total', op='attach',
                 result='ok') == 1
    assert value(m, 'ursa_attach_operation_latency_seconds_count',
                 op='attach') == 1
    assert value(m, 'ursa_attach_io_operation_bytes_total',
                 op='write') >= len(data)
    assert value(m, 'ursa_attach_io_operations_total', op='flush') >= 1
    # In requests of up to 128 KiB (8 here, some slack for how the page
    # cache writes back), not 4 KiB ones (256): a mount without
    # big_writes made restores of Cinder backups crawl.
    assert value(m, 'ursa_attach_io_operations_total', op='write') <= 16
    for op in ('read', 'write', 'flush'):
        assert value(m, 'ursa_attach_io_operation_latency_seconds_count',
                     op=op) == value(m, 'ursa_attach_io_operations_total',
                                     op=op)
    # Detached (the row deleted): the agent drops the volume.
    master.detach('avol', c.attach_host)
    m = wait_for(lambda: (value(scrape(port), 'ursa_attach_attachments')
                          == 0 and scrape(port)), 30, 'the drop')
    assert value(m, 'ursa_attach_leases_held') == 0
    assert value(m, 'ursa_attach_operations_total', op='drop',
                 result='ok') + value(
        m, 'ursa_attach_operations_total', op='drop',
        result='error') == 1
