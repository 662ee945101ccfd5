"""What the connections of one data protocol server may cost it.

Anyone who reaches a chunk server's port can open connections; only a
holder of the cluster key can authenticate them.  So that strangers
cannot exhaust its memory or file descriptors, a server:

- keeps at most ``max_unauthenticated`` connections that have not
  authenticated yet, and ``max_unauthenticated_per_host`` from one source
  address: at either cap the oldest of them (from that address, for the
  second) is told it was evicted and closed to make room for the new one.
  A stranger holding connections open therefore cannot lock a key holder
  out (a key holder authenticates in one round trip, long before it
  would be the oldest), and a source address flooding connections
  evicts its own first;
- takes at most ``max_connections`` in all: at the cap, the oldest
  connection not authenticated yet is evicted, and a new connection is
  refused only when every one is authenticated;
- closes a connection that has not authenticated within
  ``auth_timeout`` seconds;
- before authentication, judges every frame by its header and accepts
  only AUTH with its 64-byte body (see ``codec.preauth_body_length``),
  with a receive buffer of :data:`PREAUTH_SCRATCH` bytes;
- closes an authenticated connection idle for ``idle_timeout`` seconds
  (nothing received, nothing pending in either direction), telling its
  peer first (GOAWAY) so that it never loses a request to the close.

Refusals are logged at most once per :data:`LOG_INTERVAL` per kind with
a count of those not logged: a flood of connections must not flood the
log too.
"""

import collections
import logging
import time

LOG = logging.getLogger(__name__)

# Receive buffer of a connection before it authenticates: room for the
# 84-byte AUTH frame and what a client may send right behind it.
PREAUTH_SCRATCH = 4096
LOG_INTERVAL = 10.0


class RateLimitedLog:
    """Warnings of one kind at most once per ``interval`` seconds; the
    next one logged says how many were not."""

    def __init__(self, logger=LOG, interval=LOG_INTERVAL,
                 clock=time.monotonic):
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last = {}       # kind -> when last logged
        self._quiet = {}      # kind -> not logged since

    def warning(self, kind, msg, *args):
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return False
        quiet = self._quiet.pop(kind, 0)
        self._last[kind] = now
        if quiet:
            msg += ' (and %d more like it in the last %.0f s)'
            args += (quiet, now - last)
        self._log.warning(msg, *args)
        return True


class ServerLimits:
    """The limits (see the module) and the counts of one server's
    connections.  0 turns a limit or a timeout off."""

    def __init__(self, auth_timeout=10.0, idle_timeout=0.0,
                 max_connections=0, max_unauthenticated=0,
                 max_unauthenticated_per_host=0, name='server'):
        self.auth_timeout = auth_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.max_unauthenticated_per_host = max_unauthenticated_per_host
        self.name = name
        self.total = 0
        self.unauthenticated = 0
        self._by_host = {}
        # Connections not authenticated yet, oldest first: conn -> host.
        self._waiting = collections.OrderedDict()
        self.refused = 0          # connections refused by a limit
        self.evicted = 0          # ... closed to make room
        self.log = RateLimitedLog()

    def admit(self, host, conn=None):
        """Count a new connection ``conn`` from ``host`` (not yet
        authenticated), evicting the oldest unauthenticated ones a cap
        needs gone (their ``evict(reason)`` is called, and they no longer
        count); return why it is refused (it is then not counted), or
        None."""
        if self.max_connections and self.total >= self.max_connections \
                and not self._evict_oldest(
                    None, 'max_connections (%d) are open'
                    % self.max_connections):
            self.refused += 1
            why = ('%d connections are open and authenticated, the most '
                   'max_connections allows' % self.total)
            self.log.warning('refused', '%s refused a connection from %s: '
                             '%s', self.name, host, why)
            return why
        if self.max_unauthenticated and \
                self.unauthenticated >= self.max_unauthenticated:
            self._evict_oldest(None, 'max_unauthenticated (%d) connections '
                               'are not authenticated yet'
                               % self.max_unauthenticated)
        if self.max_unauthenticated_per_host and \
                self._by_host.get(host, 0) >= \
                self.max_unauthenticated_per_host:
            self._evict_oldest(host, 'max_unauthenticated_per_host (%d) '
                               'connections from %s are not authenticated '
                               'yet' % (self.max_unauthenticated_per_host,
                                        host))
        self.total += 1
        self.unauthenticated += 1
        self._by_host[host] = self._by_host.get(host, 0) + 1
        if conn is not None:
            self._waiting[conn] = host
        return None

    def _evict_oldest(self, host, why):
        """Close the oldest connection not authenticated yet (from
        ``host``, if given); False when there is none."""
        victim = next((c for c, h in self._waiting.items()
                       if host is None or h == host), None)
        if victim is None:
            return False
        vhost = self._waiting[victim]
        self.closed(vhost, False, victim)
        self.evicted += 1
        self.log.warning('evicted', '%s evicted an unauthenticated '
                         'connection from %s: %s', self.name, vhost, why)
        victim.evict('evicted: %s; authenticate sooner' % why)
        return True

    def authenticated(self, host, conn=None):
        """A connection admitted from ``host`` authenticated."""
        self._waiting.pop(conn, None)
        self.unauthenticated -= 1
        n = self._by_host[host] - 1
        if n:
            self._by_host[host] = n
        else:
            del self._by_host[host]

    def closed(self, host, authenticated, conn=None):
        """A connection admitted from ``host`` is gone."""
        self.total -= 1
        if not authenticated:
            self.authenticated(host, conn)
