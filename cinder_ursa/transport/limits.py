"""What the connections of one data protocol server may cost it.

Anyone who reaches a chunk server's port can open connections; only a
holder of the cluster key can authenticate them.  So that strangers
cannot exhaust its memory or file descriptors, a server:

- takes at most ``max_unauthenticated`` connections that have not
  authenticated yet, and ``max_unauthenticated_per_host`` from one source
  address, and at most ``max_connections`` in all: a connection past a
  limit is answered with an error and closed at once;
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
        self.refused = 0          # connections refused by a limit
        self.log = RateLimitedLog()

    def admit(self, host):
        """Count a new connection from ``host`` (not yet authenticated);
        return why it is refused (it is then not counted), or None."""
        if self.max_connections and self.total >= self.max_connections:
            why = ('%d connections are open, the most max_connections '
                   'allows' % self.total)
        elif self.max_unauthenticated and \
                self.unauthenticated >= self.max_unauthenticated:
            why = ('%d connections are not authenticated yet, the most '
                   'max_unauthenticated allows' % self.unauthenticated)
        elif self.max_unauthenticated_per_host and \
                self._by_host.get(host, 0) >= \
                self.max_unauthenticated_per_host:
            why = ('%d connections from %s are not authenticated yet, the '
                   'most max_unauthenticated_per_host allows'
                   % (self._by_host[host], host))
        else:
            self.total += 1
            self.unauthenticated += 1
            self._by_host[host] = self._by_host.get(host, 0) + 1
            return None
        self.refused += 1
        self.log.warning('refused', '%s refused a connection from %s: %s',
                         self.name, host, why)
        return why

    def authenticated(self, host):
        """A connection admitted from ``host`` authenticated."""
        self.unauthenticated -= 1
        n = self._by_host[host] - 1
        if n:
            self._by_host[host] = n
        else:
            del self._by_host[host]

    def closed(self, host, authenticated):
        """A connection admitted from ``host`` is gone."""
        self.total -= 1
        if not authenticated:
            self.authenticated(host)
