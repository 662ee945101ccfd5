"""ursa-nbd signing as the host principal of its hypervisor (not the
cluster key): it serves the volumes attached to its host (the host
role's routes are all it calls), and once the principal is revoked it
opens no volume any more."""

import os
import socket

from cinder_ursa.common import auth
from cinder_ursa.nbd import protocol as p
from tests.functional.nbd.test_nbd import request
from tests.functional.nbd.test_security import SAFE
from tests.functional.nbd.test_security import export

MiB = 1024 * 1024


def host_principal(c, tmp_path, nbd_conf=''):
    """Make this machine's host principal on cluster ``c`` and have its
    ursa-nbd sign as it (``nbd_conf``: more of its [ursa] options);
    return (host, key)."""
    # The host as ursa-nbd's lease holders name it (the system's host
    # name), and as attachments name it ([ursa_attach] host).
    host = socket.gethostname()
    c.attach_host = host
    c.write_config()
    key = auth.new_key()
    path = str(tmp_path / 'host.key')
    auth.write_key_file(path, key)
    c.client().create_principal(host, 'host', key)
    c.service_extra_conf['nbd'] = (
        '[ursa]\n%sprincipal = %s\nprincipal_key_file = %s\n'
        % (nbd_conf, host, path))
    return host, key


def test_ursa_nbd_with_a_host_principal(make_cluster, tmp_path):
    c = make_cluster(1, extra_conf=SAFE)
    host, _ = host_principal(c, tmp_path)
    admin = c.client()
    c.start_nbd()
    names = {}
    for name in ('hv1', 'hv2'):
        admin.create_volume(name, 8 * MiB, replicas=1, min_replicas=1,
                            chunk_size=4 * MiB)
        att = admin.attach(name, host)
        # Over TCP the export name carries the attachment's token.
        names[name] = '%s~%s' % (name, att['export_token'])

    s, size = export(c, names['hv1'])
    assert size == 8 * MiB
    data = os.urandom(8192)
    assert request(s, p.CMD_WRITE, 4 * MiB - 4096, len(data),
                   data=data)[0] == 0
    assert request(s, p.CMD_FLUSH, 0, 0)[0] == 0
    assert request(s, p.CMD_READ, 4 * MiB - 4096, len(data)) == (0, data)
    assert admin.volume('hv1')['lease']['holder'].startswith(host + ':')
    s.close()
    log = os.path.join(c.data_dir, 'nbd.log')
    with open(log) as f:
        text = f.read()
    assert 'Forbidden' not in text and 'forbidden' not in text, text

    # Revoked: the gateway can no longer read its attachments nor take a
    # lease, so it opens nothing.
    admin.revoke_principal(host)
    assert export(c, names['hv2']) == (None, None)
    with open(log) as f:
        assert 'unknown principal' in f.read()
