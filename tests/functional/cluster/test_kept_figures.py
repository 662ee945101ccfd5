"""The master's kept figures (store/tally.py) on a real cluster: written
data shows in the status without a scan, a drift (a database edited by
hand) is found by ``ursa cluster check`` and recounted by its
``--repair``."""

import json
import os
import sqlite3

from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import ursa

MiB = 1024 * 1024


def test_a_drift_is_reported_and_recounted(make_cluster):
    cluster = make_cluster(3)
    m = cluster.client()
    m.create_volume('figures', 64 * MiB, replicas=3, min_replicas=2,
                    chunk_size=4 * MiB)
    with data_client(cluster) as cl:
        with cl.open_volume('figures') as vol:
            for i in range(5):
                vol.write(i * 4 * MiB, b'x' * 4096)
            vol.flush()
    status = m.cluster_status()
    assert (status['volumes'], status['chunks']) == (1, 5)
    assert status['degraded_chunks'] == 0
    assert m.volume('figures')['allocated_chunks'] == 5
    assert sum(s['chunks'] for s in m.servers()) == 15
    clean = json.loads(ursa(cluster.data_dir, 'cluster', 'check', '-f',
                            'json').stdout)
    assert not [p for p in clean if p['problem'] == 'kept figures drifted']

    # A hand edit of the database: the figures no longer add up.
    db = sqlite3.connect(os.path.join(cluster.data_dir, 'master',
                                      'ursa.sqlite'))
    with db:
        db.execute("UPDATE cluster_counters SET value = value + 7 "
                   "WHERE name = 'chunks'")
    db.close()
    assert m.cluster_status()['chunks'] == 12
    found = json.loads(ursa(cluster.data_dir, 'cluster', 'check', '-f',
                            'json', check=False).stdout)
    drifted = [p for p in found if p['problem'] == 'kept figures drifted']
    assert drifted and 'counters chunks: kept 12, counted 5' in \
        drifted[0]['detail'], found
    fixed = ursa(cluster.data_dir, 'cluster', 'check', '--repair')
    assert 'kept figures recounted' in fixed.stdout + fixed.stderr
    assert m.cluster_status()['chunks'] == 5
