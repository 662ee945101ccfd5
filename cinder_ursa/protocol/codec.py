"""Sans-I/O codec of the Ursa data protocol (bytes <-> typed messages).

Every frame starts with a 20-byte header, all integers big-endian::

    0      4        5        6        8               16       20
    +------+--------+--------+--------+---------------+--------+
    | URSA | ver=1  | opcode | flags  | request id    | length |
    +------+--------+--------+--------+---------------+--------+

``length`` counts the bytes after the header.  A reply carries the opcode of
its request with the high bit set and the same request id, and its body
starts with a 16-bit status (0 = success).  A failed reply's body is the
status followed by a UTF-8 message.

Connection life: the server speaks first with CHALLENGE (32 random bytes);
the client answers AUTH with its own nonce and
HMAC-SHA256(key, "ursa-client" + server nonce + client nonce); the server
replies AUTH_OK with HMAC-SHA256(key, "ursa-server" + client nonce + server
nonce), proving it holds the key too.  Nothing else is accepted before that:
a server judges a frame by its header alone (:func:`preauth_body_length`),
so before authentication a peer can make it buffer 84 bytes, never the
64 MiB a header may claim.

A server that closes a connection it found idle first sends GOAWAY (an
unsolicited frame of request id 0): its peer takes no new request to that
connection, and what it already sent is still answered (see
transport/aio.py).

This module does no I/O; it is used by the asyncio transport and by tests.
"""

import functools
import hashlib
import hmac
import struct
import uuid

from cinder_ursa import exception
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.protocol.chunkfile import ENTRY

MAGIC = b'URSA'
VERSION = 1
HEADER = struct.Struct('!4sBBHQI')
HEADER_SIZE = HEADER.size  # 20
REPLY = 0x80
NONCE_SIZE = 32
MAC_SIZE = 32

# Largest body accepted: a 64 MiB data payload plus room for its fields.
MAX_BODY = 64 * 1024 * 1024 + 4096

# Opcodes.
CHALLENGE = 0x01
AUTH = 0x02
AUTH_OK = 0x03
# AUTH with a ticket instead of the cluster key (protocol/tickets.py): the
# client's nonce, its MAC under the ticket's session key, the ticket.
AUTH_TICKET = 0x04
READ = 0x10
WRITE = 0x11
REPLICATE = 0x12
FLUSH = 0x13
FENCE = 0x14
DELETE = 0x15
CHUNK_INFO = 0x16
SNAPSHOT = 0x17
REVERT = 0x18
INVENTORY = 0x19
REPAIR = 0x1A
REBUILD = 0x1B
ENTRIES = 0x1C
RESYNC = 0x1D
# A master's term, once per connection before its commands: a chunk server
# refuses every request of a connection whose term is older than the
# newest it has seen (a deposed leader is fenced; see protocol/control).
TERM = 0x1E
# Are you there?  Answered by the transport at once, whatever the requests
# before it wait for: a caller whose requests take long asks it to tell a
# slow server from a hung one (see transport/aio.py).
PING = 0x1F
# Server to client, unsolicited, request id 0: this connection was idle
# and is about to be closed; send new requests on a new one.  A client
# that does not know it ignores it (no request has id 0).
GOAWAY = 0x20
# On a connection authenticated with a ticket: replace it with a renewed
# one (its MAC over the connection's nonces, the ticket).
TICKET = 0x21

OPCODE_NAMES = {
    CHALLENGE: 'CHALLENGE', AUTH: 'AUTH', AUTH_OK: 'AUTH_OK', READ: 'READ',
    WRITE: 'WRITE', REPLICATE: 'REPLICATE', FLUSH: 'FLUSH', FENCE: 'FENCE',
    DELETE: 'DELETE', CHUNK_INFO: 'CHUNK_INFO', SNAPSHOT: 'SNAPSHOT',
    REVERT: 'REVERT', INVENTORY: 'INVENTORY', REPAIR: 'REPAIR',
    REBUILD: 'REBUILD', ENTRIES: 'ENTRIES', RESYNC: 'RESYNC', TERM: 'TERM',
    PING: 'PING', GOAWAY: 'GOAWAY', AUTH_TICKET: 'AUTH_TICKET',
    TICKET: 'TICKET',
}

# Request flags.
FLAG_FUA = 0x0001        # WRITE/REPLICATE: durable before the reply
FLAG_ZERO = 0x0002       # WRITE/REPLICATE: no payload, the range is zeroed
FLAG_IF_ABSENT = 0x0004  # WRITE/REPLICATE: copy-up, only unwritten blocks
FLAG_STATES = 0x0008     # READ: the reply carries each block's state
FLAG_MAP_ONLY = 0x0010   # READ: states only, no data
FLAG_GC = 0x0020         # SNAPSHOT: drop blocks no live snapshot needs
FLAG_DRY_RUN = 0x0040    # SNAPSHOT with FLAG_GC: only count them
# READ: blocks as stored, with their metadata entries and no checksum
# verification (of the head, or of the layer of sequence ``snap``);
# REPLICATE: store these entries and blocks as they are (a repair, a
# copy).  Block aligned.
FLAG_RAW = 0x0080
FLAG_DEEP = 0x0100       # CHUNK_INFO: read every block, report torn ones
# REPLICATE with FLAG_RAW: the blocks are those of the snapshot layer of
# sequence ``seq``, not of the head.
FLAG_LAYER = 0x0200
# ENTRIES: the copy here is to be brought up to date: it serves no reads
# from now on (its stale mark, if any, is cleared).
FLAG_JOIN = 0x0400
# READ with FLAG_MAP_ONLY: which blocks changed since a snapshot.  The
# body carries one more field, the sequence ``since`` of the older
# snapshot; the reply's byte per block is UNCHANGED for a block whose
# content, as ``snap`` sees it, was written before ``since``, else
# CHANGED | its state (absent, data or zero; protocol/chunkfile.py).
# Only servers that say CAP_SINCE understand it.
FLAG_SINCE = 0x0800

# AUTH_OK flags: what the server understands beyond the first release
# (a peer older than a flag sends 0, and is not asked for it).
CAP_PING = 0x0001        # PING is answered (older servers close on it)
CAP_SINCE = 0x0002       # READ with FLAG_SINCE is understood

# Reply status values: one table, both directions.
OK = 0
STATUS_CODES = {
    1: 'invalid_argument',
    2: 'protocol_error',
    3: 'not_authorized',
    4: 'not_found',
    5: 'no_space',
    6: 'insufficient_replicas',
    7: 'stale_epoch',
    8: 'stale_replica',
    9: 'fenced',
    10: 'checksum_error',
    11: 'out_of_range',
    12: 'internal',
    13: 'connection_error',
    14: 'timeout',
    15: 'stale_snapshot',
    16: 'unavailable',
    17: 'disk_error',
    18: 'conflict',
    19: 'not_leader',
}
STATUS_BY_CODE = {v: k for k, v in STATUS_CODES.items()}


# Fixed parts of the request bodies.
# volume, index, epoch, offset, length, snapshot (0: the current data)
_READ = struct.Struct('!16sQQIIQ')
# ... then, with FLAG_SINCE, the older snapshot's sequence
_READ_SINCE = struct.Struct('!16sQQIIQQ')
# volume, index, epoch, generation, snapshot sequence, offset, length,
# replica count, min replicas
_WRITE = struct.Struct('!16sQQQQIIBB2x')
# volume, index, epoch, generation, snapshot sequence, offset, length,
# preserve floor (blocks last written before it are preserved)
_REPLICATE = struct.Struct('!16sQQQQIIQ')
_FLUSH = struct.Struct('!16s')             # volume
_STATUS = struct.Struct('!H')
_WRITE_OK = struct.Struct('!HQ')           # status, current epoch
_STATES = struct.Struct('!HI')             # status, block count
_U64 = struct.Struct('!Q')
_U32 = struct.Struct('!I')


class Frame:
    """One decoded frame; ``body`` is a memoryview into the receive buffer."""

    __slots__ = ('opcode', 'flags', 'req_id', 'body')

    def __init__(self, opcode, flags, req_id, body):
        self.opcode = opcode
        self.flags = flags
        self.req_id = req_id
        self.body = body

    @property
    def is_reply(self):
        return bool(self.opcode & REPLY)

    def __repr__(self):
        name = OPCODE_NAMES.get(self.opcode & ~REPLY, hex(self.opcode))
        kind = ' reply' if self.is_reply else ''
        return '<Frame %s%s id=%d len=%d>' % (name, kind, self.req_id,
                                                len(self.body))


def header(opcode, req_id, length, flags=0):
    return HEADER.pack(MAGIC, VERSION, opcode, flags, req_id, length)


def _frame(opcode, req_id, body, flags=0):
    return header(opcode, req_id, len(body), flags) + body


def parse_header(buf, pos=0, max_body=MAX_BODY):
    """Validate the header at ``buf[pos:]``; return (opcode, flags,
    request id, body length) or raise ProtocolError."""
    fields = HEADER.unpack_from(buf, pos)
    return fields[2], fields[3], fields[4], body_length(fields, max_body)


def body_length(fields, max_body=MAX_BODY):
    """The body length of an unpacked header (magic, version, opcode,
    flags, request id, length); ProtocolError if it is not ours."""
    magic, version, _, _, _, length = fields
    if magic != MAGIC:
        raise exception.ProtocolError(reason='bad magic %r' % bytes(magic))
    if version != VERSION:
        raise exception.ProtocolError(
            reason='unsupported protocol version %d' % version)
    if length > max_body:
        raise exception.ProtocolError(
            reason='frame of %d bytes exceeds the limit of %d'
            % (length, max_body))
    return length


AUTH_BODY = NONCE_SIZE + MAC_SIZE   # the only body before authentication
# ... but for AUTH_TICKET's, which carries a ticket behind them.
MAX_AUTH_TICKET_BODY = AUTH_BODY + 2304    # >= tickets.MAX_TICKET


def preauth_body_length(fields):
    """:func:`body_length` of a frame received before authentication:
    only AUTH, with a body of exactly :data:`AUTH_BODY` bytes, or
    AUTH_TICKET, with at most :data:`MAX_AUTH_TICKET_BODY`, is accepted.
    Decided from the header, before any byte of the body is received
    (let alone a buffer allocated for it): an unauthenticated peer
    cannot make a server hold more than one such frame."""
    length = body_length(fields)
    if fields[2] == AUTH_TICKET:
        if not AUTH_BODY < length <= MAX_AUTH_TICKET_BODY:
            raise exception.ProtocolError(
                reason='AUTH_TICKET body of %d bytes: it is %d to %d '
                       '(nonce, MAC and ticket)'
                % (length, AUTH_BODY + 1, MAX_AUTH_TICKET_BODY))
        return length
    if fields[2] != AUTH:
        raise exception.NotAuthorized(
            reason='authenticate with the cluster key or a ticket first')
    if length != AUTH_BODY:
        raise exception.ProtocolError(
            reason='AUTH body of %d bytes: it is %d (nonce and MAC)'
            % (length, AUTH_BODY))
    return length


class FrameDecoder:
    """Turns a byte stream into frames, validating every header.

    ``feed()`` returns the complete frames received so far; it raises
    :class:`ProtocolError` on a bad magic, version or length, after which
    the connection must be dropped.
    """

    def __init__(self, max_body=MAX_BODY):
        self._buf = bytearray()
        self._max_body = max_body
        self._need = None  # parsed header of the frame being assembled

    def feed(self, data):
        self._buf += data
        frames = []
        buf = self._buf
        pos = 0
        end = len(buf)
        while True:
            if self._need is None:
                if end - pos < HEADER_SIZE:
                    break
                self._need = parse_header(buf, pos, self._max_body)
                pos += HEADER_SIZE
            opcode, flags, req_id, length = self._need
            if end - pos < length:
                break
            body = bytes(buf[pos:pos + length])
            pos += length
            self._need = None
            frames.append(Frame(opcode, flags, req_id, memoryview(body)))
        if pos:
            del buf[:pos]
        return frames


def _uuid_bytes(volume_id):
    if isinstance(volume_id, uuid.UUID):
        return volume_id.bytes
    if isinstance(volume_id, bytes) and len(volume_id) == 16:
        return volume_id
    return _parse_uuid(str(volume_id))


@functools.lru_cache(maxsize=4096)
def _parse_uuid(text):
    # Every request names its volume: parse each id once, not per frame.
    return uuid.UUID(text).bytes


def _uuid_str(raw):
    return _format_uuid(bytes(raw))


@functools.lru_cache(maxsize=4096)
def _format_uuid(raw):
    return str(uuid.UUID(bytes=raw))


def _check(body, st, name):
    if len(body) < st.size:
        raise exception.ProtocolError(
            reason='%s body of %d bytes is shorter than %d'
            % (name, len(body), st.size))


# --- authentication -------------------------------------------------------

def client_mac(key, server_nonce, client_nonce):
    return hmac.new(key, b'ursa-client' + server_nonce + client_nonce,
                    hashlib.sha256).digest()


def server_mac(key, server_nonce, client_nonce):
    return hmac.new(key, b'ursa-server' + client_nonce + server_nonce,
                    hashlib.sha256).digest()


def encode_challenge(nonce):
    return _frame(CHALLENGE, 0, nonce)


def encode_auth(client_nonce, mac):
    return _frame(AUTH, 0, client_nonce + mac)


def decode_auth(body):
    if len(body) != AUTH_BODY:
        raise exception.ProtocolError(reason='AUTH body has wrong size')
    return bytes(body[:NONCE_SIZE]), bytes(body[NONCE_SIZE:])


def encode_auth_ok(mac, flags=0):
    return _frame(AUTH_OK, 0, mac, flags)


def encode_auth_ticket(client_nonce, mac, ticket):
    return _frame(AUTH_TICKET, 0, client_nonce + mac + ticket)


def decode_auth_ticket(body):
    """(client nonce, MAC, ticket bytes) of an AUTH_TICKET."""
    if not AUTH_BODY < len(body) <= MAX_AUTH_TICKET_BODY:
        raise exception.ProtocolError(
            reason='AUTH_TICKET body has wrong size')
    body = bytes(body)
    return (body[:NONCE_SIZE], body[NONCE_SIZE:AUTH_BODY],
            body[AUTH_BODY:])


def encode_ticket(req_id, mac, ticket):
    return _frame(TICKET, req_id, mac + ticket)


def decode_ticket(body):
    """(MAC, ticket bytes) of a TICKET."""
    if not MAC_SIZE < len(body) <= MAX_AUTH_TICKET_BODY - NONCE_SIZE:
        raise exception.ProtocolError(reason='TICKET body has wrong size')
    body = bytes(body)
    return body[:MAC_SIZE], body[MAC_SIZE:]


# --- requests -------------------------------------------------------------

class ReadRequest:
    __slots__ = ('volume', 'index', 'epoch', 'offset', 'length', 'snap',
                 'since')

    def __init__(self, volume, index, epoch, offset, length, snap=0,
                 since=None):
        self.volume, self.index, self.epoch = volume, index, epoch
        self.offset, self.length, self.snap = offset, length, snap
        self.since = since


def encode_read(req_id, volume, index, epoch, offset, length, snap=0,
                flags=0, since=None):
    """READ of the current data, or of snapshot ``snap``; with FLAG_STATES
    the reply also says which blocks are absent, data or zeros.  With
    ``since`` (FLAG_SINCE and FLAG_MAP_ONLY are then set) the reply says
    which blocks changed after the snapshot of that sequence."""
    if since is None:
        return _frame(READ, req_id, _READ.pack(
            _uuid_bytes(volume), index, epoch, offset, length, snap), flags)
    return _frame(READ, req_id, _READ_SINCE.pack(
        _uuid_bytes(volume), index, epoch, offset, length, snap, since),
        flags | FLAG_SINCE | FLAG_MAP_ONLY)


def decode_read(body, flags=0):
    if flags & FLAG_SINCE:
        if not flags & FLAG_MAP_ONLY:
            raise exception.ProtocolError(
                reason='READ with FLAG_SINCE reads states only: it needs '
                       'FLAG_MAP_ONLY')
        _check(body, _READ_SINCE, 'READ')
        vol, index, epoch, offset, length, snap, since = \
            _READ_SINCE.unpack_from(body)
        if since == 0 or (snap and since >= snap):
            raise exception.InvalidArgument(
                reason='changes since snapshot sequence %d as snapshot %d '
                       'sees them: the older snapshot comes first, and '
                       'it is not 0' % (since, snap))
        return ReadRequest(_uuid_str(vol), index, epoch, offset, length,
                           snap, since)
    _check(body, _READ, 'READ')
    vol, index, epoch, offset, length, snap = _READ.unpack_from(body)
    return ReadRequest(_uuid_str(vol), index, epoch, offset, length, snap)


class WriteRequest:
    __slots__ = ('volume', 'index', 'epoch', 'generation', 'seq', 'offset',
                 'length', 'replicas', 'data', 'flags', 'min_replicas',
                 'floor', 'preserved')

    def __init__(self, volume, index, epoch, generation, seq, offset,
                 length, replicas, data, flags=0, min_replicas=1,
                 floor=None):
        self.volume, self.index, self.epoch = volume, index, epoch
        self.generation, self.seq, self.offset = generation, seq, offset
        self.length = length
        self.replicas, self.data, self.flags = replicas, data, flags
        self.min_replicas = min_replicas
        # Blocks last written before ``floor`` are preserved (the primary
        # lowers it below ``seq`` when the newest snapshots were deleted).
        self.floor = seq if floor is None else floor
        # Not sent: the chunk server that got it already copied (and
        # synced) the blocks it overwrites, in a batch with the write
        # ahead of it (see chunkserver/replication.py).
        self.preserved = False

    @property
    def fua(self):
        return bool(self.flags & FLAG_FUA)

    @property
    def zero(self):
        return bool(self.flags & FLAG_ZERO)

    @property
    def if_absent(self):
        return bool(self.flags & FLAG_IF_ABSENT)


def _payload(flags, length, data):
    if flags & FLAG_ZERO:
        return b''
    if len(data) != length:
        raise exception.InvalidArgument(reason='length %d but %d bytes'
                                        % (length, len(data)))
    return data


def encode_write(req_id, volume, index, epoch, generation, offset, replicas,
                 data, fua=False, min_replicas=1, seq=0, flags=0,
                 length=None):
    """Return the frame as a list of buffers (the data is not copied).

    ``replicas`` lists the server ids of the replica set, primary first;
    the primary refuses to acknowledge the write on fewer than
    ``min_replicas`` of them.  With FLAG_ZERO, ``data`` is ignored and
    ``length`` bytes are zeroed.
    """
    flags |= FLAG_FUA if fua else 0
    length = len(data) if length is None else length
    data = _payload(flags, length, data)
    fixed = _WRITE.pack(_uuid_bytes(volume), index, epoch, generation, seq,
                        offset, length, len(replicas), min_replicas)
    fixed += b''.join(_U32.pack(r) for r in replicas)
    hdr = header(WRITE, req_id, len(fixed) + len(data), flags)
    return [hdr + fixed, data]


def _write_data(body, start, flags, length, name):
    data = body[start:]
    if flags & FLAG_ZERO:
        if len(data):
            raise exception.ProtocolError(reason='%s with FLAG_ZERO carries '
                                          'a payload' % name)
    elif flags & FLAG_RAW:
        if length % BLOCK or len(data) != length + length // BLOCK * ENTRY:
            raise exception.ProtocolError(
                reason='%s with FLAG_RAW says %d bytes but carries %d'
                % (name, length, len(data)))
    elif len(data) != length:
        raise exception.ProtocolError(
            reason='%s says %d bytes but carries %d' % (name, length,
                                                         len(data)))
    return data


def decode_write(body, flags=0):
    _check(body, _WRITE, 'WRITE')
    (vol, index, epoch, gen, seq, offset, length, n,
     min_rep) = _WRITE.unpack_from(body)
    start = _WRITE.size + 4 * n
    if len(body) < start:
        raise exception.ProtocolError(reason='WRITE replica list truncated')
    replicas = [_U32.unpack_from(body, _WRITE.size + 4 * i)[0]
                for i in range(n)]
    data = _write_data(body, start, flags, length, 'WRITE')
    return WriteRequest(_uuid_str(vol), index, epoch, gen, seq, offset,
                        length, replicas, data, flags, min_rep)


def encode_replicate(req_id, req, epoch):
    """Forward the WriteRequest ``req`` to another replica."""
    flags = req.flags & (FLAG_FUA | FLAG_ZERO | FLAG_IF_ABSENT | FLAG_RAW |
                         FLAG_LAYER)
    fixed = _REPLICATE.pack(_uuid_bytes(req.volume), req.index, epoch,
                            req.generation, req.seq, req.offset, req.length,
                            req.floor)
    data = b'' if flags & FLAG_ZERO else req.data
    hdr = header(REPLICATE, req_id, len(fixed) + len(data), flags)
    return [hdr + fixed, data]


def decode_replicate(body, flags=0):
    _check(body, _REPLICATE, 'REPLICATE')
    (vol, index, epoch, gen, seq, offset, length,
     floor) = _REPLICATE.unpack_from(body)
    if floor > seq:
        raise exception.ProtocolError(reason='REPLICATE preserve floor %d is '
                                      'above its sequence %d' % (floor, seq))
    data = _write_data(body, _REPLICATE.size, flags, length, 'REPLICATE')
    return WriteRequest(_uuid_str(vol), index, epoch, gen, seq, offset,
                        length, [], data, flags, floor=floor)


def encode_ping(req_id):
    return _frame(PING, req_id, b'')


def encode_goaway():
    return _frame(GOAWAY, 0, b'')


def encode_flush(req_id, volume):
    return _frame(FLUSH, req_id, _FLUSH.pack(_uuid_bytes(volume)))


def decode_flush(body):
    _check(body, _FLUSH, 'FLUSH')
    return _uuid_str(_FLUSH.unpack_from(body)[0])


# --- replies --------------------------------------------------------------

def encode_ok(opcode, req_id, payload=b''):
    return _frame(opcode | REPLY, req_id, _STATUS.pack(OK) + payload)


def encode_read_ok(req_id, data, states=None):
    """READ reply as a list of buffers; ``data`` is not copied.  With
    ``states`` (one byte per block touched) the body is status, block
    count, states, then the data."""
    if states is None:
        return [header(READ | REPLY, req_id, 2 + len(data))
                + _STATUS.pack(OK), data]
    return [header(READ | REPLY, req_id, _STATES.size + len(states)
                   + len(data)) + _STATES.pack(OK, len(states)) + states,
            data]


def encode_read_raw_ok(req_id, entries, data):
    """READ reply made with FLAG_RAW: status, block count, the entries,
    then the blocks (not copied)."""
    n = len(entries) // ENTRY
    return [header(READ | REPLY, req_id, _STATES.size + len(entries)
                   + len(data)) + _STATES.pack(OK, n) + entries, data]


def decode_read_raw(body):
    """(entries, data) of a READ reply made with FLAG_RAW."""
    reply_status(body)
    _check(body, _STATES, 'READ reply')
    n = _STATES.unpack_from(body)[1]
    if len(body) != _STATES.size + n * (ENTRY + BLOCK):
        raise exception.ProtocolError(reason='raw READ reply of %d bytes '
                                      'for %d blocks' % (len(body), n))
    start = _STATES.size + n * ENTRY
    return bytes(body[_STATES.size:start]), body[start:]


def decode_read_states(body):
    """(states, data) of a READ reply made with FLAG_STATES."""
    reply_status(body)
    _check(body, _STATES, 'READ reply')
    n = _STATES.unpack_from(body)[1]
    if len(body) < _STATES.size + n:
        raise exception.ProtocolError(reason='READ reply states truncated')
    return (bytes(body[_STATES.size:_STATES.size + n]),
            body[_STATES.size + n:])


def encode_write_ok(req_id, epoch, opcode=WRITE):
    return _frame(opcode | REPLY, req_id, _WRITE_OK.pack(OK, epoch))


def encode_error(opcode, req_id, exc):
    """Reply to request ``opcode`` with the error ``exc``."""
    code = getattr(exc, 'code', 'internal')
    status = STATUS_BY_CODE.get(code, STATUS_BY_CODE['internal'])
    msg = str(exc).encode('utf-8', 'replace')[:4000]
    return _frame(opcode | REPLY, req_id, _STATUS.pack(status) + msg)


def reply_status(body):
    """Return the status of a reply body, raising the remote error if any."""
    if len(body) < 2:
        raise exception.ProtocolError(reason='reply without status')
    status = _STATUS.unpack_from(body)[0]
    if status != OK:
        code = STATUS_CODES.get(status, 'internal')
        message = bytes(body[2:]).decode('utf-8', 'replace')
        raise exception.from_code(code, message)
    return body[2:]


def decode_write_ok(body):
    payload = reply_status(body)
    if len(payload) < 8:
        raise exception.ProtocolError(reason='WRITE reply truncated')
    return struct.unpack_from('!Q', payload)[0]


