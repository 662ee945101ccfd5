"""Chunk servers: registration, heartbeats, marking silent ones down and
those whose data directory failed 'failed'.

A chunk server's state is 'up', 'down' (silent for ``server_timeout``) or
'failed': it said its data directory failed (too many disk errors).  A
failed server serves nothing and is never expected back: the repair
planner copies its chunks at once and never copies to it.  It stays
failed, silent or not, until it registers again without a failure (a
restart of its chunk server after the disk was checked) or is replaced
by a new server (a new, empty data directory).
"""

import collections
import logging
import time

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from cinder_ursa.master.store.chunks import without_server
from cinder_ursa.master.store.common import asked
from cinder_ursa.master.store.common import join_ids
from cinder_ursa.master.store.common import split_ids
from cinder_ursa.master.store.tally import Tally

LOG = logging.getLogger(__name__)

# Chunks a registration looks up per query.
REGISTER_BATCH = 500
# Chunks a server leaves per statement when it is dropped from them all.
DROP_BATCH = 1000
# Chunks a server marked down leaves per transaction (see drop_slice):
# about half a second of the database's time on SQLite here.
DROP_SLICE = 10000
# without_server's columns -> _drop_statement's parameters.
_DROP_PARAM = {'replicas': 'r', 'joining': 'j', 'lost': 'l', 'resync': 's'}
_DROP = []


def _drop_statement():
    """Compare-and-set of a chunk's membership (epoch e -> e1), built once
    for executemany."""
    if not _DROP:
        c, p = models.chunks, sa.bindparam
        _DROP.append(c.update().where(
            c.c.volume_id == p('v'), c.c.idx == p('i'),
            c.c.epoch == p('e')).values(
                epoch=p('e1'), replicas=p('r'), joining=p('j'),
                lost=p('l'), resync=p('s')))
    return _DROP[0]


class ServerRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    @staticmethod
    def _server_dict(row):
        return {'id': row.id, 'uuid': row.uuid, 'host': row.host,
                'rack': row.rack, 'address': row.address, 'port': row.port,
                'capacity': row.capacity, 'used': row.used, 'free': row.free,
                'state': row.state, 'last_seen': row.last_seen,
                'down_since': row.down_since,
                'maintenance': bool(row.maintenance),
                'draining': bool(row.draining),
                # The replicas it holds and the copies being made on it
                # (kept up to date: store/tally.py).
                'chunks': row.chunks, 'joining': row.joining_chunks}

    def register_server(self, server_uuid, host, rack, address, port,
                        capacity, used, free, chunks=(), failure=None,
                        lost_cache=False, primaries=None, live=None,
                        classify=True):
        """Add or update a chunk server; classify the chunks it reports.

        Returns ``(server, stale, orphans, generations, snapseqs,
        snapshots)``: ``stale`` are (volume, index) it holds but is no
        longer a replica of, ``orphans`` belong to no known volume or chunk,
        the next two map volume ids to their lease generation and snapshot
        sequence, the last maps the volumes it holds to (snapshot sequence,
        live snapshot sequences) so it frees what deleted snapshots left.

        ``failure``: its data directory failed (why): it is registered
        failed, and left out of every replica set.

        ``lost_cache``: the server restarted after its machine did (a
        crash, a power cut): its copies may lack writes it acknowledged
        but had not synced, so it leaves every chunk that has another
        replica (they are stale, and brought up to date like a returning
        server's); not from a chunk none of whose other replicas is in
        ``live`` (servers known to hold what they acknowledged: its copy
        may be the best left, and the crash resync compares them).  The
        chunks whose primary it was (in both cases) are appended to
        ``primaries`` (their replicas are to be compared).

        ``classify`` False: ``stale`` and ``orphans`` are left empty, for
        the caller to ask :meth:`classify_replicas` a slice at a time.
        """
        now = time.time()
        t = models.chunkservers
        with self.begin() as conn:
            row = conn.execute(sa.select(t).where(
                t.c.uuid == server_uuid)).first()
            values = dict(host=host, rack=rack, address=address, port=port,
                          capacity=capacity, used=used, free=free,
                          state='up', last_seen=now, down_since=None)
            if failure is not None:
                values.update(state='failed', down_since=now)
            if row is None:
                res = conn.execute(t.insert().values(
                    uuid=server_uuid, created_at=now, **values))
                sid = res.inserted_primary_key[0]
                LOG.info('Chunk server %s (%s:%d, host %s) joined as id '
                         '%d, by %s', server_uuid, address, port, host, sid,
                         asked())
            else:
                sid = row.id
                if failure is not None and row.state == 'failed':
                    values['down_since'] = row.down_since
                conn.execute(t.update().where(t.c.id == sid).values(**values))
                if row.state != 'up' and failure is None:
                    LOG.info('Chunk server %d (%s:%d) is up again, by %s',
                             sid, address, port, asked())
                    self.failures.pop(sid, None)
            if failure is not None:
                self._failed(conn, sid, address, port, failure,
                             row is None or row.state != 'failed', primaries)
                chunks = ()
            elif lost_cache and row is not None:
                dropped = self._drop_server_replicas(conn, sid, primaries,
                                                     set(live or ()))
                LOG.warning('Chunk server %d (%s:%d) restarted after its '
                            'machine did, with writes it had not synced '
                            'perhaps lost: dropped from %d replica set(s), '
                            'to be brought up to date', sid, address, port,
                            dropped)
            server = self._server_dict(conn.execute(
                sa.select(t).where(t.c.id == sid)).first())
            stale, orphans = [], []
            vrows = conn.execute(sa.select(
                models.volumes.c.id, models.volumes.c.lease_generation,
                models.volumes.c.snap_seq)).all()
            vols = {r.id: r.lease_generation for r in vrows}
            seqs = {r.id: r.snap_seq for r in vrows if r.snap_seq}
            held = {v for v, _, _ in chunks}
            live = collections.defaultdict(list)
            for r in conn.execute(sa.select(
                    models.snapshots.c.volume_id, models.snapshots.c.seq)):
                live[r.volume_id].append(r.seq)
            snaps = {v: (seq, live.get(v, [])) for v, seq in seqs.items()
                     if v in held}
            if classify:
                stale, orphans = self._classify(conn, sid, chunks, vols)
            gens = {v: g for v, g in vols.items() if g}
        return server, stale, orphans, gens, seqs, snaps

    def classify_replicas(self, server_id, chunks):
        """(stale, orphans) of ``chunks`` (volume, index, epoch) a server
        reported at its registration (see :meth:`register_server`): the
        REST layer asks a slice at a time, each its own database call,
        so a server holding millions does not hold the database."""
        with self.engine.connect() as conn:
            vids = sorted({v for v, _, _ in chunks})
            v = models.volumes
            known = set()
            for at in range(0, len(vids), REGISTER_BATCH):
                known.update(conn.execute(sa.select(v.c.id).where(
                    v.c.id.in_(vids[at:at + REGISTER_BATCH]))).scalars())
            return self._classify(conn, server_id, chunks, known)

    @staticmethod
    def _classify(conn, sid, chunks, vols):
        """(stale, orphans) of reported ``chunks``; ``vols``: the volume
        ids known (a replica of another volume is an orphan)."""
        c = models.chunks
        stale, orphans = [], []
        wanted = collections.defaultdict(list)
        for vol, idx, _epoch in chunks:
            if vol not in vols:
                orphans.append((vol, idx))
            else:
                wanted[vol].append(idx)
        # The rows of what it holds, a batch at a time (not a query per
        # chunk: a server may hold millions).
        for vol, indexes in wanted.items():
            indexes.sort()
            for at in range(0, len(indexes), REGISTER_BATCH):
                batch = indexes[at:at + REGISTER_BATCH]
                rows = {r.idx: r for r in conn.execute(sa.select(
                    c.c.idx, c.c.replicas, c.c.joining).where(
                        c.c.volume_id == vol,
                        c.c.idx.between(batch[0], batch[-1]),
                        c.c.idx.in_(batch)))}
                for idx in batch:
                    crow = rows.get(idx)
                    if crow is None:
                        orphans.append((vol, idx))
                    elif sid not in split_ids(crow.replicas) + split_ids(
                            crow.joining):
                        # Dropped (maybe lost, kept for a catch-up): it
                        # serves nothing until it is a replica again.
                        stale.append((vol, idx))
        return stale, orphans

    def heartbeat(self, server_id, capacity, used, free, failure=None,
                  primaries=None, server_uuid=None):
        """A chunk server is alive; ``failure``: its data directory failed
        (why): it is marked failed and leaves every replica set.
        ``server_uuid`` (sent by servers of this release on): a heartbeat
        for an id that now names another server (its own was removed, and
        the id given again) is refused, so the server registers anew."""
        t = models.chunkservers
        with self.begin() as conn:
            row = conn.execute(sa.select(t).where(
                t.c.id == server_id)).first()
            if row is not None and server_uuid and row.uuid != server_uuid:
                raise exception.NotFound(kind='registered chunk server',
                                         name=server_id)
            if row is not None and failure is not None:
                values = dict(capacity=capacity, used=used, free=free,
                              last_seen=time.time(), state='failed')
                if row.state != 'failed':
                    values['down_since'] = time.time()
                conn.execute(t.update().where(t.c.id == server_id).values(
                    **values))
                self._failed(conn, server_id, row.address, row.port,
                             failure, row.state != 'failed', primaries)
                return
            if row is None or row.state != 'up':
                # Unknown, or marked down meanwhile: the server must
                # register again, which tells it which replicas went stale.
                raise exception.NotFound(kind='registered chunk server',
                                         name=server_id)
            conn.execute(t.update().where(t.c.id == server_id).values(
                capacity=capacity, used=used, free=free,
                last_seen=time.time()))

    def heard_from(self, timeout):
        """(servers up, how many of them sent a heartbeat within the
        last ``timeout`` s)."""
        t = models.chunkservers
        limit = time.time() - timeout
        with self.engine.connect() as conn:
            seen = [r.last_seen for r in conn.execute(
                sa.select(t.c.last_seen).where(t.c.state == 'up'))]
        return len(seen), sum(1 for at in seen if at >= limit)

    def reset_heartbeats(self):
        """At master start: judge only silence observed from now on, so a
        restart of the master drops nobody.  Returns the last heartbeat
        recorded before (None: no server up): whether the chunk servers
        were beating until now (a master restart or failover) or had all
        stopped (a cold start of the whole cluster)."""
        t = models.chunkservers
        with self.begin() as conn:
            newest = conn.execute(sa.select(sa.func.max(t.c.last_seen)).where(
                t.c.state == 'up')).scalar()
            conn.execute(t.update().where(t.c.state == 'up').values(
                last_seen=time.time()))
        return newest

    def mark_down(self, timeout, primaries=None, judged=None, drop=True):
        """Mark servers silent for more than ``timeout`` s down (the
        chunks whose primary one was are appended to ``primaries``);
        ``judged`` (server ids; None: all): only those may be (after a
        cold start the master gives the servers it has not heard yet
        longer to boot).  ``drop`` False: they are not dropped from
        their replica sets here; the caller does it a slice at a time
        (:meth:`drop_slice`), so that a server in millions of sets does
        not hold the database for minutes."""
        t = models.chunkservers
        now = time.time()
        silent = sa.and_(t.c.state == 'up', t.c.last_seen < now - timeout)
        if judged is not None:
            silent = sa.and_(silent, t.c.id.in_(sorted(judged)))
        with self.begin() as conn:
            rows = conn.execute(sa.select(
                t.c.id, t.c.address, t.c.port, t.c.last_seen).where(
                    silent)).all()
            for r in rows:
                conn.execute(t.update().where(t.c.id == r.id).values(
                    state='down', down_since=time.time()))
                if not drop:
                    LOG.warning('Chunk server %d (%s:%d) sent no heartbeat '
                                'for %d s: marked down; dropped from its '
                                'replica sets next', r.id, r.address,
                                r.port, now - r.last_seen)
                    continue
                dropped = self._drop_server_replicas(conn, r.id, primaries)
                LOG.warning('Chunk server %d (%s:%d) sent no heartbeat '
                            'for %d s: marked down and dropped from %d '
                            'replica set(s)', r.id, r.address, r.port,
                            now - r.last_seen, dropped)
        return [r.id for r in rows]

    def drop_slice(self, server_id, after=None, limit=DROP_SLICE,
                   primaries=None):
        """Drop server ``server_id``, if it is not up, from the replica
        sets of at most ``limit`` of its chunks after key ``after``
        (volume id, index; None: from the first); returns (replica sets
        it left, the key to go on after, None once every chunk was
        seen, or at once if it is up again: its memberships left are
        those of chunks nobody wrote meanwhile, its copies current)."""
        t = models.chunkservers
        with self.begin() as conn:
            state = conn.execute(sa.select(t.c.state).where(
                t.c.id == server_id)).scalar()
            if state in (None, 'up'):
                return 0, None
            return self._drop_server_replicas(
                conn, server_id, primaries, after=after, limit=limit)

    def servers_to_drop(self):
        """Servers not up that still belong to replica sets or joining
        copies (a master stopped while it dropped them, a slice at a
        time): their ids."""
        t = models.chunkservers
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(t.c.id).where(
                t.c.state != 'up',
                (t.c.chunks > 0) | (t.c.joining_chunks > 0))).scalars())

    def _failed(self, conn, server_id, address, port, failure, news=True,
                primaries=None):
        """Server ``server_id`` says its data directory failed: it leaves
        every replica set (``news``: logged, the first time; the chunks
        whose primary it was are appended to ``primaries``)."""
        dropped = self._drop_server_replicas(conn, server_id, primaries)
        if news or dropped or server_id not in self.failures:
            LOG.error('Chunk server %d (%s:%d) reports its data directory '
                      'failed (%s): marked failed and dropped from %d '
                      'replica set(s); its chunks are copied elsewhere',
                      server_id, address, port, failure, dropped)
        self.failures[server_id] = failure

    @staticmethod
    def _drop_server_replicas(conn, server_id, primaries=None, live=None,
                              after=None, limit=None):
        """A down server can take no writes: remove it from every replica
        set now (epoch + 1 each), so readers and writers stop trying it and
        its replicas are known stale when it returns; it is remembered as
        lost (its copy may serve a catch-up).  A copy it was still being
        brought up to date (joining) is abandoned.  The chunks whose
        primary it was are appended to ``primaries`` (volume id, index):
        its last write may have reached some replicas only.  ``live``
        (server ids): it stays in the chunks where none of the other
        replicas is live (its copy may be the only one left).

        Returns the replica sets it left; with ``limit``, (that, the key
        to go on after), for the chunks after ``after`` in key order, at
        most ``limit`` of them (see drop_slice)."""
        c = models.chunks
        pattern = '%%%d%%' % server_id
        query = sa.select(c).where(sa.or_(c.c.replicas.like(pattern),
                                          c.c.joining.like(pattern)))
        if after is not None:
            query = query.where(sa.tuple_(c.c.volume_id, c.c.idx) >
                                sa.tuple_(sa.literal(after[0]),
                                          sa.literal(after[1])))
        if limit is not None:
            query = query.order_by(c.c.volume_id, c.c.idx).limit(limit)
        n = 0
        counts = Tally()
        # The rows are read and written in this transaction, on the
        # master's one database thread: none changes in between, so the
        # compare-and-set of the epoch is one executemany (a server of a
        # big cluster is in millions of sets; a statement built per row
        # took 240 us a chunk).
        changes = []
        last, read = None, 0
        for row in conn.execute(query):
            last, read = (row.volume_id, row.idx), read + 1
            values = without_server(row, server_id)
            if not values or (live is not None and 'replicas' in values
                              and not set(split_ids(row.replicas)) - {
                                  server_id} & live):
                continue
            changes.append((row, values))
        for at in range(0, len(changes), DROP_BATCH):
            batch = changes[at:at + DROP_BATCH]
            params = [dict({'v': row.volume_id, 'i': row.idx,
                            'e': row.epoch, 'e1': row.epoch + 1,
                            'r': row.replicas, 'j': row.joining,
                            'l': row.lost, 's': row.resync},
                           **{_DROP_PARAM[k]: v for k, v in values.items()})
                      for row, values in batch]
            done = conn.execute(_drop_statement(), params).rowcount
            if conn.dialect.supports_sane_multi_rowcount and \
                    done != len(batch):
                raise exception.Conflict(
                    reason='chunks of server %d changed while it was '
                           'dropped from them; nothing was changed, retry'
                    % server_id)
            for row, values in batch:
                counts.change(row, values)
                n += 'replicas' in values
                if (primaries is not None and 'replicas' in values and
                        split_ids(row.replicas)[0] == server_id):
                    primaries.append((row.volume_id, row.idx))
        counts.apply(conn)
        if limit is None:
            return n
        # A full slice: more may follow.
        return n, (last if read == limit else None)

    def _set_flag(self, server_id, **flag):
        """Set a chunk server's boolean column; return its row."""
        t = models.chunkservers
        with self.begin() as conn:
            res = conn.execute(t.update().where(t.c.id == server_id).values(
                **{k: bool(v) for k, v in flag.items()}))
            if res.rowcount == 0:
                raise exception.NotFound(kind='chunk server',
                                         name=server_id)
            return conn.execute(sa.select(t).where(
                t.c.id == server_id)).first()

    def set_maintenance(self, server_id, on):
        """Mark a chunk server in maintenance (it is coming back: its
        absence starts no re-replication) or not; return it."""
        row = self._set_flag(server_id, maintenance=on)
        LOG.warning('Chunk server %d (%s:%d) %s maintenance, by %s',
                    server_id, row.address, row.port,
                    'is in' if on else 'is out of', asked())
        return self._server_dict(row)

    def set_draining(self, server_id, on):
        """Mark a chunk server draining (the planner moves its replicas
        to other servers, none is placed on it) or not; return it with
        the replicas it still holds."""
        row = self._set_flag(server_id, draining=on)
        server = self._server_dict(row)
        LOG.warning('Chunk server %d (%s:%d) %s: %d replica(s) on it, by %s',
                    server_id, row.address, row.port,
                    'is draining' if on else 'no longer drains',
                    server['chunks'], asked())
        return server

    def remove_server(self, server_id, quiet_for=0.0):
        """Forget a chunk server that is gone for good: refused while it
        runs (up, failed but still heard, or heard from within
        ``quiet_for`` seconds) and while any chunk still counts on it (a
        replica, or a copy being made); the chunks that remember it as
        lost (to bring its copy up to date, should it return) forget it.
        If it ever registers again it is a new server, and the copies its
        data directory holds are no chunk's replicas.  Returns the server
        as it was."""
        t, c = models.chunkservers, models.chunks
        with self.begin() as conn:
            row = conn.execute(sa.select(t).where(
                t.c.id == server_id).with_for_update()).first()
            if row is None:
                raise exception.NotFound(kind='chunk server',
                                         name=server_id)
            if row.state == 'up' or (row.last_seen or 0) > \
                    time.time() - quiet_for:
                raise exception.Conflict(
                    reason='chunk server %d is %s and was heard from %d s '
                    'ago: stop it first, then wait until it is marked down '
                    '(to move its replicas off before, run ursa server '
                    'drain %d --wait)' % (
                        server_id, row.state,
                        time.time() - (row.last_seen or 0), server_id))
            held, joining = row.chunks, row.joining_chunks
            forget = []
            counts = Tally()
            # Only the chunks whose lost column may name it are read.
            for r in conn.execute(sa.select(c).where(
                    c.c.lost.like('%%%d%%' % server_id))):
                lost = split_ids(r.lost)
                if server_id in lost:
                    lost.remove(server_id)
                    forget.append((r.volume_id, r.idx, join_ids(lost)))
                    counts.change(r, {'lost': join_ids(lost)})
            if held or joining:
                raise exception.Conflict(
                    reason='chunk server %d still holds %d replica(s) and '
                    '%d copy(ies) being made that no other server has '
                    'yet: wait until ursa server show %d says chunks 0 '
                    'and joining 0 (ursa cluster status shows the copies '
                    'left)' % (server_id, held, joining, server_id))
            for vol, idx, lost in forget:
                conn.execute(c.update().where(
                    c.c.volume_id == vol, c.c.idx == idx).values(lost=lost))
            counts.apply(conn)
            conn.execute(t.delete().where(t.c.id == server_id))
        self.failures.pop(server_id, None)
        LOG.warning('Chunk server %d (%s:%d, %s) removed; %d chunk(s) '
                    'forgot it; by %s', server_id, row.address, row.port,
                    row.uuid, len(forget), asked())
        return self._server_dict(row)

    def server_host(self, server_id):
        """The host of chunk server ``server_id`` (None: no such
        server): one indexed read, for the master's per-request checks."""
        t = models.chunkservers
        with self.engine.connect() as conn:
            return conn.execute(sa.select(t.c.host).where(
                t.c.id == server_id)).scalar()

    def get_server(self, server_id):
        """One chunk server, with the replicas it holds (``chunks``)
        and the copies being made on it (``joining``)."""
        t = models.chunkservers
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == server_id)).first()
        if row is None:
            raise exception.NotFound(kind='chunk server', name=server_id)
        return self._server_dict(row)

    def list_servers(self):
        t = models.chunkservers
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.id)).all()
        servers = [self._server_dict(r) for r in rows]
        for s in servers:
            if s['state'] == 'failed':
                s['failure'] = self.failures.get(s['id'], 'unknown')
        return servers
