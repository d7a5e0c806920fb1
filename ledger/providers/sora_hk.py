"""The api.sora.hk v1 ("native") protocol, ledger's first and default provider.

The HTTP client is ``ledger.client.SoraClient``, unchanged; this module adds what a provider is
asked beyond it: the parameter rules (allowed values as data), the price key of a job, a page of
recent tasks for batch status, and the look of a task that the create may have made.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..client import RemoteTask, SharedBackoff, SoraClient, TaskSearch
from ..download import DownloadResult
from ..settings import Settings
from .base import Mapped, Mismatch, ModelRules, Registration, Request, TaskPage, choose_model

NAME = "sora_hk"
NORMAL, PRO = "sora-2", "sora-2-pro"
_ORIENTATIONS = {"horizontal": "horizontal", "vertical": "vertical"}
# What the API takes, per model (the API itself knows only ``is_pro``): api.sora.hk's API page
# (tests/contracts/sora_hk/, read 2026-12-07): normal 10/15 s, Pro 10/15/25 s (default 10),
# resolution horizontal/vertical. The Sora upstream it resells closed on 2026-09-24 (``ledger.sunset``).
MODELS: Mapping[str, ModelRules] = {
    NORMAL: ModelRules(NORMAL, pro=False, durations=(10, 15), default_duration=10, resolutions=_ORIENTATIONS),
    PRO: ModelRules(PRO, pro=True, durations=(10, 15, 25), default_duration=10, resolutions=_ORIENTATIONS),
}
ALL_DURATIONS = tuple(sorted({d for model in MODELS.values() for d in model.durations}))
# The fields of a listed task that must agree with the request for it to be that request's task.
_COMPARED = ("duration", "resolution", "is_pro")


class SoraHkRules:
    """Storyboard fields → the ``POST /create`` body, exactly as ledger always sent it (so the
    parameters, and their hash, of every job made before providers existed stay the same)."""

    name = NAME

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        chosen = choose_model(NAME, MODELS, NORMAL, PRO, request)
        if isinstance(chosen, Mismatch):
            return [chosen]
        _, model = chosen
        problems: List[Mismatch] = []
        duration = model.default_duration if request.duration is None else request.duration
        if duration not in model.durations:
            if duration in ALL_DURATIONS:
                normal = MODELS[NORMAL].durations
                problems.append(Mismatch("duration_seconds", f"duration {duration}s needs the Pro model (is_pro: true); "
                                                             f"normal generations take {' or '.join(map(str, normal))} seconds"))
            else:
                problems.append(Mismatch("duration_seconds", f"{duration} is not allowed here; use one of "
                                                             f"{', '.join(map(str, ALL_DURATIONS))}"))
        if request.resolution not in model.resolutions:
            problems.append(Mismatch("resolution", f"{request.resolution!r} is not allowed here; use one of "
                                                   f"{', '.join(map(repr, model.resolutions))}"))
        if problems:
            return problems
        params: Dict[str, Any] = {
            "prompt": request.prompt,
            "is_pro": model.pro,
            "duration": duration,
            "resolution": model.resolutions[request.resolution],
            # Pro is always high quality; sending it keeps the request honest about what is paid for.
            "quality": "high" if model.pro else request.quality,
            "remove_watermark": request.remove_watermark,
        }
        if request.image_url:
            params["image_url"] = request.image_url
        return Mapped(params, model.pro, self.price_key(params))

    def price_key(self, params: Mapping[str, Any]) -> str:
        """The service prices a task by its model alone: ``pro`` or ``normal``."""
        return "pro" if params.get("is_pro") else "normal"


RULES = SoraHkRules()


class SoraHk:
    """The provider interface over one ``SoraClient``."""

    name = NAME
    balance_refusal = "code 1012"
    reports_cost = True  # the create's answer carries ``cost`` in cents
    bills_on_success = False  # the create is billed; a failed task is not refunded that we know of
    tells_progress = True
    retention = None  # video URLs expire in 1.5-2.5 days, but polling the task signs a fresh one

    def __init__(self, client: SoraClient) -> None:
        self.client = client

    @classmethod
    def open(cls, settings: Settings, base_url: Optional[str] = None, pool_size: Optional[int] = None) -> "SoraHk":
        """A client from ``settings`` (``base_url``: the API a job was sent to, if not the configured one)."""
        return cls(SoraClient.from_settings(settings, base_url=base_url, pool_size=pool_size))

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def backoff(self) -> SharedBackoff:
        return self.client.backoff

    @property
    def last_unreachable(self) -> str:
        return self.client.last_unreachable

    def create(self, params: Mapping[str, Any], ref: str = "") -> RemoteTask:
        """``POST /create``; the API takes no client reference (``ref`` is not sent)."""
        return self.client.create(params)

    def get(self, task_id: str) -> RemoteTask:
        return self.client.get(task_id)

    def recent(self, cursor: Optional[str], limit: int) -> TaskPage:
        """``GET /tasks?page=N``: the cursor is the page number."""
        return self.client.recent(cursor, limit)

    def find_tasks(self, params: Mapping[str, Any], ref: str, since: datetime, until: Optional[datetime] = None,
                   *, skew_seconds: float = 120.0) -> TaskSearch:
        """The task list, by prompt and creation time."""
        return self.client.find_tasks(str(params["prompt"]), since, until, skew_seconds=skew_seconds)

    def same_request(self, task: RemoteTask, params: Mapping[str, Any]) -> bool:
        """Fields the list omits do not count against a task."""
        raw = task.raw
        return not any(key in raw and key in params and raw[key] not in (None, "") and raw[key] != params[key]
                       for key in _COMPARED)

    def download(self, url: str, dest: Path, *, root: Path, cancel: Any = None) -> DownloadResult:
        """The signed video URL needs no key, and gets none."""
        return self.client.download(url, dest, root=root, cancel=cancel)

    def balance(self) -> Optional[int]:
        return self.client.balance()

    def preflight(self) -> Optional[int]:
        return self.client.preflight()

    def pricing(self) -> Any:
        """``GET /pricing``: the price list."""
        return self.client.pricing()

    def clock_offset(self) -> float:
        return self.client.clock_offset()

    def watch(self, callback: Any) -> None:
        self.client.watch(callback)

    def unreachable_for(self) -> float:
        return self.client.unreachable_for()

    def close(self) -> None:
        self.client.close()


def _fallback_tariff(settings: Settings) -> Any:
    from ..pricing import fallback_prices  # pricing imports the registry

    return fallback_prices(settings)


REGISTRATION = Registration(
    name=NAME, rules=RULES, open=SoraHk.open, base_url=lambda settings: settings.base_url, tariff=_fallback_tariff,
    currency="USD", key_env="SORA_API_KEY", url_env="SORA_BASE_URL", sim="sora_hk")
