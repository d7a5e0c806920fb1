"""``ledger check``: one cheap read-only call of each kind to every configured API, and a table.

Loaded only when it runs (``LedgerGroup.LAZY``)."""
from __future__ import annotations

from typing import Tuple

import click
from rich.table import Table

from .check import as_json, run_check
from .cli import App, out
from .errors import ExitStatus
from .providers import REGISTRY


def _yes_no(value: object) -> str:
    return "yes" if value is True else "NO" if value is False else "?"


@click.command("check")
@click.option("--provider", "only", multiple=True, type=click.Choice(sorted(REGISTRY)),
              help="Check this provider (repeatable); default: PROVIDER and every provider with a key.")
@click.option("--json", "want_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def check_command(ctx: click.Context, only: Tuple[str, ...], want_json: bool) -> None:
    """Does each configured API answer as ledger expects? For each provider and key: the pre-flight,
    the balance, a page of the task list and the look-up of a made-up task id — read-only, nothing
    is paid. Keys are masked: the output can go into a bug report. Exit 0 only when every answer
    had the shape ledger reads; 3 otherwise."""
    app: App = ctx.obj
    reports = run_check(app.settings(), only)
    if want_json:
        click.echo(as_json(reports))
    else:
        table = Table(title="ledger check", show_lines=False)
        for column in ("provider", "API", "key", "reachable", "key ok", "balance", "answers as expected"):
            table.add_column(column, overflow="fold")
        for r in reports:
            calls = ", ".join(f"{p.call} {'ok' if p.outcome == 'ok' else p.outcome.upper()}" for p in r.probes)
            table.add_row(r.provider, r.base_url, r.key, _yes_no(r.reachable), _yes_no(r.key_accepted),
                          r.balance or "-", calls)
        out.print(table)
        for r in reports:
            for p in r.probes:
                if p.outcome != "ok":
                    seen = f"; fields seen: {', '.join(p.fields)}" if p.fields else ""
                    status = f"HTTP {p.http_status}, " if p.http_status is not None else ""
                    out.print(f"{r.provider} {r.key} {p.call}: {p.outcome} ({status}{p.detail}){seen}",
                              markup=False, soft_wrap=True)
    if not all(r.matched for r in reports):
        ctx.exit(int(ExitStatus.CONFIG))
