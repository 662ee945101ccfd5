"""Multiattach volumes: several writers share the lease; revoking it
fences all of them."""

import pytest

from cinder_ursa import exception
from tests.fixtures.cluster import data_client

MiB = 1024 * 1024


def test_two_writers_share_then_are_fenced_together(make_cluster):
    cluster = make_cluster(3)
    master = cluster.client()
    master.create_volume('both', 16 * MiB, chunk_size=4 * MiB,
                         multiattach=True)
    master.create_volume('one', 16 * MiB, chunk_size=4 * MiB)
    with data_client(cluster) as a, data_client(cluster) as b:
        va = a.open_volume('both', holder='host-a')
        vb = b.open_volume('both', holder='host-b')
        va.write(0, b'a' * 4096)
        vb.write(4096, b'b' * 4096)
        va.flush()
        vb.flush()
        assert va.read(0, 8192) == b'a' * 4096 + b'b' * 4096
        assert vb.read(0, 8192) == b'a' * 4096 + b'b' * 4096
        # An ordinary volume still has one writer.
        one = a.open_volume('one', holder='host-a')
        with pytest.raises(exception.LeaseHeld):
            b.open_volume('one', holder='host-b')
        one.close()
        # Fencing the volume fences every writer.
        master.revoke_lease('both')
        for v, who in ((va, b'x'), (vb, b'y')):
            with pytest.raises(exception.Fenced):
                v.write(8192, who * 4096)
        assert va.read(8192, 4096) == bytes(4096)
