"""Attachments: which host's gateway exposes which volume."""

import logging
import secrets
import time

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from cinder_ursa.master.store.common import SHARED
from cinder_ursa.master.store.common import asked
from cinder_ursa.master.store.common import check_free_text
from cinder_ursa.master.store.common import check_text
from cinder_ursa.master.store.common import holder_host
from cinder_ursa.protocol import lease_history as events

LOG = logging.getLogger(__name__)


class AttachmentRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    @staticmethod
    def _attachment_dict(row, name, vol):
        """An attachment as the API shows it; ``vol``, its volume's row,
        tells whether its host is asked to release the lease: it holds
        it, and a standby on another host asked for it (a live
        migration's handover; its agent hands it over)."""
        asked_for = vol.handover_to
        return {'volume_id': row.volume_id, 'volume_name': name,
                'host': row.host, 'status': row.status, 'path': row.path,
                'error': row.error, 'created_at': row.created_at,
                'export_token': row.export_token,
                'standby': bool(row.standby),
                'release_requested': bool(
                    asked_for and vol.lease_holder
                    and holder_host(vol.lease_holder) == row.host
                    and holder_host(asked_for) != row.host)}

    @staticmethod
    def new_export_token():
        """A fresh secret for ursa-nbd's export names (192 random bits:
        not guessable by a local user probing the gateway)."""
        return secrets.token_urlsafe(24)

    def attach(self, ref, host, standby=False):
        """Ask ``host``'s gateway to expose a volume (idempotent: an
        existing attachment of that host is returned as it is, with its
        export token).  An attachment made anew (or again after a
        detach was asked) gets a new export token, so a token learnt
        for an earlier attachment opens nothing.

        A volume that is not multiattach is attached to one host, but
        for a live migration's destination: with ``standby``, one more
        host may attach it while it has exactly one other attachment
        (not detaching, not a standby).  That host's client opens the
        volume without its lease and asks for it at its first write
        (a handover: see LeaseRecords.acquire_lease).  A standby attach
        of a volume attached nowhere else (or multiattach) is an
        ordinary attachment: there is nobody to take over from."""
        a = models.attachments
        check_text('host', host)
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.status != 'available':
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            self._check_host_not_fenced(conn, '@' + host)
            rows = conn.execute(sa.select(a).where(
                a.c.volume_id == vol.id)).all()
            mine = [r for r in rows if r.host == host]
            if mine and mine[0].status != 'detaching':
                return self._attachment_dict(mine[0], vol.name, vol)
            # The source first (the log line names it), then standbys.
            others = sorted((r for r in rows if r.host != host),
                            key=lambda r: (bool(r.standby), r.host))
            standby = bool(standby and others and not vol.multiattach)
            if others and not vol.multiattach:
                self._check_second_attachment(vol, host, others, standby)
            if mine:
                conn.execute(a.update().where(
                    a.c.volume_id == vol.id, a.c.host == host).values(
                    status='attaching', path=None, error=None,
                    export_token=self.new_export_token(), standby=standby))
            else:
                conn.execute(a.insert().values(
                    volume_id=vol.id, host=host, status='attaching',
                    created_at=time.time(), standby=standby,
                    export_token=self.new_export_token()))
        LOG.info('Volume %s: attaching to host %s%s, by %s', vol.name, host,
                 ' as a standby (live migration from %s)' % others[0].host
                 if standby else '', asked())
        return self.get_attachment(vol.id, host)

    @staticmethod
    def _check_second_attachment(vol, host, others, standby):
        """Conflict unless ``host`` may attach volume ``vol`` (not
        multiattach) beside its attachments ``others``: as a standby,
        beside exactly one attachment that is neither detaching nor a
        standby."""
        where = ', '.join('%s%s' % (r.host, ' (standby)' if r.standby
                                    else ' (detaching)'
                                    if r.status == 'detaching' else '')
                          for r in others)
        if not standby:
            raise exception.Conflict(
                reason='volume %s is attached to %s; detach it there '
                       'first (a live migration\'s destination attaches '
                       'as a standby: standby=true)' % (vol.name, where))
        if len(others) > 1 or others[0].standby:
            raise exception.Conflict(
                reason='volume %s is attached to %s: a standby attachment '
                       'is one more beside a single attachment (one live '
                       'migration at a time); detach the standby first'
                       % (vol.name, where))
        if others[0].status == 'detaching':
            raise exception.Conflict(
                reason='volume %s is being detached from %s: there is no '
                       'source to stand by for; attach it once the detach '
                       'is done' % (vol.name, where))

    def get_attachment(self, ref, host):
        a = models.attachments
        check_text('host', host)
        with self.engine.connect() as conn:
            vol = self._find_volume(conn, ref)
            row = conn.execute(sa.select(a).where(
                a.c.volume_id == vol.id, a.c.host == host)).first()
        if row is None:
            raise exception.NotFound(kind='attachment',
                                     name='%s on %s' % (vol.name, host))
        return self._attachment_dict(row, vol.name, vol)

    def list_attachments(self, host=None, ref=None):
        a, v = models.attachments, models.volumes
        if host is not None:
            check_text('host', host)
        with self.engine.connect() as conn:
            q = sa.select(a, v.c.name, v.c.lease_holder,
                          v.c.handover_to).join(v, v.c.id == a.c.volume_id)
            if host is not None:
                q = q.where(a.c.host == host)
            if ref is not None:
                q = q.where(a.c.volume_id == self._find_volume(conn, ref).id)
            return [self._attachment_dict(r, r.name, r)
                    for r in conn.execute(q.order_by(v.c.name))]

    def update_attachment(self, ref, host, status, path=None, error=None):
        """The gateway reports; the driver asks for 'detaching'."""
        a = models.attachments
        if status not in ('attached', 'error', 'detaching'):
            raise exception.InvalidArgument(
                reason='status must be attached, error or detaching')
        check_text('host', host)
        if path is not None:
            check_text('path', path, 1024)
        check_free_text('error', error)
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            res = conn.execute(a.update().where(
                a.c.volume_id == vol.id, a.c.host == host).values(
                status=status, path=path, error=error))
            if not res.rowcount:
                raise exception.NotFound(kind='attachment',
                                         name='%s on %s' % (vol.name, host))
        LOG.info('Volume %s on host %s: %s%s, by %s', vol.name, host,
                 status, ' (%s)' % (path or error) if path or error else '',
                 asked())
        return self.get_attachment(vol.id, host)

    def detach(self, ref, host):
        """Detach volume ``ref`` from ``host``.  A write lease a client
        on that host still holds is revoked with it (generation + 1):
        its ticket, which the chunk servers honour until the newer
        generation reaches them, is then refused, so a detached host
        writes nothing more, whatever its gateway does.  Returns
        {'volume_id', 'generation'} to push to the chunk servers (FENCE),
        or None.  A multiattach volume's writers on that host have their
        shares revoked the same way, and the writers of the other hosts
        are re-admitted at the new generation (LeaseRecords._end_shares):
        they write on.  A standby left alone (its source detached: the
        migration is done) becomes the volume's attachment; a handover
        asked by a detached standby (the migration rolled back) is
        forgotten."""
        a, t = models.attachments, models.volumes
        sl = models.shared_leases
        check_text('host', host)
        fence = None
        readmitted = []
        why = 'detached from host %s' % host
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            conn.execute(a.delete().where(a.c.volume_id == vol.id,
                                          a.c.host == host))
            sharers = conn.execute(sa.select(sl.c.holder).where(
                sl.c.volume_id == vol.id)).scalars().all()
            # (A writer there whose membership was dropped as run out,
            # a silent host's, may still write under the generation:
            # LeaseRecords._dropped_writers.)
            if (vol.multiattach and vol.lease_holder in (None, SHARED)
                    and (any(holder_host(h) == host for h in sharers)
                         or self._dropped_writers(conn, vol, host))):
                gen, _, readmitted = self._end_shares(
                    conn, vol, lambda h: holder_host(h) == host,
                    time.time(), events.REVOKE, why)
                fence = {'volume_id': vol.id, 'generation': gen}
            elif (not vol.multiattach and vol.lease_holder
                    and holder_host(vol.lease_holder) == host):
                gen = vol.lease_generation + 1
                self._end_leases(conn, vol, time.time(), events.REVOKE, why)
                conn.execute(t.update().where(t.c.id == vol.id).values(
                    lease_holder=None, lease_generation=gen,
                    lease_expires=0))
                fence = {'volume_id': vol.id, 'generation': gen}
            self._settle_standby(conn, vol)
        LOG.info('Volume %s detached from host %s%s%s, by %s', vol.name,
                 host, '; its lease there revoked (generation %d)'
                 % fence['generation'] if fence else '',
                 '; %s re-admitted at that generation'
                 % ', '.join(readmitted) if readmitted else '', asked())
        return fence

    def _settle_standby(self, conn, vol):
        """After attachments of ``vol`` (a row read before) went away: a
        pending handover to a host no longer attached is forgotten, and
        a standby with no other attachment left is a standby no more."""
        a, t = models.attachments, models.volumes
        rows = conn.execute(sa.select(a.c.host, a.c.standby).where(
            a.c.volume_id == vol.id)).all()
        hosts = {r.host for r in rows}
        if vol.handover_to and holder_host(vol.handover_to) not in hosts:
            conn.execute(t.update().where(t.c.id == vol.id).values(
                handover_to=None, handover_since=None))
            LOG.info('Volume %s: the handover of its lease to %s is '
                     'forgotten: that host is no longer attached', vol.name,
                     vol.handover_to)
        if rows and all(r.standby for r in rows):
            conn.execute(a.update().where(a.c.volume_id == vol.id).values(
                standby=False))
            LOG.info('Volume %s: standby attachment of %s is the volume\'s '
                     'attachment now (its source is gone)', vol.name,
                     ', '.join(sorted(hosts)))
