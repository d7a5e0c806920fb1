"""The CLI's words in the user's language: Chinese when ``LEDGER_LANG=zh`` or the locale says so
(``LANG=zh_CN.UTF-8``), English otherwise.

Standard gettext: ``tr("…")`` marks a message (``pybabel extract -k tr``), the catalog is
``ledger/locale/<lang>/LC_MESSAGES/ledger.po`` and its compiled ``.mo`` (``make install`` compiles
it with Babel). An installation without the ``.mo`` compiles the ``.po`` in memory at start, so the
translation never depends on how ledger was installed. API texts are never translated: a failure
the API wrote is shown in its own words.
"""
from __future__ import annotations

import gettext
import io
import os
from pathlib import Path
from typing import Mapping, Optional

DOMAIN = "ledger"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
CHINESE = "zh_CN"


def language(environ: Mapping[str, str]) -> str:
    """``zh_CN`` or ``en``: ``LEDGER_LANG`` first, then the locale variables in POSIX order."""
    chosen = environ.get("LEDGER_LANG", "").strip().lower()
    if chosen:
        return CHINESE if chosen.startswith("zh") else "en"
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name, "").strip()
        if value:
            return CHINESE if value.lower().startswith("zh") else "en"
    return "en"


def _load(lang: str) -> gettext.NullTranslations:
    if lang == "en":
        return gettext.NullTranslations()
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    compiled = folder / f"{DOMAIN}.mo"
    if compiled.is_file():
        with open(compiled, "rb") as handle:
            return gettext.GNUTranslations(handle)
    source = folder / f"{DOMAIN}.po"
    if not source.is_file():
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with open(source, "rb") as handle:
        catalog = read_po(handle)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


_active: Optional[gettext.NullTranslations] = None


def translations() -> gettext.NullTranslations:
    global _active
    if _active is None:
        environ = dict(os.environ)
        if "LEDGER_LANG" not in environ:  # as a setting, it may be in the project's .env
            from dotenv import dotenv_values

            chosen = dotenv_values(".env").get("LEDGER_LANG") if os.path.isfile(".env") else None
            if chosen:
                environ["LEDGER_LANG"] = chosen
        _active = _load(language(environ))
    return _active


def N_(message: str) -> str:
    """Marks a message for the catalog where it is defined; ``tr`` translates it where it is shown."""
    return message


def tr(message: str) -> str:
    """``message`` in the user's language (itself when it has no translation)."""
    return translations().gettext(message)


def ntr(singular: str, plural: str, count: int, **values: object) -> str:
    """The form of ``singular``/``plural`` for ``count`` in the user's language, with ``{n}`` the
    count and the other ``{name}`` fields from ``values``."""
    return translations().ngettext(singular, plural, count).format(n=count, **values)
