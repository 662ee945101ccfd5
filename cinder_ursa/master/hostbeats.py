"""Client hosts' storage heartbeats: each compute host's nova-ha-agent
beats here every second or so (``PUT /v1/hosts/{host}/heartbeat``), on a
path independent of its coordination backend, and the evacuator reads
every host's at once (``GET /v1/host-heartbeats``) to tell a dead host
(both heartbeats gone) from a cut link (one gone).

They are kept in the leading master's memory only: a heartbeat a second
per host would be a database write a second per host, and what matters is
how long each host has been silent, which a new leader learns within a
heartbeat.  A master that just took the lead (or started) has heard
nobody yet: it says how long it has led (``leading_for``), and the
evacuator judges no host by it until that is longer than its timeout.
"""

import time

# Hosts remembered at most, and for how long once silent: a host removed
# from the cloud is forgotten after a day, and a principal naming hosts
# that do not exist cannot grow the table without bound.
MAX_HOSTS = 100000
FORGET_AFTER = 86400.0

# The longest interval a host may announce (a typo's hour is refused).
MAX_INTERVAL = 3600.0


class HostBeats:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        # host -> (monotonic, announced interval, stopping on purpose)
        self._beats = {}
        self._since = clock()

    def reset(self):
        """Forget every host: this master now leads, and what it heard
        before (as a former leader) says nothing of the hosts' silence
        since."""
        self._beats.clear()
        self._since = self._clock()

    def beat(self, host, interval, stopping=False):
        """``stopping``: the host's agent stops on purpose (its last
        beat): its silence from then on is no sign of the host's death."""
        now = self._clock()
        if host not in self._beats and len(self._beats) >= MAX_HOSTS:
            self._forget(now)
        self._beats[host] = (now, interval, stopping)

    def _forget(self, now):
        for host, (at, _, _) in list(self._beats.items()):
            if now - at > FORGET_AFTER:
                del self._beats[host]
        if len(self._beats) >= MAX_HOSTS:
            # Still full: the one silent the longest goes.
            del self._beats[min(self._beats, key=lambda h: self._beats[h])]

    def leading_for(self):
        return self._clock() - self._since

    def status(self):
        """{'leading_for': s, 'hosts': {host: {'age': s since its last
        heartbeat, 'interval': the one it announced, 'stopping': whether
        its agent said it stops}}}."""
        now = self._clock()
        return {'leading_for': round(now - self._since, 3),
                'hosts': {h: {'age': round(now - at, 3), 'interval': i,
                              'stopping': stop}
                          for h, (at, i, stop) in self._beats.items()}}
