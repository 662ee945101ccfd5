"""Snapshots: the two-phase create, rename, delete, revert, the trash
reaper and what the chunk servers may free."""

import logging
import time
import uuid

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from cinder_ursa.master.store import tally
from cinder_ursa.master.store.common import asked
from cinder_ursa.master.store.common import split_ids
from cinder_ursa.master.store.common import trash_name
from cinder_ursa.master.store.common import unstorable
from cinder_ursa.master.store.common import validate_snapshot_name
from cinder_ursa.master.store.tally import Tally

LOG = logging.getLogger(__name__)


class SnapshotRecords:
    """Part of :class:`MetadataStore` (see the package)."""

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
        if unstorable(ref):
            raise exception.NotFound(kind='snapshot', name=ref)
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

    def rename_snapshot(self, ref, name):
        s = models.snapshots
        validate_snapshot_name(name)
        with self.begin() as conn:
            row = self._find_snapshot(conn, ref)
            if row.status == 'trash':
                raise exception.NotFound(kind='snapshot', name=ref)
            if name != row.name and conn.execute(sa.select(s.c.id).where(
                    s.c.volume_id == row.volume_id,
                    s.c.name == name)).first():
                raise exception.AlreadyExists(kind='snapshot', name=name)
            conn.execute(s.update().where(s.c.id == row.id).values(
                name=name))
        LOG.info('Snapshot %s renamed to %s, by %s', row.name, name,
                 asked())
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

    def list_snapshots(self, volume=None, limit=None, marker=None,
                       descending=False, name_prefix=None,
                       name_contains=None, statuses=None):
        """The snapshots (those in the trash aside), of every volume or
        of ``volume``, in the order of their volume's name and their
        sequence (reversed with ``descending``): only those after
        snapshot ``marker`` (``volume@name`` or an id), at most
        ``limit``, and only those matching every filter given: a name
        starting with ``name_prefix`` or containing ``name_contains``
        (ignoring case), a status among ``statuses``.  Without
        arguments, every snapshot.  Keyset pagination as
        ``list_volumes``: MarkerNotFound when the marker names no listed
        snapshot."""
        s = models.snapshots
        v = models.volumes
        with self.engine.connect() as conn:
            q = sa.select(s, v.c.name.label('volume_name')).join(
                v, v.c.id == s.c.volume_id).where(s.c.status != 'trash')
            if volume is not None:
                q = q.where(s.c.volume_id == self._find_volume(
                    conn, volume).id)
            if name_prefix:
                q = q.where(s.c.name.istartswith(name_prefix,
                                                 autoescape=True))
            if name_contains:
                q = q.where(s.c.name.icontains(name_contains,
                                               autoescape=True))
            if statuses:
                q = q.where(s.c.status.in_(list(statuses)))
            if marker is not None:
                q = q.where(self._after_snapshot(conn, marker, descending))
            if descending:
                q = q.order_by(v.c.name.desc(), s.c.seq.desc())
            else:
                q = q.order_by(v.c.name, s.c.seq)
            if limit is not None:
                q = q.limit(limit)
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            d = self._snapshot_dict(r)
            d['volume_name'] = r.volume_name
            out.append(d)
        return out

    def _after_snapshot(self, conn, marker, descending):
        """The condition of the snapshots listed after snapshot
        ``marker`` (its volume's name, then its sequence)."""
        s = models.snapshots
        v = models.volumes
        try:
            row = self._find_snapshot(conn, marker)
        except exception.NotFound:
            row = None
        if row is None or row.status == 'trash':
            raise exception.MarkerNotFound(
                reason='marker %r names no snapshot (deleted or renamed '
                       'since the previous page?): list again from an '
                       'earlier snapshot, or from the start without a '
                       'marker' % (marker,))
        vname = conn.execute(sa.select(v.c.name).where(
            v.c.id == row.volume_id)).scalar()
        if descending:
            return sa.or_(v.c.name < vname, sa.and_(v.c.name == vname,
                                                    s.c.seq < row.seq))
        return sa.or_(v.c.name > vname, sa.and_(v.c.name == vname,
                                                s.c.seq > row.seq))

    def begin_snapshot(self, ref, name):
        """Take the next snapshot sequence of a volume (committed first) and
        record the snapshot as 'creating'."""
        t = models.volumes
        s = models.snapshots
        validate_snapshot_name(name)
        with self.begin() as conn:
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
        with self.begin() as conn:
            if not ok:
                conn.execute(s.delete().where(s.c.id == sid))
                return None
            conn.execute(s.update().where(s.c.id == sid).values(
                status='available'))
        snap = self.get_snapshot(sid)
        LOG.info('Snapshot %s@%s created (sequence %d), by %s',
                 snap['volume_name'], snap['name'], snap['seq'], asked())
        return snap

    def live_seqs(self, volume_id):
        """(snapshot sequence of a volume, sequences of its snapshots that
        may still be read: trashed ones too, their clones read them), read
        together: the list is complete up to that sequence."""
        s = models.snapshots
        with self.begin() as conn:
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
                           'snapshots': [], 'chunks': {}, 'joining': {}}
                    for r in conn.execute(sa.select(v))}
            for r in conn.execute(sa.select(s).order_by(s.c.seq)):
                if r.volume_id in vols:
                    vols[r.volume_id]['snapshots'].append({
                        'id': r.id, 'name': r.name, 'seq': r.seq,
                        'status': r.status, 'created_at': r.created_at})
            for r in conn.execute(sa.select(c)):
                if r.volume_id in vols:
                    vols[r.volume_id]['chunks'][str(r.idx)] = split_ids(
                        r.replicas)
                    if r.joining:
                        vols[r.volume_id]['joining'][str(r.idx)] = \
                            split_ids(r.joining)
            servers = [self._public(self._server_dict(r))
                       for r in conn.execute(sa.select(
                           models.chunkservers))]
        # The kept figures against a recount: the check's one scan of
        # the chunks serves both.
        return {'volumes': list(vols.values()), 'chunkservers': servers,
                'now': time.time(),
                'figures_drift': tally.describe(self.tally_drift())}

    def forget_unfinished_snapshots(self, older_than=None):
        """Forget snapshots left 'creating' for more than ``older_than``
        seconds (their master died mid-way), or every one (None: a master
        just elected, before it takes a creation); return their volume
        ids."""
        s = models.snapshots
        unfinished = s.c.status == 'creating'
        if older_than is not None:
            unfinished = sa.and_(unfinished,
                                 s.c.created_at < time.time() - older_than)
        with self.begin() as conn:
            rows = conn.execute(sa.select(s).where(unfinished)).all()
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
        with self.begin() as conn:
            row = self._find_snapshot(conn, ref)
            if row.status == 'creating':
                raise exception.Conflict(reason='snapshot %s is still being '
                                         'created' % row.name)
            if self._children(conn, row.id):
                conn.execute(s.update().where(s.c.id == row.id).values(
                    status='trash', name=trash_name(row.id)))
                LOG.info('Snapshot %s moved to the trash: clones still read '
                         'it; by %s', row.name, asked())
                return self._snapshot_dict(row), 'trash'
            conn.execute(s.delete().where(s.c.id == row.id))
        LOG.info('Snapshot %s (sequence %d of volume %s) deleted, by %s',
                 row.name, row.seq, row.volume_id, asked())
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
        with self.begin() as conn:
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
                    counts = Tally()
                    counts.count(tally.TRASH, -1)
                    counts.apply(conn)
                    return 'volume', self._volume_dict(row)
        return None

    def begin_revert(self, ref, snapshot):
        """Mark a volume reverting to one of its snapshots; returns
        (volume, snapshot seq).  The volume stays 'reverting' (it cannot be
        opened) until finish_revert: a failed revert is simply retried."""
        t = models.volumes
        with self.begin() as conn:
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

    def finish_revert(self, vid, seq=None):
        """The revert of volume ``vid`` (to snapshot sequence ``seq``)
        is done on every chunk server: it is available again."""
        t = models.volumes
        with self.begin() as conn:
            name = conn.execute(sa.select(t.c.name).where(
                t.c.id == vid)).scalar()
            # Only from 'reverting': a volume deleted meanwhile (to the
            # trash, or being deleted) stays so.
            conn.execute(t.update().where(
                t.c.id == vid, t.c.status == 'reverting').values(
                    status='available'))
        LOG.info('Volume %s reverted to its snapshot of sequence %s, by %s',
                 name, seq, asked())
