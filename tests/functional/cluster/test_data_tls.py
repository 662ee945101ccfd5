"""The data protocol over TLS ([ursa_chunkserver] tls_cert_file, [ursa]
data_tls): clients, the master and the chunk servers among themselves
(replication) speak TLS to the chunk servers, which verify nothing a
client without TLS or one that does not trust their CA can use."""

import os

import pytest

from cinder_ursa import exception
from cinder_ursa.transport import aio
from cinder_ursa.transport import http
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.functional.nbd.test_nbd import make_pki

MiB = 1024 * 1024


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / 'pki')


def test_the_data_protocol_over_tls(make_cluster, pki, tmp_path):
    c = make_cluster(3, extra_conf=(
        '[ursa]\ndata_tls = true\ntls_ca_file = %s\n'
        '[ursa_chunkserver]\ntls_cert_file = %s\ntls_key_file = %s\n'
        % (pki / 'ca-cert.pem', pki / 'server-cert.pem',
           pki / 'server-key.pem')))
    with open(os.path.join(c.data_dir, 'cs0.log')) as f:
        assert '(TLS)' in f.read()
    admin = c.client()
    admin.create_volume('v', 8 * MiB, chunk_size=4 * MiB)
    data = os.urandom(8 * MiB)
    try:
        aio.set_data_tls(http.data_tls(str(pki / 'ca-cert.pem')))
        with data_client(c) as cl:
            with cl.open_volume('v') as v:
                v.write(0, data)
                v.flush()
            # Replicated by the primaries, over TLS too: every replica
            # answers a read of its own.
            with cl.open_volume('v', writable=False) as v:
                assert v.read(0, 8 * MiB) == data
        sets = replica_sets(c, 'v')
        assert sets and all(len(ids) == 3 for ids in sets.values())
        # The master reaches them too (a snapshot is broadcast).
        admin.create_snapshot('v', 's')

        # A client trusting another CA is refused at the handshake.
        other = make_pki(tmp_path / 'other')
        aio.set_data_tls(http.data_tls(str(other / 'ca-cert.pem')))
        with data_client(c, io_timeout=5.0) as cl:
            with pytest.raises(exception.UrsaError):
                with cl.open_volume('v', writable=False) as v:
                    v.read(0, 4096)
        # So is one without TLS.
        aio.set_data_tls(None)
        with data_client(c, io_timeout=5.0) as cl:
            with pytest.raises(exception.UrsaError):
                with cl.open_volume('v', writable=False) as v:
                    v.read(0, 4096)
    finally:
        aio.set_data_tls(None)


def test_mutual_tls_refuses_a_client_without_a_certificate(make_cluster,
                                                           pki):
    """[ursa_chunkserver] tls_ca_file: every peer presents a certificate
    of that CA ([ursa] tls_cert_file), the chunk servers' own
    connections to one another and the master's included."""
    cert = (str(pki / 'server-cert.pem'), str(pki / 'server-key.pem'))
    c = make_cluster(3, extra_conf=(
        '[ursa]\ndata_tls = true\ntls_ca_file = %s\ntls_cert_file = %s\n'
        'tls_key_file = %s\n[ursa_chunkserver]\ntls_cert_file = %s\n'
        'tls_key_file = %s\ntls_ca_file = %s\n'
        % ((pki / 'ca-cert.pem',) + cert + cert + (pki / 'ca-cert.pem',))))
    admin = c.client()
    admin.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
    ca = str(pki / 'ca-cert.pem')
    try:
        aio.set_data_tls(http.data_tls(ca, *cert))
        with data_client(c) as cl:
            with cl.open_volume('v') as v:
                v.write(0, b'm' * 4096)
                v.flush()
                assert v.read(0, 4096) == b'm' * 4096
        admin.create_snapshot('v', 's')
        aio.set_data_tls(http.data_tls(ca))
        with data_client(c, io_timeout=5.0) as cl:
            with pytest.raises(exception.UrsaError):
                with cl.open_volume('v', writable=False) as v:
                    v.read(0, 4096)
    finally:
        aio.set_data_tls(None)
