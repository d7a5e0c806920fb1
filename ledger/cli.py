"""The ``ledger`` command line: parses options, calls the core modules, renders what they return.

Errors are mapped to exit codes in exactly one place (``LedgerGroup.invoke``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .db import database_trouble, driver_errors, open_ledger, require_ledger, sqlite_file, upgrade
from .errors import (
    AuthError,
    BudgetExhausted,
    ConfigError,
    DatabaseUnavailable,
    ExitStatus,
    InputError,
    Interrupted,
    JobsFailed,
    LedgerError,
    UsageError,
)
from .failures import default_export_path, export_failed, select_from_file
from .live import ConsoleHandler, PathCell, make_view, output_lock, plural
from .models import iso_utc
from .policy import PollPolicy, RetryPolicy
from .redact import RedactingFilter, redact
from .scan import ScanReport, scan
from .settings import OUTPUT_MODES, Settings, load_settings
from .states import ALL_STATES, State
from .store import JobRow, JobScope, Requeued, Store
from . import export as exporting
from . import destinations, quickstart, refs
from .i18n import N_, ntr, tr
from .store import (PickRefused, clear_pick, job_by_key, pick_counts, pick_rows, record_pick, segment_pick,
                    storyboards_by_suffix, takes)
from .storyboard import ledger_path
from .money import Money, money, parse_money
from .pricing import known_prices, refresh_prices
from .providers import DEFAULT as DEFAULT_PROVIDER
from .providers import REGISTRY, ProviderPool, configured_base
from .providers import SORA as SORA_PROVIDERS
from .sunset import CLOSED_ON
from .work import Scheduler, Stop, WorkOptions, WorkSummary, plan_work
from .work.types import BoardTally

log = logging.getLogger("ledger")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
STATUS_ROWS = 40  # storyboards listed by `status` (the ones with the most work left) unless --all


def _json_one_per_line(data: Dict[str, Any], listed: str) -> str:
    """``data`` as indented JSON with each item of the list ``listed`` on one line of its own: as
    readable, and (the C encoder does not indent) ten times faster for 50,000 storyboards."""
    head = json.dumps({k: v for k, v in data.items() if k != listed}, ensure_ascii=False, indent=2)
    items = ",\n".join("    " + json.dumps(item, ensure_ascii=False) for item in data[listed])
    return f'{head[:-2]},\n  "{listed}": [\n{items}\n  ]\n}}' if items else f'{head[:-2]},\n  "{listed}": []\n}}'


@dataclass
class App:
    """What the group callback gathers; ``settings()`` builds the one Settings object of a run."""

    cwd: Path
    environ: Dict[str, str]
    verbose: int
    database_url: Optional[str]
    redactor: RedactingFilter
    built: Optional[Settings] = None

    def settings(self, **overrides: Any) -> Settings:
        if self.built is None:
            self.built = load_settings(self.cwd, self.environ, {"database_url": self.database_url, **overrides})
            self.redactor.secrets.extend(self.built.api_keys)
        return self.built

    def store(self, settings: Settings, *, create: bool = False) -> Store:
        """The ledger of ``settings``. Only commands that start a ledger (``create``: scan, run)
        may bring a new SQLite file into being; the others say there is no ledger here."""
        assert settings.database_url
        if not create:
            require_ledger(settings.database_url, self.cwd)
        engine = open_ledger(settings.database_url, busy_timeout=settings.busy_timeout, cwd=self.cwd)
        # Closed with the command: a SQLite ledger is checkpointed and its -wal file removed.
        click.get_current_context().call_on_close(engine.dispose)
        return Store(engine, cwd=self.cwd)


def _first_sentence(text: str) -> str:
    """Up to the first full stop or question mark that ends a sentence: followed by the end or by a
    capital ("e.g. a#2v1" goes on)."""
    found = re.search(r"[.?](?=\s+[A-Z`]|$)", text)
    return text[:found.end()].strip() if found else text


def labelled(label: str, text: str, style: str) -> Text:
    """``error: …`` with its label coloured (plain when piped or NO_COLOR is set: rich decides)."""
    return Text.assemble((label, style), " ", text)


class LedgerGroup(click.Group):
    """Maps every LedgerError, database trouble and Ctrl+C to its documented exit code and a
    one-line cause; the traceback only with ``-vv``. Commands in ``LAZY`` are loaded when used:
    every other command would pay for importing them."""

    LAZY = {"sim": ("ledger.sim.command", "sim"), "workers": ("ledger.team_cli", "workers_command"),
            "migrate": ("ledger.team_cli", "migrate_command"), "copy-ledger": ("ledger.team_cli", "copy_ledger_command"),
            "check": ("ledger.check_cli", "check_command")}

    # The commands of every day first, in the order a project goes; the rest after them, A to Z.
    EVERYDAY = ("init", "run", "status", "review", "pick", "export")

    def list_commands(self, ctx: click.Context) -> List[str]:
        names = sorted([*super().list_commands(ctx), *self.LAZY])
        return [*(n for n in self.EVERYDAY if n in names), *(n for n in names if n not in self.EVERYDAY)]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's first sentence whole, wrapped rather than cut off with "..."."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                text = " ".join((command.short_help or command.help or "").split())
                rows.append((name, tr(_first_sentence(text))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in self.LAZY:
            import importlib

            module, name = self.LAZY[cmd_name]
            return getattr(importlib.import_module(module), name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LedgerError as exc:
            self._report(ctx, exc)
            ctx.exit(int(exc.exit_status))
        except driver_errors() as exc:
            app = ctx.find_object(App)
            if app is None or app.built is None or not app.built.database_url:
                raise
            error = database_trouble(exc, app.built.database_url, cwd=app.cwd, busy_timeout=app.built.busy_timeout)
            error.__cause__ = exc
            self._report(ctx, error)
            ctx.exit(int(error.exit_status))
        except KeyboardInterrupt:
            err.print("interrupted")
            ctx.exit(int(ExitStatus.INTERRUPTED))

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        # A Ctrl+C while the options are parsed (before ``invoke``) is an interruption like any
        # other, not click's "Aborted!" with exit 1.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:
            err.print("interrupted")
            raise click.exceptions.Exit(int(ExitStatus.INTERRUPTED)) from None

    @staticmethod
    def _report(ctx: click.Context, exc: LedgerError) -> None:
        app = ctx.find_object(App)
        secrets = app.redactor.secrets if app else []
        # An expected outcome is not a crash: its traceback is for debugging (-vv) only.
        if app and app.verbose >= 2:
            import traceback

            err.print(redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), secrets), markup=False)
        err.print(labelled(tr("error:"), redact(str(exc), secrets), "bold red"))


class _LogFormatter(logging.Formatter):
    """Log lines with the key masked; below ``-vv`` an exception is its one-line cause, not a traceback."""

    def __init__(self, redactor: RedactingFilter, tracebacks: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        self.redactor = redactor
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks or not record.exc_info or record.exc_info[1] is None:
            return redact(super().format(record), self.redactor.secrets)
        exc = record.exc_info[1]
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        cause = " ".join(str(exc).split()) or "no details"
        return redact(f"{line} ({type(exc).__name__}: {cause})", self.redactor.secrets)


def _ours_or_serious(verbose: int) -> Callable[[logging.LogRecord], bool]:
    """Third-party INFO and WARNING lines (urllib3's "Retrying …", alembic's migration steps) only
    at ``-vv``; their errors, and every line of ours at the chosen level, always."""

    def keep(record: logging.LogRecord) -> bool:
        return (verbose >= 2 or record.levelno >= logging.ERROR or record.name == "ledger"
                or record.name.startswith("ledger."))

    return keep


def _configure_logging(verbose: int, redactor: RedactingFilter) -> None:
    """Log lines to stderr through the console the live view draws on, so none tears it
    (Python's warnings too); see ``_ours_or_serious`` for what each level shows."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = ConsoleHandler(err, echo_notices=verbose >= 1)
    handler.setFormatter(_LogFormatter(redactor, tracebacks=verbose >= 2))
    handler.addFilter(_ours_or_serious(verbose))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_ledger", False)]:
        root.removeHandler(old)
    handler._ledger = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ledger")
@click.option("-v", "--verbose", count=True, help="More log lines; -vv for debug, third-party logs and tracebacks.")
@click.option("--database", "database_url", metavar="URL", help="Ledger database URL (LEDGER_DATABASE_URL).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, database_url: Optional[str]) -> None:
    """Turn storyboard JSON files into generated videos, reliably and in bulk."""
    redactor = RedactingFilter()
    _configure_logging(verbose, redactor)
    ctx.obj = App(cwd=Path.cwd(), environ=dict(os.environ), verbose=verbose, database_url=database_url, redactor=redactor)


_INIT_ACTIONS = (N_("created"), N_("replaced"), N_("kept"))  # quickstart.Action, as init says them
_INIT_NOTES = {
    (quickstart.ENV_FILE, quickstart.Action.CREATED): N_("every setting, commented out; your key goes after {key}="),
    (quickstart.ENV_FILE, quickstart.Action.REPLACED): N_("(--force) every setting, commented out; your key goes after "
                                                       "{key}="),
    (quickstart.ENV_FILE, quickstart.Action.KEPT): N_("it exists (--force replaces it)"),
    ("input", quickstart.Action.CREATED): N_("storyboard*.json files in it (and in its sub-folders) are scanned"),
    ("input/_template.json", quickstart.Action.CREATED): N_("the documented example; never scanned, nothing is paid for it"),
    ("input/_template.json", quickstart.Action.REPLACED): N_("(--force) the documented example; never scanned"),
    ("input/_template.json", quickstart.Action.KEPT): N_("it exists (--force replaces it)"),
}


@cli.command("init")
@click.option("--force", is_flag=True, help="Replace an existing .env and input/_template.json.")
@click.option("--provider", metavar="NAME", help="Write .env for this provider: PROVIDER=NAME, its key setting and "
                                                 f"its base URL ({', '.join(REGISTRY)}).")
@click.pass_obj
def init_command(app: App, force: bool, provider: Optional[str]) -> None:
    """Start a project in this folder: .env (every setting; your key goes in it) and input/ with
    the documented example storyboard, which is never scanned. Replaces nothing without --force."""
    steps = quickstart.init_project(app.cwd, force=force, provider=provider)
    key = quickstart.key_setting(provider)
    for step in steps:
        out.print(f"{tr(step.action.value)} {step.path.as_posix()}: "
                  f"{tr(_INIT_NOTES[(step.path.as_posix(), step.action)]).format(key=key)}", markup=False)
    if provider and quickstart.Step(Path(quickstart.ENV_FILE), quickstart.Action.KEPT) in steps:
        out.print(tr("Next: set PROVIDER={provider} and {key}= in your .env (or `ledger init --provider {provider} "
                     "--force` rewrites it), then").format(provider=provider, key=key), markup=False)
    else:
        out.print(tr("Next: put your key after {key}= in .env, then").format(key=key), markup=False)
    out.print("  cp input/_template.json input/storyboard_myfilm.json   # " + tr("write your segments in the copy"),
              markup=False)
    out.print("  ledger run --dry-run                                   # " + tr("what would be paid, beside your balance"),
              markup=False)
    out.print(tr("and `ledger run` to generate. Only storyboard*.json files are submitted."), markup=False)
    if (provider or DEFAULT_PROVIDER) in SORA_PROVIDERS:
        others = ", ".join(name for name in REGISTRY if name not in SORA_PROVIDERS)
        out.print(tr("Note: the Sora upstream closed on {date}; `ledger init --provider NAME --force` writes .env "
                     "for another provider ({others}).").format(date=CLOSED_ON, others=others), markup=False)


def layout_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say where storyboards are and where videos go."""
    func = click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                        help="Where centralized output goes (OUTPUT_DIR, default ./output).")(func)
    func = click.option("--output-mode", type=click.Choice(OUTPUT_MODES),
                        help="centralized: output/{sub/dirs}/{stem}/Segment_{i}/; in-place: next to each storyboard. "
                             "A storyboard keeps the mode it was first recorded with; this changes it only while "
                             "it has no videos (OUTPUT_MODE, default centralized).")(func)
    func = click.option("--input-dir", type=click.Path(file_okay=False, path_type=Path),
                        help="Folder searched recursively for storyboard*.json (INPUT_DIR, default ./input).")(func)
    return func


requeue_changed_option = click.option(
    "--requeue-changed", is_flag=True, help="Generate again done jobs whose prompt or parameters changed.")
retry_failed_option = click.option(
    "--retry-failed", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
    help="Requeue the failed jobs listed in FILE (from export-failed), then work only those.")


def _facts(pairs: Sequence[Tuple[int, str]]) -> str:
    """``3 new, 1 changed``: only the counts that are not zero."""
    return tr(", ").join(what.format(n=count) for count, what in pairs if count)


def _render_scan(report: ScanReport, settings: Settings, store: Store, cwd: Path, *, pending: bool = True) -> None:
    """What a scan found and did (or, dry, would do) in plain words; ``pending``: and what is left
    to generate, priced (``run`` leaves that to the work that follows)."""
    o = report.outcome
    for warning in report.warnings:
        err.print(labelled(tr("warning:"), str(warning), "yellow"))
    for problem in report.problems:
        err.print(labelled(tr("invalid:"), str(problem), "red"))
    files = _facts([(len(report.invalid_files), tr("{n} invalid")), (o.storyboards_new, tr("{n} new")),
                    (o.storyboards_changed, tr("{n} changed")), (len(o.storyboards_missing), tr("{n} gone"))])
    if files and o.storyboards_unchanged:
        files += tr(", ") + tr("{n} unchanged").format(n=o.storyboards_unchanged)
    out.print(ntr("Scanned {n} storyboard file in {folder}: {what}.", "Scanned {n} storyboard files in {folder}: {what}.",
                  len(report.files), folder=ledger_path(settings.input_dir, cwd), what=files or tr("no change")),
              markup=False)
    jobs = _facts([(o.added, tr("{n} new")), (o.updated, tr("{n} updated")),
                   (o.revived, tr("{n} back in their storyboard")),
                   (o.regenerate, tr("{n} back in the queue (video deleted)")),
                   (o.requeued_changed, tr("{n} back in the queue (changed, --requeue-changed)")),
                   (o.removed, tr("{n} removed (no longer in a storyboard)"))])
    if o.dry_run:
        out.print(f"Jobs (dry run, nothing recorded): {jobs}." if jobs else "Dry run: no job would change.",
                  markup=False)
    elif jobs:
        out.print(f"Jobs: {jobs}.", markup=False)
    for job in o.changed:
        out.print(f"changed: {job.storyboard_path} segment {job.segment_index} v{job.version} is {job.state.value}; "
                  f"left alone (use --requeue-changed to generate it again)", markup=False)
    for job in o.moved_meanwhile:
        out.print(f"moved meanwhile: {job.storyboard_path} segment {job.segment_index} v{job.version} was taken by a "
                  f"worker while this scan ran; left alone (the next scan looks again)", markup=False)
    if not pending:
        return
    prices = known_prices(store, settings)
    status = store.status(prices)
    count = status.counts["pending"]
    estimate = status.remaining
    used = set(status.providers)
    if o.dry_run:
        for (provider, key, _), n in o.to_generate.items():
            count += n
            estimate += prices.cost(provider, key, n)
            used.add(provider)
    label = "Pending after this scan" if o.dry_run else "Pending"
    if not count:
        out.print(f"{label}: nothing to generate.", markup=False)
        return
    out.print(f"{label}: {plural(count, 'job')}, estimated {estimate} at "
              f"{prices.describe(used or [settings.provider])}.", markup=False)


def _scan_store(app: App, settings: Settings, dry_run: bool) -> Store:
    """The ledger a scan compares with. A dry run where no SQLite ledger exists yet compares with
    an empty one in a temporary folder: it creates no file here."""
    assert settings.database_url
    path = sqlite_file(settings.database_url)
    if not dry_run or path is None or (app.cwd / path).exists():
        return app.store(settings, create=True)
    ctx = click.get_current_context()
    folder = ctx.with_resource(tempfile.TemporaryDirectory(prefix="ledger-dry-run-"))
    engine = open_ledger(f"sqlite:///{Path(folder, 'ledger.db').as_posix()}")
    ctx.call_on_close(engine.dispose)  # before the folder goes (closing runs last-registered first)
    return Store(engine, cwd=app.cwd)


@cli.command("scan")
@layout_options
@click.option("--dry-run", is_flag=True, help="Print what would change, the job count and cost; write nothing.")
@requeue_changed_option
@click.pass_obj
def scan_command(app: App, input_dir: Optional[Path], output_mode: Optional[str], output_dir: Optional[Path],
                 dry_run: bool, requeue_changed: bool) -> None:
    """Find storyboards and record one job per (file, segment, version)."""
    settings = app.settings(input_dir=input_dir, output_mode=output_mode, output_dir=output_dir)
    store = _scan_store(app, settings, dry_run)
    report = scan(settings, app.cwd, store, dry_run=dry_run, requeue_changed=requeue_changed)
    _render_scan(report, settings, store, app.cwd)
    if report.problems:
        raise InputError(f"{len(report.invalid_files)} storyboard file(s) are invalid (listed above); "
                         f"the valid ones were recorded")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--job", metavar="JOB", help="Show one job instead (same as `ledger show JOB`).")
@click.option("--all", "show_all", is_flag=True,
              help=f"List every storyboard (by default the {STATUS_ROWS} with the most work left, the rest summed up).")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool, job: Optional[str], show_all: bool) -> None:
    """Counts per state, per storyboard, and money spent / still to spend."""
    if job is not None:
        ctx.invoke(show_command, job=job, as_json=as_json)
        return
    app: App = ctx.obj
    settings = app.settings()
    store = app.store(settings)
    prices = known_prices(store, settings)
    report = store.status(prices)
    chosen = pick_counts(store)
    from .team_cli import live_workers, worker_json

    now, workers = live_workers(store)
    if as_json:
        data = report.to_json()
        for board in data["storyboards"]:
            board["picked_segments"], board["segments"] = chosen.get(board["path"], (0, 0))
        data["picked_segments"] = sum(p for p, _ in chosen.values())
        data["segments"] = sum(n for _, n in chosen.values())
        data["workers"] = [worker_json(w, now) for w in workers]
        click.echo(_json_one_per_line(data, "storyboards"))
        return
    # Only the states in use (and the three everyone looks for) keep the table readable in 80 columns.
    shown = [s for s in ALL_STATES if report.counts[s.value] or s.value in ("pending", "done", "failed")]
    # No vertical rules: their cells go to the storyboard paths, which give way in the middle.
    table = Table(title="ledger status", box=None, pad_edge=False, header_style="bold")
    table.add_column("storyboard")
    for state in shown:
        table.add_column(state.value, justify="right", no_wrap=True)
    for column in ("total", "spent", "picked"):
        table.add_column(column, justify="right", no_wrap=True)
    boards = list(report.storyboards.values())
    hidden: List[Any] = []
    if not show_all and len(boards) > STATUS_ROWS:
        # A ledger of 50,000 storyboards: the ones with the most work left, and the rest summed up.
        boards.sort(key=lambda b: (-(b.total - b.counts["done"] - b.counts["removed"]), b.path))
        boards, hidden = boards[:STATUS_ROWS], boards[STATUS_ROWS:]
    for board, cell in zip(boards, PathCell.column([b.path for b in boards])):
        picked, segments = chosen.get(board.path, (0, 0))
        table.add_row(cell, *(str(board.counts[s.value]) for s in shown), str(board.total),
                      str(board.spent), f"{picked}/{segments}")
    if hidden:
        picked = sum(chosen.get(b.path, (0, 0))[0] for b in hidden)
        segments = sum(chosen.get(b.path, (0, 0))[1] for b in hidden)
        table.add_row(f"… {len(hidden):,} more (--all lists them)",
                      *(str(sum(b.counts[s.value] for b in hidden)) for s in shown),
                      str(sum(b.total for b in hidden)), str(sum((b.spent for b in hidden), Money())),
                      f"{picked}/{segments}")
    all_picked, all_segments = sum(p for p, _ in chosen.values()), sum(n for _, n in chosen.values())
    table.add_row("[b]all[/b]", *(f"[b]{report.counts[s.value]}[/b]" for s in shown), f"[b]{report.total}[/b]",
                  f"[b]{report.spent}[/b]", f"[b]{all_picked}/{all_segments}[/b]")
    out.print(table)
    _render_providers(report)
    # An unresolved job of an API that bills at the create may already be paid for.
    maybe_paid = {name: p.unresolved for name, p in report.providers.items()
                  if p.unresolved and name in REGISTRY and REGISTRY[name].bills_at_create}
    unpaid = report.counts["pending"] + report.counts["submitting"] - sum(maybe_paid.values())
    described = prices.describe(report.providers or [settings.provider])
    # Nothing spent yet is said in the currency the ledger's work is in (¥0.00 where only yuan is)
    zero = (report.remaining.currencies or report.spent.currencies or [currency_of_provider(settings.provider)])[0]
    spent_text = report.spent.text(zero)
    if maybe_paid:
        whose = ", ".join(maybe_paid)
        owed = f"{plural(unpaid, 'job')} not yet paid for and " if unpaid else ""
        out.print(tr("Spent {spent}; estimated remaining {remaining} for {owed}{maybe} maybe paid ({whose} bills at "
                     "the create, and the create got no answer), at {prices}.").format(
                  spent=spent_text, remaining=report.remaining, owed=owed, maybe=plural(sum(maybe_paid.values()), "job"),
                  whose=whose, prices=described), markup=False)
    elif unpaid:
        out.print(ntr("Spent {spent}; estimated remaining {remaining} for {n} job not yet paid for, at {prices}.",
                      "Spent {spent}; estimated remaining {remaining} for {n} jobs not yet paid for, at {prices}.",
                      unpaid, spent=spent_text, remaining=report.remaining, prices=described), markup=False)
    else:
        out.print(tr("Spent {spent}; nothing left to pay for. Prices: {prices}.").format(spent=spent_text,
                                                                                          prices=described), markup=False)
    if workers:
        held = ", ".join(f"{w.host}:{w.pid} holding {w.jobs_held}" for w in workers)
        out.print(f"Workers: {len(workers)} live ({held}); `ledger workers` shows them and the API keys.", markup=False)
    if report.unresolved:
        out.print(tr("{n} job(s) are unresolved: a create went unanswered and the task list could not be read back "
                     "far enough to tell whether it made a task. Nothing is sent again for them; `ledger work` looks "
                     "again (details: `ledger show JOB`).").format(n=report.unresolved), markup=False)


class MoneyType(click.ParamType):
    """An amount of money in the user's currency, as cents: ``5`` = $5.00, ``5.50``, ``500c`` = 500 cents."""

    name = "amount"

    def convert(self, value: Any, param: Optional[click.Parameter],
                ctx: Optional[click.Context]) -> Tuple[int, Optional[str]]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_money(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def currency_of_provider(provider: str) -> str:
    from .providers import REGISTRY

    registration = REGISTRY.get(provider)
    return registration.currency if registration is not None else "USD"


def _spend_caps(given: Sequence[Tuple[int, Optional[str]]], currencies: Sequence[str]) -> Dict[str, int]:
    """``--max-spend``, one cap per currency: an amount that names no currency is in the one
    currency in play; when several are, each cap must name its own."""
    in_play = sorted(set(currencies)) or ["USD"]
    caps: Dict[str, int] = {}
    for amount, currency in given:
        if currency is None:
            if len(in_play) > 1:
                raise UsageError(f"--max-spend {amount / 100:g}: several currencies are in play ({', '.join(in_play)}); "
                                 f"give each cap its currency, e.g. --max-spend '$5' --max-spend ¥50 (quoted: a shell reads $5 as a variable)")
            currency = in_play[0]
        elif currency not in in_play:
            bare = (tr(" (a bare --max-spend {amount} is in {currency})").format(amount=f"{amount / 100:g}",
                                                                                 currency=in_play[0])
                    if len(in_play) == 1 else "")
            raise UsageError(tr("--max-spend {cap}: no job of this run is priced in {currency} — it would limit "
                                "nothing; the run pays in {in_play}: give the cap in that currency").format(
                cap=money(amount, currency), currency=currency, in_play=", ".join(in_play)) + bare)
        if currency in caps:
            raise UsageError(f"--max-spend names {currency} twice ({money(caps[currency], currency)} and "
                             f"{money(amount, currency)})")
        caps[currency] = amount
    return caps


MONEY = MoneyType()


def _render_providers(report: Any) -> None:
    """Jobs and money per provider, with the API hosts its jobs were sent to."""
    table = Table(title="by provider", box=None, pad_edge=False, header_style="bold")
    for column in ("provider", "sent to", "jobs", "done", "in flight", "spent", "to spend"):
        table.add_column(column, justify="left" if column in ("provider", "sent to") else "right", no_wrap=True)
    for name in sorted(report.providers):
        p = report.providers[name]
        hosts = ", ".join(sorted({urlsplit(base).netloc for base in p.api_bases})) or "-"
        flying = sum(p.counts[s.value] for s in (State.SUBMITTING, State.SUBMITTED, State.DOWNLOADING))
        table.add_row(Text(name), Text(hosts), str(p.total), str(p.counts["done"]), str(flying),
                      p.spent.text(p.currency), p.remaining.text(p.currency))
    out.print(table)


def work_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a work run, shared by ``work`` and ``run``."""
    for option in reversed([
        click.option("--concurrency", type=click.IntRange(1), help="Generations in flight at once (MAX_CONCURRENT_TASKS, default 8)."),
        click.option("--limit", type=click.IntRange(1), help="Process at most N jobs in this run."),
        click.option("--storyboard", "pattern", metavar="PATTERN", help="Only storyboards whose path or name matches this glob."),
        click.option("--max-spend", type=MONEY, metavar="AMOUNT", multiple=True,
                     help="Never submit a job that would take this run's spend past AMOUNT: 5, 5.50, $5, ¥50, 50CNY, "
                          "or cents/fen (500c). Several currencies in play: one cap each (--max-spend '$5' --max-spend ¥50)."),
        click.option("--no-progress", is_flag=True, help="Plain log lines instead of the live view."),
    ]):
        func = option(func)
    return func


def _work(app: App, settings: Settings, store: Store, pool: ProviderPool, *, pattern: Optional[str],
          limit: Optional[int], max_spend: Sequence[Tuple[int, Optional[str]]], no_progress: bool,
          job_ids: Optional[List[int]] = None,
          checked: Optional[Preflight] = None) -> WorkSummary:
    """Run the worker with the live view and Ctrl+C handling; print the summary; return it.
    Every API the jobs need is pre-flighted first, except those ``checked`` already. ``pool``: the
    clients the pre-flight used, so the run goes on over the connections it opened."""
    _check_clock(settings, store)
    scope = JobScope(storyboard_ids=store.storyboard_ids(pattern) if pattern else None, job_ids=job_ids)
    apis = _apis(settings, store, scope)
    earlier = checked or Preflight({}, [])
    left_out = earlier.left_out + _preflight(settings, apis, pool, skip=earlier.checked).left_out
    scope = dataclasses.replace(scope, skip_apis=left_out)
    moved, folders = destinations.follow_settings(settings, app.cwd, store, scope)
    if moved:
        log.info("%d job(s) without their video yet go to the output folder the settings give now", moved)
    destinations.prove_writable(folders, destinations.output_root(settings, app.cwd))
    with make_view(err, plain=no_progress, stdout_is_terminal=out.is_terminal) as view:
        # GET /pricing of the sora.hk API new jobs go to, when any do.
        sora_api = (DEFAULT_PROVIDER, configured_base(settings, DEFAULT_PROVIDER))
        prices = refresh_prices(store, pool.get(*sora_api) if sora_api in apis else None, settings)
        caps = _spend_caps(max_spend, [prices.currency(provider) for provider, _ in apis])
        options = WorkOptions(
            concurrency=settings.max_concurrent_tasks, limit=limit, scope=scope, max_spend=caps,
            poll=PollPolicy.from_settings(settings), retry=RetryPolicy.from_settings(settings),
            polls_per_second=settings.poll_max_per_second, lease_seconds=settings.lease_seconds,
            reconcile_grace=settings.reconcile_grace_seconds,
            reconcile_skew=settings.reconcile_skew_seconds, poll_timeout=settings.poll_timeout_seconds,
            create_timeout=settings.connect_timeout + settings.read_timeout,
            database_patience=max(10.0, 4 * settings.busy_timeout), api_patience=settings.api_patience_seconds)
        worker = Scheduler(store, pool, options, prices, on_event=view.event, on_tick=view.tick)
        with _stop_on_signals(worker):
            summary = worker.run()
    _render_summary(summary)
    return summary


def _check_clock(settings: Settings, store: Store) -> None:
    """A PostgreSQL ledger is shared by machines: leases go by its clock, but what each machine writes
    for people and compares with the API's times goes by its own — refuse to work with a clock far off.
    (A SQLite ledger is a file on this machine: one clock.)"""
    if store.engine.dialect.name != "postgresql":
        return
    offset = store.clock_offset()
    if abs(offset) > settings.max_clock_skew_seconds:
        raise ConfigError(f"this machine's clock is {abs(offset):.1f} s {'ahead of' if offset > 0 else 'behind'} the "
                          f"ledger database's ({store.describe()}), more than MAX_CLOCK_SKEW_SECONDS="
                          f"{settings.max_clock_skew_seconds:g}: turn on time synchronisation (NTP, e.g. "
                          "`timedatectl set-ntp true`) on this machine, then run again")


@contextmanager
def _stop_on_signals(worker: Scheduler) -> Iterator[None]:
    """Ctrl+C / SIGTERM: stop claiming and submitting; a second one aborts downloads."""

    def handler(signum: int, _frame: Any) -> None:
        again = worker.stopping
        worker.request_stop()
        with output_lock(err):  # above the live view, like every other line
            err.print("aborting downloads…" if again else
                      "stopping: nothing new will be submitted; finishing downloads (Ctrl+C again to abort them)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _seconds(seconds: float) -> str:
    """``8 s``, ``2 min 05 s``, ``1 h 02 min``."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _board_table(boards: Dict[str, BoardTally]) -> Table:
    """One row per storyboard the run touched: what happened to its jobs (only the columns with
    something in them) and what it cost. Paths are shortened in the middle to fit, never wrapped."""
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1))
    table.add_column("storyboard")
    columns = [(name, title) for name, title in (("done", "done"), ("skipped_existing", "on disk"),
                                                 ("failed", "failed"), ("collected", "collected"),
                                                 ("unresolved", "unresolved"))
               if any(getattr(b, name) for b in boards.values())]
    for _, title in columns:
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("paid", justify="right", no_wrap=True)
    # A storyboard paid for in earlier runs (an interrupted one) shows what it cost in all.
    earlier = any(b.total and b.total != b.spent for b in boards.values())
    if earlier:
        table.add_column("in all", justify="right", no_wrap=True)
    for (path, board), cell in zip(boards.items(), PathCell.column(list(boards))):
        table.add_row(cell, *(str(getattr(board, name) or "-") for name, _ in columns), str(board.spent),
                      *([str(board.total or board.spent)] if earlier else []))
    return table


def _videos_folder(boards: Dict[str, BoardTally]) -> Optional[str]:
    """The folder holding every video this run saved or found (their storyboards' common root)."""
    folders = [b.folder for b in boards.values() if b.folder]
    if not folders:
        return None
    try:
        return os.path.commonpath(folders).replace(os.sep, "/") or "."
    except ValueError:  # absolute and relative, or two drives: no common folder to name
        return None


def _render_summary(s: WorkSummary) -> None:
    """The run in the manner of cargo and uv: one line of totals, one row per storyboard, then
    each failure with its reason and what is left for later; only what happened is said."""
    happened = _facts([(s.done, tr("{n} saved")), (s.skipped_existing, tr("{n} already on disk")),
                       (s.failed, tr("{n} failed")), (s.collected, tr("{n} paid earlier and collected"))])
    paid = (ntr("paid {money} for {n} generation", "paid {money} for {n} generations", s.creates, money=s.spent)
            if s.creates else tr("nothing paid"))
    head = (tr("Stopped after {time}") if s.stopped else tr("Finished in {time}")).format(time=_seconds(s.seconds))
    idle = tr("nothing finished yet") if s.stopped or s.still_generating or s.pending_left else tr("no job to work on")
    out.print(tr("{head}: {happened}; {paid}.").format(head=head, happened=happened or idle, paid=paid), markup=False)
    if s.boards:
        out.print(_board_table(s.boards))
    folder = _videos_folder(s.boards)
    if folder:
        out.print(tr("Videos are in {folder}/").format(folder=folder), markup=False, soft_wrap=True)
    for label, kind, message in s.failures:
        out.print(labelled(tr("failed:"), f"{label} [{kind}] {message}", "red"))
    if s.unresolved:
        out.print(f"{plural(s.unresolved, 'job')} whose create went unanswered could not be looked up; they stay in "
                  f"`submitting` and nothing is sent again for them — run `ledger work` later.", markup=False)
    if s.pending_left and s.stopped:
        out.print(ntr("{n} job not submitted: still pending.", "{n} jobs not submitted: still pending.",
                      s.pending_left), markup=False)
    if s.still_generating:
        out.print(ntr("{n} job still generating remotely", "{n} jobs still generating remotely", s.still_generating)
                  + tr("; their task ids are kept — run `ledger work` again to collect them (nothing is paid twice)."),
                  markup=False)
    for count, fp, shown, why in s.waiting_for_keys:
        key = f"{shown} (key {fp})" if shown else f"key {fp}"
        if why:
            out.print(f"{plural(count, 'paid job')} wait for {key}, out of rotation: {why}; they are collected "
                      f"with that key only, once the API accepts it again.", markup=False)
        else:
            out.print(f"{plural(count, 'paid job')} wait for {key}, which is not given here; add it back "
                      f"to collect them (no other key can see their tasks).", markup=False)


def _raise_for(summary: WorkSummary) -> None:
    """Turn a run's outcome into its documented exit code (through the one error map)."""
    stop = summary.stopped
    if stop is Stop.INTERRUPTED:
        raise Interrupted("interrupted")
    if stop in (Stop.AUTH, Stop.UNREACHABLE):
        raise ConfigError(f"stopped: {summary.stop_detail}")
    if stop in (Stop.BALANCE, Stop.BUDGET):
        raise BudgetExhausted(f"stopped submitting: {summary.stop_detail}")
    if stop is Stop.DATABASE:
        raise DatabaseUnavailable(f"stopped: {summary.stop_detail}")
    if summary.exit_status is ExitStatus.JOBS_FAILED:
        raise JobsFailed(f"{summary.failed} job(s) failed; see `ledger export-failed`")


def _apis(settings: Settings, store: Store, scope: JobScope) -> List[Tuple[str, str]]:
    """The (provider, base URL) of every API a run over ``scope`` needs: the configured provider,
    each provider pending jobs go to, and wherever paid-for jobs were sent."""
    wanted = {(settings.provider, None)} | store.apis_in_use(scope)
    return sorted({(provider, (base or configured_base(settings, provider)).rstrip("/")) for provider, base in wanted})


@dataclass
class Preflight:
    """What the pre-flight found: each API's balance in cents (None: not told), and the APIs that
    only earlier jobs were sent to and that cannot be used now (their jobs sit this run out)."""

    balances: Dict[Tuple[str, str], Optional[int]]
    left_out: List[Tuple[str, str]]

    @property
    def checked(self) -> List[Tuple[str, str]]:
        return [*self.balances, *self.left_out]


def _preflight(settings: Settings, apis: Sequence[Tuple[str, str]], pool: ProviderPool,
               skip: Sequence[Tuple[str, str]] = ()) -> Preflight:
    """One cheap authenticated call to each API, before anything is spent or touched. A wrong key,
    URL or proxy of an API new jobs go to is a one-line ``ConfigError`` (exit 3) within seconds; one
    that only earlier jobs were sent to (a reseller since left) is a warning, and those jobs are
    left as they are while the rest go on. The calls go through ``pool``, whose connections the run
    then uses: no second connection (and TLS handshake) to the same API."""
    found = Preflight({}, [])
    for provider, base in apis:
        if (provider, base) in skip:
            continue
        try:
            balance = found.balances[(provider, base)] = _preflight_keys(pool, provider, base)
        except ConfigError as exc:
            if base == configured_base(settings, provider):
                raise
            err.print(labelled("warning:", f"the jobs sent earlier to {base} ({provider}) are left as they are "
                                           f"this run: {exc}", "yellow"))
            found.left_out.append((provider, base))
            continue
        caveat = getattr(pool.get(provider, base), "balance_caveat", "")
        log.info("pre-flight: %s (%s) answers; balance %s%s", base, provider,
                 money(balance, REGISTRY[provider].currency) if balance is not None else "not told",
                 f" ({caveat})" if caveat and balance is not None else "")
    return found


def _preflight_keys(pool: ProviderPool, provider: str, base: str) -> Optional[int]:
    """Pre-flight each of ``provider``'s keys in rotation (the balance of the first that answers).
    A key the API refuses leaves the rotation with one masked line while another key is usable;
    the run stops (``ConfigError``) only when none is, naming the setting each key came from."""
    keys = pool.keys.of(provider)
    if not keys:  # no key setting of its own (Kling's access key and secret key): as configured
        return pool.get(provider, base).preflight()
    balance: Optional[int] = None
    usable = 0
    refusals: List[str] = []
    for key in keys:
        try:
            answer = pool.get(provider, base, key.fingerprint).preflight()
        except ConfigError as exc:
            said = _setting_named(str(exc), REGISTRY[provider].key_env, key.setting)
            if not isinstance(exc.__cause__, AuthError) or len(keys) == 1:
                raise ConfigError(said) from exc
            refusals.append(f"{key.shown} from {key.setting}")
            status = exc.__cause__.code or exc.__cause__.http_status
            pool.keys.retire(provider, key.fingerprint, f"refused ({status}) by {base} at the pre-flight, "
                                                         f"given in {key.setting}")
            continue
        balance = answer if usable == 0 else balance
        usable += 1
    if not usable:
        raise ConfigError(f"every {provider} key is refused by {base}: {', '.join(refusals)}")
    return balance


def _setting_named(message: str, default_env: str, setting: str) -> str:
    """A client's message names the provider's single-key setting; say the one the key came from."""
    if not setting or setting == default_env:
        return message
    return re.sub(rf"\b{re.escape(default_env)}\b(?!S)", setting, message)


def _dry_run(settings: Settings, store: Store, pool: ProviderPool, pattern: Optional[str], limit: Optional[int],
             extra: Optional[Dict[Tuple[str, str, bool], int]] = None, *,
             max_spend: Sequence[Tuple[int, Optional[str]]] = (),
             balances: Optional[Dict[Tuple[str, str], Optional[int]]] = None,
             job_ids: Optional[Sequence[int]] = None) -> None:
    """Print what a run would submit and cost, beside each provider's balance (``balances``: the
    pre-flight's answers, used when the plan's own look-up fails) and ``max_spend``; nothing is
    paid. ``job_ids``: the run would work only those (``--retry-failed``). Raises
    ``BudgetExhausted`` (exit 4) when either does not cover the plan."""
    scope = JobScope(storyboard_ids=store.storyboard_ids(pattern) if pattern else None, job_ids=job_ids)
    sora_api = (DEFAULT_PROVIDER, configured_base(settings, DEFAULT_PROVIDER))
    asks_sora = sora_api in _apis(settings, store, scope) or any(p == DEFAULT_PROVIDER for p, _, _ in (extra or {}))
    told = {provider: balance for (provider, base), balance in (balances or {}).items()
            if base == configured_base(settings, provider)}
    prices = refresh_prices(store, pool.get(*sora_api) if asks_sora else None, settings)
    plan = plan_work(store, pool, scope, prices, limit=limit, extra=extra)
    shown = [part.provider for part in plan.providers] or [settings.provider]
    if plan.jobs:
        models = _facts([(plan.normal, tr("{n} normal")), (plan.pro, tr("{n} Pro"))])
        out.print(f"A run would submit {plural(plan.jobs, 'job')} ({models}): estimated {plan.cost} at "
                  f"{prices.describe(shown)}.", markup=False)
    else:
        out.print("A run would submit nothing: no job is pending.", markup=False)
    if plan.in_flight:
        out.print(f"It would also collect {plural(plan.in_flight, 'job')} already paid for (no charge).", markup=False)
    short: List[str] = []
    several = len(plan.providers) > 1 or any(p.provider != DEFAULT_PROVIDER for p in plan.providers)
    for part in plan.providers:
        who = f"{part.provider}: " if several else ""
        balance = part.balance if part.balance is not None else told.get(part.provider)
        cur = part.currency
        caveat = f" ({part.balance_caveat})" if part.balance_caveat else ""
        if balance is None:
            out.print(f"{who}Balance unknown ({part.balance_note}).", markup=False)
        elif balance >= part.cost:
            out.print(f"{who}Balance {money(balance, cur)}{caveat} covers it ({money(balance - part.cost, cur)} would "
                      "be left).", markup=False)
        else:
            out.print(f"{who}Balance {money(balance, cur)}{caveat} does NOT cover it: "
                      f"{money(part.cost - balance, cur)} short; a run would stop submitting when the balance "
                      "runs out.", markup=False)
            short.append(f"the {part.provider} balance {money(balance, cur)}" if several
                         else f"the balance {money(balance, cur)}")
    caps = _spend_caps(max_spend, [part.currency for part in plan.providers] or [prices.currency(settings.provider)])
    for currency, cap in caps.items():
        needed = plan.cost.get(currency)
        if cap >= needed:
            out.print(f"--max-spend {money(cap, currency)} covers it.")
        else:
            out.print(f"--max-spend {money(cap, currency)} does NOT cover it: a run would stop submitting "
                      f"before it spent more than that.")
            short.append(f"--max-spend {money(cap, currency)}")
    out.print("Dry run: nothing was paid for.")
    if short:
        raise BudgetExhausted(f"dry run: {' and '.join(short)} would not cover the estimated {plan.cost}")


@cli.command("work")
@work_options
@click.option("--dry-run", is_flag=True, help="Count and price what would be submitted (GET /pricing, /balance); pay nothing.")
@retry_failed_option
@click.pass_obj
def work_command(app: App, concurrency: Optional[int], limit: Optional[int], pattern: Optional[str],
                 max_spend: Tuple[Tuple[int, Optional[str]], ...], no_progress: bool, dry_run: bool,
                 retry_failed: Optional[Path]) -> None:
    """Claim pending jobs, generate them, download the videos."""
    settings = app.settings(max_concurrent_tasks=concurrency)
    store = app.store(settings)
    pool = _clients(settings)
    # Before any job is touched, --retry-failed's requeue included: every API the jobs need.
    apis = _apis(settings, store, JobScope(storyboard_ids=store.storyboard_ids(pattern) if pattern else None))
    preflight = _preflight(settings, apis, pool)
    if dry_run:
        job_ids, requeued = _retry_preview(store, retry_failed, app.cwd)
        _dry_run(settings, store, pool, pattern, limit, extra=requeued, max_spend=max_spend,
                 balances=preflight.balances, job_ids=job_ids)
        return
    _raise_for(_work(app, settings, store, pool, pattern=pattern, limit=limit, max_spend=max_spend,
                     no_progress=no_progress, job_ids=_retry(store, retry_failed, app.cwd), checked=preflight))


def _clients(settings: Settings) -> ProviderPool:
    """The API clients of this command, one per API, closed with it: the pre-flight, the price list
    and the run all go over the same connections."""
    return click.get_current_context().with_resource(ProviderPool(settings, pool_size=settings.max_concurrent_tasks))


def _retry(store: Store, retry_failed: Optional[Path], cwd: Path) -> Optional[List[int]]:
    """``--retry-failed FILE``: requeue the jobs FILE lists and return their ids (the run works
    only those); without it, None (the run works everything)."""
    if retry_failed is None:
        return None
    selection = select_from_file(store, retry_failed, cwd)
    _report_requeue(store.requeue(selection.job_ids), selection.unmatched, include_hint=REFUSED_HINT_FILE)
    return selection.job_ids


def _retry_preview(store: Store, retry_failed: Optional[Path], cwd: Path
                   ) -> Tuple[Optional[List[int]], Optional[Dict[Tuple[str, str, bool], int]]]:
    """``--retry-failed FILE`` in a dry run: say what the requeue would do, change nothing, and
    return the jobs the run would work with the ones it would generate again (by price)."""
    if retry_failed is None:
        return None, None
    selection = select_from_file(store, retry_failed, cwd)
    downloads, generate, refused = store.requeue_preview(selection.job_ids)
    generations = sum(generate.values())
    _warn_unmatched(selection.unmatched)
    out.print(f"A run would requeue {plural(downloads + generations, 'failed job')} from {retry_failed}: "
              f"{downloads} to download again (already paid for), {generations} to generate again; it would "
              f"work only the jobs the file names.", markup=False)
    _report_refused(refused, REFUSED_HINT_FILE)
    return selection.job_ids, generate


def _warn_unmatched(unmatched: Sequence[str]) -> None:
    for entry in unmatched:
        err.print(labelled("warning:", f"not in the ledger: {entry}", "yellow"))


# How to generate refusals again anyway, as said by `requeue` and by a run's --retry-failed FILE.
REFUSED_HINT = "change the prompt, or add --include-refused to pay for them again"
REFUSED_HINT_FILE = "change the prompt, or `ledger requeue --from-file FILE --include-refused` to pay for them again"
REFUSED_SHOWN = 20  # refusals named one by one; past that, counted


def _report_requeue(done: Requeued, unmatched: Sequence[str] = (), include_hint: str = REFUSED_HINT) -> None:
    _warn_unmatched(unmatched)
    out.print(f"Requeued {done.downloads + done.generations} failed job(s): {done.downloads} to download again "
              f"(already paid for), {done.generations} to generate again.")
    _report_refused(done.refused, include_hint)


def _report_refused(refused: Sequence[JobRow], include_hint: str) -> None:
    """The content refusals a requeue leaves failed, apart: the same prompt would be refused, and
    paid, again."""
    if not refused:
        return
    out.print(f"Left failed: {plural(len(refused), 'job')} the API refused for its content ({include_hint}):",
              markup=False)
    for job in refused[:REFUSED_SHOWN]:
        reason = " ".join((job.error_message or job.error_kind or "").split())  # one line whatever the API sent
        out.print(f"  refused: {job.label}: {reason}", markup=False)
    if len(refused) > REFUSED_SHOWN:
        out.print(f"  … and {len(refused) - REFUSED_SHOWN} more (`ledger export-failed` lists them all)", markup=False)


@cli.command("requeue")
@click.option("--failed", "failed", is_flag=True, help="Select failed jobs (narrow with the options below).")
@click.option("--storyboard", "pattern", metavar="PATTERN", help="Only storyboards whose path or name matches this glob.")
@click.option("--segment", type=click.IntRange(1), help="Only this segment index.")
@click.option("--error-contains", metavar="TEXT", help="Only failures whose message contains TEXT.")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="Select the jobs listed in a failed-tasks file.")
@click.option("--regenerate", is_flag=True, help="Generate again (and pay) even when only the download failed.")
@click.option("--include-refused", is_flag=True,
              help="Also generate again (and pay for) jobs the API refused for their content.")
@click.pass_obj
def requeue_command(app: App, failed: bool, pattern: Optional[str], segment: Optional[int],
                    error_contains: Optional[str], from_file: Optional[Path], regenerate: bool,
                    include_refused: bool) -> None:
    """Put failed jobs back in the queue, attempts reset."""
    if failed == (from_file is not None):
        raise UsageError("give exactly one of --failed or --from-file FILE")
    settings = app.settings()
    store = app.store(settings)
    unmatched: Sequence[str] = ()
    if from_file is not None:
        selection = select_from_file(store, from_file, app.cwd)
        ids, unmatched = selection.job_ids, selection.unmatched
    else:
        boards = store.storyboard_ids(pattern) if pattern else None
        ids = [j.id for j in store.failed_jobs(storyboard_ids=boards, segment=segment, error_contains=error_contains)]
    _report_requeue(store.requeue(ids, regenerate=regenerate, include_refused=include_refused), unmatched)


@cli.command("export-failed")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Where to write (default: OUTPUT_DIR/failed_tasks_YYYYmmdd_HHMMSS.json).")
@click.pass_obj
def export_failed_command(app: App, output: Optional[Path]) -> None:
    """Write every failed job, with its reason, to a JSON file and print its path."""
    settings = app.settings()
    path = output or default_export_path(settings.output_dir)
    count = export_failed(app.store(settings), path)
    err.print(f"{count} failed job(s) exported")
    click.echo(str(path))


@cli.command("show")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_obj
def show_command(app: App, job: str, as_json: bool = False) -> None:
    """One job: parameters, remote task, pick, and its full history. JOB is an id or
    PATH#SEGMENTvVERSION, where PATH is any unique tail of the storyboard's path (.json optional)."""
    settings = app.settings()
    store = app.store(settings)
    row = refs.resolve(store, job, app.cwd)
    chosen = segment_pick(store, row.storyboard_id, row.segment_index)
    history = store.history(row.id)
    currency = known_prices(store, settings).currency(row.provider)
    if as_json:
        click.echo(json.dumps(_job_json(row, chosen, history, currency), ensure_ascii=False, indent=2))
        return
    pick = ("yes: the chosen take of its segment" if chosen and chosen.job_id == row.id else
            f"no (v{chosen.version} is the pick)" if chosen else "no (the segment has no pick)")
    table = Table(show_header=False, box=None)
    api = row.api_base if row.api_base and row.state is not State.PENDING else "(not sent yet)"
    for name, value in [("job", row.id), ("storyboard", row.storyboard_path), ("segment", row.segment_index),
                        ("version", row.version), ("state", row.state.value), ("picked", pick),
                        ("provider", row.provider), ("API", api), ("remote task", row.remote_task_id or "-"),
                        ("cost", money(row.cost_cents, currency) if row.cost_cents is not None else "-"),
                        ("spent in all", money(row.spent_cents, currency)), ("attempts", row.attempts),
                        ("target", row.target_dir), ("video", row.video_path or "-"),
                        ("error", f"[{row.error_kind}] {row.error_message}" if row.error_kind else "-"),
                        ("created", row.created_at), ("parameters", json.dumps(dict(row.params), ensure_ascii=False))]:
        table.add_row(f"[b]{name}[/b]", Text(str(value)))
    out.print(table)
    events = Table(title="history")
    for column in ("at (UTC)", "from", "to", "detail", "worker"):
        events.add_column(column, overflow="fold")
    for event in history:
        events.add_row(str(event.at), event.from_state.value, event.to_state.value, Text(event.detail or ""),
                       Text(event.worker or ""))
    out.print(events)


def _job_json(row: JobRow, chosen: Any, history: Sequence[Any], currency: str) -> Dict[str, Any]:
    """``show --json``: the job's columns (amounts in minor units of ``currency``), whether it is
    its segment's pick, and its history."""
    data: Dict[str, Any] = {"id": row.id, "ref": row.label, "storyboard": row.storyboard_path, "currency": currency,
                            "segment_index": row.segment_index, "version": row.version, "state": row.state.value,
                            "picked": bool(chosen and chosen.job_id == row.id),
                            "segment_pick_version": chosen.version if chosen else None,
                            "parameters": dict(row.params)}
    for name in ("provider", "api_base", "remote_task_id", "cost_cents", "spent_cents", "progress", "attempts",
                 "target_dir", "video_path", "error_kind", "error_message"):
        data[name] = getattr(row, name)
    for name in ("created_at", "submitted_at", "finished_at", "next_attempt_at"):
        data[name] = iso_utc(getattr(row, name))
    data["history"] = [{"at": iso_utc(e.at), "from": e.from_state.value, "to": e.to_state.value,
                        "detail": e.detail, "worker": e.worker} for e in history]
    return data


@cli.command("run")
@layout_options
@click.option("--dry-run", is_flag=True, help="Scan without writing, then count and price the work; pay nothing.")
@requeue_changed_option
@work_options
@retry_failed_option
@click.pass_obj
def run_command(app: App, input_dir: Optional[Path], output_mode: Optional[str], output_dir: Optional[Path],
                dry_run: bool, requeue_changed: bool, concurrency: Optional[int], limit: Optional[int],
                pattern: Optional[str], max_spend: Tuple[Tuple[int, Optional[str]], ...], no_progress: bool,
                retry_failed: Optional[Path]) -> None:
    """`scan`, then `work`: the one-command experience. Takes every option of both."""
    settings = app.settings(input_dir=input_dir, output_mode=output_mode, output_dir=output_dir,
                            max_concurrent_tasks=concurrency)
    configured = (settings.provider, configured_base(settings, settings.provider))
    pool = _clients(settings)
    preflight = _preflight(settings, [configured], pool)  # before the scan: a wrong key or URL leaves no trace
    store = _scan_store(app, settings, dry_run)
    report = scan(settings, app.cwd, store, dry_run=dry_run, requeue_changed=requeue_changed)
    _render_scan(report, settings, store, app.cwd, pending=False)
    try:
        if dry_run:
            job_ids, requeued = _retry_preview(store, retry_failed, app.cwd)
            _dry_run(settings, store, pool, pattern, limit,
                     extra=report.outcome.to_generate if job_ids is None else requeued, max_spend=max_spend,
                     balances=preflight.balances, job_ids=job_ids)
        else:
            _raise_for(_work(app, settings, store, pool, pattern=pattern, limit=limit, max_spend=max_spend,
                             no_progress=no_progress, job_ids=_retry(store, retry_failed, app.cwd), checked=preflight))
    finally:
        _repeat_invalid(report)
    if report.problems:
        raise InputError(f"{len(report.invalid_files)} storyboard file(s) are invalid and were skipped (listed above)")


def _repeat_invalid(report: ScanReport) -> None:
    """The storyboards the scan skipped as invalid, once more after the run: its lines scrolled away."""
    for path in report.invalid_files:
        found = [p for p in report.problems if p.path == path]
        more = f" (and {plural(len(found) - 1, 'other problem')})" if len(found) > 1 else ""
        out.print(labelled(tr("skipped as invalid:"), f"{found[0]}{more}", "red"))


@cli.group("db")
def db_group() -> None:
    """Ledger database maintenance."""


@db_group.command("upgrade")
@click.pass_obj
def db_upgrade(app: App) -> None:
    """Bring the ledger's schema to the newest version (every command also does this on first use)."""
    settings = app.settings()
    assert settings.database_url
    engine = open_ledger(settings.database_url, migrate=False)
    upgrade(engine)
    out.print("ledger database is up to date")


# --- review, pick, export ----------------------------------------------------------------------


def _board_ids(store: Store, pattern: Optional[str]) -> Optional[List[int]]:
    """The storyboards a ``--storyboard GLOB`` names (None: all); none at all is a usage error."""
    if pattern is None:
        return None
    ids = store.storyboard_ids(pattern)
    if not ids:
        raise UsageError(f"no storyboard in this ledger matches {pattern!r}")
    return ids


@cli.command("review")
@click.option("--storyboard", "pattern", metavar="GLOB", help="Only storyboards whose path or name matches this glob.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Where to write the page (default: OUTPUT_DIR/review.html).")
@click.option("--open", "open_page", is_flag=True, help="Open the page in the default browser.")
@click.option("--serve", is_flag=True, help="Serve the page on 127.0.0.1 instead; choosing a take writes the ledger.")
@click.pass_obj
def review_command(app: App, pattern: Optional[str], output: Optional[Path], open_page: bool, serve: bool) -> None:
    """Write one HTML page with every take of every segment side by side, and print its path."""
    settings = app.settings()
    store = app.store(settings)
    ids = _board_ids(store, pattern)

    from .review import collect, write_page

    def build() -> Any:
        return collect(takes(store, ids), settings, app.cwd, store.resolve)

    if serve:
        _serve_review(store, build, open_page)
        return
    review = build()
    page = write_page(review, app.cwd / (output or settings.output_dir / "review.html"))
    err.print(f"{len(review.segments)} segment(s), {len(review.takes)} take(s); picked "
              f"{review.picked_segments}/{len(review.segments)}" + (f"; {review.stale} stale" if review.stale else ""))
    click.echo(str(page.relative_to(app.cwd) if page.is_relative_to(app.cwd) else page))
    if open_page:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())


def _serve_review(store: Store, build: Callable[[], Any], open_page: bool) -> None:
    """Serve the review page until Ctrl+C / SIGTERM, then stop cleanly (exit 0)."""
    import threading

    from .review_server import ReviewServer

    server = ReviewServer(store, build)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        click.echo(f"Review server: {server.url}")
        sys.stdout.flush()
        err.print("Choices are written to the ledger at once. Ctrl+C stops the server.")
        if open_page:
            import webbrowser

            webbrowser.open(server.url)
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
    out.print(f"Review server stopped; {server.picks_written} choice(s) written to the ledger.")


def _pick_line(outcome: Any) -> str:
    if not outcome.changed:
        return f"{outcome.job.label} was already the pick"
    return f"picked {outcome.job.label}" + (f" (replaces v{outcome.replaced})" if outcome.replaced else "")


@cli.command("pick")
@click.argument("references", nargs=-1, metavar="[REF]...")
@click.option("--clear", is_flag=True, help="Forget the pick of each REF's segment (REF may be PATH#SEGMENT).")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="Apply the picks.json the static review page downloads.")
@click.pass_obj
def pick_command(app: App, references: Tuple[str, ...], clear: bool, from_file: Optional[Path]) -> None:
    """Choose the take of a segment: REF is a job id or PATH#SEGMENTvVERSION (e.g. storyboard_a#2v1).
    Choosing another take of the segment replaces the pick; every change is in `ledger show`."""
    if (from_file is None) == (not references) or (from_file is not None and clear):
        raise UsageError("give REF... (optionally with --clear) or --from-file FILE")
    settings = app.settings()
    store = app.store(settings)
    if from_file is not None:
        _import_picks(store, from_file, app.cwd)
        return
    if clear:
        segments = [refs.resolve_segment(store, ref, app.cwd) for ref in references]
        for board_id, path, index in segments:
            outcome = clear_pick(store, board_id, index, "cli")
            out.print(f"cleared the pick of {path}#{index} (was v{outcome.job.version})" if outcome
                      else f"{path}#{index} had no pick", markup=False)
        return
    # Every reference is checked before anything is written: one typo writes nothing.
    chosen = [refs.resolve(store, ref, app.cwd) for ref in references]
    refused = [f"{job.label} is {job.state.value}" for job in chosen if job.state is not State.DONE]
    if refused:
        raise PickRefused(f"only done takes can be chosen: {'; '.join(refused)}")
    segments_seen: Dict[Tuple[int, int], str] = {}
    for job in chosen:
        other = segments_seen.setdefault((job.storyboard_id, job.segment_index), job.label)
        if other != job.label:
            raise UsageError(f"{other} and {job.label} are takes of one segment: choose one")
    for job in chosen:
        out.print(_pick_line(record_pick(store, job.id, "cli")), markup=False)


def _import_picks(store: Store, path: Path, cwd: Path) -> None:
    """Apply a picks.json; entries that match nothing are listed and make the exit code 2."""
    from .review import read_picks_file

    chosen, cleared = read_picks_file(path)
    missing: List[str] = []
    written = 0
    for entry in chosen:
        if entry.storyboard is not None:
            job = job_by_key(store, entry.storyboard, entry.segment_index or 0, entry.version or 0)
        else:
            try:
                job = refs.resolve(store, entry.ref or "", cwd)
            except LedgerError as exc:
                missing.append(f"{entry.pointer}: {exc}")
                continue
        if job is None:
            missing.append(f"{entry.pointer}: no take {entry.label} in this ledger")
            continue
        try:
            outcome = record_pick(store, job.id, "picks.json")
        except PickRefused as exc:
            missing.append(f"{entry.pointer}: {exc}")
            continue
        written += outcome.changed
        out.print(_pick_line(outcome), markup=False)
    for entry in cleared:
        found = storyboards_by_suffix(store, [entry.storyboard or ""], limit=2)
        exact = [board_id for board_id, stored in found if stored == entry.storyboard]
        if not exact:
            missing.append(f"{entry.pointer}: no storyboard {entry.storyboard} in this ledger")
            continue
        if clear_pick(store, exact[0], entry.segment_index or 0, "picks.json") is not None:
            written += 1
            out.print(f"cleared the pick of {entry.label}", markup=False)
    out.print(f"{path}: {written} change(s) written, {len(chosen) + len(cleared) - written - len(missing)} "
              f"already so.", markup=False)
    for line in missing:
        err.print(f"not applied: {path}: {line}", markup=False)
    if missing:
        raise UsageError(f"{len(missing)} entr{'y' if len(missing) == 1 else 'ies'} of {path} could not be applied "
                         f"(listed above); the others were")


@cli.command("picks")
@click.option("--storyboard", "pattern", metavar="GLOB", help="Only storyboards whose path or name matches this glob.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout.")
@click.pass_obj
def picks_command(app: App, pattern: Optional[str], as_json: bool) -> None:
    """List the chosen takes, in story order."""
    settings = app.settings()
    store = app.store(settings)
    rows = pick_rows(store, _board_ids(store, pattern))
    if as_json:
        click.echo(json.dumps([{"ref": r.label, "storyboard": r.storyboard_path, "segment_index": r.segment_index,
                                "version": r.version, "job_id": r.job_id, "state": r.state.value,
                                "video_path": r.video_path, "source": r.source, "picked_at": iso_utc(r.picked_at)}
                               for r in rows], ensure_ascii=False, indent=2))
        return
    table = Table(title="picks")
    for column in ("storyboard", "segment", "version", "state", "video", "picked at (UTC)", "by"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.storyboard_path, str(r.segment_index), f"v{r.version}", r.state.value, r.video_path or "-",
                      str(r.picked_at.replace(microsecond=0)), r.source)
    out.print(table)
    out.print(f"{len(rows)} pick(s).")


@cli.command("export")
@click.option("--format", "fmt", type=click.Choice(exporting.FORMATS), required=True,
              help="otio (DaVinci Resolve), edl, fcpxml (Premiere), manifest (a selects folder), jianying (剪映 draft).")
@click.option("--storyboard", "pattern", metavar="GLOB", help="Only storyboards whose path or name matches this glob.")
@click.option("--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where to write (default: OUTPUT_DIR/export).")
@click.option("--fps", type=click.IntRange(1, 240), default=30, show_default=True,
              help="Frame rate of the timeline (EDL and XML count in frames).")
@click.option("--link", is_flag=True, help="manifest: hard-link the files instead of copying them.")
@click.pass_obj
def export_command(app: App, fmt: str, pattern: Optional[str], out_dir: Optional[Path], fps: int, link: bool) -> None:
    """Per storyboard, the chosen take of each segment in story order, for an editor. Which take:
    the pick; else the only done take; else the lowest done version; no done take is a named gap."""
    settings = app.settings()
    store = app.store(settings)
    cuts = exporting.plan(takes(store, _board_ids(store, pattern)), store.resolve,
                          ledger_path(settings.input_dir, app.cwd))
    target = app.cwd / (out_dir or settings.output_dir / "export")
    skipped = 0
    for written in exporting.export(cuts, fmt, target, fps=fps, link=link):
        cut = written.cut
        where = written.path.relative_to(app.cwd) if written.path and written.path.is_relative_to(app.cwd) \
            else written.path
        if where is None:
            skipped += 1
            out.print(f"skipped {cut.storyboard_path}: no segment has a done take with its video on disk, so there "
                      f"is nothing to put in a {fmt} file (each segment's reason below)", markup=False)
        else:
            seconds = sum(c.seconds for c in cut.clips)
            out.print(f"{cut.storyboard_path} → {where}: {len(cut.clips)} clip(s), {seconds:.1f} s "
                      f"({cut.decided(exporting.PICKED)} picked, {cut.decided(exporting.ONLY)} only done take, "
                      f"{cut.decided(exporting.LOWEST)} lowest done version)", markup=False)
        for clip in cut.clips:
            if clip.note:
                out.print(f"  note: segment {clip.segment_index}: {clip.note}", markup=False)
        for gap in cut.gaps:
            out.print(f"  gap: segment {gap.segment_index}: {gap.reason}", markup=False)
    picked, only, lowest, gaps = exporting.summary_counts(cuts)
    left_out = f", {skipped} skipped" if skipped else ""
    out.print(f"{len(cuts)} storyboard(s), {len(cuts) - skipped} exported{left_out}: {picked} segment(s) picked, "
              f"{only} with a single done take, {lowest} decided by the lowest done version (no pick), {gaps} gap(s).",
              markup=False)
    if lowest:
        out.print("Choose those with `ledger review`, then `ledger pick REF`.", markup=False)


def main() -> None:
    """Console entry point."""
    cli.main(prog_name="ledger")
