"""Prometheus metrics of ursa-master.

Two kinds:

* what every master exports, read at scrape time from memory: whether it
  leads and its term, its REST requests (by route pattern, so the labels
  stay bounded), the time each database call takes on the database
  thread, and what the leader's repairer and the chunk servers' scrub
  reports (heartbeats) counted;
* the cluster's state (chunk servers, chunks by state, capacity,
  volumes, snapshots, leases, recovery left), which only the database
  knows: the leader reads it every few seconds on its database thread
  (:meth:`MasterMetrics.run`, the queries of
  :mod:`cinder_ursa.master.store.summary`) into a cached summary that
  the scrape reads.  A scrape never queries the database, and a standby
  exports none of it (two masters would report the cluster twice).

The chunk states, one per chunk, the most urgent that applies, with n
its replicas (``chunks.replicas``), j its copies being made
(``chunks.joining``), and its volume's ``replicas`` (the target) and
``min_replicas``:

* ``no_copy``: no replica on a chunk server that is up (n = 0, or its
  only replica's server is not up): its data is unreachable;
* ``one_copy``: n = 1 below a target above 1;
* ``below_min``: n < min_replicas (its writes are refused);
* ``repairing``: min_replicas <= n < target, and a copy is being made
  (j > 0);
* ``degraded``: min_replicas <= n < target, no copy being made yet;
* ``healthy``: n >= target (a move in progress, j > 0, counts here: the
  chunk lacks no copy).

A chunk with two or more replicas all on servers down is not seen as
``no_copy``: the master drops a server marked down from every replica
set but the last, so that lasts one watcher round at most.
"""

import asyncio
import collections
import functools
import logging
import time

from aiohttp import web

from cinder_ursa.master import placement
from cinder_ursa.transport import metrics as common_metrics

LOG = logging.getLogger(__name__)

STATES = ('healthy', 'repairing', 'degraded', 'below_min', 'one_copy',
          'no_copy')
# Servers by their state column (exclusive), and by the operator's flags
# (which overlap the states).
SERVER_STATES = ('up', 'down', 'failed')
SERVER_FLAGS = ('maintenance', 'draining')
# Seconds between two reads of the summary, at least; a summary that takes
# longer to read waits more, so that it takes at most SUMMARY_SHARE of the
# database thread (a million chunks is one scan of about a second).
SUMMARY_INTERVAL = 5.0
SUMMARY_SHARE = 0.05
# A REST request takes milliseconds; a database call tens of microseconds
# (an indexed read) to seconds (a scan of the chunks).
REST_BUCKETS = (0.5e-3, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
                250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0)
DB_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
              25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0)
# The methods the REST API has; any other is counted as 'other'.
METHODS = frozenset(('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE',
                     'OPTIONS'))


def chunk_state(replicas, joining, target, floor, only_up=True):
    """The state of a chunk (see the module's doc) with ``replicas`` and
    ``joining`` copies, of a volume asking for ``target`` replicas and at
    least ``floor`` (min_replicas); ``only_up``: whether the server of its
    only replica (when it has one) is up."""
    if replicas == 0 or (replicas == 1 and not only_up):
        return 'no_copy'
    if replicas >= target:
        return 'healthy'
    if replicas == 1:
        return 'one_copy'
    if replicas < floor:
        return 'below_min'
    return 'repairing' if joining else 'degraded'


def summarize(records, usage, level):
    """The cluster summary the gauges export, from
    :meth:`~cinder_ursa.master.store.summary.SummaryRecords.summary_records`;
    ``usage``: {server id: {volume id: bytes allocated}} (heartbeats),
    to estimate the bytes left to copy; ``level``: the failure domain."""
    servers = {s['id']: s for s in records['servers']}
    vols = {v[0]: v for v in records['volumes']}
    chunks = dict.fromkeys(STATES, 0)
    held = collections.Counter()        # volume -> replicas held
    copies = collections.Counter()      # volume -> copies left to make
    left = resync = stale = 0
    for vid, n, j, only, marked, count, lost in records['chunks']:
        vol = vols.get(vid)
        if vol is None:
            continue        # deleted since: the next summary is right
        target, floor = vol[3], vol[4]
        only_up = True
        if only:
            only_up = servers.get(int(only), {}).get('state') == 'up'
        chunks[chunk_state(n, j, target, floor, only_up)] += count
        held[vid] += n * count
        if n < target:
            left += count
            copies[vid] += (max(target - n - j, 0) + j) * count
        resync += count if marked else 0
        stale += lost or 0
    bytes_left = 0
    for vid, k in copies.items():
        total = [u[vid] for u in usage.values() if vid in u]
        per_copy = (sum(total) // max(held[vid], 1) if total
                    else vols[vid][5])
        bytes_left += k * per_copy
    states = dict.fromkeys(SERVER_STATES + SERVER_FLAGS, 0)
    up, capacity, used = {}, {}, {}
    for s in servers.values():
        states[s['state']] = states.get(s['state'], 0) + 1
        for flag in SERVER_FLAGS:
            states[flag] += bool(s[flag])
        dom = placement.domain_of(s, level)
        on = s['state'] == 'up'
        up[(str(s['id']), s['host'], dom)] = int(on)
        capacity[dom] = capacity.get(dom, 0) + (s['capacity'] if on else 0)
        used[dom] = used.get(dom, 0) + (s['used'] if on else 0)
    live = [v for v in vols.values() if v[1] != 'trash']
    return {
        'chunks': chunks, 'recovery_chunks_left': left,
        'recovery_bytes_left': bytes_left, 'resync': resync,
        'stale_copies': stale, 'servers': states, 'server_up': up,
        'capacity': capacity, 'used': used, 'volumes': len(live),
        'provisioned': sum(v[2] for v in live),
        'snapshots': sum(n for st, n in records['snapshots'].items()
                         if st != 'trash'),
        'leases': records['leases'], 'at': time.time()}


class MasterMetrics:
    """The metrics of one master (``service``: its
    :class:`~cinder_ursa.master.service.MasterService`) in ``registry``
    (a :class:`~cinder_ursa.transport.metrics.ProcessMetrics`)."""

    def __init__(self, service, registry=None, interval=SUMMARY_INTERVAL):
        self.service = service
        self.registry = registry or common_metrics.ProcessMetrics('master')
        self.interval = interval
        self.summary = None     # the leader's, once read
        self._task = None
        r = self.registry
        r.gauge('ursa_master_leader', 'Whether this master is the acting '
                'leader (1) or a standby (0)',
                lambda: int(service.is_leader()))
        r.gauge('ursa_master_term', 'The term this master leads with; on a '
                'standby the newest term it read (0: no election)',
                self._term)
        self.rest_requests = r.counter(
            'ursa_master_rest_requests', 'REST requests answered, by method, '
            'route pattern and HTTP status', ('method', 'endpoint', 'status'))
        self.rest_latency = r.histogram(
            'ursa_master_rest_latency_seconds', 'Time to answer a REST '
            'request, by route pattern', ('endpoint',), buckets=REST_BUCKETS)
        self.db_latency = r.histogram(
            'ursa_master_db_latency_seconds', 'Time a database call takes on '
            'the database thread, by store method', ('op',),
            buckets=DB_BUCKETS)
        self.db_wait = r.histogram(
            'ursa_master_db_wait_seconds', 'Time a database call waits for '
            'the database thread (the calls before it)', buckets=DB_BUCKETS)
        self._cached('ursa_master_servers', 'Chunk servers by state (up, '
                     'down, failed), and those in maintenance or draining '
                     '(which overlap the states)', 'servers', ('state',))
        self._cached('ursa_master_server_up', 'Whether each chunk server is '
                     'up (1) or not (0)', 'server_up',
                     ('server_id', 'host', 'domain'))
        self._cached('ursa_master_chunks', 'Allocated chunks by state '
                     '(healthy, repairing, degraded, below_min, one_copy, '
                     'no_copy; each chunk in one)', 'chunks', ('state',))
        self._cached('ursa_master_chunks_resync_pending', 'Chunks whose '
                     'replicas are to be compared (their primary was '
                     'dropped)', 'resync')
        self._cached('ursa_master_stale_copies', 'Copies on servers dropped '
                     'from their chunk (stale; kept for a catch-up until '
                     'replaced)', 'stale_copies')
        self._cached('ursa_master_capacity_bytes', 'Raw capacity of the chunk '
                     'servers up, by failure domain', 'capacity', ('domain',))
        self._cached('ursa_master_used_bytes', 'Bytes used on the chunk '
                     'servers up, by failure domain', 'used', ('domain',))
        self._cached('ursa_master_provisioned_bytes', 'Sum of the volume '
                     'sizes (trashed volumes excluded)', 'provisioned')
        self._cached('ursa_master_volumes', 'Volumes (trashed ones '
                     'excluded)', 'volumes')
        self._cached('ursa_master_snapshots', 'Snapshots (trashed ones '
                     'excluded)', 'snapshots')
        self._cached('ursa_master_leases', 'Write leases held (each holder '
                     'of a shared lease counted)', 'leases')
        self._cached('ursa_master_recovery_chunks_left', 'Chunks with fewer '
                     'replicas than their volume asks for',
                     'recovery_chunks_left')
        self._cached('ursa_master_recovery_bytes_left', 'Bytes left to copy '
                     'to bring every chunk to its target (estimate: the '
                     'bytes per replica of each volume, from the chunk '
                     'servers\' reports, or its chunk size)',
                     'recovery_bytes_left')
        self._cached('ursa_master_summary_timestamp_seconds', 'When the '
                     'cluster summary exported was read', 'at')
        r.gauge('ursa_master_repairs_running', 'Chunk copies and replica '
                'moves this master runs now',
                lambda: service.repairs_running())
        r.gauge('ursa_master_repairs', 'Repair jobs (copies, moves) this '
                'master ended, by result (done, failed)',
                lambda: dict(service.repair_results), ('result',),
                kind='counter')
        r.gauge('ursa_master_repair_bytes', 'Bytes copied by the repair '
                'jobs of this master', lambda: service.copied_bytes,
                kind='counter')
        self._scrub('ursa_master_scrub_errors', 'Bad blocks the deep scrub '
                    'of each chunk server found (as it reports)',
                    'bad_blocks_found')
        self._scrub('ursa_master_scrub_unrepaired', 'Bad blocks the deep '
                    'scrub of each chunk server could not repair',
                    'bad_blocks_unrepaired')
        r.gauge('ursa_master_scrub_last_pass_timestamp_seconds', 'When the '
                'last deep scrub pass of each chunk server ended',
                lambda: self._scrubs('last_pass_ended'), ('server_id',))
        # Slow-disk detection (slowdisk.py): the leader's, from heartbeats.
        r.gauge('ursa_master_server_slow', 'Whether each chunk server '
                'reporting its disk latency is judged slow (1) or not (0)',
                lambda: service.slow.flags(), ('server_id',))
        r.gauge('ursa_master_server_latency_seconds', 'Disk latency each '
                'chunk server reports (its last window), by kind (read, '
                'write, sync) and quantile (0.5, 0.99)',
                lambda: service.slow.latencies(),
                ('server_id', 'kind', 'quantile'))

    # --- families ----------------------------------------------------------

    def _term(self):
        el = self.service.elector
        if el is None:
            return 0
        return el.term if el.term is not None else el.store_term

    def _cached(self, name, doc, key, labels=()):
        def read():
            s = self.summary
            if s is None:
                return {} if labels else None
            return s[key]
        self.registry.gauge(name, doc, read, labels)

    def _scrubs(self, field):
        return {str(sid): r[field] for sid, r in
                list(self.service.scrubs.items())
                if isinstance(r.get(field), (int, float))}

    def _scrub(self, name, doc, field):
        self.registry.gauge(name, doc, functools.partial(self._scrubs, field),
                            ('server_id',), kind='counter')

    # --- the summary (leader only) -------------------------------------------

    def start(self):
        """Read the summary every ``interval`` s from now on (the leader's
        loops start)."""
        if self.interval and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    def stop(self):
        """Stop reading it and export none (this master leads no more)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.summary = None

    async def run(self):
        while True:
            started = time.monotonic()
            try:
                await self.refresh()
            except Exception as e:  # noqa: BLE001 - read again later
                LOG.warning('Reading the metrics summary failed: %s', e)
            took = time.monotonic() - started
            await asyncio.sleep(max(self.interval,
                                    took / SUMMARY_SHARE - took))

    async def refresh(self):
        """Read the summary now (on the database thread)."""
        # Each server's usage is replaced, never changed, by a heartbeat:
        # a copy of the outer dict is safe to read on the other thread.
        usage = self.service.usage.copy()
        self.summary = await self.service.db(
            self.read_summary, usage, self.service.store.failure_domain)
        return self.summary

    def read_summary(self, usage, level):
        return summarize(self.service.store.summary_records(), usage, level)

    # --- hooks ---------------------------------------------------------------

    def timed(self, fn, call):
        """``call`` (of store method ``fn``) timed on the database
        thread: its wait there, and how long it runs."""
        op = getattr(fn, '__name__', 'other')
        submitted = time.perf_counter()

        def run():
            started = time.perf_counter()
            try:
                return call()
            finally:
                self.db_wait.observe(started - submitted)
                self.db_latency.labels(op).observe(
                    time.perf_counter() - started)
        return run

    @web.middleware
    async def middleware(self, request, handler):
        """Count and time each REST request, by the route it matched."""
        started = time.perf_counter()
        status = '500'
        try:
            resp = await handler(request)
            status = str(resp.status)
            return resp
        except web.HTTPException as e:
            status = str(e.status)
            raise
        except asyncio.CancelledError:
            status = 'cancelled'        # the client went away
            raise
        finally:
            resource = request.match_info.route.resource
            endpoint = resource.canonical if resource is not None \
                else 'unmatched'
            method = request.method if request.method in METHODS \
                else 'other'
            self.rest_requests.labels(method, endpoint, status).inc()
            self.rest_latency.labels(endpoint).observe(
                time.perf_counter() - started)
