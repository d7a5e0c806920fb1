"""Engines, transactions and migrations.

SQLite is made a safe concurrent store the way Prefect and MLflow do it: WAL, a busy timeout,
``synchronous=NORMAL``, foreign keys on, and write transactions that take the write lock up front
(``BEGIN IMMEDIATE``) so two processes never deadlock upgrading a read lock. The same code runs on
PostgreSQL, where row locks (``FOR UPDATE SKIP LOCKED``) do that job.

Trouble is named here too: ``database_trouble`` turns whatever SQLAlchemy or a driver raised
(locked, read-only, corrupt, unreachable, …) into one line naming the ledger and the cause, and
``require_ledger`` keeps commands that need an existing ledger from creating an empty one.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
from contextlib import contextmanager, nullcontext
from datetime import datetime
from weakref import WeakKeyDictionary
from pathlib import Path
from typing import Iterator, Optional, Tuple, Type

from sqlalchemy import create_engine, event, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from .errors import DatabaseError, DatabaseUnavailable, LedgerError

log = logging.getLogger(__name__)

# How long SQLite waits for another process's write lock before giving up (LEDGER_BUSY_TIMEOUT).
BUSY_TIMEOUT_SECONDS = 30.0
# How long connecting to a database server may take before it counts as unreachable.
CONNECT_TIMEOUT_SECONDS = 10
_WRITE = "ledger_write"
_write_locks: "WeakKeyDictionary[Engine, threading.Lock]" = WeakKeyDictionary()


def _install_sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event below issue BEGIN itself instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except sa_exc.ArgumentError as exc:
        raise DatabaseError(f"LEDGER_DATABASE_URL is not a database URL: {exc}") from exc


def make_engine(url: str, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> Engine:
    """An engine for ``url`` with the project's connection settings (no migration).

    ``busy_timeout`` is how many seconds SQLite waits for another process's write lock."""
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None and not path.resolve().parent.is_dir():
            raise DatabaseError(f"the ledger's folder does not exist: {path.resolve().parent}")
        # One connection per worker thread, so no thread waits for the pool itself.
        # Every use ends its own transaction (write_tx/read_tx), so the pool need not roll back
        # again on each return.
        engine = create_engine(parsed, connect_args={"timeout": busy_timeout}, pool_size=40,
                               max_overflow=40, pool_reset_on_return=None)
        _install_sqlite_pragmas(engine, int(busy_timeout * 1000))
        _write_locks[engine] = threading.Lock()
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    # Without a connect timeout an unroutable host keeps a command waiting for minutes.
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if parsed.get_backend_name() == "postgresql":
        # A worker frozen (or cut off) inside a transaction would hold its row locks for ever and stop
        # every other machine: the server ends such a transaction after as long as others wait for a lock.
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={max(1000, int(busy_timeout * 1000))}"
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ImportError, sa_exc.NoSuchModuleError) as exc:
        raise DatabaseError(f"no driver for {parsed.get_backend_name()}: {exc} (pip install 'ledger[postgres]')") from exc


def db_now(conn: Connection) -> datetime:
    """The database's clock now (naive UTC). Every lease, claim, heartbeat and reconcile grace goes
    by it, so machines whose clocks differ still agree on when a lease ends. PostgreSQL: the
    server's ``clock_timestamp()`` (the moment of the call, not the transaction's start). SQLite:
    the ledger is a file on this machine, so the connection's clock is this machine's."""
    if conn.dialect.name == "postgresql":
        return conn.execute(text("SELECT timezone('UTC', clock_timestamp())")).scalar_one()
    return datetime.fromisoformat(conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one())


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
    """The newest revision, from the migration files' names (``0005_….py`` is revision ``0005``).

    Every command asks this; loading Alembic's script directory to answer would cost each command
    a sixth of a second. ``tests/unit/test_migrations.py`` checks it agrees with Alembic."""
    from . import migrations

    folder = Path(migrations.__file__).parent / "versions"
    return max(p.name.split("_", 1)[0] for p in folder.glob("[0-9]*_*.py"))


def current_revision(engine: Engine) -> Optional[str]:
    """The revision the ledger's schema is at (None for a database Alembic never touched)."""
    with engine.connect() as conn:
        if not sa_inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``engine``."""
    from alembic import command

    if engine.dialect.name != "sqlite":
        with write_tx(engine) as conn:
            if engine.dialect.name == "postgresql":
                # Machines that start together migrate one after the other (the later ones find the
                # schema current); the lock ends with the transaction.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7472501)")
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


def open_ledger(url: str, *, migrate: bool = True, busy_timeout: float = BUSY_TIMEOUT_SECONDS,
                cwd: Optional[Path] = None) -> Engine:
    """Open the ledger at ``url``, bringing its schema to the newest revision on first use.

    Trouble on the way is a ``DatabaseError`` or ``DatabaseUnavailable`` naming the database
    (see ``database_trouble``)."""
    engine = make_engine(url, busy_timeout=busy_timeout)
    if not migrate:
        return engine
    try:
        if current_revision(engine) != head_revision():
            log.info("migrating the ledger at %s", describe_database(url, cwd))
            upgrade(engine)
    except driver_errors() as exc:
        engine.dispose()
        raise database_trouble(exc, url, cwd=cwd, busy_timeout=busy_timeout, opening=True) from exc
    return engine


# --- naming a database and its trouble in one line ---------------------------------------------


def driver_errors() -> Tuple[Type[BaseException], ...]:
    """What SQLAlchemy or a driver may raise from any query; ``database_trouble`` turns each into one
    line. psycopg's errors count only once psycopg is loaded (a PostgreSQL ledger loads it): importing
    it for every SQLite command would cost each a sixth of a second."""
    errors: Tuple[Type[BaseException], ...] = (sa_exc.SQLAlchemyError, sqlite3.Error)
    psycopg = sys.modules.get("psycopg")
    return errors + (psycopg.Error,) if psycopg is not None else errors


def sqlite_file(url: str) -> Optional[Path]:
    """The file behind a SQLite URL (``sqlite:///ledger.db``, ``sqlite:///file:x.db?mode=ro&uri=true``),
    None for an in-memory database or another backend."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    database = parsed.database
    if parsed.query.get("uri") in ("true", "1") and database.startswith("file:"):
        database = database[len("file:"):]
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            return None
    return Path(database).expanduser()


def describe_database(url: str, cwd: Optional[Path] = None) -> str:
    """How messages name a ledger: the SQLite file (``./ledger.db`` when under ``cwd``), or the
    URL with its password hidden."""
    path = sqlite_file(url)
    if path is None:
        return _parse(url).render_as_string(hide_password=True)
    path = path.resolve()
    if cwd is not None:
        try:
            return f"./{path.relative_to(cwd.resolve()).as_posix()}"
        except ValueError:
            pass
    return str(path)


def require_ledger(url: str, cwd: Optional[Path] = None) -> None:
    """Raise ``DatabaseError`` when ``url`` names a SQLite file that does not exist, instead of
    letting SQLite create an empty ledger where the user expected theirs."""
    path = sqlite_file(url)
    if path is None:
        return
    # A missing folder is a wrong URL rather than a fresh folder; make_engine says so.
    if path.parent.is_dir() and not path.exists():
        raise DatabaseError(f"no ledger here ({describe_database(url, cwd)}) — run `ledger scan` first")


def database_trouble(exc: BaseException, url: str, *, cwd: Optional[Path] = None,
                     busy_timeout: float = BUSY_TIMEOUT_SECONDS, opening: bool = False) -> LedgerError:
    """The one translation of a SQLAlchemy or driver error into a one-line ``LedgerError``.

    ``DatabaseUnavailable`` (exit 5) when the ledger is there but locked, read-only, corrupt, full
    or unreachable; ``DatabaseError`` (exit 3) when the URL itself is wrong (unknown host,
    refused login, no such database) or, while ``opening``, for anything else."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    detail = lines[0] if lines else type(orig).__name__
    text = " ".join(lines).lower()
    name = describe_database(url, cwd)
    path = sqlite_file(url)
    if path is not None:
        cause = _sqlite_cause(text, detail, path, busy_timeout)
    else:
        cause = _server_cause(text, detail, exc)
    if cause is None:
        wording = "cannot open the ledger" if opening else "the ledger database failed"
        return (DatabaseError if opening else DatabaseUnavailable)(f"{wording} {name}: {detail}")
    unavailable, message = cause
    return (DatabaseUnavailable if unavailable else DatabaseError)(message.replace("{name}", name))


def _sqlite_cause(text: str, detail: str, path: Path, busy_timeout: float) -> Optional[Tuple[bool, str]]:
    """(unavailable?, message with {name}) for a SQLite error, None when it is not one we know."""
    if "is locked" in text or "database is busy" in text:
        return True, (f"the ledger {{name}} is locked by another process (waited {busy_timeout:g} s, "
                      f"LEDGER_BUSY_TIMEOUT): try again when it has finished")
    if "readonly database" in text or "read-only" in text:
        return True, "the ledger {name} is read-only: make the file and its folder writable"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return True, (f"the ledger {{name}} is corrupt ({detail}): restore it from a backup "
                      f"(or try `sqlite3 {path.name} .recover`)")
    if "disk is full" in text:
        return True, "the disk holding the ledger {name} is full: free some space"
    if "disk i/o error" in text:
        return True, "the ledger {name} cannot be read or written (disk I/O error)"
    if "unable to open database file" in text:
        folder = path.resolve().parent
        if path.exists() and not os.access(folder, os.W_OK):
            return True, (f"the ledger {{name}} cannot be opened: its folder {folder} is read-only "
                          f"(SQLite writes its journal beside the file)")
        if path.exists() and not os.access(path, os.R_OK):
            return True, "the ledger {name} cannot be opened: the file is not readable"
        return (path.exists(), "the ledger {name} cannot be opened (unable to open database file)")
    return None


def _server_cause(text: str, detail: str, exc: BaseException) -> Optional[Tuple[bool, str]]:
    """(unavailable?, message with {name}) for a database server's error, None when unknown."""
    if "connection refused" in text:
        return True, "cannot reach the ledger database {name}: connection refused (is the server running?)"
    if "resolve host" in text or "translate host name" in text or "name or service not known" in text:
        return False, "cannot reach the ledger database {name}: unknown host (check LEDGER_DATABASE_URL)"
    if "timeout expired" in text or "timed out" in text:
        return True, "cannot reach the ledger database {name}: no answer (connection timed out)"
    if "authentication failed" in text or "no pg_hba.conf entry" in text or \
            ('database "' in text and "does not exist" in text):
        return False, f"the ledger database {{name}} refused the connection: {detail}"
    if "read-only transaction" in text or "read only" in text:
        return True, "the ledger database {name} is read-only"
    if getattr(exc, "connection_invalidated", False) or "server closed the connection" in text \
            or "connection is closed" in text or "terminating connection" in text or "connection failed" in text:
        return True, f"lost the connection to the ledger database {{name}}: {detail}"
    return None
