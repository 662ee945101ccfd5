"""Figures kept up to date instead of counted (store/tally.py): the
chunks of each volume by state (chunk_tally), the cluster's totals
(cluster_counters), a volume's allocated chunks and a chunk server's
replicas and joining copies; filled here by one scan of the chunks.
Volumes and snapshots get indexes on their status (the trash, and
snapshots left creating, are found without a scan) and on their parent
snapshot (a snapshot's clones).

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

from cinder_ursa.master.store import tally

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('volumes', sa.Column('allocated_chunks', sa.BigInteger,
                                       nullable=False, server_default='0'))
    op.add_column('chunkservers', sa.Column('chunks', sa.BigInteger,
                                            nullable=False,
                                            server_default='0'))
    op.add_column('chunkservers', sa.Column('joining_chunks', sa.BigInteger,
                                            nullable=False,
                                            server_default='0'))
    op.create_index('ix_volumes_status', 'volumes', ['status'])
    op.create_index('ix_snapshots_status', 'snapshots', ['status'])
    op.create_index('ix_volumes_parent', 'volumes', ['parent_snapshot_id'])
    op.create_index('ix_snapshots_parent', 'snapshots',
                    ['parent_snapshot_id'])
    op.create_table(
        'chunk_tally',
        sa.Column('volume_id', sa.String(36),
                  sa.ForeignKey('volumes.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('replicas', sa.Integer, primary_key=True,
                  autoincrement=False),
        sa.Column('joining', sa.Integer, primary_key=True,
                  autoincrement=False),
        sa.Column('only_server', sa.Integer, primary_key=True,
                  autoincrement=False),
        sa.Column('resync', sa.Boolean, primary_key=True),
        sa.Column('chunks', sa.BigInteger, nullable=False),
        sa.Column('lost', sa.BigInteger, nullable=False),
    )
    op.create_table(
        'cluster_counters',
        sa.Column('name', sa.String(32), primary_key=True),
        sa.Column('value', sa.BigInteger, nullable=False),
    )
    conn = op.get_bind()
    tally.write(conn, tally.recount(conn))
