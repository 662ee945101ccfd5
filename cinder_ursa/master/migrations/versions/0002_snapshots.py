"""Snapshots and clones: snapshot table, volume snapshot sequence, parent.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('volumes', sa.Column('snap_seq', sa.BigInteger,
                                       nullable=False, server_default='0'))
    op.add_column('volumes', sa.Column('parent_snapshot_id', sa.String(36),
                                       nullable=True))
    op.create_table(
        'snapshots',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('name', sa.String(255), nullable=False),
        sa.Column('volume_id', sa.String(36), sa.ForeignKey('volumes.id'),
                  nullable=False),
        sa.Column('seq', sa.BigInteger, nullable=False),
        sa.Column('size', sa.BigInteger, nullable=False),
        sa.Column('parent_snapshot_id', sa.String(36), nullable=True),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('created_at', sa.Double, nullable=False),
        sa.UniqueConstraint('volume_id', 'name', name='uniq_snapshot_name'),
    )
