"""The Chinese catalog: every message ledger marks is in it and translated, with the same fields."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from ledger import i18n
from ledger.cli import LedgerGroup, _first_sentence, cli

PO = i18n.LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "ledger.po"
FIELD = re.compile(r"\{[a-z_]+\}")


def catalog():
    with open(PO, "rb") as handle:
        return read_po(handle)


def _ids(message):
    return message.id if isinstance(message.id, tuple) else (message.id,)


def test_every_message_of_the_catalog_is_translated_with_the_same_fields():
    wrong = []
    for message in catalog():
        if not message.id:
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        if message.fuzzy or not all(strings):
            wrong.append((message.id, "untranslated or fuzzy"))
        elif any(set(FIELD.findall(s)) != set(FIELD.findall(_ids(message)[-1])) for s in strings):
            wrong.append((message.id, "fields differ"))
    assert not wrong, wrong


def test_every_message_the_code_marks_is_in_the_catalog():
    known = {_ids(m)[0] for m in catalog() if m.id}
    marked = {(text if isinstance(text, str) else text[0])
              for _file, _line, text, _comments, _context in
              extract_from_dir(Path(i18n.__file__).parent, keywords={"tr": None, "ntr": (1, 2), "N_": None},
                               comment_tags=(), strip_comment_tags=True)
              if text}
    assert marked and not marked - known, sorted(marked - known)


@pytest.mark.parametrize("name", LedgerGroup.EVERYDAY)
def test_the_everyday_commands_help_is_in_the_catalog(name):
    command = cli.get_command(click.Context(cli), name)
    assert _first_sentence(" ".join((command.help or "").split())) in {_ids(m)[0] for m in catalog() if m.id}


@pytest.mark.parametrize("environ, lang", [
    ({"LEDGER_LANG": "zh"}, "zh_CN"), ({"LANG": "zh_CN.UTF-8"}, "zh_CN"), ({"LC_ALL": "zh_TW.UTF-8"}, "zh_CN"),
    ({"LANG": "en_US.UTF-8"}, "en"), ({}, "en"), ({"LEDGER_LANG": "en", "LANG": "zh_CN.UTF-8"}, "en"),
    ({"LC_ALL": "C.UTF-8", "LANG": "zh_CN.UTF-8"}, "en"),
])
def test_the_language_comes_from_ledger_lang_then_the_locale(environ, lang):
    assert i18n.language(environ) == lang


def test_without_a_compiled_catalog_the_po_is_compiled_in_memory(tmp_path, monkeypatch):
    folder = tmp_path / "zh_CN" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    folder.joinpath("ledger.po").write_bytes(PO.read_bytes())
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    loaded = i18n._load("zh_CN")
    assert loaded.gettext("error:") == "错误："
    assert loaded.ngettext("paid {money} for {n} generation", "paid {money} for {n} generations", 3) == \
        "为 {n} 次生成支付 {money}"
