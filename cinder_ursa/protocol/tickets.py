"""Tickets: what a client that does not hold the cluster key may do on the
data protocol, issued by the master (sans I/O).

A hypervisor's gateway (``ursa-nbd``, ``ursa-attach``) or the Cinder
driver signs its REST requests with its own principal's key and never
needs the cluster key: for each volume it opens, the master issues a
*ticket*, bound to the volume, the volumes it may read besides (the
clone parents its reads reach), the lease generation it writes under,
its rights, the principal and the host, and an expiry.  Chunk servers
take a connection authenticated with a ticket for that scope only (see
``chunkserver/server.py``); a volume's newer lease generation (fencing,
a forced takeover: the master pushes it to every chunk server) revokes
every ticket of an older one at once.

Keys, all HMAC-SHA256 (no encryption, the standard library only):

* the **ticket key**, ``HMAC(cluster key, "ursa-ticket-key-v1")``:
  the master and the chunk servers derive it; no client has it;
* a ticket's **session key**, ``HMAC(ticket key, ticket bytes)``: the
  chunk server derives it from the ticket the client presents; the
  client gets it from the master, wrapped with its principal's key
  (``session XOR HMAC(principal key, "ursa-ticket-wrap" + ticket)``), so
  a REST reply seen on the wire does not reveal it.

A ticket is then presented as Kerberos and cephx do: AUTH_TICKET carries
the client's nonce, ``client_mac(session key, ...)`` over the server's
challenge, and the ticket; the server derives the session key, checks
the MAC and answers AUTH_OK with ``server_mac(session key, ...)``, which
proves to the client that the server holds the cluster key.  Whoever
copies a ticket without its session key cannot use it.  TICKET, on a
connection so authenticated, replaces its ticket with a renewed one
(same proof, under the new session key) without a new connection.

Layout (big-endian)::

    version u8 (1) | rights u8 | generation u64 | expires u64 (unix s)
    | issued u64 (unix s) | volume 16 bytes | readable count u16
    | readable volumes 16 bytes each | principal len u8 + UTF-8
    | host len u8 + UTF-8

``generation`` 0: a read-only ticket bound to no lease (it lasts until it
expires).
"""

import dataclasses
import hashlib
import hmac
import struct
import time
import uuid

from cinder_ursa import exception

VERSION = 1
RIGHT_READ = 0x01
RIGHT_WRITE = 0x02
MAX_READABLE = 64           # clone parents a ticket may name
MAX_TICKET = 2 + 8 * 3 + 16 + 2 + MAX_READABLE * 16 + 2 * 256
_HEAD = struct.Struct('!BBQQQ16sH')
_KEY_LABEL = b'ursa-ticket-key-v1'
_WRAP_LABEL = b'ursa-ticket-wrap'
RETICKET_LABEL = b'ursa-reticket'


@dataclasses.dataclass(frozen=True)
class Ticket:
    """A decoded ticket.  ``readable``: the volumes it may read, its own
    included (ids as strings)."""

    volume: str
    generation: int
    expires: int
    issued: int
    rights: int
    readable: frozenset
    principal: str
    host: str

    @property
    def writable(self):
        return bool(self.rights & RIGHT_WRITE)

    def expired(self, now=None):
        return (time.time() if now is None else now) >= self.expires


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a client holds for one volume: the ticket's bytes, its session
    key (unwrapped) and the decoded ticket."""

    raw: bytes
    session_key: bytes
    ticket: Ticket


def ticket_key(cluster_key):
    """The key tickets are issued under (master, chunk servers)."""
    return hmac.new(cluster_key, _KEY_LABEL, hashlib.sha256).digest()


def session_key(tkey, raw):
    """A ticket's session key, from the ticket key and its bytes."""
    return hmac.new(tkey, raw, hashlib.sha256).digest()


def _wrapping(principal_key, raw):
    return hmac.new(principal_key, _WRAP_LABEL + raw,
                    hashlib.sha256).digest()


def wrap(principal_key, raw, skey):
    """The session key as the master sends it to the principal."""
    return bytes(a ^ b for a, b in zip(skey, _wrapping(principal_key, raw),
                                       strict=True))


unwrap = wrap       # XOR with the same pad


def _text(name, value):
    b = value.encode('utf-8')
    if len(b) > 255:
        raise exception.InvalidArgument(
            reason='ticket %s is longer than 255 bytes' % name)
    return bytes((len(b),)) + b


def encode(volume, generation, expires, rights, readable=(), principal='',
           host='', issued=None):
    """A ticket's bytes.  ``readable``: the other volumes (ids) it may
    read, beyond ``volume``."""
    others = [r for r in dict.fromkeys(readable) if r != volume]
    if len(others) > MAX_READABLE:
        raise exception.InvalidArgument(
            reason='a ticket names at most %d volumes to read besides its '
                   'own, not %d' % (MAX_READABLE, len(others)))
    if not rights & (RIGHT_READ | RIGHT_WRITE) or rights & ~(
            RIGHT_READ | RIGHT_WRITE):
        raise exception.InvalidArgument(reason='bad ticket rights %r'
                                               % rights)
    issued = int(time.time()) if issued is None else int(issued)
    return (_HEAD.pack(VERSION, rights, generation, int(expires), issued,
                       uuid.UUID(volume).bytes, len(others))
            + b''.join(uuid.UUID(r).bytes for r in others)
            + _text('principal', principal) + _text('host', host))


def decode(raw):
    """The :class:`Ticket` in ``raw``; ProtocolError if it is malformed
    (whether it was issued is the session key's proof, not this)."""
    raw = bytes(raw)
    if len(raw) < _HEAD.size or len(raw) > MAX_TICKET:
        raise exception.ProtocolError(
            reason='ticket of %d bytes' % len(raw))
    version, rights, gen, expires, issued, vol, n = _HEAD.unpack_from(raw)
    if version != VERSION:
        raise exception.ProtocolError(
            reason='ticket version %d (this server knows %d)'
            % (version, VERSION))
    if n > MAX_READABLE:
        raise exception.ProtocolError(reason='ticket names %d volumes' % n)
    pos = _HEAD.size
    end = pos + 16 * n
    if len(raw) < end + 2:
        raise exception.ProtocolError(reason='ticket cut short')
    readable = {str(uuid.UUID(bytes=vol))}
    readable.update(str(uuid.UUID(bytes=raw[i:i + 16]))
                    for i in range(pos, end, 16))
    texts = []
    pos = end
    for _ in range(2):
        if pos >= len(raw):
            raise exception.ProtocolError(reason='ticket cut short')
        size = raw[pos]
        text = raw[pos + 1:pos + 1 + size]
        if len(text) != size:
            raise exception.ProtocolError(reason='ticket cut short')
        try:
            texts.append(text.decode('utf-8'))
        except UnicodeDecodeError:
            raise exception.ProtocolError(
                reason='ticket text is not UTF-8') from None
        pos += 1 + size
    if pos != len(raw):
        raise exception.ProtocolError(reason='ticket has %d trailing bytes'
                                             % (len(raw) - pos))
    if not rights & (RIGHT_READ | RIGHT_WRITE):
        raise exception.ProtocolError(reason='ticket grants nothing')
    return Ticket(str(uuid.UUID(bytes=vol)), gen, expires, issued, rights,
                  frozenset(readable), texts[0], texts[1])


def issue(cluster_key, principal_key, **fields):
    """Master side: a new ticket (``fields`` as :func:`encode`'s), as a
    JSON-ready dict for the principal: ``ticket`` and ``key`` (wrapped
    session key), both hex, and ``expires``."""
    raw = encode(**fields)
    skey = session_key(ticket_key(cluster_key), raw)
    return {'ticket': raw.hex(), 'key': wrap(principal_key, raw, skey).hex(),
            'expires': int(fields['expires'])}


def grant_from(reply, principal_key):
    """Client side: the :class:`Grant` in a master's ``issue`` reply."""
    try:
        raw = bytes.fromhex(reply['ticket'])
        wrapped = bytes.fromhex(reply['key'])
    except (KeyError, TypeError, ValueError) as e:
        raise exception.ProtocolError(
            reason='the master\'s ticket reply is malformed (%s)' % e) from e
    if len(wrapped) != hashlib.sha256().digest_size:
        raise exception.ProtocolError(reason='ticket key of %d bytes'
                                             % len(wrapped))
    return Grant(raw, unwrap(principal_key, raw, wrapped), decode(raw))


def reticket_mac(skey, server_nonce, client_nonce):
    """TICKET's proof: the new ticket's session key over the connection's
    two nonces."""
    return hmac.new(skey, RETICKET_LABEL + server_nonce + client_nonce,
                    hashlib.sha256).digest()
