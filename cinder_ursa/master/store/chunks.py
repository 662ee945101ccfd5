"""Chunks: the chunk map (allocation and placement), replica drops (the
epoch invariant), and the cluster status built on them."""

import collections
import logging

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from cinder_ursa.master import placement
from cinder_ursa.master.store import tally
from cinder_ursa.master.store.common import add_id
from cinder_ursa.master.store.common import asked
from cinder_ursa.master.store.common import chunk_count
from cinder_ursa.master.store.common import holds_id
from cinder_ursa.master.store.common import join_ids
from cinder_ursa.master.store.common import split_ids
from cinder_ursa.master.store.tally import Tally

# A chunk row made here (allocation), read as a row is.
Chunk = collections.namedtuple(
    'Chunk', 'volume_id idx epoch replicas joining lost resync')

LOG = logging.getLogger(__name__)

# Attempts of a compare-and-set on a chunk that others keep changing.
CAS_TRIES = 10
# Chunks of the fullest server read for each rebalancing move a round
# may plan (see repair_records).
REBALANCE_CANDIDATES = 50


def _joining_without(row, vol, idx, server_id):
    """The chunk's joining copies but ``server_id``, which must be one."""
    joining = split_ids(row.joining)
    if server_id not in joining:
        raise exception.Conflict(
            reason='chunk server %d is not joining chunk %s/%d'
            % (server_id, vol.name, idx))
    joining.remove(server_id)
    return joining


def without_server(row, server_id):
    """The column changes that take ``server_id`` out of a chunk's
    membership (none when it is not in it, or is its last replica: the
    chunk's data lives nowhere else, so it waits for that server).  A
    dropped primary may have forwarded its last write to some replicas
    only: the chunk is marked for a resync."""
    ids, joining = split_ids(row.replicas), split_ids(row.joining)
    if server_id in joining:
        joining.remove(server_id)
        return {'joining': join_ids(joining)}
    if server_id in ids and len(ids) > 1:
        values = {'replicas': join_ids([i for i in ids if i != server_id]),
                  'lost': join_ids(add_id(split_ids(row.lost), server_id))}
        if server_id == ids[0]:
            values['resync'] = True
            if joining:
                # The primary brings the joining copies up to date:
                # without it their copies stop, and the planner starts
                # them again.
                values['joining'] = ''
        return values
    return {}


class ChunkRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    def _chunk_dict(self, row, servers):
        return self._chunk_dicts([row], servers)[0]

    def _chunk_dicts(self, rows, servers):
        """:meth:`_chunk_dict` of many rows: chunks share few replica
        sets, each turned into server entries once."""
        public = {sid: self._public(s) for sid, s in servers.items()}
        sets = {}

        def members(text):
            got = sets.get(text)
            if got is None:
                got = sets[text] = [public[i] for i in split_ids(text)
                                    if i in public]
            return list(got)
        out = []
        for row in rows:
            if isinstance(row, dict):
                row = Chunk(**row)
            out.append({'index': row.idx, 'epoch': row.epoch,
                        'replicas': members(row.replicas),
                        'joining': members(row.joining)})
        return out

    def _allocate(self, conn, vol, servers, indexes):
        """Give the chunks ``indexes`` of ``vol`` (none allocated yet)
        their replica sets: one insert, the figures kept in step; returns
        the new rows as dicts."""
        # Never on a server being emptied.
        eligible = [s for s in servers.values() if not s['draining']]
        made = []
        for idx in indexes:
            ids = placement.choose(eligible, vol.replicas,
                                   self.failure_domain)
            if len(ids) < vol.min_replicas:
                raise exception.InsufficientReplicas(
                    have=len(ids), need=vol.min_replicas,
                    reason='not enough chunk servers up in distinct '
                           'failure domains (%s) to place chunk %d'
                           % (self.failure_domain, idx))
            made.append({'volume_id': vol.id, 'idx': idx, 'epoch': 1,
                         'replicas': join_ids(ids), 'joining': '',
                         'lost': '', 'resync': False})
        if made:
            conn.execute(models.chunks.insert(), made)
            counts = Tally()
            counts.goal(vol.id, vol.replicas)
            for row in made:
                counts.add(row)
            counts.apply(conn)
        return made

    @staticmethod
    def _public(s):
        return {'id': s['id'], 'address': s['address'], 'port': s['port'],
                'state': s['state']}

    def _servers(self, conn):
        t = models.chunkservers
        return {r.id: self._server_dict(r) for r in conn.execute(sa.select(t))}

    def chunk_map(self, ref, start, count, allocate=False):
        """Chunks ``start .. start+count-1`` of a volume.

        With ``allocate`` missing chunks get a replica set (thin volumes
        allocate on first write); without it they are simply absent.
        """
        c = models.chunks
        # A lookup writes nothing: no write transaction (nor term check).
        with (self.begin() if allocate else self.engine.connect()) as conn:
            vol = self._find_volume(conn, ref)
            nchunks = chunk_count(vol)
            if start < 0 or count < 0 or start + count > nchunks:
                raise exception.OutOfRange(
                    reason='chunks %d..%d of volume %s, which has %d'
                    % (start, start + count - 1, vol.name, nchunks))
            # Trashed volumes are still read (through their snapshots).
            if vol.status != 'available' and (allocate or
                                              vol.status != 'trash'):
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            rows = {r.idx: r for r in conn.execute(sa.select(c).where(
                c.c.volume_id == vol.id, c.c.idx >= start,
                c.c.idx < start + count))}
            servers = self._servers(conn)
            made = []
            if allocate and len(rows) < count:
                made = self._allocate(conn, vol, servers, [
                    i for i in range(start, start + count) if i not in rows])
                rows.update((r['idx'], r) for r in made)
            out = self._chunk_dicts(
                [rows[i] for i in range(start, start + count) if i in rows],
                servers)
        if made:
            # DEBUG: one per chunk a writer first writes (thousands per
            # volume written through); the replica set changes after are
            # INFO.
            LOG.debug('Volume %s: %d chunk(s) allocated (%s), by %s',
                      vol.name, len(made), ', '.join(
                          '%d on %s' % (r['idx'], r['replicas'])
                          for r in made[:8]) +
                      (', ...' if len(made) > 8 else ''), asked())
        return {'volume': self._volume_dict(vol), 'chunks': out}

    def drop_replica(self, ref, idx, server_id, epoch):
        """Remove ``server_id`` from a chunk's replica set (epoch + 1; it is
        then lost: its copy may serve a catch-up), or from its joining
        copies (a copy that missed a write cannot be promoted).

        Idempotent: when the server is already gone, the current state is
        returned unchanged.  ``epoch`` is the caller's, for the log only.
        """
        for _ in range(CAS_TRIES):
            with self.begin() as conn:
                vol = self._find_volume(conn, ref)
                row = self._chunk_row(conn, vol, idx)
                # Whatever the caller's epoch: a server that failed a write
                # must not stay a member without it (its epoch may be old
                # only because a join, a promotion or another drop came
                # in between).
                values = without_server(row, server_id)
                if values and not self.set_members(conn, row, values):
                    continue    # changed meanwhile: judge it again
                if values:
                    LOG.warning('Chunk %s/%d: server %d dropped, epoch %d, '
                                '%d replica(s) left, by %s', vol.name, idx,
                                server_id, row.epoch + 1,
                                len(split_ids(values.get('replicas',
                                                         row.replicas))),
                                asked())
                    row = self._chunk_row(conn, vol, idx)
                chunk = self._chunk_dict(row, self._servers(conn))
            chunk['min_replicas'] = vol.min_replicas
            return chunk
        raise exception.Conflict(
            reason='chunk %s/%d kept changing while server %d was dropped '
                   'from it; retry' % (ref, idx, server_id))

    def pending_resyncs(self):
        """[(volume id, index)] of the chunks marked for a resync (their
        primary was dropped; see without_server)."""
        c = models.chunks
        with self.engine.connect() as conn:
            return [(r.volume_id, r.idx) for r in conn.execute(
                sa.select(c.c.volume_id, c.c.idx).where(c.c.resync)).all()]

    def resync_done(self, volume_id, idx, epoch):
        """The replicas of a chunk were compared at ``epoch``: clear its
        mark, unless its membership changed since (another drop may have
        marked it again)."""
        c = models.chunks
        at = sa.and_(c.c.volume_id == volume_id, c.c.idx == idx,
                     c.c.epoch == epoch, c.c.resync)
        with self.begin() as conn:
            row = conn.execute(sa.select(c).where(at)).first()
            if row is not None:
                conn.execute(c.update().where(at).values(resync=False))
                counts = Tally()
                counts.change(row, {'resync': False})
                counts.apply(conn)

    @staticmethod
    def set_members(conn, row, values, counts=None):
        """Compare-and-set: apply ``values`` and epoch + 1 to the chunk of
        ``row`` (read in this transaction) if it is still at
        ``row.epoch``; whether it was.  The kept figures follow at once,
        or with ``counts`` (a :class:`~.tally.Tally` the caller
        applies)."""
        c = models.chunks
        res = conn.execute(c.update().where(
            c.c.volume_id == row.volume_id, c.c.idx == row.idx,
            c.c.epoch == row.epoch).values(epoch=row.epoch + 1, **values))
        if res.rowcount != 1:
            return False
        tally = counts if counts is not None else Tally()
        tally.change(row, values)
        if counts is None:
            tally.apply(conn)
        return True

    def _chunk_row(self, conn, vol, idx):
        c = models.chunks
        row = conn.execute(sa.select(c).where(
            c.c.volume_id == vol.id, c.c.idx == idx)).first()
        if row is None:
            raise exception.NotFound(kind='chunk', name='%s/%d'
                                     % (vol.name, idx))
        return row

    def chunk_members(self, ref, idx):
        """A chunk's membership as server ids: epoch, replicas (primary
        first), joining and lost."""
        with self.engine.connect() as conn:
            row = self._chunk_row(conn, self._find_volume(conn, ref), idx)
        return {'epoch': row.epoch, 'replicas': split_ids(row.replicas),
                'joining': split_ids(row.joining),
                'lost': split_ids(row.lost)}

    def _change_members(self, ref, idx, epoch, change):
        """Apply ``change(row, vol, servers)`` -> {column: value} to a
        chunk at ``epoch`` (its current one: Conflict otherwise), with
        epoch + 1; return the chunk."""
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            row = self._chunk_row(conn, vol, idx)
            if epoch != row.epoch:
                raise exception.Conflict(
                    reason='chunk %s/%d is at epoch %d, not %d; read the '
                           'chunk map again' % (vol.name, idx, row.epoch,
                                                epoch))
            servers = self._servers(conn)
            values = change(row, vol, servers)
            if not self.set_members(conn, row, values):
                raise exception.Conflict(
                    reason='chunk %s/%d changed meanwhile; read the chunk '
                           'map again' % (vol.name, idx))
            chunk = self._chunk_dict(self._chunk_row(conn, vol, idx),
                                     servers)
        chunk['min_replicas'] = vol.min_replicas
        return chunk

    def join_replica(self, ref, idx, server_id, epoch):
        """Start bringing a copy of chunk ``idx`` up to date on
        ``server_id`` (up, holding no current replica of it): from the
        new epoch on, it takes the chunk's writes, serves no reads and
        counts for no acknowledgement."""
        def change(row, vol, servers):
            s = servers.get(server_id)
            if s is None or s['state'] != 'up':
                raise exception.Conflict(
                    reason='chunk server %s is not up' % server_id)
            if server_id in split_ids(row.replicas) + split_ids(row.joining):
                raise exception.Conflict(
                    reason='chunk server %d already holds chunk %s/%d'
                    % (server_id, vol.name, idx))
            return {'joining': join_ids(split_ids(row.joining)
                                        + [server_id])}
        chunk = self._change_members(ref, idx, epoch, change)
        LOG.info('Chunk %s/%d: server %d joins (epoch %d), by %s', ref, idx,
                 server_id, chunk['epoch'], asked())
        return chunk

    def promote_replica(self, ref, idx, server_id, epoch):
        """A joining copy is up to date: it becomes a replica (the last of
        the set) and is no longer counted lost."""
        def change(row, vol, servers):
            joining = _joining_without(row, vol, idx, server_id)
            lost = split_ids(row.lost)
            if server_id in lost:
                lost.remove(server_id)
            return {'joining': join_ids(joining), 'lost': join_ids(lost),
                    'replicas': join_ids(split_ids(row.replicas)
                                         + [server_id])}
        chunk = self._change_members(ref, idx, epoch, change)
        LOG.info('Chunk %s/%d: server %d is a replica now (epoch %d, %d '
                 'replicas), by %s', ref, idx, server_id, chunk['epoch'],
                 len(chunk['replicas']), asked())
        return chunk

    def leave_replica(self, ref, idx, server_id, epoch):
        """First step of retiring a replica the chunk no longer needs (a
        move left it a copy too many): the server leaves the replica set
        for the joining copies (epoch + 1).  It serves no more reads once
        it learns that epoch, and until then it still takes every write
        (the new primary, if it was the primary, forwards them to it), so
        a reader it still answers at the old epoch never gets old data.
        :meth:`abandon_join` then takes it out.

        Refused (Conflict) unless the chunk keeps at least as many
        replicas as its volume asks for without it, and has no other
        copy being made."""
        def change(row, vol, servers):
            ids = split_ids(row.replicas)
            if server_id not in ids:
                raise exception.Conflict(
                    reason='chunk server %d is not a replica of chunk %s/%d'
                    % (server_id, vol.name, idx))
            if row.joining:
                raise exception.Conflict(
                    reason='chunk %s/%d has copies being made' % (vol.name,
                                                                   idx))
            if len(ids) - 1 < max(vol.replicas, 1):
                raise exception.Conflict(
                    reason='chunk %s/%d would keep %d of the %d replicas '
                           'its volume asks for without server %d' % (
                               vol.name, idx, len(ids) - 1, vol.replicas,
                               server_id))
            return {'replicas': join_ids([i for i in ids if i != server_id]),
                    'joining': join_ids([server_id]),
                    'lost': join_ids([i for i in split_ids(row.lost)
                                      if i != server_id])}
        chunk = self._change_members(ref, idx, epoch, change)
        LOG.info('Chunk %s/%d: server %d leaves the replica set (epoch %d), '
                 'by %s', ref, idx, server_id, chunk['epoch'], asked())
        return chunk

    def abandon_join(self, ref, idx, server_id, epoch):
        """Stop bringing a copy up to date (its catch-up failed)."""
        def change(row, vol, servers):
            return {'joining': join_ids(_joining_without(row, vol, idx,
                                                         server_id))}
        chunk = self._change_members(ref, idx, epoch, change)
        LOG.info('Chunk %s/%d: server %d no longer joins (epoch %d), by %s',
                 ref, idx, server_id, chunk['epoch'], asked())
        return chunk

    def abandon_joins(self, ref, idx, epoch):
        """Give up every copy joining the chunk (no primary is making
        them any more)."""
        def change(row, vol, servers):
            if not row.joining:
                raise exception.Conflict(
                    reason='chunk %s/%d has no joining copy' % (vol.name,
                                                                idx))
            return {'joining': ''}
        chunk = self._change_members(ref, idx, epoch, change)
        LOG.info('Chunk %s/%d: every joining copy given up (epoch %d), by %s',
                 ref, idx, chunk['epoch'], asked())
        return chunk

    def lost_copies(self):
        """[(server id, volume id, index, epoch)]: every server dropped
        from a chunk while it held a copy (see ``lost``), and the chunk's
        epoch now."""
        c, ct = models.chunks, models.chunk_tally
        with self.engine.connect() as conn:
            # The volumes with lost copies are in the kept figures: only
            # their chunks are read.
            vids = sorted(set(conn.execute(sa.select(ct.c.volume_id).where(
                ct.c.lost > 0)).scalars()))
            rows = [r for vid in vids for r in conn.execute(sa.select(
                c.c.volume_id, c.c.idx, c.c.epoch, c.c.lost).where(
                    c.c.volume_id == vid, c.c.lost != ''))]
        return [(sid, r.volume_id, r.idx, r.epoch)
                for r in rows for sid in split_ids(r.lost)]

    def forget_lost(self, ref, idx, server_ids):
        """Those servers' old copies will not serve a catch-up (they were
        replaced elsewhere, or are gone for good)."""
        c = models.chunks
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            row = self._chunk_row(conn, vol, idx)
            lost = join_ids([i for i in split_ids(row.lost)
                             if i not in server_ids])
            if lost != row.lost:
                conn.execute(c.update().where(
                    c.c.volume_id == vol.id, c.c.idx == idx).values(
                    lost=lost))
                counts = Tally()
                counts.change(row, {'lost': lost})
                counts.apply(conn)

    def repair_records(self, held=None, rebalance=0, everything=False):
        """What the repair planner reads: (chunks as dicts of server ids
        and the ``floor`` of replicas below which their writes are
        refused, {volume id: replicas it asks for}, {server id: server,
        with the replicas it holds as ``chunks``}).

        Not every chunk (``everything``: for tests and checks): the
        planner acts only on chunks whose replicas are not what their
        volume asks for or that have copies joining (their volumes are
        found in the kept figures, see store/tally.py, then their rows
        read), chunks with a replica on a draining server, and, with
        ``rebalance`` (the planner's moves per round) when the servers'
        replica counts differ, some chunks of the fullest server.  So a
        round of a healthy cluster reads no chunk row.  ``held`` (a
        dict) gets {volume id: replicas held}, from the kept figures."""
        c, ct = models.chunks, models.chunk_tally
        with self.engine.connect() as conn:
            vols = conn.execute(sa.select(
                models.volumes.c.id, models.volumes.c.replicas,
                models.volumes.c.min_replicas)).all()
            goals = {r.id: r.replicas for r in vols}
            floors = {r.id: r.min_replicas for r in vols}
            servers = self._servers(conn)
            work = set()
            for r in conn.execute(sa.select(
                    ct.c.volume_id, ct.c.replicas, ct.c.joining,
                    ct.c.chunks)):
                if held is not None:
                    held[r.volume_id] = held.get(r.volume_id, 0) + \
                        r.replicas * r.chunks
                if r.chunks and (r.joining or
                                 r.replicas != goals.get(r.volume_id)):
                    work.add(r.volume_id)
            rows = {}

            def take(query, want=lambda r: True):
                for r in conn.execute(query):
                    if want(r):
                        rows[(r.volume_id, r.idx)] = r
            if everything:
                take(sa.select(c))
            for vid in sorted(work):
                goal = goals.get(vid)
                take(sa.select(c).where(c.c.volume_id == vid),
                     lambda r, goal=goal: r.joining or len(
                         split_ids(r.replicas)) != goal)
            for sid, s in servers.items():
                if s['draining'] and s['chunks']:
                    take(sa.select(c).where(holds_id(c.c.replicas, sid)))
            pool = [s for s in servers.values() if s['state'] == 'up' and
                    not s['maintenance'] and not s['draining']]
            if rebalance and not rows and len(pool) > 1:
                full = max(pool, key=lambda s: (s['chunks'], s['id']))
                if full['chunks'] > min(s['chunks'] for s in pool) + 1:
                    # Enough for the moves of a round, whichever of
                    # them a failure domain refuses.
                    # Its own chunks only fill the LIMIT (not those of
                    # servers whose ids contain its id's digits).
                    take(sa.select(c).where(
                        holds_id(c.c.replicas, full['id'])).limit(
                            REBALANCE_CANDIDATES * rebalance))
            chunks = [{'volume_id': r.volume_id, 'index': r.idx,
                       'epoch': r.epoch, 'replicas': split_ids(r.replicas),
                       'joining': split_ids(r.joining),
                       'lost': split_ids(r.lost),
                       'floor': floors.get(r.volume_id, 1)}
                      for _, r in sorted(rows.items())]
        return chunks, goals, servers

    def cluster_status(self):
        """The cluster's figures: the chunk servers (a small table) and
        the kept counters (store/tally.py), so one read whatever the
        number of chunks and volumes."""
        servers = self.list_servers()
        with self.engine.connect() as conn:
            n = self.counters(conn)
        # Trashed volumes are deleted ones kept for their snapshots'
        # clones: not listed, not counted.
        nvol, nchunks = n[tally.VOLUMES] - n[tally.TRASH], n[tally.CHUNKS]
        provisioned = tally.provisioned_bytes(n)
        degraded, one_copy = n[tally.DEGRADED], n[tally.ONE_COPY]
        joining = n[tally.JOINING]
        up = [s for s in servers if s['state'] == 'up']
        failed = sum(s['state'] == 'failed' for s in servers)
        return {
            'servers': {'total': len(servers), 'up': len(up),
                        'down': len(servers) - len(up) - failed,
                        'failed': failed,
                        'maintenance': sum(s['maintenance']
                                           for s in servers),
                        'draining': sum(s['draining'] for s in servers)},
            'volumes': nvol,
            'trash_volumes': n[tally.TRASH],
            'chunks': nchunks,
            'degraded_chunks': degraded,
            'one_copy_chunks': one_copy,
            'joining_replicas': joining,
            'capacity_bytes': sum(s['capacity'] for s in up),
            'used_bytes': sum(s['used'] for s in up),
            'free_bytes': sum(s['free'] for s in up),
            'provisioned_bytes': int(provisioned),
            'failure_domain': self.failure_domain,
            'health': ('HEALTH_OK' if servers and not degraded
                       and len(up) == len(servers) else 'HEALTH_WARN'),
        }
