"""A volume's lease history, without I/O: the kinds of events the master
records (``GET /v1/volumes/{ref}/lease-history``) and :func:`check`, which
proves from such a history that the volume never had two writers at once.

Each event says what happened to one holder's lease of one generation:

``acquire``
    the holder took a new exclusive generation;
``share``
    the holder joined a shared (multiattach) generation, the first one
    starting it; also a writer whose lapsed membership was dropped and
    that renewed it (it writes again), and a writer re-admitted at the
    new generation when another host's writers of the volume were
    fenced or detached (reason ``re-admitted``);
``release`` / ``leave``
    the holder gave its exclusive / shared lease back; a ``leave`` also
    ends the share of the old generation of a re-admitted writer (reason
    ``re-admitted at generation N: ...``, its ``share`` of N follows);
``revoke``
    the lease was revoked (``ursa``'s or the Cinder driver's revoke, or a
    detach from the holder's host);
``fence``
    the holder's host was fenced (``ursa host fence``, nova_ha);
``expire``
    the lease had run out (not renewed) and the master replaced it: the
    master does not end leases on a timer, it notices a lapsed one when
    another writer comes, and records the end then;
``takeover``
    the lease was live and was taken from its holder: by force, or by
    the same holder taking it again.

The last five end a lease; ``revoke``, ``fence`` and a detach also raise
the volume's generation, so the next ``acquire`` is two above.  Every
event carries the generation of the lease it is about (for an end, the
one that ended).  Renewals are not events.  Events are ordered by their
``id``: the master commits each with the lease change it records, in the
same transaction, one leader at a time.
"""

from typing import NamedTuple

ACQUIRE = 'acquire'
SHARE = 'share'
RELEASE = 'release'
LEAVE = 'leave'
REVOKE = 'revoke'
FENCE = 'fence'
EXPIRE = 'expire'
TAKEOVER = 'takeover'

STARTS = (ACQUIRE, SHARE)
ENDS = (RELEASE, LEAVE, REVOKE, FENCE, EXPIRE, TAKEOVER)
EVENTS = STARTS + ENDS


class Problem(NamedTuple):
    """What :func:`check` found wrong at event ``event`` (its id), with
    the earlier event ``since`` it conflicts with (None: no single one)."""

    event: int
    since: int
    problem: str


def _what(e):
    return '#%s (%s of generation %s by %s)' % (
        e['id'], e['event'], e['generation'], e['holder'] or 'nobody')


def check(events, shared_ok=True):
    """The problems of a lease history (a list of the master's event
    dicts, oldest first; [] if none): the proof that one writer at a
    time held the volume.

    * Generations never go down, and events come in ``id`` order.
    * An ``acquire`` takes a generation above every one before it, and
      only once every lease before it has ended (released, left,
      revoked, fenced, expired or taken over): else two writers held the
      volume at once, and both events are named.
    * A ``share`` joins the shared generation open then, or starts a new
      one once every lease before it has ended; with ``shared_ok``
      false (a volume that is not multiattach) a second writer in a
      shared generation is a problem as well.

    An end whose lease started before the first event kept (the master
    keeps the newest ``[ursa_master] lease_history_per_volume`` events)
    is taken as it is.  Overlaps are judged at the start of a lease: a
    lease left open at the end of the history is the current holder's.
    """
    problems = []
    # holder -> the start event of the lease it holds now
    open_ = {}
    top = None          # the highest generation so far
    last = None         # the previous event

    def problem(e, since, text):
        problems.append(Problem(e['id'], since['id'] if since else None,
                                text))

    for e in events:
        kind, gen, holder = e['event'], e['generation'], e['holder']
        if kind not in EVENTS:
            problem(e, None, 'unknown event %r: a newer master recorded '
                             'it? (known: %s)' % (kind, ', '.join(EVENTS)))
            continue
        if last is not None and e['id'] <= last['id']:
            problem(e, last, 'event %s comes after %s: events must be in '
                             'id order, oldest first' % (_what(e),
                                                         _what(last)))
        if top is not None and gen < top:
            problem(e, last, 'generation went down: %s after generation '
                             '%d' % (_what(e), top))
        if kind in STARTS:
            conflicts = []
            for h, start in open_.items():
                exclusive = kind == ACQUIRE or start['event'] == ACQUIRE
                other_gen = start['generation'] != gen
                second = not shared_ok and h != holder
                if exclusive or other_gen or second:
                    conflicts.append(start)
            for start in conflicts:
                problem(e, start, 'two writers: %s while %s had not ended '
                                  '(no release, leave, revoke, fence, '
                                  'expire or takeover of it came '
                                  'between)' % (_what(e), _what(start)))
                del open_[start['holder']]
            if kind == ACQUIRE and gen == top:
                problem(e, last, 'generation %d acquired again: %s; a new '
                                 'holder must get a new generation'
                                 % (gen, _what(e)))
            open_[holder] = e
        else:
            start = open_.pop(holder, None)
            if start is not None and start['generation'] != gen:
                problem(e, start, '%s ends a generation its holder did not '
                                  'hold: it took %s' % (_what(e),
                                                        _what(start)))
        top = gen if top is None else max(top, gen)
        last = e
    return problems
