"""The lease history: one row per lease change of a volume (acquire,
share, release, leave, revoke, fence, expire, takeover), written with the
change itself.  Leases changed before this revision have no events.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'lease_events',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('volume_id', sa.String(36),
                  sa.ForeignKey('volumes.id', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('generation', sa.BigInteger, nullable=False),
        sa.Column('holder', sa.String(255), nullable=True),
        sa.Column('event', sa.String(16), nullable=False),
        sa.Column('at', sa.Double, nullable=False),
        sa.Column('by', sa.String(255), nullable=False),
        sa.Column('reason', sa.Text, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index('ix_lease_events_volume', 'lease_events',
                    ['volume_id', 'id'])
