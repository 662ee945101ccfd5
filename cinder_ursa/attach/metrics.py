"""Prometheus metrics of the attach agent.

ursa-attach serves I/O itself (FUSE requests on the volume files, from
libfuse's threads) and manages this host's attachments (the agent's
thread), so it exports both:

* ``ursa_attach_io_operation*``: the FUSE requests (``op`` read, write,
  flush: an fsync), as :class:`~cinder_ursa.transport.metrics.Operations`
  counts them (requests, bytes, errors by kind, latency).  Not
  ``ursa_attach_operation*``: those names are the attachment operations'.
  Several FUSE threads count, so they take a lock (a FUSE request costs
  far more than it);
* ``ursa_attach_operations_total{op, result}`` and
  ``ursa_attach_operation_latency_seconds{op}``: ``attach`` (open the
  volume, report it attached), ``detach`` (flush and close it, delete
  the attachment), ``drop`` (close a volume whose attachment vanished:
  deleted by force, or the host fenced), ``handover`` (hand the lease
  over to a live migration's destination: wait for the writes in
  flight, flush, release); ``result`` ok or error;
* ``ursa_attach_attachments``: volumes served now;
* ``ursa_attach_leases_held``: of them, those whose write lease this
  agent holds (not fenced).
"""

import threading

from cinder_ursa.transport import metrics

IO_OPS = ('read', 'write', 'flush')
AGENT_OPS = ('attach', 'detach', 'drop', 'handover')
RESULTS = ('ok', 'error')
# Attaching takes a lease and asks the master: buckets from 1 ms up.
AGENT_BUCKETS = (1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
                 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0)


def holds_lease(vol):
    """Whether an open volume (a SyncVolume, or its async Volume) holds
    its write lease now: open for writing, lease not lost (client.volume
    keeps a renewal's Fenced or Forbidden as ``_fenced``)."""
    vol = getattr(vol, 'volume', vol)
    return (bool(getattr(vol, 'writable', False))
            and getattr(vol, '_lease_task', None) is not None
            and not getattr(vol, 'closed', False)
            and getattr(vol, '_fenced', None) is None)


class AttachMetrics:
    """The agent's families in ``pm`` (a ProcessMetrics; one of its own
    by default)."""

    def __init__(self, pm=None):
        self.pm = pm or metrics.ProcessMetrics('attach')
        self.io = self.pm.operations(
            'ursa_attach_io', 'FUSE requests on attached volumes', IO_OPS)
        self._lock = threading.Lock()
        self._ops = self.pm.counter(
            'ursa_attach_operations', 'Attachment operations of the agent '
            '(attach, detach, drop, handover), by result', ('op', 'result'))
        self._latency = self.pm.histogram(
            'ursa_attach_operation_latency_seconds', 'Latency of the '
            'agent\'s attachment operations', ('op',),
            buckets=AGENT_BUCKETS)
        for op in AGENT_OPS:
            self._latency.labels(op)
            for r in RESULTS:
                self._ops.labels(op, r)

    def io_done(self, op, seconds, nbytes=0, error=None):
        """Count a FUSE request (any thread)."""
        with self._lock:
            self.io.done(op, seconds, nbytes, error)

    def operation(self, op, seconds, ok):
        """Count an attachment operation ``op`` (AGENT_OPS)."""
        self._ops.labels(op, 'ok' if ok else 'error').inc()
        self._latency.labels(op).observe(seconds)

    def watch(self, fs):
        """Gauges read from ``fs`` (an AttachFS) at scrape time."""
        self.pm.gauge('ursa_attach_attachments', 'Volumes attached to '
                      'this host served by the agent',
                      lambda: len(fs.snapshot()))
        self.pm.gauge('ursa_attach_leases_held', 'Volumes served whose '
                      'write lease the agent holds',
                      lambda: sum(1 for v in fs.snapshot()
                                  if holds_lease(v)))
