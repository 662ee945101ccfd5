"""Master failover under I/O: fio writes and verifies through ursa-nbd
while the leading master is killed (SIGKILL) or every master is restarted
in turn (SIGTERM).  Data I/O on mapped chunks needs no master (the
gateway holds the chunk map and its lease; the chunk servers hold the
master's views), so fio must see no error at all, and the metadata
acknowledged before must all be there after.

The leases here are short (a few seconds) only to keep the tests short;
how long a failover takes with the product defaults is measured by
tools/bench-failover, not asserted here.
"""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.nbd import protocol as p
from tests.fixtures.wait import wait_for
from tests.functional.nbd.test_nbd import connect
from tests.functional.nbd.test_nbd import need
from tests.functional.nbd.test_nbd import request
from tests.functional.nbd.test_nbd import run
from tests.functional.nbd.test_nbd import uri

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
# Long enough that a write waiting for the election would stand out
# from the gaps of a busy machine.
LEASE = 8
RENEW_DEADLINE = 5
CONF = ('[ursa_master]\nleader_lease = %d\nleader_renew_deadline = %s\n'
        % (LEASE, RENEW_DEADLINE))
# A master stopped with SIGTERM leaves at once; a killed one is waited
# for its lease: generous bounds for a loaded machine, not a measure.
ELECTION_BOUND = LEASE + 30.0


def leader_of(c, url):
    """The leader master ``url`` names (itself if it leads), or None."""
    client = master_mod.MasterClient([url], c.key, timeout=5)
    client._http.failover_wait = 0
    try:
        return client.cluster_status()['masters']['leader']
    except exception.NotLeader as e:
        return e.leader
    except exception.UrsaError:
        return None


def leading(c, i, standbys):
    """Master ``i``'s status if it leads with exactly ``standbys``."""
    url = c.master_urls[i]
    client = master_mod.MasterClient([url], c.key, timeout=5)
    client._http.failover_wait = 0
    try:
        m = client.cluster_status()['masters']
    except exception.UrsaError:
        return None
    if m['leader'] == url and sorted(m['standbys']) == sorted(
            c.master_urls[j] for j in standbys):
        return m
    return None


def fio_job(path, volume_uri, seconds):
    """Random 4 KiB writes over chunks 0 and 1 (8 MiB, a FLUSH every 64)
    and sequential 64 KiB writes over chunk 2, each verified (crc32c)
    while it runs (verify_backlog) and at the end, rate-limited to last
    about ``seconds``: the faults land while both write.  Both jobs map
    their chunks in their first writes, so what they write later needs
    no master.  Every completion is logged with its wall-clock time."""
    path.write_text(
        '[global]\nioengine=nbd\nuri=%s\nverify=crc32c\ndo_verify=1\n'
        'verify_fatal=1\nverify_state_save=0\nverify_backlog=64\n'
        'write_lat_log=%s\nlog_avg_msec=0\nlog_unix_epoch=1\n'
        '[rand]\nrw=randwrite\nbs=4k\niodepth=16\noffset=0\nsize=8M\n'
        'fsync=64\nrate_iops=%d\n'
        '[seq]\nrw=write\nbs=64k\niodepth=4\noffset=8M\nsize=4M\n'
        'rate=%d\n' % (volume_uri, path.with_suffix(''), 2048 // seconds,
                       4 * MiB // seconds))
    return path


def start_fio(job):
    return subprocess.Popen(['fio', '--output-format=json', str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def fio_result(fio, job, timeout=240):
    """fio's jobs, once it ended with no error and verified all it wrote,
    and the wall-clock times (s) its writes completed at."""
    out, err = fio.communicate(timeout=timeout)
    assert fio.returncode == 0, err
    jobs = json.loads(out[out.index('{'):])['jobs']
    assert [j['error'] for j in jobs] == [0, 0], err
    for j, size in zip(jobs, (8 * MiB, 4 * MiB), strict=True):
        assert j['write']['io_bytes'] == size, j['jobname']
        # Verified: every block written was read back and checked.
        assert j['read']['io_bytes'] == size, j['jobname']
    done = []
    for log in job.parent.glob(job.stem + '_clat.*.log'):
        for line in log.read_text().splitlines():
            at, _, ddir = line.split(',')[:3]
            if ddir.strip() == '1':
                done.append(int(at) / 1000.0)
        log.unlink()
    return jobs, sorted(done)


def slowest_ms(jobs):
    """The longest completion latency of a write, in ms (for the
    report)."""
    return max(j['write']['clat_ns']['max'] for j in jobs) / 1e6


class MetadataLoad:
    """Volume creations one after the other, through a client given every
    master URL, in a thread: what a Cinder driver does during the fault.
    Records what was acknowledged and what failed."""

    def __init__(self, c, prefix):
        self.client = c.client()
        self.prefix = prefix
        self.acked, self.errors = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            name = '%s-%d' % (self.prefix, i)
            i += 1
            try:
                self.client.create_volume(name, 4 * MiB, chunk_size=4 * MiB)
                self.acked.append(name)
            except exception.UrsaError as e:
                self.errors.append((name, e))
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(120)


@pytest.fixture
def gateway_cluster(make_cluster):
    c = make_cluster(3, masters=2, server_timeout=15.0, extra_conf=CONF)
    c.start_nbd()
    wait_for(lambda: leading(c, 0, [1]), 30,
             'master 0 leading with master 1 as standby')
    return c


class MappedExport:
    """An NBD connection to volume ``name`` that writes a block to each of
    its ``chunks`` and stays open: the gateway keeps the export (one
    Volume shared by its connections) open with every chunk mapped, so
    fio's writes and reads need no master however early the fault lands
    (a chunk still to allocate does need the master, of course)."""

    def __init__(self, c, name, chunks, chunk_size):
        self.sock, _, _ = connect(c, name)
        for i in range(chunks):
            err, _ = request(self.sock, p.CMD_WRITE, i * chunk_size, 4096,
                             data=bytes(4096))
            assert err == 0, 'writing chunk %d: NBD error %d' % (i, err)

    def close(self):
        self.sock.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0,
                                         0, 0))
        self.sock.close()


def attached(c, name):
    """How many NBD connections to export ``name`` the gateway has logged
    attaching."""
    with open(os.path.join(c.data_dir, 'nbd.log')) as f:
        return f.read().count(' attached to %s\n' % name)


def longest_gap(times, start, end):
    """The longest time between two of ``times`` (sorted), or from
    ``start`` or to ``end``, within [start, end]."""
    inside = [start] + [t for t in times if start < t < end] + [end]
    return max(b - a for a, b in zip(inside, inside[1:], strict=False))


def test_sigkill_of_the_leader_under_verifying_fio(gateway_cluster,
                                                   tmp_path):
    need('fio')
    need('qemu-io')
    need('qemu-img')
    need('nbdinfo')
    c = gateway_cluster
    old, new = c.master_urls
    client = c.client()
    client.create_volume('fio', 12 * MiB, chunk_size=4 * MiB)
    client.create_volume('pre', 4 * MiB, chunk_size=4 * MiB)
    client.create_snapshot('pre', 'before')
    mapped = MappedExport(c, 'fio', 3, 4 * MiB)
    job = fio_job(tmp_path / 'kill.fio', uri(c, 'fio'), 20)
    fio = start_fio(job)
    with MetadataLoad(c, 'meta') as load:
        # fio's jobs are in: fio's nbd engine connects once per job to
        # size the export, then again to run it (1 + 2 + 2 connections
        # with ours).  Their writes need no master from then on.
        wait_for(lambda: fio.poll() is None and attached(c, 'fio') >= 5,
                 30, lambda: 'fio connected (%d connections logged)'
                 % attached(c, 'fio'))
        wait_for(lambda: len(load.acked) >= 5, 30, 'volumes created')
        c.kill_master(signal.SIGKILL, 0)
        killed_at = time.time()
        # A new connection to the open export is served while no master
        # leads (the gateway waits for one a moment only).
        info = json.loads(run('nbdinfo', '--json', uri(c, 'fio')))
        assert info['exports'][0]['export-size'] == 12 * MiB
        assert leader_of(c, new) != new, 'elected before nbdinfo was served'
        wait_for(lambda: leader_of(c, new) == new, ELECTION_BOUND,
                 'master 1 leading')
        elected_at = time.time()
        assert fio.poll() is None, 'fio ended before the election'
        jobs, done = fio_result(fio, job)
        acked = len(load.acked)
        wait_for(lambda: len(load.acked) > acked + 3, 60,
                 'volumes created through the new leader')
    mapped.close()
    assert load.errors == [], load.errors
    # While no master led, fio's writes kept completing: none waited for
    # the election.  (One that did would leave a gap of about the time
    # from the kill to the election: fio keeps 16 writes in flight.)
    window = elected_at - killed_at
    gap = longest_gap(done, killed_at, elected_at)
    print('no leader for %.1f s; %d writes completed meanwhile, at most '
          '%.2f s apart; slowest fio write %.0f ms' % (
              window, len([t for t in done if killed_at < t < elected_at]),
              gap, slowest_ms(jobs)))
    assert gap < window / 2, (window, gap)
    # Everything the old leader acknowledged is there.
    listed = {v['name'] for v in client.volumes()}
    assert set(load.acked) | {'fio', 'pre'} <= listed
    assert [s['name'] for s in client.snapshots('pre')] == ['before']
    # Metadata through the new leader: create, snapshot, attach.
    client.create_volume('post', 8 * MiB, chunk_size=4 * MiB)
    client.create_snapshot('fio', 'after')
    assert client.attach('post', 'compute-1')['host'] == 'compute-1'
    # New exports (a lease taken from the new leader); the volume written
    # through the failover reads the same as a snapshot taken after it.
    out = run('qemu-io', '-f', 'raw', '-c', 'write -P 0x5c 0 1M',
              '-c', 'read -P 0x5c 0 1M', uri(c, 'post'))
    assert 'Pattern verification failed' not in out
    info = json.loads(run('nbdinfo', '--json', uri(c, 'fio@after')))
    assert info['exports'][0]['is_read_only']
    run('qemu-img', 'compare', '-f', 'raw', '-F', 'raw', uri(c, 'fio'),
        uri(c, 'fio@after'))
    assert [s['state'] for s in client.servers()] == ['up'] * 3


# The rolling restart: a long lease, so that a handover that waited for
# it (instead of the stopping leader handing over) fails the test.
ROLLING_LEASE = 60
ROLLING_CONF = ('[ursa_master]\nleader_lease = %d\n'
                'leader_renew_deadline = 8\n' % ROLLING_LEASE)


class FioLoop:
    """fio runs (each verifying all it wrote) one after the other, in a
    thread, until stopped; ``runs``: their jobs, ``failures``: what went
    wrong."""

    def __init__(self, job):
        self.job = job
        self.runs, self.failures = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.runs.append(fio_result(start_fio(self.job),
                                            self.job)[0])
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.failures.append(e)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(240)


def the_leader(c):
    """The URL of the master that says it leads, with every other one
    standing by, or None."""
    n = len(c.master_urls)
    return next((c.master_urls[i] for i in range(n)
                 if leading(c, i, [j for j in range(n) if j != i])), None)


def a_standby_leads(c, stopped):
    """Whether a master other than ``stopped`` (an index) says it leads."""
    return any(leader_of(c, url) == url
               for j, url in enumerate(c.master_urls) if j != stopped)


def test_rolling_restart_of_every_master_under_io(make_cluster, tmp_path):
    """SIGTERM, restart and wait for it to stand by again, master after
    master: fio verifies all it writes through the gateway and metadata
    calls (a client given every URL) keep working; a leader stopped hands
    over at once, well before its lease would expire."""
    need('fio')
    c = make_cluster(3, masters=3, server_timeout=15.0,
                     extra_conf=ROLLING_CONF)
    c.start_nbd()
    wait_for(lambda: the_leader(c) == c.master_urls[0], 30,
             'master 0 leading')
    c.client().create_volume('fio', 12 * MiB, chunk_size=4 * MiB)
    mapped = MappedExport(c, 'fio', 3, 4 * MiB)
    handovers = []
    job = fio_job(tmp_path / 'rolling.fio', uri(c, 'fio'), 6)
    with FioLoop(job) as fio, MetadataLoad(c, 'meta') as load:
        wait_for(lambda: attached(c, 'fio') >= 5 or fio.failures, 30,
                 'fio connected')
        for i in range(len(c.master_urls)):
            leader = wait_for(lambda: the_leader(c), 60,
                              'a leader with every other master standing by')
            stopped = time.monotonic()
            c.kill_master(signal.SIGTERM, i)
            if c.master_urls[i] == leader:
                # Well before the lease: the stopped leader handed over.
                wait_for(lambda i=i: a_standby_leads(c, i), ROLLING_LEASE / 2,
                         'a standby leading')
                handovers.append(time.monotonic() - stopped)
            c.start_master(i)
        wait_for(lambda: the_leader(c), 60,
                 'a leader with every other master standing by')
        runs = len(fio.runs)
        wait_for(lambda: len(fio.runs) > runs or fio.failures, 60,
                 'a fio run after the restarts')
    mapped.close()
    print('handovers after SIGTERM: %s s; %d fio runs; %d volumes '
          'created' % (', '.join('%.1f' % h for h in handovers),
                       len(fio.runs), len(load.acked)))
    assert fio.failures == [], fio.failures
    assert load.errors == [], load.errors
    # Master 0 led, and so did the one that took over from it, restarted
    # after master 0 (and maybe the one after that).
    assert len(handovers) >= 2, handovers
    listed = {v['name'] for v in c.client().volumes()}
    assert set(load.acked) <= listed
