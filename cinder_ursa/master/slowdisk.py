"""Slow-disk detection: the leader compares the disk latencies the chunk
servers report in their heartbeats (chunkserver/latency.py) and flags a
server whose latency stays far above its peers'.

Each heartbeat carries, per kind (``read``, ``write``, ``sync``), the
sample count and the p50/p99 of the server's last ``window`` seconds; the
master tells the servers that window (:attr:`SlowDiskJudge.window`, a
third of ``period``), so that a burst shorter than about two thirds of
the period, which keeps a window's p99 high for as long as it lasts plus
one window, never flags a server.

A server is *high* when, for some kind where it and at least two other
servers have ``min_samples`` samples or more, its p99 is above ``factor``
times the median p99 of the others and above ``min_latency`` (a fast idle
cluster never flags noise).  It is *low* when, for every such kind, its
p99 is at most ``factor / 2`` times that median or at most
``min_latency``.  A server high for ``period`` seconds becomes slow; a
slow server low for ``period`` seconds is no longer slow.  A server with
no kind to judge (too few samples, too few servers reporting) keeps its
state, and its timers start again: a flag changes on evidence only.

The state lives in the leader's memory: a new leader judges afresh from
the next heartbeats.  Reads prefer other replicas over a slow server's
(the chunk map replies name the slow servers).
"""

import statistics
import time

KINDS = ('read', 'write', 'sync')
MIN_SERVERS = 3     # reporting enough samples of a kind, the judged one too


class _State:
    __slots__ = ('slow', 'since', 'pending', 'verdict')

    def __init__(self):
        self.slow = False
        self.since = None       # wall clock time it became slow
        self.pending = None     # monotonic time the opposite verdict began
        self.verdict = None     # high, low, between or None (unknown)


class SlowDiskJudge:
    """The latency reports of the chunk servers and the slow flags
    judged from them; ``stale_after``: seconds after which a server's
    report no longer counts (it is down)."""

    def __init__(self, period=60.0, factor=4.0, min_latency=0.020,
                 min_samples=20, stale_after=15.0, clock=time.monotonic,
                 wall=time.time):
        self.period = float(period)
        self.factor = float(factor)
        self.min_latency = float(min_latency)
        self.min_samples = int(min_samples)
        self.stale_after = float(stale_after)
        self.clock = clock
        self.wall = wall
        self._reports = {}      # server id -> (monotonic time, report)
        self._states = {}       # server id -> _State
        self._judged = float('-inf')

    @property
    def window(self):
        """Seconds of latency each chunk server summarizes."""
        return max(self.period / 3.0, 1.0)

    # --- reports -----------------------------------------------------------

    def note(self, server_id, report):
        """A heartbeat's ``latency`` (None: it sent none, e.g. its disk
        failed: the server is no longer judged)."""
        now = self.clock()
        if not isinstance(report, dict):
            self.forget(server_id)
        else:
            self._reports[server_id] = (now, _clean(report))
        if now - self._judged >= min(1.0, self.period / 4.0):
            self.judge(now)

    def forget(self, server_id):
        self._reports.pop(server_id, None)
        self._states.pop(server_id, None)

    # --- judging -------------------------------------------------------------

    def judge(self, now=None):
        """Judge every server reporting, at ``now`` (monotonic)."""
        now = self.clock() if now is None else now
        self._judged = now
        for sid, (at, _) in list(self._reports.items()):
            if now - at > self.stale_after:
                self.forget(sid)
        p99s = {k: {} for k in KINDS}
        for sid, (_, rep) in self._reports.items():
            for k in KINDS:
                r = rep.get(k)
                if r and r['count'] >= self.min_samples and \
                        r['p99'] is not None:
                    p99s[k][sid] = r['p99']
        for sid in self._reports:
            st = self._states.setdefault(sid, _State())
            st.verdict = self.verdict(sid, p99s)
            self._step(st, now)

    def verdict(self, sid, p99s):
        """high, low, between, or None (nothing to judge) for server
        ``sid`` given ``p99s`` ({kind: {server id: p99}})."""
        judged = high = low = 0
        for k in KINDS:
            vals = p99s.get(k, {})
            if sid not in vals or len(vals) < MIN_SERVERS:
                continue
            mine = vals[sid]
            med = statistics.median(v for s, v in vals.items() if s != sid)
            judged += 1
            if mine > self.factor * med and mine > self.min_latency:
                high += 1
            if mine <= self.factor / 2.0 * med or mine <= self.min_latency:
                low += 1
        if not judged:
            return None
        if high:
            return 'high'
        return 'low' if low == judged else 'between'

    def _step(self, st, now):
        towards = 'low' if st.slow else 'high'
        if st.verdict != towards:
            st.pending = None
            return
        if st.pending is None:
            st.pending = now
        if now - st.pending >= self.period:
            st.slow = not st.slow
            st.since = self.wall() if st.slow else None
            st.pending = None

    # --- views ---------------------------------------------------------------

    def _fresh(self):
        """{server id: report} of the reports not stale (the views read
        no more, between two judgements: a scrape may run on another
        thread, and changes nothing)."""
        now = self.clock()
        return {sid: rep for sid, (at, rep) in list(self._reports.items())
                if now - at <= self.stale_after}

    def slow_servers(self):
        """Ids of the servers slow now, sorted."""
        fresh = self._fresh()
        return sorted(sid for sid, st in list(self._states.items())
                      if st.slow and sid in fresh)

    def server(self, server_id):
        """What GET /v1/chunkservers shows of ``server_id``: ``latency``
        (p99 and p50 per kind in seconds, sample counts; None before a
        report), ``slow`` and ``slow_since``."""
        rep = self._fresh().get(server_id)
        st = self._states.get(server_id) if rep is not None else None
        lat = None
        if rep is not None:
            lat = {}
            for k in KINDS:
                r = rep.get(k) or {}
                lat[k + '_p50'] = r.get('p50')
                lat[k + '_p99'] = r.get('p99')
                lat[k + '_samples'] = r.get('count', 0)
            lat['window'] = rep.get('window')
        return {'latency': lat, 'slow': bool(st and st.slow),
                'slow_since': st.since if st else None}

    def latencies(self):
        """{(server id, kind, quantile): seconds} of the reports held, for
        the metrics."""
        out = {}
        for sid, rep in self._fresh().items():
            for k in KINDS:
                r = rep.get(k) or {}
                for q, key in (('0.5', 'p50'), ('0.99', 'p99')):
                    if r.get(key) is not None:
                        out[(str(sid), k, q)] = r[key]
        return out

    def flags(self):
        """{server id (str): 1 or 0} of the servers judged."""
        fresh = self._fresh()
        return {str(sid): int(st.slow)
                for sid, st in list(self._states.items()) if sid in fresh}


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if v == v and 0 <= v < 1e6 else None


def _clean(report):
    """A chunk server's report, its numbers checked (a bad one counts as
    absent)."""
    out = {'window': _number(report.get('window'))}
    for k in KINDS:
        r = report.get(k)
        if not isinstance(r, dict):
            continue
        count = r.get('count')
        out[k] = {'count': count if isinstance(count, int) and
                  not isinstance(count, bool) and count >= 0 else 0,
                  'p50': _number(r.get('p50')),
                  'p99': _number(r.get('p99')),
                  'mean': _number(r.get('mean'))}
    return out

