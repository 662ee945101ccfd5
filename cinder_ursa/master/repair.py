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
  the data (its copy is brought up to date, not made anew).
* A lost server that is in maintenance, or down for less than the grace
  period, is expected back and holds the place of one missing copy: the
  chunk waits for it, as long as it has at least two replicas.  A chunk
  missing more copies than servers expected back is copied at once (a
  chunk at one copy never waits).
* Otherwise the target is drawn among the servers that are up, not in
  maintenance, and in a failure domain the chunk does not use yet.
* Chunks at one copy come first, then chunks whose old server returned,
  then the rest; each server takes part in at most ``per_server`` jobs
  at once, as a source or a target, so recovery never floods one server.
"""

import collections
import random

from cinder_ursa.master import placement

# Priority classes, the most urgent first.
ONE_COPY, RETURNING, UNDER = 0, 1, 2
REASONS = {ONE_COPY: 'one copy left', RETURNING: 'its server returned',
           UNDER: 'under-replicated'}

Job = collections.namedtuple(
    'Job', 'volume_id index epoch source target priority')


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
         per_server=2, avoid=(), rng=random):
    """Jobs to start now, most urgent first, and a summary.

    ``chunks``: dicts with volume_id, index, epoch and the server ids in
    replicas (primary first), joining and lost.  ``goals``: {volume id:
    replicas it asks for}.  ``servers``: {id: server record}.  ``busy``:
    {server id: jobs it already takes part in}.  ``avoid``: servers not
    to copy to now (a copy to them just failed).

    The summary counts the chunks that lack copies (``degraded``), those
    waiting for a server expected back (``waiting``), those with no
    eligible target (``blocked``), those whose primary is busy or down
    (``deferred``) and those whose every copy is on a server that is
    down (``unavailable``).
    """
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
        lost = [s for s in c['lost'] if s in servers and
                s not in have and s not in joining]
        # A copy to a lost server that is up just failed (``avoid``): it
        # is likely dead and not yet marked down, so waited for like one.
        returning = [s for s in lost if _up(servers[s]) and
                     not servers[s].get('maintenance') and s not in avoid]
        back = [s for s in lost if (
            servers[s].get('maintenance') or s in avoid if _up(servers[s])
            else expected_back(servers[s], now, grace))]
        if len(have) == 1 and goal > 1:
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
        if target is None:
            summary['blocked'] += 1
            continue
        busy[source] += 1
        busy[target] += 1
        jobs.append(Job(c['volume_id'], c['index'], c['epoch'], source,
                        target, prio))
    return jobs, dict(summary)


def _up(server):
    return server.get('state') == 'up'


def _target(chunk, returning, servers, level, busy, per_server, avoid,
            rng):
    used = {placement.domain_of(servers[s], level)
            for s in chunk['replicas'] + chunk['joining'] if s in servers}

    def eligible(s):
        return (_up(s) and not s.get('maintenance') and
                s['id'] not in avoid and busy[s['id']] < per_server and
                placement.domain_of(s, level) not in used)
    for sid in returning:
        if eligible(servers[sid]):
            return sid
    taken = set(chunk['replicas'] + chunk['joining'])
    chosen = placement.choose(
        [s for s in servers.values() if s['id'] not in taken and
         eligible(s)], 1, level, exclude_domains=used, rng=rng)
    return chosen[0] if chosen else None
