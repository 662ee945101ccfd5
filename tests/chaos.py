"""The chaos run: a cluster under verifying writers and a seeded random
schedule of faults, checked whole at the end (``tools/chaos``).

The cluster: a master or several (failover), chunk servers each on a host
of its own (a network namespace, tests/fixtures/netns.py) in a failure
domain of its own, and the NBD gateway on another.  Some chunk servers
keep their data on a power-loss disk (tests/fixtures/powerloss.py), one
on a disk that fails on demand (tests/fixtures/faultydisk.py).

The writers, all the run long:

* a model writer per volume (the client library): random writes of 1 to
  8 blocks, each block's content naming the block and the write; FLUSH
  now and then; reads checked against a model of what was acknowledged
  and flushed (a block holds its last flushed write or one acknowledged
  after it, or one whose outcome was an error: never anything else, never
  a torn mix); snapshots taken after a FLUSH and read back whole later,
  clones of them read, written and deleted;
* fio through ursa-nbd, with crc32c verify of every block it wrote, run
  after run.

The faults, one at a time, each held a few seconds then healed, after a
quiet spell (``--quiet``, ``--hold``): a chunk server killed (SIGKILL) and
started again; frozen (SIGSTOP) and thawed; cut off from every host, from
the master only, or one way from one peer; a lossy link; its disk failing
(EIO, the server restarted once the disk is back); bit flips in one
replica's chunk file; a power cut (the server's machine loses what its
disk had not made durable); the leading master killed (another takes over)
and started again; the gateway cut off from one chunk server.

At the end, every fault healed and every process back: the writers flush
and stop, the run waits for full redundancy (every chunk at its replica
count, nothing being copied or resynced), then checks: each model
volume, read whole, holds exactly its last writes; each snapshot kept
reads as it was taken; ``ursa volume check --deep`` finds no replica that
differs or fails its CRC on any volume; ``ursa cluster check`` finds
nothing.  It prints the faults by kind, the bytes written, verify errors,
divergent replicas, chunks below full copies and the time to full
redundancy after the last fault, and exits 1 on any failure.  The seed is
printed first: ``--seed`` replays the same schedule (the timing of
processes differs).

The run keeps a timeline: each model writer's writes, reads and FLUSHes
a second at a time (count, latency, failures), each fault with the
moments it was injected and healed, and with ``--plot FILE.png`` fio's
own once-a-second log of its writes; ``--plot`` draws it at the end
(operations per second, latency, errors, each fault a shaded span
labelled by its kind; needs matplotlib).

Needs root (namespaces, FUSE), iproute2, nftables, fio, /dev/fuse.
"""

import argparse
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import pathlib
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from cinder_ursa import exception
from cinder_ursa.client import check
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.protocol.chunkfile import DATA
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.protocol.chunkfile import decode_entries
from tests.fixtures import faultydisk
from tests.fixtures import logs
from tests.fixtures import netns
from tests.fixtures import powerloss
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_index

BS = 4096
MiB = 1024 * 1024
STAMP = struct.Struct('!16sQQ')     # volume tag, block, write number
REPEAT = BS // STAMP.size
STABLE = 5.0        # s the cluster must stay whole to count as whole
FAULTS = ('kill', 'freeze', 'isolate', 'cut-from-master', 'one-way',
          'lossy-link', 'disk-eio', 'bit-flip', 'power-cut',
          'master-kill', 'gateway-cut')


def log(text):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), text), flush=True)


def _plots():
    """tools/plots.py, imported from the tools directory (only to plot:
    it imports matplotlib)."""
    tools = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'tools')
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import plots
    return plots


class Seconds:
    """One writer's operations a second at a time, for the timeline:
    {(second since ``t0``, kind): [done, latency sum, worst latency,
    failed]}.  A dict update per operation, a few thousand entries an
    hour; one writer thread per instance, so no lock."""

    def __init__(self, t0):
        self.t0 = t0
        self.buckets = {}

    def add(self, kind, start, end, failed):
        key = (int(end - self.t0), kind)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = [0, 0.0, 0.0, 0]
        if failed:
            b[3] += 1
        else:
            b[0] += 1
            b[1] += end - start
            b[2] = max(b[2], end - start)


# --- the model writer -------------------------------------------------------

def block_content(tag, block, n):
    """What write ``n`` puts in ``block`` of the volume tagged ``tag``."""
    return STAMP.pack(tag, block, n) * REPEAT


def block_write(tag, block, data):
    """The write number a block's content names: 0 for zeros, None for
    anything else (a torn mix, another block's, garbage)."""
    if data == bytes(BS):
        return 0
    t, b, n = STAMP.unpack_from(data)
    if t != tag or b != block or data != STAMP.pack(t, b, n) * REPEAT:
        return None
    return n


class Model:
    """What each block of a volume may hold.  ``flushed``: its last write
    acknowledged before the last FLUSH that completed; ``acked``: its
    last write acknowledged since (a read returns it: the writer is one
    thread, every write ends before the next read); ``older``: writes it
    acknowledged before that one since the FLUSH (which only a power
    cut may bring back, as it may the flushed one: writes not flushed are
    not durable); ``unsure``: writes whose outcome is unknown (they
    failed), since the FLUSH."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.flushed = [0] * blocks
        self.acked = {}
        self.older = collections.defaultdict(set)
        self.unsure = collections.defaultdict(set)

    def wrote(self, block, n, acked):
        if not acked:
            self.unsure[block].add(n)
            return
        if block in self.acked:
            self.older[block].add(self.acked[block])
        self.acked[block] = n

    def flush_done(self, acked):
        """A FLUSH completed: ``acked`` {block: its last write
        acknowledged before the FLUSH was sent} is durable."""
        for b, n in acked.items():
            self.flushed[b] = n
            self.older.pop(b, None)
            later = {u for u in self.unsure.pop(b, ()) if u > n}
            if later:
                self.unsure[b] = later
            if self.acked.get(b) == n:
                del self.acked[b]

    def allowed(self, block, power_cut=False):
        """The writes ``block`` may hold; ``power_cut``: a chunk server
        lost power since the last FLUSH (writes acknowledged since may be
        lost)."""
        ok = set(self.unsure.get(block, ()))
        if block in self.acked:
            ok.add(self.acked[block])
            if power_cut:
                ok |= self.older.get(block, set()) | {self.flushed[block]}
        else:
            ok.add(self.flushed[block])
        return ok


class ModelWriter(threading.Thread):
    """Writes, reads, flushes, snapshots and clones one volume, checking
    every read against its :class:`Model`."""

    def __init__(self, chaos, name, size, seed):
        super().__init__(name='writer-' + name, daemon=True)
        self.chaos = chaos
        self.volume = name
        self.tag = hashlib.sha256(name.encode()).digest()[:16]
        self.blocks = size // BS
        self.model = Model(self.blocks)
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.n = 0
        self.cuts_seen = 0          # power events before the last FLUSH
        self.snapshots = {}         # name -> exact image
        self.snap_seq = 0
        self.stats = collections.Counter()
        self.errors = []            # verify errors (strings)
        self.failure = None
        self.seconds = Seconds(chaos.io_started)

    def run(self):
        try:
            with sync.SyncCluster(self.chaos.cluster.master_urls,
                                  self.chaos.cluster.key,
                                  io_timeout=120.0) as cl:
                self.cl = cl
                with cl.open_volume(self.volume) as v:
                    self._loop(v)
                    self._flush(v, final=True)
        except Exception as e:  # noqa: BLE001 - reported by the run
            self.failure = '%s: %r' % (self.volume, e)
            log('writer %s failed: %r' % (self.volume, e))

    def _loop(self, v):
        writes = 0
        while not self.stop.is_set():
            op = self.rng.random()
            if op < 0.6:
                self._timed('write', self._write, v)
                writes += 1
                if writes % 16 == 0:
                    self._timed('flush', self._flush, v)
            elif op < 0.94:
                self._timed('read', self._read, v)
            elif op < 0.99:
                self._check_snapshot()
            elif op < 0.996:
                self._snapshot(v)
            else:
                self._clone()
            if self.chaos.writer_pause:
                time.sleep(self.chaos.writer_pause)

    def _timed(self, kind, op, v):
        """``op(v)``, into the timeline: failed if it counted an I/O
        error or found a verify error."""
        before = self.stats['io_errors'] + len(self.errors)
        start = time.monotonic()
        try:
            op(v)
        finally:
            self.seconds.add(kind, start, time.monotonic(),
                             self.stats['io_errors'] + len(self.errors)
                             != before)

    def _write(self, v):
        first = self.rng.randrange(self.blocks)
        count = min(self.rng.randint(1, 8), self.blocks - first)
        nums = []
        for _ in range(count):
            self.n += 1
            nums.append(self.n)
        data = b''.join(block_content(self.tag, first + i, n)
                        for i, n in enumerate(nums))
        try:
            v.write(first * BS, data)
        except exception.UrsaError as e:
            self.stats['io_errors'] += 1
            log('writer %s: write failed (%s): its blocks may hold it '
                'or not' % (self.volume, e))
            for i, n in enumerate(nums):
                self.model.wrote(first + i, n, acked=False)
            return
        for i, n in enumerate(nums):
            self.model.wrote(first + i, n, acked=True)
        self.stats['bytes_written'] += len(data)
        self.stats['writes'] += 1

    def _flush(self, v, final=False):
        acked = dict(self.model.acked)
        cuts = self.chaos.power_events
        try:
            v.flush()
        except exception.UrsaError as e:
            if final:
                raise
            self.stats['io_errors'] += 1
            log('writer %s: flush failed (%s)' % (self.volume, e))
            return
        self.model.flush_done(acked)
        self.cuts_seen = cuts
        self.stats['flushes'] += 1

    def allowed(self, block):
        return self.model.allowed(
            block, power_cut=self.chaos.power_events != self.cuts_seen)

    def _verify(self, what, first, data, allowed):
        """Check blocks read from ``first``; ``allowed(block)``: the
        write numbers each may hold."""
        for i in range(len(data) // BS):
            b = first + i
            got = block_write(self.tag, b, data[i * BS:(i + 1) * BS])
            ok = allowed(b)
            if got not in ok:
                self.errors.append(
                    '%s block %d: holds %s, expected one of %s' % (
                        what, b, 'garbage or a torn mix' if got is None
                        else 'write %d' % got, sorted(ok)[:8]))
                log('VERIFY ERROR: ' + self.errors[-1])

    def _read(self, v):
        first = self.rng.randrange(self.blocks)
        count = min(self.rng.randint(1, 32), self.blocks - first)
        try:
            data = v.read(first * BS, count * BS)
        except exception.ChecksumError as e:
            self.errors.append('%s blocks %d-%d: no valid copy (%s)' % (
                self.volume, first, first + count - 1, e))
            log('VERIFY ERROR: ' + self.errors[-1])
            return
        except exception.UrsaError as e:
            self.stats['io_errors'] += 1
            log('writer %s: read failed (%s)' % (self.volume, e))
            return
        self.stats['reads'] += 1
        self.stats['bytes_read'] += len(data)
        self._verify(self.volume, first, data, self.allowed)

    def _snapshot(self, v):
        """A FLUSH, then a snapshot: what every block holds is then
        known exactly (no write runs meanwhile)."""
        self._flush(v)
        if self.model.acked:
            return      # the flush failed: not known exactly
        self.snap_seq += 1
        name = 's%d' % self.snap_seq
        try:
            self.cl.create_snapshot(self.volume, name)
        except exception.UrsaError as e:
            self.stats['meta_errors'] += 1
            log('writer %s: snapshot failed (%s)' % (self.volume, e))
            return
        self.snapshots[name] = [self.allowed(b)
                                for b in range(self.blocks)]
        self.stats['snapshots'] += 1
        while len(self.snapshots) > 2:
            old = min(self.snapshots, key=lambda s: int(s[1:]))
            del self.snapshots[old]
            try:
                self.cl.delete_snapshot('%s@%s' % (self.volume, old))
            except exception.NotFound:
                # A delete whose answer a master failover lost, retried.
                self.stats['meta_retried'] += 1
            except exception.UrsaError as e:
                # Done or not: it is not read again either way.
                self.stats['meta_errors'] += 1
                log('writer %s: snapshot delete failed (%s)'
                    % (self.volume, e))

    def _check_snapshot(self, name=None, ref=None):
        if not self.snapshots:
            return
        name = name or self.rng.choice(sorted(self.snapshots))
        image = self.snapshots[name]
        ref = ref or '%s@%s' % (self.volume, name)
        first = self.rng.randrange(self.blocks)
        count = min(64, self.blocks - first)
        try:
            with self.cl.open_volume(ref, writable=False) as s:
                data = s.read(first * BS, count * BS)
        except exception.NotFound as e:
            self.errors.append('%s: a snapshot taken is gone (%s)' % (ref, e))
            log('VERIFY ERROR: ' + self.errors[-1])
            del self.snapshots[name]
            return
        except exception.ChecksumError as e:
            self.errors.append('%s: no valid copy (%s)' % (ref, e))
            log('VERIFY ERROR: ' + self.errors[-1])
            return
        except exception.UrsaError as e:
            self.stats['io_errors'] += 1
            log('writer %s: snapshot read failed (%s)' % (self.volume, e))
            return
        self.stats['snapshot_reads'] += 1
        self._verify(ref, first, data, image.__getitem__)

    def _clone(self):
        """A clone of a snapshot: it reads as the snapshot, takes writes
        of its own, and is deleted."""
        if not self.snapshots:
            return
        name = self.rng.choice(sorted(self.snapshots))
        image = self.snapshots[name]
        clone = '%s-clone%d' % (self.volume, self.n)
        try:
            self.cl.clone('%s@%s' % (self.volume, name), clone)
            with self.cl.open_volume(clone) as c:
                first = self.rng.randrange(self.blocks)
                count = min(16, self.blocks - first)
                self._verify(clone, first, c.read(first * BS, count * BS),
                             image.__getitem__)
                tag = hashlib.sha256(clone.encode()).digest()[:16]
                # The clone's own tag: leaked into the volume, it would
                # read as garbage there.
                data = b''.join(block_content(tag, first + i, 1)
                                for i in range(count))
                c.write(first * BS, data)
                c.flush()
                back = c.read(first * BS, count * BS)
                if back != data:
                    self.errors.append('%s: blocks %d-%d written and '
                                       'flushed read back different' % (
                                           clone, first, first + count - 1))
                    log('VERIFY ERROR: ' + self.errors[-1])
            self.chaos.cluster.client().delete_volume(clone)
            self.stats['clones'] += 1
        except exception.UrsaError as e:
            self.stats['meta_errors'] += 1
            log('writer %s: clone %s failed (%s)' % (self.volume, clone, e))

    def final_check(self):
        """Once stopped and flushed: the whole volume holds exactly its
        last writes, each snapshot kept reads as it was taken."""
        with sync.SyncCluster(self.chaos.cluster.master_urls,
                              self.chaos.cluster.key) as cl:
            with cl.open_volume(self.volume, writable=False) as v:
                for first in range(0, self.blocks, 256):
                    count = min(256, self.blocks - first)
                    self._verify(self.volume + ' (end)', first,
                                 v.read(first * BS, count * BS),
                                 self.allowed)
            for name, image in sorted(self.snapshots.items()):
                ref = '%s@%s' % (self.volume, name)
                try:
                    s = cl.open_volume(ref, writable=False)
                except exception.NotFound as e:
                    self.errors.append('%s: a snapshot taken is gone (%s)'
                                       % (ref, e))
                    continue
                with s:
                    for first in range(0, self.blocks, 256):
                        count = min(256, self.blocks - first)
                        self._verify(ref + ' (end)', first,
                                     s.read(first * BS, count * BS),
                                     image.__getitem__)


# --- fio through the gateway ------------------------------------------------

class FioWriter(threading.Thread):
    """fio through ursa-nbd, run after run: random 4 KiB writes with a
    FLUSH every 64 and sequential 64 KiB writes, every block verified
    (crc32c) as it runs and at the end of the run."""

    def __init__(self, chaos, uri, workdir, size):
        super().__init__(name='fio', daemon=True)
        self.chaos = chaos
        self.uri = uri
        self.job = os.path.join(workdir, 'chaos.fio')
        self.size = size
        self.stop = threading.Event()
        self.stats = collections.Counter()
        self.errors = []
        self.proc = None
        # With --plot: fio's once-a-second logs of each run, (run start
        # time.monotonic(), {log name: text}), and when runs failed.
        self.log_prefix = os.path.join(workdir, 'fio-log') \
            if chaos.args.plot else None
        self.logs = []
        self.failed_at = []

    LOGS = ('iops.1', 'iops.2', 'clat.1')     # [rand] is 1, [seq] 2

    def _keep_logs(self, started):
        if not self.log_prefix:
            return
        texts = {}
        for name in self.LOGS:
            path = '%s_%s.log' % (self.log_prefix, name)
            with contextlib.suppress(FileNotFoundError):
                with open(path) as f:
                    texts[name] = f.read()
                os.unlink(path)
        self.logs.append((started, texts))

    def run(self):
        half = self.size // 2
        log_opts = ''
        if self.log_prefix:
            log_opts = ('write_iops_log=%s\nwrite_lat_log=%s\n'
                       'log_avg_msec=1000\n' % ((self.log_prefix,) * 2))
        with open(self.job, 'w') as f:
            f.write('[global]\nioengine=nbd\nuri=%s\nverify=crc32c\n'
                    'do_verify=1\nverify_fatal=1\nverify_state_save=0\n'
                    'verify_backlog=64\n%s'
                    '[rand]\nrw=randwrite\nbs=4k\niodepth=8\noffset=0\n'
                    'size=%d\nfsync=64\nrate_iops=300\n'
                    '[seq]\nrw=write\nbs=64k\niodepth=2\noffset=%d\n'
                    'size=%d\nrate=2m\n' % (self.uri, log_opts, half, half,
                                            half))
        while not self.stop.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen(
                ['fio', '--output-format=json', self.job],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = self.proc.communicate()
            self._keep_logs(started)
            self.stats['runs'] += 1
            try:
                jobs = json.loads(out[out.index('{'):])['jobs']
            except ValueError:
                jobs = []
            for j in jobs:
                self.stats['bytes_written'] += j['write']['io_bytes']
                self.stats['bytes_verified'] += j['read']['io_bytes']
            if self.proc.returncode or not jobs or any(
                    j['error'] for j in jobs):
                self.errors.append('fio run %d failed (exit %s): %s' % (
                    self.stats['runs'], self.proc.returncode,
                    (err.strip() or out[-500:])[-500:]))
                log('VERIFY ERROR: ' + self.errors[-1])
                self.failed_at.append(time.monotonic())
                time.sleep(1)



# --- the cluster and its faults ---------------------------------------------

class Chaos:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.rng = random.Random(self.seed)
        self.workdir = args.workdir
        self.writer_pause = args.writer_pause
        self.faults = collections.Counter()
        self.failures = []
        self.stack = contextlib.ExitStack()
        self.flips = []     # (server, path, offset)
        self.flipped_at = {}    # (volume, index) -> when last flipped
        # Power cuts and the restarts after them: a model writer widens
        # what a block may hold when one came since its last FLUSH.
        self.power_events = 0
        # The timeline (see Seconds): when the writers started, each
        # fault (kind, injected, healed), moments of note (time, what).
        self.io_started = self.io_stopped = None
        self.fault_times = []
        self.marks = []

    # setup ---------------------------------------------------------------

    def start(self):
        a = self.args
        self.network = self.stack.enter_context(netns.Network())
        conf = ('[ursa_chunkserver]\nscrub_interval = %d\n'
                'light_scrub_interval = %d\n'
                '[ursa_master]\nreplica_grace = %d\n'
                'leader_lease = 3\nleader_renew_deadline = 2\n'
                '[ursa]\nrequest_timeout = 5\n'
                % (a.scrub_interval, a.scrub_interval, a.replica_grace))
        self.cluster = netns.cluster(
            self.network, os.path.join(self.workdir, 'cluster'),
            a.chunkservers, masters=a.masters, nbd=True,
            server_timeout=3.0, server_startup_timeout=15.0,
            replication_timeout=2.0, extra_conf=conf)
        c = self.cluster
        self.power = sorted(range(a.power_disks))
        self.eio = a.power_disks if a.eio_disk else None
        disks = {}
        for i in self.power:
            disks[i] = powerloss.PowerLossDisk(
                os.path.join(self.workdir, 'disks', 'cs%d' % i), c.cs_dir(i),
                os.path.join(self.workdir, 'disks', 'cs%d.state' % i)
            ).start()
        self.cuts = powerloss.PowerCuts(c, disks)
        self.stack.callback(lambda: [d.stop() for d in disks.values()])
        if self.eio is not None:
            backing = os.path.join(self.workdir, 'disks', 'eio')
            os.makedirs(backing, exist_ok=True)
            os.makedirs(c.cs_dir(self.eio), exist_ok=True)
            self.eio_trigger = os.path.join(self.workdir, 'disks',
                                            'eio.trigger')
            self.stack.enter_context(faultydisk.mounted(
                backing, c.cs_dir(self.eio), pathlib.Path(self.eio_trigger)))
        self.stack.callback(c.stop)
        c.start(nbd=True)
        client = c.client()
        self.volumes = []
        for k in range(a.volumes):
            name = 'model%d' % k
            client.create_volume(name, a.volume_size, chunk_size=4 * MiB)
            self.volumes.append(name)
        client.create_volume('fio', a.fio_size, chunk_size=4 * MiB)
        log('cluster up: %d master(s), %d chunk servers (power-loss disks '
            'on %s, failing disk on %s), gateway on %s' % (
                a.masters, a.chunkservers, self.power, self.eio,
                self.network.address('nbd')))

    # faults --------------------------------------------------------------

    def _host(self, i):
        return 'cs%d' % i

    def _live_servers(self):
        return sorted(self.cluster.cs_procs)

    def _leader(self):
        for url in self.cluster.master_urls:
            st = master_mod.MasterClient([url], self.cluster.key, timeout=2)
            st._http.failover_wait = 0
            try:
                return st.cluster_status()['masters']['leader'], url
            except exception.NotLeader:
                continue
            except exception.UrsaError:
                continue
        return None, None

    def inject(self, kind):
        """Inject one fault of ``kind``; returns its heal (a callable),
        or None when it could not be injected now."""
        c, net, rng = self.cluster, self.network, self.rng
        servers = self._live_servers()
        i = rng.choice(servers)
        host = self._host(i)
        if kind == 'kill':
            c.kill_chunkserver(i)
            return lambda: c.start_chunkserver(i)
        if kind == 'freeze':
            proc = c.cs_procs[i]
            proc.send_signal(signal.SIGSTOP)
            return lambda: proc.send_signal(signal.SIGCONT)
        if kind == 'isolate':
            net.cut(host)
            return lambda: net.heal(host)
        if kind == 'cut-from-master':
            for m in range(c.masters):
                net.cut(host, c.master_role(m),
                        rng.choice(['both', 'in', 'out']))
            return lambda: net.heal(host)
        if kind == 'one-way':
            peer = self._host(rng.choice([s for s in servers if s != i]))
            net.cut(host, peer, rng.choice(['in', 'out']))
            return lambda: net.heal(host)
        if kind == 'lossy-link':
            net.loss(host, rng.choice([5, 20, 40]))
            return lambda: net.heal(host)
        if kind == 'gateway-cut':
            net.cut('nbd', host)
            return lambda: net.heal('nbd')
        if kind == 'disk-eio':
            if self.eio is None or self.eio not in c.cs_procs:
                return None
            open(self.eio_trigger, 'w').close()

            def heal():
                os.unlink(self.eio_trigger)
                # A failed data directory stays failed until a restart.
                c.kill_chunkserver(self.eio, signal.SIGTERM)
                c.start_chunkserver(self.eio)
            return heal
        if kind == 'bit-flip':
            return self._flip()
        if kind == 'power-cut':
            live = [s for s in self.power if s in c.cs_procs]
            if not live or not self._redundant() or \
                    len(c.master_procs) < c.masters:
                # Writes not flushed are lost for good only when every
                # copy of them is: one fault at a time, from a whole
                # cluster (and a master that heard every server), they
                # are not.
                return None
            s = rng.choice(live)
            self.power_events += 1
            self.cuts.cut(s, written_back=rng.choice([0.0, 0.5, 1.0]))

            def heal():
                self.cuts.restart(s)
                self.power_events += 1
            return heal
        if kind == 'master-kill':
            if c.masters < 2:
                m = 0
            else:
                leader, _ = self._leader()
                m = next((k for k, u in enumerate(c.master_urls)
                          if leader and u.startswith(leader.rstrip('/'))),
                         rng.randrange(c.masters))
            if m not in c.master_procs:
                return None
            c.kill_master(i=m)
            return lambda: c.start_master(m)
        raise ValueError('unknown fault %r' % kind)

    def _redundant(self):
        """Whether every chunk has its copies and none is being made."""
        try:
            st = self.cluster.client().cluster_status()
        except exception.UrsaError:
            return False
        return (not st['degraded_chunks'] and not st['joining_replicas']
                and st['servers']['up'] == st['servers']['total'])

    def _flip(self):
        """Flip one byte in a data block of the head of one replica of a
        model volume's chunk, while the cluster is whole, on a server not
        on a power-loss disk (its sync would write the server's own
        pending pages through), and not on a chunk flipped within two
        scrub intervals: the scrub repairs it from the other replicas
        first, so no block is ever bad on two of them."""
        if not self._redundant():
            return None
        c, rng = self.cluster, self.rng
        name = rng.choice(self.volumes)
        vid = c.client().volume(name)['id']
        sets = replica_sets(c, name)
        now = time.monotonic()
        chunks = [i for i in sorted(sets) if now - self.flipped_at.get(
            (name, i), -1e9) > 2 * self.args.scrub_interval]
        if not chunks:
            return None
        index = rng.choice(chunks)
        servers = [server_index(c, sid) for sid in sets[index]]
        servers = [i for i in servers
                   if i in c.cs_procs and i not in self.power]
        if not servers:
            return None
        i = rng.choice(servers)
        path = os.path.join(c.cs_dir(i), 'chunks', vid, '%d.data' % index)
        try:
            with open(path[:-len('.data')] + '.meta', 'rb') as f:
                raw = f.read()
            meta = decode_entries(raw, len(raw) // ENTRY)
            blocks = [b for b in range(len(meta) // 2)
                      if meta[2 * b + 1] & 3 == DATA]
            if not blocks:
                return None
            offset = rng.choice(blocks) * BS + rng.randrange(BS)
            fd = os.open(path, os.O_RDWR)
            try:
                b = os.pread(fd, 1, offset)
                if not b:
                    return None
                os.pwrite(fd, bytes([b[0] ^ 0xFF]), offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log('bit flip on cs%d not made: %s' % (i, e))
            return None
        self.flips.append((i, path, offset))
        self.flipped_at[(name, index)] = now
        self.last_flip = time.time()
        return lambda: None

    def schedule(self, deadline):
        """Faults, one at a time, until ``deadline`` (time.monotonic)."""
        a = self.args
        kinds = [k for k in FAULTS if k not in a.skip]
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(*a.quiet))
            dead = [w for w in self.writers if not w.is_alive()]
            if dead:
                self.failures.append('writer %s stopped during the run'
                                     % dead[0].name)
                return
            kind = self.rng.choice(kinds)
            hold = self.rng.uniform(*a.hold)
            t0 = time.monotonic()
            heal = self.inject(kind)
            if heal is None:
                continue
            self.faults[kind] += 1
            log('fault %d: %s, held %.1f s' % (sum(self.faults.values()),
                                                kind, hold))
            time.sleep(max(0.0, hold - (time.monotonic() - t0)))
            heal()
            self.last_heal = time.monotonic()
            self.fault_times.append((kind, t0, self.last_heal))

    # the run -------------------------------------------------------------

    def run(self):
        a = self.args
        log('chaos run: seed %d, %d s of faults' % (self.seed, a.duration))
        started = time.monotonic()
        self.last_heal = started
        self.start()
        self.io_started = time.monotonic()
        self.writers = [ModelWriter(self, name, a.volume_size,
                                    self.seed * 1000 + k)
                        for k, name in enumerate(self.volumes)]
        self.fio = FioWriter(self, 'nbd://%s:%d/fio' % (
            self.network.address('nbd'), self.cluster.nbd_port),
            self.workdir, a.fio_size)
        self.writers.append(self.fio)
        for w in self.writers:
            w.start()
        try:
            self.schedule(time.monotonic() + a.duration)
        finally:
            self.network.heal()
        log('faults over; the writers flush and stop')
        self.marks.append((time.monotonic(), 'faults over'))
        for w in self.writers:
            w.stop.set()
        for w in self.writers:
            w.join(300)
            if w.is_alive():
                self.failures.append('writer %s did not stop' % w.name)
        self.io_stopped = time.monotonic()
        redundancy = self.wait_redundant(self.last_heal)
        if self.flips:
            self.wait_scrubbed(self.last_flip)
        report = self.final_checks()
        report.update(redundancy)
        report['duration_s'] = round(time.monotonic() - started)
        return self.report(report)

    def wait_redundant(self, since, timeout=None):
        """Wait until every chunk has its copies, none is being made or
        resynced, every server is up; seconds since the last heal."""
        timeout = timeout or self.args.converge_timeout
        client = self.cluster.client()
        deadline = time.monotonic() + timeout
        st = {}
        first_good = None
        while time.monotonic() < deadline:
            try:
                st = client.cluster_status()
            except exception.UrsaError:
                time.sleep(0.5)
                continue
            rep = st.get('repair', {})
            good = (not st['degraded_chunks'] and not st['joining_replicas']
                    and not rep.get('running')
                    and not rep.get('resyncs_pending')
                    and st['servers']['up'] == st['servers']['total'])
            if not good:
                first_good = None
            elif first_good is None:
                first_good = time.monotonic()
            if good and time.monotonic() - first_good >= STABLE:
                # Whole for a while (a server's drop, a resync asked for
                # by a restarted server, shows within a heartbeat or two).
                took = first_good - since
                log('full redundancy %.1f s after the last fault healed'
                    % took)
                return {'time_to_full_redundancy_s': round(took, 1),
                        'chunks_below_full_copies': 0}
            time.sleep(0.5)
        self.failures.append('not fully redundant %d s after the last '
                             'fault: %s' % (timeout, st))
        return {'time_to_full_redundancy_s': None,
                'chunks_below_full_copies': st.get('degraded_chunks')}

    def wait_scrubbed(self, since):
        """Wait until every chunk server ended a deep scrub pass that
        started after ``since`` (time.time()): the bits flipped were
        found by then."""
        log('waiting for a deep scrub pass of every server after the last '
            'bit flip')
        client = self.cluster.client()
        first = {}      # server -> the first pass start seen after since
        deadline = time.monotonic() + 3 * self.args.scrub_interval + 120
        while time.monotonic() < deadline:
            try:
                servers = client.cluster_status()['scrub']['servers']
            except (exception.UrsaError, KeyError):
                time.sleep(1)
                continue
            for sid, st in servers.items():
                if (st.get('pass_started') or 0) > since:
                    first.setdefault(sid, st['pass_started'])
            if len(servers) == self.cluster.n and all(
                    sid in first and (st.get('last_pass_ended') or 0) >=
                    first[sid] for sid, st in servers.items()):
                return
            time.sleep(1)
        self.failures.append('no deep scrub pass of every server within '
                             '%d s after the last bit flip'
                             % (3 * self.args.scrub_interval + 120))

    def _history(self, problems, lines=15):
        """What the logs of the cluster's processes say of the chunks
        ``problems`` name (the last ``lines`` lines each): the workdir of
        a run in CI is gone once the failure is reported."""
        out = []
        for p in problems:
            if p.get('volume_id') is None or p.get('index') is None:
                continue
            needle = '%s/%d' % (p['volume_id'], p['index'])
            named = re.compile(r'\b(%s|%s)/%d\b' % (
                re.escape(p['volume_id']), re.escape(p.get('volume') or
                                                     p['volume_id']),
                p['index']))
            found = ['%s: %s' % (os.path.basename(path), line)
                     for path, lines in logs.matching(
                         self.cluster.data_dir, named.search)
                     for line in lines]
            found.sort(key=lambda line: line.split(': ', 1)[1][:23])
            out.append('history of chunk %s:\n%s' % (
                needle, '\n'.join(found[-lines:])))
        return out

    def final_checks(self):
        out = {'divergent_replicas': 0, 'cluster_check_problems': 0}
        for w in self.writers:
            if isinstance(w, ModelWriter) and w.failure is None:
                try:
                    w.final_check()
                except exception.UrsaError as e:
                    self.failures.append('volume %s not read back whole: '
                                         '%s' % (w.volume, e))
        key = self.cluster.key
        with sync.SyncCluster(self.cluster.master_urls, key) as cl:
            # A chunk server may still be repairing what a read or the
            # torn-block read after a power cut found: a difference that
            # lasts a minute is one.
            for name in self.volumes + ['fio']:
                deadline = time.monotonic() + 60
                while True:
                    report = cl.run(lambda c, n=name: check.check_volume(
                        c, n, deep=True, repair=False))
                    if not report['problems'] or \
                            time.monotonic() > deadline:
                        break
                    out['deep_check_retries'] = out.get(
                        'deep_check_retries', 0) + 1
                    time.sleep(3)
                if report['problems']:
                    self.failures.append('volume %s: %s' % (
                        name, report['problems'][:5]))
                    out['divergent_replicas'] += len(report['problems'])
            # What a server learns at its next heartbeat (a drop), or
            # within a sweep (a copy that was to join), may show a while.
            deadline = time.monotonic() + 90
            while True:
                report = cl.run(check.check_cluster)
                if not report['problems'] or time.monotonic() > deadline:
                    break
                time.sleep(2)
            if report['problems']:
                self.failures.append('cluster check: %s'
                                     % report['problems'][:5])
                self.failures.extend(self._history(report['problems'][:3]))
                out['cluster_check_problems'] = len(report['problems'])
        sets = {n: replica_sets(self.cluster, n)
                for n in self.volumes + ['fio']}
        short = sum(1 for s in sets.values() for ids in s.values()
                    if len(ids) < 3)
        if short:
            self.failures.append('%d chunk(s) below 3 copies' % short)
        out['chunks_below_full_copies'] = short
        return out

    def report(self, r):
        model = [w for w in self.writers if isinstance(w, ModelWriter)]
        stats = collections.Counter()
        for w in model:
            stats.update(w.stats)
        verify = sum(len(w.errors) for w in self.writers)
        for w in self.writers:
            self.failures.extend(w.errors[:20])
            if getattr(w, 'failure', None):
                self.failures.append(w.failure)
        r.update({
            'seed': self.seed,
            'faults': dict(sorted(self.faults.items())),
            'faults_total': sum(self.faults.values()),
            'bit_flips': len(self.flips),
            'bytes_written': stats['bytes_written'] +
            self.fio.stats['bytes_written'],
            'model_writer': dict(stats),
            'fio': dict(self.fio.stats),
            'verify_errors': verify,
            'failures': self.failures,
        })
        r['gib_written'] = round(r['bytes_written'] / 2 ** 30, 3)
        scrub = self.cluster.client().cluster_status().get('scrub', {})
        r['scrub'] = {k: scrub.get(k) for k in (
            'bad_blocks_found', 'bad_blocks_repaired',
            'bad_blocks_unrepaired') if k in scrub}
        return r

    def close(self):
        self.stack.close()

    def plot(self, path, report):
        """Draw the timeline into ``path`` (PNG), on seconds since the
        writers started: operations per second, latency, errors, each
        fault a shaded span from its injection to its heal."""
        plots = _plots()
        t0, end = self.io_started, self.io_stopped - self.io_started
        merged = collections.defaultdict(lambda: [0, 0.0, 0.0, 0])
        for w in self.writers:
            if isinstance(w, ModelWriter):
                for key, b in w.seconds.buckets.items():
                    m = merged[key]
                    m[0], m[1], m[3] = m[0] + b[0], m[1] + b[1], m[3] + b[3]
                    m[2] = max(m[2], b[2])
        secs = range(int(end))    # whole seconds: a part one reads as a drop
        xs = [s + 0.5 for s in secs]
        kinds = ('write', 'read', 'flush')

        def done(kind):
            return [merged[(s, kind)][0] for s in secs]

        def latency_ms(kind, worst=False):
            out = []
            for s in secs:
                n, total, top, _ = merged[(s, kind)]
                out.append(1e3 * (top if worst else total / n) if n
                           else math.nan)
            return out

        def fio_points(name, scale=1.0):
            pts = [(started - t0 + x, y)
                   for started, texts in self.fio.logs
                   for x, y in zip(*plots.fio_series(plots.parse_fio_log(
                       texts.get(name, '')), plots.WRITE, scale,
                       window_ms=1000), strict=True)]
            return [p[0] for p in pts], [p[1] for p in pts]

        dots = {'marker': '.', 'linestyle': '', 'markersize': 4}
        panels = [
            plots.Panel('operations/s', [
                plots.Line('model writers: writes', xs, done('write')),
                plots.Line('model writers: reads', xs, done('read')),
                plots.Line('model writers: FLUSHes', xs, done('flush')),
                plots.Line('fio: 4 KiB writes', *fio_points('iops.1'),
                           dots),
                plots.Line('fio: 64 KiB writes', *fio_points('iops.2'),
                           dots)]),
            plots.Panel('latency (ms)', [
                plots.Line('model write, mean', xs, latency_ms('write'),
                           {'color': 'C0'}),
                plots.Line('model write, worst', xs,
                           latency_ms('write', worst=True),
                           {'color': 'C0', 'linestyle': ':'}),
                plots.Line('model read, mean', xs, latency_ms('read'),
                           {'color': 'C1'}),
                plots.Line('model FLUSH, mean', xs, latency_ms('flush'),
                           {'color': 'C2'}),
                plots.Line('fio 4 KiB write, mean',
                           *fio_points('clat.1', 1e-6),
                           dict(dots, color='C3'))], log=True),
            plots.Panel('failed/s', [], bars=[
                plots.Line('model writers: failed I/O', xs,
                           [sum(merged[(s, k)][3] for k in kinds)
                            for s in secs], {'color': 'tab:red'}),
                plots.Line('fio: failed runs', *plots.rate(
                    [t - t0 for t in self.fio.failed_at], 0, end),
                    {'color': 'black'})])]
        events = [plots.Event(a - t0, kind, b - t0)
                  for kind, a, b in self.fault_times]
        events += [plots.Event(t - t0, what) for t, what in self.marks]
        a = self.args
        title = ('tools/chaos --seed %d --duration %d: %d chunk servers, '
                 '%d master(s), gateway, %d model-writer volumes and fio\n'
                 '%d faults; %s; full redundancy %s s after the last '
                 'fault' % (self.seed, a.duration, a.chunkservers,
                            a.masters, a.volumes, report['faults_total'],
                            'FAILED' if report['failures'] else 'passed',
                            report['time_to_full_redundancy_s']))
        plots.plot_timeline(path, title, panels, events,
                            xlabel='seconds since the writers started',
                            width=max(11, min(30, end / 20)))


def _pair(text):
    lo, _, hi = text.partition(',')
    return float(lo), float(hi or lo)


def parse(argv=None, cwd=None):
    p = argparse.ArgumentParser(
        prog='tools/chaos', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--duration', type=int, default=600,
                   help='seconds of faults (default 600)')
    p.add_argument('--seed', type=int, default=None,
                   help='the schedule\'s seed (default: random, printed)')
    p.add_argument('--chunkservers', type=int, default=6)
    p.add_argument('--masters', type=int, default=2)
    p.add_argument('--power-disks', type=int, default=2,
                   help='chunk servers on power-loss disks (default 2)')
    p.add_argument('--no-eio-disk', dest='eio_disk', action='store_false',
                   help='no chunk server on a disk that fails on demand')
    p.add_argument('--volumes', type=int, default=2,
                   help='volumes of model writers (default 2)')
    p.add_argument('--volume-size', type=int, default=32 * MiB)
    p.add_argument('--fio-size', type=int, default=32 * MiB)
    p.add_argument('--quiet', type=_pair, default=(3.0, 10.0),
                   help='seconds between faults, lo,hi (default 3,10)')
    p.add_argument('--hold', type=_pair, default=(2.0, 12.0),
                   help='seconds a fault lasts, lo,hi (default 2,12)')
    p.add_argument('--skip', action='append', default=[], choices=FAULTS,
                   help='a kind of fault not to inject (repeatable)')
    p.add_argument('--scrub-interval', type=int, default=120,
                   help='a deep scrub pass every so many seconds')
    p.add_argument('--replica-grace', type=int, default=10,
                   help='seconds a server may be down before its chunks '
                        'are copied elsewhere')
    p.add_argument('--converge-timeout', type=int, default=300)
    p.add_argument('--writer-pause', type=float, default=0.0,
                   help='seconds each model writer sleeps between '
                        'operations (less load)')
    p.add_argument('--workdir', default=None,
                   help='where the cluster lives (default: a temporary '
                        'directory, removed unless the run failed)')
    p.add_argument('--json', action='store_true',
                   help='print the report as JSON')
    p.add_argument('--plot', metavar='FILE.png',
                   help='draw the run\'s timeline into this PNG at the end '
                        '(needs matplotlib)')
    args = p.parse_args(argv)
    if args.plot:
        # Relative to where the command was given (tools/chaos changes
        # to the checkout).
        args.plot = os.path.join(cwd or os.getcwd(), args.plot)
        why = _plots().check_path(args.plot)
        if why:
            p.error(why)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.chunkservers < 4:
        p.error('--chunkservers must be at least 4 (3 replicas and one '
                'to copy to)')
    return args


def run(args):
    """Run the chaos described by ``args`` (from :func:`parse`); return
    its report (``report['failures']`` empty when it passed)."""
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix='ursa-chaos-')
        args.workdir = tmp
    os.makedirs(args.workdir, exist_ok=True)
    # The client library's own messages (a replica dropped, a primary
    # replaced) go to a log of the run, not among its lines.
    handler = logging.FileHandler(os.path.join(args.workdir, 'client.log'))
    handler.setFormatter(logging.Formatter(
        '%(asctime)s %(levelname)s %(name)s %(message)s'))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    chaos = Chaos(args)
    try:
        report = chaos.run()
        if args.plot:
            try:
                chaos.plot(args.plot, report)
                log('timeline in %s' % args.plot)
            except Exception:   # the report matters more than its figure
                log('could not draw the timeline: %s'
                    % traceback.format_exc())
    except BaseException:
        log('chaos run failed; seed %d, cluster in %s' % (args.seed,
                                                          args.workdir))
        raise
    finally:
        chaos.close()
        logging.getLogger().removeHandler(handler)
        handler.close()
    if tmp and not report['failures']:
        subprocess.run(['rm', '-rf', tmp], check=False)
    else:
        report['workdir'] = args.workdir
    return report


def main(argv=None, cwd=None):
    args = parse(argv, cwd)
    # Stopped (SIGTERM): the cluster, its disks and namespaces go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print_report(report)
    return 1 if report['failures'] else 0


def print_report(r):
    print('\nchaos run, seed %d: %d s' % (r['seed'], r['duration_s']))
    print('faults injected: %d (%s)' % (r['faults_total'], ', '.join(
        '%s %d' % kv for kv in r['faults'].items())))
    print('written: %.3f GiB (model writers %.3f, fio %.3f); fio runs %d'
          % (r['gib_written'],
             r['model_writer'].get('bytes_written', 0) / 2 ** 30,
             r['fio'].get('bytes_written', 0) / 2 ** 30,
             r['fio'].get('runs', 0)))
    print('model writers: %s' % ', '.join(
        '%s %d' % kv for kv in sorted(r['model_writer'].items())))
    print('verify errors: %d' % r['verify_errors'])
    print('divergent replicas: %d' % r['divergent_replicas'])
    print('chunks below full copies: %s' % r['chunks_below_full_copies'])
    print('time to full redundancy after the last fault: %s s'
          % r['time_to_full_redundancy_s'])
    print('scrub: %s' % r['scrub'])
    if r['failures']:
        print('FAILED:')
        for f in r['failures']:
            print('  ' + f)
        print('replay: tools/chaos --seed %d ...; cluster left in %s'
              % (r['seed'], r.get('workdir')))
    else:
        print('PASSED')


if __name__ == '__main__':
    sys.exit(main())
