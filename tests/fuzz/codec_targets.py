"""Fuzz targets of the data protocol (``protocol/codec.py``,
``protocol/control.py``) and of its receive buffer
(``transport/buffers.py`` under ``transport/aio.FrameReader``).

The promise: whatever a peer sends, parsing it raises a
:class:`~cinder_ursa.exception.UrsaError` (ProtocolError for bytes that
are not the protocol, the peer's own error for a failed reply) or returns
a value; never ``struct.error``, ``IndexError``, ``UnicodeDecodeError``
and the like, which the connection code does not catch.
"""

import uuid

from hypothesis import strategies as st

from cinder_ursa import exception
from cinder_ursa.protocol import chunkfile
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio
from cinder_ursa.transport import buffers
from tests.fuzz import mutate

U8 = st.integers(0, 2 ** 8 - 1)
U16 = st.integers(0, 2 ** 16 - 1)
U32 = st.integers(0, 2 ** 32 - 1)
U64 = st.integers(0, 2 ** 64 - 1)
VOLUMES = st.uuids().map(str)
SMALL = st.binary(max_size=64)


def _join(buffers_):
    return b''.join(bytes(b) for b in buffers_)


def frame_of(raw):
    """The one frame of ``raw``, as the peer's FrameDecoder sees it."""
    frames = codec.FrameDecoder().feed(raw)
    assert len(frames) == 1, frames
    return frames[0]


def _req(r, *names):
    return tuple(getattr(r, n) for n in names)


_RW = ('volume', 'index', 'epoch', 'generation', 'seq', 'offset', 'length',
       'replicas', 'flags', 'min_replicas', 'floor')


# --- one message of each kind, with what decoding it must give ------------
# Each strategy draws (name, frame bytes, expected, decode(frame)).

@st.composite
def _read(draw):
    args = draw(st.tuples(VOLUMES, U64, U64, U32, U32, U64))
    flags = draw(st.sampled_from([0, codec.FLAG_STATES, codec.FLAG_RAW]))
    raw = codec.encode_read(draw(U64), *args, flags=flags)
    return 'READ', raw, args, lambda f: _req(
        codec.decode_read(f.body), 'volume', 'index', 'epoch', 'offset',
        'length', 'snap')


@st.composite
def _write(draw):
    vol, index, epoch, gen, offset, seq = draw(st.tuples(
        VOLUMES, U64, U64, U64, U32, U64))
    replicas = draw(st.lists(U32, max_size=8))
    min_rep = draw(U8)
    zero = draw(st.booleans())
    flags = draw(st.sampled_from([0, codec.FLAG_IF_ABSENT]))
    fua = draw(st.booleans())
    if zero:
        flags |= codec.FLAG_ZERO
        data, length = b'', draw(U32)
    else:
        data = draw(SMALL)
        length = len(data)
    raw = _join(codec.encode_write(
        draw(U64), vol, index, epoch, gen, offset, replicas, data, fua=fua,
        min_replicas=min_rep, seq=seq, flags=flags, length=length))
    flags |= codec.FLAG_FUA if fua else 0
    expect = (vol, index, epoch, gen, seq, offset, length, replicas, flags,
              min_rep, seq, data)
    return 'WRITE', raw, expect, lambda f: _req(
        codec.decode_write(f.body, f.flags), *_RW) + (
        bytes(codec.decode_write(f.body, f.flags).data),)


@st.composite
def _replicate(draw):
    vol, index, epoch, gen, offset, seq = draw(st.tuples(
        VOLUMES, U64, U64, U64, U32, U64))
    floor = draw(st.integers(0, seq))
    kind = draw(st.sampled_from(['data', 'zero', 'raw']))
    flags = draw(st.sampled_from([0, codec.FLAG_FUA, codec.FLAG_IF_ABSENT]))
    if kind == 'zero':
        flags |= codec.FLAG_ZERO
        data, length = b'', draw(U32)
    elif kind == 'raw':
        flags |= codec.FLAG_RAW | draw(st.sampled_from(
            [0, codec.FLAG_LAYER]))
        n = draw(st.integers(0, 2))
        length = n * chunkfile.BLOCK
        data = draw(st.binary(min_size=n * chunkfile.ENTRY,
                              max_size=n * chunkfile.ENTRY)) + bytes(length)
    else:
        data = draw(SMALL)
        length = len(data)
    req = codec.WriteRequest(vol, index, 0, gen, seq, offset, length, [],
                             data, flags, floor=floor)
    raw = _join(codec.encode_replicate(draw(U64), req, epoch))
    expect = (vol, index, epoch, gen, seq, offset, length, [], flags, 1,
              floor, bytes(data))

    def decode(f):
        r = codec.decode_replicate(f.body, f.flags)
        return _req(r, *_RW) + (bytes(r.data),)
    return 'REPLICATE', raw, expect, decode


def _simple(name, encode, decode, *fields):
    """A message whose decoder returns its fields as encode took them."""
    @st.composite
    def make(draw):
        args = draw(st.tuples(*fields))
        raw = encode(draw(U64), *args)
        value = args[0] if len(args) == 1 else args
        return name, raw, value, lambda f: decode(f.body)
    return make()


def _as_tuple(fn, *names):
    return lambda body: _req(fn(body), *names)


@st.composite
def _snapshot(draw):
    vol, seq = draw(VOLUMES), draw(U64)
    live = draw(st.lists(U64, max_size=8))
    gc, dry = draw(st.booleans()), draw(st.booleans())
    raw = control.encode_snapshot(draw(U64), vol, seq, live, gc, dry)
    return 'SNAPSHOT', raw, (vol, seq, sorted(live)), \
        lambda f: control.decode_snapshot(f.body)


@st.composite
def _repair(draw):
    args = draw(st.tuples(VOLUMES, U64, U64, U32,
                          st.integers(1, control.MAX_REPAIR_BLOCKS), U64))
    raw = control.encode_repair(draw(U64), *args)
    return 'REPAIR', raw, args, lambda f: _req(
        control.decode_repair(f.body), 'volume', 'index', 'epoch', 'first',
        'count', 'layer')


@st.composite
def _inventory(draw):
    vol = draw(st.one_of(st.none(), VOLUMES,
                         st.just(str(uuid.UUID(int=0)))))
    raw = control.encode_inventory(draw(U64), vol)
    # The nil UUID is "every volume", as no volume at all is.
    expect = None if vol in (None, str(uuid.UUID(int=0))) else vol
    return 'INVENTORY', raw, expect, \
        lambda f: control.decode_inventory(f.body)


@st.composite
def _entries_ok(draw):
    layers = draw(st.lists(U64, max_size=4, unique=True))
    tables = [(n, draw(st.binary(min_size=8 * k, max_size=8 * k)))
              for n, k in zip(layers, draw(st.lists(
                  st.integers(0, 3), min_size=len(layers),
                  max_size=len(layers))), strict=True)]
    epoch, nblocks = draw(U64), draw(U64)
    raw = control.encode_entries_ok(draw(U64), epoch, nblocks, tables)
    return 'ENTRIES reply', raw, (epoch, nblocks, dict(tables)), \
        lambda f: control.decode_entries_ok(f.body)


@st.composite
def _inventory_ok(draw):
    entries = draw(st.lists(st.tuples(
        VOLUMES, U64, U64, st.booleans(), U64,
        st.lists(U64, max_size=3)), max_size=4))
    raw = control.encode_inventory_ok(draw(U64), entries)
    return 'INVENTORY reply', raw, entries, \
        lambda f: control.decode_inventory_ok(f.body)


@st.composite
def _chunk_info_ok(draw):
    epoch, allocated, digest = draw(U64), draw(U64), draw(U32)
    crcs = draw(st.lists(U32, max_size=6))
    torn = draw(st.none() | st.lists(U32, max_size=4))
    raw = control.encode_chunk_info_ok(draw(U64), epoch, allocated, digest,
                                       crcs, torn)
    expect = (epoch, allocated, digest, crcs)
    if torn is not None:
        expect += (torn,)
    return 'CHUNK_INFO reply', raw, expect, \
        lambda f: control.decode_chunk_info_ok(f.body, torn is not None)


@st.composite
def _read_states(draw):
    states, data = draw(SMALL), draw(SMALL)
    raw = _join(codec.encode_read_ok(draw(U64), data, states))
    return 'READ reply', raw, (states, data), lambda f: tuple(
        bytes(x) for x in codec.decode_read_states(f.body))


@st.composite
def _read_raw(draw):
    n = draw(st.integers(0, 2))
    entries = draw(st.binary(min_size=8 * n, max_size=8 * n))
    data = bytes(chunkfile.BLOCK * n)
    raw = _join(codec.encode_read_raw_ok(draw(U64), entries, data))
    return 'READ raw reply', raw, (entries, data), lambda f: tuple(
        bytes(x) for x in codec.decode_read_raw(f.body))


_ERRORS = [exception.NotFound(kind='volume', name='v'),
           exception.Fenced(reason='r'), exception.StaleEpoch(reason='e'),
           exception.ProtocolError(reason='p'), exception.NoSpace(reason='')]


@st.composite
def _error(draw):
    exc = draw(st.sampled_from(_ERRORS))
    op = draw(st.sampled_from(sorted(codec.OPCODE_NAMES)))
    raw = codec.encode_error(op, draw(U64), exc)

    def decode(f):
        try:
            codec.reply_status(f.body)
        except exception.UrsaError as e:
            return type(e), str(e)
        return None
    return 'error reply', raw, (type(exc), str(exc)), decode


@st.composite
def _count_ok(draw):
    n = draw(U64)
    raw = codec.encode_ok(codec.REBUILD, draw(U64), control.encode_u64(n))
    return 'count reply', raw, n, lambda f: control.decode_count_ok(f.body)


@st.composite
def _write_ok(draw):
    epoch = draw(U64)
    raw = codec.encode_write_ok(draw(U64), epoch)
    return 'WRITE reply', raw, epoch, lambda f: codec.decode_write_ok(f.body)


@st.composite
def _auth(draw):
    nonce = draw(st.binary(min_size=32, max_size=32))
    mac = draw(st.binary(min_size=32, max_size=32))
    return 'AUTH', codec.encode_auth(nonce, mac), (nonce, mac), \
        lambda f: codec.decode_auth(f.body)


MESSAGES = st.one_of(
    _read(), _write(), _replicate(), _auth(),
    _simple('FLUSH', codec.encode_flush, codec.decode_flush, VOLUMES),
    _simple('FENCE', control.encode_fence, control.decode_fence,
            VOLUMES, U64),
    _simple('DELETE', control.encode_delete, control.decode_delete,
            VOLUMES, U64),
    _simple('CHUNK_INFO', control.encode_chunk_info,
            control.decode_chunk_info, VOLUMES, U64),
    _simple('REVERT', control.encode_revert, control.decode_revert,
            VOLUMES, U64, U64),
    _simple('REBUILD', control.encode_rebuild,
            _as_tuple(control.decode_rebuild, 'volume', 'index', 'epoch',
                      'target'), VOLUMES, U64, U64, U64),
    _simple('RESYNC', control.encode_resync,
            _as_tuple(control.decode_resync, 'volume', 'index', 'epoch'),
            VOLUMES, U64, U64),
    _simple('ENTRIES', control.encode_entries, control.decode_entries,
            VOLUMES, U64, U32, st.integers(0, control.MAX_ENTRY_BLOCKS)),
    _simple('TERM', control.encode_term, control.decode_term,
            st.integers(0, control.MAX_TERM)),
    _snapshot(), _repair(), _inventory(), _entries_ok(), _inventory_ok(),
    _chunk_info_ok(), _read_states(), _read_raw(), _error(), _count_ok(),
    _write_ok(),
)

VALID_FRAMES = MESSAGES.map(lambda m: m[1])


def check_roundtrip(message):
    """encode -> frame -> decode gives back what was encoded."""
    name, raw, expect, decode = message
    got = decode(frame_of(raw))
    assert got == expect, (name, got, expect)


# --- every decoder on arbitrary bodies --------------------------------------

FLAGS = st.integers(0, 0xFFFF) | st.sampled_from([
    0, codec.FLAG_ZERO, codec.FLAG_RAW, codec.FLAG_FUA | codec.FLAG_RAW,
    codec.FLAG_ZERO | codec.FLAG_RAW])

DECODERS = {
    'decode_auth': lambda b, f: codec.decode_auth(b),
    'decode_read': lambda b, f: codec.decode_read(b),
    'decode_write': codec.decode_write,
    'decode_replicate': codec.decode_replicate,
    'decode_flush': lambda b, f: codec.decode_flush(b),
    'decode_read_raw': lambda b, f: codec.decode_read_raw(b),
    'decode_read_states': lambda b, f: codec.decode_read_states(b),
    'reply_status': lambda b, f: codec.reply_status(b),
    'decode_write_ok': lambda b, f: codec.decode_write_ok(b),
    'decode_fence': lambda b, f: control.decode_fence(b),
    'decode_delete': lambda b, f: control.decode_delete(b),
    'decode_chunk_info': lambda b, f: control.decode_chunk_info(b),
    'decode_snapshot': lambda b, f: control.decode_snapshot(b),
    'decode_revert': lambda b, f: control.decode_revert(b),
    'decode_repair': lambda b, f: control.decode_repair(b),
    'decode_rebuild': lambda b, f: control.decode_rebuild(b),
    'decode_entries': lambda b, f: control.decode_entries(b),
    'decode_entries_ok': lambda b, f: control.decode_entries_ok(b),
    'decode_resync': lambda b, f: control.decode_resync(b),
    'decode_term': lambda b, f: control.decode_term(b),
    'decode_inventory': lambda b, f: control.decode_inventory(b),
    'decode_inventory_ok': lambda b, f: control.decode_inventory_ok(b),
    'decode_count_ok': lambda b, f: control.decode_count_ok(b),
    'decode_chunk_info_ok': lambda b, f: control.decode_chunk_info_ok(
        b, bool(f & 1)),
}


def _bodies():
    """A valid message's body, or its whole frame, mutated or not, or
    arbitrary bytes."""
    body = VALID_FRAMES.map(lambda raw: raw[codec.HEADER_SIZE:])
    return mutate.bytes_like(st.one_of(body, VALID_FRAMES))


DECODE = st.tuples(st.sampled_from(sorted(DECODERS)), _bodies(), FLAGS)


def check_decode(case):
    """Every decoder: a value or an UrsaError, whatever the bytes."""
    name, body, flags = case
    for view in (body, memoryview(body)):
        try:
            DECODERS[name](view, flags)
        except exception.UrsaError:
            pass


def check_header(raw):
    """parse_header of 20 arbitrary bytes: fields or ProtocolError."""
    raw = raw.ljust(codec.HEADER_SIZE, b'\0')
    try:
        _, _, _, length = codec.parse_header(raw)
    except exception.ProtocolError:
        return
    assert length <= codec.MAX_BODY


# --- byte streams through the receive buffers --------------------------------

@st.composite
def _stream(draw):
    """(stream, cut points): frames (valid, mutated or garbage) and where
    the kernel splits them."""
    parts = draw(st.lists(st.one_of(
        VALID_FRAMES, mutate.mutated(VALID_FRAMES),
        st.binary(max_size=64),
        # A valid header with a length near the limits.
        st.tuples(U8, U64, st.sampled_from([
            0, 1, codec.MAX_BODY, codec.MAX_BODY + 1, 2 ** 32 - 1,
            buffers.ReceiveBuffer.LARGE, buffers.ReceiveBuffer.SCRATCH]))
        .map(lambda t: codec.header(t[0], t[1], t[2]))),
        max_size=8))
    stream = b''.join(parts)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=10))
    return stream, sorted(set(cuts))


STREAMS = _stream()


class _PoolSpy:
    """Records the sizes the receive buffer asks the pool for."""

    def __init__(self):
        self.sizes = []
        self._get = buffers.POOL.get

    def get(self, length):
        self.sizes.append(length)
        return self._get(length)

    def __enter__(self):
        buffers.POOL.get = self.get
        return self

    def __exit__(self, *exc):
        del buffers.POOL.get  # the class's method again


def _deliver(reader, stream, cuts):
    """Feed ``stream`` through the buffers ``reader`` hands out, split at
    ``cuts`` and wherever the buffer is full, as asyncio does; the frames,
    or the ProtocolError that ended the stream."""
    frames, pos = [], 0
    bounds = cuts + [len(stream)]
    try:
        for end in bounds:
            while pos < end:
                buf = reader.get_buffer(-1)
                assert len(buf) > 0
                n = min(len(buf), end - pos)
                buf[:n] = stream[pos:pos + n]
                pos += n
                frames += [(f.opcode, f.flags, f.req_id, bytes(f.body))
                           for f in reader.buffer_updated(n)]
    except exception.ProtocolError:
        return frames, True
    return frames, False


def check_stream(case):
    """The zero-copy FrameReader and the simple FrameDecoder agree on every
    stream however it is split: the same frames, the same ProtocolError,
    nothing else raised, and no buffer larger than the header limit."""
    stream, cuts = case
    with _PoolSpy() as spy:
        got, failed = _deliver(aio.FrameReader(), stream, cuts)
    assert all(n <= codec.MAX_BODY for n in spy.sizes), spy.sizes
    decoder, want, want_failed, pos = codec.FrameDecoder(), [], False, 0
    try:
        for end in cuts + [len(stream)]:
            want += [(f.opcode, f.flags, f.req_id, bytes(f.body))
                     for f in decoder.feed(stream[pos:end])]
            pos = end
    except exception.ProtocolError:
        want_failed = True
    assert failed == want_failed
    # A stream that fails loses what the failing burst held (the
    # connection is dropped): the frames seen are a prefix of the others'.
    if failed:
        n = min(len(got), len(want))
        assert got[:n] == want[:n]
    else:
        assert got == want
