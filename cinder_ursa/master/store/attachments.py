"""Attachments: which host's gateway exposes which volume."""

import logging
import secrets
import time

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from cinder_ursa.master.store.common import asked
from cinder_ursa.master.store.common import check_free_text
from cinder_ursa.master.store.common import check_text
from cinder_ursa.master.store.common import holder_host
from cinder_ursa.protocol import lease_history as events

LOG = logging.getLogger(__name__)


class AttachmentRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    @staticmethod
    def _attachment_dict(row, name):
        return {'volume_id': row.volume_id, 'volume_name': name,
                'host': row.host, 'status': row.status, 'path': row.path,
                'error': row.error, 'created_at': row.created_at,
                'export_token': row.export_token}

    @staticmethod
    def new_export_token():
        """A fresh secret for ursa-nbd's export names (192 random bits:
        not guessable by a local user probing the gateway)."""
        return secrets.token_urlsafe(24)

    def attach(self, ref, host):
        """Ask ``host``'s gateway to expose a volume (idempotent: an
        existing attachment of that host is returned as it is, with its
        export token).  An attachment made anew (or again after a
        detach was asked) gets a new export token, so a token learnt
        for an earlier attachment opens nothing."""
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
                return self._attachment_dict(mine[0], vol.name)
            others = [r.host for r in rows if r.host != host]
            if others and not vol.multiattach:
                raise exception.Conflict(
                    reason='volume %s is attached to %s; detach it there '
                           'first' % (vol.name, ', '.join(others)))
            if mine:
                conn.execute(a.update().where(
                    a.c.volume_id == vol.id, a.c.host == host).values(
                    status='attaching', path=None, error=None,
                    export_token=self.new_export_token()))
            else:
                conn.execute(a.insert().values(
                    volume_id=vol.id, host=host, status='attaching',
                    created_at=time.time(),
                    export_token=self.new_export_token()))
        LOG.info('Volume %s: attaching to host %s, by %s', vol.name, host,
                 asked())
        return self.get_attachment(vol.id, host)

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
        return self._attachment_dict(row, vol.name)

    def list_attachments(self, host=None, ref=None):
        a, v = models.attachments, models.volumes
        if host is not None:
            check_text('host', host)
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
        or None.  A multiattach volume's shared lease is left to expire:
        its generation is every writer's."""
        a, t = models.attachments, models.volumes
        check_text('host', host)
        fence = None
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            conn.execute(a.delete().where(a.c.volume_id == vol.id,
                                          a.c.host == host))
            if (not vol.multiattach and vol.lease_holder
                    and holder_host(vol.lease_holder) == host):
                gen = vol.lease_generation + 1
                self._end_leases(conn, vol, time.time(), events.REVOKE,
                                 'detached from host %s' % host)
                conn.execute(t.update().where(t.c.id == vol.id).values(
                    lease_holder=None, lease_generation=gen,
                    lease_expires=0))
                fence = {'volume_id': vol.id, 'generation': gen}
        LOG.info('Volume %s detached from host %s%s, by %s', vol.name,
                 host, '; its lease there revoked (generation %d)'
                 % fence['generation'] if fence else '', asked())
        return fence
