"""Multiattach volumes: a flag, and the writers sharing their lease.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('volumes', sa.Column('multiattach', sa.Boolean,
                                       nullable=False,
                                       server_default=sa.false()))
    op.create_table(
        'shared_leases',
        sa.Column('volume_id', sa.String(36),
                  sa.ForeignKey('volumes.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('holder', sa.String(255), primary_key=True),
        sa.Column('expires', sa.Double, nullable=False),
    )
