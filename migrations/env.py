"""Alembic environment: reuses the connection ledger passes in, or opens LEDGER_DATABASE_URL."""
from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context

from ledger.db import make_engine
from ledger.models import Base

config = context.config
target_metadata = Base.metadata


def run_with(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    engine = make_engine(os.environ.get("LEDGER_DATABASE_URL", "sqlite:///ledger.db"))
    with engine.connect() as conn:
        run_with(conn)
        conn.commit()
