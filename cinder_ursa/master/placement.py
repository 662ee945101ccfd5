"""Replica placement: distinct failure domains, balanced by free space.

A failure domain is the chunk server itself, its host or its rack (the
master's ``failure_domain`` option).  Replicas of one chunk never share a
domain.  Among the candidates a domain, then a server in it, is drawn with
a probability proportional to its free bytes, so fuller servers receive
fewer new chunks while every server keeps getting some (a deterministic
"most free first" would pile a burst of allocations onto one server before
the next heartbeat updates its numbers).
"""

import random

DOMAINS = ('server', 'host', 'rack')


def domain_of(server, level):
    if level == 'server':
        return 'server:%s' % server['id']
    if level == 'rack':
        return 'rack:%s' % server['rack']
    return 'host:%s' % server['host']


def _weight(server):
    return max(int(server.get('free') or 0), 1)


def choose(servers, count, level='host', exclude_domains=(), rng=random):
    """Pick up to ``count`` server ids from ``servers`` (dicts), one per
    failure domain, never in ``exclude_domains``.  Returns fewer ids when
    there are fewer eligible domains; the caller decides if that is enough.
    """
    by_domain = {}
    for s in servers:
        if s.get('state', 'up') != 'up':
            continue
        d = domain_of(s, level)
        if d in exclude_domains:
            continue
        by_domain.setdefault(d, []).append(s)
    chosen = []
    while by_domain and len(chosen) < count:
        domains = list(by_domain)
        weights = [sum(_weight(s) for s in by_domain[d]) for d in domains]
        d = rng.choices(domains, weights)[0]
        members = by_domain.pop(d)
        s = rng.choices(members, [_weight(m) for m in members])[0]
        chosen.append(s['id'])
    return chosen
