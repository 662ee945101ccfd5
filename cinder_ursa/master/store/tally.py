"""Figures kept up to date instead of counted: what the cluster status,
the metrics and the listings report, whatever the number of chunks.

Every change of the chunks table goes through a :class:`Tally`: the
change is described row by row (``add``, ``remove``, ``change``), and
:meth:`Tally.apply` writes the sums in the same transaction, so the
figures are never out of step with the rows they count:

* ``chunk_tally``: the chunks of each volume by state (replicas, joining
  copies, the server of an only replica, resync mark), with their lost
  copies: about one row per volume, what the metrics classify;
* ``cluster_counters``: the cluster's totals (chunks, degraded, at one
  copy, copies joining, volumes, provisioned bytes in two parts, volumes in
  the trash), what ``GET /v1/cluster`` answers in one read;
* ``volumes.allocated_chunks`` and ``chunkservers.chunks`` /
  ``joining_chunks``: per volume and per server.

:func:`recount` computes them all from the rows (one scan): the schema
migration that adds them fills them with it, ``ursa cluster check``
reports a drift and its ``--repair`` recounts (``POST
/v1/cluster/recount``, :meth:`TallyRecords.recount_tallies`), and the
tests compare both after random changes.
"""

import collections
import logging

import sqlalchemy as sa

from cinder_ursa.master import models
from cinder_ursa.master.store.common import split_ids
from cinder_ursa.protocol import chunkfile

LOG = logging.getLogger(__name__)

# cluster_counters names.
CHUNKS = 'chunks'
DEGRADED = 'degraded_chunks'
ONE_COPY = 'one_copy_chunks'
JOINING = 'joining_replicas'
VOLUMES = 'volumes'
# Provisioned bytes, in two counters: thin volumes of up to 8 EiB each
# sum past any 64-bit column, in bytes or in blocks.  The TiB of each
# size, and the 4 KiB blocks of what is left (under 2**28 a volume).
PROVISIONED_TIB = 'provisioned_tib'
PROVISIONED = 'provisioned_blocks'
TRASH = 'trash_volumes'
COUNTERS = (CHUNKS, DEGRADED, ONE_COPY, JOINING, VOLUMES, PROVISIONED_TIB,
            PROVISIONED, TRASH)
TIB_SHIFT = 40


def provisioned_parts(size):
    """{counter: value} of a volume size (a multiple of 4 KiB) in the
    provisioned counters."""
    return {PROVISIONED_TIB: size >> TIB_SHIFT,
            PROVISIONED: (size & ((1 << TIB_SHIFT) - 1)) // chunkfile.BLOCK}


def provisioned_bytes(counters):
    """The provisioned bytes the counters hold (a Python int: no
    overflow)."""
    return (counters[PROVISIONED_TIB] << TIB_SHIFT) + \
        counters[PROVISIONED] * chunkfile.BLOCK


def state_key(volume_id, replicas, joining, resync):
    """A chunk's ``chunk_tally`` key from its columns."""
    ids = split_ids(replicas)
    return (volume_id, len(ids), len(split_ids(joining)),
            ids[0] if len(ids) == 1 else 0, bool(resync))


class Tally:
    """The changes of one transaction to the kept figures; see the
    module.  Rows are anything with the chunks table's columns (a row,
    or a dict)."""

    def __init__(self):
        self.states = collections.Counter()    # key -> chunks
        self.lost = collections.Counter()      # key -> lost copies
        self.servers = collections.Counter()   # (id, column) -> delta
        self.counters = collections.Counter()  # name -> delta
        self.goals = {}                         # volume id -> replicas

    def _row(self, row, sign):
        get = row.get if isinstance(row, dict) else row._mapping.get
        key = state_key(get('volume_id'), get('replicas'),
                        get('joining') or '', get('resync'))
        self.states[key] += sign
        self.lost[key] += sign * len(split_ids(get('lost') or ''))
        for sid in split_ids(get('replicas')):
            self.servers[(sid, 'chunks')] += sign
        for sid in split_ids(get('joining') or ''):
            self.servers[(sid, 'joining_chunks')] += sign

    def add(self, row):
        """A chunk row inserted."""
        self._row(row, 1)

    def remove(self, row):
        """A chunk row deleted."""
        self._row(row, -1)

    def change(self, row, values):
        """A chunk row updated with ``values`` (columns)."""
        self._row(row, -1)
        new = dict(row._mapping) if not isinstance(row, dict) else dict(row)
        new.update(values)
        self._row(new, 1)

    def count(self, name, delta):
        """A cluster counter changed (volumes, trash...)."""
        self.counters[name] += delta

    def provision(self, size, sign=1):
        """A volume of ``size`` bytes added (sign 1) or gone (-1)."""
        for name, n in provisioned_parts(size).items():
            self.counters[name] += sign * n

    def goal(self, volume_id, replicas):
        """The replicas ``volume_id`` asks for, known to the caller (spares
        :meth:`apply` a read)."""
        self.goals[volume_id] = replicas

    def apply(self, conn):
        """Write the sums; the transaction of the changes counted.  A few
        statements (each built once, see _STATEMENTS), however many rows
        were counted."""
        st = _statements()
        changed = {k: (n, self.lost[k]) for k, n in self.states.items()
                   if n or self.lost[k]}
        vids = sorted({k[0] for k in changed})
        missing = [v for v in vids if v not in self.goals]
        if missing:
            self.goals.update(conn.execute(st['goals'],
                                           {'ids': missing}).all())
        if vids:
            have = {tuple(r[:4]) + (bool(r[4]),) for r in conn.execute(
                st['keys'], {'ids': vids})}
            rows = [{'v': k[0], 'r': k[1], 'j': k[2], 'o': k[3], 's': k[4],
                     'n': n, 'l': lost} for k, (n, lost) in changed.items()]
            update = [r for r, k in zip(rows, changed, strict=True)
                      if k in have]
            insert = [r for r, k in zip(rows, changed, strict=True)
                      if k not in have]
            if update:
                conn.execute(st['update'], update)
            if insert:
                conn.execute(st['insert'], insert)
            if any(n < 0 or lost < 0 for n, lost in changed.values()):
                conn.execute(st['empty'], {'ids': vids})
        per_volume = collections.Counter()
        for (vid, nrep, njoin, _only, _resync), (n, _) in changed.items():
            per_volume[vid] += n
            self.counters[CHUNKS] += n
            self.counters[JOINING] += n * njoin
            if nrep < self.goals.get(vid, 0):
                self.counters[DEGRADED] += n
                if nrep == 1:
                    self.counters[ONE_COPY] += n
        volumes = [{'v': vid, 'n': n} for vid, n in per_volume.items() if n]
        if volumes:
            conn.execute(st['volume'], volumes)
        servers = collections.defaultdict(lambda: [0, 0])
        for (sid, column), n in self.servers.items():
            servers[sid][column == 'joining_chunks'] += n
        servers = [{'i': sid, 'n': n, 'j': j}
                   for sid, (n, j) in sorted(servers.items()) if n or j]
        if servers:
            conn.execute(st['server'], servers)
        counters = [{'k': k, 'n': n} for k, n in sorted(self.counters.items())
                    if n]
        if counters:
            conn.execute(st['counter'], counters)
        self.__init__()


_STATEMENTS = {}


def _statements():
    """The statements :meth:`Tally.apply` runs, built once (SQLAlchemy
    then reuses their compiled form: building an expression costs more
    than running it)."""
    if not _STATEMENTS:
        ct, v = models.chunk_tally, models.volumes
        t, cc = models.chunkservers, models.cluster_counters
        p = sa.bindparam
        key = sa.and_(ct.c.volume_id == p('v'), ct.c.replicas == p('r'),
                      ct.c.joining == p('j'), ct.c.only_server == p('o'),
                      ct.c.resync == p('s'))
        _STATEMENTS.update(
            goals=sa.select(v.c.id, v.c.replicas).where(
                v.c.id.in_(p('ids', expanding=True))),
            keys=sa.select(ct.c.volume_id, ct.c.replicas, ct.c.joining,
                           ct.c.only_server, ct.c.resync).where(
                ct.c.volume_id.in_(p('ids', expanding=True))),
            update=ct.update().where(key).values(
                chunks=ct.c.chunks + p('n'), lost=ct.c.lost + p('l')),
            insert=ct.insert().values(
                volume_id=p('v'), replicas=p('r'), joining=p('j'),
                only_server=p('o'), resync=p('s'), chunks=p('n'),
                lost=p('l')),
            empty=ct.delete().where(
                ct.c.volume_id.in_(p('ids', expanding=True)),
                ct.c.chunks == 0, ct.c.lost == 0),
            volume=v.update().where(v.c.id == p('v')).values(
                allocated_chunks=v.c.allocated_chunks + p('n')),
            server=t.update().where(t.c.id == p('i')).values(
                chunks=t.c.chunks + p('n'),
                joining_chunks=t.c.joining_chunks + p('j')),
            counter=cc.update().where(cc.c.name == p('k')).values(
                value=cc.c.value + p('n')))
    return _STATEMENTS


def recount(conn):
    """Every kept figure computed from the rows (a scan of the chunks):
    ``{'states': {key: (chunks, lost)}, 'volumes': {id: allocated},
    'servers': {id: (chunks, joining)}, 'counters': {name: value}}``."""
    c, v = models.chunks, models.volumes
    goals, volumes = {}, {}
    counters = dict.fromkeys(COUNTERS, 0)
    for r in conn.execute(sa.select(v.c.id, v.c.replicas, v.c.size,
                                    v.c.status)):
        goals[r.id] = r.replicas
        volumes[r.id] = 0
        counters[VOLUMES] += 1
        for name, n in provisioned_parts(r.size).items():
            counters[name] += n
        counters[TRASH] += r.status == 'trash'
    tally = Tally()
    for r in conn.execute(sa.select(c.c.volume_id, c.c.replicas,
                                    c.c.joining, c.c.lost, c.c.resync)):
        tally.add(r)
    states = {}
    for key, n in tally.states.items():
        if n or tally.lost[key]:
            states[key] = (n, tally.lost[key])
            vid, nrep, njoin = key[:3]
            volumes[vid] = volumes.get(vid, 0) + n
            counters[CHUNKS] += n
            counters[JOINING] += n * njoin
            if nrep < goals.get(vid, 0):
                counters[DEGRADED] += n
                counters[ONE_COPY] += n if nrep == 1 else 0
    servers = collections.defaultdict(lambda: [0, 0])
    for r in conn.execute(sa.select(models.chunkservers.c.id)):
        servers[r.id]
    for (sid, column), n in tally.servers.items():
        servers[sid][column == 'joining_chunks'] += n
    return {'states': states, 'volumes': volumes,
            'servers': {k: tuple(n) for k, n in servers.items()},
            'counters': counters}


def kept(conn):
    """The kept figures as they are, in :func:`recount`'s shape."""
    ct, v = models.chunk_tally, models.volumes
    t, cc = models.chunkservers, models.cluster_counters
    states = {(r.volume_id, r.replicas, r.joining, r.only_server,
               bool(r.resync)): (r.chunks, r.lost)
              for r in conn.execute(sa.select(ct))}
    volumes = dict(conn.execute(sa.select(v.c.id, v.c.allocated_chunks)).all())
    servers = {r.id: (r.chunks, r.joining_chunks) for r in conn.execute(
        sa.select(t.c.id, t.c.chunks, t.c.joining_chunks))}
    counters = dict.fromkeys(COUNTERS, 0)
    counters.update(conn.execute(sa.select(cc.c.name, cc.c.value)).all())
    return {'states': states, 'volumes': volumes, 'servers': servers,
            'counters': counters}


def write(conn, figures):
    """Replace the kept figures by ``figures`` (:func:`recount`'s)."""
    ct, v = models.chunk_tally, models.volumes
    t, cc = models.chunkservers, models.cluster_counters
    conn.execute(ct.delete())
    rows = [{'volume_id': k[0], 'replicas': k[1], 'joining': k[2],
             'only_server': k[3], 'resync': k[4], 'chunks': n, 'lost': lost}
            for k, (n, lost) in figures['states'].items()]
    if rows:
        conn.execute(ct.insert(), rows)
    conn.execute(v.update().values(allocated_chunks=0))
    for vid, n in figures['volumes'].items():
        if n:
            conn.execute(v.update().where(v.c.id == vid).values(
                allocated_chunks=n))
    conn.execute(t.update().values(chunks=0, joining_chunks=0))
    for sid, (n, j) in figures['servers'].items():
        if n or j:
            conn.execute(t.update().where(t.c.id == sid).values(
                chunks=n, joining_chunks=j))
    conn.execute(cc.delete())
    conn.execute(cc.insert(), [{'name': k, 'value': n}
                               for k, n in figures['counters'].items()])


def describe(drift, most=5):
    """:meth:`TallyRecords.tally_drift`'s answer as lines (at most
    ``most`` per part, then how many more)."""
    out = []
    for part, diff in sorted(drift.items()):
        keys = sorted(diff, key=str)
        for k in keys[:most]:
            have, counted = diff[k]
            out.append('%s %s: kept %s, counted %s' % (
                part, '/'.join(str(x) for x in k) if isinstance(k, tuple)
                else k, have, counted))
        if len(keys) > most:
            out.append('%s: %d more' % (part, len(keys) - most))
    return out


class TallyRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    def counters(self, conn=None):
        """{name: value} of the cluster counters (one small read)."""
        cc = models.cluster_counters
        if conn is None:
            with self.engine.connect() as conn:
                return self.counters(conn)
        out = dict.fromkeys(COUNTERS, 0)
        out.update(conn.execute(sa.select(cc.c.name, cc.c.value)).all())
        return out

    def tally_drift(self):
        """What differs between the kept figures and a recount (empty:
        they agree): {part: {key: (kept, counted)}}."""
        with self.engine.connect() as conn:
            if conn.dialect.name in ('postgresql', 'mysql'):
                # Both reads see one moment (PostgreSQL's default
                # isolation takes a snapshot per statement).
                conn = conn.execution_options(
                    isolation_level='REPEATABLE READ')
            counted, have = recount(conn), kept(conn)
        out = {}
        for part in counted:
            a, b = have[part], counted[part]
            diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b)
                    if a.get(k) != b.get(k) and not (
                        part == 'servers' and
                        (a.get(k) or (0, 0)) == (b.get(k) or (0, 0)))}
            if diff:
                out[part] = diff
        return out

    def recount_tallies(self):
        """Count every kept figure again from the rows (a scan of the
        chunks, for a database whose figures drifted: restored from
        parts, edited by hand) and write them; returns what differed
        (see :meth:`tally_drift`)."""
        drift = self.tally_drift()
        with self.begin() as conn:
            write(conn, recount(conn))
        if drift:
            LOG.warning('Kept figures recounted: %s differed',
                        ', '.join('%d %s' % (len(d), part)
                                  for part, d in sorted(drift.items())))
        return drift
