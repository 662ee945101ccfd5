"""The NBD codec, request checks and error table against golden bytes and
numbers written from the protocol document (doc/proto.md), not from the
encoders."""

import ast
import errno
import pathlib

import pytest

from cinder_ursa import exception
from cinder_ursa.nbd import protocol as p

MiB = 1024 * 1024
REPLY_MAGIC = bytes.fromhex('0003e889045565a9')
# A writable Ursa export: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
# SEND_WRITE_ZEROES, CAN_MULTI_CONN, SEND_CACHE, SEND_FAST_ZERO.
RW = 0x0D6D
RO = 0x050F   # HAS_FLAGS, READ_ONLY, SEND_FLUSH, SEND_FUA, MULTI_CONN, CACHE


@pytest.mark.parametrize('module', ['protocol.py', 'handshake.py'])
def test_the_sans_io_modules_do_no_io(module):
    """They import no I/O module, and of ours only the exceptions and the
    NBD codec."""
    tree = ast.parse((pathlib.Path(p.__file__).parent / module).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {'%s.%s' % (n.module, a.name) for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imported <= {'errno', 'struct', 'cinder_ursa.exception',
                        'cinder_ursa.nbd.protocol'}


# --- handshake encoders and decoders -----------------------------------------

def test_greeting_is_fixed_newstyle_with_no_zeroes():
    assert p.handshake() == b'NBDMAGICIHAVEOPT\x00\x03'


@pytest.mark.parametrize('raw,no_zeroes', [
    (b'\x00\x00\x00\x01', False), (b'\x00\x00\x00\x03', True)])
def test_client_flags(raw, no_zeroes):
    assert p.decode_client_flags(raw) is no_zeroes


@pytest.mark.parametrize('raw', [b'\x00\x00\x00\x00', b'\x00\x00\x00\x02',
                                 b'\x00\x00\x00\x07', b'\x80\x00\x00\x01'])
def test_client_flags_other_than_fixed_newstyle_are_refused(raw):
    with pytest.raises(exception.ProtocolError):
        p.decode_client_flags(raw)


def test_option_header():
    raw = b'IHAVEOPT' + bytes.fromhex('00000007 0000000a')
    assert p.decode_option_header(raw) == (p.OPT_GO, 10)
    with pytest.raises(exception.ProtocolError):
        p.decode_option_header(b'IHAVEOPS' + bytes(8))
    with pytest.raises(exception.ProtocolError):  # more than 64 KiB
        p.decode_option_header(b'IHAVEOPT' + bytes.fromhex(
            '00000001 00010001'))


def test_option_reply():
    assert p.option_reply(p.OPT_LIST, p.REP_ERR_INVALID, b'why') == (
        REPLY_MAGIC + bytes.fromhex('00000003 80000003 00000003') + b'why')


def test_export_name_reply_with_and_without_zeroes():
    short = bytes.fromhex('0000000003000000 0d6d')
    assert p.export_name_reply(48 * MiB, RW, True) == short
    assert p.export_name_reply(48 * MiB, RW, False) == short + bytes(124)


def test_list_reply_payload():
    assert p.server_reply('vol1') == b'\x00\x00\x00\x04vol1'


def test_info_requests_decode():
    data = bytes.fromhex('00000003') + b'vol' + bytes.fromhex(
        '0003 0000 0001 0003')
    assert p.decode_info(data) == ('vol', [p.INFO_EXPORT, p.INFO_NAME,
                                           p.INFO_BLOCK_SIZE])
    assert p.encode_info('vol', [0, 1, 3]) == data
    assert p.decode_info(bytes.fromhex('00000000 0000')) == ('', [])


@pytest.mark.parametrize('data', [
    b'',
    bytes.fromhex('00000000 00'),            # shorter than 6 bytes
    bytes.fromhex('00000009 0000') + b'vol',  # name runs past the end
    bytes.fromhex('00000000 0002 0001'),     # says 2 requests, has 1
    bytes.fromhex('00000000 0000 00'),       # a trailing byte
])
def test_bad_info_requests(data):
    with pytest.raises(exception.InvalidArgument):
        p.decode_info(data)


def test_info_replies():
    assert p.info_export(48 * MiB, RW) == bytes.fromhex(
        '0000 0000000003000000 0d6d')
    assert p.info_block_size(p.MAX_REQUEST) == bytes.fromhex(
        '0003 00000001 00001000 02000000')


def test_meta_context_request_decode():
    data = (bytes.fromhex('00000003') + b'vol' + bytes.fromhex('00000002') +
            bytes.fromhex('0000000f') + b'base:allocation' +
            bytes.fromhex('00000005') + b'base:')
    assert p.decode_meta_context(data) == ('vol', ['base:allocation',
                                                   'base:'])
    assert p.encode_meta_context('vol', ['base:allocation', 'base:']) == data


@pytest.mark.parametrize('data', [
    b'\x00\x00',
    bytes.fromhex('00000009') + b'vol',
    bytes.fromhex('00000000 00000001 00000009') + b'base:',
    bytes.fromhex('00000000 00000000 00'),
    bytes.fromhex('00000000 00000001 00000002') + b'\xff\xfe',
])
def test_bad_meta_context_requests(data):
    with pytest.raises(exception.InvalidArgument):
        p.decode_meta_context(data)


def test_meta_context_reply_and_matching():
    assert p.meta_context_reply(1, 'base:allocation') == (
        b'\x00\x00\x00\x01base:allocation')
    assert p.match_meta_context(['base:allocation'], listing=False)
    assert not p.match_meta_context(['base:'], listing=False)
    assert not p.match_meta_context([], listing=False)
    assert p.match_meta_context(['base:'], listing=True)
    assert p.match_meta_context([], listing=True)
    assert not p.match_meta_context(['qemu:dirty-bitmap:x'], listing=True)


@pytest.mark.parametrize('queries,listing,every,names', [
    ([], True, True, []), ([], False, False, []),
    (['qemu:'], True, True, []), (['qemu:'], False, False, []),
    (['qemu:dirty-bitmap:'], True, True, []),
    (['qemu:dirty-bitmap:'], False, False, []),
    (['qemu:dirty-bitmap:a'], True, False, ['a']),
    (['qemu:dirty-bitmap:a', 'qemu:dirty-bitmap:b:c', 'qemu:dirty-bitmap:a'],
     False, False, ['a', 'b:c']),
    (['base:allocation', 'base:'], True, False, []),
    (['qemu:allocation-depth', 'x:y', 'qemu:dirty-bitmapa'], True, False,
     []),
])
def test_which_dirty_bitmaps_queries_name(queries, listing, every, names):
    assert p.lists_every_bitmap(queries, listing) is every
    assert p.bitmap_names(queries) == names


def test_dirty_bitmap_matching():
    names = ['a', 'b:c', 'd']  # in the order listed
    assert p.match_dirty_bitmaps([], names, listing=True) == names
    assert p.match_dirty_bitmaps([], names, listing=False) == []
    for wildcard in ('qemu:', 'qemu:dirty-bitmap:'):
        assert p.match_dirty_bitmaps([wildcard], names, True) == names
        assert p.match_dirty_bitmaps([wildcard], names, False) == []
    # Exact names, each once, in the order asked; the rest ignored.
    assert p.match_dirty_bitmaps(
        ['qemu:dirty-bitmap:d', 'qemu:dirty-bitmap:b:c', 'base:allocation',
         'qemu:dirty-bitmap:d', 'qemu:dirty-bitmap:zz',
         'qemu:dirty-bitmap:A'], names, False) == ['d', 'b:c']
    assert p.match_dirty_bitmaps(
        ['qemu:dirty-bitmap:d', 'qemu:'], names, True) == names
    assert p.match_dirty_bitmaps(['qemu:dirty-bitmap:a'], [], True) == []


# --- transmission ------------------------------------------------------------

def test_transmission_flags():
    caps = dict(flush=True, fua=True, trim=True, zero=True, fast_zero=True,
                multi_conn=True, cache=True)
    assert p.transmission_flags(read_only=False, **caps) == RW
    assert p.transmission_flags(read_only=False, df=True, **caps) == 0x0DED
    assert p.transmission_flags(
        read_only=True, flush=True, fua=True, trim=False, zero=False,
        fast_zero=True, multi_conn=True, cache=True) == RO
    assert p.transmission_flags(False, False, False, False, False, False,
                                False, False) == 0x0001


def test_replies():
    assert p.simple_reply(0x0102030405060708, 22) == bytes.fromhex(
        '67446698 00000016 0102030405060708')
    assert p.structured_error(7, p.NBD_EIO, 'bad') == bytes.fromhex(
        '668e33ef 0001 8001 0000000000000007 00000009'
        '00000005 0003') + b'bad'
    assert p.error_reply(7, p.NBD_EIO, False, 'bad') == p.simple_reply(7, 5)
    assert p.block_status_payload([(4096, 0), (8192, 3)]) == bytes.fromhex(
        '00000001 00001000 00000000 00002000 00000003')
    assert p.block_status_payload([(4096, 1)], 7) == bytes.fromhex(
        '00000007 00001000 00000001')


def test_request_payload_length():
    fields = (0x25609513, 0, p.CMD_WRITE, 1, 0, 4096)
    assert p.request_payload_length(fields) == 4096
    assert p.request_payload_length((0x25609513, 0, p.CMD_READ, 1, 0,
                                     4096)) == 0
    with pytest.raises(exception.ProtocolError):
        p.request_payload_length((0x25609514, 0, p.CMD_READ, 1, 0, 0))
    with pytest.raises(exception.ProtocolError):
        p.request_payload_length((0x25609513, 0, p.CMD_WRITE, 1, 0,
                                  32 * MiB + 1))


# Each rule of validate_request, with the error number the spec gives.
SIZE = 16 * MiB
R, W, DISC, FLUSH, TRIM, CACHE, WZ, BS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
CASES = [
    # name, cmd, flags, offset, length, eflags, structured, meta, error
    ('a valid read', R, 0, 0, 4096, RW, False, False, 0),
    ('a read ending at the end', R, 0, SIZE - 1, 1, RW, False, False, 0),
    ('a valid write with FUA', W, FUA, 0, 4096, RW, False, False, 0),
    ('FUA on a read (nbdkit allows it)', R, FUA, 0, 1, RW, False, False, 0),
    ('write on a read-only export', W, 0, 0, 4096, RO, False, False, 1),
    ('trim on a read-only export', TRIM, 0, 0, 4096, RO, False, False, 1),
    ('zeroes on a read-only export', WZ, 0, 0, 4096, RO, False, False, 1),
    ('read-only is checked before the range', W, 0, SIZE, 1, RO, False,
     False, 1),
    ('unknown command', 99, 0, 0, 0, RW, False, False, 22),
    ('read past the end', R, 0, SIZE - 10, 20, RW, False, False, 22),
    ('read of nothing', R, 0, 0, 0, RW, False, False, 22),
    ('write past the end', W, 0, SIZE, 4096, RW, False, False, 28),
    ('zeroes past the end', WZ, 0, SIZE, 4096, RW, False, False, 28),
    ('trim past the end', TRIM, 0, SIZE, 4096, RW, False, False, 22),
    ('cache past the end', CACHE, 0, SIZE, 1, RW, False, False, 22),
    ('block status past the end', BS, 0, SIZE, 1, RW, True, True, 22),
    ('offset overflowing 64 bits', R, 0, 2 ** 64 - 1, 2, RW, False, False,
     22),
    ('flush with an offset', FLUSH, 0, 512, 0, RW, False, False, 22),
    ('flush with a length', FLUSH, 0, 0, 512, RW, False, False, 22),
    ('a valid flush', FLUSH, 0, 0, 0, RW, False, False, 0),
    ('unknown flag', R, 1 << 5, 0, 1, RW, False, False, 22),
    ('NO_HOLE on a write', W, NO_HOLE, 0, 1, RW, False, False, 22),
    ('NO_HOLE on zeroes', WZ, NO_HOLE, 0, 1, RW, False, False, 0),
    ('FAST_ZERO on a trim', TRIM, FAST_ZERO, 0, 1, RW, False, False, 22),
    ('FAST_ZERO not advertised', WZ, FAST_ZERO, 0, 1, RW & ~0x800, False,
     False, 22),
    ('FAST_ZERO on zeroes', WZ, FAST_ZERO, 0, 1, RW, False, False, 0),
    ('DF on a write', W, DF, 0, 1, RW, True, False, 22),
    ('DF without structured replies', R, DF, 0, 1, RW, False, False, 22),
    ('DF on a structured read', R, DF, 0, 1, RW, True, False, 0),
    ('REQ_ONE on a read', R, REQ_ONE, 0, 1, RW, True, True, 22),
    ('REQ_ONE on block status', BS, REQ_ONE, 0, 1, RW, True, True, 0),
    ('FUA not advertised', W, FUA, 0, 1, RW & ~0x8, False, False, 22),
    ('read above the payload limit', R, 0, 0, 32 * MiB + 1, RW | 0, False,
     False, 22),
    ('flush not advertised', FLUSH, 0, 0, 0, RW & ~0x4, False, False, 22),
    ('trim not advertised', TRIM, 0, 0, 1, RW & ~0x20, False, False, 22),
    ('zeroes not advertised', WZ, 0, 0, 1, RW & ~0x40, False, False, 22),
    ('cache not advertised', CACHE, 0, 0, 1, RW & ~0x400, False, False, 22),
    ('block status without structured replies', BS, 0, 0, 1, RW, False,
     True, 22),
    ('block status without base:allocation', BS, 0, 0, 1, RW, True, False,
     22),
    ('a valid block status', BS, 0, 0, SIZE, RW, True, True, 0),
]


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_validate_request(case):
    _, cmd, flags, offset, length, eflags, structured, meta, error = case
    size = 64 * MiB if length > SIZE else SIZE
    assert p.validate_request(cmd, flags, offset, length, size, eflags,
                              structured, meta) == error


# --- the error table ---------------------------------------------------------

@pytest.mark.parametrize('exc,flags,error', [
    (exception.NoSpace(), 0, 28),
    (exception.InvalidArgument(reason='x'), 0, 22),
    (exception.OutOfRange(), 0, 22),
    (exception.Fenced(), 0, 1),
    (exception.UrsaTimeout(peer='cs1', seconds=1), 0, 5),
    (exception.ChecksumError(), 0, 5),
    (exception.UrsaConnectionError(peer='cs1', reason='x'), 0, 5),
    (MemoryError(), 0, 12),
    (OSError(errno.EROFS, 'x'), 0, 1),
    (OSError(errno.EPERM, 'x'), 0, 1),
    (OSError(errno.EIO, 'x'), 0, 5),
    (OSError(errno.EDQUOT, 'x'), 0, 28),
    (OSError(errno.EFBIG, 'x'), 0, 28),
    (OSError(errno.ESHUTDOWN, 'x'), 0, 108),
    (OSError(errno.ENOTSUP, 'x'), FAST_ZERO, 95),
    (OSError(errno.ENOTSUP, 'x'), 0, 22),
    (OSError(errno.EOVERFLOW, 'x'), DF, 75),
    (OSError(errno.EOVERFLOW, 'x'), 0, 22),
    (OSError(errno.EBADMSG, 'x'), 0, 5),
    (ConnectionResetError(), 0, 5),
    (RuntimeError('our bug'), 0, 5),
])
def test_nbd_error(exc, flags, error):
    assert p.nbd_error(exc, flags) == error


def test_error_numbers_are_the_protocols():
    assert (p.NBD_EPERM, p.NBD_EIO, p.NBD_ENOMEM, p.NBD_EINVAL, p.NBD_ENOSPC,
            p.NBD_EOVERFLOW, p.NBD_ENOTSUP, p.NBD_ESHUTDOWN) == (
        1, 5, 12, 22, 28, 75, 95, 108)
