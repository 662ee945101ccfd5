"""Absurd numbers and headers against a real ursa-master: a 400 or a 401
with a message, never a 500 or a traceback, and ``GET /v1/cluster`` keeps
answering whatever volumes exist."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.common import auth
from cinder_ursa.common import units
from tests.fixtures.cluster import rest

# The test cluster allows volumes of 4 EiB: two of them sum to 2**63, one
# past the largest signed 64-bit number (SQLite's SUM overflowed).
LIMIT = 4 * units.Ei


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    c = AllInOne(str(tmp_path_factory.mktemp('rest-bounds')), 1, port_base=0,
                 server_timeout=3.0,
                 extra_conf='[ursa_master]\nmax_volume_size = %d\n' % LIMIT)
    c.start()
    try:
        yield c
    finally:
        c.stop(kill=True)


def master_log(cluster):
    with open(os.path.join(cluster.data_dir, 'master.log'), 'rb') as f:
        return f.read().decode('utf-8', 'replace')


def test_cluster_status_with_volumes_past_64_bits(cluster):
    client = cluster.client()
    client.create_volume('huge1', LIMIT)
    client.create_volume('huge2', LIMIT)
    status, body = rest(cluster, 'GET', '/cluster')
    assert status == 200, body
    assert body['provisioned_bytes'] == 2 * LIMIT
    r = subprocess.run(
        [sys.executable, '-m', 'cinder_ursa.cmd.cli', 'cluster', 'status',
         '-f', 'json'],
        env=dict(os.environ, URSA_CONFIG=cluster.conf_file),
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)['provisioned'] == '8 EiB'
    # The option is read: past it, a 400 naming it.
    status, body = rest(cluster, 'POST', '/volumes',
                        {'name': 'huge3', 'size': LIMIT + 4096})
    assert status == 400, body
    assert 'max_volume_size' in body['error']['message']
    assert '4 EiB' in body['error']['message']


@pytest.mark.parametrize('kwargs,words', [
    (dict(body={'name': 'x', 'size': 2 ** 80}), ('"size"', 'out of range')),
    (dict(body={'name': 'y', 'size': 2 ** 63 - 4096}),
     ('max_volume_size',)),
    (dict(body={'name': 'z', 'size': 4096,
                'qos': {'read_bytes_sec': 2 ** 80}}), ('read_bytes_sec',)),
    (dict(raw=b'[' * 100000 + b']' * 100000), ('nested too deeply',)),
    (dict(raw=b'{"name": "x", "size": ' + b'9' * 5000 + b'}'), ('number',)),
    (dict(params='?start=%d' % 2 ** 64, path='/volumes/huge1/chunks',
          method='GET'), ('"start"', 'out of range')),
])
def test_absurd_input_is_400(cluster, kwargs, words):
    method = kwargs.pop('method', 'POST')
    path = kwargs.pop('path', '/volumes')
    before = len(master_log(cluster))
    status, body = rest(cluster, method, path, **kwargs)
    assert status == 400, body
    assert body['error']['code'] == 'invalid_argument'
    for w in words:
        assert w in body['error']['message'], body
    assert 'Traceback' not in master_log(cluster)[before:]
    assert rest(cluster, 'GET', '/cluster')[0] == 200


def raw_get(cluster, header_value):
    """GET /v1/volumes with ``X-Ursa-Auth: <header_value bytes>``, as an
    HTTP client that does not check what it sends."""
    host, port = cluster.master_url.split('//', 1)[1].rsplit(':', 1)
    request = (b'GET /v1/volumes HTTP/1.1\r\nHost: ' + host.encode() +
               b'\r\n' + auth.HEADER.encode() + b': ' + header_value +
               b'\r\nConnection: close\r\n\r\n')
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        reply = b''
        while True:
            data = s.recv(65536)
            if not data:
                break
            reply += data
    head, _, body = reply.partition(b'\r\n\r\n')
    return int(head.split()[1]), body


@pytest.mark.parametrize('mac', [
    None,  # and a 400-digit time
    '\u00e9'.encode() * 64,
    b'\xff' * 64,
    b'z' * 64,
])
def test_malformed_signatures_are_401_without_traceback(cluster, mac):
    # A current time: the MAC is what the master must get to.
    header = (b'9' * 400 + b':' + b'a' * 64 if mac is None else
              b'%d:%s' % (time.time(), mac))
    before = len(master_log(cluster))
    status, body = raw_get(cluster, header)
    assert status == 401, body
    error = json.loads(body)['error']
    assert error['code'] == 'not_authorized'
    assert auth.HEADER in error['message']
    log = master_log(cluster)[before:]
    assert 'Traceback' not in log and 'ERROR' not in log, log
