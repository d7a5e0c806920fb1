"""Storyboard discovery, validation and expansion into job specs.

Pure: paths and settings in, specs and problems out. Nothing here touches the ledger.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .settings import NORMAL_DURATIONS, Settings

SCHEMA_PATH = Path(__file__).parent / "schema" / "storyboard.schema.json"
SEGMENT_KEYS = frozenset(
    {
        "segment_index", "prompt_text", "image_url", "is_pro", "duration_seconds", "resolution",
        "quality", "remove_watermark", "versions", "director_intent", "asset",
    }
)
TOP_LEVEL_KEYS = frozenset({"metadata", "segments", "character_bible", "defaults"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in one file, located by a JSON pointer."""

    path: str
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.pointer or '/'}: {self.message}"


@dataclass(frozen=True)
class Layout:
    """Where storyboards are read from and where their videos go."""

    cwd: Path
    input_dir: Path
    output_dir: Path
    output_mode: str = "centralized"

    @classmethod
    def from_settings(cls, settings: Settings, cwd: Path) -> "Layout":
        return cls(cwd=cwd, input_dir=settings.input_dir, output_dir=settings.output_dir,
                   output_mode=settings.output_mode)

    def storyboard_folder(self, storyboard: Path) -> Path:
        """The folder holding one storyboard's ``Segment_{i}`` folders — the layout users' existing
        outputs follow: ``output/{sub/dirs}/{stem}/`` or, in place, ``{storyboard_dir}/{stem}_assets/``."""
        stem = storyboard.stem
        if self.output_mode == "in-place":
            return storyboard.parent / f"{stem}_assets"
        try:
            sub = storyboard.parent.relative_to(self.input_dir)
        except ValueError:
            sub = Path()
        return self.output_dir / sub / stem


class SegmentSpec(NamedTuple):
    """One segment with its fully resolved request parameters and how many versions to make.

    A plain tuple of strings and numbers: 100,000 of them cross process boundaries cheaply."""

    segment_index: int
    versions: int
    params_json: str  # canonical JSON of the request parameters: what the ledger stores and hashes
    params_sha: str
    target_dir: str
    is_pro: bool

    @property
    def params(self) -> Dict[str, Any]:
        return json.loads(self.params_json)


class JobSpec(NamedTuple):
    """One (segment, version): one job row. Built on demand so results cross processes small."""

    segment: SegmentSpec
    version: int

    @property
    def segment_index(self) -> int:
        return self.segment.segment_index

    @property
    def params(self) -> Dict[str, Any]:
        return self.segment.params

    @property
    def params_json(self) -> str:
        return self.segment.params_json

    @property
    def params_sha(self) -> str:
        return self.segment.params_sha

    @property
    def target_dir(self) -> str:
        return self.segment.target_dir

    @property
    def is_pro(self) -> bool:
        return self.segment.is_pro


@dataclass
class ParsedStoryboard:
    """The outcome of reading one file: its specs, or the problems that stopped it."""

    path: str
    fingerprint: str
    unchanged: bool = False
    project_name: Optional[str] = None
    segment_count: int = 0
    segments: List[SegmentSpec] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    warnings: List[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def jobs(self) -> List[JobSpec]:
        return [JobSpec(segment, v) for segment in self.segments for v in range(1, segment.versions + 1)]


def ledger_path(path: Path, cwd: Path) -> str:
    """How a path is stored: POSIX and relative to the working directory when under it."""
    absolute = path if path.is_absolute() else cwd / path
    try:
        return absolute.relative_to(cwd).as_posix()
    except ValueError:
        return absolute.as_posix()


def is_storyboard_name(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith("storyboard") and lowered.endswith(".json")


def discover(input_dir: Path, skip: Sequence[Path] = ()) -> List[Path]:
    """Storyboard files under ``input_dir``, sorted; follows symlinks without looping and never
    descends into ``skip`` folders (the output tree when it lies inside the input tree)."""
    skipped = {os.path.realpath(p) for p in skip}
    seen_dirs = set()
    found: List[Path] = []
    for root, dirs, files in os.walk(input_dir, followlinks=True):
        st = os.stat(root)
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs or os.path.realpath(root) in skipped:
            dirs[:] = []
            continue
        seen_dirs.add(key)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in files if is_storyboard_name(f))
    return sorted(found)


@lru_cache(maxsize=1)
def schema() -> Dict[str, Any]:
    document = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(document)
    return document


@lru_cache(maxsize=1)
def fast_validator() -> "jsonschema_rs.Draft202012Validator":
    """Says valid or not, about 200x faster than ``jsonschema``: the first scan of 100,000 jobs
    spends most of its time validating, and almost every file is valid."""
    return jsonschema_rs.Draft202012Validator(schema())


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    """Explains what is wrong, for the few files the fast validator rejects."""
    return Draft202012Validator(schema())


@lru_cache(maxsize=8)
def settings_fingerprint(settings: Settings, layout: Layout) -> str:
    """Everything outside a file that shapes its jobs; part of each file's fingerprint."""
    shaping = [
        settings.gen_count_per_segment, settings.default_duration, settings.default_resolution,
        settings.default_is_pro, settings.default_remove_watermark, settings.default_quality,
        str(layout.input_dir), str(layout.output_dir), layout.output_mode, str(layout.cwd),
    ]
    return json.dumps(shaping)


_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def canonical_json(params: Mapping[str, Any]) -> str:
    return _CANONICAL.encode(params)


def params_sha(params_json: str) -> str:
    return hashlib.sha256(params_json.encode("utf-8")).hexdigest()


def pointer(parts: Sequence[Any]) -> str:
    """An RFC 6901 JSON pointer from a path of keys and indexes."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _explain(error: ValidationError) -> str:
    """A user-facing sentence for a schema error, plainer than jsonschema's default where it helps."""
    last = error.path[-1] if error.path else None
    if last == "image_url":
        return "image_url must be an http(s) URL (the API does not accept local files)"
    if last == "prompt_text" and error.validator in ("pattern", "type"):
        return "prompt_text must be a non-empty string"
    if error.validator == "enum":
        return f"{error.instance!r} is not allowed here; use one of {', '.join(map(repr, error.validator_value))}"
    if error.validator == "additionalProperties" and error.path and error.path[-1] == "defaults":
        return f"{error.message} (defaults may set is_pro, duration_seconds, resolution, quality, remove_watermark, versions)"
    return error.message


def _schema_problems(doc: Any, display: str) -> List[Problem]:
    if fast_validator().is_valid(doc):
        return []
    errors = sorted(validator().iter_errors(doc), key=lambda e: (list(map(str, e.path)), e.validator))
    return [Problem(display, pointer(e.path), _explain(e)) for e in errors]


def _without_comments(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """``json.loads`` hook: keys starting with ``_`` are comments, dropped while parsing."""
    return {k: v for k, v in pairs if not k.startswith("_")}


def _pick(key: str, segment: Mapping[str, Any], defaults: Mapping[str, Any], fallback: Any, seg_ptr: str) -> Tuple[Any, str]:
    """segment > storyboard defaults > settings; also says where the value came from."""
    if key in segment:
        return segment[key], f"{seg_ptr}/{key}"
    if key in defaults:
        return defaults[key], f"/defaults/{key}"
    return fallback, ""


def expand(doc: Mapping[str, Any], storyboard: Path, display: str, settings: Settings, layout: Layout) -> Tuple[List[SegmentSpec], List[Problem]]:
    """Resolve every segment's parameters and versions; report API constraints known up front."""
    defaults = doc.get("defaults") or {}
    folder = ledger_path(layout.storyboard_folder(storyboard), layout.cwd)
    specs: List[SegmentSpec] = []
    problems: List[Problem] = []
    first_seen: Dict[int, int] = {}
    for position, segment in enumerate(doc["segments"]):
        seg_ptr = f"/segments/{position}"
        index = segment["segment_index"]
        if index in first_seen:
            problems.append(Problem(display, f"{seg_ptr}/segment_index",
                                    f"segment_index {index} is used twice (first at /segments/{first_seen[index]})"))
            continue
        first_seen[index] = position
        is_pro, _ = _pick("is_pro", segment, defaults, settings.default_is_pro, seg_ptr)
        duration, where = _pick("duration_seconds", segment, defaults, settings.default_duration, seg_ptr)
        if not is_pro and duration not in NORMAL_DURATIONS:
            problems.append(Problem(display, where or seg_ptr,
                                    f"duration {duration}s needs the Pro model (is_pro: true); "
                                    f"normal generations take {' or '.join(map(str, NORMAL_DURATIONS))} seconds"))
            continue
        resolution, _ = _pick("resolution", segment, defaults, settings.default_resolution, seg_ptr)
        quality, _ = _pick("quality", segment, defaults, settings.default_quality, seg_ptr)
        watermark, _ = _pick("remove_watermark", segment, defaults, settings.default_remove_watermark, seg_ptr)
        versions, _ = _pick("versions", segment, defaults, settings.gen_count_per_segment, seg_ptr)
        params: Dict[str, Any] = {
            "prompt": segment["prompt_text"].strip(),
            "is_pro": is_pro,
            "duration": duration,
            "resolution": resolution,
            # Pro is always high quality; sending it keeps the request honest about what is paid for.
            "quality": "high" if is_pro else quality,
            "remove_watermark": watermark,
        }
        if segment.get("image_url"):
            params["image_url"] = segment["image_url"]
        text = canonical_json(params)
        specs.append(SegmentSpec(index, versions, text, params_sha(text), f"{folder}/Segment_{index}", is_pro))
    return specs, problems


def _unknown_keys(doc: Mapping[str, Any], display: str) -> Iterator[Problem]:
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            yield Problem(display, pointer([key]), f"unknown key {key!r} ignored (prefix it with '_' to mark a comment)")
    for position, segment in enumerate(doc["segments"]):
        for key in segment:
            if key not in SEGMENT_KEYS:
                yield Problem(display, pointer(["segments", position, key]),
                              f"unknown key {key!r} ignored (prefix it with '_' to mark a comment)")


def read_storyboard(path: Path, settings: Settings, layout: Layout, known_fingerprint: Optional[str] = None) -> ParsedStoryboard:
    """Read, validate and expand one storyboard. When its fingerprint equals ``known_fingerprint``
    the file is not parsed at all (``unchanged``)."""
    display = ledger_path(path, layout.cwd)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ParsedStoryboard(display, "", problems=[Problem(display, "", f"cannot read the file: {exc.strerror or exc}")])
    digest = hashlib.sha256(raw)
    digest.update(settings_fingerprint(settings, layout).encode())
    fingerprint = digest.hexdigest()
    result = ParsedStoryboard(display, fingerprint)
    if fingerprint == known_fingerprint:
        result.unchanged = True
        return result
    try:
        doc = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_without_comments)
    except UnicodeDecodeError as exc:
        result.problems.append(Problem(display, "", f"not UTF-8 text (byte {exc.start})"))
        return result
    except json.JSONDecodeError as exc:
        result.problems.append(Problem(display, "", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"))
        return result
    result.problems.extend(_schema_problems(doc, display))
    if result.problems:
        return result
    result.warnings.extend(_unknown_keys(doc, display))
    result.project_name = (doc.get("metadata") or {}).get("project_name")
    result.segment_count = len(doc["segments"])
    result.segments, problems = expand(doc, path, display, settings, layout)
    result.problems.extend(problems)
    if result.problems:
        result.segments = []
    return result
