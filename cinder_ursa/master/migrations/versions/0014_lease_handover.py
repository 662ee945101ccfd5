"""Live migration's handover of a volume's write lease: attachments may be
standbys (a destination host that opens the volume without writing), and
a volume records a pending handover (to which holder, since when).
Existing attachments are no standbys; no handover is pending.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('attachments', sa.Column('standby', sa.Boolean,
                                           nullable=False,
                                           server_default=sa.false()))
    op.add_column('volumes', sa.Column('handover_to', sa.String(255),
                                       nullable=True))
    op.add_column('volumes', sa.Column('handover_since', sa.Double,
                                       nullable=True))
