"""The repair planner: which chunks lack copies, which of them gets a new
copy first, from where and onto which server.

Pure: it reads a snapshot of the chunk, volume and server records and
returns jobs; :class:`cinder_ursa.master.service.MasterService` runs it on
the acting master and hands the jobs to the chunks' primaries.

The rules, in the order they apply to a chunk with fewer copies
(replicas plus joining ones) than its volume asks for:

* A chunk whose every replica is on a server that is down has nothing to
  copy from: it waits for one of them to return.  The source of a copy
  is the chunk's primary, which forwards the chunk's writes to the new
  copy while it copies; a chunk whose primary is down waits for the
  master to drop it (another replica becomes primary).
* A server dropped from the chunk (``lost``) that is up again, and not
  in maintenance, is the first choice of target: it still holds most of
  the data (its copy is brought up to date, not made anew).  When it
  already takes ``per_server`` copies, the chunk waits for it.
* A lost server that is in maintenance, or down for less than the grace
  period, is expected back and holds the place of one missing copy: the
  chunk waits for it, as long as it has at least two replicas.  A chunk
  missing more copies than servers expected back is copied at once (a
  chunk at one copy never waits).
* Otherwise the target is drawn among the servers that are up, not in
  maintenance, and in a failure domain the chunk does not use yet.
* Chunks whose writes are refused come first (fewer replicas than their
  volume's ``min_replicas``: a client is blocked on them), then chunks
  at one copy, then chunks whose old server returned, then the rest;
  neither of the first two waits for a server down within the grace
  period, and a chunk at one copy never waits (a blocked chunk with two
  copies or more waits for servers in maintenance).  Each
  server takes part in at most ``per_server`` jobs at once, as a source
  or a target, so recovery never floods one server.
* A draining server (``ursa server drain``) is never a target, and a
  draining server that is down is not expected back.

Then, below every repair, the moves (the same copy, whose job names the
replica to ``retire`` once the target is a replica):

* A chunk with more replicas than its volume asks for (a move that
  copied but did not retire, a drain cancelled mid-way) has one retired:
  a replica on a draining server first, then one whose failure domain
  another replica shares, then the one on the fullest server (``TRIM``;
  it copies nothing).
* A chunk with a replica on a draining server is copied from its primary
  to a target chosen as for a repair (the draining server's domain is
  free for it), then that replica is retired (``DRAIN``).
* When nothing else is to do (no chunk lacks a copy, no copy runs, no
  drain and no retirement is pending), at most ``rebalance`` replicas are
  moved from the servers holding the most replicas to those holding the
  fewest, in a failure domain the chunk's other replicas do not use, as
  long as the two counts differ by more than ``threshold`` percent of
  the average count, and by two at least, never to a server with less
  than 10 % of its capacity free (``REBALANCE``).  Each move
  brings the two closer by two, so moves stop, and never go back and
  forth.
"""

import collections
import random

from cinder_ursa.master import placement

# Priority classes, the most urgent first.
BLOCKED, ONE_COPY, RETURNING, UNDER, TRIM, DRAIN, REBALANCE = range(7)
REASONS = {BLOCKED: 'writes refused (below min_replicas)',
           ONE_COPY: 'one copy left', RETURNING: 'its server returned',
           UNDER: 'under-replicated', TRIM: 'a replica too many',
           DRAIN: 'its server drains', REBALANCE: 'rebalancing'}
# The classes that copy nothing a chunk lacks: they move replicas.
MOVES = (TRIM, DRAIN, REBALANCE)
# A rebalancing move never goes to a server with less free space than
# this share of its capacity.
MIN_FREE_FOR_MOVES = 0.1

BUSY = object()     # _target: the chunk waits for a busy returning server

# ``target`` None: nothing to copy (TRIM).  ``retire``: the replica to
# take out of the chunk once the copy is a replica (the moves).
Job = collections.namedtuple(
    'Job', 'volume_id index epoch source target priority retire',
    defaults=(None,))


def expected_back(server, now, grace):
    """Whether a down server is expected back: in maintenance, or down
    for less than ``grace`` seconds; never one whose disk failed."""
    if server.get('state') == 'failed':
        return False
    if server.get('maintenance'):
        return True
    since = server.get('down_since')
    return since is not None and now - since < grace


def plan(chunks, goals, servers, now, grace, level='host', busy=None,
         per_server=2, avoid=(), rng=random, rebalance=0, threshold=10):
    """Jobs to start now, most urgent first, and a summary.

    ``chunks``: dicts with volume_id, index, epoch and the server ids in
    replicas (primary first), joining and lost, and optionally ``floor``,
    the replicas below which the chunk's writes are refused (its
    volume's min_replicas).  ``goals``: {volume id:
    replicas it asks for}.  ``servers``: {id: server record}.  ``busy``:
    {server id: jobs it already takes part in}.  ``avoid``: servers not
    to copy to now (a copy to them just failed).  ``rebalance``: moves
    at most per round (0: none); ``threshold``: the difference of replica
    counts a move needs, in percent of the average count.

    The summary counts the chunks that lack copies (``degraded``), those
    waiting for a server expected back (``waiting``), those with no
    eligible target (``blocked``), those whose primary is busy or down
    (``deferred``) and those whose every copy is on a server that is
    down (``unavailable``); then the chunks with a replica on a draining
    server (``draining``), those a move cannot place now
    (``moves_blocked``) and the moves planned (``trim``, ``drain``,
    ``rebalance``).
    """
    idle = not busy
    busy = collections.Counter(busy or {})
    summary = collections.Counter()
    todo = []
    for c in chunks:
        goal = goals.get(c['volume_id'])
        if goal is None:
            continue        # its volume is gone: nothing to repair
        have, joining = c['replicas'], c['joining']
        missing = goal - len(have) - len(joining)
        if missing <= 0:
            continue
        summary['degraded'] += 1
        if any(s not in servers for s in have + joining):
            summary['blocked'] += 1   # records out of step: next round
            continue
        if not any(_up(servers[s]) for s in have):
            # Its only copies are on servers that are down: nothing to
            # copy from until one returns.
            summary['unavailable'] += 1
            continue
        if not _up(servers[have[0]]):
            # The copy is made by the chunk's primary (it forwards the
            # writes to the new copy meanwhile): wait for the master to
            # drop a primary that is down, making another one primary.
            summary['deferred'] += 1
            continue
        # A draining server is neither a target nor waited for.
        lost = [s for s in c['lost'] if s in servers and
                s not in have and s not in joining and
                not servers[s].get('draining')]
        # A lost server a copy just failed to (``avoid``) is not taken as
        # returning now; one that failed a write and has not sent a
        # heartbeat since is handed here as down (see the service), so a
        # server that just died is waited for the grace period.
        returning = [s for s in lost if _up(servers[s]) and
                     not servers[s].get('maintenance') and s not in avoid]
        back = [s for s in lost if (
            servers[s].get('maintenance') if _up(servers[s])
            else expected_back(servers[s], now, grace))]
        # Maintenance is the operator's word that a server comes back:
        # even a chunk whose writes it blocks waits for it (as with
        # Ceph's noout), unless more copies are missing than it covers.
        kept = sum(1 for s in back if servers[s].get('maintenance'))
        if len(have) < c.get('floor', 1) and missing > kept:
            prio = BLOCKED
        elif len(have) == 1 and goal > 1:
            prio = ONE_COPY
        elif returning:
            prio = RETURNING
        elif missing <= len(back):
            summary['waiting'] += 1
            continue
        else:
            prio = UNDER
        todo.append((prio, c['volume_id'], c['index'], c, returning))
    todo.sort(key=lambda t: t[:3])
    jobs = []
    for prio, _, _, c, returning in todo:
        source = c['replicas'][0]
        if busy[source] >= per_server:
            summary['deferred'] += 1    # its primary is busy: next round
            continue
        target = _target(c, returning, servers, level, busy, per_server,
                         avoid, rng)
        if target is BUSY:
            summary['deferred'] += 1    # its old server is busy: wait
            continue
        if target is None:
            summary['blocked'] += 1
            continue
        busy[source] += 1
        busy[target] += 1
        jobs.append(Job(c['volume_id'], c['index'], c['epoch'], source,
                        target, prio))
    jobs += _moves(chunks, goals, servers, level, busy, per_server, avoid,
                   rng, summary)
    if rebalance > 0 and idle and not todo and not jobs and not (
            summary['draining'] or summary['degraded']):
        jobs += _rebalance(chunks, goals, servers, level, busy, per_server,
                           avoid, rebalance, threshold, summary)
    return jobs, dict(summary)


def _movable(c, goals, servers):
    """Whether a chunk's replicas may be moved: its volume is known, it
    has no copy being made, and every replica is on a server known and
    up."""
    return (goals.get(c['volume_id']) is not None and not c['joining'] and
            all(s in servers and _up(servers[s]) for s in c['replicas']))


def _counts(chunks, servers):
    """{server id: replicas it holds}: the servers' own counts (kept by
    the master, as ``chunks``) when they have them, since ``chunks`` may
    be only the chunks that need work; else counted from ``chunks``."""
    if servers and all('chunks' in s for s in servers.values()):
        return collections.Counter({sid: s['chunks']
                                    for sid, s in servers.items()})
    counts = collections.Counter({sid: 0 for sid in servers})
    for c in chunks:
        counts.update(c['replicas'])
    return counts


def _moves(chunks, goals, servers, level, busy, per_server, avoid, rng,
           summary):
    """The TRIM and DRAIN jobs."""
    counts = _counts(chunks, servers)
    trims, drains = [], []
    for c in sorted(chunks, key=lambda c: (c['volume_id'], c['index'])):
        if not _movable(c, goals, servers):
            continue
        have = c['replicas']
        draining = [s for s in have if servers[s].get('draining')]
        goal = goals[c['volume_id']]
        if len(have) > max(goal, 1):
            retire = _surplus(have, draining, servers, level, counts)
            summary['trim'] += 1
            trims.append(Job(c['volume_id'], c['index'], c['epoch'], retire,
                             None, TRIM, retire))
        elif draining and len(have) == goal:
            summary['draining'] += 1
            drains.append((c, draining[0]))
    jobs = trims
    for c, retire in drains:
        source = c['replicas'][0]
        if busy[source] >= per_server:
            continue
        target = _target(c, [], servers, level, busy, per_server, avoid, rng,
                         leaving=retire)
        if target is None:
            summary['moves_blocked'] += 1
            continue
        busy[source] += 1
        busy[target] += 1
        summary['drain'] += 1
        jobs.append(Job(c['volume_id'], c['index'], c['epoch'], source,
                        target, DRAIN, retire))
    return jobs


def _surplus(have, draining, servers, level, counts):
    """Which replica of a chunk with one too many to retire."""
    if draining:
        return draining[0]
    domains = collections.Counter(placement.domain_of(servers[s], level)
                                  for s in have)
    shared = [s for s in have
              if domains[placement.domain_of(servers[s], level)] > 1]
    # The primary last: retiring it moves the writes to another.
    return max(shared or have,
               key=lambda s: (counts[s], s != have[0], s))


def _rebalance(chunks, goals, servers, level, busy, per_server, avoid,
               limit, threshold, summary):
    """At most ``limit`` REBALANCE jobs, from the fullest servers to
    the emptiest (by replica count)."""
    pool = {sid for sid, s in servers.items()
            if _up(s) and not s.get('maintenance') and
            not s.get('draining')}
    # Counts, not bytes, are balanced: a server nearly full takes none.
    roomy = {sid for sid in pool if not servers[sid].get('capacity') or
             servers[sid].get('free', 0) >= servers[sid]['capacity'] *
             MIN_FREE_FOR_MOVES}
    if len(pool) < 2:
        return []
    counts = _counts(chunks, servers)
    # In replicas: a difference of one only swaps which server is fuller.
    threshold = max(1.0, threshold / 100.0 * sum(
        counts[s] for s in pool) / len(pool))
    on = collections.defaultdict(list)
    for c in sorted(chunks, key=lambda c: (c['volume_id'], c['index'])):
        if _movable(c, goals, servers) and \
                len(c['replicas']) == goals[c['volume_id']]:
            for sid in c['replicas']:
                on[sid].append(c)
    jobs, moved = [], set()
    while len(jobs) < limit:
        order = sorted(pool, key=lambda s: (counts[s], s))
        job = None
        for full in reversed(order):
            if counts[full] - counts[order[0]] <= threshold:
                break
            job = _move_one(on[full], full, order, counts, servers, level,
                            busy, per_server, avoid, threshold, moved,
                            roomy)
            if job is not None:
                break
        if job is None:
            break
        moved.add((job.volume_id, job.index))
        busy[job.source] += 1
        busy[job.target] += 1
        counts[job.retire] -= 1
        counts[job.target] += 1
        summary['rebalance'] += 1
        jobs.append(job)
    return jobs


def _move_one(candidates, full, order, counts, servers, level, busy,
              per_server, avoid, threshold, moved, roomy):
    for c in candidates:
        if (c['volume_id'], c['index']) in moved:
            continue
        source = c['replicas'][0]
        if busy[source] >= per_server:
            continue
        used = {placement.domain_of(servers[s], level)
                for s in c['replicas'] if s != full}
        for empty in order:
            if counts[full] - counts[empty] <= threshold:
                break
            s = servers[empty]
            if (empty in c['replicas'] or empty in avoid or
                    empty not in roomy or
                    busy[empty] >= per_server or
                    placement.domain_of(s, level) in used):
                continue
            return Job(c['volume_id'], c['index'], c['epoch'], source,
                       empty, REBALANCE, full)
    return None


def _up(server):
    return server.get('state') == 'up'


def _target(chunk, returning, servers, level, busy, per_server, avoid,
            rng, leaving=None):
    """A server to copy the chunk to, in a failure domain its copies
    (but ``leaving``, the replica a move retires) do not use."""
    used = {placement.domain_of(servers[s], level)
            for s in chunk['replicas'] + chunk['joining']
            if s in servers and s != leaving}

    def eligible(s):
        return (_up(s) and not s.get('maintenance') and
                not s.get('draining') and
                s['id'] not in avoid and busy[s['id']] < per_server and
                placement.domain_of(s, level) not in used)
    for sid in returning:
        if eligible(servers[sid]):
            return sid
    for sid in returning:
        s = servers[sid]
        if (sid not in avoid and busy[sid] >= per_server and
                placement.domain_of(s, level) not in used):
            # Its old server holds most of the data and takes other
            # copies now: wait for it rather than copy all elsewhere.
            return BUSY
    taken = set(chunk['replicas'] + chunk['joining'])
    chosen = placement.choose(
        [s for s in servers.values() if s['id'] not in taken and
         eligible(s)], 1, level, exclude_domains=used, rng=rng)
    return chosen[0] if chosen else None
