"""REST signatures and key files."""

import os

import pytest

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.common import units

KEY = b'k' * 32
PATH = '/v1/volumes'


def verify(value, method='GET', path=PATH, query='', now=1000, **kw):
    return auth.verify(kw.pop('key', KEY), method, path, query, value,
                       now=now, **kw)


def test_signature_round_trip_and_tampering():
    sig = auth.sign(KEY, 'GET', PATH, now=1000)
    assert verify(sig, now=1010) == (2, auth.body_digest(b''))
    for method, path, k in (('PUT', PATH, KEY),
                            ('GET', '/v1/volume', KEY),
                            ('GET', PATH, b'x' * 32)):
        with pytest.raises(exception.NotAuthorized, match='bad signature'):
            verify(sig, method, path, key=k, now=1010)
    with pytest.raises(exception.NotAuthorized, match='clocks'):
        verify(sig, now=5000)
    for bad in (None, '', 'nonsense', 'abc:def'):
        with pytest.raises(exception.NotAuthorized):
            verify(bad)


def test_v2_covers_query_and_body():
    """F9: a signature for one query or body is no signature for
    another."""
    body = b'{"name": "a", "size": 4096}'
    sig = auth.sign(KEY, 'POST', PATH, 'x=1', body, now=1000)
    signed = verify(sig, 'POST', query='x=1')
    auth.check_body(signed, body)
    with pytest.raises(exception.NotAuthorized, match='not the one signed'):
        auth.check_body(signed, body.replace(b'"a"', b'"b"'))
    for query in ('', 'x=2', 'x=1&y=1', 'x=1&x=1'):
        with pytest.raises(exception.NotAuthorized, match='bad signature'):
            verify(sig, 'POST', query=query)
    # Forging the body hash in the header breaks the MAC.
    ts, nonce, _, mac = sig[3:].split(':')
    forged = 'v2:%s:%s:%s:%s' % (ts, nonce,
                                 auth.body_digest(b'{}'), mac)
    with pytest.raises(exception.NotAuthorized, match='bad signature'):
        verify(forged, 'POST', query='x=1')


@pytest.mark.parametrize('sent,received', [
    ('b=2&a=1', 'a=1&b=2'),                      # order
    ('a=1&a=0', 'a=0&a=1'),                      # repeated keys
    ('n=a+b', 'n=a%20b'),                        # '+' is a space
    ('n=%7e%2D', 'n=~-'),                        # unreserved, any case
    ('n=%c3%a9', 'n=%C3%A9'),                    # hex case
    ('a=1&&b=', 'b&a=1'),                        # empty pairs, no '='
])
def test_canonical_query_is_what_the_query_says(sent, received):
    assert auth.canonical_query(sent) == auth.canonical_query(received)
    sig = auth.sign(KEY, 'GET', PATH, sent, now=1000)
    verify(sig, query=received)


@pytest.mark.parametrize('one,other', [
    ('a=1', 'a=2'), ('a=1', 'a=1&a=1'), ('a=1&b=2', 'a=1b=2'),
    ('a=%26', 'a=&'), ('a=%3D1', 'a%3D=1'), ('a=%FF', 'a=%FE'),
])
def test_canonical_query_tells_queries_apart(one, other):
    assert auth.canonical_query(one) != auth.canonical_query(other)


def test_replayed_signature_is_refused():
    cache = auth.ReplayCache()
    sig = auth.sign(KEY, 'GET', PATH, now=1000)
    verify(sig, replay=cache)
    with pytest.raises(exception.NotAuthorized, match='replayed'):
        verify(sig, replay=cache, now=1001)
    # Another signature of the same request (a new nonce) is fine.
    verify(auth.sign(KEY, 'GET', PATH, now=1000), replay=cache)


def test_window_is_60_s_both_ways():
    sig = auth.sign(KEY, 'GET', PATH, now=1000)
    verify(sig, now=1060)
    verify(sig, now=940)
    for now, word in ((1061, 'behind'), (939, 'ahead of')):
        with pytest.raises(exception.NotAuthorized, match=word):
            verify(sig, now=now)
    verify(sig, now=1200, window=300)


def test_replay_cache_forgets_expired_first_and_refuses_when_full():
    cache = auth.ReplayCache(capacity=3)
    cache.add('a', expires=10, now=0)
    cache.add('b', expires=20, now=0)
    cache.add('c', expires=30, now=0)
    with pytest.raises(auth.ReplayCacheFull, match='signature_replay'):
        cache.add('d', expires=40, now=5)
    assert isinstance(auth.ReplayCacheFull('x'), exception.Unavailable)
    # 'a' expired: it makes room; the unexpired ones are still refused.
    cache.add('d', expires=40, now=11)
    assert len(cache) == 3
    for nonce in 'bcd':
        with pytest.raises(exception.NotAuthorized, match='replayed'):
            cache.add(nonce, expires=50, now=12)


def test_v1_only_when_legacy_is_accepted():
    sig = auth.sign_v1(KEY, 'GET', PATH, now=1000)
    with pytest.raises(exception.NotAuthorized,
                       match='accept_legacy_signatures'):
        verify(sig)
    assert verify(sig, legacy=True) == (1, None)
    with pytest.raises(exception.NotAuthorized, match='bad signature'):
        verify(sig, 'POST', legacy=True)
    with pytest.raises(exception.NotAuthorized, match='clocks'):
        verify(sig, now=1061, legacy=True)


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


@pytest.mark.parametrize('value', [
    # 400 digits: int() takes it, the clock arithmetic overflowed.
    '9' * 400 + ':' + 'a' * 64,
    '-1:' + 'a' * 64,
    '1e9:' + 'a' * 64,
    '\u0661\u0660\u0660\u0660:' + 'a' * 64,
    # compare_digest raised TypeError on non-ASCII text.
    '1000:' + '\u00e9' * 64,
    '1000:' + 'z' * 64,
    '1000:' + 'a' * 63,
    '1000:' + 'a' * 65,
    '1000:',
    'v2:',
    'v2:1000',
    'v2:' + '9' * 400 + ':' + 'a' * 32 + ':' + 'a' * 64 + ':' + 'a' * 64,
    'v2:1000:' + 'a' * 31 + ':' + 'a' * 64 + ':' + 'a' * 64,
    'v2:1000:' + 'a' * 32 + ':' + 'a' * 64 + ':' + '\u00e9' * 64,
    'v2:1000:' + 'g' * 32 + ':' + 'a' * 64 + ':' + 'a' * 64,
    'v2:1000:' + 'a' * 32 + ':' + 'a' * 64 + ':' + 'a' * 64 + ':x',
    'v2:-1:' + 'a' * 32 + ':' + 'a' * 64 + ':' + 'a' * 64,
])
@pytest.mark.parametrize('legacy', [True, False])
def test_malformed_headers_are_not_authorized(value, legacy):
    """Whatever an unauthenticated peer sends is a NotAuthorized (401)
    with a message, never another exception (a 500 and a traceback)."""
    with pytest.raises(exception.NotAuthorized, match='malformed') as ei:
        verify(value, legacy=legacy)
    assert auth.HEADER in str(ei.value)


def test_a_malformed_query_is_not_authorized():
    sig = auth.sign(KEY, 'GET', PATH, now=1000)
    with pytest.raises(exception.NotAuthorized, match='query'):
        verify(sig, query='a=\udcff')


def test_a_well_formed_wrong_mac_is_a_bad_signature():
    with pytest.raises(exception.NotAuthorized, match='bad signature'):
        verify('1000:' + '0' * 64, legacy=True)
    with pytest.raises(exception.NotAuthorized, match='bad signature'):
        verify('v2:1000:%s:%s:%s' % ('0' * 32, '0' * 64, '0' * 64))
    verify(auth.sign_v1(KEY, 'GET', PATH, now=1000).upper(), legacy=True)
    sig = auth.sign(KEY, 'GET', PATH, now=1000)
    verify('v2:' + sig[3:].upper())


def test_canonical_query_decodes_as_urllib_does():
    """The bottom layer's own percent-decoding agrees with the standard
    library's (which it may not import), on every kind of input."""
    import random
    import urllib.parse
    rng = random.Random(7)
    alphabet = 'aZ09-_.~+% =&%2%zz%4%41%e9%C3%A9\u00e9/?'
    for _ in range(2000):
        text = ''.join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        assert auth._unquote(text) == \
            urllib.parse.unquote_to_bytes(text.replace('+', ' ')), text
        assert auth._quote(auth._unquote(text)) == \
            urllib.parse.quote_from_bytes(auth._unquote(text), '-_.~')
