"""providers: where each job goes (provider), where it was sent (API base URL), its price key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 01:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every job so far was made for the one provider there was; its base URL was the configured one
    # (NULL: the provider's configured base URL), its price the normal or the Pro one. Plain ADD /
    # DROP COLUMN, never a copied table: picks reference jobs, and SQLite (3.35+) drops in place.
    op.add_column('jobs', sa.Column('provider', sa.String(length=32), server_default='sora_hk', nullable=False))
    op.add_column('jobs', sa.Column('api_base', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('price_key', sa.String(length=64), server_default='normal', nullable=False))
    jobs = sa.table('jobs', sa.column('is_pro', sa.Boolean), sa.column('price_key', sa.String))
    op.get_bind().execute(jobs.update().where(jobs.c.is_pro.is_(True)).values(price_key='pro'))


def downgrade() -> None:
    for name in ('price_key', 'api_base', 'provider'):
        op.drop_column('jobs', name)
