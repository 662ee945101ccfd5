"""The gateway's metrics, counted by NbdServer's transmission over a
recording backend and read back as a scrape would: every request counted
once (the histogram's count is the requests'), errors by kind, requests
in flight back to 0, per-volume series only while the export is open."""

import asyncio

from cinder_ursa import exception
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import metrics as nbd_metrics
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import server as server_mod
from cinder_ursa.transport import metrics
from tests.unit.nbd.test_server import SIZE
from tests.unit.nbd.test_server import Export
from tests.unit.nbd.test_server import Recording
from tests.unit.nbd.test_server import Stream


def scrape(server):
    pm = metrics.ProcessMetrics('nbd')
    server.register_metrics(pm)
    return pm.registry.get_sample_value


class Trimming(Recording):
    async def trim(self, offset, length, fua):
        self.calls.append(('trim', offset, length))


class Failing(Recording):
    """Reads fail with ``error``; writes with exception.Fenced."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    async def pread(self, offset, length):
        raise self.error

    async def pwrite(self, offset, data, fua):
        raise exception.Fenced(reason='generation 3 < 4')


def transmit(server, backend, requests, structured=False):
    neg = hs.Negotiation()
    neg.structured = structured
    stream = Stream(requests)
    asyncio.run(server._transmission(stream, Export(backend), neg))
    return stream.out


def test_requests_are_counted_once_with_bytes_errors_and_latency():
    server = server_mod.NbdServer(None)
    b = Trimming()
    fast = p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO
    transmit(server, b, [
        (0, p.CMD_WRITE, 1, 0, 3, b'abc'),
        (0, p.CMD_WRITE, 2, 4096, 5, b'hello'),
        (0, p.CMD_READ, 3, 0, 100, None),
        (0, p.CMD_READ, 4, SIZE - 10, 20, None),     # past the end
        (0, p.CMD_WRITE, 5, SIZE, 1, b'x'),          # past the end
        (0, p.CMD_TRIM, 6, 0, 8192, None),
        (0, p.CMD_WRITE_ZEROES, 7, 0, 4096, None),
        (fast, p.CMD_WRITE_ZEROES, 8, 0, 4096, None),  # ENOTSUP
        (0, p.CMD_FLUSH, 9, 0, 0, None),
        (0, 42, 10, 0, 0, None),                     # not counted
    ])
    get = scrape(server)
    ops = server.metrics.ops
    for op, n, nbytes in (('read', 2, 100), ('write', 3, 8),
                          ('trim', 1, 8192), ('write_zeroes', 2, 4096),
                          ('flush', 1, 0), ('cache', 0, 0),
                          ('block_status', 0, 0)):
        assert get('ursa_nbd_operations_total', {'op': op}) == n, op
        assert ops.count(op) == n
        assert get('ursa_nbd_operation_bytes_total', {'op': op}) == nbytes
        # Every request counted has its latency counted.
        assert get('ursa_nbd_operation_latency_seconds_count',
                   {'op': op}) == n, op
    # Refused before the backend: the NBD error's name; failed there:
    # the exception's class.
    assert ops.errors('read') == {'NBD_EINVAL': 1}
    assert ops.errors('write') == {'NBD_ENOSPC': 1}
    assert ops.errors('write_zeroes') == {'OSError': 1}
    assert ops.errors('trim') == {}
    assert get('ursa_nbd_operation_errors_total',
               {'op': 'read', 'kind': 'NBD_EINVAL'}) == 1
    assert server.metrics.in_flight == 0
    assert get('ursa_nbd_in_flight_requests') == 0
    # The backend's own counts: answered READs and WRITEs only.
    assert (b.read_bytes, b.written_bytes) == (100, 8)


def test_backend_errors_by_class_and_a_fence_counted_once():
    server = server_mod.NbdServer(None)
    b = Failing(exception.DiskError(reason='bad sector'))
    out = transmit(server, b, [
        (0, p.CMD_READ, 1, 0, 10, None),
        (0, p.CMD_WRITE, 2, 0, 1, b'x'),
        (0, p.CMD_WRITE, 3, 0, 1, b'y'),
    ], structured=True)
    assert len(out) == 3
    ops = server.metrics.ops
    assert ops.errors('read') == {'DiskError': 1}
    assert ops.errors('write') == {'Fenced': 2}
    assert (b.read_bytes, b.written_bytes) == (0, 0)
    # One backend learned it was fenced, however many writes said so.
    assert scrape(server)('ursa_nbd_fenced_total') == 1
    assert server.metrics.in_flight == 0


class Slow(Recording):
    def __init__(self):
        super().__init__()
        self.go = asyncio.Event()

    async def pread(self, offset, length):
        await self.go.wait()
        return bytes(length)


def test_in_flight_counts_requests_until_they_are_answered():
    server = server_mod.NbdServer(None)
    b = Slow()

    async def main():
        stream = Stream([(0, p.CMD_READ, h, 0, 512, None)
                         for h in range(5)])
        t = asyncio.create_task(server._transmission(
            stream, Export(b), hs.Negotiation()))
        for _ in range(3):
            await asyncio.sleep(0)
        seen = server.metrics.in_flight
        b.go.set()
        await t
        return seen, len(stream.out)

    seen, answered = asyncio.run(main())
    assert (seen, answered) == (5, 5)
    assert server.metrics.in_flight == 0
    assert server.metrics.ops.count('read') == 5


class FakeVolume:
    """What the per-volume and lease metrics read of a client Volume."""

    def __init__(self, vid, name, writable=True):
        self.id, self.name, self.size = vid, name, SIZE
        self.writable = writable
        self._lease_task = object() if writable else None
        self._fenced = None
        self.closed = False

    def adopt(self, record):
        pass

    async def flush(self):
        pass

    async def close(self):
        self.closed = True


class FakeCluster:
    def __init__(self):
        self.volumes = {}

    async def open_volume(self, vid, writable, holder):
        self.volumes[vid] = FakeVolume(vid, 'vol-' + vid, writable)
        return self.volumes[vid]


def test_volume_series_live_while_the_export_is_open():
    cluster = FakeCluster()
    server = server_mod.NbdServer(cluster)
    get = scrape(server)

    async def main():
        a1 = await server._open('vol-a', {'id': 'a'})
        a2 = await server._open('vol-a', {'id': 'a'})  # shared
        b = await server._open('vol-b', {'id': 'b'})
        a1.backend.read_bytes += 4096
        a1.backend.written_bytes += 512
        b.backend.written_bytes += 1
        assert get('ursa_nbd_exports_open') == 2
        assert get('ursa_nbd_leases_held') == 2
        assert get('ursa_nbd_volume_bytes_total',
                   {'volume': 'vol-a', 'op': 'read'}) == 4096
        assert get('ursa_nbd_volume_bytes_total',
                   {'volume': 'vol-a', 'op': 'write'}) == 512
        assert get('ursa_nbd_volume_bytes_total',
                   {'volume': 'vol-b', 'op': 'read'}) == 0
        # b's lease is taken: it is counted once, holds no lease.
        cluster.volumes['b']._fenced = exception.Fenced(reason='taken')
        assert get('ursa_nbd_leases_held') == 1
        assert get('ursa_nbd_fenced_total') == 1
        assert get('ursa_nbd_fenced_total') == 1
        await server._close(b)
        assert get('ursa_nbd_volume_bytes_total',
                   {'volume': 'vol-b', 'op': 'write'}) is None
        assert get('ursa_nbd_fenced_total') == 1
        # One of a's two connections goes: the export stays open.
        await server._close(a1)
        assert get('ursa_nbd_volume_bytes_total',
                   {'volume': 'vol-a', 'op': 'read'}) == 4096
        await server._close(a2)
        assert get('ursa_nbd_volume_bytes_total',
                   {'volume': 'vol-a', 'op': 'read'}) is None
        assert get('ursa_nbd_exports_open') == 0
        assert get('ursa_nbd_leases_held') == 0
        # Opened again: its series start from 0.
        a3 = await server._open('vol-a', {'id': 'a'})
        assert get('ursa_nbd_volume_bytes_total',
                   {'volume': 'vol-a', 'op': 'read'}) == 0
        await server._close(a3)

    asyncio.run(main())


def test_a_fence_learned_before_the_close_counts():
    cluster = FakeCluster()
    server = server_mod.NbdServer(cluster)
    get = scrape(server)

    async def main():
        exp = await server._open('vol-c', {'id': 'c'})
        cluster.volumes['c']._fenced = exception.Fenced(reason='taken')
        await server._close(exp)   # no scrape saw it open and fenced

    asyncio.run(main())
    assert get('ursa_nbd_fenced_total') == 1


def test_handshake_refusals_are_noted():
    neg = hs.Negotiation()
    neg.receive(b'\0\0\0\3')
    data = p.encode_info('x', [])
    neg.receive(p.OPTION.pack(p.IHAVEOPT, p.OPT_GO, len(data)))
    _, event = neg.receive(data)
    assert isinstance(event, hs.OpenExport) and neg.refusals == 0
    neg.export_refused()
    assert neg.refusals == 1
    tls = hs.Negotiation(tls_available=True, tls_required=True)
    tls.receive(b'\0\0\0\3')
    tls.receive(p.OPTION.pack(p.IHAVEOPT, p.OPT_GO, len(data)))
    out, event = tls.receive(data)
    assert event is None and tls.refusals == 1


def test_refused_request_kinds_are_nbd_error_names():
    assert nbd_metrics.error_name(p.NBD_EINVAL) == 'NBD_EINVAL'
    assert nbd_metrics.error_name(99) == 'NBD_ERROR_99'
    assert nbd_metrics.op_name(p.CMD_DISC) is None
    assert nbd_metrics.op_name(42) is None
    assert nbd_metrics.op_name(p.CMD_WRITE_ZEROES) == 'write_zeroes'
