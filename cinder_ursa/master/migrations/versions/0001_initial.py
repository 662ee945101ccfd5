"""Initial schema: chunk servers, volumes, chunks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'chunkservers',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('uuid', sa.String(36), nullable=False, unique=True),
        sa.Column('host', sa.String(255), nullable=False),
        sa.Column('rack', sa.String(255), nullable=False),
        sa.Column('address', sa.String(255), nullable=False),
        sa.Column('port', sa.Integer, nullable=False),
        sa.Column('capacity', sa.BigInteger, nullable=False),
        sa.Column('used', sa.BigInteger, nullable=False),
        sa.Column('free', sa.BigInteger, nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('last_seen', sa.Double, nullable=False),
        sa.Column('created_at', sa.Double, nullable=False),
    )
    op.create_table(
        'volumes',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('name', sa.String(255), nullable=False, unique=True),
        sa.Column('size', sa.BigInteger, nullable=False),
        sa.Column('chunk_size', sa.BigInteger, nullable=False),
        sa.Column('stripe_unit', sa.BigInteger, nullable=False),
        sa.Column('stripe_count', sa.Integer, nullable=False),
        sa.Column('replicas', sa.Integer, nullable=False),
        sa.Column('min_replicas', sa.Integer, nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('created_at', sa.Double, nullable=False),
        sa.Column('lease_holder', sa.String(255), nullable=True),
        sa.Column('lease_generation', sa.BigInteger, nullable=False),
        sa.Column('lease_expires', sa.Double, nullable=False),
    )
    op.create_table(
        'chunks',
        sa.Column('volume_id', sa.String(36),
                  sa.ForeignKey('volumes.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('idx', sa.BigInteger, primary_key=True,
                  autoincrement=False),
        sa.Column('epoch', sa.BigInteger, nullable=False),
        sa.Column('replicas', sa.String(1024), nullable=False),
    )
