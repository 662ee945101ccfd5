"""The chunk server's metrics (chunkserver/metrics.py): every request
handled is in flight until it is answered, then counted once under its
operation, an error reply by its kind, and a write refused for an old
lease, map or right also as a refusal; the gauges read the server's
state at scrape time."""

import asyncio
import errno
import re

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver import diskhealth
from cinder_ursa.chunkserver import metrics
from cinder_ursa.chunkserver import server as server_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control

VOL = '11111111-2222-3333-4444-555555555555'
BS = 4096


class _Conn:
    """What the handlers use of a ServerConnection."""
    peer = 'test'

    def __init__(self, master_term=None, ticket=None):
        self.master_term = master_term
        self.ticket = ticket
        self.claiming = False
        self.closed = False
        self.authed = True
        self.sent = []
        self.tasks = set()

    def send(self, buffers):
        self.sent.append(b''.join(buffers) if isinstance(buffers, list)
                         else bytes(buffers))

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task

    def reply(self, i=-1):
        return self.sent[i][codec.HEADER.size:]


def _frame(raw):
    raw = b''.join(raw) if isinstance(raw, list) else raw
    opcode, flags, req_id, _ = codec.parse_header(raw)
    return codec.Frame(opcode, flags, req_id,
                       memoryview(raw)[codec.HEADER.size:])


@pytest.fixture
def server(tmp_path):
    """A chunk server (not started: no socket) registered as server 1,
    the only replica of chunk 0 of VOL at epoch 1, lease generation 2."""
    async def make():
        s = server_mod.ChunkServer(str(tmp_path), b'k' * 32,
                                   ['http://127.0.0.1:9'])
        s._loop = asyncio.get_running_loop()
        s._master_lease = float('inf')
        s.id = 1
        s.store.adopt_generation(VOL, 2)
        s.authority.learn(VOL, {'index': 0, 'epoch': 1,
                                'replicas': [{'id': 1}]}, 1)
        return s
    loop = asyncio.new_event_loop()
    s = loop.run_until_complete(make())
    s.run = loop.run_until_complete
    yield s
    s.store.close()
    loop.close()


def _sample(server, name, **labels):
    """The value of sample ``name{labels}`` in a scrape (None: absent)."""
    want = ','.join('%s="%s"' % kv for kv in sorted(labels.items()))
    pattern = r'^%s(?:\{%s\})? (\S+)$' % (re.escape(name), re.escape(want))
    for line in server.metrics.text().splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return None


def _write(server, conn, generation=2, data=b'w' * BS, replicas=(1,)):
    server.handle(conn, _frame(codec.encode_write(
        7, VOL, 0, 1, generation, 0, list(replicas), data)))


def test_a_write_and_a_read_are_counted_with_their_bytes(server):
    conn = _Conn()
    _write(server, conn)
    assert codec.decode_write_ok(conn.reply()) == 1
    server.handle(conn, _frame(codec.encode_read(8, VOL, 0, 1, 0, BS)))
    codec.reply_status(conn.reply())
    assert server.inflight == {}
    for op in ('write', 'read'):
        assert server.ops.count(op) == 1
        assert _sample(server, 'ursa_chunkserver_operation_bytes_total',
                       op=op) == BS
        assert _sample(
            server, 'ursa_chunkserver_operation_latency_seconds_count',
            op=op) == 1
        assert server.ops.errors(op) == {}
    assert server.ops.count('replicate') == 0


def test_a_fenced_write_is_an_error_and_a_refusal(server):
    conn = _Conn()
    _write(server, conn, generation=1)
    with pytest.raises(exception.Fenced):
        codec.decode_write_ok(conn.reply())
    assert server.inflight == {}
    assert server.ops.errors('write') == {'Fenced': 1}
    assert server.recorded.refused == {'Fenced': 1}
    assert _sample(server, 'ursa_chunkserver_refused_writes_total',
                   reason='Fenced') == 1
    assert _sample(server, 'ursa_chunkserver_operation_errors_total',
                   op='write', kind='Fenced') == 1
    # Its latency is counted too: the histogram counts every reply.
    assert _sample(server, 'ursa_chunkserver_operation_latency_seconds_count',
                   op='write') == 1


def test_a_write_naming_an_old_replica_set_is_refused_stale(server):
    conn = _Conn()
    _write(server, conn, replicas=(1, 2))
    with pytest.raises(exception.StaleEpoch):
        codec.decode_write_ok(conn.reply())
    assert server.recorded.refused == {'StaleEpoch': 1}


def test_only_writes_count_as_refused_writes(server):
    """A master's command on a connection that claimed no term is
    NotAuthorized: an error of its operation, not a refused write."""
    conn = _Conn()
    server.handle(conn, _frame(control.encode_rebuild(9, VOL, 0, 1, 2)))
    with pytest.raises(exception.NotAuthorized):
        codec.reply_status(conn.reply())
    assert server.ops.errors('catchup') == {'NotAuthorized': 1}
    assert server.recorded.refused == {}
    assert server.inflight == {}


def test_a_raw_replicate_is_catch_up_work_not_a_replicate(server):
    conn = _Conn()
    push = codec.WriteRequest(VOL, 0, 1, 0, 0, 0, BS, [], b'x' * 10,
                              codec.FLAG_RAW)
    with pytest.raises(exception.ProtocolError):
        # Its body does not hold the entries and data it claims.
        server.handle(conn, _frame(codec.encode_replicate(5, push, 1)))
    assert server.inflight == {}, 'a dropped request is not in flight'
    assert server.ops.count('replicate') == server.ops.count('catchup') == 0
    frame = _frame(codec.encode_replicate(6, push, 1))
    assert metrics.op_of(frame) == 'catchup'
    frame.flags = 0
    assert metrics.op_of(frame) == 'replicate'


def test_a_flush_is_in_flight_until_its_reply(server):
    conn = _Conn()
    _write(server, conn)

    async def flush():
        server.handle(conn, _frame(codec.encode_flush(3, VOL)))
        # Synced in a worker thread, answered by a task: not yet.
        assert len(server.inflight) == 1
        assert _sample(server, 'ursa_chunkserver_in_flight_requests') == 1
        await asyncio.gather(*conn.tasks)
    server.run(flush())
    codec.reply_status(conn.reply())
    assert server.inflight == {}
    assert _sample(server, 'ursa_chunkserver_in_flight_requests') == 0
    assert server.ops.count('flush') == 1
    assert _sample(server,
                   'ursa_chunkserver_disk_sync_latency_seconds_count') == 1


def test_a_failed_data_directory_answers_every_request_with_an_error(
        server):
    conn = _Conn()
    server.disk.fail('test')
    server.handle(conn, _frame(codec.encode_read(8, VOL, 0, 1, 0, BS)))
    with pytest.raises(exception.DiskError):
        codec.reply_status(conn.reply())
    assert server.ops.errors('read') == {'DiskError': 1}
    assert server.inflight == {}
    assert _sample(server, 'ursa_chunkserver_disk_failed') == 1


def test_untracked_requests_are_never_in_flight(server):
    conn = _Conn()
    server.handle(conn, _frame(control.encode_chunk_info(4, VOL, 0)))
    with pytest.raises(exception.NotFound):
        codec.reply_status(conn.reply())
    assert server.inflight == {}
    assert sum(server.ops.count(op) for op in metrics.OPS) == 0


def test_connections_are_counted_by_kind(server):
    peer, master, ticket, gone = _Conn(), _Conn(master_term=3), \
        _Conn(ticket=object()), _Conn()
    keyed = _Conn()
    gone.closed = True
    conns = [peer, master, ticket, gone, keyed]
    server.connections.update(conns)
    push = codec.WriteRequest(VOL, 0, 1, 2, 0, 0, BS, [1], b'r' * BS, 0)
    server.handle(peer, _frame(codec.encode_replicate(5, push, 1)))
    codec.decode_write_ok(peer.reply())
    assert server.ops.count('replicate') == 1
    for kind, n in (('client', 2), ('peer', 1), ('master', 1)):
        assert _sample(server, 'ursa_chunkserver_connections',
                       kind=kind) == n


def test_state_gauges(server):
    conn = _Conn()
    _write(server, conn)
    assert _sample(server, 'ursa_chunkserver_server_id') == 1
    assert _sample(server, 'ursa_chunkserver_chunks') == 1
    assert _sample(server, 'ursa_chunkserver_stale_chunks') == 0
    assert _sample(server, 'ursa_chunkserver_joining_chunks') == 0
    assert _sample(server, 'ursa_chunkserver_capacity_bytes') > 0
    assert _sample(server, 'ursa_chunkserver_free_bytes') > 0
    assert _sample(server, 'ursa_chunkserver_used_bytes') >= BS
    assert _sample(server, 'ursa_chunkserver_failed_volumes') == 0
    server.store.mark_stale(VOL, 0)
    assert _sample(server, 'ursa_chunkserver_stale_chunks') == 1
    server.store.sync_failed((VOL,), OSError(errno.EIO, 'test'))
    assert _sample(server, 'ursa_chunkserver_failed_volumes') == 1
    # The scrub's pass, as its state says.
    server.scrub.bytes_done, server.scrub.bytes_total = 3 * BS, 10 * BS
    server.scrub.pass_started = 1700000000.0
    assert _sample(server, 'ursa_chunkserver_scrub_pass_done_bytes') == \
        3 * BS
    assert _sample(server, 'ursa_chunkserver_scrub_pass_total_bytes') == \
        10 * BS
    assert _sample(
        server, 'ursa_chunkserver_scrub_pass_started_timestamp_seconds') == \
        1700000000.0


def test_disk_errors_are_counted_by_errno():
    disk = diskhealth.DiskHealth(limit=0)
    for e in (errno.EIO, errno.EIO, errno.EROFS, errno.ENOSPC):
        disk.note(OSError(e, 'test'))
    # ENOSPC is no disk error.
    assert disk.kinds == {'EIO': 2, 'EROFS': 1}
    assert disk.errors == 3


def test_a_request_whose_connection_closed_while_it_waited_leaves_none(
        server):
    """A write that waits for its held chunk (a confirmation, a copy's
    sync) and whose connection closes meanwhile is never served: it must
    not stay in flight (it did, for good, on every such close)."""
    conn = _Conn()

    async def go():
        release = asyncio.get_running_loop().create_future()
        server.gate.hold((VOL, 0), release)
        _write(server, conn)            # waits behind the held chunk
        assert len(server.inflight) == 1
        conn.closed = True
        release.set_result(None)
        await asyncio.sleep(0.05)
    server.run(go())
    assert conn.sent == []
    assert server.inflight == {}
    assert _sample(server, 'ursa_chunkserver_in_flight_requests') == 0


def test_an_entry_never_answered_leaves_the_count_after_a_while(
        server, caplog):
    server.inflight[12345] = metrics.clock() - metrics.UNANSWERED_AFTER - 1
    server.inflight[67890] = metrics.clock()
    assert _sample(server, 'ursa_chunkserver_in_flight_requests') == 1
    assert list(server.inflight) == [67890]
    assert 'never counted as answered' in caplog.text
