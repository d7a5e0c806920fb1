"""The README is the contract (as sqlite-utils' tests/test_docs.py keeps its docs honest): every
command and flag it names exists in the CLI, and every command and option of the CLI is in its
command table. Both languages' quick starts are held to the same rule."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import click
import pytest

from ledger.cli import cli

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
HELP = {"-h", "--help"}
# Placeholders of the table that stand for another command's options.
BUNDLES = {"[scan options]": ("scan",), "[work options]": ("work",)}


def commands(group: click.Group = cli, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], click.Command]:
    """Every leaf command of the CLI by its path, e.g. ``("db", "upgrade")``."""
    found: Dict[Tuple[str, ...], click.Command] = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # lazily loaded commands (`sim`) included
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found.update(commands(command, prefix + (name,)))
        else:
            found[prefix + (name,)] = command
    return found


def options(command: click.Command) -> List[Set[str]]:
    """Each option of ``command`` as the set of its names (``{"-v", "--verbose"}``), help aside."""
    return [set(p.opts + p.secondary_opts) for p in command.params
            if isinstance(p, click.Option) and not set(p.opts) <= HELP]


def resolve(tokens: List[str]) -> Tuple[Tuple[str, ...], List[str]]:
    """The command path the leading tokens name, and the rest; ``()`` when the first is no command."""
    path: Tuple[str, ...] = ()
    group: click.Command = cli
    rest = list(tokens)
    while rest and isinstance(group, click.Group) and rest[0] in group.list_commands(click.Context(group)):
        group = group.get_command(click.Context(group), rest[0])
        path += (rest.pop(0),)
    return path, rest


def flags(text: str) -> Set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text))


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def table() -> Dict[Tuple[str, ...], Tuple[Set[str], Set[str]]]:
    """The Commands table: {command path: (flags, bundled commands' names)} over all its rows."""
    rows: Dict[Tuple[str, ...], Tuple[Set[str], Set[str]]] = {}
    for line in section("Commands").splitlines():
        if not line.startswith("| `ledger"):
            continue
        first_cell = re.split(r"(?<!\\)\|", line)[1]
        for usage in re.findall(r"`(ledger [^`]*)`", first_cell):
            path, rest = resolve(usage.split()[1:])
            assert path in commands(), f"README names a command the CLI does not have: {usage!r}"
            documented, bundled = rows.setdefault(path, (set(), set()))
            documented |= flags(" ".join(rest))
            bundled.update(name for placeholder, names in BUNDLES.items() if placeholder in usage for name in names)
    return rows


def global_flags() -> Set[str]:
    paragraph = next(p for p in section("Commands").split("\n\n") if p.startswith("Global options:"))
    sentence = paragraph[:paragraph.index(".\n")]
    return flags(sentence) - {"-vv"} - HELP | ({"-v"} if "-vv" in sentence else set())


def usages() -> Iterator[Tuple[str, List[str]]]:
    """Every ``ledger COMMAND …`` the README shows, in code spans and code blocks alike, cut at a
    shell comment or the end of the command."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README, re.S)
    pieces = [line for block in blocks for line in block.splitlines()]
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    for span in re.findall(r"``(.+?)``", prose):  # a span that quotes one: ``no ledger here — run `ledger scan` ``
        pieces += re.findall(r"`([^`]+)`", span)
    pieces += re.findall(r"`([^`\n]+)`", re.sub(r"``.+?``", "", prose))
    for piece in pieces:
        for match in re.finditer(r"(?:^|[\s/])ledger\s+((?:\\\||[^#;&|)（])*)", piece):
            yield piece, match.group(1).split()


def test_every_command_of_the_cli_is_in_the_readme_table_and_every_row_is_a_command():
    assert set(table()) == set(commands())


@pytest.mark.parametrize("path", sorted(commands()), ids=" ".join)
def test_every_option_is_documented_and_every_documented_flag_exists(path: Tuple[str, ...]):
    documented, bundled = table()[path]
    command = commands()[path]
    for name in bundled:  # "[scan options]": the row takes every option of that command
        documented |= {n for names in options(commands()[(name,)]) for n in names}
    missing = [sorted(names) for names in options(command) if not names & documented]
    assert missing == [], f"`ledger {' '.join(path)}` options missing from the README's table: {missing}"
    known = {n for names in options(command) for n in names}
    assert documented - known == set(), f"the README lists flags `ledger {' '.join(path)}` does not take"


def test_run_takes_every_scan_and_work_option():
    names = {frozenset(n) for n in options(commands()[("run",)])}
    for other in ("scan", "work"):
        assert {frozenset(n) for n in options(commands()[(other,)])} <= names, other


def test_global_options_are_documented_both_ways():
    documented = global_flags()
    known = [set(p.opts + p.secondary_opts) for p in cli.params
             if isinstance(p, click.Option) and not set(p.opts) <= HELP]
    assert [sorted(n) for n in known if not n & documented] == []
    assert documented - {n for names in known for n in names} == set()


def test_every_command_line_the_readme_shows_is_one_the_cli_takes():
    """Quick starts (English and 中文), prose and examples: each `ledger …` names a real command,
    and each of its flags is one that command (or the group) takes."""
    group_flags = {n for p in cli.params if isinstance(p, click.Option) for n in p.opts + p.secondary_opts}
    wrong = []
    for piece, tokens in usages():
        while tokens and tokens[0].startswith("-"):  # global options before the command
            tokens.pop(0)
        path, rest = resolve(tokens)
        if path not in commands():
            wrong.append(f"{piece!r}: no such command")
            continue
        known = {n for names in options(commands()[path]) for n in names} | group_flags | HELP
        wrong.extend(f"{piece!r}: `ledger {' '.join(path)}` has no {flag}" for flag in flags(" ".join(rest)) - known)
    assert wrong == []


def test_the_quick_starts_never_point_into_input_for_the_examples():
    """The bundled examples live outside input/, so a run there submits only the user's storyboards."""
    assert not (REPO / "input" / "examples").exists()
    assert "input/examples" not in README
    assert (REPO / "examples").is_dir()


@pytest.mark.parametrize("packaged, shipped", [("env.example", ".env.example"),
                                               ("_template.json", "input/_template.json")])
def test_what_ledger_init_writes_is_what_the_repository_shows(packaged: str, shipped: str):
    """`ledger init` writes from copies inside the package (an installed ledger has no repository);
    they must not drift from the files the README points at."""
    assert (REPO / "ledger" / "templates" / packaged).read_bytes() == (REPO / shipped).read_bytes()
