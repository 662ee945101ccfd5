"""Hosts fenced as a whole.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'fenced_hosts',
        sa.Column('host', sa.String(255), primary_key=True),
        sa.Column('reason', sa.Text, nullable=True),
        sa.Column('fenced_at', sa.Double, nullable=False),
    )
