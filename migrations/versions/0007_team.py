"""team mode: the key each attempt was created with, the keys in use, the workers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 08:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: created before keys were recorded; such a job is polled with its provider's first key.
    op.add_column('jobs', sa.Column('key_fp', sa.String(length=16), nullable=True))
    op.create_index('ix_jobs_key_fp_state', 'jobs', ['key_fp', 'state'], unique=False)
    op.create_table(
        'api_keys',
        sa.Column('fingerprint', sa.String(length=16), nullable=False),
        sa.Column('provider', sa.String(length=32), nullable=False),
        sa.Column('shown', sa.String(length=64), nullable=False),
        sa.Column('concurrency', sa.Integer(), nullable=True),
        sa.Column('max_spend', sa.Integer(), nullable=True),
        sa.Column('out_reason', sa.Text(), nullable=True),
        sa.Column('out_at', sa.DateTime(), nullable=True),
        sa.Column('seen_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('fingerprint', name=op.f('pk_api_keys')),
    )
    op.create_table(
        'workers',
        sa.Column('owner', sa.String(length=255), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('concurrency', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
        sa.Column('jobs_held', sa.Integer(), nullable=False),
        sa.Column('lease_seconds', sa.Float(), nullable=False),
        sa.Column('stopped_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('owner', name=op.f('pk_workers')),
    )


def downgrade() -> None:
    op.drop_table('workers')
    op.drop_table('api_keys')
    op.drop_index('ix_jobs_key_fp_state', table_name='jobs')
    op.drop_column('jobs', 'key_fp')
