"""picks: the take chosen for each segment (one per segment; the history is in events)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 03:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('picks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('storyboard_id', sa.Integer(), nullable=False),
    sa.Column('segment_index', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('picked_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_picks_job_id_jobs')),
    sa.ForeignKeyConstraint(['storyboard_id'], ['storyboards.id'], name=op.f('fk_picks_storyboard_id_storyboards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_picks')),
    sa.UniqueConstraint('job_id', name=op.f('uq_picks_job_id')),
    sa.UniqueConstraint('storyboard_id', 'segment_index', name=op.f('uq_picks_storyboard_id_segment_index'))
    )


def downgrade() -> None:
    op.drop_table('picks')
