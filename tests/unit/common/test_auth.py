"""REST signatures and key files."""

import os

import pytest

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.common import units


def test_signature_round_trip_and_tampering():
    key = b'k' * 32
    sig = auth.sign(key, 'GET', '/v1/volumes', now=1000)
    auth.verify(key, 'GET', '/v1/volumes', sig, now=1010)
    for method, path, k in (('PUT', '/v1/volumes', key),
                            ('GET', '/v1/volume', key),
                            ('GET', '/v1/volumes', b'x' * 32)):
        with pytest.raises(exception.NotAuthorized):
            auth.verify(k, method, path, sig, now=1010)
    with pytest.raises(exception.NotAuthorized, match='clocks'):
        auth.verify(key, 'GET', '/v1/volumes', sig, now=5000)
    for bad in (None, '', 'nonsense', 'abc:def'):
        with pytest.raises(exception.NotAuthorized):
            auth.verify(key, 'GET', '/v1/volumes', bad, now=1000)


def test_key_file(tmp_path):
    path = str(tmp_path / 'cluster.key')
    key = auth.create_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert auth.create_key_file(path) == key == auth.load_key(path)
    with pytest.raises(exception.InvalidArgument, match='cluster key'):
        auth.load_key(str(tmp_path / 'missing'))
    with pytest.raises(exception.InvalidArgument):
        auth.load_key(None)


def test_parse_size():
    assert units.parse_size('10G') == 10 * units.Gi
    assert units.parse_size('512MiB') == 512 * units.Mi
    assert units.parse_size('4096') == 4096
    with pytest.raises(exception.InvalidArgument):
        units.parse_size('ten gigs')
