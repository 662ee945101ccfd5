"""The cluster key and the REST request signature built from it.

Every REST request but the version list carries a signature in the
``X-Ursa-Auth`` header.  Version 2 (this release)::

    X-Ursa-Auth: v2:<unix time>:<nonce>:<body SHA-256>:<MAC>

``nonce`` is 32 hex digits (128 random bits), ``body SHA-256`` the hex
SHA-256 of the exact body bytes (of b'' without a body) and ``MAC`` the
hex HMAC-SHA256 with the cluster key of::

    ursa-v2\\n<time>\\n<nonce>\\n<METHOD>\\n<raw path>\\n
    <canonical query>\\n<body SHA-256>

so a signature is good for one request only: another method, path,
query or body breaks it (the audit's finding F9 showed a v1 signature
reused with another body and another query).  The master accepts a time
at most ``window`` seconds (60 by default) before or after its clock and
remembers every nonce it accepted for that long (:class:`ReplayCache`):
the same signed request is executed once.  The body hash is in the
header so that the master checks the MAC before it reads a byte of the
body: an unauthenticated peer cannot make it buffer one.

Version 1 (``<unix time>:<MAC>``, the MAC over the time, the method and
the path only) is accepted only while ``[ursa_master]
accept_legacy_signatures`` is true, for the rolling upgrade from a
release that signed with it; it can be replayed within the window.

Signatures authenticate requests; replies are protected by TLS
(``[ursa_master] tls_cert_file``), not signed.  The key itself never
crosses the network.
"""

import hashlib
import heapq
import hmac
import os
import secrets
import string
import time
from typing import NamedTuple

from cinder_ursa import exception

HEADER = 'X-Ursa-Auth'
VERSION_PREFIX = 'v2:'
# Seconds a signature's time may be off the master's clock, either way.
WINDOW = 60
KEY_BYTES = 32
NONCE_BYTES = 16
# A UNIX time has 10 digits until 2286; more can only be garbage (and a
# 400-digit one overflowed the float arithmetic of the clock check).
TS_MAX_DIGITS = 12
# A hex SHA-256 digest (the MAC and the body hash).
MAC_HEX_DIGITS = 64
NONCE_HEX_DIGITS = 2 * NONCE_BYTES
# Nonces the master remembers at most (each about 200 bytes): 100000
# requests in one window is ~830 per second for the 120 s a nonce is
# kept (a time up to WINDOW ahead, kept until WINDOW after it).
REPLAY_CACHE_SIZE = 100000
# Bytes a canonical query component leaves unquoted (RFC 3986
# unreserved characters); every other byte is %XX.
_QUERY_SAFE = frozenset(b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
                        b'0123456789-_.~')
_HEX_BYTES = frozenset(b'0123456789abcdefABCDEF')


class Signed(NamedTuple):
    """What :func:`verify` accepted."""
    version: int
    # The hex SHA-256 the body must have (None: v1, which does not say).
    body_sha256: str = None


def load_key(path=None, key=None):
    """Return the cluster key as bytes, from ``key`` or the file ``path``."""
    if key:
        return key.encode() if isinstance(key, str) else key
    if not path:
        raise exception.InvalidArgument(
            reason='no cluster key: set [ursa] cluster_key_file (or '
                   'URSA_KEY_FILE) to the file ursa-aio or your deployment '
                   'wrote')
    try:
        with open(path, 'rb') as f:
            data = f.read().strip()
    except OSError as e:
        raise exception.InvalidArgument(
            reason='cannot read the cluster key file %s: %s'
            % (path, e.strerror)) from e
    if len(data) < 16:
        raise exception.InvalidArgument(
            reason='cluster key in %s is shorter than 16 bytes' % path)
    return data


def create_key_file(path):
    """Write a new random key to ``path`` (mode 0600) unless it exists."""
    if os.path.exists(path):
        return load_key(path)
    key = secrets.token_hex(KEY_BYTES).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
        f.write(key + b'\n')
    return key


def _unquote(text):
    """Percent-decode ``text`` to bytes ('+' a space; a '%' not followed
    by two hex digits stays as it is), as urllib.parse.unquote_to_bytes
    does (not imported: this layer does no network I/O)."""
    raw = text.replace('+', ' ').encode('utf-8')
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        if raw[i] == 0x25 and i + 2 < n and \
                raw[i + 1] in _HEX_BYTES and raw[i + 2] in _HEX_BYTES:
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _quote(data):
    return ''.join(chr(b) if b in _QUERY_SAFE else '%%%02X' % b
                   for b in data)


def canonical_query(query):
    """The query string ``query`` (raw, without '?') as both ends sign it.

    Every ``key=value`` pair is decoded to bytes ('+' is a space, as
    HTTP servers read it), the pairs are sorted (repeated keys by value)
    and encoded again with one spelling: RFC 3986 unreserved characters
    as they are, every other byte as upper-case %XX.  So a client's
    encoder and the bytes the server receives need not agree on how to
    quote, only on what the query says; and two queries that differ in
    what they say never sign alike.  Empty pairs ('&&') say nothing and
    are dropped, as servers drop them.
    """
    if not query:
        return ''
    try:
        pairs = sorted(
            (_unquote(k), _unquote(v))
            for k, _, v in (p.partition('=') for p in query.split('&') if p))
    except (UnicodeError, ValueError):
        raise exception.NotAuthorized(
            reason='malformed query string: it cannot be signed') from None
    return '&'.join('%s=%s' % (_quote(k), _quote(v)) for k, v in pairs)


def body_digest(body):
    return hashlib.sha256(body or b'').hexdigest()


def _mac_v1(key, timestamp, method, path):
    msg = ('%d\n%s\n%s' % (timestamp, method.upper(), path)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def _mac_v2(key, timestamp, nonce, method, path, query, digest):
    # No field can hold a newline: the time and the hashes are digits,
    # the method a token, the path and the canonical query are quoted.
    msg = '\n'.join(('ursa-v2', '%d' % timestamp, nonce, method.upper(),
                     path, canonical_query(query), digest))
    return hmac.new(key, msg.encode('utf-8', 'surrogateescape'),
                    hashlib.sha256).hexdigest()


def sign(key, method, path, query='', body=b'', now=None, nonce=None):
    """The ``X-Ursa-Auth`` value (v2) of one request: ``path`` and
    ``query`` exactly as sent (quoted, the query without '?'), ``body``
    the exact bytes sent.  A new random nonce each call: sign every
    attempt anew, a master refuses a signature it has seen."""
    ts = int(now if now is not None else time.time())
    nonce = nonce or secrets.token_hex(NONCE_BYTES)
    digest = body_digest(body)
    return 'v2:%d:%s:%s:%s' % (
        ts, nonce, digest,
        _mac_v2(key, ts, nonce, method, path, query, digest))


def sign_v1(key, method, path, now=None):
    """A version 1 signature, as releases before v2 sent: for tests of
    the legacy mode only."""
    ts = int(now if now is not None else time.time())
    return '%d:%s' % (ts, _mac_v1(key, ts, method, path))


def _hex(text, digits):
    return len(text) == digits and text.isascii() and \
        all(c in string.hexdigits for c in text)


def _timestamp(ts_text, now, window):
    if not (ts_text.isascii() and ts_text.isdigit()
            and len(ts_text) <= TS_MAX_DIGITS):
        raise exception.NotAuthorized(
            reason='malformed %s header: the time must be a UNIX time of '
                   'at most %d digits' % (HEADER, TS_MAX_DIGITS))
    try:
        ts = int(ts_text)
        now = time.time() if now is None else now
        skew = now - ts
    except (OverflowError, ValueError):
        raise exception.NotAuthorized(
            reason='malformed %s header: the time is no UNIX time'
            % HEADER) from None
    if abs(skew) > window:
        raise exception.NotAuthorized(
            reason='signature time is %d s %s the master\'s clock (at most '
                   '%d s allowed); check the clocks (NTP)'
            % (abs(int(skew)), 'behind' if skew > 0 else 'ahead of',
               window))
    return ts


def verify(key, method, path, query, value, now=None, window=WINDOW,
           replay=None, legacy=False):
    """Return :class:`Signed` if ``value`` is a fresh, valid signature of
    the request; raise NotAuthorized (401) otherwise.

    ``path`` and ``query`` are the raw path and query string as received.
    The body is not read here: check it afterwards with
    :func:`check_body` (the MAC covers the hash the header names).
    ``replay``, a :class:`ReplayCache`, refuses a v2 nonce seen before.
    ``legacy``: whether a v1 signature is accepted.

    Whatever an unauthenticated peer sends ends here as NotAuthorized
    with a message: the header is checked for its form (a time of at
    most ``TS_MAX_DIGITS`` ASCII digits, hex digits of the right count)
    before any arithmetic or comparison that could raise anything else.
    """
    if not value or ':' not in value:
        raise exception.NotAuthorized(
            reason='missing %s header: sign requests with the cluster key'
            % HEADER)
    if not value.startswith(VERSION_PREFIX):
        return _verify_v1(key, method, path, value, now, window, legacy)
    fields = value[len(VERSION_PREFIX):].split(':')
    if len(fields) != 4:
        raise exception.NotAuthorized(
            reason='malformed %s header: v2 is v2:<time>:<nonce>:<body '
                   'sha256>:<mac>' % HEADER)
    ts_text, nonce, digest, mac = fields
    if not (_hex(nonce, NONCE_HEX_DIGITS) and _hex(digest, MAC_HEX_DIGITS)
            and _hex(mac, MAC_HEX_DIGITS)):
        raise exception.NotAuthorized(
            reason='malformed %s header: the nonce must be %d hex digits, '
                   'the body hash and the signature %d'
            % (HEADER, NONCE_HEX_DIGITS, MAC_HEX_DIGITS))
    ts = _timestamp(ts_text, now, window)
    # Hex digits in either case, as in v1; one spelling is signed and
    # remembered.
    nonce, digest = nonce.lower(), digest.lower()
    expected = _mac_v2(key, ts, nonce, method, path, query, digest)
    if not hmac.compare_digest(mac.lower(), expected):
        raise exception.NotAuthorized(
            reason='bad signature: wrong cluster key, or the request was '
                   'changed after it was signed')
    if replay is not None:
        replay.add(nonce, ts + window, now)
    return Signed(2, digest)


def _verify_v1(key, method, path, value, now, window, legacy):
    ts_text, mac = value.split(':', 1)
    if not _hex(mac, MAC_HEX_DIGITS):
        raise exception.NotAuthorized(
            reason='malformed %s header: the signature after ":" must be '
                   '%d hex digits (HMAC-SHA256)' % (HEADER, MAC_HEX_DIGITS))
    ts = _timestamp(ts_text, now, window)
    if not legacy:
        raise exception.NotAuthorized(
            reason='%s v1 signature refused (it covers neither the body '
                   'nor the query and can be replayed): upgrade this '
                   'client, or set [ursa_master] accept_legacy_signatures '
                   '= true until every client is upgraded' % HEADER)
    if not hmac.compare_digest(mac.lower(), _mac_v1(key, ts, method, path)):
        raise exception.NotAuthorized(reason='bad signature: wrong cluster '
                                             'key?')
    return Signed(1)


def check_body(signed, body):
    """Raise NotAuthorized unless ``body`` (bytes) is the body
    ``signed`` names."""
    if signed.body_sha256 is not None and \
            not hmac.compare_digest(body_digest(body), signed.body_sha256):
        raise exception.NotAuthorized(
            reason='the request body is not the one signed (%s body '
                   'SHA-256)' % HEADER)


class ReplayCacheFull(exception.Unavailable):
    """The master remembers as many nonces as it may (a 503 the clients
    see as Unavailable; logged once per window, without a traceback)."""


class ReplayCache:
    """The nonces of the signatures accepted in the last window, so that
    each is accepted once.

    Bounded: at most ``capacity`` nonces.  A nonce is kept until its
    signature's time falls out of the window (then a replay fails the
    clock check anyway) and dropped then, expired ones first.  When the
    cache is full of unexpired nonces, new requests are refused (503
    Unavailable, the clients retry) rather than an unexpired nonce
    forgotten: forgetting would let its request be replayed.  Only a
    holder of the cluster key can add a nonce (the MAC is checked
    first), so only a key holder's flood can fill it.
    """

    def __init__(self, capacity=REPLAY_CACHE_SIZE):
        self.capacity = capacity
        self._expiry = {}        # nonce -> time it may be forgotten
        self._heap = []          # (that time, nonce), soonest first

    def __len__(self):
        return len(self._expiry)

    def add(self, nonce, expires, now=None):
        now = time.time() if now is None else now
        heap = self._heap
        while heap and heap[0][0] < now:
            _, old = heapq.heappop(heap)
            del self._expiry[old]
        if nonce in self._expiry:
            raise exception.NotAuthorized(
                reason='replayed request: this %s signature was already '
                       'used; sign every request anew' % HEADER)
        if len(self._expiry) >= self.capacity:
            raise ReplayCacheFull(
                reason='the master has accepted %d signed requests in the '
                       'last signature window and remembers no more until '
                       'the oldest expire; retry in a few seconds (or '
                       'raise [ursa_master] signature_replay_cache)'
                % self.capacity)
        self._expiry[nonce] = expires
        heapq.heappush(heap, (expires, nonce))
