"""The review page: every take of every segment side by side, built from the ledger.

One self-contained HTML file (its CSS and script inlined from ``ledger/assets/``, nothing from
the network) plus the videos it points at with paths relative to the page, so it works from
``file://`` and when the output folder is copied elsewhere. Videos get their ``src`` only when
scrolled near the viewport (they are created there): a page of 1,000 segments is ready in well
under a second and fetches nothing until it is looked at.

The storyboard files are read again (when they are still there) for what the ledger does not
keep: the segments' ``director_intent``, and the current parameters, so a take generated before
its prompt or parameters were edited is marked stale.
"""
from __future__ import annotations

import html
import json
import logging
import os
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import quote

from .errors import UsageError
from .models import iso_utc, utcnow
from .money import Money, money
from .settings import Settings
from .states import ALL_STATES, IN_FLIGHT, State
from .store import Take
from .storyboard import Layout, read_storyboard

log = logging.getLogger(__name__)

STATIC, SERVE = "static", "serve"


@dataclass(frozen=True)
class TakeView:
    """One take as the page shows it."""

    job_id: int
    ref: str
    version: int
    state: State
    picked: bool
    cost_cents: Optional[int]
    currency: str  # of the cost: its provider's
    seconds: Optional[float]  # submission to finished file
    task_id: Optional[str]
    progress: int
    error: Optional[str]
    video: Optional[Path]  # absolute; None unless done
    video_exists: bool
    stale: Optional[str]  # why the take no longer matches its storyboard
    prompt: str  # the prompt it was generated from


@dataclass
class SegmentView:
    """One segment with its takes, in version order."""

    storyboard_id: int
    storyboard_path: str
    index: int
    prompt: str
    director_intent: Optional[str]
    duration: Any
    resolution: Any
    is_pro: bool
    takes: List[TakeView] = field(default_factory=list)

    @property
    def picked(self) -> Optional[TakeView]:
        return next((t for t in self.takes if t.picked), None)


@dataclass
class BoardView:
    """One storyboard's section."""

    storyboard_id: int
    path: str
    title: str
    note: Optional[str]  # why staleness cannot be told (file gone or invalid)
    segments: List[SegmentView] = field(default_factory=list)


@dataclass
class Review:
    """Everything the page shows, plus its summary."""

    boards: List[BoardView]
    generated_at: datetime
    spent: Money = field(default_factory=Money)

    @property
    def segments(self) -> List[SegmentView]:
        return [s for b in self.boards for s in b.segments]

    @property
    def takes(self) -> List[TakeView]:
        return [t for s in self.segments for t in s.takes]

    def counts(self) -> Dict[str, int]:
        counted = Counter(t.state.value for t in self.takes)
        return {s.value: counted[s.value] for s in ALL_STATES if counted[s.value]}

    @property
    def picked_segments(self) -> int:
        return sum(1 for s in self.segments if s.picked is not None)

    @property
    def stale(self) -> int:
        return sum(1 for t in self.takes if t.stale)


# --- the storyboards as they are now -----------------------------------------------------------


@dataclass(frozen=True)
class _Current:
    params_sha: str
    params: Mapping[str, Any]
    director_intent: Optional[str]


def _intents(path: Path) -> Dict[int, str]:
    """``director_intent`` per segment index, from a file already known to be valid."""
    doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    found = {}
    for segment in doc.get("segments") or []:
        if isinstance(segment, dict) and isinstance(segment.get("director_intent"), str) \
                and isinstance(segment.get("segment_index"), int):
            found[segment["segment_index"]] = segment["director_intent"]
    return found


def current_segments(path: Path, settings: Settings, cwd: Path) -> Tuple[Optional[Dict[int, _Current]], Optional[str]]:
    """The storyboard's segments as a scan would read them now, or None and why not."""
    if not path.is_file():
        return None, "the storyboard file is gone; takes cannot be checked for staleness"
    parsed = read_storyboard(path, settings, Layout.from_settings(settings, cwd))
    if not parsed.valid:
        return None, f"the storyboard is invalid now ({parsed.problems[0]}); takes cannot be checked for staleness"
    try:
        intents = _intents(path)
    except (OSError, ValueError):
        intents = {}
    return {spec.segment_index: _Current(spec.params_sha, spec.params, intents.get(spec.segment_index))
            for spec in parsed.segments}, None


def _stale(take: Take, current: Optional[Dict[int, _Current]]) -> Optional[str]:
    """Why a paid-for take no longer matches its storyboard (pending ones follow the file)."""
    job = take.job
    if current is None or not (job.state is State.DONE or job.state in IN_FLIGHT):
        return None
    now = current.get(job.segment_index)
    if now is None:
        return "the segment is no longer in the storyboard"
    if now.params_sha == job.params_sha:
        return None
    changed = sorted(k for k in set(now.params) | set(job.params) if now.params.get(k) != job.params.get(k))
    return f"the storyboard changed after it was generated ({', '.join(changed)})"


def collect(takes: Iterable[Take], settings: Settings, cwd: Path, resolve: Callable[[str], Path]) -> Review:
    """Group the ledger's takes (in story order) into the page's boards and segments."""
    boards: "OrderedDict[str, BoardView]" = OrderedDict()
    currents: Dict[str, Optional[Dict[int, _Current]]] = {}
    spent = Money()
    for take in takes:
        job = take.job
        board = boards.get(job.storyboard_path)
        if board is None:
            current, note = current_segments(resolve(job.storyboard_path), settings, cwd) \
                if take.storyboard_present else (None, "the storyboard is no longer scanned (file gone)")
            currents[job.storyboard_path] = current
            board = boards[job.storyboard_path] = BoardView(job.storyboard_id, job.storyboard_path,
                                                            take.project_name or Path(job.storyboard_path).stem, note)
        current = currents[job.storyboard_path]
        now = current.get(job.segment_index) if current else None
        if not board.segments or board.segments[-1].index != job.segment_index:
            params = now.params if now else job.params
            board.segments.append(SegmentView(job.storyboard_id, job.storyboard_path, job.segment_index,
                                              str(params.get("prompt", "")), now.director_intent if now else None,
                                              params.get("duration"), params.get("resolution"),
                                              bool(params.get("is_pro"))))
        video = resolve(job.video_path) if job.state is State.DONE and job.video_path else None
        seconds = (job.finished_at - job.submitted_at).total_seconds() \
            if job.state is State.DONE and job.finished_at and job.submitted_at else None
        board.segments[-1].takes.append(TakeView(
            job.id, job.label, job.version, job.state, take.picked, job.cost_cents, _currency(job.provider), seconds,
            job.remote_task_id, job.progress, job.error_message or job.error_kind, video,
            bool(video and video.is_file()), _stale(take, current), str(job.params.get("prompt", ""))))
        spent += Money.of(job.spent_cents, _currency(job.provider))
    return Review(list(boards.values()), utcnow(), spent)


def _currency(provider: str) -> str:
    from .providers import REGISTRY

    return REGISTRY[provider].currency if provider in REGISTRY else "USD"


# --- rendering ---------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("ledger").joinpath("assets", name).read_text(encoding="utf-8")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cost(cents: Optional[int], currency: str) -> str:
    return "-" if cents is None else money(cents, currency)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} m {secs:02d} s" if minutes else f"{secs} s"


@lru_cache(maxsize=4096)
def _folder_url(folder: str, page_dir: str) -> str:
    rel = os.path.relpath(folder, page_dir)
    return "" if rel == "." else "/".join(quote(part) for part in rel.split(os.sep)) + "/"


def relative_url(target: Path, page_dir: Path) -> str:
    """``target`` as a URL relative to a page in ``page_dir`` (each path part percent-encoded).
    Takes share folders: each folder's part is worked out once."""
    absolute = os.path.abspath(target)
    return _folder_url(os.path.dirname(absolute), os.path.abspath(page_dir)) + quote(os.path.basename(absolute))


def _state_text(take: TakeView) -> str:
    if take.state is State.SUBMITTED:
        return f"generating {take.progress}%" if take.progress else "generating"
    if take.state is State.SUBMITTING:
        return "submitting"
    return take.state.value


def _take_html(take: TakeView, position: int, segment: SegmentView, media: Callable[[TakeView], str]) -> str:
    classes = ["take", take.state.value] + (["picked"] if take.picked else []) + (["stale"] if take.stale else [])
    facts = [f"v{take.version}", _cost(take.cost_cents, take.currency)]
    if take.seconds is not None:
        facts.append(_duration(take.seconds))
    if take.task_id:
        facts.append(f'<span title="{_e(take.task_id)}">task {_e(take.task_id[:8])}</span>')
    parts = [f'<figure class="{" ".join(classes)}" data-job="{take.job_id}" data-version="{take.version}" '
             f'data-ref="{_e(take.ref)}" data-key="{position}">']
    if take.state is State.DONE and take.video_exists:
        ratio = "portrait" if segment.resolution == "vertical" else "landscape"
        # The player is only markup until it scrolls near the screen: 2,000 live <video> elements
        # cost the browser seconds before the page is ready, even with nothing to fetch. Inside
        # <noscript> the markup is inert text to the script, and a real player without script.
        parts.append(f'<div class="player {ratio}"><noscript><video class="{ratio}" controls muted preload="metadata" '
                     f'src="{_e(media(take))}"></video></noscript></div>')
    else:
        detail = ""
        if take.state is State.DONE:
            detail = f'<p class="error">video file missing: {_e(take.video)}</p>'
        elif take.state is State.FAILED and take.error:
            detail = f'<p class="error">{_e(take.error)}</p>'
        parts.append(f'<div class="placeholder"><p class="state">{_e(_state_text(take))}</p>{detail}</div>')
    parts.append(f'<figcaption><span class="facts">{" · ".join(facts)}</span>')
    if take.stale:
        parts.append(f'<span class="badge stale" title="{_e(take.stale)}">stale</span>')
    if take.state is State.DONE and take.video_exists:
        label = "chosen" if take.picked else "choose"
        parts.append(f'<button type="button" class="choose" aria-pressed="{"true" if take.picked else "false"}">'
                     f'{label} <kbd>{position}</kbd></button>')
    parts.append("</figcaption>")
    if take.stale:
        parts.append(f'<p class="stale-why">{_e(take.stale)}</p>')
        if take.prompt != segment.prompt:
            parts.append(f'<details><summary>prompt it was generated from</summary><p class="prompt">'
                         f'{_e(take.prompt)}</p></details>')
    parts.append("</figure>")
    return "".join(parts)


def _segment_html(segment: SegmentView, media: Callable[[TakeView], str]) -> str:
    picked = segment.picked
    params = [f"{segment.duration} s" if segment.duration is not None else "",
              str(segment.resolution or ""), "Pro" if segment.is_pro else "normal"]
    head = (f'<article class="segment" tabindex="0" id="seg-{segment.storyboard_id}-{segment.index}" '
            f'data-storyboard="{_e(segment.storyboard_path)}" data-storyboard-id="{segment.storyboard_id}" '
            f'data-segment="{segment.index}" data-picked="{picked.job_id if picked else ""}" '
            f'data-ledger-picked="{picked.job_id if picked else ""}">')
    meta = [f'<div class="meta"><h3>Segment {segment.index}</h3>',
            f'<p class="params">{_e(" · ".join(p for p in params if p))}</p>',
            f'<p class="prompt" lang="zh">{_e(segment.prompt)}</p>']
    if segment.director_intent:
        meta.append(f'<p class="intent"><span>director_intent</span> {_e(segment.director_intent)}</p>')
    meta.append("</div>")
    takes = "".join(_take_html(t, n, segment, media) for n, t in enumerate(segment.takes, start=1))
    return head + "".join(meta) + f'<div class="takes">{takes}</div></article>'


def _summary_html(review: Review, mode: str) -> str:
    counts = " ".join(f'<li class="{state}"><b>{n}</b> {state}</li>' for state, n in review.counts().items())
    total = len(review.segments)
    actions = ('<button type="button" id="download-picks">Download picks.json</button>'
               '<span id="unsaved"></span>') if mode == STATIC else \
        '<span id="saving">choices are written to the ledger at once</span>'
    return (f'<header class="summary"><h1>Review <small>{len(review.boards)} storyboard(s), {total} segment(s), '
            f'{len(review.takes)} take(s)</small></h1>'
            f'<ul class="counts">{counts}</ul>'
            f'<p class="totals">spent <b>{_e(review.spent)}</b> · picked '
            f'<b id="picked-count">{review.picked_segments}</b> of <b>{total}</b> segment(s)'
            f'{f" · <b>{review.stale}</b> stale take(s)" if review.stale else ""}'
            f' · generated {_e(iso_utc(review.generated_at.replace(microsecond=0)))}</p>'
            f'<p class="actions">{actions}<span id="status" role="status"></span></p>'
            '<p class="keys"><kbd>j</kbd>/<kbd>k</kbd> next/previous segment · <kbd>1</kbd>–<kbd>9</kbd> '
            'choose that take · <kbd>0</kbd> clear the choice</p></header>')


def render(review: Review, media: Callable[[TakeView], str], mode: str = STATIC, page_id: Optional[str] = None) -> str:
    """The whole page as one string. ``media`` gives each done take's video URL."""
    sections = []
    for board in review.boards:
        note = f'<p class="note">{_e(board.note)}</p>' if board.note else ""
        sections.append(f'<section class="board"><h2>{_e(board.title)} <small>{_e(board.path)}</small></h2>{note}'
                        + "".join(_segment_html(s, media) for s in board.segments) + "</section>")
    if not sections:
        sections.append('<p class="empty">No takes in this ledger yet: run <code>ledger run</code> first.</p>')
    # Nothing may come from the network: the page is one file plus the videos beside it.
    policy = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
              "media-src 'self' file: blob:; img-src 'self' data:; connect-src 'self'")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>ledger review</title><style>{_asset('review.css')}</style></head>"
            f'<body data-mode="{mode}" data-page="{_e(page_id or uuid.uuid4().hex)}">'
            + _summary_html(review, mode) + "<main>" + "".join(sections) + "</main>"
            + f"<script>{_asset('review.js')}</script></body></html>\n")


def write_page(review: Review, page: Path) -> Path:
    """Write the static page to ``page`` atomically (temp file, fsync, rename); returns it."""
    page_dir = page.parent.resolve()

    def media(take: TakeView) -> str:
        assert take.video is not None
        return relative_url(take.video, page_dir)

    text = render(review, media, STATIC, page_id=str(page.resolve()))
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(f".{page.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, page)
    finally:
        tmp.unlink(missing_ok=True)
    return page


# --- picks.json, the static page's way back into the ledger ------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One entry of a picks.json: a take to pick (``version`` set) or a segment to clear."""

    pointer: str
    storyboard: Optional[str]
    segment_index: Optional[int]
    version: Optional[int] = None
    ref: Optional[str] = None

    @property
    def label(self) -> str:
        if self.storyboard is None:
            return str(self.ref)
        return f"{self.storyboard}#{self.segment_index}" + (f"v{self.version}" if self.version else "")


def read_picks_file(path: Path) -> Tuple[List[FileEntry], List[FileEntry]]:
    """The picks and the cleared segments of a picks.json; every problem is reported at once,
    each naming the file, the JSON pointer and what is wrong."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not a JSON file: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("picks", []), list) \
            or not isinstance(doc.get("cleared", []), list):
        raise UsageError(f'{path}: /: expected {{"picks": [...], "cleared": [...]}} as written by the review page')
    problems: List[str] = []
    picked: List[FileEntry] = []
    cleared: List[FileEntry] = []
    for key, target, needs_version in (("picks", picked, True), ("cleared", cleared, False)):
        for n, item in enumerate(doc.get(key, [])):
            pointer = f"/{key}/{n}"
            if not isinstance(item, dict):
                problems.append(f"{path}: {pointer}: expected an object")
                continue
            board, segment, version = item.get("storyboard"), item.get("segment_index"), item.get("version")
            if isinstance(board, str) and isinstance(segment, int) and not isinstance(segment, bool) \
                    and (not needs_version or (isinstance(version, int) and not isinstance(version, bool))):
                target.append(FileEntry(pointer, board, segment, version if needs_version else None))
            elif needs_version and isinstance(item.get("ref"), str):
                target.append(FileEntry(pointer, None, None, ref=item["ref"]))
            else:
                wanted = "storyboard (text), segment_index and version (integers)" if needs_version \
                    else "storyboard (text) and segment_index (integer)"
                problems.append(f"{path}: {pointer}: expected {wanted}")
    if problems:
        raise UsageError("; ".join(problems))
    return picked, cleared
