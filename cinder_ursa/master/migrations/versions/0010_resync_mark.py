"""A chunk whose primary was dropped is marked in the database until its
replicas are compared (RESYNC): a master that takes over does the
comparisons its predecessor had not finished.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('resync', sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    op.create_index('ix_chunks_resync', 'chunks', ['resync'])
