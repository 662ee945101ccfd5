"""Byte mutations: a valid message made slightly wrong.

Arbitrary bytes rarely get past a parser's first check (a magic, a
length); a valid frame with one field changed to a boundary value, a few
bytes flipped, or cut short reaches the checks behind it.
"""

import struct

from hypothesis import strategies as st

# Values that break naive arithmetic: zero, one, the signed and unsigned
# limits of each width.
_EDGES = {
    1: [0, 1, 0x7F, 0x80, 0xFF],
    2: [0, 1, 0x7FFF, 0x8000, 0xFFFF],
    4: [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF],
    8: [0, 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1],
}
_FMT = {1: '!B', 2: '!H', 4: '!I', 8: '!Q'}


@st.composite
def _op(draw, size):
    """One edit of a buffer of ``size`` bytes: (kind, position, argument)."""
    kind = draw(st.sampled_from(['flip', 'edge', 'truncate', 'insert',
                                 'delete', 'byte']))
    pos = draw(st.integers(0, max(size, 1)))
    if kind == 'flip':
        return kind, pos, draw(st.integers(0, 7))
    if kind == 'edge':
        width = draw(st.sampled_from([1, 2, 4, 8]))
        return kind, pos, (width, draw(st.sampled_from(_EDGES[width])))
    if kind == 'insert':
        return kind, pos, draw(st.binary(min_size=1, max_size=16))
    if kind == 'delete':
        return kind, pos, draw(st.integers(1, 16))
    if kind == 'byte':
        return kind, pos, draw(st.integers(0, 255))
    return kind, pos, None


def apply(data, ops):
    buf = bytearray(data)
    for kind, pos, arg in ops:
        pos = min(pos, len(buf))
        if kind == 'flip' and pos < len(buf):
            buf[pos] ^= 1 << arg
        elif kind == 'byte' and pos < len(buf):
            buf[pos] = arg
        elif kind == 'edge':
            width, value = arg
            if pos + width <= len(buf):
                buf[pos:pos + width] = struct.pack(_FMT[width], value)
        elif kind == 'truncate':
            del buf[pos:]
        elif kind == 'insert':
            buf[pos:pos] = arg
        elif kind == 'delete':
            del buf[pos:pos + arg]
    return bytes(buf)


@st.composite
def mutated(draw, valid, max_ops=4):
    """Bytes drawn from ``valid`` (a strategy of bytes), edited 0 to
    ``max_ops`` times."""
    data = draw(valid)
    ops = draw(st.lists(_op(len(data)), max_size=max_ops))
    return apply(data, ops)


def bytes_like(valid, max_size=512):
    """Arbitrary bytes, or valid ones, or valid ones mutated."""
    return st.one_of(st.binary(max_size=max_size), valid, mutated(valid))


def rarely(n):
    """True about once in ``n`` draws.  (``st.integers(0, n - 1)`` is no
    fair die: hypothesis draws its simplest value, 0, far more often.)"""
    return st.sampled_from([False] * (n - 1) + [True])


def mostly(n):
    """False about once in ``n`` draws."""
    return st.sampled_from([True] * (n - 1) + [False])
