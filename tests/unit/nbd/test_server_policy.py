"""NbdServer's handshake policies over a stand-in cluster and stream:
NBD_OPT_INFO answers from the master's record and never opens (leases)
the volume, only volumes attached to this host are described or opened,
NBD_OPT_LIST is refused unless enabled, the handshake deadline counts
the client's time and not the master's, and the in-flight budget is
shared by every connection."""

import asyncio
import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import server as server_mod

MiB = 1024 * 1024
VOL = {'id': 'id-1', 'name': 'vol', 'size': 8 * MiB}
SNAP = {'id': 'sid', 'name': 's1', 'volume_id': 'id-1',
        'volume_name': 'vol', 'size': 4 * MiB}


class Master:
    def __init__(self, attached=(), delay=0.0):
        self.attached = dict(attached)  # volume id -> status
        self.delay = delay
        self.calls = []

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
                 'status': st} for vid, st in self.attached.items()
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

    def __init__(self, data, stall=False):
        self.data = bytearray(data)
        self.out = bytearray()
        self.stall = stall

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


def handshake(server, *options, stall=False):
    stream = Stream(struct.pack('>I', p.FLAG_C_FIXED_NEWSTYLE) +
                    b''.join(options) + (b'' if stall else opt(p.OPT_ABORT)),
                    stall)

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
    got = handshake(server, *[opt(p.OPT_INFO, info('vol'))] * 50)
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


def test_time_spent_asking_the_master_is_not_the_clients():
    server = secure(Master({'id-1': 'attached'}, delay=0.2),
                    handshake_timeout=0.1)
    got = handshake(server, opt(p.OPT_INFO, info('vol')),
                    opt(p.OPT_INFO, info('vol')))
    assert [t for _, t, _ in got].count(p.REP_ACK) == 3  # 2 INFO + ABORT


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
