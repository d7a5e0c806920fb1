"""Engines, transactions and migrations.

SQLite is made a safe concurrent store the way Prefect and MLflow do it: WAL, a busy timeout,
``synchronous=NORMAL``, foreign keys on, and write transactions that take the write lock up front
(``BEGIN IMMEDIATE``) so two processes never deadlock upgrading a read lock. The same code runs on
PostgreSQL, where row locks (``FOR UPDATE SKIP LOCKED``) do that job.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, nullcontext
from weakref import WeakKeyDictionary
from pathlib import Path
from typing import Iterator, Optional

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from .errors import DatabaseError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
_WRITE = "ledger_write"
_write_locks: "WeakKeyDictionary[Engine, threading.Lock]" = WeakKeyDictionary()


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event below issue BEGIN itself instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the project's connection settings (no migration)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise DatabaseError(f"LEDGER_DATABASE_URL is not a database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise DatabaseError(f"the ledger's folder does not exist: {folder}")
        # One connection per worker thread, so no thread waits for the pool itself.
        # Every use ends its own transaction (write_tx/read_tx), so the pool need not roll back
        # again on each return.
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, pool_size=40,
                               max_overflow=40, pool_reset_on_return=None)
        _install_sqlite_pragmas(engine)
        _write_locks[engine] = threading.Lock()
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except (ImportError, sa_exc.NoSuchModuleError) as exc:
        raise DatabaseError(f"no driver for {parsed.get_backend_name()}: {exc} (pip install 'ledger[postgres]')") from exc


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction that holds the write lock from its first statement.

    On SQLite the threads of one process also queue on a plain lock first: SQLite's own busy
    handler sleeps in steps of up to 100 ms, which would leave the database idle most of the
    time under contention; other processes still meet the busy handler.
    """
    lock = _write_locks.get(engine)
    with lock if lock is not None else nullcontext(), engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read transaction: one consistent snapshot, no write lock."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def _alembic_config(connection: Optional[Connection] = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    from . import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> Optional[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``engine``."""
    from alembic import command

    if engine.dialect.name != "sqlite":
        with write_tx(engine) as conn:
            command.upgrade(_alembic_config(conn), revision)
        return
    # Batch mode rebuilds a SQLite table (copy, drop, rename); with foreign keys enforced, dropping
    # a referenced table fails. SQLite's documented procedure: keys off outside the transaction,
    # migrate, check, keys on again.
    lock = _write_locks.get(engine)
    with lock if lock is not None else nullcontext(), engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys = OFF")
        try:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                command.upgrade(_alembic_config(conn), revision)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise DatabaseError(f"the migration left {len(broken)} row(s) pointing nowhere: {broken[:3]}")
        finally:
            raw.execute("PRAGMA foreign_keys = ON")


def open_ledger(url: str, *, migrate: bool = True) -> Engine:
    """Open the ledger at ``url``, bringing its schema to the newest revision on first use."""
    engine = make_engine(url)
    if not migrate:
        return engine
    try:
        if current_revision(engine) != head_revision():
            log.info("migrating the ledger at %s", engine.url.render_as_string(hide_password=True))
            upgrade(engine)
    except sa_exc.SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open the ledger {engine.url.render_as_string(hide_password=True)}: {exc.orig or exc}") from exc
    return engine
