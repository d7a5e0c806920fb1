"""paid once: paths and task ids of any length, a lease-owner index, the meta table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 02:00:00
"""
from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('meta',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_meta'))
    )
    with op.batch_alter_table('storyboards', schema=None) as batch_op:
        batch_op.add_column(sa.Column('path_key', sa.String(length=64), nullable=True))
    conn = op.get_bind()
    boards = sa.table('storyboards', sa.column('id', sa.Integer), sa.column('path', sa.Text),
                      sa.column('path_key', sa.String))
    rows = conn.execute(sa.select(boards.c.id, boards.c.path)).all()
    if rows:
        conn.execute(boards.update().where(boards.c.id == sa.bindparam('b_id')).values(path_key=sa.bindparam('key')),
                     [{'b_id': r.id, 'key': hashlib.sha256(r.path.encode('utf-8', 'surrogateescape')).hexdigest()}
                      for r in rows])
    with op.batch_alter_table('storyboards', schema=None) as batch_op:
        batch_op.alter_column('path_key', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_constraint('uq_storyboards_path', type_='unique')
        batch_op.alter_column('path', existing_type=sa.String(length=1024), type_=sa.Text(), existing_nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_storyboards_path_key'), ['path_key'])
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('target_dir', existing_type=sa.String(length=1024), type_=sa.Text(), existing_nullable=False)
        batch_op.alter_column('remote_task_id', existing_type=sa.String(length=128), type_=sa.Text(), existing_nullable=True)
        batch_op.alter_column('video_path', existing_type=sa.String(length=1024), type_=sa.Text(), existing_nullable=True)
        batch_op.create_index('ix_jobs_lease_owner', ['lease_owner'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_lease_owner')
        batch_op.alter_column('video_path', existing_type=sa.Text(), type_=sa.String(length=1024), existing_nullable=True)
        batch_op.alter_column('remote_task_id', existing_type=sa.Text(), type_=sa.String(length=128), existing_nullable=True)
        batch_op.alter_column('target_dir', existing_type=sa.Text(), type_=sa.String(length=1024), existing_nullable=False)
    with op.batch_alter_table('storyboards', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_storyboards_path_key'), type_='unique')
        batch_op.alter_column('path', existing_type=sa.Text(), type_=sa.String(length=1024), existing_nullable=False)
        batch_op.create_unique_constraint('uq_storyboards_path', ['path'])
        batch_op.drop_column('path_key')
    op.drop_table('meta')
