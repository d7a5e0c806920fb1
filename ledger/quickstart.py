"""``ledger init``: the files a new project starts from, written so that nothing is paid by accident.

It writes ``.env`` (every setting, commented, with an empty ``SORA_API_KEY=`` for the user to
fill in; with ``--provider NAME``, that provider's ``PROVIDER=``, key and base-URL settings instead,
named by its registration, so a newcomer starts on Seedance or Kling in one step) and
``input/_template.json``, the documented example storyboard. The template's name does not start
with ``storyboard``, so no scan ever submits it: a user pays only for the copies they make and
edit. Nothing that exists is replaced unless ``force``; the ledger itself is not created here (the
first ``scan`` or ``run`` does that).
"""
from __future__ import annotations

import enum
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from .errors import ConfigError, UsageError
from .providers import DEFAULT, REGISTRY, SORA
from .settings import Settings, provider_options
from .sunset import CLOSED_ON

TEMPLATES = Path(__file__).parent / "templates"
ENV_FILE = ".env"
TEMPLATE_FILE = Path("input") / "_template.json"

# The example's commented key line becomes the one line the user must complete.
_KEY_LINE = re.compile(r"^# SORA_API_KEY=.*$", re.MULTILINE)
_HEADER = re.compile(r"\A# ledger settings\..*$", re.MULTILINE)


class Action(enum.Enum):
    """What ``init`` did to one path."""

    CREATED = "created"
    REPLACED = "replaced"
    KEPT = "kept"


@dataclass(frozen=True)
class Step:
    """One path ``init`` looked after, relative to the project folder, and what it did."""

    path: Path
    action: Action


def key_setting(provider: Optional[str]) -> str:
    """The setting the user's key goes in: the provider's (``KLING_API_KEY``), the default's without one."""
    return REGISTRY[provider or DEFAULT].key_env


def check_provider(provider: Optional[str]) -> None:
    """Raise ``UsageError`` (one line, the valid names) for a provider that is not registered."""
    if provider is not None and provider not in REGISTRY:
        raise UsageError(f"--provider {provider!r} is not a provider; use one of {', '.join(REGISTRY)}")


def env_text(provider: Optional[str] = None) -> str:
    """The ``.env`` that ``init`` writes: the documented settings, all commented out, except an
    empty ``SORA_API_KEY=`` line (an empty key counts as not set, so the pre-flight asks for it).
    With ``provider``, a block on top sets ``PROVIDER=`` it, its empty key setting and its base-URL
    setting at its default instead (both names from its registration)."""
    text = (TEMPLATES / "env.example").read_text(encoding="utf-8")
    text = _HEADER.sub("# ledger settings, written by `ledger init`. Never commit this file: it holds your key.", text, 1)
    if provider is None:
        return _KEY_LINE.sub("SORA_API_KEY=", text, 1)
    check_provider(provider)
    registration = REGISTRY[provider]
    defaults = Settings(extra={option.key: option.default for option in provider_options()})
    block = [f"# --- your provider (`ledger init --provider {provider}`): your key goes after {registration.key_env}=",
             f"PROVIDER={provider}", f"{registration.key_env}=",
             f"{registration.url_env}={registration.base_url(defaults)}"]
    if provider in SORA:
        block.insert(1, f"# The Sora upstream closed on {CLOSED_ON}: only a relay that still serves it works here.")
    header, _, rest = text.partition("\n\n")
    return f"{header}\n\n" + "\n".join(block) + f"\n\n{rest}"


def init_project(root: Path, *, force: bool = False, provider: Optional[str] = None) -> List[Step]:
    """Write ``.env`` (for ``provider``, see ``env_text``) and ``input/_template.json`` under
    ``root``; existing files are kept unless ``force``. ``.env`` is readable by its owner only: it
    is where the key goes."""
    check_provider(provider)
    steps = []
    input_dir = root / TEMPLATE_FILE.parent
    if not input_dir.is_dir():
        if input_dir.exists():
            raise ConfigError(f"{input_dir} exists and is not a folder; storyboards go in a folder of that name")
        _guard(input_dir, lambda: input_dir.mkdir(parents=True, exist_ok=True))
        steps.append(Step(TEMPLATE_FILE.parent, Action.CREATED))
    template = (TEMPLATES / "_template.json").read_bytes()
    steps.append(_write(root, Path(ENV_FILE), env_text(provider).encode("utf-8"), force, mode=0o600))
    steps.append(_write(root, TEMPLATE_FILE, template, force, mode=0o644))
    return steps


def _write(root: Path, relative: Path, data: bytes, force: bool, *, mode: int) -> Step:
    """Write one file atomically (a temporary file renamed into place), or keep the one there."""
    path = root / relative
    existed = path.exists() or path.is_symlink()
    if existed and not force:
        return Step(relative, Action.KEPT)

    def write() -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            if force:
                os.replace(tmp, path)
            else:
                # link() fails if the name appeared meanwhile: a file made by someone else is never replaced.
                os.link(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    _guard(path, write)
    return Step(relative, Action.REPLACED if existed else Action.CREATED)


def _guard(path: Path, operation: Callable[[], None]) -> None:
    try:
        operation()
    except FileExistsError as exc:
        raise ConfigError(f"{path} appeared while `ledger init` ran; nothing was replaced") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
