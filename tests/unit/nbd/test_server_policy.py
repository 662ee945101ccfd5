"""NbdServer's handshake policies over a stand-in cluster and stream:
NBD_OPT_INFO answers from the master's record and never opens (leases)
the volume, only volumes attached to this host are described or opened,
NBD_OPT_LIST is refused unless enabled, a client the transport does not
authenticate must name the attachment's export token, the handshake
deadline counts the master's time too and lookups per handshake are
bounded, the cap evicts the oldest handshaking connection, an open
session ends once its volume is detached, and the in-flight budget is
shared by every connection and counts replies until they are sent."""

import asyncio
import logging
import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import server as server_mod
from cinder_ursa.nbd import stream as stream_mod

MiB = 1024 * 1024
VOL = {'id': 'id-1', 'name': 'vol', 'size': 8 * MiB}
SNAP = {'id': 'sid', 'name': 's1', 'volume_id': 'id-1',
        'volume_name': 'vol', 'size': 4 * MiB}


TOKEN = 'S3cretT0ken-of-the-attachment'


class Master:
    def __init__(self, attached=(), delay=0.0):
        self.attached = dict(attached)  # volume id -> status
        self.delay = delay
        self.calls = []
        self.token = TOKEN

    async def volume(self, ref):
        self.calls.append(('volume', ref))
        await asyncio.sleep(self.delay)
        if ref not in ('vol', 'id-1'):
            raise exception.NotFound(kind='volume', name=ref)
        return dict(VOL)

    async def snapshot(self, ref):
        self.calls.append(('snapshot', ref))
        if ref != 'vol@s1':
            raise exception.NotFound(kind='snapshot', name=ref)
        return dict(SNAP)

    async def volumes(self):
        return [VOL, {'id': 'id-2', 'name': 'other', 'size': MiB}]

    async def attachments(self, ref=None, host=None):
        self.calls.append(('attachments', ref, host))
        return [{'volume_id': vid, 'volume_name': 'vol', 'host': 'here',
                 'status': st, 'export_token': self.token}
                for vid, st in self.attached.items()
                if ref in (None, vid) and host in (None, 'here')]


class Cluster:
    def __init__(self, master):
        self.master = master
        self.opened = []

    async def open_volume(self, ref, writable=True, holder=None):
        self.opened.append(ref)
        raise exception.Conflict(reason='stand-in: opening is recorded')


class Stream:
    """The client's bytes in, the server's bytes out."""

    def __init__(self, data, stall=False, trusted=True):
        self.data = bytearray(data)
        self.out = bytearray()
        self.stall = stall
        self.trusted = trusted
        self.closed = False

    def authenticated(self):
        """The unix socket or a TLS client certificate (True), or plain
        TCP (False)."""
        return self.trusted

    def close(self):
        self.closed = True

    async def readexactly(self, n):
        if len(self.data) < n:
            if self.stall:
                await asyncio.Event().wait()
            raise asyncio.IncompleteReadError(bytes(self.data), n)
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    def write(self, data):
        self.out += data

    async def drain(self):
        pass


def opt(option, data=b''):
    return p.OPTION.pack(p.IHAVEOPT, option, len(data)) + data


def info(name):
    raw = name.encode()
    return struct.pack('>I', len(raw)) + raw + struct.pack('>H', 0)


def replies(out):
    """[(option, type, data)] after the 18-byte greeting."""
    got, at = [], 18
    while at < len(out):
        _, o, t, n = p.OPTION_REPLY.unpack_from(out, at)
        at += p.OPTION_REPLY.size
        got.append((o, t, bytes(out[at:at + n])))
        at += n
    return got


def handshake(server, *options, stall=False, trusted=True):
    stream = Stream(struct.pack('>I', p.FLAG_C_FIXED_NEWSTYLE) +
                    b''.join(options) + (b'' if stall else opt(p.OPT_ABORT)),
                    stall, trusted)

    async def main():
        return await server._handshake(stream, hs.Negotiation())
    assert asyncio.run(main()) is None
    return replies(stream.out)


def secure(master, **kw):
    return server_mod.NbdServer(Cluster(master), host='here',
                                require_attachment=True, list_exports=False,
                                **kw)


def test_info_is_answered_from_the_record_without_opening():
    master = Master({'id-1': 'attached'})
    server = secure(master)
    got = []
    for _ in range(10):  # at most MAX_LOOKUPS a handshake
        got += handshake(server, *[opt(p.OPT_INFO, info('vol'))] * 5)
    infos = [r for r in got if r[1] == p.REP_INFO and
             struct.unpack_from('>H', r[2])[0] == p.INFO_EXPORT]
    assert len(infos) == 50
    size, flags = struct.unpack_from('>QH', infos[0][2], 2)
    assert size == 8 * MiB and not flags & p.TF_READ_ONLY
    assert server.cluster.opened == []  # no lease was taken


def test_a_snapshot_is_described_read_only_with_its_volume_attached():
    server = secure(Master({'id-1': 'attaching'}))
    got = handshake(server, opt(p.OPT_INFO, info('vol@s1')))
    size, flags = struct.unpack_from('>QH', got[0][2], 2)
    assert size == 4 * MiB and flags & p.TF_READ_ONLY
    assert ('attachments', 'id-1', 'here') in server.cluster.master.calls


@pytest.mark.parametrize('attached', [{}, {'id-1': 'detaching'}])
def test_not_attached_is_refused_like_unknown(attached):
    server = secure(Master(attached))
    got = handshake(server, opt(p.OPT_INFO, info('vol')),
                    opt(p.OPT_GO, info('vol')),
                    opt(p.OPT_INFO, info('vol@s1')),
                    opt(p.OPT_INFO, info('nope')))
    assert [t for _, t, _ in got[:4]] == [p.REP_ERR_UNKNOWN] * 4
    assert len({d for _, _, d in got[:4]}) == 1  # one message for all
    assert server.cluster.opened == []


def test_go_on_an_attached_volume_opens_it():
    server = secure(Master({'id-1': 'attached'}))
    handshake(server, opt(p.OPT_GO, info('vol')))
    assert server.cluster.opened == ['id-1']


def test_list_is_refused_unless_enabled_then_shows_attached_only():
    got = handshake(secure(Master({'id-1': 'attached'})), opt(p.OPT_LIST))
    assert got[0][1] == p.REP_ERR_POLICY and b'list_exports' in got[0][2]
    server = secure(Master({'id-1': 'attached'}))
    server.list_exports = True
    got = handshake(server, opt(p.OPT_LIST))
    assert [d[4:] for _, t, d in got if t == p.REP_SERVER] == [b'vol']
    server = secure(Master({'id-1': 'detaching'}))
    server.list_exports = True
    got = handshake(server, opt(p.OPT_LIST))
    assert [t for _, t, _ in got][:2] == [p.REP_ACK, p.REP_ACK]


def test_a_silent_client_misses_the_deadline():
    server = secure(Master(), handshake_timeout=0.05)
    with pytest.raises(server_mod._HandshakeTimeout):
        handshake(server, stall=True)


def test_time_spent_asking_the_master_counts_in_the_deadline():
    """Lookups used to extend the deadline: a client could stretch its
    handshake without end with options that make the gateway ask the
    master."""
    server = secure(Master({'id-1': 'attached'}, delay=0.2),
                    handshake_timeout=0.1)
    with pytest.raises(server_mod._HandshakeTimeout):
        handshake(server, opt(p.OPT_INFO, info('vol')),
                  opt(p.OPT_INFO, info('vol')))


def test_lookups_per_handshake_are_bounded_and_refusals_aggregated(caplog):
    """20 probes for random names on one connection: at most MAX_LOOKUPS
    reach the master, then the connection is dropped; the refusals of
    two such connections make one log line."""
    master = Master({'id-1': 'attached'})
    server = secure(master)
    probes = [opt(p.OPT_INFO, info('guess-%d' % i)) for i in range(20)]
    with caplog.at_level(logging.WARNING, 'cinder_ursa.nbd.server'):
        for _ in range(2):
            with pytest.raises(server_mod._TooManyLookups):
                handshake(server, *probes)
    assert len(master.calls) == 2 * server_mod.MAX_LOOKUPS
    refused = [r for r in caplog.records if 'refused' in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]


def named(name, token=TOKEN):
    return '%s%s%s' % (name, server_mod.TOKEN_SEP, token)


def test_tcp_without_a_certificate_needs_the_export_token():
    """Every local user shares 127.0.0.1: over TCP an attached volume
    opens only under its attachment's token."""
    master = Master({'id-1': 'attached'})
    server = secure(master)
    got = handshake(server, opt(p.OPT_INFO, info('vol')),
                    opt(p.OPT_GO, info('vol')),
                    opt(p.OPT_INFO, info('vol@s1')),
                    opt(p.OPT_GO, info(named('vol', 'wrong-token'))),
                    opt(p.OPT_GO, info(named('vol', ''))),
                    trusted=False)
    assert [t for _, t, _ in got[:5]] == [p.REP_ERR_UNKNOWN] * 5
    assert server.cluster.opened == []
    # Without a token no master request is even made.
    assert master.calls[0] == ('volume', 'vol')
    assert len(master.calls) == 2 * 2  # the two tokened GOs
    got = handshake(server, opt(p.OPT_INFO, info(named('vol'))),
                    opt(p.OPT_INFO, info(named('vol@s1'))),
                    trusted=False)
    assert [t for _, t, _ in got].count(p.REP_ACK) == 3
    handshake(server, opt(p.OPT_GO, info(named('vol'))), trusted=False)
    assert server.cluster.opened == ['id-1']


def test_unix_socket_or_certificate_clients_use_plain_names():
    server = secure(Master({'id-1': 'attached'}))
    handshake(server, opt(p.OPT_GO, info('vol')), trusted=True)
    assert server.cluster.opened == ['id-1']


def test_list_shows_nothing_to_a_client_without_credentials():
    master = Master({'id-1': 'attached'})
    server = secure(master)
    server.list_exports = True
    got = handshake(server, opt(p.OPT_LIST), trusted=False)
    assert got[0][1] == p.REP_ERR_POLICY and b'TOKEN' in got[0][2]
    assert not [t for _, t, _ in got if t == p.REP_SERVER]
    assert master.calls == []


def test_the_transport_says_who_is_authenticated():
    """The unix socket and a verified client certificate naming this
    host (its CN or a DNS subjectAltName; or one of tls_client_names)
    authenticate; plain TCP, TLS without a client certificate, and a
    certificate issued to another name do not."""
    class Sock:
        def __init__(self, family):
            self.family = family

    class Transport:
        def __init__(self, family, peercert=None):
            self.extra = {'socket': Sock(family), 'peercert': peercert}

        def get_extra_info(self, key):
            return self.extra.get(key)

    class S:
        def __init__(self, transport):
            self.transport = transport
    import socket
    trusted = secure(Master())._trusted
    assert trusted(S(Transport(socket.AF_UNIX)))
    assert not trusted(S(Transport(socket.AF_INET)))
    assert not trusted(S(Transport(socket.AF_INET, {})))

    def cert(cn, *dns):
        return {'subject': ((('commonName', cn),),),
                'subjectAltName': tuple(('DNS', d) for d in dns)}
    assert trusted(S(Transport(socket.AF_INET6, cert('here'))))
    assert trusted(S(Transport(socket.AF_INET, cert('qemu', 'here'))))
    assert not trusted(S(Transport(socket.AF_INET, cert('qemu', 'there'))))
    named = secure(Master(), tls_client_names=['qemu'])._trusted
    assert named(S(Transport(socket.AF_INET, cert('qemu'))))
    assert not named(S(Transport(socket.AF_INET, cert('here'))))
    anyone = secure(Master(), tls_client_names=['*'])._trusted
    assert anyone(S(Transport(socket.AF_INET, cert('qemu'))))


def test_request_costs():
    assert server_mod.request_cost(p.CMD_READ, 3 * MiB) == 3 * MiB
    assert server_mod.request_cost(p.CMD_WRITE, 5) == 5
    assert server_mod.request_cost(p.CMD_WRITE_ZEROES, 1 << 30) == 4 * MiB
    assert server_mod.request_cost(p.CMD_TRIM, 4096) == 4096
    assert server_mod.request_cost(p.CMD_FLUSH, 0) == 0


class Slow:
    """A backend whose reads and zeroes wait for ``go``."""
    name = 'slow'

    def __init__(self):
        self.go = asyncio.Event()

    def size(self):
        return 1 << 30

    def flags(self):
        return p.transmission_flags(read_only=False, flush=True, fua=False,
                                    trim=True, zero=True, fast_zero=False,
                                    multi_conn=True, cache=False)

    def can_write(self):
        return False  # no flush at the end

    def pwrite_nowait(self, *args):
        return False

    async def pread(self, offset, length):
        await self.go.wait()
        return bytes(length)

    async def zero(self, offset, length, fua, may_trim, fast):
        await self.go.wait()


class HeldStream:
    def __init__(self):
        self.held = False
        self.on_request = None
        self.done = None
        self.buffered = 0  # reply bytes the transport has not sent
        self.on_drain = None

    def unsent(self):
        return self.buffered

    def serve_requests(self, on_request):
        self.on_request = on_request
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def hold(self, held):
        self.held = held

    def write(self, data):
        pass

    def writelines(self, bufs):
        pass


class Export:
    def __init__(self, backend):
        self.backend = backend


def test_one_budget_for_every_connection():
    async def main():
        server = server_mod.NbdServer(None, inflight_bytes=8 * MiB)
        budget = server.budget
        assert budget.per_connection == 2 * MiB
        conns = []
        for _ in range(5):
            s, b = HeldStream(), Slow()
            t = asyncio.create_task(server._transmission(
                s, Export(b), hs.Negotiation()))
            await asyncio.sleep(0)
            conns.append((s, b, t))
        # Each of 4 connections: 2 MiB (a READ and a WRITE_ZEROES, which
        # counts its first 4 MiB piece at most): held at its quarter.
        for s, _, _ in conns[:4]:
            s.on_request(0, p.CMD_READ, 1, 0, MiB, b'')
            assert not s.held
            s.on_request(0, p.CMD_WRITE_ZEROES, 2, 0, MiB, b'')
            assert s.held
        assert budget.used == 8 * MiB and budget.full()
        # The fifth is held by the server's total after one small READ.
        s5 = conns[4][0]
        s5.on_request(0, p.CMD_READ, 1, 0, 4096, b'')
        assert s5.held
        # Two connections' requests end: the server has room again
        # (below 3/4), the fifth resumes; so do the two.
        for _, b, _ in conns[:2]:
            b.go.set()
        await asyncio.sleep(0.01)
        assert budget.used < 6 * MiB
        assert not s5.held and not conns[0][0].held
        assert conns[2][0].held  # its own quarter is still full
        for _, b, _ in conns:
            b.go.set()
        await asyncio.sleep(0.01)
        for s, _, t in conns:
            s.done.set_result(None)
            await t
        assert budget.used == 0 and not budget.waiting
    asyncio.run(main())


def test_a_reply_counts_until_the_transport_has_sent_it():
    """A client that sends READs and reads no reply: their data stays in
    the transport's buffer, and in the budget, until it is sent (it was
    given back when queued: 710 MB RSS against a 256 MiB budget)."""
    async def main():
        server = server_mod.NbdServer(None, inflight_bytes=8 * MiB)
        budget = server.budget
        s, b = HeldStream(), Slow()
        t = asyncio.create_task(server._transmission(
            s, Export(b), hs.Negotiation()))
        await asyncio.sleep(0)
        s.on_request(0, p.CMD_READ, 1, 0, MiB, b'')
        s.on_request(0, p.CMD_READ, 2, 0, MiB, b'')
        assert s.held  # its quarter (2 MiB) is full
        s.buffered = 2 * MiB + 32  # the replies, unread by the client
        b.go.set()
        await asyncio.sleep(0.01)
        assert budget.used == 2 * MiB and s.held
        # The client reads a reply and a half: the transport drains and
        # says so.
        s.buffered = MiB // 2
        s.on_drain()
        assert budget.used == MiB // 2 and not s.held
        s.buffered = 0
        s.on_drain()
        assert budget.used == 0
        # A connection that ends gives back what it still held.
        s.on_request(0, p.CMD_READ, 3, 0, MiB, b'')
        s.buffered = MiB
        await asyncio.sleep(0.01)
        assert budget.used == MiB
        s.done.set_result(None)
        await t
        assert budget.used == 0 and s.on_drain is None
    asyncio.run(main())


class Closable:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True

    abort = close


def _capped(**states):
    """A gateway at its cap of 3 connections, the i-th with each named
    attribute set to its i-th value; (server, connections)."""
    server = secure(Master(), max_connections=3)
    conns = []
    for i in range(3):
        c = server_mod._Conn(Closable())
        for name, values in states.items():
            setattr(c, name, values[i])
        server.connections[i] = c
        conns.append(c)
    return server, conns


def test_the_cap_evicts_the_oldest_handshaking_connection():
    """256 idle connections used to lock every other client out: at the
    cap the oldest one still handshaking is closed instead."""
    server, conns = _capped(handshaking=(False, True, True))
    assert server._make_room('newcomer')
    assert [c.stream.closed for c in conns] == [False, True, False]
    assert conns[1].evicted
    # The evicted one no longer counts; the next newcomer evicts the
    # next oldest handshaking one.
    server.connections[3] = server_mod._Conn(Closable())
    assert server._make_room('another')
    assert conns[2].stream.closed
    # Every counted connection transmitting: the newcomer is refused.
    for c in server.connections.values():
        c.handshaking = False
    server.connections[4] = server_mod._Conn(Closable())
    server.connections[4].handshaking = False
    assert not server._make_room('refused')
    assert not conns[0].stream.closed


def test_a_session_ends_once_its_volume_is_detached():
    async def main():
        master = Master({'id-1': 'attached'})
        server = secure(master, recheck_interval=0.01)
        stream = Closable()
        conn = server_mod._Conn(stream)
        conn.volume_id, conn.token = 'id-1', TOKEN
        exp = server_mod._Export(('volume', 'id-1'), None, False)
        exp.backend = Slow()
        exp.tokens.add(TOKEN)
        watch = asyncio.create_task(server._watch(stream, conn, exp, 'p'))
        await asyncio.sleep(0.05)
        assert not stream.closed and not watch.done()
        checks = len(master.calls)
        assert checks >= 2
        # No master answering ends nothing (a failover).
        master.attachments = unavailable
        await asyncio.sleep(0.05)
        assert not stream.closed
        del master.attachments
        master.attached = {}  # detached (or the host fenced)
        await asyncio.wait_for(watch, 1)
        assert stream.closed and TOKEN not in exp.tokens
    asyncio.run(main())


async def unavailable(ref=None, host=None):
    raise exception.Unavailable(reason='no leader')


def test_a_session_ends_when_the_volume_is_attached_anew():
    """Detached and attached again in between two checks: the old
    session's token is void."""
    async def main():
        master = Master({'id-1': 'attached'})
        server = secure(master, recheck_interval=0.01)
        stream = Closable()
        conn = server_mod._Conn(stream)
        conn.volume_id, conn.token = 'id-1', TOKEN
        exp = server_mod._Export(('volume', 'id-1'), None, False)
        exp.backend = Slow()
        watch = asyncio.create_task(server._watch(stream, conn, exp, 'p'))
        master.token = 'a-new-attachment'
        await asyncio.wait_for(watch, 1)
        assert stream.closed
    asyncio.run(main())


def test_a_session_ended_is_gone_even_if_its_client_reads_nothing():
    """Over a real loopback connection: the client sent requests the
    gateway held (its budget full) and reads none of the replies.  The
    volume detached, the session must end now: the connection closed
    with megabytes still queued (a plain close waited for the client to
    read them, for ever), and no request received before the end is
    served after it (a held WRITE reached the detached volume when the
    hold was let go)."""
    async def main():
        loop = asyncio.get_running_loop()
        master = Master({'id-1': 'attached'})
        server = secure(master, recheck_interval=0.05)
        served = []
        ended = loop.create_future()
        streams = []

        async def serve(stream):
            streams.append(stream)

            def on_request(flags, cmd, handle, offset, length, payload):
                served.append(handle)
                if handle == 1:
                    # A READ's reply the client will not read, then the
                    # budget full: what follows is held.
                    stream.write(b'r' * (8 * MiB))
                    stream.hold(True)
            done = stream.serve_requests(on_request)
            conn = server_mod._Conn(stream)
            conn.volume_id, conn.token = 'id-1', TOKEN
            exp = server_mod._Export(('volume', 'id-1'), None, False)
            exp.backend = Slow()
            watch = loop.create_task(server._watch(stream, conn, exp, 'p'))
            try:
                await done
            except ConnectionError:
                pass
            finally:
                watch.cancel()
                ended.set_result(None)

        listener = await loop.create_server(
            lambda: stream_mod.NbdStream(serve), '127.0.0.1', 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.transport.pause_reading()  # reads nothing, ever
        writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 1, 0,
                                    8 * MiB))
        for handle in (2, 3):
            writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE,
                                        handle, 0, 4) + b'data')
        await writer.drain()
        for _ in range(100):
            if served:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert served == [1] and not ended.done()
        master.attached = {}  # detached (or the host fenced)
        await asyncio.wait_for(asyncio.shield(ended), 2)
        streams[0].hold(False)  # the budget given back meanwhile
        await asyncio.sleep(0.05)
        assert served == [1]
        writer.transport.abort()
        listener.close()
        await listener.wait_closed()
    asyncio.run(main())


def test_an_export_token_never_reaches_the_log(caplog):
    """A token is a bearer secret: a refused open (here the volume could
    not be opened, or old-style NBD_OPT_EXPORT_NAME, whose refusal ends
    the handshake) logs the export's name without it, at every level."""
    caplog.set_level(logging.DEBUG)
    server = secure(Master({'id-1': 'attached'}))
    handshake(server, opt(p.OPT_GO, info(named('vol'))), trusted=False)
    handshake(server, opt(p.OPT_EXPORT_NAME, named('vol').encode()),
              trusted=False)
    assert server.cluster.opened == ['id-1', 'id-1']
    assert 'refused' in caplog.text
    assert TOKEN not in caplog.text


def test_a_snapshot_opened_while_no_master_answers_is_still_rechecked(
        monkeypatch):
    """A snapshot open here already is served under a token confirmed
    earlier while no master answers (a failover); its session must still
    be watched, or a detach would never end it (it had no volume to
    re-check: only volume exports had one)."""
    monkeypatch.setattr(server_mod, 'MASTER_WAIT', 0.05)

    class View:
        id, name, size = 'id-1', 'vol@s1', 4 * MiB

    async def silent(ref):
        await asyncio.sleep(10)

    async def main():
        master = Master({'id-1': 'attached'})
        master.snapshot = silent
        server = secure(master)
        exp = server_mod._Export(('snapshot', 'sid'), View(), True)
        exp.tokens.add(TOKEN)
        server._exports[exp.key] = exp
        stream = Stream(struct.pack('>I', p.FLAG_C_FIXED_NEWSTYLE) +
                        opt(p.OPT_GO, info(named('vol@s1'))),
                        trusted=False)
        conn = server_mod._Conn(stream)
        got = await server._handshake(stream, hs.Negotiation(), conn)
        assert got is exp and exp.users == 1
        assert conn.volume_id == 'id-1' and conn.token == TOKEN
    asyncio.run(main())


def test_an_unreadable_master_reply_does_not_end_the_watch():
    """An error that is not Ursa's (a reply that is not JSON) ended the
    watch task for good: the session was never checked again and
    outlived its detach."""
    async def main():
        master = Master({'id-1': 'attached'})
        server = secure(master, recheck_interval=0.01)
        stream = Closable()
        conn = server_mod._Conn(stream)
        conn.volume_id, conn.token = 'id-1', TOKEN
        exp = server_mod._Export(('volume', 'id-1'), None, False)
        exp.backend = Slow()

        async def garbled(ref=None, host=None):
            raise ValueError('Expecting value: line 1 column 1 (char 0)')
        master.attachments = garbled
        watch = asyncio.create_task(server._watch(stream, conn, exp, 'p'))
        await asyncio.sleep(0.05)
        assert not stream.closed and not watch.done()
        del master.attachments
        master.attached = {}
        await asyncio.wait_for(watch, 1)
        assert stream.closed
    asyncio.run(main())


def test_the_cap_evicts_idle_handshakes_before_one_at_the_master():
    """A flood of idle connections evicted a client as soon as it was
    the oldest handshaking one, also while the gateway was asking the
    master for the export it named: idle ones go first."""
    server, conns = _capped(lookup_running=(True, False, False))
    assert server._make_room('newcomer')
    assert [c.stream.closed for c in conns] == [False, True, False]
    server.connections[3] = server_mod._Conn(Closable())
    assert server._make_room('another')
    assert [c.stream.closed for c in conns] == [False, True, True]
    # Only it left handshaking: evicted all the same (the cap holds).
    server.connections[4] = server_mod._Conn(Closable())
    for c in list(server.connections.values())[3:]:
        c.handshaking = False
    assert server._make_room('third')
    assert conns[0].stream.closed
