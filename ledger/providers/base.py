"""What every video API offers ledger, whatever its protocol.

Two halves: ``Rules`` (pure data and functions, used by a scan) turn a storyboard's
provider-neutral fields into one API's request parameters, with the allowed values as data per
model; ``Provider`` (a client, used by the worker) creates, looks up, lists and downloads tasks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Protocol, Tuple, Union

from ..client import RemoteTask, SharedBackoff, TaskPage, TaskSearch
from ..download import DownloadResult

log = logging.getLogger(__name__)


# --- a storyboard's request, and what one API makes of it ----------------------------------------


@dataclass(frozen=True)
class Request:
    """One segment's request as the storyboard says it (segment > the file's ``defaults`` >
    settings), in the storyboard's own provider-neutral words."""

    prompt: str
    model: Optional[str]  # named by the storyboard; None: the provider's normal or Pro model
    is_pro: Optional[bool]  # None when the level that named ``model`` did not say
    duration: Optional[int]  # seconds; None: the model's default
    resolution: str  # "horizontal" / "vertical", or a size "WIDTHxHEIGHT"
    quality: str
    remove_watermark: bool
    image_url: Optional[str]
    # The provider's own block of the storyboard (``"kling": {"mode": "pro"}``): the defaults' and the
    # segment's merged, the segment's keys winning; checked by the schema the provider declares.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mapped:
    """A request one provider can take: the parameters the ledger stores (and hashes), whether it
    is the Pro model, and the key of its price in that provider's price list."""

    params: Dict[str, Any]
    is_pro: bool
    price_key: str


class Mismatch(NamedTuple):
    """A storyboard value a provider cannot take: the storyboard key, and why (with the allowed values)."""

    key: str
    message: str


@dataclass(frozen=True)
class ModelRules:
    """What one model of one API takes, as data: durations in seconds, and the storyboard's
    ``resolution`` values it accepts mapped to what is sent."""

    name: str
    pro: bool
    durations: Tuple[int, ...]
    default_duration: int
    resolutions: Mapping[str, str] = field(default_factory=dict)


class Rules(Protocol):
    """One provider's parameter mapping and validation (pure: no network)."""

    name: str

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        """The request as this provider's parameters, or every value it cannot take."""

    def price_key(self, params: Mapping[str, Any]) -> str:
        """The key of ``params``' price in this provider's price list."""


def choose_model(provider: str, models: Mapping[str, ModelRules], normal: str, pro: str, request: Request,
                 lookup: Optional[Callable[[str], Optional[ModelRules]]] = None
                 ) -> Union[Tuple[str, ModelRules], Mismatch]:
    """(the model name to send, its rules): the named model, else the Pro or normal one by
    ``is_pro``; a mismatch for an unknown model or one that contradicts ``is_pro``."""
    if request.model is None:
        name = pro if request.is_pro else normal
        return name, models[name]
    rules = (lookup or models.get)(request.model)
    if rules is None:
        return Mismatch("model", f"model {request.model!r} is not offered by the {provider} provider; use one of "
                                 f"{', '.join(map(repr, models))}")
    if request.is_pro is not None and request.is_pro != rules.pro:
        kind = "the Pro model" if rules.pro else "not a Pro model"
        return Mismatch("model", f"model {request.model!r} is {kind}, but is_pro is {str(request.is_pro).lower()}; "
                                 f"drop one of the two")
    return request.model, rules


# --- what the worker asks of an API ----------------------------------------------------------------


class Provider(Protocol):
    """A client of one video API at one base URL. Safe to share between threads.

    ``ref`` (``create``, ``find_tasks``) is the job attempt's own reference, stable from its
    write-ahead on (``steps.attempt_ref``): an API that takes a client reference gets it, so a lost
    answer is found again by it; the others may ignore it."""

    name: str  # the provider's setting value: "sora_hk", "openai"
    base_url: str
    backoff: SharedBackoff  # a 429 pauses every call to this API
    last_unreachable: str
    # How this API says that the account cannot pay ("code 1012"), for the stop message.
    balance_refusal: str
    # Whether a create's answer says what it cost (``RemoteTask.cost``): then ``--max-spend`` learns
    # the real price from the first answer before it lets more creates of that kind go.
    reports_cost: bool
    # Whether a task that ends failed costs nothing: what was booked for it is given back.
    bills_on_success: bool
    # How long the API keeps a task and its video (seconds; None: long enough not to matter). A task
    # it no longer knows past this is gone with its video: the job ends content_expired.
    retention: Optional[float]
    # Whether a status answer tells the task's progress (%); without it, polls are timed by how long
    # tasks of its kind took in this run, and by a finer ladder until one has finished.
    tells_progress: bool

    def create(self, params: Mapping[str, Any], ref: str = "") -> RemoteTask:
        """Start one paid generation from stored ``params``; never re-sent after it may have
        reached the API (``TransientError.maybe_created``)."""

    def get(self, task_id: str) -> RemoteTask:
        """One task as it is now."""

    def recent(self, cursor: Optional[str], limit: int) -> TaskPage:
        """A page of the account's tasks, newest first, from ``cursor`` (None: the newest)."""

    def find_tasks(self, params: Mapping[str, Any], ref: str, since: datetime, until: Optional[datetime] = None,
                   *, skew_seconds: float = 120.0) -> TaskSearch:
        """The tasks the create of ``params`` (attempt ``ref``) may have made in the window, and
        whether the search covered it: only then does finding nothing mean "not created"."""

    def same_request(self, task: RemoteTask, params: Mapping[str, Any]) -> bool:
        """Does a listed task look like the one ``params`` would make?"""

    def download(self, url: str, dest: Path, *, root: Path, cancel: Any = None) -> DownloadResult:
        """Fetch a finished task's video (a signed URL, or the API's authenticated content endpoint)."""

    def balance(self) -> Optional[int]:
        """The balance in cents; None when this API has no balance endpoint."""

    def preflight(self) -> Optional[int]:
        """One cheap authenticated call before anything is spent: the balance when the API tells it."""

    def clock_offset(self) -> float:
        """Seconds the API's clock is ahead of this machine's, as its ``Date`` header shows (0: not known)."""

    def watch(self, callback: Callable[[Any], None]) -> None:
        """Also hand every HTTP answer of the API to ``callback`` (``ledger check``)."""

    def unreachable_for(self) -> float:
        """Seconds since calls stopped reaching the API (0 while they get through)."""

    def close(self) -> None:
        """Close pooled connections."""


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """Everything the rest of ledger knows of one provider: its line in ``providers/__init__.py``.

    ``open(settings, base_url=None, pool_size=None)`` makes its client (``base_url``: the API a job
    was sent to, when not the configured one); ``base_url(settings)`` is the configured one;
    ``tariff(settings)`` its price list, in ``currency``; ``options`` its settings;
    ``storyboard_options`` the JSON Schema of its block in a storyboard's ``defaults`` and segments
    (None: it has none); ``sim`` the module of its simulator protocol (``ledger/sim``);
    ``bills_at_create`` whether a create is billed when accepted."""

    name: str
    rules: "Rules"
    open: Callable[..., "Provider"]
    base_url: Callable[[Any], str]
    tariff: Callable[[Any], Any]
    currency: str
    key_env: str
    url_env: str
    options: Tuple[Any, ...] = ()
    storyboard_options: Optional[Mapping[str, Any]] = None
    sim: str = ""
    # The API bills a generation when the create is accepted: a job whose create went unanswered
    # (unresolved) may already be paid for, and is shown as such, not as "not yet paid for".
    bills_at_create: bool = False
