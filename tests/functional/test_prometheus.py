"""A real Prometheus server scraping a real cluster (ursa-aio's
``metrics=True``: two masters, three chunk servers, the NBD gateway and
the attach agent, each with its /metrics endpoint), with the shipped
alert rules (etc/prometheus/ursa-alerts.yml): every process is a target
and up, each exports the metric families of the contract, a chunk
server killed with SIGKILL fires UrsaChunkServerDown until it is back
on the same target, and every query of the Grafana dashboard
(etc/grafana/ursa-cluster.json) returns data from the cluster under
load, and from a nova_ha evacuator that recovered a host.

The rules are loaded from a copy where UrsaChunkServerDown's ``for`` is
2 s instead of a minute (tests/fixtures/prometheus.fast_rules); the
rules' exact timing is proven by promtool (tests/unit/test_alert_rules).
"""

import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest

from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.nbd import protocol as p
from tests.fixtures import prometheus
from tests.fixtures.cluster import NO_REBALANCE
from tests.fixtures.processes import free_port_base
from tests.fixtures.wait import wait_for
from tests.unit import test_dashboard as dashboard

MiB = 1 << 20

# The service each scrape job's processes name in ursa_service_info.
SERVICES = {'ursa-master': 'master', 'ursa-chunkserver': 'chunkserver',
            'ursa-nbd': 'nbd', 'ursa-attach': 'attach'}

# Every process: the process collector's families and the service's name.
COMMON = ('ursa_service_info', 'process_cpu_seconds_total',
          'process_resident_memory_bytes', 'process_open_fds',
          'process_start_time_seconds')

# The metric families each job's processes export (the contract with the
# alert rules, the dashboard and the docs), kept here alone: tune it here.
CONTRACT = {
    'ursa-chunkserver': (
        'ursa_chunkserver_operations_total',
        'ursa_chunkserver_operation_bytes_total',
        'ursa_chunkserver_operation_errors_total',
        'ursa_chunkserver_operation_latency_seconds',
        'ursa_chunkserver_in_flight_requests',
        'ursa_chunkserver_connections',
        'ursa_chunkserver_refused_writes_total',
        'ursa_chunkserver_disk_sync_latency_seconds',
        'ursa_chunkserver_disk_errors_total',
        'ursa_chunkserver_capacity_bytes',
        'ursa_chunkserver_used_bytes',
        'ursa_chunkserver_free_bytes',
        'ursa_chunkserver_chunks',
        'ursa_chunkserver_scrub_blocks_total',
        'ursa_chunkserver_scrub_errors_total',
        'ursa_chunkserver_recovery_bytes_total',
        'ursa_chunkserver_failed_volumes',
        'ursa_chunkserver_server_id',
    ),
    'ursa-nbd': (
        'ursa_nbd_operations_total',
        'ursa_nbd_operation_bytes_total',
        'ursa_nbd_operation_errors_total',
        'ursa_nbd_operation_latency_seconds',
        'ursa_nbd_in_flight_requests',
        'ursa_nbd_connections',
        'ursa_nbd_exports_open',
        'ursa_nbd_volume_bytes_total',
    ),
    'ursa-master': (
        'ursa_master_leader',
        'ursa_master_term',
        'ursa_master_servers',
        'ursa_master_server_up',
        'ursa_master_chunks',
        'ursa_master_capacity_bytes',
        'ursa_master_used_bytes',
        'ursa_master_provisioned_bytes',
        'ursa_master_volumes',
        'ursa_master_snapshots',
        'ursa_master_leases',
        'ursa_master_recovery_chunks_left',
        'ursa_master_recovery_bytes_left',
        'ursa_master_rest_requests_total',
        'ursa_master_rest_latency_seconds',
        'ursa_master_db_latency_seconds',
    ),
    'ursa-attach': (),
}

# Families with labels whose series appear only once what they count has
# happened (a failed request, a refused write, a disk error), which this
# test does not cause: they must be declared on /metrics, but Prometheus
# stores no series of them.
ONLY_AFTER_EVENTS = {
    'ursa_chunkserver_operation_errors_total',
    'ursa_chunkserver_refused_writes_total',
    'ursa_chunkserver_disk_errors_total',
}


# Panels of the Grafana dashboard whose queries have no series until what
# they count has happened, which test_every_dashboard_query_has_data does
# not cause (panel title: why).  Keep it short.
DASHBOARD_NO_DATA = {
    'Request errors by kind': 'series appear with a chunk server request '
                              'failing',
    'Refused writes by reason': 'series appear with a write refused for '
                                'an old lease, chunk map or right',
    'Disk errors by kind': 'series appear with a disk I/O error',
}
# The dashboard's ranges, as Grafana would set them for a 1 s scrape
# interval and a short time range.
RATE_INTERVAL = '10s'
RANGE = '5m'


def can_attach():
    """Whether ursa-attach can run here (root and /dev/fuse): a failure
    under CI=true when it cannot."""
    if os.path.exists('/dev/fuse') and os.geteuid() == 0:
        return True
    if os.environ.get('CI'):
        pytest.fail('ursa-attach needs root and /dev/fuse')
    return False


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    prometheus.binary('prometheus')
    aio = AllInOne(str(tmp_path_factory.mktemp('prom-cluster')), 3,
                   port_base=0, masters=2, metrics=True,
                   server_timeout=3.0, server_startup_timeout=15.0,
                   extra_conf=NO_REBALANCE)
    try:
        aio.start(nbd=True)
        if can_attach():
            aio.start_attach()
        yield aio
    finally:
        aio.stop(kill=True)


@pytest.fixture(scope='module')
def prom(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp('prometheus')
    rules = prometheus.fast_rules(str(base / 'ursa-alerts.yml'),
                                  {'UrsaChunkServerDown': '2s'})
    with prometheus.Prometheus(base / 'server', cluster.metrics_targets(),
                               [rules]) as p:
        yield p


def health(prom):
    """{(job, instance): 'up' | 'down' | 'unknown'} of the targets."""
    return {(t['labels']['job'], i): t['health'] + (
        ' (%s)' % t['lastError'] if t.get('lastError') else '')
        for i, t in prom.targets().items()}


def wanted_targets(cluster):
    return {(job, t) for job, targets in cluster.metrics_targets().items()
            for t in targets}


def wait_all_up(prom, cluster):
    """Wait until Prometheus has every process of ``cluster`` as a target,
    and up."""
    def all_up():
        got = health(prom)
        return set(got) == wanted_targets(cluster) and all(
            h == 'up' for h in got.values())
    prom.wait(all_up, 60, lambda: 'every target up: %s' % health(prom))


def test_every_process_is_a_target_and_up(cluster, prom):
    targets = cluster.metrics_targets()
    jobs = {'ursa-master', 'ursa-chunkserver', 'ursa-nbd'}
    if cluster.attach_proc is not None:
        jobs.add('ursa-attach')
    assert set(targets) == jobs
    assert len(targets['ursa-master']) == 2
    assert len(targets['ursa-chunkserver']) == 3
    everyone = [t for ts in targets.values() for t in ts]
    assert len(set(everyone)) == len(everyone), targets
    wait_all_up(prom, cluster)

    ups = {(r['metric']['job'], r['metric']['instance']): r['value'][1]
           for r in prom.query('up')}
    assert ups == {t: '1' for t in wanted_targets(cluster)}

    def services():
        return {(r['metric']['job'], r['metric']['instance'],
                 r['metric']['service'])
                for r in prom.query('ursa_service_info == 1')}
    want = {(job, t, SERVICES[job]) for job, t in wanted_targets(cluster)}
    prom.wait(lambda: services() == want, 30,
              lambda: 'ursa_service_info of every target: %s' % services())
    for family in COMMON[1:]:
        got = {(r['metric']['job'], r['metric']['instance'])
               for r in prom.query(family)}
        assert got == wanted_targets(cluster), family


def scrape(target):
    with urllib.request.urlopen('http://%s/metrics' % target,
                                timeout=10) as r:
        return r.read().decode()


def declared(target):
    """The families a /metrics endpoint declares (its # TYPE lines)."""
    return dict(re.findall(r'^# TYPE (\S+) (\S+)$', scrape(target), re.M))


def in_prometheus(prom):
    """The families Prometheus holds series of (a histogram by its
    _count series)."""
    names = {r['metric']['__name__'] for r in prom.query(
        'count by (__name__) ({__name__=~"(ursa|process)_.*"})')}
    return names | {n[:-len('_count')] for n in names
                    if n.endswith('_count')}


class NbdClient:
    """A volume open through the gateway (fixed newstyle NBD by hand):
    its per-volume series exist while an export is open."""

    def __init__(self, port, name):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=10)
        magic, opt, _ = p.HANDSHAKE.unpack(self._recv(18))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
        self.sock.sendall(struct.pack(
            '>I', p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES))
        self.sock.sendall(p.OPTION.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME,
                                        len(name)) + name.encode())
        self.size, _ = p.EXPORT_NAME_REPLY.unpack(self._recv(10))

    def _recv(self, n):
        out = b''
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            assert got, 'the gateway closed the connection'
            out += got
        return out

    def request(self, cmd, offset, length, data=b''):
        """(NBD error number, data read)."""
        self.sock.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, cmd, 7, offset,
                                         length) + data)
        magic, err, handle = p.SIMPLE_REPLY.unpack(self._recv(16))
        assert (magic, handle) == (p.SIMPLE_REPLY_MAGIC, 7)
        if cmd == p.CMD_READ and not err:
            return err, self._recv(length)
        return err, b''

    def close(self):
        self.sock.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 7,
                                         0, 0))
        self.sock.close()


@pytest.fixture
def busy(cluster):
    """A volume open through the gateway, written, flushed and read (and
    so through the chunk servers), and a read past its end refused, so
    that the families counting I/O and errors have series."""
    name = 'metrics-%s' % uuid.uuid4().hex[:8]   # one per test
    cluster.client().create_volume(name, 8 * MiB, chunk_size=4 * MiB)
    nbd = NbdClient(cluster.nbd_port, name)
    try:
        data = b'\x07' * MiB
        assert nbd.request(p.CMD_WRITE, 0, len(data), data) == (0, b'')
        assert nbd.request(p.CMD_FLUSH, 0, 0) == (0, b'')
        assert nbd.request(p.CMD_READ, 0, len(data)) == (0, data)
        assert nbd.request(p.CMD_READ, nbd.size, 4096)[0] != 0
        yield nbd
    finally:
        nbd.close()


def test_every_family_of_the_contract_is_exported(cluster, prom, busy):
    wait_all_up(prom, cluster)
    missing = {}
    for job, targets in cluster.metrics_targets().items():
        for target in targets:
            lack = set(CONTRACT[job] + COMMON) - set(declared(target))
            if lack:
                missing[target] = sorted(lack)
    assert not missing, 'families not declared on /metrics: %s' % missing

    jobs = set(cluster.metrics_targets())
    wanted = {f for job in jobs for f in CONTRACT[job] + COMMON
              } - ONLY_AFTER_EVENTS
    prom.wait(lambda: wanted <= in_prometheus(prom), 30,
              lambda: 'series of %s in prometheus'
              % sorted(wanted - in_prometheus(prom)))

    # One leader of the two masters, and so no UrsaNoLeader.
    def leaders():
        got = prom.query('sum(ursa_master_leader)')
        return got and got[0]['value'][1] == '1'
    prom.wait(leaders, 30, lambda: 'one leader: %s' % prom.query(
        'ursa_master_leader'))
    prom.wait(lambda: not prom.alerts('UrsaNoLeader'), 10,
              lambda: 'UrsaNoLeader to go: %s' % prom.alerts())


# Families the Monitoring guide names that this test's cluster has no
# series of, and why (the guide's every other family must be in
# Prometheus).
NOT_HERE = {
    'ursa_chunkserver_smart_': 'SMART data exists only where the disk has '
                               'it (virtual disks here: supported is 0)',
    'ursa_master_scrub_': 'per server, once its scrub has reported',
    'ursa_chunkserver_scrub_pass_started_timestamp_seconds':
        'only during a scrub pass (scrubbing is off here)',
    'ursa_metrics_errors_total': 'series appear with a family that could '
                                 'not be computed',
    'ursa_master_repairs_total': 'series appear with the first copy made',
    'ursa_master_server_latency_seconds': 'only for kinds of I/O a server '
                                          'did in its last window',
    'ursa_attach_operation': 'series appear with the first attach (none '
                             'here)',
    'ursa_attach_io_operation_errors_total': 'series appear with a failed '
                                             'request',
}


def test_every_family_the_guide_names_is_in_prometheus(cluster, prom,
                                                       busy):
    from tests.unit import test_monitoring_docs
    wait_all_up(prom, cluster)
    jobs = set(cluster.metrics_targets())
    wanted = {f for f in test_monitoring_docs.documented()
              if f.startswith('ursa_')} - ONLY_AFTER_EVENTS
    wanted = {f for f in wanted if not any(f.startswith(n) for n in NOT_HERE)}
    if 'ursa-attach' not in jobs:
        wanted = {f for f in wanted if not f.startswith('ursa_attach_')}
    prom.wait(lambda: wanted <= in_prometheus(prom), 30,
              lambda: 'series of %s in prometheus'
              % sorted(wanted - in_prometheus(prom)))
    assert 'ursa_chunkserver_smart_supported' in in_prometheus(prom)


def test_a_killed_chunk_server_fires_its_alert_until_it_is_back(cluster,
                                                                prom):
    wait_all_up(prom, cluster)
    assert not prom.alerts('UrsaChunkServerDown')
    target = cluster.metrics_targets()['ursa-chunkserver'][1]

    cluster.kill_chunkserver(1)
    firing = prom.wait(
        lambda: prom.alerts('UrsaChunkServerDown', 'firing'), 30,
        lambda: 'UrsaChunkServerDown to fire: %s' % prom.alerts())
    assert [a['labels']['instance'] for a in firing] == [target]
    alert = firing[0]
    assert alert['labels']['severity'] == 'warning'
    assert alert['annotations']['runbook'] == (
        'doc/source/monitoring.rst#chunk-server-down')
    assert target in alert['annotations']['summary']

    cluster.start_chunkserver(1)
    assert cluster.metrics_targets()['ursa-chunkserver'][1] == target
    prom.wait(lambda: not prom.alerts('UrsaChunkServerDown'), 30,
              lambda: 'UrsaChunkServerDown to resolve: %s' % prom.alerts())
    assert health(prom)[('ursa-chunkserver', target)] == 'up'


def test_ursa_aio_metrics_prints_the_targets(tmp_path):
    """ursa-aio --metrics, as an operator runs it: the targets it prints
    answer with their service's metrics."""
    proc = subprocess.Popen(
        [sys.executable, '-m', 'cinder_ursa.cmd.allinone', '--data-dir',
         str(tmp_path / 'aio'), '--chunkservers', '1', '--port-base',
         str(free_port_base(2)), '--demo-volume', '', '--metrics'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        def up():
            line = proc.stdout.readline()
            assert line, 'ursa-aio exited:\n' + ''.join(lines)
            lines.append(line)
            return line.startswith('Stop with')
        wait_for(up, 60, lambda: 'ursa-aio to come up:\n' + ''.join(lines),
                 interval=0)
        banner = ''.join(lines)
        section = banner.split('Prometheus targets', 1)[1]
        targets = dict(re.findall(r'^  (ursa-\S+)\s+(\S+)$', section, re.M))
        assert set(targets) == {'ursa-master', 'ursa-chunkserver',
                                'ursa-nbd'}, banner
        for job, target in targets.items():
            assert 'ursa_service_info{service="%s"} 1.0' % SERVICES[job] in (
                scrape(target)), (job, target)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, banner + out


# --- the Grafana dashboard ---------------------------------------------------

class NbdLoad(threading.Thread):
    """Writes, flushes and reads through the gateway on an open volume
    until stopped, so that the rates and latency quantiles of the
    gateway and the chunk servers are not zero."""

    def __init__(self, nbd):
        super().__init__(name='nbd-load', daemon=True)
        self.nbd = nbd
        self.stopping = threading.Event()
        self.rounds = 0
        self.error = None

    def run(self):
        data = bytes(range(256)) * 256      # 64 KiB
        span = self.nbd.size - len(data)
        try:
            while not self.stopping.is_set():
                offset = (self.rounds * len(data)) % span
                assert self.nbd.request(p.CMD_WRITE, offset, len(data),
                                        data) == (0, b'')
                assert self.nbd.request(p.CMD_FLUSH, 0, 0) == (0, b'')
                assert self.nbd.request(p.CMD_READ, offset,
                                        len(data)) == (0, data)
                self.rounds += 1
                self.stopping.wait(0.05)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def stop(self):
        self.stopping.set()
        self.join(30)
        assert self.error is None, 'the NBD load failed: %r' % self.error


def reload_targets(prom, targets):
    """Make ``prom`` scrape ``targets`` ({job: [host:port]}) from now on
    (its configuration rewritten, then SIGHUP)."""
    prom.scrape_targets = targets
    prom.write_config()
    prom.proc.send_signal(signal.SIGHUP)


def dashboard_gaps(prom):
    """{panel title (or 'variable <name>'): [its queries that returned
    no number]}: an empty result, or only NaN (a quantile of nothing)."""
    gaps = {}
    for panel, target in dashboard.queries():
        expr = dashboard.substitute(target['expr'], rate=RATE_INTERVAL,
                                    range_=RANGE, interval='1s')
        result = prom.query(expr)
        if not any(math.isfinite(float(r['value'][1])) for r in result):
            gaps.setdefault(panel['title'], []).append(expr)
    for name, (selector, label) in dashboard.variable_queries().items():
        expr = dashboard.substitute(selector)
        if not any(label in r['metric'] for r in prom.query(expr)):
            gaps['variable ' + name] = [expr]
    return gaps


def test_every_dashboard_query_has_data(cluster, prom, fake_nova, members,
                                        tmp_path):
    """Under NBD load, with a nova_ha evacuator that recovered a failed
    host scraped too, each query of each panel and each variable of the
    dashboard returns a number from Prometheus, but for the panels of
    DASHBOARD_NO_DATA."""
    from tests.fixtures import novaha

    titles = {p['title'] for p in dashboard.panels()}
    assert set(DASHBOARD_NO_DATA) <= titles, set(DASHBOARD_NO_DATA) - titles
    wait_all_up(prom, cluster)
    shipped = dict(prom.scrape_targets)

    # An evacuator (in this process: its metrics are its registry's) that
    # leads, sees three compute hosts, and recovers one that fails.
    conf = novaha.make_conf(tmp_path, fake_nova.url)
    hosts = novaha.join_hosts(fake_nova, members, conf)
    fake_nova.nova.add_server('vm', 'c1', metadata=novaha.HA)
    ev = novaha.make_evacuator(conf, [novaha.FenceLog(tmp_path / 'fenced')])
    served = ev.metrics.serve(0)
    evacuating = threading.Thread(target=ev.run, name='evacuator',
                                  daemon=True)
    evacuating.start()
    cluster.client().create_volume('dashboard', 8 * MiB,
                                   chunk_size=4 * MiB)
    nbd = NbdClient(cluster.nbd_port, 'dashboard')
    load = NbdLoad(nbd)
    try:
        reload_targets(prom, dict(
            shipped, **{'nova-ha': ['127.0.0.1:%d' % served.port]}))
        # One NBD error (a read past the end) for the errors panel.
        assert nbd.request(p.CMD_READ, nbd.size, 4096)[0] != 0
        load.start()
        wait_for(lambda: ev.is_leader, 10, 'the evacuator to lead')
        novaha.fail_host(fake_nova, hosts, 'c1')
        wait_for(novaha.recovery_over(ev, 'c1'), 30, 'the recovery of c1',
                 interval=0.2)

        started = time.monotonic()
        gaps = {}

        def complete():
            gaps.clear()
            gaps.update(dashboard_gaps(prom))
            return not set(gaps) - set(DASHBOARD_NO_DATA)
        prom.wait(complete, 60, lambda: 'every dashboard query to have '
                  'data (%.0f s); without: %s' % (
                      time.monotonic() - started,
                      {t: q for t, q in gaps.items()
                       if t not in DASHBOARD_NO_DATA}))
        load.stop()
        assert load.rounds > 0
    finally:
        load.stopping.set()
        if load.is_alive():
            load.join(30)
        nbd.close()
        reload_targets(prom, shipped)
        ev.stop()
        evacuating.join(30)
        served.shutdown()
