"""A temporary Ursa cluster of real processes on 127.0.0.1, dynamic ports.

The fixture is ``ursa-aio``'s own launcher, so the tests start the cluster
exactly as operators do.  Every process is stopped (and killed if it does
not stop) when the test ends.
"""

import os

import pytest

from cinder_ursa.client import sync
from cinder_ursa.cmd.aio import AllInOne


@pytest.fixture
def make_cluster(tmp_path):
    clusters = []

    def make(chunkservers=3, **kwargs):
        kwargs.setdefault('server_timeout', 3.0)
        d = os.path.join(str(tmp_path), 'cluster%d' % len(clusters))
        c = AllInOne(d, chunkservers, port_base=0, **kwargs)
        clusters.append(c)
        c.start()
        return c

    yield make
    for c in clusters:
        c.stop()


def data_client(cluster, **kwargs):
    kwargs.setdefault('io_timeout', 30.0)
    return sync.SyncCluster([cluster.master_url], cluster.key, **kwargs)
