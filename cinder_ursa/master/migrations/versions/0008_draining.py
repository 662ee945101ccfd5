"""An operator's "empty this server": a draining chunk server has its
replicas moved to others and is never chosen for a new one.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('chunkservers') as batch:
        batch.add_column(sa.Column('draining', sa.Boolean, nullable=False,
                                   server_default=sa.false()))
