"""The shared receive buffer, driven the way asyncio drives it, with a
toy protocol: a 4-byte magic and a 4-byte payload length."""

import random
import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.transport.buffers import ReceiveBuffer

HEADER = struct.Struct('>4sI')
LARGE = ReceiveBuffer.LARGE


def payload_length(fields):
    if fields[0] != b'TOY!':
        raise exception.ProtocolError(reason='bad magic')
    return fields[1]


def frame(payload):
    return HEADER.pack(b'TOY!', len(payload)) + payload


def feed(rx, data, sizes):
    """Copy ``data`` into the buffers ``rx`` hands out, in pieces of the
    sizes ``sizes`` yields; return the frames taken after each piece."""
    out = []
    pos = 0
    while pos < len(data):
        buf = rx.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), len(data) - pos, next(sizes))
        buf[:n] = data[pos:pos + n]
        pos += n
        rx.buffer_updated(n)
        out += rx.frames()
    return out


def payloads(frames):
    return [bytes(body) for _, body in frames]


def test_frames_split_at_every_byte_boundary():
    bodies = [b'', b'x' * 5, bytes(range(256)) * 3, b'y']
    data = b''.join(frame(b) for b in bodies)
    for cut in range(len(data) + 1):
        rx = ReceiveBuffer(HEADER, payload_length)
        pieces = iter([cut or len(data), len(data)])
        assert payloads(feed(rx, data, pieces)) == bodies, cut


def test_one_byte_at_a_time_with_next():
    bodies = [b'abc', b'', bytes(LARGE + 3)]
    data = b''.join(frame(b) for b in bodies)
    rx = ReceiveBuffer(HEADER, payload_length)
    got = []
    for i in range(len(data)):
        buf = rx.get_buffer(-1)
        buf[:1] = data[i:i + 1]
        rx.buffer_updated(1)
        while (f := rx.next()) is not None:
            got.append(f)
    assert payloads(got) == bodies
    assert [fields for fields, _ in got] == [(b'TOY!', len(b))
                                             for b in bodies]


@pytest.mark.parametrize('size', [LARGE - 1, LARGE, LARGE + 1, 1 << 20,
                                  ReceiveBuffer.SCRATCH + 5])
def test_a_large_payload_split_near_its_edges(size):
    body = random.Random(size).randbytes(size)
    data = frame(b'a') + frame(body) + frame(b'z')
    start = HEADER.size + 1
    cuts = list(range(start - 2, start + HEADER.size + 3)) + \
        list(range(len(data) - HEADER.size - 4, len(data)))
    for cut in cuts:
        rx = ReceiveBuffer(HEADER, payload_length)
        got = feed(rx, data, iter([cut] + [len(data)] * 100))
        assert payloads(got) == [b'a', body, b'z'], cut


def test_a_large_payload_goes_straight_into_its_own_buffer():
    rx = ReceiveBuffer(HEADER, payload_length)
    body = bytes(range(256)) * 1024  # 256 KiB
    data = frame(body)
    buf = rx.get_buffer(-1)
    buf[:100] = data[:100]
    rx.buffer_updated(100)
    assert rx.next() is None
    direct = rx.get_buffer(-1)
    assert len(direct) == len(body) - (100 - HEADER.size)  # the rest
    direct[:] = data[100:]
    rx.buffer_updated(len(direct))
    (fields, got), = rx.frames()
    assert bytes(got) == body and fields == (b'TOY!', len(body))
    assert rx.buffered == 0 and rx.next() is None


@pytest.mark.parametrize('seed', range(10))
def test_random_pieces_with_compaction(seed):
    """Many frames through a scratch buffer much smaller than the data,
    so the unconsumed tail is moved to the front again and again."""
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.choice([0, 1, 100, 4096, 60000, LARGE,
                                        300000])) for _ in range(200)]
    data = b''.join(frame(b) for b in bodies)
    sizes = iter(lambda: rng.choice([1, 7, 100, 4096, 70000, 1 << 20]), None)
    assert payloads(feed(ReceiveBuffer(HEADER, payload_length), data,
                         sizes)) == bodies


def test_compaction_keeps_room_for_a_whole_small_frame():
    rx = ReceiveBuffer(HEADER, payload_length)
    small = frame(b'q' * 1000)
    # Fill scratch up to near its end with whole frames, plus half a frame.
    whole = (ReceiveBuffer.SCRATCH - LARGE) // len(small)
    data = small * whole + small[:500]
    buf = rx.get_buffer(-1)
    buf[:len(data)] = data
    rx.buffer_updated(len(data))
    assert len(rx.frames()) == whole
    assert rx.buffered == 500
    room = rx.get_buffer(-1)           # compacted: the half frame moved
    assert len(room) >= LARGE + HEADER.size
    room[:len(small) - 500] = small[500:]
    rx.buffer_updated(len(small) - 500)
    assert payloads(rx.frames()) == [b'q' * 1000]


def test_take_raw_bytes_then_frames():
    rx = ReceiveBuffer(HEADER, payload_length)
    data = b'hello' + frame(b'abc')
    buf = rx.get_buffer(-1)
    buf[:3] = data[:3]
    rx.buffer_updated(3)
    assert rx.take(5) is None
    buf = rx.get_buffer(-1)
    buf[:len(data) - 3] = data[3:]
    rx.buffer_updated(len(data) - 3)
    assert rx.take(5) == b'hello'
    assert rx.buffered == HEADER.size + 3
    assert payloads(rx.frames()) == [b'abc']
    assert rx.take(0) == b'' and rx.buffered == 0


def test_several():
    rx = ReceiveBuffer(HEADER, payload_length)
    data = frame(b'abc') + frame(b'')
    buf = rx.get_buffer(-1)
    buf[:len(data) - 1] = data[:-1]
    rx.buffer_updated(len(data) - 1)
    assert not rx.several()
    buf = rx.get_buffer(-1)
    buf[:1] = data[-1:]
    rx.buffer_updated(1)
    assert rx.several()


def test_a_bad_header_raises_what_payload_length_raises():
    rx = ReceiveBuffer(HEADER, payload_length)
    buf = rx.get_buffer(-1)
    data = frame(b'ok') + b'BAD!' + bytes(4)
    buf[:len(data)] = data
    rx.buffer_updated(len(data))
    assert payloads([rx.next()]) == [b'ok']
    assert not rx.several()
    with pytest.raises(exception.ProtocolError):
        rx.next()
    with pytest.raises(exception.ProtocolError):
        rx.frames()


def test_frames_given_back_come_first():
    rx = ReceiveBuffer(HEADER, payload_length)
    data = frame(b'1') + frame(b'2') + frame(b'3')
    buf = rx.get_buffer(-1)
    buf[:len(data) - 1] = data[:-1]
    rx.buffer_updated(len(data) - 1)
    got = rx.frames()
    assert payloads(got) == [b'1', b'2']
    rx.unread(got[1:])
    buf = rx.get_buffer(-1)
    buf[:1] = data[-1:]
    rx.buffer_updated(1)
    assert payloads([rx.next()]) == [b'2']
    assert payloads(rx.frames()) == [b'3']
