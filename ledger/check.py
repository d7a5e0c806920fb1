"""``ledger check``: does each configured API speak as ledger expects? Read-only and free.

For each configured provider and each of its keys, one cheap call of each kind ledger makes — the
pre-flight, the balance, a page of the task list, the look-up of a task id nobody made — and what
came of it: reachable, key accepted, the balance, and whether every answer had the shape the
client reads. An answer it did not recognise is named by its field names (never their values), so
the report can be pasted into a bug report as it is.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import requests

from .errors import (ApiError, AuthError, BadParameters, ConfigError, InsufficientBalance, InvalidTaskId,
                     RateLimited, TaskNotFound, TransientError)
from .keys import KeyRing
from .client import _without_password
from .money import money
from .providers import REGISTRY
from .redact import mask_key
from .settings import Settings

# The statuses ledger reads a task as: any other word is a status it does not know.
KNOWN_STATUSES = frozenset({"pending", "processing", "completed", "failed"})
# Where the providers' answers put a task's status (a client may default a missing one to "pending").
STATUS_FIELDS = ("status", "task_status")
# Answers that say what they should: the shape of the error was recognised.
UNDERSTOOD_ERRORS = (AuthError, BadParameters, InsufficientBalance, RateLimited, TaskNotFound, InvalidTaskId)
MAX_FIELDS = 30
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 10.0  # seconds, at most, per call of the check

OK, MISMATCH, REFUSED, UNREACHABLE, NO_KEY, ERROR = "ok", "mismatch", "refused", "unreachable", "no key", "error"


@dataclass
class Probe:
    """One call and what came of it; ``fields``: the answer's field names, when it was not understood."""

    call: str
    outcome: str
    detail: str = ""
    fields: List[str] = field(default_factory=list)
    http_status: Optional[int] = None

    def as_json(self) -> Dict[str, Any]:
        return {"call": self.call, "outcome": self.outcome, "detail": self.detail, "http_status": self.http_status,
                "fields": self.fields}


@dataclass
class KeyCheck:
    """Every call made for one (provider, key)."""

    provider: str
    base_url: str
    key: str  # masked
    probes: List[Probe] = field(default_factory=list)
    balance: Optional[str] = None

    @property
    def reachable(self) -> bool:
        return any(p.http_status is not None for p in self.probes)

    @property
    def key_accepted(self) -> Optional[bool]:
        if any(p.outcome in (REFUSED, NO_KEY) for p in self.probes):
            return False
        return True if any(p.outcome == OK for p in self.probes) else None

    @property
    def matched(self) -> bool:
        return bool(self.probes) and all(p.outcome == OK for p in self.probes)

    def as_json(self) -> Dict[str, Any]:
        return {"provider": self.provider, "base_url": self.base_url, "key": self.key, "reachable": self.reachable,
                "key_accepted": self.key_accepted, "balance": self.balance, "shapes_matched": self.matched,
                "calls": [p.as_json() for p in self.probes]}


def field_names(doc: Any, prefix: str = "") -> List[str]:
    """Dotted field names of a JSON answer (``data.items[].task_id``), without a single value."""
    names: List[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            names.append(path)
            names.extend(field_names(value, path))
    elif isinstance(doc, list) and doc:
        names.extend(field_names(doc[0], f"{prefix}[]"))
    return names


def _listed_entries(doc: Any) -> int:
    """How many objects the largest list anywhere in an answer holds."""
    if isinstance(doc, dict):
        return max((_listed_entries(v) for v in doc.values()), default=0)
    if isinstance(doc, list):
        own = len(doc) if doc and all(isinstance(e, dict) for e in doc) else 0
        return max([own, *(_listed_entries(e) for e in doc)])
    return 0


class _Answers:
    """The answers a client got during one call."""

    def __init__(self) -> None:
        self.seen: List[requests.Response] = []

    def __call__(self, resp: requests.Response) -> None:
        self.seen.append(resp)

    def last(self) -> Optional[requests.Response]:
        return self.seen[-1] if self.seen else None

    def body(self) -> Any:
        resp = self.last()
        try:
            return resp.json() if resp is not None else None
        except ValueError:
            return None


def _probe(name: str, answers: _Answers, call: Callable[[], Any], judge: Callable[[Any, Any], str]) -> Probe:
    """Make one call; ``judge(result, body)`` says what is wrong with a result that came back ("": nothing)."""
    answers.seen.clear()
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - every failure is a finding of the check, reported in its line
        return _failed(name, answers, exc)
    resp, body = answers.last(), answers.body()
    status = resp.status_code if resp is not None else None
    wrong = judge(result, body)
    if wrong:
        return Probe(name, MISMATCH, wrong, field_names(body)[:MAX_FIELDS], status)
    return Probe(name, OK, "", [], status)


def _failed(name: str, answers: _Answers, exc: Exception) -> Probe:
    resp, body = answers.last(), answers.body()
    status = resp.status_code if resp is not None else None
    detail = str(exc)
    if isinstance(exc, AuthError) or (status in (401, 403) and not isinstance(exc, UNDERSTOOD_ERRORS)):
        return Probe(name, REFUSED, detail, [], status)
    if isinstance(exc, UNDERSTOOD_ERRORS):
        return Probe(name, OK, detail, [], status)
    if resp is None:
        unreachable = isinstance(exc, (TransientError, ConfigError)) or isinstance(exc, requests.RequestException)
        no_key = isinstance(exc, ConfigError) and " is not set" in detail
        return Probe(name, NO_KEY if no_key else UNREACHABLE if unreachable else ERROR, detail, [], None)
    if isinstance(exc, (ApiError, ConfigError)):
        return Probe(name, MISMATCH, detail, field_names(body)[:MAX_FIELDS], status)
    return Probe(name, ERROR, f"{type(exc).__name__}: {detail}", field_names(body)[:MAX_FIELDS], status)


def _page_problem(page: Any, body: Any) -> str:
    tasks = list(getattr(page, "tasks", []) or [])
    if not tasks and _listed_entries(body):
        return f"the answer lists {_listed_entries(body)} entries, and none was read as a task"
    if any(not any(key in t.raw for key in STATUS_FIELDS) for t in tasks):
        return "a listed task without a status field ledger reads (" + ", ".join(STATUS_FIELDS) + ")"
    unknown = sorted({t.status for t in tasks if t.status not in KNOWN_STATUSES})
    if unknown:
        return f"task status(es) ledger does not know: {', '.join(unknown)}"
    if any(not t.task_id for t in tasks):
        return "a listed task without its id"
    return ""


def _lookup_problem(task: Any, _body: Any) -> str:
    return f"a task id nobody made was answered as a task (status {getattr(task, 'status', '?')})"


def check_key(provider: str, client: Any, currency: str, masked: str) -> KeyCheck:
    """The calls ledger makes of ``client``, each once."""
    answers = _Answers()
    client.watch(answers)
    getattr(client, "client", client).no_retries()  # sora_hk's provider wraps its ApiClient
    report = KeyCheck(provider, _without_password(client.base_url), masked)
    report.probes.append(_probe("pre-flight", answers, client.preflight, lambda _r, _b: ""))
    if report.probes[-1].outcome in (UNREACHABLE, NO_KEY, REFUSED):
        return report
    cents: List[Optional[int]] = []

    def balance() -> Optional[int]:
        cents.append(client.balance())
        return cents[-1]

    report.probes.append(_probe("balance", answers, balance, lambda _r, _b: ""))
    if cents and cents[-1] is not None:
        note = getattr(client, "balance_caveat", "")
        report.balance = money(cents[-1], currency) + (f" ({note})" if note else "")
    report.probes.append(_probe("list", answers, lambda: client.recent(None, 5), _page_problem))
    made_up = f"ledger-check-{uuid.uuid4().hex[:12]}"
    report.probes.append(_probe("look-up", answers, lambda: client.get(made_up), _lookup_problem))
    return report


def configured(settings: Settings, keys: KeyRing, only: Sequence[str] = ()) -> List[str]:
    """The providers to check: those named, else the settings' provider and every one with a key."""
    if only:
        return list(only)
    return [name for name in REGISTRY if name == settings.provider or keys.configured(name)
            or any(settings.option(option.key) for option in REGISTRY[name].options if option.secret)]


def run_check(settings: Settings, only: Sequence[str] = ()) -> List[KeyCheck]:
    """Check every configured (provider, key)."""
    keys = KeyRing.from_settings(settings)
    reports: List[KeyCheck] = []
    for name in configured(settings, keys, only):
        registration = REGISTRY[name]
        entries = [k for k in keys.all() if k.provider == name] or [None]
        for entry in entries:
            own = settings if entry is None else settings.with_secret(registration.key_env, entry.secret)
            # Short timeouts: a user learns in seconds what an API does, and a silent one is named.
            own = dataclasses.replace(own, connect_timeout=min(own.connect_timeout, CONNECT_TIMEOUT),
                                      read_timeout=min(own.read_timeout, READ_TIMEOUT))
            masked = mask_key(entry.secret) if entry is not None else "-"
            try:
                client = registration.open(own)
            except ConfigError as exc:
                reports.append(KeyCheck(name, registration.base_url(settings), masked, [Probe("open", ERROR, str(exc))]))
                continue
            try:
                reports.append(check_key(name, client, registration.currency, masked))
            finally:
                client.close()
    return reports


def as_json(reports: Sequence[KeyCheck]) -> str:
    return json.dumps({"matched": all(r.matched for r in reports), "checks": [r.as_json() for r in reports]},
                      ensure_ascii=False, indent=2)
