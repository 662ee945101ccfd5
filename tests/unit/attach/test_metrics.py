"""ursa-attach's metrics, without FUSE or a cluster: the file system's
requests (counts, bytes, errors by kind, from several threads) and the
agent's attachment operations, read back as a scrape would."""

import errno
import threading

import mfusepy
import pytest

from cinder_ursa import exception
from cinder_ursa.attach import agent as agent_mod
from cinder_ursa.attach import metrics as attach_metrics
from tests.unit.attach.test_agent import FakeCluster
from tests.unit.attach.test_agent import FakeMaster
from tests.unit.attach.test_agent import FakeVolume
from tests.unit.attach.test_agent import row


def new_fs():
    am = attach_metrics.AttachMetrics()
    fs = agent_mod.AttachFS(metrics=am)
    am.watch(fs)
    return fs, am.pm.registry.get_sample_value


def test_file_requests_are_counted_with_bytes_and_errors():
    fs, get = new_fs()
    fs.add('v', FakeVolume(8192))
    fs.write('/v', b'abc', 0, None)
    fs.read('/v', 100, 0, None)
    fs.read('/v', 100, 8192, None)        # at the end: 0 bytes, no error
    fs.fsync('/v', True, None)
    for call, err in ((lambda: fs.write('/v', b'xy', 8191, None),
                       errno.ENOSPC),
                      (lambda: fs.read('/gone', 1, 0, None), errno.ENOENT)):
        with pytest.raises(mfusepy.FuseOSError) as ei:
            call()
        assert ei.value.errno == err
    fs.add('bad', FakeVolume(4096, fail=True))
    with pytest.raises(mfusepy.FuseOSError):
        fs.read('/bad', 10, 0, None)
    io = fs.metrics.io
    assert (io.count('read'), io.count('write'), io.count('flush')) == (
        4, 2, 1)
    assert get('ursa_attach_io_operation_bytes_total', {'op': 'read'}) == 100
    assert get('ursa_attach_io_operation_bytes_total', {'op': 'write'}) == 3
    assert io.errors('write') == {'ENOSPC': 1}
    assert io.errors('read') == {'ENOENT': 1, 'UrsaError': 1}
    assert get('ursa_attach_io_operation_latency_seconds_count',
               {'op': 'read'}) == 4


def test_file_requests_from_many_threads_are_all_counted():
    fs, get = new_fs()
    fs.add('v', FakeVolume(1 << 20))

    def work():
        for i in range(2000):
            fs.write('/v', b'x', i, None)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert get('ursa_attach_io_operations_total', {'op': 'write'}) == 8000
    assert get('ursa_attach_io_operation_latency_seconds_count',
               {'op': 'write'}) == 8000


def test_attachment_operations_by_result_and_the_gauges():
    fs, get = new_fs()
    cluster = FakeCluster(refuse={'3'})
    master = FakeMaster()
    agent = agent_mod.Agent(master, cluster, fs, 'h1', '/mnt/ursa')

    def ops(op, result):
        return get('ursa_attach_operations_total',
                   {'op': op, 'result': result})

    master.rows = [row('1'), row('2'), row('3')]
    agent.reconcile()
    assert (ops('attach', 'ok'), ops('attach', 'error')) == (2, 1)
    assert get('ursa_attach_attachments') == 2
    # FakeVolume holds no lease (no _lease_task): a real one does.
    assert get('ursa_attach_leases_held') == 0
    master.rows[0]['status'] = 'detaching'
    master.rows = [r for r in master.rows if r['volume_id'] != '2']
    agent.reconcile()
    assert ops('detach', 'ok') == 1 and ops('drop', 'ok') == 1
    assert get('ursa_attach_attachments') == 0
    assert get('ursa_attach_operation_latency_seconds_count',
               {'op': 'attach'}) == 3
    assert ops('detach', 'error') == 0


def test_a_failed_close_is_an_error():
    fs, get = new_fs()
    master = FakeMaster()
    cluster = FakeCluster()
    agent = agent_mod.Agent(master, cluster, fs, 'h1', '/mnt/ursa')
    master.rows = [row('1')]
    agent.reconcile()
    cluster.opened['1'].fail = True
    master.rows = []
    agent.reconcile()
    assert get('ursa_attach_operations_total',
               {'op': 'drop', 'result': 'error'}) == 1


class LeasedVolume:
    def __init__(self, fenced=None):
        self.writable = True
        self._lease_task = object()
        self._fenced = fenced
        self.closed = False


def test_leases_held_reads_the_volumes_lease():
    class Sync:
        def __init__(self, vol):
            self.volume = vol

    assert attach_metrics.holds_lease(Sync(LeasedVolume()))
    assert not attach_metrics.holds_lease(
        Sync(LeasedVolume(exception.Fenced(reason='taken'))))
    ro = LeasedVolume()
    ro.writable, ro._lease_task = False, None
    assert not attach_metrics.holds_lease(ro)
