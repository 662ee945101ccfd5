"""Volumes: create, find, rename, QoS, resize, delete (to the trash),
detach from a parent, the volumes a read of one may reach (tickets)."""

import json
import logging
import time
import uuid

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.common import units
from cinder_ursa.master import models
from cinder_ursa.master.store import tally
from cinder_ursa.master.store.common import asked
from cinder_ursa.master.store.common import trash_name
from cinder_ursa.master.store.common import unstorable
from cinder_ursa.master.store.common import validate_geometry
from cinder_ursa.master.store.common import validate_qos
from cinder_ursa.master.store.common import validate_volume
from cinder_ursa.master.store.tally import Tally

LOG = logging.getLogger(__name__)


class VolumeRecords:
    """Part of :class:`MetadataStore` (see the package)."""

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
                          'expires_at': row.lease_expires,
                          # A live migration's pending handover: who
                          # asked for the lease, since when.
                          'handover_to': row.handover_to,
                          'handover_since': row.handover_since}}

    def create_volume(self, name, size, replicas=3, min_replicas=2,
                      chunk_size=64 * units.Mi, stripe_unit=None,
                      stripe_count=1, parent=None, qos=None,
                      multiattach=False):
        """Create a thin volume; with ``parent`` (a snapshot id) a clone
        that reads the snapshot's blocks until it writes its own."""
        qos = validate_qos(qos or {})
        stripe_unit = stripe_unit or chunk_size
        validate_volume(name, size, replicas, min_replicas, chunk_size,
                         stripe_unit, stripe_count)
        t = models.volumes
        vid = str(uuid.uuid4())
        with self.begin() as conn:
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
            counts = Tally()
            counts.count(tally.VOLUMES, 1)
            counts.provision(size)
            counts.apply(conn)
        LOG.info('Volume %s (%s) created, %s, %d replicas%s, by %s', name,
                 vid, units.format_size(size), replicas,
                 ', clone of snapshot %s' % parent if parent else '',
                 asked())
        return self.get_volume(vid)

    def _find_volume(self, conn, ref):
        t = models.volumes
        if unstorable(ref):
            raise exception.NotFound(kind='volume', name=ref)
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
            vol['allocated_chunks'] = row.allocated_chunks
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

    def readable_volumes(self, ref, limit):
        """``(volume id, {the id of each other volume a read of it may
        reach: the highest snapshot sequence read there})``: what a
        ticket for volume ``ref`` must let its holder read
        (tickets.encode's ``readable``): a parent only as the snapshots
        its clones were made from, never its current data.

        A clone reads the blocks it never wrote from its parent snapshot,
        and that snapshot's from the snapshot's own parent (the parent
        its volume had when it was taken), up the chain.  A volume's
        snapshots are read under the volume's own id, but each keeps the
        parent it was taken with: a flattened clone (detach-parent) no
        longer reads its parent, its older snapshots still do.  So the
        walk starts from the volume's parent and from its snapshots'.
        Conflict when more than ``limit`` volumes are reached: a ticket
        cannot name them (the walk stops there, however long the
        chain)."""
        s = models.snapshots
        with self.engine.connect() as conn:
            row = self._find_volume(conn, ref)
            pending = [row.parent_snapshot_id] + list(conn.execute(
                sa.select(s.c.parent_snapshot_id).where(
                    s.c.volume_id == row.id)).scalars())
            seen = set()
            readable = {}
            while pending:
                sid = pending.pop()
                if sid is None or sid in seen:
                    continue
                seen.add(sid)
                snap = conn.execute(sa.select(
                    s.c.volume_id, s.c.parent_snapshot_id, s.c.seq).where(
                        s.c.id == sid)).first()
                if snap is None:
                    continue    # a parent is kept (trash) while read
                if snap.volume_id != row.id:
                    readable[snap.volume_id] = max(
                        readable.get(snap.volume_id, 0), snap.seq)
                    if len(readable) > limit:
                        raise exception.Conflict(
                            reason='volume %s reads through more than %d '
                                   'other volumes (clone parents, up the '
                                   'chain), more than a ticket may name: '
                                   'flatten it ("ursa volume flatten %s") '
                                   'and ask again' % (row.name, limit,
                                                      row.name))
                pending.append(snap.parent_snapshot_id)
        return row.id, readable

    def list_volumes(self, limit=None, marker=None, descending=False,
                     name_prefix=None, name_contains=None, statuses=None):
        """The volumes (those in the trash aside) in name order, reversed
        with ``descending``: only those after volume ``marker`` (a name
        or an id), at most ``limit`` of them, and only those matching
        every filter given: a name starting with ``name_prefix`` or
        containing ``name_contains`` (ignoring case, on every database),
        a status among ``statuses``.  Without arguments, every volume.

        Keyset pagination (names past the marker's), not OFFSET: a page
        costs the same wherever it starts (the unique index on the name
        finds it) and volumes created or deleted between two pages
        neither shift the others nor repeat them.  The marker is only a
        position: it need not match the filters, but it must name a
        volume still listed, else MarkerNotFound (a client walking the
        pages steps back to an earlier one).  ``allocated_chunks`` is
        counted for the returned volumes only, never over every chunk
        (until volumes.allocated_chunks keeps the count)."""
        t = models.volumes
        q = sa.select(t).where(t.c.status != 'trash')
        if name_prefix:
            q = q.where(t.c.name.istartswith(name_prefix, autoescape=True))
        if name_contains:
            q = q.where(t.c.name.icontains(name_contains, autoescape=True))
        if statuses:
            q = q.where(t.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            if marker is not None:
                after = None
                if not unstorable(marker):
                    listed = t.c.status != 'trash'
                    after = conn.execute(sa.select(t.c.name).where(
                        t.c.name == marker, listed)).scalar()
                    if after is None:
                        after = conn.execute(sa.select(t.c.name).where(
                            t.c.id == marker, listed)).scalar()
                if after is None:
                    raise exception.MarkerNotFound(
                        reason='marker %r names no volume (deleted or '
                               'renamed since the previous page?): list '
                               'again from an earlier volume, or from the '
                               'start without a marker' % (marker,))
                q = q.where(t.c.name < after if descending
                            else t.c.name > after)
            q = q.order_by(t.c.name.desc() if descending else t.c.name)
            if limit is not None:
                q = q.limit(limit)
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            v = self._volume_dict(r)
            v['allocated_chunks'] = r.allocated_chunks
            out.append(v)
        return out

    def begin_delete(self, ref):
        """Delete a volume: returns (volume, action) where action is
        'delete' (the caller tells the chunk servers, then calls
        finish_delete) or 'trash' (its deleted snapshots still have clones:
        the volume is hidden and goes when they do)."""
        t = models.volumes
        s = models.snapshots
        with self.begin() as conn:
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
                    status='trash', name=trash_name(row.id)))
                if row.status != 'trash':
                    # Deleted again (by its id): in the trash once.
                    counts = Tally()
                    counts.count(tally.TRASH, 1)
                    counts.apply(conn)
                LOG.info('Volume %s moved to the trash: clones of its '
                         'deleted snapshots still read it; by %s', row.name,
                         asked())
                return self._volume_dict(row), 'trash'
            conn.execute(t.update().where(t.c.id == row.id).values(
                status='deleting'))
            if row.status == 'trash':
                # Its last snapshot was reaped, the sweep had not taken
                # it yet: it leaves the trash here.
                counts = Tally()
                counts.count(tally.TRASH, -1)
                counts.apply(conn)
        return self._volume_dict(row), 'delete'

    def finish_delete(self, vid):
        c = models.chunks
        with self.begin() as conn:
            row = conn.execute(sa.select(models.volumes).where(
                models.volumes.c.id == vid)).first()
            if row is None:
                return      # done already (a retry)
            name = row.name
            # The kept figures lose its chunks: a read of its rows (what
            # the chunk servers were told to delete), not of the others.
            counts = Tally()
            for r in conn.execute(sa.select(
                    c.c.volume_id, c.c.replicas, c.c.joining, c.c.lost,
                    c.c.resync).where(c.c.volume_id == vid)):
                counts.remove(r)
            counts.apply(conn)
            counts.count(tally.VOLUMES, -1)
            counts.provision(row.size, -1)
            counts.count(tally.TRASH, -(row.status == 'trash'))
            counts.apply(conn)
            conn.execute(models.chunk_tally.delete().where(
                models.chunk_tally.c.volume_id == vid))
            conn.execute(c.delete().where(c.c.volume_id == vid))
            # Its lease history goes with it: nothing could find it by
            # the volume any more (see models.lease_events).
            conn.execute(models.lease_events.delete().where(
                models.lease_events.c.volume_id == vid))
            conn.execute(models.volumes.delete().where(
                models.volumes.c.id == vid))
        LOG.info('Volume %s (%s) deleted, by %s', name, vid, asked())

    def update_volume(self, ref, name=None, qos=None, multiattach=None):
        """Rename a volume (``manage_existing`` does) and/or replace its
        QoS limits (retype does; open clients adopt them with their next
        lease renewal)."""
        t = models.volumes
        values = {}
        if qos is not None:
            qos = validate_qos(qos)
            values['qos'] = json.dumps(qos) if qos else None
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            if name is not None:
                validate_volume(name, vol.size, vol.replicas,
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
            LOG.info('Volume %s renamed to %s, by %s', vol.name, name,
                     asked())
        if qos is not None:
            LOG.info('Volume %s QoS limits: %s, by %s', name or vol.name,
                     qos or 'none', asked())
        if 'multiattach' in values:
            LOG.info('Volume %s multiattach: %s, by %s', name or vol.name,
                     values['multiattach'], asked())
        return self.get_volume(vol.id)

    def resize(self, ref, size, force=False):
        """Change a volume's size: growing is always allowed; shrinking
        only with ``force`` (the caller zeroed the tail first)."""
        t = models.volumes
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.status != 'available':
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            # Its name is not checked again: one older than the naming
            # rule must still grow.
            validate_geometry(size, vol.replicas, vol.min_replicas,
                              vol.chunk_size, vol.stripe_unit,
                              vol.stripe_count)
            if size < vol.size and not force:
                raise exception.InvalidArgument(
                    reason='shrinking volume %s from %d to %d bytes loses '
                           'data; pass force to do it anyway'
                           % (vol.name, vol.size, size))
            conn.execute(t.update().where(t.c.id == vol.id).values(
                size=size))
            counts = Tally()
            counts.provision(size)
            counts.provision(vol.size, -1)
            counts.apply(conn)
        LOG.info('Volume %s resized from %s to %s, by %s', vol.name,
                 units.format_size(vol.size), units.format_size(size),
                 asked())
        return self.get_volume(vol.id)

    def detach_parent(self, ref):
        """A flattened clone stops reading its parent (its snapshots still
        do)."""
        t = models.volumes
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.parent_snapshot_id is None:
                raise exception.InvalidArgument(
                    reason='volume %s is not a clone' % vol.name)
            conn.execute(t.update().where(t.c.id == vol.id).values(
                parent_snapshot_id=None))
        LOG.info('Volume %s flattened: detached from snapshot %s, by %s',
                 vol.name, vol.parent_snapshot_id, asked())
        return self.get_volume(vol.id)
