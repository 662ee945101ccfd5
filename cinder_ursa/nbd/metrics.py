"""Prometheus metrics of the NBD gateway.

The data path (:mod:`server`) counts each request once it is answered:
one ``time.perf_counter()`` pair and one :meth:`Operations.done` per
request, plus plain integer increments (requests in flight, the bytes of
each open export).  Everything else, connections and exports open,
leases held and the bytes of each open volume, is read from the server's
state when Prometheus scrapes, on the loop that serves it.

Families (besides :class:`~cinder_ursa.transport.metrics.Operations`'
``ursa_nbd_operation*`` ones):

* ``ursa_nbd_in_flight_requests``: requests handed to a backend, not
  answered yet;
* ``ursa_nbd_connections``: NBD client connections open (handshaking or
  transmitting);
* ``ursa_nbd_exports_open``: exports open (one open volume, or snapshot
  view, each: a backend);
* ``ursa_nbd_handshakes_total{result}``: ``ok`` (an export opened, or the
  client left having been refused nothing), ``refused`` (an export or a
  client without TLS refused, a TLS handshake failed, or the
  max_connections cap was full), ``failed`` (the client went away, was
  too slow or spoke no NBD);
* ``ursa_nbd_volume_bytes_total{volume, op}``: bytes read and written
  (``op`` read or write) per volume, for the volumes open now only: a
  volume's series go when its export closes, and start again from 0 when
  it is opened again (a counter reset to Prometheus);
* ``ursa_nbd_leases_held``: writable volumes open whose lease this
  process holds (not fenced);
* ``ursa_nbd_fenced_total``: times an open volume learned that its lease
  was taken (fenced, or detached from the host): once per open volume;
* ``ursa_nbd_reads_diverted_total``: chunk reads the client library sent
  to another replica than the primary because the master judges the
  primary's disk slow (client.cluster.Cluster.reads_diverted).
"""

from cinder_ursa import exception
from cinder_ursa.nbd import protocol as p
from cinder_ursa.transport import metrics

# The requests counted, by NBD command number (None: not a request one
# counts; DISC ends the connection).
_OPS = {p.CMD_READ: 'read', p.CMD_WRITE: 'write', p.CMD_FLUSH: 'flush',
        p.CMD_TRIM: 'trim', p.CMD_CACHE: 'cache',
        p.CMD_WRITE_ZEROES: 'write_zeroes',
        p.CMD_BLOCK_STATUS: 'block_status'}
OP_NAMES = tuple(_OPS.get(c) for c in range(max(_OPS) + 1))
OPS = tuple(_OPS[c] for c in sorted(_OPS))
# Commands whose length is the bytes they move (read, written, zeroed).
SIZED = frozenset((p.CMD_READ, p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES))

# NBD error values by name: the kind of a request refused before the
# backend (protocol.validate_request).
ERROR_NAMES = {p.NBD_EPERM: 'NBD_EPERM', p.NBD_EIO: 'NBD_EIO',
               p.NBD_ENOMEM: 'NBD_ENOMEM', p.NBD_EINVAL: 'NBD_EINVAL',
               p.NBD_ENOSPC: 'NBD_ENOSPC', p.NBD_EOVERFLOW: 'NBD_EOVERFLOW',
               p.NBD_ENOTSUP: 'NBD_ENOTSUP',
               p.NBD_ESHUTDOWN: 'NBD_ESHUTDOWN'}

HANDSHAKE_RESULTS = ('ok', 'refused', 'failed')


def op_name(cmd):
    """The ``op`` label of NBD command ``cmd``, None for one not counted
    (DISC, or a command the gateway does not know)."""
    return OP_NAMES[cmd] if 0 <= cmd < len(OP_NAMES) else None


def error_name(err):
    return ERROR_NAMES.get(err, 'NBD_ERROR_%d' % err)


def lease_lost(volume):
    """Whether an open volume learned that its lease was taken: renewing
    it said Fenced or Forbidden (client.volume keeps that as
    ``_fenced``; the gateway only reads it)."""
    return getattr(volume, '_fenced', None) is not None


def holds_lease(volume):
    """Whether an open volume holds a write lease now."""
    return (bool(getattr(volume, 'writable', False))
            and getattr(volume, '_lease_task', None) is not None
            and not getattr(volume, 'closed', False)
            and not lease_lost(volume))


class NbdMetrics:
    """What the gateway counts itself (the rest is read from the server
    at scrape time: :meth:`register`)."""

    def __init__(self):
        self.ops = metrics.Operations('ursa_nbd', 'NBD requests', OPS)
        self.in_flight = 0
        self.handshakes = dict.fromkeys(HANDSHAKE_RESULTS, 0)
        self.fenced = 0
        self._fenced_seen = set()  # ids of the backends counted (open)

    def handshake(self, result):
        self.handshakes[result] += 1

    def refused(self, cmd, err, seconds):
        """Count request ``cmd`` refused with NBD error ``err`` before it
        reached the backend (latency: to its reply, queued)."""
        op = op_name(cmd)
        if op is not None:
            self.ops.done(op, seconds, 0, error_name(err))

    def note_fenced(self, backend):
        """Count ``backend``'s volume as fenced, once while it is open."""
        if id(backend) not in self._fenced_seen:
            self._fenced_seen.add(id(backend))
            self.fenced += 1

    def check_fenced(self, backend):
        """Count ``backend`` as fenced if its volume learned it."""
        vol = getattr(backend, 'volume', None)
        if vol is not None and lease_lost(vol):
            self.note_fenced(backend)

    def closed(self, backend):
        """``backend``'s export closed: a fence learned meanwhile counts,
        and its id may be used again."""
        self.check_fenced(backend)
        self._fenced_seen.discard(id(backend))

    def register(self, pm, server):
        """Add the gateway's families to ``pm`` (a ProcessMetrics),
        reading ``server`` (an NbdServer) at scrape time."""
        pm.registry.register(self.ops)
        pm.gauge('ursa_nbd_in_flight_requests', 'NBD requests handed to '
                 'a backend and not answered yet',
                 lambda: self.in_flight)
        pm.gauge('ursa_nbd_connections', 'NBD client connections open '
                 '(handshaking or transmitting)',
                 lambda: len(server.connections))
        pm.gauge('ursa_nbd_exports_open', 'Exports open: volumes or '
                 'snapshot views, each shared by its connections',
                 lambda: len(server.exports()))
        pm.gauge('ursa_nbd_handshakes_total', 'NBD handshakes by result: '
                 'ok, refused (export, TLS, or connection cap) or failed '
                 '(client gone, too slow, not NBD)',
                 lambda: {(r,): n for r, n in self.handshakes.items()},
                 labels=('result',), kind='counter')
        pm.gauge('ursa_nbd_volume_bytes_total', 'Bytes read and written '
                 'by NBD clients, per volume open now (series go when '
                 'its export closes)', lambda: volume_bytes(server),
                 labels=('volume', 'op'), kind='counter')
        pm.gauge('ursa_nbd_leases_held', 'Writable volumes open whose '
                 'lease this gateway holds',
                 lambda: sum(1 for b in server.exports()
                             if holds_lease(getattr(b, 'volume', None))))
        pm.gauge('ursa_nbd_fenced_total', 'Times an open volume learned '
                 'its lease was taken (fenced or detached): once per '
                 'open volume', lambda: self._scrape_fenced(server),
                 kind='counter')
        pm.gauge('ursa_nbd_reads_diverted_total', 'Chunk reads sent to '
                 'another replica than the primary because the master '
                 'judges the primary\'s disk slow',
                 lambda: getattr(server.cluster, 'reads_diverted', 0),
                 kind='counter')

    def _scrape_fenced(self, server):
        for b in server.exports():
            self.check_fenced(b)
        return self.fenced


def volume_bytes(server):
    """{(volume, op): bytes} of the exports open now."""
    out = {}
    for b in server.exports():
        name = b.name
        out[(name, 'read')] = out.get((name, 'read'), 0) + b.read_bytes
        out[(name, 'write')] = out.get((name, 'write'), 0) + b.written_bytes
    return out


def is_fence(error):
    """Whether a request's error says the volume's lease was taken."""
    return isinstance(error, exception.Fenced)
