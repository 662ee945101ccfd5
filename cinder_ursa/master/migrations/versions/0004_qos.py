"""Per-volume QoS limits (JSON), enforced by the clients.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('volumes', sa.Column('qos', sa.Text, nullable=True))
