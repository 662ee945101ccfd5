"""Prometheus metrics of a chunk server (prefix ``ursa_chunkserver``).

The data path pays for one clock read when a request is handled and one
when it is answered, a dict entry in between (the requests in flight,
keyed by their frame's id) and one :meth:`Operations.done`.  Everything
else is counted where it is rare (errors, refusals, syncs, scrub steps,
recovery pushes) or computed at scrape time from the server's state
(connections, capacity, chunks, failed volumes).

Requests are counted by operation (``op``):

``read``, ``write`` (a client's WRITE on the primary, until its reply is
sent or queued), ``replicate`` (a primary's REPLICATE), ``flush``,
``repair`` (REPAIR on the primary), ``catchup`` (the copy and catch-up
path: ENTRIES, REBUILD, RESYNC, and the raw blocks other chunk servers
read or push with FLAG_RAW for a copy, a resync or a repair), and
``scrub`` (the deep scrub of one chunk, not a request).
"""

import collections
import time

from prometheus_client import core as prom_core

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.transport import metrics

PREFIX = 'ursa_chunkserver'
OPS = ('read', 'write', 'replicate', 'flush', 'repair', 'catchup', 'scrub')
# The requests counted, by opcode (FLAG_RAW makes a READ or a REPLICATE
# catch-up work: see op_of).
OP_OF = {codec.READ: 'read', codec.WRITE: 'write',
         codec.REPLICATE: 'replicate', codec.FLUSH: 'flush',
         codec.REPAIR: 'repair', codec.ENTRIES: 'catchup',
         codec.REBUILD: 'catchup', codec.RESYNC: 'catchup'}
WRITES = frozenset((codec.WRITE, codec.REPLICATE))
# Why a write is refused rather than failed: its sender holds an old
# lease, map or right (refused_writes_total{reason}).
REFUSALS = (exception.Fenced, exception.StaleEpoch, exception.NotAuthorized,
            exception.StaleReplica)
KINDS = ('client', 'peer', 'master')

clock = time.perf_counter


def op_of(frame):
    """The operation a request frame counts as (None: not counted)."""
    op = OP_OF.get(frame.opcode)
    if op is not None and frame.flags & codec.FLAG_RAW and \
            op in ('read', 'replicate'):
        return 'catchup'
    return op


def connection_kind(conn):
    """client (a ticket, or the cluster key and no peer's request seen),
    peer (another chunk server: it sent REPLICATE, ENTRIES or RESYNC) or
    master (it claimed a master term)."""
    if conn.master_term is not None:
        return 'master'
    if conn.ticket is None and getattr(conn, 'cs_peer', False):
        return 'peer'
    return 'client'


class Recorder:
    """What a chunk server counts besides its requests' statistics."""

    def __init__(self):
        self.refused = collections.Counter()    # exception class name -> n
        self.recovery_bytes = 0
        self.scrub_blocks = 0
        self.scrub_errors = 0
        self.scrub_repairs = 0


def register(server, pm):
    """Register the chunk server ``server``'s families in ``pm`` (a
    ProcessMetrics); returns its :class:`Operations`."""
    ops = pm.operations(PREFIX, 'Requests served', OPS)
    rec = server.recorded
    p = PREFIX + '_'
    pm.gauge(p + 'in_flight_requests', 'Requests being handled, not yet '
             'answered', lambda: len(server.inflight))
    pm.gauge(p + 'connections', 'Authenticated connections, by kind of '
             'peer (client, peer chunk server, master)',
             lambda: _connections(server), labels=('kind',))
    pm.gauge(p + 'refused_writes', 'Writes refused because their sender '
             'holds an old lease, chunk map or right, by reason',
             lambda: dict(rec.refused), labels=('reason',), kind='counter')
    pm.gauge(p + 'disk_errors', 'Disk I/O errors seen, by errno',
             lambda: dict(server.disk.kinds), labels=('kind',),
             kind='counter')
    pm.gauge(p + 'disk_failed', '1 when the data directory failed (it '
             'serves nothing until the server restarts)',
             lambda: int(server.disk.failure is not None))
    pm.gauge(p + 'scrub_blocks', 'Data blocks the deep scrub verified',
             lambda: rec.scrub_blocks, kind='counter')
    pm.gauge(p + 'scrub_errors', 'Bad blocks the deep scrub found',
             lambda: rec.scrub_errors, kind='counter')
    pm.gauge(p + 'scrub_repairs', 'Bad blocks the deep scrub had repaired',
             lambda: rec.scrub_repairs, kind='counter')
    pm.gauge(p + 'recovery_bytes', 'Bytes pushed to make or catch up other '
             'copies (copies, resyncs)', lambda: rec.recovery_bytes,
             kind='counter')
    pm.gauge(p + 'failed_volumes', 'Volumes whose sync failed here (their '
             'replicas serve nothing until a restart)',
             lambda: len(server.store.failed_volumes()))
    pm.gauge(p + 'server_id', 'This server\'s id at the master (0 before '
             'it registers)', lambda: server.id or 0)
    pm.registry.register(_StoreCollector(server))
    return ops


def _connections(server):
    out = dict.fromkeys(KINDS, 0)
    for conn in list(server.connections):
        if conn.authed and not conn.closed:
            out[connection_kind(conn)] += 1
    return out


class _StoreCollector:
    """The data directory's space, as the heartbeat reports it, and the
    chunk copies held: one walk of the store per scrape."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        s = self.server
        p = PREFIX + '_'
        if s.disk.failure is not None:
            usage = {'capacity': 0, 'used': 0, 'free': 0}
        else:
            try:
                usage = s.store.usage()
            except OSError:
                usage = None    # the heartbeat counts it as a disk error
        if usage is not None:
            for name, doc in (
                    ('capacity', 'Size of the data directory\'s '
                                 'filesystem'),
                    ('used', 'Bytes allocated to the chunk copies held'),
                    ('free', 'Bytes free for chunks on the data '
                             'directory\'s filesystem, the reserve '
                             'excluded')):
                yield prom_core.GaugeMetricFamily(
                    p + name + '_bytes', doc + ' (bytes)',
                    value=usage[name])
        held, joining, stale = s.store.counts()
        yield prom_core.GaugeMetricFamily(
            p + 'chunks', 'Chunk copies held (replicas, joining and stale '
            'copies)', value=held)
        yield prom_core.GaugeMetricFamily(
            p + 'joining_chunks', 'Chunk copies being brought up to date '
            '(they take writes, serve no reads)', value=joining)
        yield prom_core.GaugeMetricFamily(
            p + 'stale_chunks', 'Stale chunk copies (kept for a catch-up, '
            'serving nothing)', value=stale)

    def describe(self):
        return []


def sync_histogram(pm):
    return pm.histogram(PREFIX + '_disk_sync_latency_seconds',
                        'Latency of one fdatasync batch (a FLUSH\'s, a FUA '
                        'write\'s, a copy-on-write\'s)',
                        buckets=metrics.LATENCY_BUCKETS)
