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
import logging
import time

from prometheus_client import core as prom_core

from cinder_ursa import exception
from cinder_ursa.chunkserver import smart
from cinder_ursa.protocol import codec
from cinder_ursa.transport import metrics

LOG = logging.getLogger(__name__)

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


# s after which a request still counted in flight is taken for one whose
# answer was never counted (a path that answers without _answered or
# _reply_error): dropped from the count, with a warning, so the gauge
# cannot only grow.
UNANSWERED_AFTER = 300.0


def _in_flight(server):
    """Requests in flight (scrape time): the entries older than
    UNANSWERED_AFTER are dropped first."""
    inflight = server.inflight
    old = clock() - UNANSWERED_AFTER
    stale = [k for k, t0 in list(inflight.items()) if t0 < old]
    for k in stale:
        inflight.pop(k, None)
    if stale:
        LOG.warning('%d requests counted in flight for more than %d s were '
                    'never counted as answered: dropped from '
                    'ursa_chunkserver_in_flight_requests', len(stale),
                    UNANSWERED_AFTER)
    return len(inflight)


def _scrub(server, field):
    """A field of the deep scrub's state (None, no sample: no scrub)."""
    state = getattr(server, 'scrub', None)
    return None if state is None else getattr(state, field)


def register(server, pm):
    """Register the chunk server ``server``'s families in ``pm`` (a
    ProcessMetrics); returns its :class:`Operations`."""
    ops = pm.operations(PREFIX, 'Requests served', OPS)
    rec = server.recorded
    p = PREFIX + '_'
    pm.gauge(p + 'in_flight_requests', 'Requests being handled, not yet '
             'answered', lambda: _in_flight(server))
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
    pm.gauge(p + 'scrub_pass_done_bytes', 'Bytes the deep scrub\'s current '
             'pass has verified (0 when scrubbing is off)',
             lambda: _scrub(server, 'bytes_done'))
    pm.gauge(p + 'scrub_pass_total_bytes', 'Bytes the deep scrub\'s current '
             'pass has to verify (0 when scrubbing is off)',
             lambda: _scrub(server, 'bytes_total'))
    pm.gauge(p + 'scrub_pass_started_timestamp_seconds', 'When the deep '
             'scrub\'s current pass started (Unix time)',
             lambda: _scrub(server, 'pass_started'))
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


def register_smart(poller, pm):
    """Register the families of ``poller`` (a smart.SmartPoller) in
    ``pm``: the SMART data of the disk under the data directory, as its
    last poll read it (a family has no sample while it is unknown)."""
    p = PREFIX + '_smart_'

    def reading(attr):
        def fn():
            r = poller.reading
            return None if r is None else getattr(r, attr)
        return fn

    def flag(fn):
        def out():
            v = fn()
            return None if v is None else int(v)
        return out

    pm.gauge(p + 'supported', '1 when smartctl reads SMART data from the '
             'disk under the data directory, 0 when it has none (no '
             'block device, a logical or virtual one, smartctl missing)',
             flag(lambda: poller.supported))
    pm.gauge(p + 'healthy', 'The disk\'s SMART overall health: 1 passed, '
             '0 failed (replace the disk)', flag(reading('healthy')))
    pm.gauge(p + 'exit_status', 'smartctl\'s exit status at the last poll '
             '(a bit mask: see exit_status_bits)', lambda: poller.exit_status)
    pm.gauge(p + 'exit_status_bits', 'The bits of smartctl\'s exit status '
             'at the last poll (smartctl(8): 0 command line, 1 device open '
             'failed, 2 SMART command failed, 3 disk failing, 4 prefail '
             'attributes at or below threshold, 5 the same in the past, '
             '6 errors in the error log, 7 errors in the self-test log)',
             lambda: _exit_bits(poller), labels=('bit', 'meaning'))
    pm.gauge(p + 'temperature_celsius', 'The disk\'s temperature (Celsius)',
             reading('temperature'))
    pm.gauge(p + 'power_on_hours', 'Hours the disk has been powered on',
             reading('power_on_hours'))
    pm.gauge(p + 'wear_used_percent', 'SSD endurance used (percent; NVMe '
             'percentage_used, may exceed 100; ATA: 100 minus the '
             'normalized value of the vendor\'s wear attribute)',
             reading('wear_used_percent'))
    pm.gauge(p + 'media_errors', 'NVMe unrecovered data integrity errors '
             'the disk has counted in its life', reading('media_errors'))
    pm.gauge(p + 'available_spare_percent', 'NVMe spare capacity left '
             '(percent)', reading('available_spare_percent'))
    pm.gauge(p + 'ata_attribute_raw', 'Raw value of the ATA SMART error '
             'attributes (5 reallocated, 187 reported uncorrectable, 197 '
             'pending, 198 offline uncorrectable sectors, 199 CRC errors)',
             lambda: dict(poller.reading.ata_raw) if poller.reading else {},
             labels=('id', 'name'))
    pm.gauge(p + 'device_info', 'The disk SMART is read from (always 1)',
             lambda: _device_info(poller),
             labels=('device', 'protocol', 'model'))
    pm.gauge(p + 'last_poll_timestamp_seconds', 'When SMART data was last '
             'read (Unix time)', lambda: poller.last_poll)
    pm.gauge(p + 'poll_errors', 'Polls of smartctl that read nothing, by '
             'reason (not_installed, timeout, unparsable, '
             'device_open_failed)', lambda: dict(poller.errors),
             labels=('reason',), kind='counter')


def _exit_bits(poller):
    if poller.exit_status is None:
        return {}
    return {(bit, name): on for bit, (name, on) in
            smart.exit_bits(poller.exit_status).items()}


def _device_info(poller):
    r = poller.reading
    if r is None:
        return {}
    return {(poller.device, r.protocol or '', r.model or ''): 1}
