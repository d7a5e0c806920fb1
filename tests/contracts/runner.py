"""Serve a contract fixture (``README.md`` beside this file) from a real local HTTP server and run
ledger's real client against it: the request it sends is compared with the documented one, and
what it makes of the documented answer with the fixture's ``expect``."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

from werkzeug.wrappers import Response

HERE = Path(__file__).parent
REF = "ledger-7-1700000000000"
ANY = "*"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CALLS = ("create", "get", "list", "balance", "preflight", "find")
# The provider-neutral fields of ledger.providers.Request a segment starts from.
SEGMENT_DEFAULTS: Mapping[str, Any] = dict(prompt="a fox", model=None, is_pro=False, duration=None,
                                           resolution="horizontal", quality="normal", remove_watermark=True,
                                           image_url=None)


@dataclass(frozen=True)
class Fixture:
    provider: str
    path: Path
    data: Mapping[str, Any]

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.path.stem}"

    @property
    def exchanges(self) -> List[Mapping[str, Any]]:
        if "exchanges" in self.data:
            return list(self.data["exchanges"])
        if "request" in self.data or "answer" in self.data:
            return [{"request": self.data.get("request") or {}, "answer": self.data.get("answer")}]
        return []


def providers() -> List[str]:
    return sorted(p.name for p in HERE.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def fixtures(provider: Optional[str] = None) -> List[Fixture]:
    found = []
    for name in ([provider] if provider else providers()):
        for path in sorted((HERE / name).glob("*.json")):
            found.append(Fixture(name, path, json.loads(path.read_text(encoding="utf-8"))))
    return found


def problems_of(fixture: Fixture) -> List[str]:
    """What is wrong with a fixture's own form (a missing source or date, an unknown call)."""
    data, wrong = fixture.data, []
    if not str(data.get("source") or "").strip():
        wrong.append("no source")
    if not DATE.match(str(data.get("read") or "")):
        wrong.append("no read date (YYYY-MM-DD)")
    if data.get("call") not in CALLS and "call" in data:
        wrong.append(f"unknown call {data.get('call')!r}")
    return wrong


# --- comparing ------------------------------------------------------------------------------------


def covers(expected: Any, actual: Any, where: str = "") -> List[str]:
    """Where ``actual`` differs from ``expected`` taken as a subset (objects by key, lists element
    by element, ``"*"`` any value present)."""
    if expected == ANY:
        return []
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{where or '/'}: expected an object, sent {json.dumps(actual)[:80]}"]
        out: List[str] = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{where}.{key}: missing (expected {json.dumps(value, ensure_ascii=False)[:80]})")
            else:
                out += covers(value, actual[key], f"{where}.{key}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected {json.dumps(expected, ensure_ascii=False)[:80]}, "
                    f"sent {json.dumps(actual, ensure_ascii=False)[:80]}"]
        return [p for i, (e, a) in enumerate(zip(expected, actual)) for p in covers(e, a, f"{where}[{i}]")]
    if expected != actual or type(expected) is not type(actual):
        return [f"{where}: expected {json.dumps(expected, ensure_ascii=False)}, "
                f"sent {json.dumps(actual, ensure_ascii=False)[:80]}"]
    return []


def dotted(doc: Any, path: str) -> Tuple[bool, Any]:
    """(present, value) of a dotted path (``input.img_url``) in a JSON document."""
    for part in path.split("."):
        if not isinstance(doc, Mapping) or part not in doc:
            return False, None
        doc = doc[part]
    return True, doc


def shape_paths(doc: Any, prefix: str = "") -> Dict[str, str]:
    """Every key path of a JSON document with its JSON type (lists read by their first element)."""
    kind = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}
    out = {prefix or "/": kind.get(type(doc), type(doc).__name__)}
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            out.update(shape_paths(value, f"{prefix}.{key}"))
    elif isinstance(doc, list) and doc:
        out.update(shape_paths(doc[0], f"{prefix}[]"))
    return out


def assert_shape_covers(documented: Any, actual: Any, optional: Sequence[str] = ()) -> None:
    """Every key path of the documented answer is in ``actual`` with the same JSON type (null and
    ``optional`` paths, and paths under them, may be missing)."""
    have = shape_paths(actual)
    missing, wrong = [], []
    for path, kind in shape_paths(documented).items():
        if any(path == o or path.startswith(o + ".") or path.startswith(o + "[") for o in optional):
            continue
        if path not in have:
            if kind != "null":
                missing.append(path)
        elif kind != "null" and have[path] != "null" and have[path] != kind:
            wrong.append(f"{path}: documented {kind}, served {have[path]}")
    assert not missing and not wrong, f"missing {missing}; wrong types {wrong}"


def request_problems(spec: Mapping[str, Any], req: Any) -> List[str]:
    """Where a request the client sent (a werkzeug request) differs from the documented one."""
    out: List[str] = []
    if spec.get("method") and req.method != spec["method"].upper():
        out.append(f"method: expected {spec['method']}, sent {req.method}")
    if spec.get("path") and req.path != spec["path"]:
        out.append(f"path: expected {spec['path']}, sent {req.path}")
    query = {k: v[-1] for k, v in parse_qs(urlsplit(req.url).query, keep_blank_values=True).items()}
    for key, value in (spec.get("query") or {}).items():
        if key not in query:
            out.append(f"query {key}: missing")
        elif value != ANY and str(value) != query[key]:
            out.append(f"query {key}: expected {value!r}, sent {query[key]!r}")
    for name, value in (spec.get("headers") or {}).items():
        sent = req.headers.get(name)
        if sent is None:
            out.append(f"header {name}: missing")
        elif value != ANY and not (value.endswith(ANY) and sent.startswith(value[:-1])) and sent != value:
            out.append(f"header {name}: expected {value!r}, sent {sent!r}")
    if "body" in spec or spec.get("absent"):
        try:
            body = json.loads(req.get_data(as_text=True) or "null")
        except ValueError:
            return out + ["body: not JSON"]
        if "body" in spec:
            out += [f"body{p}" for p in covers(spec["body"], body)]
        for path in spec.get("absent") or ():
            if dotted(body, path)[0]:
                out.append(f"body.{path}: sent, but the documented request has no such field")
    return out


# --- running ----------------------------------------------------------------------------------


def default_base(provider: str, tmp: Path) -> str:
    from ledger.providers import REGISTRY
    from ledger.settings import load_settings

    return REGISTRY[provider].base_url(load_settings(tmp, {})).rstrip("/")


def open_client(provider: str, server_url: str, tmp: Path, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The provider's real client, at the server with the documented base path."""
    from ledger.providers import REGISTRY
    from ledger.settings import load_settings

    registration = REGISTRY[provider]
    path = urlsplit(default_base(provider, tmp)).path
    env = {r.key_env: f"{r.name}-contract-key-000000000000" for r in REGISTRY.values()}
    env.update({registration.url_env: server_url.rstrip("/") + path, "NO_PROXY": "127.0.0.1,localhost"})
    env.update(environ or {})
    settings = load_settings(tmp, env)
    return registration.open(settings, pool_size=2)


def params_for(provider: str, segment: Mapping[str, Any]) -> Dict[str, Any]:
    from ledger.providers import RULES, Mapped, Request

    mapped = RULES[provider].map(Request(**{**SEGMENT_DEFAULTS, **segment}))
    assert isinstance(mapped, Mapped), f"the segment does not map: {mapped}"
    return dict(mapped.params)


def serve(httpserver: Any, fixture: Fixture) -> None:
    """Answer each documented request with its documented answer (in order when they repeat)."""
    for exchange in fixture.exchanges:
        spec, answer = exchange.get("request") or {}, exchange.get("answer")
        if answer is None:
            continue
        body = answer.get("body")
        text = answer["text"] if "text" in answer else json.dumps(body, ensure_ascii=False)
        headers = {"Content-Type": "application/json", **(answer.get("headers") or {})}
        response = Response(text, status=answer.get("status", 200), headers=headers)
        kw: Dict[str, Any] = {}
        if spec.get("method"):
            kw["method"] = spec["method"].upper()
        httpserver.expect_request(spec.get("path") or re.compile(".*"), **kw).respond_with_response(response)


def call(fixture: Fixture, client: Any) -> Any:
    data = fixture.data
    kind = data.get("call")
    if kind == "create":
        return client.create(params_for(fixture.provider, data.get("segment") or {}), REF)
    if kind == "get":
        return client.get(str(data["task_id"]))
    if kind == "list":
        return client.recent(None, 20)
    if kind == "balance":
        return client.balance()
    if kind == "preflight":
        return client.preflight()
    if kind == "find":  # the look-up of a create whose answer was lost (``find_tasks``), made a minute ago
        since = datetime.now(timezone.utc) - timedelta(minutes=1)
        return client.find_tasks(params_for(fixture.provider, data.get("segment") or {}), REF, since)
    raise AssertionError(f"{fixture.id}: unknown call {kind!r}")


def run(fixture: Fixture, httpserver: Any, tmp: Path) -> None:
    """Serve, call, compare: raises AssertionError naming every difference."""
    serve(httpserver, fixture)
    client = open_client(fixture.provider, httpserver.url_for("/"), tmp, fixture.data.get("environ"))
    result: Any = None
    raised: Optional[BaseException] = None
    try:
        result = call(fixture, client)
    except Exception as exc:  # noqa: BLE001 - compared with the fixture's expectation below
        raised = exc
    finally:
        client.close()
    sent = [req for req, _ in httpserver.log]
    wrong: List[str] = []
    for exchange in fixture.exchanges:
        spec = exchange.get("request") or {}
        if not spec:
            continue
        candidates = [r for r in sent if not spec.get("path") or r.path == spec["path"]]
        if not candidates:
            wrong.append(f"never sent {spec.get('method', '')} {spec.get('path')}; sent "
                         f"{[f'{r.method} {r.path}' for r in sent]}")
            continue
        best = min((request_problems(spec, r) for r in candidates), key=len)
        wrong += best
    expect = fixture.data.get("expect") or {}
    if "raises" in expect:
        names = {cls.__name__ for cls in type(raised).__mro__} if raised else set()
        if expect["raises"] not in names:
            wrong.append(f"expected {expect['raises']} to be raised, got "
                         f"{type(raised).__name__ + ': ' + str(raised) if raised else repr(result)}")
        elif expect.get("error_contains") and expect["error_contains"] not in str(raised):
            wrong.append(f"the error does not say {expect['error_contains']!r}: {raised}")
    elif raised is not None:
        raise AssertionError(f"{fixture.id}: {type(raised).__name__}: {raised}; request differences: {wrong}") \
            from raised
    else:
        wrong += outcome_problems(expect, result)
    assert not wrong, f"{fixture.id} ({fixture.data.get('source')}):\n  " + "\n  ".join(wrong)


def outcome_problems(expect: Mapping[str, Any], result: Any) -> List[str]:
    out: List[str] = []
    if "balance" in expect and result != expect["balance"]:
        out.append(f"balance: expected {expect['balance']}, got {result}")
    if "task_ids" in expect:
        ids = [t.task_id for t in result.tasks]
        if ids != expect["task_ids"]:
            out.append(f"task_ids: expected {expect['task_ids']}, got {ids}")
    if "covered" in expect and result.covered != expect["covered"]:
        out.append(f"covered: expected {expect['covered']}, got {result.covered} ({result.reason})")
    if "next_cursor" in expect and (result.next_cursor is None) != (expect["next_cursor"] is None):
        out.append(f"next_cursor: expected {expect['next_cursor']!r}, got {result.next_cursor!r}")
    if "statuses" in expect:
        got = [t.status for t in result.tasks]
        if got != expect["statuses"]:
            out.append(f"statuses: expected {expect['statuses']}, got {got}")
    for name in ("task_id", "status", "video_url", "progress", "cost", "prompt"):
        if name in expect:
            got = getattr(result, name, None)
            if got != expect[name]:
                out.append(f"{name}: expected {expect[name]!r}, got {got!r}")
    if "error_contains" in expect:
        message = getattr(result, "error_msg", None) or ""
        if expect["error_contains"] not in message:
            out.append(f"error_msg: expected to contain {expect['error_contains']!r}, got {message!r}")
    return out
