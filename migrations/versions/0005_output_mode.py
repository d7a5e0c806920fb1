"""output mode per storyboard: remembered, so a later run never splits a storyboard's takes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 04:00:00
"""
from __future__ import annotations

import sqlite3
from pathlib import PurePosixPath

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# The states in which a job's video exists or is being paid for: where those went is the mode.
_STARTED = ('submitting', 'submitted', 'downloading', 'done')


def mode_of(storyboard_path: str, target_dir: str) -> str:
    """The output mode that put a job of ``storyboard_path`` in ``target_dir``: in place means
    ``{storyboard folder}/{stem}_assets/Segment_i``; anything else came from the output folder."""
    board = PurePosixPath(storyboard_path)
    in_place = board.parent / f"{board.stem}_assets"
    return 'in-place' if PurePosixPath(target_dir).parent == in_place else 'centralized'


def upgrade() -> None:
    with op.batch_alter_table('storyboards', schema=None) as batch_op:
        batch_op.add_column(sa.Column('output_mode', sa.String(length=16), nullable=True))
    conn = op.get_bind()
    boards = sa.table('storyboards', sa.column('id', sa.Integer), sa.column('path', sa.Text),
                      sa.column('output_mode', sa.String))
    jobs = sa.table('jobs', sa.column('storyboard_id', sa.Integer), sa.column('target_dir', sa.Text),
                    sa.column('state', sa.String), sa.column('remote_task_id', sa.Text))
    started = sa.or_(jobs.c.state.in_(_STARTED), jobs.c.remote_task_id.is_not(None))
    # A job that was paid for says where the storyboard's videos are; failing that, any job.
    where = {}
    for condition in (sa.true(), started):
        where.update({r.storyboard_id: r.target_dir for r in conn.execute(
            sa.select(jobs.c.storyboard_id, sa.func.min(jobs.c.target_dir).label('target_dir'))
            .where(condition).group_by(jobs.c.storyboard_id))})
    paths = {r.id: r.path for r in conn.execute(sa.select(boards.c.id, boards.c.path))}
    updates = [{'b_id': board_id, 'mode': mode_of(paths[board_id], target)}
               for board_id, target in where.items() if board_id in paths]
    if updates:
        conn.execute(boards.update().where(boards.c.id == sa.bindparam('b_id'))
                     .values(output_mode=sa.bindparam('mode')), updates)


def downgrade() -> None:
    # SQLite drops a column in place since 3.35. Batch mode instead copies and renames the table
    # that jobs point at, which fails while foreign keys are enforced (as in a downgrade run
    # inside a transaction, where they cannot be switched off): only older SQLite needs it.
    if op.get_bind().dialect.name == 'sqlite' and sqlite3.sqlite_version_info < (3, 35):
        with op.batch_alter_table('storyboards', schema=None) as batch_op:
            batch_op.drop_column('output_mode')
    else:
        op.drop_column('storyboards', 'output_mode')
