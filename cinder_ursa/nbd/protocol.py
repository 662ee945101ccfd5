"""The NBD protocol (fixed newstyle), sans I/O: constants, the encoders
and decoders of the handshake's options and of transmission, the checks
every request passes before it reaches a backend, and the one table from
errors to NBD error values.

From the NetworkBlockDevice project's doc/proto.md; the request checks
follow nbdkit's ``validate_request()``.  Only what the gateway implements
is listed; everything else is refused with NBD_REP_ERR_UNSUP or EINVAL.
"""

import errno
import struct

from cinder_ursa import exception

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# Option replies.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 2 ** 31 + 1
REP_ERR_POLICY = 2 ** 31 + 2
REP_ERR_INVALID = 2 ** 31 + 3
REP_ERR_TLS_REQD = 2 ** 31 + 5
REP_ERR_UNKNOWN = 2 ** 31 + 6
REP_ERR_TOO_BIG = 2 ** 31 + 9

# Information types of INFO/GO.
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags.
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# Commands and command flags.
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4
CMD_FLAGS_KNOWN = (CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF |
                   CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO)

# Structured replies.
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2 ** 15 + 1

# Metadata contexts: base:allocation, and QEMU's qemu:dirty-bitmap:NAME
# (QEMU's docs/interop/nbd.txt), one per snapshot: what changed after it.
META_BASE_ALLOCATION = 'base:allocation'
META_ID = 1
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
META_QEMU = 'qemu:'
META_DIRTY_BITMAP = 'qemu:dirty-bitmap:'
STATE_DIRTY = 1 << 0

# NBD error values (the protocol's own numbers, whatever the host's errno).
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

MAX_OPTION_DATA = 64 * 1024
MAX_REQUEST = 32 * 1024 * 1024
MIN_BLOCK = 1
PREFERRED_BLOCK = 4096

HANDSHAKE = struct.Struct('>QQH')
OPTION = struct.Struct('>QII')
OPTION_REPLY = struct.Struct('>QIII')
REQUEST = struct.Struct('>IHHQQI')
SIMPLE_REPLY = struct.Struct('>IIQ')
STRUCTURED_REPLY = struct.Struct('>IHHQI')
EXPORT_NAME_REPLY = struct.Struct('>QH')
_U16 = struct.Struct('>H')
_U32 = struct.Struct('>I')


# --- errors ------------------------------------------------------------------

_OS_ERRORS = {
    errno.EPERM: NBD_EPERM, errno.EROFS: NBD_EPERM,
    errno.EIO: NBD_EIO,
    errno.ENOMEM: NBD_ENOMEM,
    errno.ENOSPC: NBD_ENOSPC, errno.EDQUOT: NBD_ENOSPC,
    errno.EFBIG: NBD_ENOSPC,
    errno.ESHUTDOWN: NBD_ESHUTDOWN,
    errno.EINVAL: NBD_EINVAL,
}


def nbd_error(exc, flags=0):
    """The one table from an exception to an NBD error value.

    ``flags`` are the failed request's: ENOTSUP is only said to a
    WRITE_ZEROES with FAST_ZERO, and EOVERFLOW only to a READ with DF
    (EINVAL otherwise, as the spec and nbdkit have it).  Anything not
    listed is a failure of the storage: EIO.
    """
    if isinstance(exc, exception.NoSpace):
        return NBD_ENOSPC
    if isinstance(exc, (exception.InvalidArgument, exception.OutOfRange)):
        return NBD_EINVAL
    if isinstance(exc, exception.Fenced):
        return NBD_EPERM
    if isinstance(exc, MemoryError):
        return NBD_ENOMEM
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return NBD_ENOTSUP if flags & CMD_FLAG_FAST_ZERO else NBD_EINVAL
        if exc.errno == errno.EOVERFLOW:
            return NBD_EOVERFLOW if flags & CMD_FLAG_DF else NBD_EINVAL
        return _OS_ERRORS.get(exc.errno, NBD_EIO)
    return NBD_EIO


# --- handshake and options --------------------------------------------------

def handshake():
    """The server's greeting: fixed newstyle, NO_ZEROES offered."""
    return HANDSHAKE.pack(NBDMAGIC, IHAVEOPT,
                          FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def decode_client_flags(data):
    """The client's 4 flag bytes; returns whether it asked for NO_ZEROES.
    ProtocolError unless it speaks fixed newstyle and nothing unknown."""
    (cflags,) = _U32.unpack(data)
    if not cflags & FLAG_C_FIXED_NEWSTYLE or \
            cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        raise exception.ProtocolError(
            reason='client flags 0x%x: only fixed newstyle is served'
            % cflags)
    return bool(cflags & FLAG_C_NO_ZEROES)


def decode_option_header(data):
    """(option, length of its data) from an option's 16 header bytes."""
    magic, option, length = OPTION.unpack(data)
    if magic != IHAVEOPT:
        raise exception.ProtocolError(reason='bad option magic 0x%x' % magic)
    if length > MAX_OPTION_DATA:
        raise exception.ProtocolError(
            reason='option data of %d bytes' % length)
    return option, length


def option_reply(option, reply_type, data=b''):
    return OPTION_REPLY.pack(REPLY_MAGIC, option, reply_type,
                             len(data)) + data


def export_name_reply(size, flags, no_zeroes):
    """The reply to NBD_OPT_EXPORT_NAME (124 zero bytes unless the
    client asked for NO_ZEROES)."""
    out = EXPORT_NAME_REPLY.pack(size, flags)
    return out if no_zeroes else out + bytes(124)


def server_reply(name):
    """NBD_REP_SERVER payload of NBD_OPT_LIST: one export name."""
    raw = name.encode('utf-8')
    return _U32.pack(len(raw)) + raw


def decode_info(data):
    """(export name, [information types]) of INFO/GO data; InvalidArgument
    when the lengths do not add up."""
    if len(data) < 6:
        raise exception.InvalidArgument(reason='INFO/GO data too short')
    (nlen,) = _U32.unpack_from(data)
    if nlen > len(data) - 6:
        raise exception.InvalidArgument(reason='export name too long')
    (nreq,) = _U16.unpack_from(data, 4 + nlen)
    if len(data) != 4 + nlen + 2 + 2 * nreq:
        raise exception.InvalidArgument(
            reason='wrong number of information requests')
    name = bytes(data[4:4 + nlen]).decode('utf-8', 'replace')
    requests = list(struct.unpack_from('>%dH' % nreq, data, 6 + nlen))
    return name, requests


def encode_info(name, requests):
    """INFO/GO data (the client's side)."""
    raw = name.encode('utf-8')
    return (_U32.pack(len(raw)) + raw + _U16.pack(len(requests)) +
            b''.join(_U16.pack(r) for r in requests))


def info_export(size, flags):
    return struct.pack('>HQH', INFO_EXPORT, size, flags)


def info_block_size(maximum):
    return struct.pack('>HIII', INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK,
                       maximum)


def decode_meta_context(data):
    """(export name, [queries]) of LIST/SET_META_CONTEXT data;
    InvalidArgument when it does not parse."""
    try:
        (nlen,) = _U32.unpack_from(data)
        pos = 4 + nlen
        if pos > len(data):
            raise struct.error('export name truncated')
        name = bytes(data[4:pos]).decode('utf-8')
        (nq,) = _U32.unpack_from(data, pos)
        pos += 4
        queries = []
        for _ in range(nq):
            (qlen,) = _U32.unpack_from(data, pos)
            pos += 4
            if pos + qlen > len(data):
                raise struct.error('query truncated')
            queries.append(bytes(data[pos:pos + qlen]).decode('utf-8'))
            pos += qlen
        if pos != len(data):
            raise struct.error('trailing bytes')
    except (struct.error, UnicodeDecodeError) as e:
        raise exception.InvalidArgument(
            reason='bad meta context request: %s' % e) from e
    return name, queries


def encode_meta_context(name, queries):
    """LIST/SET_META_CONTEXT data (the client's side)."""
    out = [server_reply(name), _U32.pack(len(queries))]
    out += [server_reply(q) for q in queries]
    return b''.join(out)


def meta_context_reply(context_id, name):
    """NBD_REP_META_CONTEXT payload."""
    return _U32.pack(context_id) + name.encode('utf-8')


def match_meta_context(queries, listing):
    """Whether the queries select base:allocation (LIST: also 'base:' or
    no query at all)."""
    if listing and not queries:
        return True
    return any(q == META_BASE_ALLOCATION or (listing and q == 'base:')
               for q in queries)


def lists_every_bitmap(queries, listing):
    """Whether a LIST asks for every dirty bitmap: no query, 'qemu:' or
    'qemu:dirty-bitmap:' (a SET selects nothing with the last two)."""
    return listing and (not queries or any(
        q in (META_QEMU, META_DIRTY_BITMAP) for q in queries))


def bitmap_names(queries):
    """The leaf names of the 'qemu:dirty-bitmap:NAME' queries, each
    once, in their order."""
    out = []
    for q in queries:
        leaf = q[len(META_DIRTY_BITMAP):]
        if q.startswith(META_DIRTY_BITMAP) and leaf and leaf not in out:
            out.append(leaf)
    return out


def match_dirty_bitmaps(queries, bitmaps, listing):
    """The names of ``bitmaps`` (the leaf names that exist, in their
    order) the queries select, each once: every one for a LIST that
    asks for all (:func:`lists_every_bitmap`), else those named.  A
    name that does not exist selects nothing."""
    if lists_every_bitmap(queries, listing):
        return list(bitmaps)
    return [n for n in bitmap_names(queries) if n in bitmaps]


# --- transmission ------------------------------------------------------------

def transmission_flags(read_only, flush, fua, trim, zero, fast_zero,
                       multi_conn, cache, df=False):
    """Transmission flags from what an export can do (``df``: structured
    replies were negotiated and reads are never fragmented)."""
    f = TF_HAS_FLAGS
    for on, bit in ((read_only, TF_READ_ONLY), (flush, TF_SEND_FLUSH),
                    (fua, TF_SEND_FUA), (trim, TF_SEND_TRIM),
                    (zero, TF_SEND_WRITE_ZEROES),
                    (zero and fast_zero, TF_SEND_FAST_ZERO),
                    (multi_conn, TF_CAN_MULTI_CONN), (cache, TF_SEND_CACHE),
                    (df, TF_SEND_DF)):
        if on:
            f |= bit
    return f


_WRITES = (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES)
_RANGED = (CMD_READ, CMD_CACHE, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES,
           CMD_BLOCK_STATUS)
_NEEDS = {CMD_FLUSH: TF_SEND_FLUSH, CMD_TRIM: TF_SEND_TRIM,
          CMD_WRITE_ZEROES: TF_SEND_WRITE_ZEROES, CMD_CACHE: TF_SEND_CACHE}


def validate_request(cmd, flags, offset, length, size, eflags,
                     structured=False, meta_context=False):
    """0 if the request may go to the backend, else the NBD error to answer.

    ``size`` is the export's, ``eflags`` the transmission flags the client
    was given, ``structured`` and ``meta_context`` (a metadata context
    was selected) what it negotiated.
    The checks and their order are nbdkit's (``validate_request()``),
    except that an over-large READ gets EINVAL, not ENOMEM (the spec: "The
    server SHOULD NOT return NBD_ENOMEM if at all possible").
    NBD_CMD_DISC never comes here.
    """
    if eflags & TF_READ_ONLY and cmd in _WRITES:
        return NBD_EPERM
    if cmd in _RANGED:
        if not length or offset + length > size:
            return NBD_ENOSPC if cmd in (CMD_WRITE, CMD_WRITE_ZEROES) \
                else NBD_EINVAL
    elif cmd == CMD_FLUSH:
        if offset or length:
            return NBD_EINVAL
    else:
        return NBD_EINVAL  # unknown command
    if flags & ~CMD_FLAGS_KNOWN:
        return NBD_EINVAL
    if flags & CMD_FLAG_NO_HOLE and cmd != CMD_WRITE_ZEROES:
        return NBD_EINVAL
    if flags & CMD_FLAG_FAST_ZERO and (cmd != CMD_WRITE_ZEROES or
                                       not eflags & TF_SEND_FAST_ZERO):
        return NBD_EINVAL
    if flags & CMD_FLAG_DF and (cmd != CMD_READ or not structured):
        return NBD_EINVAL
    if flags & CMD_FLAG_REQ_ONE and cmd != CMD_BLOCK_STATUS:
        return NBD_EINVAL
    if flags & CMD_FLAG_FUA and not eflags & TF_SEND_FUA:
        return NBD_EINVAL
    if cmd in (CMD_READ, CMD_WRITE) and length > MAX_REQUEST:
        return NBD_EINVAL
    need = _NEEDS.get(cmd)
    if need is not None and not eflags & need:
        return NBD_EINVAL
    if cmd == CMD_BLOCK_STATUS and not (structured and meta_context):
        return NBD_EINVAL
    return 0


def request_payload_length(fields):
    """Bytes that follow a request header (unpacked with REQUEST): a
    WRITE's data.  ProtocolError for a bad magic, or a WRITE larger than
    MAX_REQUEST, whose payload is not worth reading to skip it."""
    magic, _, cmd, _, _, length = fields
    if magic != REQUEST_MAGIC:
        raise exception.ProtocolError(reason='bad request magic 0x%x' % magic)
    if cmd != CMD_WRITE:
        return 0
    if length > MAX_REQUEST:
        raise exception.ProtocolError(reason='WRITE of %d bytes' % length)
    return length


def simple_reply(handle, error=0):
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def structured(handle, rtype, payload=b'', done=True):
    """One structured reply chunk (header + payload)."""
    return STRUCTURED_REPLY.pack(
        STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0, rtype,
        handle, len(payload)) + payload


def structured_header(handle, rtype, length, done=True):
    return STRUCTURED_REPLY.pack(
        STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0, rtype,
        handle, length)


def structured_error(handle, error, message=''):
    msg = message.encode('utf-8', 'replace')[:4096]
    return structured(handle, REPLY_TYPE_ERROR,
                      struct.pack('>IH', error, len(msg)) + msg)


def error_reply(handle, error, structured_replies, message=''):
    """A failed request's reply, in the form the client negotiated."""
    if structured_replies:
        return structured_error(handle, error, message)
    return simple_reply(handle, error)


def block_status_payload(extents, context_id=META_ID):
    """Payload of a block status reply of one context: [(length,
    flags)]."""
    return _U32.pack(context_id) + b''.join(
        struct.pack('>II', n, f) for n, f in extents)
