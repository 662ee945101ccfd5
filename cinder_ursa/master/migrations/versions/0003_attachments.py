"""Attachments: which host's gateway exposes a volume.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'attachments',
        sa.Column('volume_id', sa.String(36),
                  sa.ForeignKey('volumes.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('host', sa.String(255), primary_key=True),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('path', sa.String(1024), nullable=True),
        sa.Column('error', sa.Text, nullable=True),
        sa.Column('created_at', sa.Double, nullable=False),
    )
