"""Version 3 signatures: they name the principal and cover the master
they are addressed to; keys go to the master wrapped."""

import os

import pytest

from cinder_ursa import exception
from cinder_ursa.common import auth

KEY = b'k' * 32
OLD = b'o' * 32
PATH = '/v1/volumes'
HERE = '10.0.0.1:9380'


def sign(**kw):
    kw.setdefault('principal', 'cs1')
    kw.setdefault('authority', HERE)
    return auth.sign(KEY, 'GET', PATH, now=1000, **kw)


def verify(value, keys=(KEY,), authority=HERE, names=frozenset({HERE}),
           **kw):
    return auth.verify(list(keys), 'GET', PATH, '', value, now=1010,
                       authority=authority, names=names, **kw)


def test_v3_names_its_principal_and_verifies_with_its_keys():
    value = sign()
    assert value.startswith('v3:cs1:1000:')
    assert auth.principal_of(value) == 'cs1'
    signed = verify(value)
    assert (signed.version, signed.principal, signed.key) == (3, 'cs1', KEY)
    # A rotated principal: the new key and the previous one both work.
    assert verify(value, keys=(OLD, KEY)).key == KEY
    with pytest.raises(exception.NotAuthorized, match="principal 'cs1'"):
        verify(value, keys=(OLD,))
    # Another principal's name on the same MAC: its key does not match.
    other = value.replace('v3:cs1:', 'v3:cs2:')
    assert auth.principal_of(other) == 'cs2'
    with pytest.raises(exception.NotAuthorized, match='bad signature'):
        verify(other)


def test_v3_is_bound_to_the_master_it_was_signed_for():
    value = sign()
    # Sent elsewhere with its Host header changed: the MAC breaks.
    with pytest.raises(exception.NotAuthorized, match='bad signature'):
        verify(value, authority='10.0.0.2:9380',
               names=frozenset({'10.0.0.2:9380'}))
    # Replayed elsewhere as it was: refused as signed for another.
    with pytest.raises(exception.NotAuthorized,
                       match="signed for the master at '10.0.0.1:9380'"):
        verify(value, names=frozenset({'10.0.0.2:9380'}))
    # names None: a master that knows no names of its own accepts it.
    assert verify(value, names=None).version == 3


def test_v3_nonce_is_used_once():
    replay = auth.ReplayCache()
    value = sign()
    verify(value, replay=replay)
    with pytest.raises(exception.NotAuthorized, match='replayed'):
        verify(value, replay=replay)


@pytest.mark.parametrize('value', [
    'v3::1000:' + 'a' * 32 + ':' + 'b' * 64 + ':' + 'c' * 64,
    'v3:a b:1000:' + 'a' * 32 + ':' + 'b' * 64 + ':' + 'c' * 64,
    'v3:' + 'x' * 65 + ':1000:' + 'a' * 32 + ':' + 'b' * 64 + ':' + 'c' * 64,
    'v3:cs1',
    'v3:cs1:1000:' + 'a' * 32 + ':' + 'b' * 64,
    'v3:cs1:1000:' + 'a' * 32 + ':' + 'b' * 64 + ':' + 'c' * 64 + ':x',
    'v3:cs1:' + '9' * 40 + ':' + 'a' * 32 + ':' + 'b' * 64 + ':' + 'c' * 64,
])
def test_malformed_v3_is_a_clear_401(value):
    with pytest.raises(exception.NotAuthorized, match='malformed'):
        auth.principal_of(value)
        verify(value)


def test_v2_is_refused_where_unbound_signatures_are():
    value = auth.sign(KEY, 'GET', PATH, now=1000)
    assert auth.principal_of(value) == auth.ADMIN
    assert verify(value).principal == auth.ADMIN
    with pytest.raises(exception.NotAuthorized,
                       match='v2 signature refused.*accept_legacy'):
        verify(value, unbound=False)


@pytest.mark.parametrize('url,header,secure,spelled', [
    ('http://Master-1:9380/', 'master-1:9380', False, 'master-1:9380'),
    ('http://m', 'M:80', False, 'm:80'),
    ('https://m/v1', 'm', True, 'm:443'),
    ('https://[::1]:9380', '[::1]:9380', True, '[::1]:9380'),
    ('http://user@m:1', 'm:1', False, 'm:1'),
])
def test_clients_and_master_spell_the_authority_alike(url, header, secure,
                                                     spelled):
    """urllib writes a default port aiohttp leaves out: both sides
    spell it the same way or the signature would break."""
    assert auth.authority(url) == auth.host_authority(header, secure) == \
        spelled


@pytest.mark.parametrize('header', ['', None, 'a:b:c', 'm:99999999',
                                    'm/x', '[::1', 'm:-1'])
def test_a_host_header_that_is_no_authority_is_spelled_empty(header):
    assert auth.host_authority(header, False) == ''


def test_wrapped_keys():
    key = auth.new_key()
    wrapped, nonce = auth.wrap_key(KEY, key)
    assert key.decode() not in wrapped
    assert auth.unwrap_key(KEY, wrapped, nonce) == key
    # A fresh nonce each time: never the same keystream twice.
    assert auth.wrap_key(KEY, key)[0] != wrapped
    with pytest.raises(exception.InvalidArgument, match='unwrap'):
        auth.unwrap_key(OLD, wrapped, nonce)
    for bad in (('zz' * 64, nonce), (wrapped[:-2], nonce),
                (wrapped, 'x'), (None, nonce), (wrapped, 5)):
        with pytest.raises(exception.InvalidArgument):
            auth.unwrap_key(KEY, *bad)


def test_key_files_are_private_and_never_overwritten(tmp_path):
    path = str(tmp_path / 'ha.key')
    key = auth.new_key()
    auth.write_key_file(path, key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert auth.load_key(path, what='key of principal ha') == key
    with pytest.raises(exception.InvalidArgument, match='exists'):
        auth.write_key_file(path, auth.new_key())
    assert auth.load_key(path) == key
