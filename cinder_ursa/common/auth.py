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

Version 3 names who signs and which master the request is for::

    X-Ursa-Auth: v3:<principal>:<unix time>:<nonce>:<body SHA-256>:<MAC>

the MAC, with that principal's key (see ``ursa key create``; the
cluster key is the principal ``admin``), over::

    ursa-v3\n<principal>\n<authority>\n<time>\n<nonce>\n<METHOD>\n
    <raw path>\n<canonical query>\n<body SHA-256>

``authority`` is the ``host:port`` of the master URL the client sends
to (:func:`authority`), which the master reads back from the request's
``Host`` header and checks against the names it serves under: each
master has its own replay cache, so a request captured on its way to a
standby could otherwise be replayed to the leader (review finding 4).
Clients of this release sign v3 (as ``[ursa] principal``, ``admin`` by
default); the master accepts v2, always the principal ``admin`` and
bound to no master, only while ``[ursa_master]
accept_legacy_signatures`` is true, as v1.

Signatures authenticate requests; replies are protected by TLS
(``[ursa_master] tls_cert_file``), not signed.  A key never crosses
the network in clear: ``ursa key create`` and ``rotate`` send the new
key wrapped with the admin's key (:func:`wrap_key`).
"""

import hashlib
import heapq
import hmac
import os
import secrets
import string
import time

from cinder_ursa import exception

HEADER = 'X-Ursa-Auth'
VERSION_PREFIX = 'v2:'
V3_PREFIX = 'v3:'
# The principal of the cluster key (and of v1 and v2 signatures).
ADMIN = 'admin'
# Principal names: a host name fits (a host principal is named after
# its host); nothing that needs quoting in a header or a file name.
PRINCIPAL_MAX = 64
_PRINCIPAL_CHARS = frozenset(string.ascii_letters + string.digits + '.-_')
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


class Signed(tuple):
    """What :func:`verify` accepted: ``(version, body_sha256)`` (the hex
    SHA-256 the body must have, None for v1, which does not say), and
    who signed (``principal``: ``admin`` for v1 and v2) with which
    ``key`` (to unwrap a key the request carries)."""

    def __new__(cls, version, body_sha256=None, principal=ADMIN, key=None):
        self = super().__new__(cls, (version, body_sha256))
        self.principal = principal
        self.key = key
        return self

    @property
    def version(self):
        return self[0]

    @property
    def body_sha256(self):
        return self[1]


def valid_principal(name):
    """Whether ``name`` can name a principal (1 to PRINCIPAL_MAX letters,
    digits, '.', '-', '_')."""
    return isinstance(name, str) and 0 < len(name) <= PRINCIPAL_MAX and \
        all(c in _PRINCIPAL_CHARS for c in name)


def _host_port(host, port):
    host = host.lower()
    if ':' in host and not host.startswith('['):
        host = '[%s]' % host          # IPv6, as URLs write it
    return '%s:%d' % (host, port)


def _split_authority(netloc, default_port):
    """(host, port) of ``[user@]host[:port]`` (IPv6 in brackets), None
    if it is no such thing.  Parsed here rather than with urllib: this
    layer does no network I/O and imports nothing that does."""
    netloc = netloc.rpartition('@')[2]
    if netloc.startswith('['):
        host, sep, rest = netloc[1:].partition(']')
        if not sep or (rest and not rest.startswith(':')):
            return None
        port = rest[1:]
    else:
        host, _, port = netloc.partition(':')
        if ':' in port:
            return None
    if not host or any(c in host for c in '/?#\\ \t\r\n'):
        return None
    if not port:
        return host, default_port
    if not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return host, int(port)


def authority(url):
    """The ``host:port`` of a master URL as v3 signs it: the host in
    lower case, the port always written (80 or 443 when the URL has
    none), so that clients and the master spell it alike."""
    scheme, _, rest = url.partition('://')
    netloc = rest.split('/', 1)[0].split('?', 1)[0]
    parts = _split_authority(
        netloc, 443 if scheme.lower() == 'https' else 80)
    return _host_port(*parts) if parts else ''


def host_authority(host_header, secure):
    """The authority a request's ``Host`` header names, spelled as
    :func:`authority` spells it ('' if there is none or it is no
    ``host[:port]``): what the master checks a v3 signature with."""
    parts = _split_authority(host_header or '', 443 if secure else 80)
    return _host_port(*parts) if parts else ''


# Other cluster keys this process accepts from its peers (a rotation's:
# [ursa] accepted_cluster_key_files, set_accepted_keys).
_accepted = ()


def set_accepted_keys(keys):
    """Accept ``keys`` besides this process's own cluster key from peers
    (REST signatures as admin, data connections, tickets)."""
    global _accepted
    _accepted = tuple(keys)


def keys_accepted(key):
    """``key`` (the cluster key this process uses) and the others it
    accepts from its peers, in that order."""
    return (key,) + tuple(k for k in _accepted if k != key)


def load_accepted_keys(paths):
    """The keys in ``paths`` ([ursa] accepted_cluster_key_files)."""
    return [load_key(p, what='accepted cluster key') for p in paths]


def load_key(path=None, key=None, what='cluster key'):
    """Return the cluster key (or ``what``) as bytes, from ``key`` or
    the file ``path``."""
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
            reason='cannot read the %s file %s: %s'
            % (what, path, e.strerror)) from e
    if len(data) < 16:
        raise exception.InvalidArgument(
            reason='%s in %s is shorter than 16 bytes' % (what, path))
    return data


def create_key_file(path):
    """Write a new random key to ``path`` (mode 0600) unless it exists."""
    if os.path.exists(path):
        return load_key(path)
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
        f.write(key + b'\n')
    return key


def new_key():
    """A new random key, as the key files hold it (64 hex digits)."""
    return secrets.token_hex(KEY_BYTES).encode()


def write_key_file(path, key):
    """Write ``key`` to the new file ``path``, mode 0600 from the start
    (never readable by others, not even for a moment); InvalidArgument if
    it exists or cannot be written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(key + b'\n')
    except FileExistsError:
        raise exception.InvalidArgument(
            reason='%s exists: give another --key-file, or remove it '
                   'first' % path) from None
    except OSError as e:
        raise exception.InvalidArgument(
            reason='cannot write the key file %s: %s' % (path, e.strerror)
        ) from e


def _keystream(wrapping_key, nonce, length):
    # HMAC-SHA256 as a PRF in counter mode.
    out = b''
    counter = 0
    while len(out) < length:
        out += hmac.new(wrapping_key, b'ursa-key-wrap\n%s\n%d'
                        % (nonce, counter), hashlib.sha256).digest()
        counter += 1
    return out[:length]


def wrap_key(wrapping_key, key, nonce=None):
    """(hex of ``key`` encrypted with ``wrapping_key``, hex nonce): how
    ``ursa key create`` and ``rotate`` send a principal's new key, so
    that it does not cross the network in clear even without TLS (the
    request's signature protects it from being altered).  A fresh random
    nonce each time: the same keystream is never used twice."""
    nonce = nonce or secrets.token_hex(NONCE_BYTES)
    stream = _keystream(wrapping_key, nonce.encode(), len(key))
    return bytes(a ^ b for a, b in zip(key, stream, strict=True)).hex(), nonce


def unwrap_key(wrapping_key, wrapped, nonce):
    """The key :func:`wrap_key` wrapped; InvalidArgument unless it is
    what key files hold (64 hex digits)."""
    if not (isinstance(wrapped, str) and isinstance(nonce, str)
            and _hex(wrapped, 4 * KEY_BYTES)
            and _hex(nonce, NONCE_HEX_DIGITS)):
        raise exception.InvalidArgument(
            reason='"key" must be %d hex digits and "nonce" %d (wrapped '
                   'with auth.wrap_key)' % (4 * KEY_BYTES, NONCE_HEX_DIGITS))
    data = bytes.fromhex(wrapped)
    stream = _keystream(wrapping_key, nonce.lower().encode(), len(data))
    key = bytes(a ^ b for a, b in zip(data, stream, strict=True))
    if not _hex(key.decode('latin-1'), 2 * KEY_BYTES):
        raise exception.InvalidArgument(
            reason='the wrapped key does not unwrap to a key: was it '
                   'wrapped with the key that signed the request?')
    return key.lower()


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


def _mac_v3(key, principal, authority_, timestamp, nonce, method, path,
            query, digest):
    # The principal is checked by valid_principal, the authority comes
    # from authority(): no field holds a newline.
    msg = '\n'.join(('ursa-v3', principal, authority_, '%d' % timestamp,
                     nonce, method.upper(), path, canonical_query(query),
                     digest))
    return hmac.new(key, msg.encode('utf-8', 'surrogateescape'),
                    hashlib.sha256).hexdigest()


def sign(key, method, path, query='', body=b'', now=None, nonce=None,
         principal=None, authority=None):
    """The ``X-Ursa-Auth`` value of one request: ``path`` and ``query``
    exactly as sent (quoted, the query without '?'), ``body`` the exact
    bytes sent.  A new random nonce each call: sign every attempt anew,
    a master refuses a signature it has seen.

    With ``authority`` (the ``host:port`` of the master it is sent to,
    see :func:`authority`), a v3 signature of ``principal`` (``admin``
    if None) with its ``key``; without, a v2 one (the cluster key,
    bound to no master: what tests of the legacy form use)."""
    ts = int(now if now is not None else time.time())
    nonce = nonce or secrets.token_hex(NONCE_BYTES)
    digest = body_digest(body)
    if authority is None and principal is None:
        return 'v2:%d:%s:%s:%s' % (
            ts, nonce, digest,
            _mac_v2(key, ts, nonce, method, path, query, digest))
    principal = principal or ADMIN
    if not valid_principal(principal):
        raise exception.InvalidArgument(
            reason='%r is no principal name: 1 to %d letters, digits, '
                   '".", "-" or "_"' % (principal, PRINCIPAL_MAX))
    return 'v3:%s:%d:%s:%s:%s' % (
        principal, ts, nonce, digest,
        _mac_v3(key, principal, authority or '', ts, nonce, method, path,
                query, digest))


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


def principal_of(value):
    """The principal an ``X-Ursa-Auth`` value names, so that the master
    can look its keys up before :func:`verify`: the field of a v3
    value, ``admin`` for anything else (v1 and v2 sign with the cluster
    key; garbage is refused by :func:`verify`)."""
    if value and value.startswith(V3_PREFIX):
        name = value[len(V3_PREFIX):].split(':', 1)[0]
        if not valid_principal(name):
            raise exception.NotAuthorized(
                reason='malformed %s header: v3 is v3:<principal>:<time>:'
                       '<nonce>:<body sha256>:<mac>, the principal 1 to %d '
                       'letters, digits, ".", "-" or "_"'
                % (HEADER, PRINCIPAL_MAX))
        return name
    return ADMIN


def _fields(fields, form):
    """(time text, nonce, body hash, MAC) of a v2 or v3 value, each
    checked for its form."""
    if len(fields) != 4:
        raise exception.NotAuthorized(
            reason='malformed %s header: %s' % (HEADER, form))
    ts_text, nonce, digest, mac = fields
    if not (_hex(nonce, NONCE_HEX_DIGITS) and _hex(digest, MAC_HEX_DIGITS)
            and _hex(mac, MAC_HEX_DIGITS)):
        raise exception.NotAuthorized(
            reason='malformed %s header: the nonce must be %d hex digits, '
                   'the body hash and the signature %d'
            % (HEADER, NONCE_HEX_DIGITS, MAC_HEX_DIGITS))
    return ts_text, nonce, digest, mac


def verify(key, method, path, query, value, now=None, window=WINDOW,
           replay=None, legacy=False, authority='', names=None,
           unbound=True):
    """Return :class:`Signed` if ``value`` is a fresh, valid signature of
    the request; raise NotAuthorized (401) otherwise.

    ``key``: the key of the principal ``value`` names
    (:func:`principal_of`), or a sequence of keys any of which may have
    signed (a rotated principal's new and previous key); v1 and v2 are
    checked with the first.
    ``path`` and ``query`` are the raw path and query string as received.
    The body is not read here: check it afterwards with
    :func:`check_body` (the MAC covers the hash the header names).
    ``replay``, a :class:`ReplayCache`, refuses a nonce seen before.
    ``legacy``: whether a v1 signature is accepted; ``unbound``: whether
    a v2 one is (it names no master).
    ``authority``: the ``host:port`` the request was sent to
    (:func:`host_authority` of its Host header), which a v3 signature
    covers; ``names``, the authorities this master serves under (None:
    any), refuses one signed for another master.

    Whatever an unauthenticated peer sends ends here as NotAuthorized
    with a message: the header is checked for its form (a time of at
    most ``TS_MAX_DIGITS`` ASCII digits, hex digits of the right count)
    before any arithmetic or comparison that could raise anything else.
    """
    keys = tuple(key) if isinstance(key, (list, tuple)) else (key,)
    if not value or ':' not in value:
        raise exception.NotAuthorized(
            reason='missing %s header: sign requests with your key ([ursa] '
                   'principal_key_file, or the cluster key)' % HEADER)
    if value.startswith(V3_PREFIX):
        return _verify_v3(keys, method, path, query, value, now, window,
                          replay, authority, names)
    if not value.startswith(VERSION_PREFIX):
        return _verify_v1(keys[0], method, path, value, now, window,
                          legacy)
    ts_text, nonce, digest, mac = _fields(
        value[len(VERSION_PREFIX):].split(':'),
        'v2 is v2:<time>:<nonce>:<body sha256>:<mac>')
    ts = _timestamp(ts_text, now, window)
    # Hex digits in either case, as in v1; one spelling is signed and
    # remembered.
    nonce, digest = nonce.lower(), digest.lower()
    expected = _mac_v2(keys[0], ts, nonce, method, path, query, digest)
    if not hmac.compare_digest(mac.lower(), expected):
        raise exception.NotAuthorized(
            reason='bad signature: wrong cluster key, or the request was '
                   'changed after it was signed')
    if not unbound:
        raise exception.NotAuthorized(
            reason='%s v2 signature refused (it names no principal and no '
                   'master, so it could be replayed to another master): '
                   'upgrade this client, or set [ursa_master] '
                   'accept_legacy_signatures = true until every client is '
                   'upgraded' % HEADER)
    if replay is not None:
        replay.add(nonce, ts + window, now)
    return Signed(2, digest, ADMIN, keys[0])


def _verify_v3(keys, method, path, query, value, now, window, replay,
               authority_, names):
    principal = principal_of(value)
    rest = value[len(V3_PREFIX) + len(principal) + 1:]
    ts_text, nonce, digest, mac = _fields(
        rest.split(':'),
        'v3 is v3:<principal>:<time>:<nonce>:<body sha256>:<mac>')
    ts = _timestamp(ts_text, now, window)
    nonce, digest, mac = nonce.lower(), digest.lower(), mac.lower()
    authority_ = authority_ or ''
    used = None
    for key in keys:
        # Every key is tried (no early exit), so the time taken does
        # not tell which one matched.
        expected = _mac_v3(key, principal, authority_, ts, nonce, method,
                           path, query, digest)
        if hmac.compare_digest(mac, expected) and used is None:
            used = key
    if used is None:
        raise exception.NotAuthorized(
            reason='bad signature: wrong key for principal %r (rotated or '
                   'revoked? see "ursa key list"), the request was changed '
                   'after it was signed, or it was sent to another address '
                   'than the one signed' % principal)
    if names is not None and authority_ not in names:
        raise exception.NotAuthorized(
            reason='this request was signed for the master at %r, which is '
                   'not this master (it serves as %s): send it to the '
                   'master it was signed for, or add that name to '
                   '[ursa_master] signature_names if it is this master\'s'
            % (authority_, ', '.join(sorted(names)) or 'no name'))
    if replay is not None:
        replay.add(nonce, ts + window, now)
    return Signed(3, digest, principal, used)


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
