"""The master's metadata store: volumes, chunks, chunk servers, leases.

SQLAlchemy Core over any URL: ``sqlite:///path`` by default,
``mysql+pymysql://...`` or ``postgresql://...`` in production.  Methods are
synchronous and each runs in one transaction; the REST layer calls them from
a single worker thread so the event loop never blocks on the database.

Invariants kept here:

* a chunk's ``epoch`` grows by one on every change of its replica set, and
  the change is committed before anyone is told about it;
* a volume's lease ``generation`` grows by one every time a new holder
  takes the lease, so chunk servers can refuse the older writer.
"""

import collections
import json
import logging
import os
import time
import uuid

import alembic.command
import alembic.config
import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.common import db
from cinder_ursa.common import units
from cinder_ursa.master import models
from cinder_ursa.master import placement

LOG = logging.getLogger(__name__)

MIGRATIONS = os.path.join(os.path.dirname(__file__), 'migrations')


def _ids(text):
    return [int(x) for x in text.split(',') if x]


def _text(ids):
    return ','.join(str(i) for i in ids)


class MetadataStore:

    def __init__(self, url, failure_domain='host'):
        self.url = url
        self.engine = db.create_engine(url)
        self.failure_domain = failure_domain

    # --- schema ------------------------------------------------------------

    def upgrade(self):
        """Bring the schema to the newest alembic revision."""
        cfg = alembic.config.Config()
        cfg.set_main_option('script_location', MIGRATIONS)
        with self.engine.begin() as conn:
            cfg.attributes['connection'] = conn
            alembic.command.upgrade(cfg, 'head')

    def schema_version(self):
        with self.engine.connect() as conn:
            try:
                return conn.execute(sa.text(
                    'SELECT version_num FROM alembic_version')).scalar()
            except sa.exc.DatabaseError:
                return None

    def close(self):
        self.engine.dispose()

    # --- chunk servers -----------------------------------------------------

    @staticmethod
    def _server_dict(row):
        return {'id': row.id, 'uuid': row.uuid, 'host': row.host,
                'rack': row.rack, 'address': row.address, 'port': row.port,
                'capacity': row.capacity, 'used': row.used, 'free': row.free,
                'state': row.state, 'last_seen': row.last_seen}

    def register_server(self, server_uuid, host, rack, address, port,
                        capacity, used, free, chunks=()):
        """Add or update a chunk server; classify the chunks it reports.

        Returns ``(server, stale, orphans, generations, snapseqs,
        snapshots)``: ``stale`` are (volume, index) it holds but is no
        longer a replica of, ``orphans`` belong to no known volume or chunk,
        the next two map volume ids to their lease generation and snapshot
        sequence, the last maps the volumes it holds to (snapshot sequence,
        live snapshot sequences) so it frees what deleted snapshots left.
        """
        now = time.time()
        t = models.chunkservers
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t).where(
                t.c.uuid == server_uuid)).first()
            values = dict(host=host, rack=rack, address=address, port=port,
                          capacity=capacity, used=used, free=free,
                          state='up', last_seen=now)
            if row is None:
                res = conn.execute(t.insert().values(
                    uuid=server_uuid, created_at=now, **values))
                sid = res.inserted_primary_key[0]
                LOG.info('Chunk server %s (%s:%d, host %s) joined as id %d',
                         server_uuid, address, port, host, sid)
            else:
                sid = row.id
                conn.execute(t.update().where(t.c.id == sid).values(**values))
                if row.state != 'up':
                    LOG.info('Chunk server %d (%s:%d) is up again', sid,
                             address, port)
            server = self._server_dict(conn.execute(
                sa.select(t).where(t.c.id == sid)).first())
            stale, orphans = [], []
            c = models.chunks
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
            for vol, idx, _epoch in chunks:
                if vol not in vols:
                    orphans.append((vol, idx))
                    continue
                crow = conn.execute(sa.select(c).where(
                    c.c.volume_id == vol, c.c.idx == idx)).first()
                if crow is None:
                    orphans.append((vol, idx))
                elif sid not in _ids(crow.replicas):
                    stale.append((vol, idx))
            gens = {v: g for v, g in vols.items() if g}
        return server, stale, orphans, gens, seqs, snaps

    def heartbeat(self, server_id, capacity, used, free):
        t = models.chunkservers
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t.c.state).where(
                t.c.id == server_id)).first()
            if row is None or row.state != 'up':
                # Unknown, or marked down meanwhile: the server must
                # register again, which tells it which replicas went stale.
                raise exception.NotFound(kind='registered chunk server',
                                         name=server_id)
            conn.execute(t.update().where(t.c.id == server_id).values(
                capacity=capacity, used=used, free=free,
                last_seen=time.time()))

    def reset_heartbeats(self):
        """At master start: judge only silence observed from now on, so a
        restart of the master (or of the whole cluster) drops nobody."""
        t = models.chunkservers
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.state == 'up').values(
                last_seen=time.time()))

    def mark_down(self, timeout):
        """Mark servers silent for more than ``timeout`` s down."""
        t = models.chunkservers
        limit = time.time() - timeout
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.address, t.c.port).where(
                t.c.state == 'up', t.c.last_seen < limit)).all()
            for r in rows:
                conn.execute(t.update().where(t.c.id == r.id).values(
                    state='down'))
                dropped = self._drop_server_replicas(conn, r.id)
                LOG.warning('Chunk server %d (%s:%d) missed its heartbeats '
                            'for %d s: marked down and dropped from %d '
                            'replica set(s)', r.id, r.address, r.port,
                            timeout, dropped)
        return [r.id for r in rows]

    @staticmethod
    def _drop_server_replicas(conn, server_id):
        """A down server can take no writes: remove it from every replica
        set now (epoch + 1 each), so readers and writers stop trying it and
        its replicas are known stale when it returns."""
        c = models.chunks
        pattern = '%%%d%%' % server_id
        n = 0
        for row in conn.execute(sa.select(c).where(
                c.c.replicas.like(pattern))).all():
            ids = _ids(row.replicas)
            if server_id not in ids or len(ids) == 1:
                continue
            ids.remove(server_id)
            conn.execute(c.update().where(
                c.c.volume_id == row.volume_id, c.c.idx == row.idx,
                c.c.epoch == row.epoch).values(replicas=_text(ids),
                                               epoch=row.epoch + 1))
            n += 1
        return n

    def list_servers(self):
        t = models.chunkservers
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.id)).all()
        servers = [self._server_dict(r) for r in rows]
        counts = self._replica_counts()
        for s in servers:
            s['chunks'] = counts.get(s['id'], 0)
        return servers

    def _replica_counts(self):
        counts = {}
        with self.engine.connect() as conn:
            for (replicas,) in conn.execute(
                    sa.select(models.chunks.c.replicas)):
                for sid in _ids(replicas):
                    counts[sid] = counts.get(sid, 0) + 1
        return counts

    # --- volumes -----------------------------------------------------------

    @staticmethod
    def _volume_dict(row):
        return {'id': row.id, 'name': row.name, 'size': row.size,
                'chunk_size': row.chunk_size, 'stripe_unit': row.stripe_unit,
                'stripe_count': row.stripe_count, 'replicas': row.replicas,
                'min_replicas': row.min_replicas, 'status': row.status,
                'created_at': row.created_at, 'snap_seq': row.snap_seq,
                'parent_snapshot_id': row.parent_snapshot_id,
                'qos': json.loads(row.qos) if row.qos else {},
                'multiattach': bool(row.multiattach),
                'lease': {'holder': row.lease_holder,
                          'generation': row.lease_generation,
                          'expires_at': row.lease_expires}}

    def create_volume(self, name, size, replicas=3, min_replicas=2,
                      chunk_size=64 * units.Mi, stripe_unit=None,
                      stripe_count=1, parent=None, qos=None,
                      multiattach=False):
        """Create a thin volume; with ``parent`` (a snapshot id) a clone
        that reads the snapshot's blocks until it writes its own."""
        qos = validate_qos(qos or {})
        stripe_unit = stripe_unit or chunk_size
        _validate_volume(name, size, replicas, min_replicas, chunk_size,
                         stripe_unit, stripe_count)
        t = models.volumes
        vid = str(uuid.uuid4())
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.c.id).where(t.c.name == name)).first():
                raise exception.AlreadyExists(kind='volume', name=name)
            if parent is not None:
                snap = self._find_snapshot(conn, parent)
                if snap.status != 'available':
                    raise exception.Conflict(
                        reason='snapshot %s is %s; clone an available '
                               'snapshot' % (snap.name, snap.status))
                pvol = conn.execute(sa.select(t).where(
                    t.c.id == snap.volume_id)).first()
                if size < snap.size:
                    raise exception.InvalidArgument(
                        reason='a clone must be at least as large as its '
                               'snapshot (%d bytes)' % snap.size)
                # Same geometry as the parent: block b of the clone is
                # block b of the snapshot, chunk for chunk.
                chunk_size, stripe_unit, stripe_count = (
                    pvol.chunk_size, pvol.stripe_unit, pvol.stripe_count)
                parent = snap.id
            conn.execute(t.insert().values(
                id=vid, name=name, size=size, chunk_size=chunk_size,
                stripe_unit=stripe_unit, stripe_count=stripe_count,
                replicas=replicas, min_replicas=min_replicas,
                status='available', created_at=time.time(),
                lease_holder=None, lease_generation=0, lease_expires=0,
                snap_seq=0, parent_snapshot_id=parent,
                qos=json.dumps(qos) if qos else None,
                multiattach=bool(multiattach)))
        LOG.info('Volume %s (%s) created, %s, %d replicas%s', name, vid,
                 units.format_size(size), replicas,
                 ', clone of snapshot %s' % parent if parent else '')
        return self.get_volume(vid)

    def _find_volume(self, conn, ref):
        t = models.volumes
        row = conn.execute(sa.select(t).where(t.c.id == ref)).first()
        if row is None:
            row = conn.execute(sa.select(t).where(t.c.name == ref)).first()
        if row is None:
            raise exception.NotFound(kind='volume', name=ref)
        return row

    def get_volume(self, ref):
        with self.engine.connect() as conn:
            row = self._find_volume(conn, ref)
            vol = self._volume_dict(row)
            vol['allocated_chunks'] = conn.execute(
                sa.select(sa.func.count()).select_from(models.chunks).where(
                    models.chunks.c.volume_id == row.id)).scalar()
            vol['snapshots'] = conn.execute(
                sa.select(sa.func.count()).select_from(models.snapshots)
                .where(models.snapshots.c.volume_id == row.id,
                       models.snapshots.c.status != 'trash')).scalar()
            vol['parent'] = self._parent(conn, row.parent_snapshot_id)
        return vol

    def _parent(self, conn, snapshot_id):
        """The snapshot a clone (or a clone's snapshot) reads through."""
        if snapshot_id is None:
            return None
        snap = conn.execute(sa.select(models.snapshots).where(
            models.snapshots.c.id == snapshot_id)).first()
        pvol = conn.execute(sa.select(models.volumes).where(
            models.volumes.c.id == snap.volume_id)).first()
        return {'snapshot_id': snap.id, 'snapshot_name': snap.name,
                'volume_id': pvol.id, 'volume_name': pvol.name,
                'seq': snap.seq, 'size': snap.size}

    def list_volumes(self):
        t = models.volumes
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.status != 'trash')
                                .order_by(t.c.name)).all()
            counts = dict(conn.execute(
                sa.select(models.chunks.c.volume_id, sa.func.count())
                .group_by(models.chunks.c.volume_id)).all())
        out = []
        for r in rows:
            v = self._volume_dict(r)
            v['allocated_chunks'] = counts.get(r.id, 0)
            out.append(v)
        return out

    def begin_delete(self, ref):
        """Delete a volume: returns (volume, action) where action is
        'delete' (the caller tells the chunk servers, then calls
        finish_delete) or 'trash' (its deleted snapshots still have clones:
        the volume is hidden and goes when they do)."""
        t = models.volumes
        s = models.snapshots
        with self.engine.begin() as conn:
            row = self._find_volume(conn, ref)
            now = time.time()
            if (row.lease_holder and row.lease_expires > now
                    and row.status not in ('deleting', 'trash')):
                raise exception.Conflict(
                    reason='volume %s is open for writing by %s; close it '
                           'first' % (row.name, row.lease_holder))
            hosts = [r.host for r in conn.execute(sa.select(
                models.attachments.c.host).where(
                models.attachments.c.volume_id == row.id))]
            if hosts:
                raise exception.Conflict(
                    reason='volume %s is attached to %s; detach it first'
                    % (row.name, ', '.join(hosts)))
            snaps = conn.execute(sa.select(s.c.name, s.c.status).where(
                s.c.volume_id == row.id)).all()
            live = [n for n, st in snaps if st != 'trash']
            if live:
                raise exception.Conflict(
                    reason='volume %s has %d snapshot(s) (%s); delete them '
                           'first' % (row.name, len(live),
                                      ', '.join(sorted(live)[:5])))
            if snaps:
                conn.execute(t.update().where(t.c.id == row.id).values(
                    status='trash', name=_trash_name(row.id)))
                LOG.info('Volume %s moved to the trash: clones of its '
                         'deleted snapshots still read it', row.name)
                return self._volume_dict(row), 'trash'
            conn.execute(t.update().where(t.c.id == row.id).values(
                status='deleting'))
        return self._volume_dict(row), 'delete'

    def finish_delete(self, vid):
        with self.engine.begin() as conn:
            conn.execute(models.chunks.delete().where(
                models.chunks.c.volume_id == vid))
            conn.execute(models.volumes.delete().where(
                models.volumes.c.id == vid))
        LOG.info('Volume %s deleted', vid)

    # --- snapshots -----------------------------------------------------------

    @staticmethod
    def _snapshot_dict(row, vol=None):
        d = {'id': row.id, 'name': row.name, 'volume_id': row.volume_id,
             'seq': row.seq, 'size': row.size, 'status': row.status,
             'parent_snapshot_id': row.parent_snapshot_id,
             'created_at': row.created_at}
        if vol is not None:
            d.update(volume_name=vol.name, chunk_size=vol.chunk_size,
                     stripe_unit=vol.stripe_unit,
                     stripe_count=vol.stripe_count)
        return d

    def _find_snapshot(self, conn, ref, volume=None):
        """A snapshot by id, by ``volume@name``, or by name in ``volume``."""
        s = models.snapshots
        row = conn.execute(sa.select(s).where(s.c.id == ref)).first()
        if row is None:
            if volume is None and '@' in ref:
                volume, ref = ref.rsplit('@', 1)
            if volume is not None:
                vol = self._find_volume(conn, volume)
                row = conn.execute(sa.select(s).where(
                    s.c.volume_id == vol.id, s.c.name == ref)).first()
        if row is None:
            raise exception.NotFound(kind='snapshot', name=ref)
        return row

    def update_volume(self, ref, name=None, qos=None, multiattach=None):
        """Rename a volume (``manage_existing`` does) and/or replace its
        QoS limits (retype does; open clients adopt them with their next
        lease renewal)."""
        t = models.volumes
        values = {}
        if qos is not None:
            qos = validate_qos(qos)
            values['qos'] = json.dumps(qos) if qos else None
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if name is not None:
                _validate_volume(name, vol.size, vol.replicas,
                                 vol.min_replicas, vol.chunk_size,
                                 vol.stripe_unit, vol.stripe_count)
                if name != vol.name and conn.execute(sa.select(t.c.id).where(
                        t.c.name == name)).first():
                    raise exception.AlreadyExists(kind='volume', name=name)
                values['name'] = name
            if multiattach is not None and bool(multiattach) != bool(
                    vol.multiattach):
                if (vol.lease_holder and vol.lease_expires > time.time()) \
                        or conn.execute(sa.select(
                            models.attachments.c.host).where(
                            models.attachments.c.volume_id ==
                            vol.id)).first():
                    raise exception.Conflict(
                        reason='volume %s is open or attached: detach it '
                               'before changing multiattach' % vol.name)
                values['multiattach'] = bool(multiattach)
            if values:
                conn.execute(t.update().where(t.c.id == vol.id).values(
                    **values))
        if name is not None and name != vol.name:
            LOG.info('Volume %s renamed to %s', vol.name, name)
        if qos is not None:
            LOG.info('Volume %s QoS limits: %s', name or vol.name,
                     qos or 'none')
        return self.get_volume(vol.id)

    def rename_snapshot(self, ref, name):
        s = models.snapshots
        _validate_snapshot_name(name)
        with self.engine.begin() as conn:
            row = self._find_snapshot(conn, ref)
            if row.status == 'trash':
                raise exception.NotFound(kind='snapshot', name=ref)
            if name != row.name and conn.execute(sa.select(s.c.id).where(
                    s.c.volume_id == row.volume_id,
                    s.c.name == name)).first():
                raise exception.AlreadyExists(kind='snapshot', name=name)
            conn.execute(s.update().where(s.c.id == row.id).values(
                name=name))
        LOG.info('Snapshot %s renamed to %s', row.name, name)
        return self.get_snapshot(row.id)

    def get_snapshot(self, ref, volume=None):
        with self.engine.connect() as conn:
            row = self._find_snapshot(conn, ref, volume)
            vol = conn.execute(sa.select(models.volumes).where(
                models.volumes.c.id == row.volume_id)).first()
            snap = self._snapshot_dict(row, vol)
            snap['parent'] = self._parent(conn, row.parent_snapshot_id)
            snap['clones'] = [r.name for r in conn.execute(
                sa.select(models.volumes.c.name).where(
                    models.volumes.c.parent_snapshot_id == row.id,
                    models.volumes.c.status != 'trash'))]
        return snap

    def list_snapshots(self, volume=None):
        s = models.snapshots
        v = models.volumes
        with self.engine.connect() as conn:
            q = sa.select(s, v.c.name.label('volume_name')).join(
                v, v.c.id == s.c.volume_id).where(s.c.status != 'trash')
            if volume is not None:
                q = q.where(s.c.volume_id == self._find_volume(
                    conn, volume).id)
            rows = conn.execute(q.order_by(v.c.name, s.c.seq)).all()
        out = []
        for r in rows:
            d = self._snapshot_dict(r)
            d['volume_name'] = r.volume_name
            out.append(d)
        return out

    def begin_snapshot(self, ref, name):
        """Take the next snapshot sequence of a volume (committed first) and
        record the snapshot as 'creating'."""
        t = models.volumes
        s = models.snapshots
        _validate_snapshot_name(name)
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.status != 'available':
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            if conn.execute(sa.select(s.c.id).where(
                    s.c.volume_id == vol.id, s.c.name == name)).first():
                raise exception.AlreadyExists(kind='snapshot',
                                              name='%s@%s' % (vol.name, name))
            seq = vol.snap_seq + 1
            conn.execute(t.update().where(t.c.id == vol.id).values(
                snap_seq=seq))
            sid = str(uuid.uuid4())
            conn.execute(s.insert().values(
                id=sid, name=name, volume_id=vol.id, seq=seq, size=vol.size,
                parent_snapshot_id=vol.parent_snapshot_id, status='creating',
                created_at=time.time()))
        return {'id': sid, 'volume_id': vol.id, 'seq': seq}

    def finish_snapshot(self, sid, ok):
        """Make a snapshot available, or forget a failed one; return the
        snapshot (None when forgotten)."""
        s = models.snapshots
        with self.engine.begin() as conn:
            if not ok:
                conn.execute(s.delete().where(s.c.id == sid))
                return None
            conn.execute(s.update().where(s.c.id == sid).values(
                status='available'))
        snap = self.get_snapshot(sid)
        LOG.info('Snapshot %s@%s created (sequence %d)', snap['volume_name'],
                 snap['name'], snap['seq'])
        return snap

    def live_seqs(self, volume_id):
        """(snapshot sequence of a volume, sequences of its snapshots that
        may still be read: trashed ones too, their clones read them), read
        together: the list is complete up to that sequence."""
        s = models.snapshots
        with self.engine.begin() as conn:
            seq = conn.execute(sa.select(models.volumes.c.snap_seq).where(
                models.volumes.c.id == volume_id)).scalar()
            if seq is None:
                raise exception.NotFound(kind='volume', name=volume_id)
            return seq, [r.seq for r in conn.execute(
                sa.select(s.c.seq).where(s.c.volume_id == volume_id))]

    def inventory(self):
        """Every volume (trashed ones too) with its snapshots (every
        status) and chunk replica sets, and every chunk server."""
        v, s, c = models.volumes, models.snapshots, models.chunks
        with self.engine.connect() as conn:
            vols = {r.id: {'id': r.id, 'name': r.name, 'status': r.status,
                           'snap_seq': r.snap_seq, 'replicas': r.replicas,
                           'snapshots': [], 'chunks': {}}
                    for r in conn.execute(sa.select(v))}
            for r in conn.execute(sa.select(s).order_by(s.c.seq)):
                if r.volume_id in vols:
                    vols[r.volume_id]['snapshots'].append({
                        'id': r.id, 'name': r.name, 'seq': r.seq,
                        'status': r.status, 'created_at': r.created_at})
            for r in conn.execute(sa.select(c)):
                if r.volume_id in vols:
                    vols[r.volume_id]['chunks'][str(r.idx)] = _ids(
                        r.replicas)
            servers = [self._public(self._server_dict(r))
                       for r in conn.execute(sa.select(
                           models.chunkservers))]
        return {'volumes': list(vols.values()), 'chunkservers': servers,
                'now': time.time()}

    def forget_unfinished_snapshots(self, older_than):
        """Forget snapshots left 'creating' for more than ``older_than``
        seconds (their master died mid-way); return their volume ids."""
        s = models.snapshots
        limit = time.time() - older_than
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(s).where(
                s.c.status == 'creating', s.c.created_at < limit)).all()
            for r in rows:
                conn.execute(s.delete().where(s.c.id == r.id))
                LOG.warning('Snapshot %s (sequence %d of volume %s) was never '
                            'finished: forgotten', r.name, r.seq, r.volume_id)
        return sorted({r.volume_id for r in rows})

    def delete_snapshot(self, ref):
        """Delete a snapshot; one that clones still read goes to the trash
        (hidden, kept until its last clone is deleted or flattened).
        Returns (snapshot, 'deleted' | 'trash')."""
        s = models.snapshots
        with self.engine.begin() as conn:
            row = self._find_snapshot(conn, ref)
            if row.status == 'creating':
                raise exception.Conflict(reason='snapshot %s is still being '
                                         'created' % row.name)
            if self._children(conn, row.id):
                conn.execute(s.update().where(s.c.id == row.id).values(
                    status='trash', name=_trash_name(row.id)))
                LOG.info('Snapshot %s moved to the trash: clones still read '
                         'it', row.name)
                return self._snapshot_dict(row), 'trash'
            conn.execute(s.delete().where(s.c.id == row.id))
        LOG.info('Snapshot %s (sequence %d of volume %s) deleted', row.name,
                 row.seq, row.volume_id)
        return self._snapshot_dict(row), 'deleted'

    @staticmethod
    def _children(conn, sid):
        v, s = models.volumes, models.snapshots
        n = conn.execute(sa.select(sa.func.count()).select_from(v).where(
            v.c.parent_snapshot_id == sid)).scalar()
        n += conn.execute(sa.select(sa.func.count()).select_from(s).where(
            s.c.parent_snapshot_id == sid)).scalar()
        return n

    def reap(self):
        """One step of emptying the trash: returns ('snapshot', row dict)
        for a trashed snapshot nobody reads any more (its row is gone; the
        caller frees its blocks), ('volume', volume) for a trashed volume
        without snapshots (marked deleting; the caller deletes its chunks
        and calls finish_delete), or None."""
        v, s = models.volumes, models.snapshots
        with self.engine.begin() as conn:
            for row in conn.execute(sa.select(s).where(s.c.status == 'trash')):
                if not self._children(conn, row.id):
                    conn.execute(s.delete().where(s.c.id == row.id))
                    LOG.info('Trashed snapshot %s (sequence %d of volume %s) '
                             'has no clones left: deleted', row.id, row.seq,
                             row.volume_id)
                    return 'snapshot', self._snapshot_dict(row)
            for row in conn.execute(sa.select(v).where(v.c.status == 'trash')):
                n = conn.execute(sa.select(sa.func.count()).select_from(s)
                                 .where(s.c.volume_id == row.id)).scalar()
                if not n:
                    conn.execute(v.update().where(v.c.id == row.id).values(
                        status='deleting'))
                    return 'volume', self._volume_dict(row)
        return None

    def detach_parent(self, ref):
        """A flattened clone stops reading its parent (its snapshots still
        do)."""
        t = models.volumes
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.parent_snapshot_id is None:
                raise exception.InvalidArgument(
                    reason='volume %s is not a clone' % vol.name)
            conn.execute(t.update().where(t.c.id == vol.id).values(
                parent_snapshot_id=None))
        LOG.info('Volume %s flattened: detached from snapshot %s', vol.name,
                 vol.parent_snapshot_id)
        return self.get_volume(vol.id)

    def begin_revert(self, ref, snapshot):
        """Mark a volume reverting to one of its snapshots; returns
        (volume, snapshot seq).  The volume stays 'reverting' (it cannot be
        opened) until finish_revert: a failed revert is simply retried."""
        t = models.volumes
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            snap = self._find_snapshot(conn, snapshot, vol.id)
            if snap.volume_id != vol.id:
                raise exception.InvalidArgument(
                    reason='snapshot %s belongs to another volume' % snapshot)
            if snap.status != 'available':
                raise exception.Conflict(reason='snapshot %s is %s'
                                         % (snap.name, snap.status))
            if vol.status not in ('available', 'reverting'):
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            if vol.lease_holder and vol.lease_expires > time.time():
                raise exception.Conflict(
                    reason='volume %s is open for writing by %s; close it '
                           'before reverting' % (vol.name, vol.lease_holder))
            conn.execute(t.update().where(t.c.id == vol.id).values(
                status='reverting'))
        return self._volume_dict(vol), snap.seq

    def finish_revert(self, vid):
        t = models.volumes
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == vid).values(
                status='available'))

    def resize(self, ref, size, force=False):
        """Change a volume's size: growing is always allowed; shrinking
        only with ``force`` (the caller zeroed the tail first)."""
        t = models.volumes
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.status != 'available':
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            _validate_volume(vol.name, size, vol.replicas, vol.min_replicas,
                             vol.chunk_size, vol.stripe_unit,
                             vol.stripe_count)
            if size < vol.size and not force:
                raise exception.InvalidArgument(
                    reason='shrinking volume %s from %d to %d bytes loses '
                           'data; pass force to do it anyway'
                           % (vol.name, vol.size, size))
            conn.execute(t.update().where(t.c.id == vol.id).values(
                size=size))
        LOG.info('Volume %s resized from %s to %s', vol.name,
                 units.format_size(vol.size), units.format_size(size))
        return self.get_volume(vol.id)

    # --- chunks ------------------------------------------------------------

    def _chunk_dict(self, row, servers):
        ids = _ids(row.replicas)
        return {'index': row.idx, 'epoch': row.epoch,
                'replicas': [self._public(servers[i]) for i in ids
                             if i in servers]}

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
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            nchunks = _chunk_count(vol)
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
            out = []
            for idx in range(start, start + count):
                row = rows.get(idx)
                if row is None and allocate:
                    ids = placement.choose(list(servers.values()),
                                           vol.replicas, self.failure_domain)
                    if len(ids) < vol.min_replicas:
                        raise exception.InsufficientReplicas(
                            have=len(ids), need=vol.min_replicas,
                            reason='not enough chunk servers up in distinct '
                                   'failure domains (%s) to place chunk %d'
                                   % (self.failure_domain, idx))
                    conn.execute(c.insert().values(
                        volume_id=vol.id, idx=idx, epoch=1,
                        replicas=_text(ids)))
                    row = conn.execute(sa.select(c).where(
                        c.c.volume_id == vol.id, c.c.idx == idx)).first()
                if row is not None:
                    out.append(self._chunk_dict(row, servers))
        return {'volume': self._volume_dict(vol), 'chunks': out}

    def drop_replica(self, ref, idx, server_id, epoch):
        """Remove ``server_id`` from a chunk's replica set (epoch + 1).

        Idempotent: when the server is already gone, or the caller's epoch
        is older than the chunk's, the current state is returned unchanged.
        """
        c = models.chunks
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            row = conn.execute(sa.select(c).where(
                c.c.volume_id == vol.id, c.c.idx == idx)).first()
            if row is None:
                raise exception.NotFound(kind='chunk', name='%s/%d'
                                         % (vol.name, idx))
            ids = _ids(row.replicas)
            # The last replica is never dropped: the chunk's data lives
            # nowhere else, so it waits for that server to return.
            if server_id in ids and epoch >= row.epoch and len(ids) > 1:
                ids.remove(server_id)
                conn.execute(c.update().where(
                    c.c.volume_id == vol.id, c.c.idx == idx).values(
                    replicas=_text(ids), epoch=row.epoch + 1))
                LOG.warning('Chunk %s/%d: replica on server %d dropped, '
                            'epoch %d, %d replica(s) left', vol.name, idx,
                            server_id, row.epoch + 1, len(ids))
                row = conn.execute(sa.select(c).where(
                    c.c.volume_id == vol.id, c.c.idx == idx)).first()
            chunk = self._chunk_dict(row, self._servers(conn))
        chunk['min_replicas'] = vol.min_replicas
        return chunk

    # --- leases ------------------------------------------------------------

    def _join_shared(self, conn, vol, holder, ttl, now, renew=False):
        """Multiattach: writers share one generation while any of them
        holds the lease; the first after a gap (or a revoke) starts a new
        one."""
        t, sl = models.volumes, models.shared_leases
        conn.execute(sl.delete().where(sl.c.volume_id == vol.id,
                                       sl.c.expires <= now))
        others = conn.execute(sa.select(sl.c.holder).where(
            sl.c.volume_id == vol.id, sl.c.holder != holder)).all()
        gen = vol.lease_generation
        if not renew and not others and not (vol.lease_holder == SHARED and
                                             vol.lease_expires > now):
            gen += 1
        conn.execute(sl.delete().where(sl.c.volume_id == vol.id,
                                       sl.c.holder == holder))
        conn.execute(sl.insert().values(volume_id=vol.id, holder=holder,
                                        expires=now + ttl))
        conn.execute(t.update().where(t.c.id == vol.id).values(
            lease_holder=SHARED, lease_generation=gen,
            lease_expires=max(vol.lease_expires, now + ttl)))
        return gen

    def acquire_lease(self, ref, holder, ttl, force=False):
        """Take the write lease; a new holder gets generation + 1
        (multiattach volumes: writers share it)."""
        t = models.volumes
        now = time.time()
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.status != 'available':
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            self._check_host_not_fenced(conn, holder)
            if vol.multiattach:
                gen = self._join_shared(conn, vol, holder, ttl, now)
                LOG.info('Volume %s: %s shares lease generation %d',
                         vol.name, holder, gen)
                return {'volume_id': vol.id, 'holder': holder,
                        'generation': gen, 'expires_at': now + ttl,
                        'ttl': ttl}
            held = vol.lease_holder and vol.lease_expires > now
            if held and vol.lease_holder != holder and not force:
                raise exception.LeaseHeld(
                    volume=vol.name, holder=vol.lease_holder,
                    expires=time.strftime('%H:%M:%S', time.localtime(
                        vol.lease_expires)))
            gen = vol.lease_generation + 1
            conn.execute(t.update().where(t.c.id == vol.id).values(
                lease_holder=holder, lease_generation=gen,
                lease_expires=now + ttl))
        LOG.info('Volume %s: lease generation %d to %s%s', vol.name, gen,
                 holder, ' (forced)' if held and force else '')
        return {'volume_id': vol.id, 'holder': holder, 'generation': gen,
                'expires_at': now + ttl, 'ttl': ttl}

    def renew_lease(self, ref, holder, generation, ttl):
        t = models.volumes
        now = time.time()
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.multiattach and vol.lease_generation == generation:
                self._join_shared(conn, vol, holder, ttl, now, renew=True)
                return {'volume_id': vol.id, 'holder': holder,
                        'generation': generation, 'expires_at': now + ttl,
                        'ttl': ttl,
                        'qos': json.loads(vol.qos) if vol.qos else {}}
            if (vol.lease_holder != holder
                    or vol.lease_generation != generation):
                raise exception.Fenced(
                    reason='lease generation %d of volume %s was replaced '
                           'by generation %d (%s)' % (
                               generation, vol.name, vol.lease_generation,
                               vol.lease_holder))
            conn.execute(t.update().where(t.c.id == vol.id).values(
                lease_expires=now + ttl))
        # The holder learns changed QoS limits with each renewal.
        return {'volume_id': vol.id, 'holder': holder,
                'generation': generation, 'expires_at': now + ttl, 'ttl': ttl,
                'qos': json.loads(vol.qos) if vol.qos else {}}

    def release_lease(self, ref, holder, generation):
        t, sl = models.volumes, models.shared_leases
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.multiattach and vol.lease_generation == generation:
                conn.execute(sl.delete().where(sl.c.volume_id == vol.id,
                                               sl.c.holder == holder))
                left = conn.execute(sa.select(sl.c.holder).where(
                    sl.c.volume_id == vol.id,
                    sl.c.expires > time.time())).first()
                if left is None:
                    conn.execute(t.update().where(t.c.id == vol.id).values(
                        lease_holder=None, lease_expires=0))
                return
            if (vol.lease_holder == holder
                    and vol.lease_generation == generation):
                conn.execute(t.update().where(t.c.id == vol.id).values(
                    lease_holder=None, lease_expires=0))

    # --- attachments ----------------------------------------------------

    @staticmethod
    def _attachment_dict(row, name):
        return {'volume_id': row.volume_id, 'volume_name': name,
                'host': row.host, 'status': row.status, 'path': row.path,
                'error': row.error, 'created_at': row.created_at}

    def attach(self, ref, host):
        """Ask ``host``'s gateway to expose a volume (idempotent: an
        existing attachment of that host is returned as it is)."""
        a = models.attachments
        if not isinstance(host, str) or not host or len(host) > 255:
            raise exception.InvalidArgument(
                reason='host must be 1 to 255 characters')
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.status != 'available':
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            self._check_host_not_fenced(conn, '@' + host)
            rows = conn.execute(sa.select(a).where(
                a.c.volume_id == vol.id)).all()
            mine = [r for r in rows if r.host == host]
            if mine and mine[0].status != 'detaching':
                return self._attachment_dict(mine[0], vol.name)
            others = [r.host for r in rows if r.host != host]
            if others and not vol.multiattach:
                raise exception.Conflict(
                    reason='volume %s is attached to %s; detach it there '
                           'first' % (vol.name, ', '.join(others)))
            if mine:
                conn.execute(a.update().where(
                    a.c.volume_id == vol.id, a.c.host == host).values(
                    status='attaching', path=None, error=None))
            else:
                conn.execute(a.insert().values(
                    volume_id=vol.id, host=host, status='attaching',
                    created_at=time.time()))
        LOG.info('Volume %s: attaching to host %s', vol.name, host)
        return self.get_attachment(vol.id, host)

    def get_attachment(self, ref, host):
        a = models.attachments
        with self.engine.connect() as conn:
            vol = self._find_volume(conn, ref)
            row = conn.execute(sa.select(a).where(
                a.c.volume_id == vol.id, a.c.host == host)).first()
        if row is None:
            raise exception.NotFound(kind='attachment',
                                     name='%s on %s' % (vol.name, host))
        return self._attachment_dict(row, vol.name)

    def list_attachments(self, host=None, ref=None):
        a, v = models.attachments, models.volumes
        with self.engine.connect() as conn:
            q = sa.select(a, v.c.name).join(v, v.c.id == a.c.volume_id)
            if host is not None:
                q = q.where(a.c.host == host)
            if ref is not None:
                q = q.where(a.c.volume_id == self._find_volume(conn, ref).id)
            return [self._attachment_dict(r, r.name)
                    for r in conn.execute(q.order_by(v.c.name))]

    def update_attachment(self, ref, host, status, path=None, error=None):
        """The gateway reports; the driver asks for 'detaching'."""
        a = models.attachments
        if status not in ('attached', 'error', 'detaching'):
            raise exception.InvalidArgument(
                reason='status must be attached, error or detaching')
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            res = conn.execute(a.update().where(
                a.c.volume_id == vol.id, a.c.host == host).values(
                status=status, path=path, error=error))
            if not res.rowcount:
                raise exception.NotFound(kind='attachment',
                                         name='%s on %s' % (vol.name, host))
        LOG.info('Volume %s on host %s: %s%s', vol.name, host, status,
                 ' (%s)' % (path or error) if path or error else '')
        return self.get_attachment(vol.id, host)

    def detach(self, ref, host):
        a = models.attachments
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            conn.execute(a.delete().where(a.c.volume_id == vol.id,
                                          a.c.host == host))
        LOG.info('Volume %s detached from host %s', vol.name, host)

    def revoke_lease(self, ref):
        """Fence the current holder: generation + 1, nobody holds it."""
        t = models.volumes
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            gen = vol.lease_generation + 1
            conn.execute(t.update().where(t.c.id == vol.id).values(
                lease_holder=None, lease_generation=gen, lease_expires=0))
            conn.execute(models.shared_leases.delete().where(
                models.shared_leases.c.volume_id == vol.id))
        LOG.info('Volume %s: lease revoked, generation %d', vol.name, gen)
        return {'volume_id': vol.id, 'generation': gen}

    # --- whole hosts (nova_ha) -----------------------------------------------

    def _host_leases(self, conn, host):
        """The leases (and shared leases) held by ``host``'s clients."""
        t, sl = models.volumes, models.shared_leases
        rows = conn.execute(sa.select(
            t.c.id, t.c.name, t.c.lease_holder, t.c.lease_generation,
            t.c.lease_expires).where(t.c.lease_holder.is_not(None))).all()
        found = [{'volume_id': r.id, 'volume_name': r.name,
                  'holder': r.lease_holder, 'generation': r.lease_generation,
                  'expires_at': r.lease_expires}
                 for r in rows if holder_host(r.lease_holder) == host]
        shared = conn.execute(sa.select(
            sl.c.volume_id, sl.c.holder, sl.c.expires, t.c.name,
            t.c.lease_generation).join(t, t.c.id == sl.c.volume_id)).all()
        found += [{'volume_id': r.volume_id, 'volume_name': r.name,
                   'holder': r.holder, 'generation': r.lease_generation,
                   'expires_at': r.expires}
                  for r in shared if holder_host(r.holder) == host]
        return found

    def host_status(self, host):
        """What the cluster knows of a client host: its leases, live or
        not, and whether it is fenced."""
        f = models.fenced_hosts
        now = time.time()
        with self.engine.connect() as conn:
            leases = self._host_leases(conn, host)
            fenced = conn.execute(sa.select(f).where(f.c.host == host)).first()
            attached = conn.execute(sa.select(sa.func.count()).where(
                models.attachments.c.host == host)).scalar()
        for lease in leases:
            lease['live'] = lease['expires_at'] > now
        live = [x['expires_at'] for x in leases if x['live']]
        return {'host': host, 'leases': leases,
                'live_leases': len(live),
                # When the host last renewed nothing tells; a live lease
                # expires at most one ttl after its last renewal.
                'leases_expire_at': max(live) if live else None,
                'attachments': attached,
                'fenced': fenced is not None,
                'fenced_at': fenced.fenced_at if fenced else None,
                'fence_reason': fenced.reason if fenced else None}

    def fence_host(self, host, reason=None):
        """Fence every lease ``host``'s clients hold (generation + 1, so
        the chunk servers refuse their writes), drop its attachments, and
        refuse it new leases until :meth:`unfence_host`.  Idempotent."""
        t, sl, f = models.volumes, models.shared_leases, models.fenced_hosts
        if not isinstance(host, str) or not host or len(host) > 255:
            raise exception.InvalidArgument(
                reason='host must be 1 to 255 characters')
        fenced = {}
        with self.engine.begin() as conn:
            if conn.execute(sa.select(f).where(f.c.host == host)).first() \
                    is None:
                conn.execute(f.insert().values(host=host, reason=reason,
                                               fenced_at=time.time()))
            for lease in self._host_leases(conn, host):
                vid = lease['volume_id']
                if vid in fenced:
                    continue
                gen = conn.execute(sa.select(t.c.lease_generation).where(
                    t.c.id == vid)).scalar() + 1
                conn.execute(t.update().where(t.c.id == vid).values(
                    lease_holder=None, lease_generation=gen,
                    lease_expires=0))
                conn.execute(sl.delete().where(sl.c.volume_id == vid))
                fenced[vid] = {'volume_id': vid,
                               'volume_name': lease['volume_name'],
                               'holder': lease['holder'],
                               'generation': gen}
            dropped = conn.execute(models.attachments.delete().where(
                models.attachments.c.host == host)).rowcount
        LOG.warning('Host %s fenced%s: %d lease(s) revoked, %d '
                    'attachment(s) dropped', host,
                    ' (%s)' % reason if reason else '', len(fenced), dropped)
        return {'host': host, 'fenced': list(fenced.values()),
                'attachments_dropped': dropped}

    def unfence_host(self, host):
        f = models.fenced_hosts
        with self.engine.begin() as conn:
            gone = conn.execute(f.delete().where(f.c.host == host)).rowcount
        if gone:
            LOG.info('Host %s unfenced: it may take leases again', host)
        return bool(gone)

    def list_fenced_hosts(self):
        f = models.fenced_hosts
        with self.engine.connect() as conn:
            return [{'host': r.host, 'reason': r.reason,
                     'fenced_at': r.fenced_at}
                    for r in conn.execute(sa.select(f).order_by(f.c.host))]

    def _check_host_not_fenced(self, conn, holder):
        f = models.fenced_hosts
        host = holder_host(holder)
        row = conn.execute(sa.select(f).where(f.c.host == host)).first()
        if row is not None:
            raise exception.Fenced(
                reason='host %s was fenced at %s%s; it may take no lease '
                       'until an operator unfences it (ursa host unfence %s)'
                       % (host, time.strftime('%Y-%m-%d %H:%M:%S',
                                              time.localtime(row.fenced_at)),
                          ' (%s)' % row.reason if row.reason else '', host))

    # --- status ------------------------------------------------------------

    def cluster_status(self):
        servers = self.list_servers()
        with self.engine.connect() as conn:
            # Summed here, not by SQL: SQLite's SUM raises "integer
            # overflow" past 2**63 - 1, which volumes of up to
            # max_volume_size (8 EiB at most) reach in twos.
            rows = conn.execute(sa.select(
                models.volumes.c.id, models.volumes.c.replicas,
                models.volumes.c.size)).all()
            nvol = len(rows)
            provisioned = sum(r.size for r in rows)
            degraded = 0
            vols = {r.id: r.replicas for r in rows}
            nchunks = 0
            for vid, replicas in conn.execute(sa.select(
                    models.chunks.c.volume_id, models.chunks.c.replicas)):
                nchunks += 1
                if len(_ids(replicas)) < vols.get(vid, 0):
                    degraded += 1
        up = [s for s in servers if s['state'] == 'up']
        return {
            'servers': {'total': len(servers), 'up': len(up),
                        'down': len(servers) - len(up)},
            'volumes': nvol,
            'chunks': nchunks,
            'degraded_chunks': degraded,
            'capacity_bytes': sum(s['capacity'] for s in up),
            'used_bytes': sum(s['used'] for s in up),
            'free_bytes': sum(s['free'] for s in up),
            'provisioned_bytes': int(provisioned),
            'failure_domain': self.failure_domain,
            'health': ('HEALTH_OK' if servers and not degraded
                       and len(up) == len(servers) else 'HEALTH_WARN'),
        }


def _trash_name(ident):
    return '.trash-%s' % ident


def _chunk_count(vol):
    per_set = vol.chunk_size * vol.stripe_count
    sets = -(-vol.size // per_set)
    return sets * vol.stripe_count


# lease_holder of a multiattach volume whose writers share the lease.
SHARED = '(shared)'


def holder_host(holder):
    """The host a lease holder runs on.  Holders are ``<host>:<pid>:<nonce>``
    (the client library's default) or ``<agent>@<host>`` (ursa-attach)."""
    if '@' in holder:
        return holder.rsplit('@', 1)[1]
    return holder.split(':', 1)[0]

QOS_KEYS = ('read_iops_sec', 'write_iops_sec', 'total_iops_sec',
            'read_bytes_sec', 'write_bytes_sec', 'total_bytes_sec')
# The largest QoS limit: the clients' token buckets (client/qos.py) count
# in floats, exact for integers up to 2**53, and so are JSON numbers in
# most other languages.  2**53 a second (8 PiB/s, 9e15 IOPS) limits
# nothing real, so no useful setting is refused.
QOS_MAX = 2 ** 53


def check_volume_size(size, limit):
    """Refuse a volume size above ``limit`` ([ursa_master]
    max_volume_size), naming the limit and the option."""
    if size is not None and size > limit:
        raise exception.InvalidArgument(
            reason='size %d bytes (%s) is above the largest volume size, %d '
                   'bytes (%s); use a smaller size, or raise [ursa_master] '
                   'max_volume_size on the master if such volumes are '
                   'really wanted' % (size, units.format_size(size), limit,
                                      units.format_size(limit)))


def validate_qos(qos):
    """QoS limits: a dict of QOS_KEYS to integers from 0 (no limit) to
    QOS_MAX; returns it without the zeros."""
    if not isinstance(qos, dict):
        raise exception.InvalidArgument(reason='qos must be an object')
    out = {}
    for k, v in qos.items():
        if k not in QOS_KEYS:
            raise exception.InvalidArgument(
                reason='unknown QoS limit %r; known: %s' % (
                    k, ', '.join(QOS_KEYS)))
        # Digits as text too, but only ASCII ones, and few enough for
        # int(): it refuses "\u00b2" and more than 4300 digits.
        if isinstance(v, str) and v.isascii() and v.isdigit() and \
                len(v) <= 20:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or \
                not 0 <= v <= QOS_MAX:
            raise exception.InvalidArgument(
                reason='QoS limit %s must be an integer from 0 (no limit) '
                       'to %d (2**53)' % (k, QOS_MAX))
        if v:
            out[k] = v
    return out


def _validate_snapshot_name(name):
    if not isinstance(name, str) or not name or len(name) > 255 or \
            '/' in name or '@' in name:
        raise exception.InvalidArgument(
            reason='snapshot name must be 1 to 255 characters without '
                   '"/" or "@"')


def _validate_volume(name, size, replicas, min_replicas, chunk_size,
                     stripe_unit, stripe_count):
    def bad(reason):
        raise exception.InvalidArgument(reason=reason)
    if not isinstance(name, str) or not name or len(name) > 255:
        bad('volume name must be 1 to 255 characters')
    if '/' in name:
        bad('volume name may not contain "/"')
    if not isinstance(size, int) or size <= 0:
        bad('size must be a positive number of bytes')
    if size % units.BLOCK_SIZE:
        bad('size must be a multiple of 4 KiB')
    if not 1 <= replicas <= 10:
        bad('replicas must be between 1 and 10')
    if not 1 <= min_replicas <= replicas:
        bad('min_replicas must be between 1 and replicas (%d)' % replicas)
    if chunk_size < units.Mi or chunk_size > 1024 * units.Mi or \
            chunk_size & (chunk_size - 1):
        bad('chunk size must be a power of two between 1 MiB and 1 GiB')
    if stripe_unit < units.BLOCK_SIZE or chunk_size % stripe_unit or \
            stripe_unit & (stripe_unit - 1):
        bad('stripe unit must be a power of two of at least 4 KiB that '
            'divides the chunk size')
    if not 1 <= stripe_count <= 64:
        bad('stripe count must be between 1 and 64')
