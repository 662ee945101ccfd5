"""Fuzz targets of the NBD gateway: the option haggling
(``nbd/handshake.py``), request parsing and checks (``nbd/protocol.py``
over ``transport/buffers.py``), and a whole in-process ``NbdServer`` fed
byte streams over a socket pair.

The promise: a client that does not speak the protocol gets an error
reply or a closed connection, and the gateway logs a warning at most;
it never raises what its connection code does not catch (that would be
an ERROR with a traceback per connection), never hangs, never calls the
backend with a request the checks refused.
"""

import asyncio
import contextlib
import logging
import socket
import struct

from hypothesis import strategies as st

from cinder_ursa import exception
from cinder_ursa.nbd import backend as backend_mod
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import server as server_mod
from cinder_ursa.transport import buffers
from tests.fuzz import mutate

U16 = st.integers(0, 2 ** 16 - 1)
U32 = st.integers(0, 2 ** 32 - 1)
U64 = st.integers(0, 2 ** 64 - 1)
EXPORT = 'vol'
SIZE = 1 << 20

# Options that keep the haggling going, and those that may end it.
OPTIONS = [p.OPT_LIST, p.OPT_STARTTLS, p.OPT_INFO, p.OPT_STRUCTURED_REPLY,
           p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT, 4, 11,
           2 ** 32 - 1]
FINAL_OPTIONS = [p.OPT_EXPORT_NAME, p.OPT_ABORT, p.OPT_GO]
NAMES = st.one_of(st.sampled_from([EXPORT, '', 'other', 'vol@snap']),
                  st.text(max_size=8))


@st.composite
def _option_data(draw, option):
    """What an option carries: well formed for its kind, or that with a
    field set to a boundary value or a few bytes changed, or anything."""
    if draw(mutate.rarely(5)):
        return draw(st.binary(max_size=24))
    data = b''
    if option in (p.OPT_INFO, p.OPT_GO):
        data = p.encode_info(draw(NAMES), draw(st.lists(U16, max_size=4)))
    elif option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
        data = p.encode_meta_context(draw(NAMES), draw(st.lists(
            st.sampled_from(['base:allocation', 'base:', 'qemu:x', '']),
            max_size=3)))
    elif option == p.OPT_EXPORT_NAME:
        data = draw(NAMES).encode('utf-8', 'surrogatepass')
    if draw(mutate.rarely(4)):
        data = mutate.apply(data, draw(st.lists(mutate._op(len(data)),
                                                min_size=1, max_size=2)))
    return data


@st.composite
def _option(draw, options=OPTIONS):
    option = draw(st.sampled_from(options) if draw(mutate.mostly(5))
                  else U32)
    data = draw(_option_data(option))
    length = len(data)
    if draw(mutate.rarely(10)):  # a length that lies
        length = draw(st.sampled_from([0, length + 1, p.MAX_OPTION_DATA,
                                       p.MAX_OPTION_DATA + 1, 2 ** 32 - 1]))
    return p.OPTION.pack(p.IHAVEOPT, option, length) + data


@st.composite
def _request(draw):
    # Mostly requests a client could send, so that they get past the
    # checks to the backend; sometimes any 16 or 32 bits.
    # (DISC ends the session: it comes last, in client_stream.)
    cmd = draw(st.sampled_from([c for c in range(9) if c != p.CMD_DISC])
               if draw(mutate.mostly(5)) else U16)
    flags = draw(st.sampled_from([0, 0, p.CMD_FLAG_FUA, p.CMD_FLAG_DF,
                                  p.CMD_FLAG_REQ_ONE, p.CMD_FLAG_NO_HOLE,
                                  p.CMD_FLAG_FAST_ZERO])
                 if draw(mutate.mostly(5)) else U16)
    offset = draw(st.sampled_from([0, 4096, SIZE - 1, SIZE])
                  if draw(mutate.mostly(5)) else U64)
    length = draw(st.sampled_from([0, 1, 512, 4096])
                  if draw(mutate.mostly(5)) else U32)
    payload = b''
    if cmd == p.CMD_WRITE and length <= 4096:
        payload = draw(st.binary(min_size=length, max_size=length))
    return p.REQUEST.pack(p.REQUEST_MAGIC, flags, cmd, draw(U64), offset,
                          length) + payload


CLIENT_FLAGS = st.one_of(
    st.sampled_from([p.FLAG_C_FIXED_NEWSTYLE,
                     p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES]),
    st.sampled_from([p.FLAG_C_FIXED_NEWSTYLE,
                     p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES]),
    st.sampled_from([p.FLAG_C_FIXED_NEWSTYLE, 0, 4]), U32)


@st.composite
def client_stream(draw):
    """What a client sends after the greeting: flags, options, then (if
    an export was chosen) requests; then perhaps a few edits."""
    out = struct.pack('>I', draw(CLIENT_FLAGS))
    out += b''.join(draw(st.lists(_option(), max_size=4)))
    if draw(mutate.mostly(4)):
        # Make the export open, so that requests are parsed.
        data = p.encode_info(EXPORT, draw(st.lists(U16, max_size=2)))
        out += p.OPTION.pack(p.IHAVEOPT, p.OPT_GO, len(data)) + data
    else:
        out += draw(_option(FINAL_OPTIONS))
    out += b''.join(draw(st.lists(_request(), max_size=8)))
    if draw(st.booleans()):
        out += p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0)
    if draw(mutate.rarely(4)):
        out = mutate.apply(out, draw(st.lists(mutate._op(len(out)),
                                              min_size=1, max_size=2)))
    return out


# --- the handshake state machine, sans I/O -----------------------------------

HANDSHAKE = st.tuples(
    client_stream(), st.booleans(), st.booleans(),
    st.lists(st.sampled_from(['open', 'refuse', 'list', 'unlist']),
             min_size=8, max_size=8))


def check_handshake(case):
    """Negotiation.receive(), fed ``want`` bytes at a time and answered as
    the server does, only ever raises ProtocolError."""
    stream, tls_available, tls_required, answers = case
    neg = hs.Negotiation(tls_available, tls_required)
    pos, turn = 0, 0
    while pos + neg.want <= len(stream):
        data = stream[pos:pos + neg.want]
        pos += neg.want
        try:
            out, event = neg.receive(data)
        except exception.ProtocolError:
            return
        answer = answers[turn % len(answers)]
        turn += 1
        if isinstance(event, hs.OpenExport):
            if answer == 'open' and event.name == EXPORT:
                out, event = neg.export_opened(SIZE, p.TF_HAS_FLAGS)
            else:
                out, event = neg.export_refused()
        elif isinstance(event, hs.ListExports):
            out = (neg.exports_listed([EXPORT]) if answer != 'unlist'
                   else neg.exports_unlisted('no master'))
            event = None
        elif isinstance(event, hs.StartTls):
            neg.tls_started()
            event = None
        assert isinstance(out, bytes)
        if isinstance(event, (hs.Ready, hs.Close)):
            return
        assert event is None, event
        # Every option is answered with at least one whole reply.
        if neg.want == p.OPTION.size and out:
            magic = struct.unpack_from('>Q', out)[0]
            assert magic == p.REPLY_MAGIC, out


# --- requests: parsing and checks -----------------------------------------

REQUESTS = st.tuples(
    mutate.bytes_like(st.lists(_request(), max_size=6).map(b''.join)),
    st.lists(st.integers(0, 4096), max_size=6),
    st.integers(0, 2 ** 12 - 1), st.booleans(), st.booleans())


def check_requests(case):
    """The transmission phase's ReceiveBuffer over NBD's request header,
    fed arbitrary bytes split anywhere: whole requests or ProtocolError,
    and validate_request() answers each with 0 or an NBD error value."""
    stream, cuts, eflags, structured, meta = case
    rx = buffers.ReceiveBuffer(p.REQUEST, p.request_payload_length)
    pos = 0
    errors = {0, p.NBD_EPERM, p.NBD_EINVAL, p.NBD_ENOSPC}
    try:
        for end in sorted(set(c for c in cuts if c <= len(stream))) + [
                len(stream)]:
            while pos < end:
                buf = rx.get_buffer(-1)
                n = min(len(buf), end - pos)
                buf[:n] = stream[pos:pos + n]
                pos += n
                rx.buffer_updated(n)
                for fields, payload in rx.frames():
                    _, flags, cmd, _, offset, length = fields
                    if cmd == p.CMD_WRITE:
                        assert len(payload) == length
                    err = p.validate_request(cmd, flags, offset, length,
                                             SIZE, eflags | p.TF_HAS_FLAGS,
                                             structured, meta)
                    assert err in errors, err
    except exception.ProtocolError:
        pass


# --- a whole gateway over a socket pair ------------------------------------

class MemoryBackend(backend_mod.Backend):
    """A writable 1 MiB export in memory that records what reached it."""

    name = EXPORT

    def __init__(self):
        self.data = bytearray(SIZE)
        self.calls = []

    def size(self):
        return SIZE

    # Every capability on: the fuzzer reaches every command.
    can_write = can_flush = can_fua = can_trim = can_zero = \
        can_fast_zero = can_cache = can_extents = staticmethod(lambda: True)

    def _range(self, op, offset, length):
        # The server's checks promise the backend only ranges inside it.
        assert 0 < length and offset + length <= SIZE, (op, offset, length)
        self.calls.append((op, offset, length))

    async def pread(self, offset, length):
        self._range('pread', offset, length)
        return bytes(self.data[offset:offset + length])

    async def pwrite(self, offset, data, fua):
        self._range('pwrite', offset, len(data))
        self.data[offset:offset + len(data)] = data

    async def zero(self, offset, length, fua, may_trim, fast):
        self._range('zero', offset, length)
        self.data[offset:offset + length] = bytes(length)

    async def trim(self, offset, length, fua):
        self._range('trim', offset, length)

    async def cache(self, offset, length):
        self._range('cache', offset, length)

    async def extents(self, offset, length):
        self._range('extents', offset, length)
        return [(length, 0)]

    async def flush(self):
        self.calls.append(('flush',))


class _Master:
    """The master's records the gateway asks for: one volume, ``vol``,
    attached to whatever host asks."""

    async def volumes(self):
        return [{'name': EXPORT}, {'name': 'other'}]

    async def volume(self, ref):
        if ref != EXPORT:
            raise exception.NotFound(kind='volume', name=ref)
        return {'id': EXPORT, 'name': EXPORT, 'size': SIZE}

    async def snapshot(self, ref):
        raise exception.NotFound(kind='snapshot', name=ref)

    async def attachments(self, volume_id=None, host=None):
        return [{'host': host, 'status': 'attached'}]


class _Cluster:
    master = _Master()


class FuzzServer(server_mod.NbdServer):
    """The gateway with one export, ``vol``, in memory: no master, no
    chunk servers.  Everything from the socket to the backend is the
    product's."""

    def __init__(self):
        super().__init__(_Cluster())
        self.backend = MemoryBackend()

    async def _open(self, name, record=None, token=None):
        if name != EXPORT:
            raise exception.NotFound(kind='volume', name=name)
        exp = server_mod._Export.__new__(server_mod._Export)
        exp.key, exp.backend, exp.users = ('volume', EXPORT), \
            self.backend, 1
        return exp

    async def _close(self, exp):
        pass


class _Errors(logging.Handler):
    """ERROR records of the gateway (an unexpected exception logs one)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


# Seconds the gateway has to finish with a client that sent everything
# and closed its side: far above what it needs (milliseconds).
GATEWAY_DEADLINE = 10.0


async def _session(stream):
    server = FuzzServer()
    loop = asyncio.get_running_loop()
    crashes = []
    loop.set_exception_handler(lambda lp, ctx: crashes.append(ctx))
    ours, theirs = socket.socketpair()
    with contextlib.closing(theirs):
        transport, proto = await loop.connect_accepted_socket(
            server.protocol, ours)
        theirs.setblocking(False)
        await loop.sock_sendall(theirs, stream)
        theirs.shutdown(socket.SHUT_WR)
        received = 0
        async with asyncio.timeout(GATEWAY_DEADLINE):
            while True:
                try:
                    chunk = await loop.sock_recv(theirs, 1 << 16)
                except ConnectionResetError:
                    # The gateway closed with our bytes unread (it drops a
                    # client that breaks the protocol): the session ended.
                    break
                if not chunk:
                    break
                received += len(chunk)
            await proto.task
    await asyncio.sleep(0)
    return server, crashes


NBD_SESSIONS = client_stream()


def check_gateway(stream):
    """A whole NbdServer session: the gateway closes the connection in
    time, no exception escapes its tasks or callbacks, nothing is logged
    as ERROR, and the backend saw only ranges inside the export."""
    errors = _Errors()
    log = logging.getLogger('cinder_ursa')
    log.addHandler(errors)
    try:
        server, crashes = asyncio.run(_session(stream))
    finally:
        log.removeHandler(errors)
    assert not crashes, crashes
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert not server.connections
