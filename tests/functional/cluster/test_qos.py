"""QoS limits are enforced by the client library (so by the NBD gateway
and the attach agent too) and changed in place on open volumes."""

import time

import pytest

from cinder_ursa import exception
from tests.fixtures.cluster import data_client
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024


def test_limits_are_enforced_and_follow_changes(make_cluster):
    cluster = make_cluster(3, lease_ttl=3.0)
    master = cluster.client()
    master.create_volume('slow', 64 * MiB, chunk_size=4 * MiB,
                         qos={'total_iops_sec': 20})
    assert master.volume('slow')['qos'] == {'total_iops_sec': 20}
    with data_client(cluster) as cl, cl.open_volume('slow') as v:
        v.write(0, b'q' * 4096)
        t0 = time.monotonic()
        for i in range(61):
            v.read(4096 * (i % 8), 4096)
        # 20 of burst (the write took one), then 20 per second.
        assert time.monotonic() - t0 >= 1.8
        # Changed on the master: the open volume adopts it with its next
        # lease renewal (every ttl/3 = 1 s here).
        master.set_qos('slow', {'read_iops_sec': 1000,
                                'write_bytes_sec': 10 * MiB})
        wait_for(lambda: v.volume.qos.limits == {
            'read_iops_sec': 1000, 'write_bytes_sec': 10 * MiB}, 10,
            lambda: 'the new limits, not %s' % v.volume.qos.limits,
            interval=0.2)
        master.set_qos('slow', {})
        wait_for(lambda: not v.volume.qos, 20, 'the limits to go',
                 interval=0.2)
    # Bad limits are refused with a clear error.
    with pytest.raises(exception.InvalidArgument, match='unknown QoS'):
        master.set_qos('slow', {'iops': 5})
    with pytest.raises(exception.InvalidArgument, match='integer'):
        master.set_qos('slow', {'total_iops_sec': -1})
