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
    | readable: (volume 16 bytes | snapshot sequence u64) each
    | principal len u8 + UTF-8 | host len u8 + UTF-8

``generation`` 0: a read-only ticket bound to no lease (it lasts until it
expires).  A readable volume other than the ticket's own is a clone
parent: it may be read only as its snapshot of the sequence named (the
snapshot the clone was made from), never its current data nor an older
snapshot.
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
MAX_TICKET = 2 + 8 * 3 + 16 + 2 + MAX_READABLE * 24 + 2 * 256
_HEAD = struct.Struct('!BBQQQ16sH')
_READABLE = struct.Struct('!16sQ')
_KEY_LABEL = b'ursa-ticket-key-v1'
_WRAP_LABEL = b'ursa-ticket-wrap'
RETICKET_LABEL = b'ursa-reticket'


@dataclasses.dataclass(frozen=True)
class Ticket:
    """A decoded ticket.  ``readable``: {volume id: the snapshot
    sequence it may be read at}, its own volume included with None (any
    sequence, the current data too)."""

    volume: str
    generation: int
    expires: int
    issued: int
    rights: int
    readable: dict
    principal: str
    host: str

    def may_read(self, volume, snap):
        """Whether a READ of ``volume`` at snapshot sequence ``snap`` (0:
        its current data) is within this ticket: a parent at the sequence
        named only.  Below it is an older snapshot of the parent (what it
        held before, maybe overwritten since on purpose), which no clone
        reads; so a parent reached at two sequences reads at the higher
        only (the layout names one per volume)."""
        if volume == self.volume:
            return True
        top = self.readable.get(volume)
        return top is not None and snap == top

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
    """A ticket's bytes.  ``readable``: the clone parents it may read,
    beyond ``volume``, as (volume id, snapshot sequence) pairs
    or a dict of them."""
    others = dict(readable.items() if isinstance(readable, dict)
                  else readable)
    others.pop(volume, None)
    if len(others) > MAX_READABLE:
        raise exception.InvalidArgument(
            reason='a ticket names at most %d volumes to read besides its '
                   'own, not %d' % (MAX_READABLE, len(others)))
    if any(not 0 < seq < 2 ** 64 for seq in others.values()):
        raise exception.InvalidArgument(
            reason='a parent is read at a snapshot sequence of 1 or more')
    if not rights & (RIGHT_READ | RIGHT_WRITE) or rights & ~(
            RIGHT_READ | RIGHT_WRITE):
        raise exception.InvalidArgument(reason='bad ticket rights %r'
                                               % rights)
    issued = int(time.time()) if issued is None else int(issued)
    return (_HEAD.pack(VERSION, rights, generation, int(expires), issued,
                       uuid.UUID(volume).bytes, len(others))
            + b''.join(_READABLE.pack(uuid.UUID(r).bytes, seq)
                       for r, seq in others.items())
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
    end = pos + _READABLE.size * n
    if len(raw) < end + 2:
        raise exception.ProtocolError(reason='ticket cut short')
    own = str(uuid.UUID(bytes=vol))
    readable = {}
    for i in range(pos, end, _READABLE.size):
        other, seq = _READABLE.unpack_from(raw, i)
        if not seq:
            raise exception.ProtocolError(
                reason='ticket names a parent at snapshot sequence 0')
        readable[str(uuid.UUID(bytes=other))] = seq
    readable[own] = None
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
    return Ticket(own, gen, expires, issued, rights, readable, texts[0],
                  texts[1])


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
