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


@pytest.mark.parametrize('value,match', [
    # 400 digits: int() takes it, the clock arithmetic overflowed.
    ('9' * 400 + ':' + 'a' * 64, 'malformed'),
    ('-1:' + 'a' * 64, 'malformed'),
    ('1e9:' + 'a' * 64, 'malformed'),
    ('\u0661\u0660\u0660\u0660:' + 'a' * 64, 'malformed'),
    # compare_digest raised TypeError on non-ASCII text.
    ('1000:' + '\u00e9' * 64, 'malformed'),
    ('1000:' + 'z' * 64, 'malformed'),
    ('1000:' + 'a' * 63, 'malformed'),
    ('1000:' + 'a' * 65, 'malformed'),
    ('1000:', 'malformed'),
])
def test_malformed_headers_are_not_authorized(value, match):
    """Whatever an unauthenticated peer sends is a NotAuthorized (401)
    with a message, never another exception (a 500 and a traceback)."""
    with pytest.raises(exception.NotAuthorized, match=match) as ei:
        auth.verify(b'k' * 32, 'GET', '/v1/volumes', value, now=1000)
    assert auth.HEADER in str(ei.value)


def test_a_well_formed_wrong_mac_is_a_bad_signature():
    mac = '0' * 64
    with pytest.raises(exception.NotAuthorized, match='bad signature'):
        auth.verify(b'k' * 32, 'GET', '/v1/volumes', '1000:' + mac, now=1000)
    sig = auth.sign(b'k' * 32, 'GET', '/v1/volumes', now=1000)
    auth.verify(b'k' * 32, 'GET', '/v1/volumes', sig.upper(), now=1000)
