"""Principals: who may sign REST requests besides the cluster key (the
principal ``admin``), with a role and a key, and the previous key still
valid for a while after a rotation.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'principals',
        sa.Column('name', sa.String(64), primary_key=True),
        sa.Column('role', sa.String(16), nullable=False),
        sa.Column('key', sa.String(128), nullable=False),
        sa.Column('previous_key', sa.String(128), nullable=True),
        sa.Column('previous_until', sa.Double, nullable=True),
        sa.Column('created_at', sa.Double, nullable=False),
        sa.Column('rotated_at', sa.Double, nullable=True),
    )
