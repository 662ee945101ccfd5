"""Transmission in NbdServer over a recording backend and a stand-in for
the connection's stream: invalid requests never reach the backend, and
each gets the error the request checks give."""

import asyncio
import errno
import struct

from cinder_ursa.nbd import backend as backend_mod
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import server as server_mod

SIZE = 1 << 20


class Recording(backend_mod.Backend):
    name = 'rec'

    def __init__(self, writable=True):
        self.writable = writable
        self.calls = []

    def size(self):
        return SIZE

    def can_write(self):
        return self.writable

    def can_flush(self):
        return True

    def can_zero(self):
        return True

    def can_trim(self):
        return True

    def can_fast_zero(self):
        return True

    async def pread(self, offset, length):
        self.calls.append(('pread', offset, length))
        return b'r' * length

    async def pwrite(self, offset, data, fua):
        self.calls.append(('pwrite', offset, bytes(data), fua))

    async def zero(self, offset, length, fua, may_trim, fast):
        self.calls.append(('zero', offset, length, may_trim, fast))
        if fast and not may_trim:
            raise OSError(errno.ENOTSUP, 'not fast')

    async def flush(self):
        self.calls.append(('flush',))


class Stream:
    """Hands the requests to the server and keeps what it writes."""

    def __init__(self, requests):
        self.requests = requests
        self.out = []

    def serve_requests(self, on_request):
        for r in self.requests:
            on_request(*r)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def write(self, data):
        self.out.append(bytes(data))

    def writelines(self, buffers):
        self.out.append(b''.join(bytes(b) for b in buffers))

    def hold(self, held):
        pass

    def stop(self):
        pass

    def unsent(self):
        return 0


class Export:
    def __init__(self, backend):
        self.backend = backend


def serve(backend, requests, structured=False):
    neg = hs.Negotiation()
    neg.structured = structured
    stream = Stream(requests)
    asyncio.run(server_mod.NbdServer(None)._transmission(
        stream, Export(backend), neg))
    return stream.out


def errors(out):
    return sorted(struct.unpack_from('>IIQ', o)[1:][::-1] for o in out)


def test_invalid_requests_never_reach_the_backend():
    b = Recording()
    out = serve(b, [
        (0, p.CMD_READ, 1, SIZE, 1, None),                  # past the end
        (p.CMD_FLAG_NO_HOLE, p.CMD_WRITE, 2, 0, 1, b'x'),   # NO_HOLE
        (1 << 7, p.CMD_READ, 3, 0, 1, None),                # unknown flag
        (0, p.CMD_WRITE, 4, SIZE, 1, b'x'),                 # past the end
        (0, p.CMD_BLOCK_STATUS, 5, 0, 1, None),             # no meta
        (0, 42, 6, 0, 0, None),                             # no such command
    ])
    assert errors(out) == [(1, 22), (2, 22), (3, 22), (4, 28), (5, 22),
                           (6, 22)]
    assert b.calls == [('flush',)]  # at disconnect


def test_read_only_refuses_writes_with_eperm():
    b = Recording(writable=False)
    out = serve(b, [(0, p.CMD_WRITE, 1, 0, 1, b'x'),
                    (0, p.CMD_WRITE_ZEROES, 2, 0, 1, None)])
    assert errors(out) == [(1, 1), (2, 1)]
    assert b.calls == []  # no flush at disconnect either


def test_valid_requests_run_and_fast_zero_gets_enotsup():
    b = Recording()
    fast = p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO
    out = serve(b, [(0, p.CMD_WRITE, 1, 0, 3, b'abc'),
                    (fast, p.CMD_WRITE_ZEROES, 2, 0, 4096, None),
                    (0, p.CMD_READ, 3, 0, 2, None)])
    assert p.simple_reply(1) in out
    assert p.simple_reply(2, p.NBD_ENOTSUP) in out
    assert p.simple_reply(3) + b'rr' in out
    assert b.calls[:3] == [('pwrite', 0, b'abc', False),
                           ('zero', 0, 4096, False, True),
                           ('pread', 0, 2)]


def test_structured_errors():
    out = serve(Recording(), [(0, p.CMD_READ, 9, SIZE, 1, None)],
                structured=True)
    assert out == [p.structured_error(9, p.NBD_EINVAL)]
