"""How one API speaks, for the simulator: its routes, its authentication, its bodies and its errors.

The server (``server.py``) keeps everything the protocols share — the tasks and their timeline,
the balance, the faults it injects, the signed video URLs and the bytes behind them; a protocol
module (one per provider, named by the provider's ``Registration.sim``) only speaks its format:

* ``route(method, path, query)`` names a request's route (``create``, ``task``, ``tasks``,
  ``balance``, ``file`` …; None for an unknown path) and its argument (a task id);
* ``authorise(headers, key)`` answers a request whose key is wrong (None: it may pass);
* ``create(sim, body, task_id)`` validates, charges and records a task through
  ``sim.record_task`` and answers (and says whether a task was made);
* ``answer(sim, route, arg, query, origin)`` answers every other API route;
* ``view(sim, task, origin)`` is a task as the API shows it;
* ``error(kind, message)`` is one of the server's own errors in this format (a fault it injects,
  an unknown path, a 404).
"""
from __future__ import annotations

import importlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

JSON = "application/json; charset=utf-8"
# The errors the server itself answers, whatever the protocol.
ERROR_KINDS = ("server", "server_in_200", "rate_limited", "not_found", "no_route", "bad_request", "unauthorised",
               "insufficient_balance")


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = JSON


def json_reply(status: int, payload: Any, headers: Optional[Mapping[str, str]] = None) -> Reply:
    return Reply(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), dict(headers or {}))


class SimProtocol:
    """The base of the simulator's protocols; a subclass says how its API speaks."""

    name = ""
    base_path = "/v1"  # the API's base URL is the server's origin plus this
    # How to point ledger at the simulator ({url}: its base URL, {key}: the key it takes).
    key_hint = "the provider's base URL setting to {url} and its key to {key}"
    routes: Tuple[str, ...] = ()  # routes beyond the shared ones (create, task, tasks, …) faults may target

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def route(self, method: str, path: str, query: Mapping[str, List[str]]) -> Tuple[Optional[str], str]:
        raise NotImplementedError

    def authorise(self, headers: Mapping[str, str], key: Optional[str]) -> Optional[Reply]:
        """The answer to a request whose ``Authorization: Bearer`` key is not ``key`` (None:
        any key passes, or this one did)."""
        header = headers.get("Authorization", "")
        if key is None or header == f"Bearer {key}":
            return None
        presented = header[7:] if header.lower().startswith("bearer ") else header
        # Like many services, the answer echoes the key it got, so clients must mask it.
        return self.error("unauthorised", f"invalid API key: {presented or '(none)'}")

    def create(self, sim: Any, body: Any, task_id: Optional[str]) -> Tuple[Reply, bool]:
        raise NotImplementedError

    def answer(self, sim: Any, route: str, arg: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        raise NotImplementedError

    def view(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        raise NotImplementedError

    def error(self, kind: str, message: str, **details: Any) -> Reply:
        raise NotImplementedError

    def content_problem(self, sim: Any, task_id: str, expired: bool) -> Optional[Reply]:
        """Why the video behind the key (route ``content``) cannot be served, or None; only for
        a protocol that has such a route."""
        return self.error("no_route", f"GET {task_id}")

    def settings(self, sim: Any) -> Dict[str, str]:
        """The ledger settings that point at ``sim`` (``PROVIDER``, the base URL, the key)."""
        raise NotImplementedError

    def job_price(self, sim: Any) -> int:
        """What ``sim`` bills one job of a storyboard segment that sets nothing but its prompt."""
        raise NotImplementedError

    def retry_after(self, reply: Reply, seconds: Optional[Any]) -> Reply:
        """``reply`` with a ``Retry-After`` header when ``seconds`` is given."""
        if seconds is None:
            return reply
        return Reply(reply.status, reply.body, {**reply.headers, "Retry-After": str(seconds)}, reply.content_type)


def load(module: str) -> SimProtocol:
    """The protocol a provider's ``Registration.sim`` names (a module of ``ledger.sim``)."""
    return importlib.import_module(f"ledger.sim.{module}").PROTOCOL
