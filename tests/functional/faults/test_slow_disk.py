"""A chunk server's disk turns slow (every read, write and fsync of the
FUSE disk under its data directory sleeps 40 ms): the master flags that
server, and that server only, as slow (REST, ``ursa server list``,
``ursa cluster status``, ``ursa_master_server_slow``); reads then go to
the other replicas, in the client library and in the NBD gateway, which
count them; once the disk is fast again the flag clears after the
hysteresis period."""

import json
import os
import random
import threading

from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.nbd import protocol as p
from tests.fixtures import metrics as metrics_fixture
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import rest
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import ursa
from tests.fixtures.wait import wait_for
from tests.functional.nbd.test_nbd import connect
from tests.functional.nbd.test_nbd import request

MiB = 1024 * 1024
CHUNKS = 24   # 4 servers: the odds that cs0 is no chunk's primary: (3/4)**24
PERIOD = 5.0
LATENCY = 0.04


scrape = metrics_fixture.samples
value = metrics_fixture.value


class Load:
    """4 KiB reads and writes of volume ``v`` on a thread of its own, so
    that every server reports samples.  No flushes: the FUSE layer makes
    the fsyncs of the server on it several times slower than the others'
    even without added latency (each fsync is a round trip through a
    Python process that also rewrites its books), and rightly so judged
    slow; reads and writes through it stay below the floor
    (slow_disk_min_latency) once the latency is removed."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        rng = random.Random(3)
        try:
            with data_client(self.cluster) as cl, \
                    cl.open_volume('v') as v:
                n = 0
                while not self.stop.is_set():
                    off = rng.randrange(CHUNKS * MiB // 4096) * 4096
                    if n % 4 == 0:
                        v.write(off, rng.randbytes(4096))
                    else:
                        v.read(off, 4096)
                    n += 1
        except Exception as e:  # noqa: BLE001 - reported by end()
            self.error = e

    def end(self):
        self.stop.set()
        self.thread.join(60)
        assert self.error is None, self.error


def servers(cluster):
    status, body = rest(cluster, 'GET', '/chunkservers')
    assert status == 200, body
    return {s['id']: s for s in body['chunkservers']}


def _latency(cluster):
    return {i: s['latency'] for i, s in servers(cluster).items()}


def test_a_slow_disk_is_flagged_read_around_and_cleared(tmp_path,
                                                        faulty_disk):
    _, trigger = faulty_disk
    slow_file = str(trigger) + '.latency'
    cluster = AllInOne(
        str(tmp_path / 'cluster'), 4, port_base=0, server_timeout=3.0,
        metrics=True, extra_conf=(
            '[ursa_master]\nslow_disk_period = %s\n'
            'slow_disk_min_samples = 5\nrebalance_moves = 0\n' % PERIOD))
    cluster.start(nbd=True)
    try:
        _exercise(cluster, slow_file)
    finally:
        cluster.stop(kill=True)


def _exercise(cluster, slow_file):
    master = cluster.client()
    rng = random.Random(5)
    for name in ('v', 'g'):
        master.create_volume(name, CHUNKS * MiB, chunk_size=MiB)
        with data_client(cluster) as cl, cl.open_volume(name) as v:
            v.write(0, rng.randbytes(CHUNKS * MiB))
            v.flush()
    sick = server_id(cluster, 0)
    ports = {server_id(cluster, i): cluster.metrics_ports['cs%d' % i]
             for i in range(cluster.n)}
    for name in ('v', 'g'):
        sets = replica_sets(cluster, name)
        assert any(ids[0] == sick for ids in sets.values()), sets

    # A fast cluster under load flags nothing.
    load = Load(cluster)
    try:
        wait_for(lambda: all(s['latency'] and s['latency']['read_samples']
                             for s in servers(cluster).values()),
                 20, 'every server to report read latency')
        assert not any(s['slow'] for s in servers(cluster).values())

        with open(slow_file, 'w') as f:
            f.write(str(LATENCY))
        flagged = wait_for(
            lambda: [i for i, s in servers(cluster).items() if s['slow']],
            PERIOD * 4 + 10, lambda: 'the master to flag the slow server '
            '(latency: %s)' % _latency(cluster))
        # Its latency as the master exports it (while there is load: the
        # window holds the last few seconds only).
        m = scrape(cluster.metrics_ports['master'])
        assert value(m, 'ursa_master_server_latency_seconds',
                     server_id=str(sick), kind='write',
                     quantile='0.99') > 0.02
        # The listings too, while the load goes on: each server reports
        # the latency of its last window (a few seconds), and an idle one
        # has none to report.
        assert flagged == [sick]
        listed = servers(cluster)
        assert listed[sick]['slow_since'] is not None
        assert listed[sick]['latency']['write_p99'] > 0.02, listed[sick]
        status = master.cluster_status()
        assert status['slow_servers'] == [sick]
        assert status['health'] == 'HEALTH_WARN'
        rows = json.loads(ursa(cluster.data_dir, 'server', 'list', '-f',
                               'json').stdout)
        health = {r['id']: r['health'] for r in rows}
        assert health[sick] == 'slow'
        assert all(h == 'ok' for i, h in health.items() if i != sick), rows
        # Its writes (every replica takes them; reads go elsewhere once
        # it is flagged) at the FUSE layer's added 40 ms or more.
        row = next(r for r in rows if r['id'] == sick)
        assert row['write_p99'] != '-' and float(row['write_p99']) > 20, row
        st = json.loads(ursa(cluster.data_dir, 'cluster', 'status', '-f',
                             'json').stdout)
        assert st['slow_servers'] == str(sick)
        m = scrape(cluster.metrics_ports['master'])
        assert value(m, 'ursa_master_server_slow', server_id=str(sick)) == 1
        assert all(value(m, 'ursa_master_server_slow', server_id=str(i)) == 0
                   for i in ports if i != sick)
    finally:
        load.end()

    # Reads go around the slow server: its read count stays, the others'
    # grow, and the client and the gateway count the diverted reads.
    def reads():
        return {i: value(scrape(port), 'ursa_chunkserver_operations_total',
                         op='read') for i, port in ports.items()}
    before = reads()
    with data_client(cluster) as cl:
        with cl.open_volume('v', writable=False) as v:
            for i in range(CHUNKS):
                v.read(i * MiB, 4096)
        diverted = cl._cluster.reads_diverted
    assert diverted >= 1
    middle = reads()
    s, _, _ = connect(cluster, 'g')
    try:
        for i in range(CHUNKS):
            err, _ = request(s, p.CMD_READ, i * MiB, 4096, handle=i + 1)
            assert err == 0
    finally:
        s.close()
    after = reads()
    # The client's reads went to the other servers; the gateway reads the
    # replicas on its host straight from their files (local_chunkserver_
    # dirs), the slow server's excepted.
    assert after[sick] == before[sick], (before, middle, after)
    assert sum(middle[i] - before[i] for i in ports if i != sick) >= \
        CHUNKS, (before, middle, after)
    nbd = scrape(cluster.metrics_ports['nbd'])
    assert value(nbd, 'ursa_nbd_reads_diverted_total') >= 1

    # The disk is fast again: the flag clears after the period.
    os.unlink(slow_file)
    load = Load(cluster)
    try:
        wait_for(lambda: not servers(cluster)[sick]['slow'],
                 PERIOD * 4 + 10, lambda: 'the slow flag to clear '
                 '(latency: %s)' % _latency(cluster))
    finally:
        load.end()
    assert master.cluster_status()['slow_servers'] == []
    m = scrape(cluster.metrics_ports['master'])
    assert value(m, 'ursa_master_server_slow', server_id=str(sick)) == 0
