"""The cluster key and the REST request signature built from it.

Every REST request carries ``X-Ursa-Auth: <unix time>:<hex HMAC-SHA256>``
over the time, the method and the path; the master accepts a signature at
most ``MAX_SKEW`` seconds old.  The key itself never crosses the network.
"""

import hashlib
import hmac
import os
import secrets
import string
import time

from cinder_ursa import exception

HEADER = 'X-Ursa-Auth'
MAX_SKEW = 300
KEY_BYTES = 32
# A UNIX time has 10 digits until 2286; more can only be garbage (and a
# 400-digit one overflowed the float arithmetic of the clock check).
TS_MAX_DIGITS = 12
# A hex SHA-256 digest.
MAC_HEX_DIGITS = 64


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


def _mac(key, timestamp, method, path):
    msg = ('%d\n%s\n%s' % (timestamp, method.upper(), path)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(key, method, path, now=None):
    ts = int(now if now is not None else time.time())
    return '%d:%s' % (ts, _mac(key, ts, method, path))


def verify(key, method, path, value, now=None):
    """Raise NotAuthorized unless ``value`` is a fresh, valid signature.

    Whatever an unauthenticated peer sends ends here as NotAuthorized (401)
    with a message: the header is checked for its form (a time of at most
    ``TS_MAX_DIGITS`` ASCII digits, a MAC of ``MAC_HEX_DIGITS`` hex digits)
    before any arithmetic or comparison that could raise anything else.
    """
    if not value or ':' not in value:
        raise exception.NotAuthorized(
            reason='missing %s header: sign requests with the cluster key'
            % HEADER)
    ts_text, mac = value.split(':', 1)
    if not (ts_text.isascii() and ts_text.isdigit()
            and len(ts_text) <= TS_MAX_DIGITS):
        raise exception.NotAuthorized(
            reason='malformed %s header: the time before ":" must be a '
                   'UNIX time of at most %d digits' % (HEADER, TS_MAX_DIGITS))
    if not (len(mac) == MAC_HEX_DIGITS and mac.isascii()
            and all(c in string.hexdigits for c in mac)):
        raise exception.NotAuthorized(
            reason='malformed %s header: the signature after ":" must be '
                   '%d hex digits (HMAC-SHA256)' % (HEADER, MAC_HEX_DIGITS))
    try:
        ts = int(ts_text)
        now = time.time() if now is None else now
        skew = now - ts
    except (OverflowError, ValueError):
        raise exception.NotAuthorized(
            reason='malformed %s header: the time is no UNIX time' % HEADER)
    if abs(skew) > MAX_SKEW:
        raise exception.NotAuthorized(
            reason='signature time is %d s off; check the clocks (NTP)'
            % int(skew))
    if not hmac.compare_digest(mac.lower(), _mac(key, ts, method, path)):
        raise exception.NotAuthorized(reason='bad signature: wrong cluster '
                                             'key?')
