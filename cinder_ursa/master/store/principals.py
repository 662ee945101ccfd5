"""Principals: the names that sign REST requests, their roles and keys.

The cluster key is the principal ``admin`` and is not stored here (it
is the master's key file).  A key is kept as the secret itself (an HMAC
is checked with it), so the database is as secret as that key file.
After a rotation the previous key stays valid until ``previous_until``:
daemons still signing with it are reconfigured meanwhile, without
downtime.
"""

import time

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.master import models
from cinder_ursa.protocol import roles


def _check_name(name):
    if not auth.valid_principal(name):
        raise exception.InvalidArgument(
            reason='a principal name is 1 to %d letters, digits, ".", "-" '
                   'or "_" (a host principal is named after its host)'
            % auth.PRINCIPAL_MAX)
    if name == auth.ADMIN:
        raise exception.InvalidArgument(
            reason='"admin" is the cluster key\'s principal: it is not '
                   'created, rotated or revoked with "ursa key" (the '
                   'cluster key file is)')


def _public(row, now):
    """A principal as it is shown: no key."""
    until = row.previous_until if row.previous_key else None
    return {'name': row.name, 'role': row.role,
            'created_at': row.created_at, 'rotated_at': row.rotated_at,
            'previous_key_until': until if until and until > now else None}


class PrincipalRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    def create_principal(self, name, role, key):
        _check_name(name)
        if role not in roles.ROLES:
            raise exception.InvalidArgument(
                reason='no role %r: one of %s' % (
                    role, ', '.join(sorted(roles.ROLES))))
        p = models.principals
        now = time.time()
        with self.begin() as conn:
            if conn.execute(sa.select(p.c.name).where(
                    p.c.name == name)).first() is not None:
                raise exception.AlreadyExists(kind='principal', name=name)
            conn.execute(p.insert().values(
                name=name, role=role, key=key.decode(), created_at=now))
            row = conn.execute(sa.select(p).where(p.c.name == name)).one()
        return _public(row, now)

    def rotate_principal(self, name, key, window):
        """Give ``name`` the key ``key``; its current key stays valid for
        ``window`` more seconds (a key it had before that is no longer:
        two rotations in a row leave the one in between valid)."""
        _check_name(name)
        p = models.principals
        now = time.time()
        with self.begin() as conn:
            row = conn.execute(sa.select(p).where(p.c.name == name)).first()
            if row is None:
                raise exception.NotFound(kind='principal', name=name)
            conn.execute(p.update().where(p.c.name == name).values(
                key=key.decode(), previous_key=row.key,
                previous_until=now + window, rotated_at=now))
            row = conn.execute(sa.select(p).where(p.c.name == name)).one()
        return _public(row, now)

    def revoke_principal(self, name):
        _check_name(name)
        p = models.principals
        with self.begin() as conn:
            if not conn.execute(p.delete().where(p.c.name == name)).rowcount:
                raise exception.NotFound(kind='principal', name=name)

    def list_principals(self):
        p = models.principals
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(p).order_by(p.c.name)).all()
        return [_public(r, now) for r in rows]

    def principal_keys(self):
        """{name: (role, key, previous key or None, until when)}: what
        the master checks signatures with."""
        p = models.principals
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(p)).all()
        return {r.name: (r.role, r.key.encode(),
                         r.previous_key.encode() if r.previous_key else None,
                         r.previous_until or 0.0) for r in rows}
