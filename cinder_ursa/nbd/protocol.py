"""Constants and framing of the NBD protocol (fixed newstyle), sans I/O.

From the NetworkBlockDevice project's doc/proto.md.  Only what the gateway
implements is listed; everything else is refused with NBD_REP_ERR_UNSUP or
EINVAL.
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

INFO_EXPORT = 0
INFO_NAME = 1
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

# Structured replies.
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2 ** 15 + 1

# The one metadata context: base:allocation.
META_BASE_ALLOCATION = 'base:allocation'
META_ID = 1
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

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

EPERM = errno.EPERM
EIO = errno.EIO
EINVAL = errno.EINVAL
ENOSPC = errno.ENOSPC
ENOTSUP = errno.EOPNOTSUPP
ESHUTDOWN = errno.ESHUTDOWN


def errno_for(exc):
    """The one table from our exceptions to NBD error values."""
    if isinstance(exc, exception.NoSpace):
        return ENOSPC
    if isinstance(exc, (exception.InvalidArgument, exception.OutOfRange)):
        return EINVAL
    if isinstance(exc, exception.Fenced):
        return EPERM
    return EIO


def handshake():
    return HANDSHAKE.pack(NBDMAGIC, IHAVEOPT,
                          FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def option_reply(option, reply_type, data=b''):
    return OPTION_REPLY.pack(REPLY_MAGIC, option, reply_type,
                             len(data)) + data


def info_export(size, flags):
    return struct.pack('>HQH', INFO_EXPORT, size, flags)


def info_block_size(maximum):
    return struct.pack('>HIII', INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK,
                       maximum)


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


def block_status_payload(extents):
    """Payload of a base:allocation reply: [(length, flags)]."""
    return struct.pack('>I', META_ID) + b''.join(
        struct.pack('>II', n, f) for n, f in extents)
