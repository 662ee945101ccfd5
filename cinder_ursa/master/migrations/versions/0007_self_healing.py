"""What repair needs to know: since when a chunk server is down, whether it
is in maintenance, and per chunk the servers catching up (joining) and
those dropped while they held a copy (lost).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('chunkservers') as batch:
        batch.add_column(sa.Column('down_since', sa.Double, nullable=True))
        batch.add_column(sa.Column('maintenance', sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('joining', sa.String(1024),
                                   nullable=False, server_default=''))
        batch.add_column(sa.Column('lost', sa.String(1024), nullable=False,
                                   server_default=''))
