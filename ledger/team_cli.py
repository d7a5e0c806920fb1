"""Team mode commands: ``ledger workers``, ``ledger migrate`` and ``ledger copy-ledger``.

Loaded only when one of them runs (``LedgerGroup.LAZY``): every other command would pay for them.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional, Tuple

import click
from rich.table import Table
from sqlalchemy import func, insert, select, text

from .cli import App, currency_of_provider, err, out
from .db import describe_database, open_ledger, upgrade
from .errors import UsageError
from .models import api_keys, events, jobs, meta, picks, storyboards
from .money import money
from .store import KeyRow, Store, WorkerRow

# Tables in the order their rows may be inserted (a row's references come first); workers are a
# machine's own business and are not copied.
COPIED = (storyboards, jobs, events, meta, picks, api_keys)
BATCH = 2000


def _ago(now: datetime, then: datetime) -> str:
    seconds = max(0.0, (now - then).total_seconds())
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 \
        else f"{seconds / 3600:.0f} h ago"


def worker_json(row: WorkerRow, now: datetime) -> Dict[str, Any]:
    return {"worker": row.owner, "host": row.host, "pid": row.pid, "status": row.status(now),
            "started_at": row.started_at.isoformat(), "heartbeat_at": row.heartbeat_at.isoformat(),
            "jobs_held": row.jobs_held, "concurrency": row.concurrency,
            "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None}


def key_json(row: KeyRow, currency: str) -> Dict[str, Any]:
    return {"key": row.shown, "fingerprint": row.fingerprint, "provider": row.provider, "limit": row.concurrency,
            "in_flight": row.in_flight, "spent": str(money(row.spent, currency)),
            "max_spend": str(money(row.max_spend, currency)) if row.max_spend is not None else None,
            "out_of_rotation": row.out_reason}


def live_workers(store: Store) -> Tuple[datetime, List[WorkerRow]]:
    """The database's clock now (what heartbeats are written by), and the live workers."""
    now, rows = store.workers(within=timedelta(days=1))
    return now, [w for w in rows if w.live(now)]


@click.command("workers")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--all", "show_all", is_flag=True, help="Also the workers that stopped or fell silent (last 24 h).")
@click.pass_obj
def workers_command(app: App, as_json: bool, show_all: bool) -> None:
    """The `ledger work` processes sharing this ledger (every machine), and the API keys they use."""
    settings = app.settings()
    store = app.store(settings)
    now, rows = store.workers(within=timedelta(days=1))
    shown = rows if show_all else [w for w in rows if w.live(now)]
    keys = store.keys()
    if as_json:
        click.echo(json.dumps({"workers": [worker_json(w, now) for w in shown],
                               "keys": [key_json(k, currency_of_provider(k.provider)) for k in keys]}, ensure_ascii=False))
        return
    if not shown:
        out.print("No live workers." + ("" if show_all else " (`ledger workers --all` lists the last day's.)"))
    else:
        table = Table(title="ledger workers", box=None, pad_edge=False, header_style="bold")
        for column in ("host", "pid", "status", "started", "jobs held", "last heartbeat"):
            table.add_column(column, justify="right" if column in ("pid", "jobs held") else "left", no_wrap=True)
        for w in shown:
            table.add_row(w.host, str(w.pid), w.status(now), w.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                          f"{w.jobs_held}/{w.concurrency}", _ago(now, w.heartbeat_at))
        out.print(table)
    if keys:
        table = Table(title="API keys", box=None, pad_edge=False, header_style="bold")
        for column in ("provider", "key", "fingerprint", "at once", "in flight", "spent", "state"):
            table.add_column(column, no_wrap=True, justify="right" if column in ("at once", "in flight") else "left")
        for k in keys:
            currency = currency_of_provider(k.provider)
            spent = str(money(k.spent, currency)) + (f" of {money(k.max_spend, currency)}" if k.max_spend else "")
            table.add_row(k.provider, k.shown, k.fingerprint, str(k.concurrency or "-"), str(k.in_flight), spent,
                          "out" if k.out_reason else "in rotation")
        out.print(table)
        for k in keys:  # the reasons in full, one line each (they do not fit a column)
            if k.out_reason:
                out.print(f"key {k.fingerprint} out of rotation since {k.out_at:%Y-%m-%d %H:%M:%S} UTC: {k.out_reason}",
                          markup=False)


@click.command("migrate")
@click.pass_obj
def migrate_command(app: App) -> None:
    """Bring the ledger's schema to the newest version (before machines start on a shared ledger)."""
    settings = app.settings()
    assert settings.database_url
    engine = open_ledger(settings.database_url, migrate=False, cwd=app.cwd)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    out.print(f"ledger database {describe_database(settings.database_url, app.cwd)} is up to date", markup=False)


@click.command("copy-ledger")
@click.option("--to", "target", required=True, metavar="URL",
              help="The ledger to copy into (e.g. postgresql+psycopg://user@host/ledger); it must hold no jobs.")
@click.option("--force", is_flag=True, help="Copy even while workers are running on the source ledger.")
@click.pass_obj
def copy_ledger_command(app: App, target: str, force: bool) -> None:
    """Copy this ledger (LEDGER_DATABASE_URL, e.g. ./ledger.db) into another database, every job,
    event, pick and price kept; then point LEDGER_DATABASE_URL at the new one."""
    settings = app.settings()
    assert settings.database_url
    source_url = settings.database_url
    if source_url == target:
        raise UsageError("--to names the ledger being copied")
    source = app.store(settings)
    _, running = live_workers(source)
    if running and not force:
        raise UsageError(f"{len(running)} worker(s) are running on this ledger ({', '.join(w.owner for w in running)}); "
                         "stop them first (or --force)")
    destination = open_ledger(target, cwd=app.cwd)
    try:
        with destination.connect() as conn:
            already = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
        if already:
            raise UsageError(f"{describe_database(target, app.cwd)} already holds {already} job(s); copy into an "
                             "empty ledger")
        counts = _copy(source.engine, destination)
    finally:
        destination.dispose()
    where = describe_database(target, app.cwd)
    out.print(f"Copied {counts['jobs']} job(s) of {counts['storyboards']} storyboard(s), {counts['events']} event(s) "
              f"and {counts['picks']} pick(s) to {where}. Point LEDGER_DATABASE_URL at it:", markup=False)
    click.echo(f"  LEDGER_DATABASE_URL={target}")
    if running:
        err.print("warning: workers were running; run `ledger work` on the new ledger to settle what they changed since",
                  markup=False)


def _copy(source: Any, destination: Any) -> Dict[str, int]:
    """Every row of ``COPIED``, in one transaction on the destination, ids kept."""
    counts: Dict[str, int] = {}
    with source.connect() as read, destination.begin() as write:
        for table in COPIED:
            key = next(iter(table.primary_key.columns))
            last: Optional[Any] = None
            counts[table.name] = 0
            while True:
                query = select(table).order_by(key).limit(BATCH)
                if last is not None:
                    query = query.where(key > last)
                rows = [dict(r._mapping) for r in read.execute(query)]
                if not rows:
                    break
                write.execute(insert(table), rows)
                counts[table.name] += len(rows)
                last = rows[-1][key.name]
        if destination.dialect.name == "postgresql":  # the next new row's id follows the copied ones
            for table in (storyboards, jobs, events, picks):
                write.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                   f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"))
    return counts
