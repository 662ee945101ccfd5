"""Attachments get an export token: a random secret that ursa-nbd asks
of clients it cannot tell apart otherwise (TCP without a client
certificate: every local user of a hypervisor shares 127.0.0.1), so only
the one who attached a volume can open it.  Attachments made before get
a token here.

Revision ID: 0011
Revises: 0010
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('attachments') as batch:
        batch.add_column(sa.Column('export_token', sa.String(64),
                                   nullable=True))
    a = sa.table('attachments', sa.column('volume_id'), sa.column('host'),
                 sa.column('export_token'))
    conn = op.get_bind()
    for vid, host in conn.execute(sa.select(a.c.volume_id,
                                            a.c.host)).all():
        conn.execute(a.update().where(
            a.c.volume_id == vid, a.c.host == host).values(
            export_token=secrets.token_urlsafe(24)))
