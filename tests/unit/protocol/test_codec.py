"""Round trips of every data-protocol message against fixed bytes."""

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control

VOL = '0f0e0d0c-0b0a-0908-0706-050403020100'
VOL_HEX = '0f0e0d0c0b0a09080706050403020100'


def hdr(opcode, req_id, length, flags=0):
    # magic 'URSA', version 1, opcode, flags, request id, body length
    return ('55525341' '01' + '%02x' % opcode + '%04x' % flags +
            '%016x' % req_id + '%08x' % length)


def one_frame(raw):
    frames = codec.FrameDecoder().feed(raw)
    assert len(frames) == 1
    return frames[0]


def test_read_request():
    raw = codec.encode_read(7, VOL, 3, 9, 4096, 8192)
    assert raw.hex() == (hdr(0x10, 7, 48) + VOL_HEX + '%016x' % 3 +
                         '%016x' % 9 + '00001000' + '00002000' +
                         '%016x' % 0)
    f = one_frame(raw)
    assert (f.opcode, f.req_id) == (codec.READ, 7)
    r = codec.decode_read(f.body)
    assert (r.volume, r.index, r.epoch, r.offset, r.length, r.snap) == (
        VOL, 3, 9, 4096, 8192, 0)


def test_read_of_a_snapshot_with_states():
    raw = codec.encode_read(7, VOL, 3, 9, 0, 4096, snap=5,
                            flags=codec.FLAG_STATES)
    f = one_frame(raw)
    assert f.flags == codec.FLAG_STATES
    assert codec.decode_read(f.body).snap == 5
    raw = b''.join(codec.encode_read_ok(7, b'xy', b'\x01\x02'))
    assert raw.hex() == hdr(0x90, 7, 10) + '0000' + '00000002' + '0102' + \
        '7879'
    states, data = codec.decode_read_states(one_frame(raw).body)
    assert states == b'\x01\x02' and bytes(data) == b'xy'


def test_write_request_with_fua():
    raw = b''.join(codec.encode_write(8, VOL, 1, 2, 5, 512, [1, 2, 3],
                                      b'ab', fua=True, min_replicas=2,
                                      seq=4))
    assert raw.hex() == (hdr(0x11, 8, 74, flags=1) + VOL_HEX +
                         '%016x' % 1 + '%016x' % 2 + '%016x' % 5 +
                         '%016x' % 4 + '00000200' + '00000002' + '03' +
                         '02' + '0000' + '00000001' '00000002' '00000003' +
                         '6162')
    f = one_frame(raw)
    w = codec.decode_write(f.body, f.flags)
    assert (w.volume, w.index, w.epoch, w.generation, w.seq, w.offset) == (
        VOL, 1, 2, 5, 4, 512)
    assert w.replicas == [1, 2, 3]
    assert bytes(w.data) == b'ab' and w.fua and w.min_replicas == 2


def test_zero_writes_carry_no_payload():
    raw = b''.join(codec.encode_write(8, VOL, 1, 2, 5, 0, [1], b'',
                                      flags=codec.FLAG_ZERO, length=1 << 20))
    f = one_frame(raw)
    w = codec.decode_write(f.body, f.flags)
    assert w.zero and w.length == 1 << 20 and len(w.data) == 0
    # A payload that does not match its length is refused.
    bad = codec.encode_write(8, VOL, 1, 2, 5, 0, [1], b'abc')
    body = bytearray(b''.join(bad))[codec.HEADER_SIZE:]
    with pytest.raises(exception.ProtocolError):
        codec.decode_write(bytes(body[:-1]))


def test_replicate_request():
    w = codec.WriteRequest(VOL, 1, 2, 5, 3, 512, 2, [], b'ab', floor=1)
    raw = b''.join(codec.encode_replicate(9, w, 2))
    assert raw.hex() == (hdr(0x12, 9, 66) + VOL_HEX + '%016x' % 1 +
                         '%016x' % 2 + '%016x' % 5 + '%016x' % 3 +
                         '00000200' + '00000002' + '%016x' % 1 + '6162')
    f = one_frame(raw)
    w = codec.decode_replicate(f.body, f.flags)
    assert (w.index, w.epoch, w.generation, w.seq, w.offset, bytes(w.data),
            w.fua, w.floor) == (1, 2, 5, 3, 512, b'ab', False, 1)
    # A floor above the sequence is refused.
    w.floor = 4
    f = one_frame(b''.join(codec.encode_replicate(9, w, 2)))
    with pytest.raises(exception.ProtocolError):
        codec.decode_replicate(f.body, f.flags)


def test_snapshot_and_revert_requests():
    raw = control.encode_snapshot(3, VOL, 7, [5, 2], gc=True)
    assert raw.hex() == (hdr(0x17, 3, 44, flags=codec.FLAG_GC) + VOL_HEX +
                         '%016x' % 7 + '00000002' + '%016x' % 2 +
                         '%016x' % 5)
    assert control.decode_snapshot(one_frame(raw).body) == (VOL, 7, [2, 5])
    with pytest.raises(exception.ProtocolError):
        control.decode_snapshot(one_frame(raw).body[:-1])
    raw = control.encode_revert(4, VOL, 2, 7)
    assert control.decode_revert(one_frame(raw).body) == (VOL, 2, 7)


def test_flush_fence_delete_info_requests():
    raw = codec.encode_flush(10, VOL)
    assert raw.hex() == hdr(0x13, 10, 16) + VOL_HEX
    assert codec.decode_flush(one_frame(raw).body) == VOL

    raw = control.encode_fence(11, VOL, 42)
    assert raw.hex() == hdr(0x14, 11, 24) + VOL_HEX + '%016x' % 42
    assert control.decode_fence(one_frame(raw).body) == (VOL, 42)

    raw = control.encode_delete(12, VOL)
    assert raw.hex() == hdr(0x15, 12, 24) + VOL_HEX + 'ff' * 8
    assert control.decode_delete(one_frame(raw).body) == (VOL,
                                                        control.ALL_CHUNKS)

    raw = control.encode_chunk_info(13, VOL, 4)
    assert raw.hex() == hdr(0x16, 13, 24) + VOL_HEX + '%016x' % 4
    assert control.decode_chunk_info(one_frame(raw).body) == (VOL, 4)


def test_replies():
    raw = codec.encode_write_ok(8, 6)
    assert raw.hex() == hdr(0x91, 8, 10) + '0000' + '%016x' % 6
    f = one_frame(raw)
    assert f.is_reply and codec.decode_write_ok(f.body) == 6

    raw = b''.join(codec.encode_read_ok(7, b'xy'))
    assert raw.hex() == hdr(0x90, 7, 4) + '0000' + '7879'
    assert bytes(codec.reply_status(one_frame(raw).body)) == b'xy'

    raw = control.encode_chunk_info_ok(13, 6, 8192, 9, [1, 2])
    assert raw.hex() == (hdr(0x96, 13, 34) + '0000' + '%016x' % 6 +
                         '%016x' % 8192 + '00000009' + '00000002' +
                         '00000001' + '00000002')
    assert control.decode_chunk_info_ok(one_frame(raw).body) == (6, 8192, 9,
                                                               [1, 2])

    raw = codec.encode_ok(codec.FLUSH, 10)
    assert raw.hex() == hdr(0x93, 10, 2) + '0000'


@pytest.mark.parametrize('exc', [
    exception.Fenced(reason='x'), exception.StaleEpoch(reason='x'),
    exception.InsufficientReplicas(have=1, need=2, reason='x'),
    exception.NoSpace(reason='x'), exception.ChecksumError(reason='x'),
    exception.OutOfRange(reason='x'), exception.NotAuthorized(reason='x'),
    exception.StaleReplica(reason='x'), exception.NotFound(kind='a', name='b'),
])
def test_error_replies_carry_the_exception(exc):
    raw = codec.encode_error(codec.WRITE, 8, exc)
    f = one_frame(raw)
    with pytest.raises(type(exc)) as ei:
        codec.reply_status(f.body)
    assert str(ei.value) == str(exc)


def test_fenced_error_bytes():
    raw = codec.encode_error(codec.WRITE, 8, exception.Fenced(reason='x'))
    assert raw.hex() == hdr(0x91, 8, 11) + '0009' + b'Fenced: x'.hex()


def test_auth_frames():
    raw = codec.encode_challenge(bytes(range(32)))
    assert raw.hex() == hdr(0x01, 0, 32) + bytes(range(32)).hex()
    key = b'k' * 32
    sn, cn = b's' * 32, b'c' * 32
    mac = codec.client_mac(key, sn, cn)
    f = one_frame(codec.encode_auth(cn, mac))
    assert codec.decode_auth(f.body) == (cn, mac)
    assert codec.client_mac(key, sn, cn) != codec.server_mac(key, sn, cn)
    assert codec.client_mac(b'x' * 32, sn, cn) != mac


def test_decoder_reassembles_split_and_batched_frames():
    a = codec.encode_read(1, VOL, 0, 1, 0, 4096)
    b = b''.join(codec.encode_write(2, VOL, 0, 1, 1, 0, [1], b'z' * 5000))
    stream = a + b + a
    dec = codec.FrameDecoder()
    frames = []
    for i in range(0, len(stream), 7):
        frames += dec.feed(stream[i:i + 7])
    assert [f.req_id for f in frames] == [1, 2, 1]
    assert bytes(codec.decode_write(frames[1].body).data) == b'z' * 5000


def test_decoder_rejects_bad_magic_version_and_length():
    with pytest.raises(exception.ProtocolError, match='magic'):
        codec.FrameDecoder().feed(b'GET / HTTP/1.1\r\n\r\nxxxxxx')
    bad_version = bytearray(codec.encode_flush(1, VOL))
    bad_version[4] = 9
    with pytest.raises(exception.ProtocolError, match='version'):
        codec.FrameDecoder().feed(bytes(bad_version))
    huge = codec.header(codec.WRITE, 1, 0xFFFFFFFF)
    with pytest.raises(exception.ProtocolError, match='exceeds'):
        codec.FrameDecoder().feed(huge)


def test_truncated_bodies_are_protocol_errors():
    with pytest.raises(exception.ProtocolError):
        codec.decode_read(memoryview(b'\0' * 10))
    body = codec.encode_write(1, VOL, 0, 1, 1, 0, [1, 2], b'')[0][20:]
    with pytest.raises(exception.ProtocolError, match='replica list'):
        codec.decode_write(memoryview(body[:-4]))
    with pytest.raises(exception.ProtocolError):
        codec.reply_status(memoryview(b'\0'))


def test_repair_request_and_its_bounds():
    raw = control.encode_repair(14, VOL, 2, 5, 100, 8)
    assert raw.hex() == (hdr(0x1A, 14, 40) + VOL_HEX + '%016x' % 2 +
                         '%016x' % 5 + '%08x' % 100 + '%08x' % 8)
    req = control.decode_repair(one_frame(raw).body)
    assert (req.volume, req.index, req.epoch, req.first, req.count) == (
        VOL, 2, 5, 100, 8)
    for count in (0, control.MAX_REPAIR_BLOCKS + 1):
        bad = control.encode_repair(1, VOL, 2, 5, 0, count)
        with pytest.raises(exception.ProtocolError):
            control.decode_repair(one_frame(bad).body)
    assert req.layer == 0           # no layer named: the head


def test_repair_of_a_snapshot_layer():
    raw = control.encode_repair(14, VOL, 2, 5, 100, 8, layer=3)
    assert raw.hex().endswith('%08x' % 8 + '%016x' % 3)
    req = control.decode_repair(one_frame(raw).body)
    assert (req.first, req.count, req.layer) == (100, 8, 3)


def test_raw_read_reply_and_raw_replicate():
    entries, data = b'\x00\x00\x00\x07\x00\x00\x00\x01', b'z' * 4096
    raw = b''.join(codec.encode_read_raw_ok(15, entries, data))
    assert raw.hex() == (hdr(0x90, 15, 6 + 8 + 4096) + '0000' + '00000001'
                         + entries.hex() + data.hex())
    got_entries, got_data = codec.decode_read_raw(one_frame(raw).body)
    assert (got_entries, bytes(got_data)) == (entries, data)
    with pytest.raises(exception.ProtocolError):
        codec.decode_read_raw(one_frame(raw).body[:-1])

    req = codec.WriteRequest(VOL, 1, 3, 0, 0, 8192, 4096, [], entries + data,
                             codec.FLAG_RAW)
    f = one_frame(b''.join(codec.encode_replicate(16, req, 3)))
    assert f.flags == codec.FLAG_RAW
    got = codec.decode_replicate(f.body, f.flags)
    assert (got.offset, got.length, bytes(got.data)) == (8192, 4096,
                                                         entries + data)
    # Into a snapshot layer: the flag and the layer's sequence travel.
    layered = codec.WriteRequest(VOL, 1, 3, 0, 7, 0, 4096, [],
                                 entries + data,
                                 codec.FLAG_RAW | codec.FLAG_LAYER)
    f = one_frame(b''.join(codec.encode_replicate(18, layered, 3)))
    assert f.flags == codec.FLAG_RAW | codec.FLAG_LAYER
    assert codec.decode_replicate(f.body, f.flags).seq == 7
    # The entries must come with the blocks: a payload of blocks alone
    # is refused.
    req.data = data
    f = one_frame(b''.join(codec.encode_replicate(17, req, 3)))
    with pytest.raises(exception.ProtocolError):
        codec.decode_replicate(f.body, f.flags)


def test_deep_chunk_info_lists_torn_blocks():
    raw = control.encode_chunk_info(18, VOL, 4, deep=True)
    f = one_frame(raw)
    assert f.flags == codec.FLAG_DEEP
    reply = control.encode_chunk_info_ok(18, 3, 8192, 9, [1, 2], [1])
    body = one_frame(reply).body
    assert control.decode_chunk_info_ok(body, deep=True) == (3, 8192, 9,
                                                           [1, 2], [1])
    with pytest.raises(exception.ProtocolError):
        control.decode_chunk_info_ok(body)   # a plain reply has no list


def test_entries_request_and_reply():
    raw = control.encode_entries(17, VOL, 3, 4096, 512, join=True)
    assert raw.hex() == (hdr(0x1C, 17, 32, codec.FLAG_JOIN) + VOL_HEX +
                         '%016x' % 3 + '%08x' % 4096 + '%08x' % 512)
    f = one_frame(raw)
    assert f.flags == codec.FLAG_JOIN
    assert control.decode_entries(f.body) == (VOL, 3, 4096, 512)
    bad = control.encode_entries(1, VOL, 3, 0, control.MAX_ENTRY_BLOCKS + 1)
    with pytest.raises(exception.ProtocolError, match='ENTRIES of'):
        control.decode_entries(one_frame(bad).body)

    head, layer = bytes(range(16)), b'\xff' * 8
    raw = control.encode_entries_ok(18, 9, 300, [(0, head), (4, layer)])
    assert raw.hex() == (hdr(0x9C, 18, 2 + 8 + 8 + 4 + 12 + 16 + 12 + 8) +
                         '0000' + '%016x' % 9 + '%016x' % 300 + '%08x' % 2 +
                         '%016x' % 0 + '%08x' % 16 + head.hex() +
                         '%016x' % 4 + '%08x' % 8 + layer.hex())
    body = bytes(one_frame(raw).body)
    assert control.decode_entries_ok(body) == (9, 300, {0: head, 4: layer})
    for cut in (body[:-1], body + b'\0', body[:20]):
        with pytest.raises(exception.ProtocolError):
            control.decode_entries_ok(cut)
    missing = codec.encode_error(codec.ENTRIES, 19, exception.NotFound(
        kind='chunk replica', name='x/0'))
    with pytest.raises(exception.NotFound):
        control.decode_entries_ok(one_frame(missing).body)


def test_resync_request():
    raw = control.encode_resync(20, VOL, 5, 9)
    assert raw.hex() == (hdr(0x1D, 20, 32) + VOL_HEX + '%016x' % 5 +
                         '%016x' % 9)
    req = control.decode_resync(one_frame(raw).body)
    assert (req.volume, req.index, req.epoch) == (VOL, 5, 9)
    with pytest.raises(exception.ProtocolError):
        control.decode_resync(one_frame(raw).body[:-1])


def test_term_request():
    raw = control.encode_term(21, 7)
    assert raw.hex() == hdr(0x1E, 21, 8) + '%016x' % 7
    assert control.decode_term(one_frame(raw).body) == 7
    with pytest.raises(exception.ProtocolError):
        control.decode_term(one_frame(raw).body[:-1])


def test_not_leader_crosses_the_wire():
    """A chunk server's refusal of a deposed master's term reaches the
    master as NotLeader (it steps down), not as an internal error."""
    raw = codec.encode_error(codec.TERM, 3, exception.NotLeader(reason='x'))
    with pytest.raises(exception.NotLeader):
        codec.reply_status(one_frame(raw).body)


def test_read_of_changes_since_a_snapshot():
    """FLAG_SINCE: one more field, the older snapshot's sequence; states
    only; the older snapshot first, and not 0."""
    raw = codec.encode_read(7, VOL, 3, 9, 0, 8192, snap=5, since=2)
    f = one_frame(raw)
    assert f.flags == codec.FLAG_SINCE | codec.FLAG_MAP_ONLY
    assert raw.hex().endswith('%016x' % 5 + '%016x' % 2)
    r = codec.decode_read(f.body, f.flags)
    assert (r.snap, r.since, r.length) == (5, 2, 8192)
    # Without the flag the field is not read: an older server's view.
    assert codec.decode_read(f.body).since is None
    head = one_frame(codec.encode_read(7, VOL, 3, 9, 0, 4096, since=9))
    assert codec.decode_read(head.body, head.flags).since == 9
    for snap, since in ((5, 5), (5, 7), (0, 0)):
        bad = one_frame(codec.encode_read(7, VOL, 3, 9, 0, 4096, snap=snap,
                                          since=since))
        with pytest.raises(exception.InvalidArgument, match='older'):
            codec.decode_read(bad.body, bad.flags)
    with pytest.raises(exception.ProtocolError, match='FLAG_MAP_ONLY'):
        codec.decode_read(f.body, codec.FLAG_SINCE)
    with pytest.raises(exception.ProtocolError, match='shorter'):
        codec.decode_read(f.body[:-8], f.flags)
