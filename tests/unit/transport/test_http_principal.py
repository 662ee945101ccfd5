"""Who the REST clients sign as, and for which master: every attempt is
signed for the URL it goes to (so another master refuses it), as the
principal given, else the process default ([ursa] principal), else
admin with the cluster key."""

import pytest

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.protocol import rest
from cinder_ursa.transport import http

KEY = b'k' * 32
OTHER = b'o' * 64


def signed(masters):
    """(authority, X-Ursa-Auth) of each attempt of one request."""
    return [(auth.authority(base), headers[auth.HEADER])
            for _, base, _, headers in masters.attempts(rest.volumes(),
                                                        None)]


def check(value, key, authority, principal):
    assert auth.principal_of(value) == principal
    assert auth.verify(key, 'GET', '/v1/volumes', '', value,
                       authority=authority,
                       names=frozenset({authority})).principal == principal


def test_each_attempt_is_signed_for_its_master():
    masters = http._Masters(['http://ctl1:9380', 'https://CTL2/'], KEY, 5)
    attempts = signed(masters)
    assert [a for a, _ in attempts] == ['ctl1:9380', 'ctl2:443']
    for authority, value in attempts:
        check(value, KEY, authority, 'admin')
    # Not good for the other master.
    with pytest.raises(exception.NotAuthorized):
        auth.verify(KEY, 'GET', '/v1/volumes', '', attempts[0][1],
                    authority='ctl2:443', names=frozenset({'ctl2:443'}))


def test_the_principal_given_then_the_process_default():
    try:
        http.set_default_principal(('dflt', OTHER))
        (authority, value), = signed(http._Masters('http://m:1', KEY, 5))
        check(value, OTHER, authority, 'dflt')
        (authority, value), = signed(http._Masters(
            'http://m:1', KEY, 5, principal=('mine', b'm' * 64)))
        check(value, b'm' * 64, authority, 'mine')
    finally:
        http.set_default_principal(None)
    (authority, value), = signed(http._Masters('http://m:1', KEY, 5))
    check(value, KEY, authority, 'admin')


def test_principal_options_are_checked(tmp_path):
    assert http.principal_from('admin', None) is None
    assert http.principal_from(None, None) is None
    with pytest.raises(exception.InvalidArgument,
                       match='principal_key_file'):
        http.principal_from('ha', None)
    with pytest.raises(exception.InvalidArgument, match='no principal'):
        http.principal_from('a b', '/x')
    with pytest.raises(exception.InvalidArgument,
                       match='key of principal ha'):
        http.principal_from('ha', str(tmp_path / 'missing'))
    path = tmp_path / 'ha.key'
    auth.write_key_file(str(path), OTHER)
    assert http.principal_from('ha', str(path)) == ('ha', OTHER)
