"""The masters' fencing term (master failover): one row, term 0 and no
leader until a master is elected.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    table = op.create_table(
        'cluster_term',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=False),
        sa.Column('term', sa.BigInteger, nullable=False),
        sa.Column('leader', sa.String(1024), nullable=True),
        sa.Column('elected_at', sa.Double, nullable=True),
    )
    op.bulk_insert(table, [{'id': 1, 'term': 0, 'leader': None,
                            'elected_at': None}])
