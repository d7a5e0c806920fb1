"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29 17:04:59.210976
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('storyboards',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('project_name', sa.String(length=512), nullable=True),
    sa.Column('fingerprint', sa.String(length=64), nullable=True),
    sa.Column('segment_count', sa.Integer(), nullable=False),
    sa.Column('present', sa.Boolean(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(), nullable=False),
    sa.Column('scanned_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_storyboards')),
    sa.UniqueConstraint('path', name=op.f('uq_storyboards_path'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('storyboard_id', sa.Integer(), nullable=False),
    sa.Column('segment_index', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('state', sa.Enum('pending', 'submitting', 'submitted', 'downloading', 'done', 'failed', 'removed', name='job_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('params_sha', sa.String(length=64), nullable=False),
    sa.Column('is_pro', sa.Boolean(), nullable=False),
    sa.Column('target_dir', sa.String(length=1024), nullable=False),
    sa.Column('remote_task_id', sa.String(length=128), nullable=True),
    sa.Column('cost_cents', sa.Integer(), nullable=True),
    sa.Column('spent_cents', sa.Integer(), nullable=False),
    sa.Column('progress', sa.Integer(), nullable=False),
    sa.Column('video_url', sa.Text(), nullable=True),
    sa.Column('video_path', sa.String(length=1024), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('error_kind', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('submitting_at', sa.DateTime(), nullable=True),
    sa.Column('submitted_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['storyboard_id'], ['storyboards.id'], name=op.f('fk_jobs_storyboard_id_storyboards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('remote_task_id', name=op.f('uq_jobs_remote_task_id')),
    sa.UniqueConstraint('storyboard_id', 'segment_index', 'version', name=op.f('uq_jobs_storyboard_id_segment_index_version'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_state_next_attempt_at', ['state', 'next_attempt_at'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('from_state', sa.Enum('pending', 'submitting', 'submitted', 'downloading', 'done', 'failed', 'removed', name='event_from_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('to_state', sa.Enum('pending', 'submitting', 'submitted', 'downloading', 'done', 'failed', 'removed', name='event_to_state', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_events_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_job_id'), ['job_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_job_id'))

    op.drop_table('events')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_next_attempt_at')

    op.drop_table('jobs')
    op.drop_table('storyboards')
