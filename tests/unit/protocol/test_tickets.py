"""Tickets (protocol/tickets.py): encoded and decoded whole, issued by a
master and unwrapped by the principal they were issued to, and
malformed ones refused with a clear error."""

import uuid

import pytest

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import tickets

VOL = str(uuid.uuid4())
PARENT = str(uuid.uuid4())
CLUSTER = b'c' * 32
HOST_KEY = b'h' * 32


def _raw(**kw):
    fields = dict(volume=VOL, generation=7, expires=2000000000,
                  rights=tickets.RIGHT_READ | tickets.RIGHT_WRITE,
                  readable={PARENT: 4}, principal='cmp1', host='cmp1',
                  issued=1900000000)
    fields.update(kw)
    return tickets.encode(**fields)


def test_a_ticket_decodes_to_what_was_encoded():
    t = tickets.decode(_raw())
    assert t == tickets.Ticket(VOL, 7, 2000000000, 1900000000,
                               tickets.RIGHT_READ | tickets.RIGHT_WRITE,
                               {VOL: None, PARENT: 4}, 'cmp1', 'cmp1')
    assert t.writable and not t.expired(1999999999) and t.expired(2000000000)
    # Its own volume at any sequence; the parent only as a snapshot up
    # to the one the clone was made from; nothing else.
    assert t.may_read(VOL, 0) and t.may_read(VOL, 9)
    assert t.may_read(PARENT, 4)
    # Not its current data, nor a snapshot but the one named.
    for snap in (0, 1, 3, 5):
        assert not t.may_read(PARENT, snap)
    assert not t.may_read(str(uuid.uuid4()), 1)


def test_the_principal_unwraps_the_session_key_the_server_derives():
    reply = tickets.issue(CLUSTER, HOST_KEY, volume=VOL, generation=3,
                          expires=2000000000, rights=tickets.RIGHT_READ)
    grant = tickets.grant_from(reply, HOST_KEY)
    assert grant.session_key == tickets.session_key(
        tickets.ticket_key(CLUSTER), grant.raw)
    assert not grant.ticket.writable
    # The reply alone (what the wire shows) is not the session key, and
    # another principal's key unwraps something else.
    assert bytes.fromhex(reply['key']) != grant.session_key
    other = tickets.grant_from(reply, b'x' * 32)
    assert other.session_key != grant.session_key


def test_a_changed_ticket_has_another_session_key():
    tkey = tickets.ticket_key(CLUSTER)
    a = _raw()
    b = _raw(generation=8)
    assert tickets.session_key(tkey, a) != tickets.session_key(tkey, b)


@pytest.mark.parametrize('raw', [
    b'', b'\x01' * 10, _raw()[:-1], _raw() + b'\0',
    b'\x02' + _raw()[1:],                     # unknown version
    _raw()[:1] + b'\0' + _raw()[2:],           # no rights
    _raw()[:-5] + b'\x04\xff\xfe\xfd\xfc',     # host not UTF-8
], ids=['empty', 'garbage', 'short', 'long', 'version', 'no-rights',
        'host-not-utf8'])
def test_malformed_tickets_are_refused(raw):
    with pytest.raises(exception.ProtocolError):
        tickets.decode(raw)


def test_limits_are_refused_when_issuing():
    with pytest.raises(exception.InvalidArgument):
        _raw(readable={str(uuid.uuid4()): 1 for _ in range(65)})
    with pytest.raises(exception.InvalidArgument):
        _raw(readable={PARENT: 0})
    with pytest.raises(exception.InvalidArgument):
        _raw(principal='p' * 256)
    with pytest.raises(exception.InvalidArgument):
        _raw(rights=0)
    big = _raw(readable=[(str(uuid.uuid4()), 2 ** 64 - 1)
                         for _ in range(64)],
               principal='p' * 255, host='h' * 255)
    assert len(big) <= tickets.MAX_TICKET
    assert codec.AUTH_BODY + len(big) <= codec.MAX_AUTH_TICKET_BODY


def test_auth_ticket_frames_are_judged_by_their_header():
    raw = _raw()
    frame = codec.encode_auth_ticket(b'n' * 32, b'm' * 32, raw)
    fields = codec.HEADER.unpack_from(frame)
    assert codec.preauth_body_length(fields) == 64 + len(raw)
    assert codec.decode_auth_ticket(frame[codec.HEADER_SIZE:]) == (
        b'n' * 32, b'm' * 32, raw)
    too_big = codec.HEADER.pack(codec.MAGIC, codec.VERSION,
                                codec.AUTH_TICKET, 0, 0,
                                codec.MAX_AUTH_TICKET_BODY + 1)
    with pytest.raises(exception.ProtocolError):
        codec.preauth_body_length(codec.HEADER.unpack(too_big))
    bare = codec.HEADER.pack(codec.MAGIC, codec.VERSION, codec.AUTH_TICKET,
                             0, 0, codec.AUTH_BODY)
    with pytest.raises(exception.ProtocolError):
        codec.preauth_body_length(codec.HEADER.unpack(bare))
    mac, got = codec.decode_ticket(codec.encode_ticket(
        5, b'm' * 32, raw)[codec.HEADER_SIZE:])
    assert (mac, got) == (b'm' * 32, raw)
