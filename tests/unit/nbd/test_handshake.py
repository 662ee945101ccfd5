"""The NBD negotiation, option by option, against golden bytes written
from the protocol document (doc/proto.md)."""

import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.nbd import handshake as hs

MiB = 1024 * 1024
MAGIC = bytes.fromhex('0003e889045565a9')
RW = 0x0D6D  # flags a writable Ursa export reports


def opt(option, data=b''):
    """An option as a client sends it."""
    return b'IHAVEOPT' + struct.pack('>II', option, len(data)) + data


def rep(option, rtype, data=b''):
    """An option reply as the server must send it."""
    return MAGIC + struct.pack('>III', option, rtype, len(data)) + data


ACK, SERVER, INFO, META = 1, 2, 3, 4
UNSUP, POLICY, INVALID, TLS_REQD, UNKNOWN = (0x80000001, 0x80000002,
                                             0x80000003, 0x80000005,
                                             0x80000006)


def start(cflags=b'\x00\x00\x00\x03', **kwargs):
    neg = hs.Negotiation(**kwargs)
    assert neg.greeting() == (b'NBDMAGIC' b'IHAVEOPT' b'\x00\x03')
    assert neg.receive(cflags) == (b'', None)
    return neg


def send(neg, raw):
    """Feed a client option; return what the server sends, and the event."""
    assert neg.want == 16
    assert neg.receive(raw[:16]) == (b'', None)
    assert neg.want == len(raw) - 16
    return neg.receive(raw[16:])


def info_data(name, *requests):
    raw = name.encode()
    return (struct.pack('>I', len(raw)) + raw +
            struct.pack('>H', len(requests)) +
            b''.join(struct.pack('>H', r) for r in requests))


def meta_data(name, *queries):
    out = struct.pack('>I', len(name)) + name.encode()
    out += struct.pack('>I', len(queries))
    for q in queries:
        out += struct.pack('>I', len(q)) + q.encode()
    return out


INFO_EXPORT_RW = bytes.fromhex('0000 0000000003000000 0d6d')
INFO_BLOCK = bytes.fromhex('0003 00000001 00001000 02000000')


def test_client_flags():
    assert not start(b'\x00\x00\x00\x01').no_zeroes
    assert start(b'\x00\x00\x00\x03').no_zeroes
    with pytest.raises(exception.ProtocolError):
        start(b'\x00\x00\x00\x00')
    with pytest.raises(exception.ProtocolError):
        start(b'\x00\x00\x01\x01')


def test_export_name_with_and_without_zeroes():
    for cflags, tail in ((b'\x00\x00\x00\x03', b''),
                         (b'\x00\x00\x00\x01', bytes(124))):
        neg = start(cflags)
        out, ev = send(neg, opt(1, b'vol1'))
        assert out == b'' and isinstance(ev, hs.OpenExport)
        assert (ev.option, ev.name) == (1, 'vol1')
        out, ev = neg.export_opened(48 * MiB, RW)
        assert out == bytes.fromhex('0000000003000000 0d6d') + tail
        assert isinstance(ev, hs.Ready)


def test_export_name_refused_closes_without_a_word():
    neg = start()
    send(neg, opt(1, b'nope'))
    out, ev = neg.export_refused()
    assert out == b'' and isinstance(ev, hs.Close)


@pytest.mark.parametrize('requests', [(), (0,), (1,), (2,), (3,), (0, 1, 2, 3),
                                      (77,)])
def test_info_answers_export_and_block_size_whatever_is_asked(requests):
    """Every information type asked for (none, EXPORT, NAME, DESCRIPTION,
    BLOCK_SIZE, an unknown one) gets NBD_INFO_EXPORT and
    NBD_INFO_BLOCK_SIZE: the spec requires EXPORT, and the rest may be
    left out; BLOCK_SIZE is always given."""
    neg = start()
    out, ev = send(neg, opt(6, info_data('vol1', *requests)))
    assert (ev.option, ev.name, ev.requests) == (6, 'vol1', list(requests))
    out, ev = neg.export_opened(48 * MiB, RW)
    assert out == (rep(6, INFO, INFO_EXPORT_RW) + rep(6, INFO, INFO_BLOCK) +
                   rep(6, ACK))
    assert ev is None
    assert neg.want == 16  # the next option


def test_go_then_transmission():
    neg = start()
    _, ev = send(neg, opt(7, info_data('vol1', 3)))
    assert (ev.option, ev.name) == (7, 'vol1')
    out, ev = neg.export_opened(48 * MiB, RW)
    assert out == (rep(7, INFO, INFO_EXPORT_RW) + rep(7, INFO, INFO_BLOCK) +
                   rep(7, ACK))
    assert isinstance(ev, hs.Ready)
    with pytest.raises(exception.InvalidArgument):
        neg.receive(b'')  # negotiation is over


@pytest.mark.parametrize('option', [6, 7])
def test_info_and_go_of_an_unknown_export(option):
    neg = start()
    send(neg, opt(option, info_data('nope')))
    out, ev = neg.export_refused()
    assert out == rep(option, UNKNOWN,
                      b'no such volume, or it cannot be opened')
    assert ev is None and neg.want == 16


@pytest.mark.parametrize('data', [b'', b'\x00\x00\x00\x09\x00\x00vol',
                                  b'\x00\x00\x00\x00\x00\x01'])
def test_bad_info_data_is_invalid(data):
    neg = start()
    assert send(neg, opt(7, data)) == (rep(7, INVALID), None)


def test_list():
    neg = start()
    out, ev = send(neg, opt(3))
    assert out == b'' and isinstance(ev, hs.ListExports)
    assert neg.exports_listed(['a', 'vol2']) == (
        rep(3, SERVER, b'\x00\x00\x00\x01a') +
        rep(3, SERVER, b'\x00\x00\x00\x04vol2') + rep(3, ACK))
    assert send(neg, opt(3, b'x')) == (rep(3, INVALID), None)


def test_list_that_cannot_be_answered_is_an_error_and_may_be_retried():
    neg = start()
    send(neg, opt(3))
    assert neg.exports_unlisted('no master') == rep(3, POLICY, b'no master')
    out, ev = send(neg, opt(3))
    assert out == b'' and isinstance(ev, hs.ListExports)


def test_abort():
    neg = start()
    out, ev = send(neg, opt(2))
    assert out == rep(2, ACK) and isinstance(ev, hs.Close)


@pytest.mark.parametrize('option', [4, 11, 12, 0xFFFFFFFF])
def test_unknown_options_are_unsupported(option):
    neg = start()
    assert send(neg, opt(option, b'whatever')) == (rep(option, UNSUP), None)


def test_structured_reply():
    neg = start()
    assert send(neg, opt(8, b'x')) == (rep(8, INVALID), None)
    assert not neg.structured
    assert send(neg, opt(8)) == (rep(8, ACK), None)
    assert neg.structured
    send(neg, opt(7, info_data('vol1')))
    out, _ = neg.export_opened(48 * MiB, RW)
    # SEND_DF joins the flags: reads are never fragmented.
    assert out.startswith(rep(7, INFO, bytes.fromhex(
        '0000 0000000003000000 0ded')))


def test_meta_context_needs_structured_replies():
    neg = start()
    assert send(neg, opt(10, meta_data('vol1', 'base:allocation'))) == (
        rep(10, INVALID, b'negotiate structured replies first'), None)
    assert not neg.base_allocation


def test_set_meta_context_base_allocation():
    neg = start()
    send(neg, opt(8))
    out, ev = send(neg, opt(10, meta_data('vol1', 'base:allocation')))
    assert out == (rep(10, META, b'\x00\x00\x00\x01base:allocation') +
                   rep(10, ACK))
    assert neg.base_allocation
    # Another SET replaces it, also when it selects nothing or fails.
    out, ev = send(neg, opt(10, meta_data('vol1', 'qemu:dirty-bitmap:b')))
    assert out == b'' and isinstance(ev, hs.ListBitmaps)
    assert not neg.base_allocation
    assert neg.bitmaps_listed({}) == rep(10, ACK)  # no bitmap b
    assert not neg.base_allocation and neg.contexts == []
    send(neg, opt(10, meta_data('vol1', 'base:allocation')))
    assert send(neg, opt(10, b'\x00')) == (rep(10, INVALID), None)
    assert not neg.base_allocation


def test_list_meta_context():
    neg = start()
    send(neg, opt(8))
    listed = rep(9, META, b'\x00\x00\x00\x00base:allocation') + rep(9, ACK)
    # No query lists the dirty bitmaps too: the connection looks them up.
    out, ev = send(neg, opt(9, meta_data('vol1')))
    assert out == b'' and isinstance(ev, hs.ListBitmaps)
    assert neg.bitmaps_listed({}) == listed
    assert send(neg, opt(9, meta_data('vol1', 'base:'))) == (listed, None)
    assert send(neg, opt(9, meta_data('vol1', 'x:y'))) == (rep(9, ACK), None)
    assert not neg.base_allocation  # listing selects nothing


@pytest.mark.parametrize('go_name,kept', [('vol1', True), ('vol2', False)])
def test_meta_context_holds_only_for_the_export_it_named(go_name, kept):
    neg = start()
    send(neg, opt(8))
    send(neg, opt(10, meta_data('vol1', 'base:allocation')))
    send(neg, opt(7, info_data(go_name)))
    neg.export_opened(MiB, RW)
    assert neg.base_allocation is kept


def test_starttls_not_configured():
    neg = start()
    assert send(neg, opt(5)) == (rep(5, POLICY, b'TLS is not configured'),
                                 None)


def test_starttls_upgrade_forgets_what_came_before():
    neg = start(tls_available=True)
    assert send(neg, opt(5, b'x')) == (rep(5, INVALID), None)
    send(neg, opt(8))
    out, ev = send(neg, opt(5))
    assert out == rep(5, ACK) and isinstance(ev, hs.StartTls)
    with pytest.raises(exception.InvalidArgument):
        neg.receive(b'x' * 16)  # nothing until the upgrade is done
    neg.tls_started()
    assert neg.tls and not neg.structured
    assert send(neg, opt(5)) == (rep(5, INVALID), None)  # already TLS


def test_tls_required():
    neg = start(tls_available=True, tls_required=True)
    msg = b'this server requires TLS (NBD_OPT_STARTTLS)'
    assert send(neg, opt(3)) == (rep(3, TLS_REQD, msg), None)
    assert send(neg, opt(7, info_data('vol1'))) == (rep(7, TLS_REQD, msg),
                                                    None)
    out, ev = send(neg, opt(1, b'vol1'))
    assert out == b'' and isinstance(ev, hs.Close)
    neg = start(tls_available=True, tls_required=True)
    assert send(neg, opt(2))[0] == rep(2, ACK)  # ABORT is allowed


def test_options_whose_framing_is_wrong_drop_the_client():
    neg = start()
    with pytest.raises(exception.ProtocolError):
        neg.receive(b'IHAVEOPX' + bytes(8))
    neg = start()
    with pytest.raises(exception.ProtocolError):
        neg.receive(b'IHAVEOPT' + struct.pack('>II', 7, 64 * 1024 + 1))


def test_answers_out_of_turn_are_refused():
    neg = start()
    with pytest.raises(exception.InvalidArgument):
        neg.export_opened(MiB, RW)
    send(neg, opt(3))
    with pytest.raises(exception.InvalidArgument):
        neg.export_refused()
    with pytest.raises(exception.InvalidArgument):
        neg.receive(b'x' * 16)
    neg.exports_listed([])
    with pytest.raises(exception.InvalidArgument):
        neg.receive(b'x' * 3)  # not the 16 bytes asked for


# --- qemu:dirty-bitmap:<snapshot> --------------------------------------------

BITMAPS = {'a': 'snapshot a', 'b': 'snapshot b'}  # what the server listed


def meta(cid, name):
    return rep(9 if cid is None else 10, META,
               struct.pack('>I', cid or 0) + name.encode())


def listing(neg, *queries, bitmaps=BITMAPS):
    """LIST_META_CONTEXT: the replies (looking the bitmaps up if it
    asks)."""
    out, ev = send(neg, opt(9, meta_data('vol1', *queries)))
    if ev is None:
        return out
    assert out == b'' and isinstance(ev, hs.ListBitmaps)
    assert (ev.option, ev.name, ev.queries) == (9, 'vol1', list(queries))
    return neg.bitmaps_listed(bitmaps)


def setting(neg, *queries, bitmaps=BITMAPS, export='vol1'):
    out, ev = send(neg, opt(10, meta_data(export, *queries)))
    if ev is None:
        return out
    assert out == b'' and isinstance(ev, hs.ListBitmaps)
    assert (ev.option, ev.name) == (10, export)
    return neg.bitmaps_listed(bitmaps)


def structured():
    neg = start()
    send(neg, opt(8))
    return neg


@pytest.mark.parametrize('queries', [(), ('qemu:',), ('qemu:dirty-bitmap:',),
                                     ('base:', 'qemu:'),
                                     ('qemu:dirty-bitmap:a', 'qemu:',
                                      'qemu:dirty-bitmap:b')])
def test_list_every_dirty_bitmap(queries):
    neg = structured()
    base = meta(None, 'base:allocation') if not queries or \
        'base:' in queries else b''
    assert listing(neg, *queries) == (
        base + meta(None, 'qemu:dirty-bitmap:a') +
        meta(None, 'qemu:dirty-bitmap:b') + rep(9, ACK))
    assert neg.contexts == [] and not neg.base_allocation


def test_list_names_only_what_exists():
    neg = structured()
    assert listing(neg, 'qemu:dirty-bitmap:b', 'qemu:dirty-bitmap:zz',
                   'base:allocation') == (
        meta(None, 'base:allocation') + meta(None, 'qemu:dirty-bitmap:b') +
        rep(9, ACK))
    # No bitmap at all: what the queries leave.
    assert listing(neg, bitmaps={}) == (meta(None, 'base:allocation') +
                                        rep(9, ACK))
    # Queries of no bitmap ask for no lookup.
    for queries in (('base:',), ('qemu:allocation-depth',), ('x-ursa:',),
                    ('qemu:dirty-bitmapa',)):
        out, ev = send(neg, opt(9, meta_data('vol1', *queries)))
        assert ev is None
        assert out.endswith(rep(9, ACK))


def test_set_base_allocation_and_a_bitmap():
    neg = structured()
    assert setting(neg, 'qemu:dirty-bitmap:b', 'base:allocation',
                   'qemu:dirty-bitmap:b') == (
        meta(1, 'base:allocation') + meta(2, 'qemu:dirty-bitmap:b') +
        rep(10, ACK))
    assert neg.base_allocation
    assert neg.contexts == [hs.MetaContext(1, 'base:allocation'),
                            hs.MetaContext(2, 'qemu:dirty-bitmap:b',
                                           'snapshot b')]
    send(neg, opt(7, info_data('vol1')))
    _, ev = neg.export_opened(MiB, RW)
    assert isinstance(ev, hs.Ready)
    assert [c.id for c in neg.contexts] == [1, 2]


def test_set_a_bitmap_alone_gets_its_own_id():
    neg = structured()
    assert setting(neg, 'qemu:dirty-bitmap:a') == (
        meta(1, 'qemu:dirty-bitmap:a') + rep(10, ACK))
    assert not neg.base_allocation
    assert neg.contexts == [hs.MetaContext(1, 'qemu:dirty-bitmap:a',
                                           'snapshot a')]


@pytest.mark.parametrize('queries', [('qemu:dirty-bitmap:zz',),
                                     ('qemu:dirty-bitmap:A',)])
def test_set_of_an_unknown_bitmap_selects_nothing(queries):
    neg = structured()
    assert setting(neg, *queries) == rep(10, ACK)
    assert neg.contexts == []


@pytest.mark.parametrize('queries', [('qemu:',), ('qemu:dirty-bitmap:',),
                                     ('base:',)])
def test_set_ignores_wildcards(queries):
    """The empty leaf name selects nothing in a SET (the spec): no lookup
    either."""
    neg = structured()
    assert send(neg, opt(10, meta_data('vol1', *queries))) == (
        rep(10, ACK), None)
    assert neg.contexts == []


def test_a_later_set_replaces_the_bitmaps():
    neg = structured()
    setting(neg, 'base:allocation', 'qemu:dirty-bitmap:a')
    assert setting(neg, 'qemu:dirty-bitmap:b') == (
        meta(1, 'qemu:dirty-bitmap:b') + rep(10, ACK))
    assert not neg.base_allocation
    assert [c.name for c in neg.contexts] == ['qemu:dirty-bitmap:b']
    # Also while the lookup is under way, and when it fails.
    send(neg, opt(10, meta_data('vol1', 'qemu:dirty-bitmap:a')))
    assert neg.contexts == []
    assert neg.bitmaps_unlisted('no master answers') == rep(
        10, POLICY, b'no master answers')
    assert neg.contexts == [] and neg.want == 16
    setting(neg, 'qemu:dirty-bitmap:a')
    assert send(neg, opt(10, b'\x00\x00\x00\x04vol1\x00')) == (
        rep(10, INVALID), None)
    assert neg.contexts == []


@pytest.mark.parametrize('go_name,kept', [('vol1', 1), ('vol2', 0)])
def test_bitmaps_hold_only_for_the_export_they_were_set_for(go_name, kept):
    neg = structured()
    setting(neg, 'qemu:dirty-bitmap:a')
    send(neg, opt(7, info_data(go_name)))
    neg.export_opened(MiB, RW)
    assert len(neg.contexts) == kept


def test_info_keeps_the_bitmaps():
    neg = structured()
    setting(neg, 'qemu:dirty-bitmap:a')
    send(neg, opt(6, info_data('vol2')))
    neg.export_opened(MiB, RW)
    assert len(neg.contexts) == 1


def test_starttls_forgets_the_bitmaps():
    neg = start(tls_available=True)
    send(neg, opt(8))
    setting(neg, 'base:allocation', 'qemu:dirty-bitmap:a')
    send(neg, opt(5))
    neg.tls_started()
    assert neg.contexts == [] and not neg.base_allocation
    # Structured replies must be negotiated again before any context.
    assert send(neg, opt(10, meta_data('vol1', 'qemu:dirty-bitmap:a'))) == (
        rep(10, INVALID, b'negotiate structured replies first'), None)
    send(neg, opt(8))
    assert setting(neg, 'qemu:dirty-bitmap:a') == (
        meta(1, 'qemu:dirty-bitmap:a') + rep(10, ACK))


def test_a_list_while_a_bitmap_is_set_keeps_it():
    neg = structured()
    setting(neg, 'qemu:dirty-bitmap:a')
    listing(neg)
    assert [c.name for c in neg.contexts] == ['qemu:dirty-bitmap:a']


@pytest.mark.parametrize('option', [9, 10])
@pytest.mark.parametrize('data', [
    b'',
    b'\x00\x00\x00\x04vol1',                         # no query count
    b'\x00\x00\x00\x04vol1\x00\x00\x00\x01',         # a query missing
    b'\x00\x00\x00\x04vol1\x00\x00\x00\x01\x00\x00\x00\x09qemu:',
    b'\x00\x00\x00\x04vol1\x00\x00\x00\x00extra',    # trailing bytes
    b'\x00\x00\x00\x04vol1\x00\x00\x00\x01\x00\x00\x00\x02\xff\xfe',
])
def test_malformed_meta_context_data_is_invalid(option, data):
    neg = structured()
    assert send(neg, opt(option, data)) == (rep(option, INVALID), None)
    assert neg.contexts == [] and neg.want == 16


def test_bitmap_answers_out_of_turn_are_refused():
    neg = structured()
    with pytest.raises(exception.InvalidArgument):
        neg.bitmaps_listed(BITMAPS)
    send(neg, opt(3))
    with pytest.raises(exception.InvalidArgument):
        neg.bitmaps_unlisted('no')


def test_what_the_lookup_is_asked_for():
    neg = structured()
    _, ev = send(neg, opt(9, meta_data('vol1', 'qemu:dirty-bitmap:a',
                                       'qemu:')))
    assert (ev.every, ev.names) == (True, [])
    neg.bitmaps_listed({})
    _, ev = send(neg, opt(10, meta_data('vol1', 'qemu:dirty-bitmap:b',
                                        'qemu:', 'qemu:dirty-bitmap:a',
                                        'qemu:dirty-bitmap:b')))
    assert (ev.every, ev.names) == (False, ['b', 'a'])


def test_too_many_bitmap_names_in_one_option():
    neg = structured()
    names = ['qemu:dirty-bitmap:n%d' % i
             for i in range(hs.MAX_BITMAP_NAMES + 1)]
    for option in (9, 10):
        out, ev = send(neg, opt(option, meta_data('vol1', *names)))
        assert ev is None
        assert out == rep(option, 0x80000009,
                          b'at most 16 qemu:dirty-bitmap: names in one '
                          b'option')
    assert neg.contexts == []
    out, ev = send(neg, opt(10, meta_data('vol1', *names[:-1])))
    assert isinstance(ev, hs.ListBitmaps)
