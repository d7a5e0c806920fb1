"""Storyboard discovery, validation and expansion into job specs.

Pure: paths and settings in, specs and problems out. Nothing here touches the ledger.

Reading survives any file: whatever a file holds — or is (a FIFO, a device, a symlink to
``/dev/zero``) — ``read_storyboard`` answers with problems and warnings, never an exception, and
one reading of a file reports every problem it has, so a user fixes a file in one round.
"""
from __future__ import annotations

import difflib
import errno
import hashlib
import json
import os
import re
import reprlib
import stat
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import accumulate, islice
from pathlib import Path
from typing import (TYPE_CHECKING, AbstractSet, Any, Dict, FrozenSet, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Set,
                    Tuple, Union)

from .providers import RULES, Mapped, Mismatch, Request
from .settings import Settings

if TYPE_CHECKING:  # the validators load when a file is first validated: `work` and `status` never need them
    import jsonschema_rs
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

SCHEMA_PATH = Path(__file__).parent / "schema" / "storyboard.schema.json"
# Larger than any storyboard a person writes (100 segments take ~50 KiB), small enough that
# reading one never strains memory; a file is never read beyond it.
MAX_FILE_BYTES = 16 * 1024 * 1024
# Storyboards are about 6 levels deep; past this a document is hostile or broken, and the JSON
# parser, the validators and ``repr`` all recurse, so it is refused before any of them runs.
MAX_DEPTH = 64
# A file that is wrong everywhere still gets a readable answer.
MAX_LINES_PER_FILE = 100
# Integers that only JSON Schema calls integers (``1.0``) would name folders ``Segment_1.0``.
WHOLE_NUMBER_KEYS = ("segment_index", "duration_seconds", "versions")


def printable(text: str) -> str:
    """``text`` safe to print on one line: control characters and lone surrogates (a file name's
    undecodable bytes come as those) are escaped, ``\\xff`` for a byte, ``\\ud800`` otherwise."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{ord(char) - 0xdc00:02x}"
    return char.encode("unicode_escape").decode("ascii")


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in one file, located by a JSON pointer."""

    path: str
    pointer: Optional[str]  # None: about the file or folder itself, not a place in a document
    message: str

    def __str__(self) -> str:
        if self.pointer is None:
            return f"{printable(self.path)}: {printable(self.message)}"
        return f"{printable(self.path)}: {printable(self.pointer) or '/'}: {printable(self.message)}"


@dataclass(frozen=True)
class Layout:
    """Where storyboards are read from and where their videos go."""

    cwd: Path
    input_dir: Path
    output_dir: Path
    output_mode: str = "centralized"
    # The mode each storyboard already has in the ledger (by ledger path), which wins over
    # ``output_mode`` for that file: its takes stay in one folder whatever the settings say now.
    remembered: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, cwd: Path) -> "Layout":
        return cls(cwd=cwd, input_dir=settings.input_dir, output_dir=settings.output_dir,
                   output_mode=settings.output_mode)

    def for_file(self, path: str) -> "Layout":
        """The layout of one storyboard (by ledger path): its remembered mode, else ``output_mode``."""
        mode = self.remembered.get(path, self.output_mode)
        return self if mode == self.output_mode else replace(self, output_mode=mode)

    def storyboard_folder(self, storyboard: Path) -> Path:
        """The folder holding one storyboard's ``Segment_{i}`` folders — the layout users' existing
        outputs follow: ``output/{sub/dirs}/{stem}/`` or, in place, ``{storyboard_dir}/{stem}_assets/``."""
        stem = storyboard.stem
        if self.output_mode == "in-place":
            return storyboard.parent / f"{stem}{ASSETS_SUFFIX}"
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
    provider: str = "sora_hk"
    price_key: str = "normal"

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

    @property
    def provider(self) -> str:
        return self.segment.provider

    @property
    def price_key(self) -> str:
        return self.segment.price_key


@dataclass
class ParsedStoryboard:
    """The outcome of reading one file: its specs, or the problems that stopped it.

    ``skipped`` files (FIFOs, devices, sockets) are not storyboards: they are neither recorded nor
    invalid, and whatever the ledger knew under their name is left as it was."""

    path: str
    fingerprint: str
    unchanged: bool = False
    skipped: bool = False
    output_mode: Optional[str] = None  # the mode its jobs' folders were laid out in
    project_name: Optional[str] = None
    segment_count: int = 0
    segments: List[SegmentSpec] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    warnings: List[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems and not self.skipped

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


TEMPLATE_NAME = "_template.json"  # the documented example beside the storyboards: never scanned, never mentioned
ASSETS_SUFFIX = "_assets"  # a storyboard's in-place output folder: {stem}_assets/


@dataclass
class Found:
    """What a walk of the input folder found: the storyboards, the other JSON files (not scanned,
    and the user is told so: a storyboard under another name was silently never generated), and the
    folders it could not list (named, and their storyboards left as the ledger knew them)."""

    storyboards: List[Path] = field(default_factory=list)
    not_storyboards: List[Path] = field(default_factory=list)
    unreadable: List[Tuple[Path, str]] = field(default_factory=list)


def walk_input(input_dir: Path, skip: Sequence[Path] = ()) -> Found:
    """Walk ``input_dir``, sorted; follows symlinks without looping and never descends into
    ``skip`` folders (the output tree when it lies inside the input tree) or hidden ones."""
    skipped = {os.path.realpath(p) for p in skip}
    seen_dirs = set()
    found = Found()

    def unreadable(exc: OSError) -> None:
        if exc.errno != errno.ENOENT:  # removed while the walk was under way: nothing to read there
            found.unreadable.append((Path(exc.filename or input_dir), exc.strerror or str(exc)))

    for root, dirs, files in os.walk(input_dir, followlinks=True, onerror=unreadable):
        try:
            st = os.stat(root)
        except OSError as exc:
            unreadable(exc)
            dirs[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs or os.path.realpath(root) in skipped:
            dirs[:] = []
            continue
        seen_dirs.add(key)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        # The sidecars of videos saved in place ({stem}_assets/) are ours, not misnamed storyboards.
        assets = any(part.endswith(ASSETS_SUFFIX) for part in Path(os.path.relpath(root, input_dir)).parts)
        for name in files:
            if is_storyboard_name(name):
                found.storyboards.append(Path(root) / name)
            elif name.lower().endswith(".json") and not name.startswith(".") and name != TEMPLATE_NAME and not assets:
                found.not_storyboards.append(Path(root) / name)
    found.storyboards.sort()
    if found.not_storyboards:  # a file a storyboard*.json link points to is scanned through that link
        linked = {os.path.realpath(p) for p in found.storyboards if os.path.islink(p)}
        found.not_storyboards = sorted(p for p in found.not_storyboards if os.path.realpath(p) not in linked)
    found.unreadable.sort()
    return found


def discover(input_dir: Path, skip: Sequence[Path] = ()) -> List[Path]:
    """Storyboard files under ``input_dir``, sorted (see ``walk_input``)."""
    return walk_input(input_dir, skip).storyboards


@lru_cache(maxsize=1)
def schema() -> Dict[str, Any]:
    """The storyboard schema: the shipped file, with each provider's own block (``"kling": {...}``
    in ``defaults`` and in segments) as that provider's module declares it."""
    from jsonschema import Draft202012Validator

    from .providers import REGISTRY

    document = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    for name, registration in REGISTRY.items():
        if registration.storyboard_options is None:
            continue
        document["$defs"][f"{name}_options"] = {
            "description": f"Options only the {name} provider takes (used when the segment goes to {name}).",
            "type": "object", "additionalProperties": False, **registration.storyboard_options}
        for node in (document["properties"]["defaults"], document["$defs"]["segment"]):
            node["properties"][name] = {"$ref": f"#/$defs/{name}_options"}
    Draft202012Validator.check_schema(document)
    return document


@lru_cache(maxsize=1)
def fast_validator() -> "jsonschema_rs.Draft202012Validator":
    """Says valid or not, about 200x faster than ``jsonschema``: the first scan of 100,000 jobs
    spends most of its time validating, and almost every file is valid."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(schema())


@lru_cache(maxsize=1)
def validator() -> "Draft202012Validator":
    """Explains what is wrong, for the few files the fast validator rejects."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


@lru_cache(maxsize=8)
def settings_fingerprint(settings: Settings, layout: Layout) -> str:
    """Everything outside a file that shapes its jobs; part of each file's fingerprint."""
    shaping = [
        settings.provider, settings.gen_count_per_segment, settings.default_duration, settings.default_resolution,
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


# ---- reading: only regular files, never more than the limit ------------------------------------

class _NotRegular(Exception):
    """The path is a FIFO, device, socket or folder: reading it could block or never end."""


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
# O_NONBLOCK: opening a FIFO that no one writes to would otherwise wait for ever.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_CLOEXEC", 0))


def _kind(mode: int) -> str:
    return next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a regular file")


def _read_capped(path: Path) -> bytes:
    """The bytes of a regular file (following symlinks), at most ``MAX_FILE_BYTES + 1`` of them.
    Raises ``_NotRegular`` for anything else, ``OSError`` when it cannot be read."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise exc from None
        if not stat.S_ISREG(mode):  # a socket cannot be opened at all
            raise _NotRegular(_kind(mode)) from exc
        raise
    try:
        # Checked on the open descriptor, so a file swapped for a FIFO meanwhile is still caught.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _NotRegular(_kind(info.st_mode))
        return _read_fd(fd, info.st_size)
    finally:
        os.close(fd)


def _read_fd(fd: int, size: int) -> bytes:
    """Up to ``MAX_FILE_BYTES + 1`` bytes. The first read asks for the size and one byte more (a
    16 MiB buffer per file would double a re-scan's time); the byte more shows a file that grew
    or whose size is not told (``/proc``), read on in 1 MiB steps."""
    chunks: List[bytes] = []
    total, step = 0, min(size, MAX_FILE_BYTES) + 1
    while total <= MAX_FILE_BYTES:
        chunk = os.read(fd, min(step, MAX_FILE_BYTES + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total, step = total + len(chunk), 1 << 20
    return b"".join(chunks)


# ---- parsing: nesting refused before anything recurses -----------------------------------------

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]
# Lone surrogates and NUL can only enter a decoded document through \u escapes: only a file
# holding such an escape needs its strings looked at one by one.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")


def _too_deep(raw: bytes) -> bool:
    """Whether ``raw`` nests arrays/objects deeper than ``MAX_DEPTH``, found without recursion:
    brackets outside strings, counted. Most files have fewer brackets than the limit in all."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH


class _Parsed(NamedTuple):
    doc: Any
    error: Optional[str]
    has_floats: bool  # any number written with a decimal point or an exponent
    # id() of each object that named a key more than once -> (key, times): JSON keeps the last
    # value silently, and which one the user meant (and would pay for) is anyone's guess.
    duplicates: Dict[int, List[Tuple[str, int]]] = {}


def _parse(raw: bytes) -> _Parsed:
    """The document, or why there is none."""
    too_deep = f"nested deeper than {MAX_DEPTH} levels of arrays and objects"
    if _too_deep(raw):
        return _Parsed(None, too_deep, False)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _Parsed(None, f"not UTF-8 text (byte {exc.start})", False)
    floats: List[float] = []
    duplicates: Dict[int, List[Tuple[str, int]]] = {}

    def parse_float(literal: str) -> float:
        floats.append(float(literal))
        return floats[-1]

    def without_comments(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        """Keys starting with ``_`` are comments, dropped while parsing; a key named twice noted."""
        obj = {k: v for k, v in pairs if not k.startswith("_")}
        if len(obj) < len(pairs):
            named = Counter(k for k, _ in pairs if not k.startswith("_"))
            twice = [(k, n) for k, n in named.items() if n > 1]
            if twice:
                duplicates[id(obj)] = twice
        return obj

    try:
        doc = json.loads(text, object_pairs_hook=without_comments, parse_float=parse_float)
    except json.JSONDecodeError as exc:
        return _Parsed(None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", False)
    except RecursionError:  # _too_deep should have said so; a second guard costs nothing
        return _Parsed(None, too_deep, False)
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        return _Parsed(None, f"invalid JSON: {exc}", False)
    return _Parsed(doc, None, bool(floats), duplicates)


# ---- checks: every problem of a document, whatever its shape -----------------------------------

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist = 2, 4, 4


def _short(value: Any) -> str:
    return _SHORT.repr(value)


def _string_trouble(text: str) -> Optional[str]:
    """Why a decoded string cannot be stored or sent, if it cannot."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"contains \\u{ord(text[exc.start]):04x}, half of a UTF-16 surrogate pair on its own, "
                f"which is not valid text")
    return None


def _walk(doc: Any) -> Iterator[Tuple[Tuple[Any, ...], Any]]:
    """Every value in ``doc`` with its path (keys and indexes); iterative, though depth is bounded."""
    stack: List[Tuple[Tuple[Any, ...], Any]] = [((), doc)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend((path + (key,), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((path + (i,), item) for i, item in enumerate(value))


def _bad_strings(doc: Any, display: str) -> Iterator[Problem]:
    """Every key and string value that cannot be stored."""
    for path, value in _walk(doc):
        if isinstance(value, dict):
            for key in value:
                reason = _string_trouble(key)
                if reason:
                    yield Problem(display, pointer(path + (key,)), f"the key {reason}")
        elif isinstance(value, str):
            reason = _string_trouble(value)
            if reason:
                yield Problem(display, pointer(path), reason)


def _duplicate_keys(doc: Any, display: str, duplicates: Dict[int, List[Tuple[str, int]]]) -> Iterator[Problem]:
    """Each key named more than once in one object, at its pointer."""
    for path, value in _walk(doc):
        if isinstance(value, dict):
            for key, times in duplicates.get(id(value), ()):
                yield Problem(display, pointer(path + (key,)),
                              f"the key {key!r} is written {times} times in this object; JSON keeps only the "
                              "last value, so which one is meant is unclear: keep one")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".heic", ".tif", ".tiff")
_HOST = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+(:\d+)?")


def _image_url_message(value: Any) -> str:
    """What is wrong with an ``image_url`` the schema rejected, in the user's terms."""
    if not isinstance(value, str):
        return "image_url must be an http(s) URL, or null for none"
    lowered = value.strip().lower()
    if value[:1].isspace():
        return "image_url starts with a space; remove it"
    local = "image_url is a local file; the API only accepts http(s) URLs (upload the image first)"
    if re.match(r"[a-z]:[\\/]|[/\\~]|\.\.?[\\/]|file:", lowered):
        return local
    if lowered.startswith(("http://", "https://")):
        return "image_url has no host name after http(s)://"
    if lowered.startswith(("http:", "https:")):
        return "image_url must start with http:// or https:// (two slashes)"
    scheme = re.match(r"([a-z][a-z0-9+.-]*):(?!\d)", lowered)
    if scheme:
        return f"image_url must be an http:// or https:// URL, not {scheme.group(1)}:"
    first = lowered.split("/", 1)[0]
    if _HOST.fullmatch(first) and ("/" in lowered or not lowered.endswith(_IMAGE_SUFFIXES)):
        return f"image_url needs http:// or https:// in front (https://{value.strip()})"
    return local


def _explain(error: ValidationError, named: AbstractSet[Tuple[str, str]] = frozenset()) -> str:
    """A one-line sentence for a schema error, plainer than jsonschema's own where it helps;
    ``named``: (pointer, key) of unknown keys already reported at their own pointer."""
    last = error.path[-1] if error.path else None
    kind, value, expected = error.validator, error.instance, error.validator_value
    if last == "image_url":
        return _image_url_message(value)
    if last == "prompt_text" and kind in ("pattern", "type"):
        return "prompt_text must be a non-empty string"
    if kind == "enum":
        return f"{_short(value)} is not allowed here; use one of {', '.join(map(repr, expected))}"
    if kind == "type":
        names = [expected] if isinstance(expected, str) else list(expected)
        return f"{_short(value)} is not of type {' or '.join(map(repr, names))}"
    if kind == "minimum":
        return f"{_short(value)} is less than the minimum of {expected}"
    if kind == "maximum":
        return f"{_short(value)} is greater than the maximum of {expected}"
    if kind == "minItems" and last == "segments":
        return "should be non-empty: a storyboard needs at least one segment"
    if kind == "additionalProperties" and isinstance(value, dict):  # a provider's block: its keys are paid options
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(k for k in value if k not in known and (pointer(error.path), k) not in named)
        guess = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6) if unknown else []
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        return (f"unknown option {', '.join(map(repr, unknown))} for the {last} provider{hint} "
                f"(it takes {', '.join(map(repr, known))})")
    return " ".join(error.message.split())[:300]


def _schema_problems(doc: Any, display: str, explained: Set[Tuple[str, str]]) -> List[Problem]:
    """Schema errors, except a missing required key that a near-miss key already explains."""
    problems: List[Problem] = []
    for error in islice(validator().iter_errors(doc), MAX_LINES_PER_FILE):
        where = pointer(error.path)
        if error.validator == "required":
            problems.extend(Problem(display, where, f"{key!r} is a required property")
                            for key in error.validator_value
                            if key not in error.instance and (where, key) not in explained)
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict) and all(
                (where, key) in explained for key in error.instance if key not in error.schema.get("properties", {})):
            continue  # every unknown option of this provider block is a misspelling already named at its key
        else:
            problems.append(Problem(display, where, _explain(error, explained)))
    return problems


def _fast_valid(doc: Any) -> bool:
    try:
        return fast_validator().is_valid(doc)
    except ValueError:  # jsonschema-rs refuses strings Rust cannot hold (lone surrogates)
        return False


@lru_cache(maxsize=1)
def _shapes() -> Dict[str, Tuple[FrozenSet[str], Tuple[str, ...]]]:
    """The known and required keys of each kind of object the schema describes, each provider's
    block (``<name>_options``) included. Not among them: ``character_bible``, free-form by design."""
    top = schema()
    segment = top["$defs"]["segment"]
    asset = segment["properties"]["asset"]
    kinds = {"top": top, "metadata": top["properties"]["metadata"], "defaults": top["properties"]["defaults"],
             "segment": segment, "asset": asset, "character": asset["properties"]["characters"]["items"]}
    kinds.update((name, node) for name, node in top["$defs"].items() if name.endswith(OPTIONS))
    return {name: (frozenset(node["properties"]), tuple(node.get("required", ()))) for name, node in kinds.items()}


OPTIONS = "_options"  # the suffix of a provider block's kind (``kling_options``)
# Objects whose keys decide what is paid for: the top (it holds ``defaults``), defaults, segments and
# provider blocks. A near miss of a known key there is an error, not a warning: a job paid at the
# default duration because ``duraton_seconds`` was ignored costs money.
PAID_KINDS = frozenset({"top", "defaults", "segment"})


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment: a swap of neighbours counts once)."""
    before: List[int] = []
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], before[j - 2] + 1)
        before, row = row, current
    return row[-1]


def _misspelling_of(key: str, known: FrozenSet[str]) -> Optional[str]:
    """The known key ``key`` is a misspelling of: the same but for case, or within two edits (one
    for a key of four letters or fewer, where two edits make any word another); None when none is."""
    folded = key.casefold()
    best: Optional[Tuple[int, str]] = None
    for name in known:
        limit = 2 if len(name) > 4 else 1
        if abs(len(name) - len(folded)) > limit:
            continue
        distance = _edit_distance(folded, name)
        if distance <= limit and (best is None or (distance, name) < best):
            best = (distance, name)
    return best[1] if best else None


class _Keys:
    """Unknown keys: warnings, naming the key meant when one is close. A near miss of a required
    key that is missing is one error instead, which also explains the missing key; so is a near miss
    of any key that decides what is paid (``PAID_KINDS`` and provider blocks)."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.shapes = _shapes()
        self.blocks = [kind[:-len(OPTIONS)] for kind in self.shapes if kind.endswith(OPTIONS)]
        self.errors: List[Problem] = []
        self.warnings: List[Problem] = []
        self.explained: Set[Tuple[str, str]] = set()

    def visit(self, kind: str, parts: Tuple[Any, ...], obj: Any) -> None:
        """Look at one object's keys; cheap when they are all known, as they almost always are."""
        if not isinstance(obj, dict):
            return
        known, required = self.shapes[kind]
        if not obj.keys() <= known:
            self._unknown_keys(kind, parts, obj, known, required)
        if kind in ("defaults", "segment"):
            for name in self.blocks:
                if isinstance(obj.get(name), dict):
                    self.visit(name + OPTIONS, parts + (name,), obj[name])

    def _unknown_keys(self, kind: str, parts: Tuple[Any, ...], obj: Mapping[str, Any], known: FrozenSet[str],
                      required: Tuple[str, ...]) -> None:
        missing = [k for k in required if k not in obj]
        paid = kind in PAID_KINDS or kind.endswith(OPTIONS)
        for key in [k for k in obj if k not in known]:
            # Past the lines that will be shown, a guess only serves to explain a missing key.
            wanted = missing or len(self.warnings) + len(self.errors) < MAX_LINES_PER_FILE
            guess = self._near_miss(key, [k for k in known if k not in obj]) if wanted else None
            where = pointer(parts + (key,))
            if guess in missing:
                self.errors.append(Problem(self.display, where,
                                           f"unknown key {key!r}: did you mean {guess!r}? ({guess!r} is required)"))
                self.explained.add((pointer(parts), guess))
                missing.remove(guess)
            elif kind == "defaults" and key in self.shapes["segment"][0]:
                self.warnings.append(Problem(self.display, where,
                                             f"{key!r} can only be set per segment, not in defaults; ignored"))
            elif paid and (wanted or not self.errors) and (meant := _misspelling_of(key, known)) is not None:
                self.errors.append(Problem(self.display, where, f"unknown key — did you mean {meant}?"))
                self.explained.add((pointer(parts), key))  # a provider block's schema error need not repeat it
            elif not kind.endswith(OPTIONS):  # a provider block refuses any other key: its schema error says so
                self.warnings.append(Problem(self.display, where, self._unknown(key, guess)))

    def visit_asset(self, parts: Tuple[Any, ...], asset: Any) -> None:
        self.visit("asset", parts, asset)
        characters = asset.get("characters") if isinstance(asset, dict) else None
        for j, character in enumerate(characters if isinstance(characters, list) else []):
            self.visit("character", parts + ("characters", j), character)

    @staticmethod
    def _unknown(key: str, guess: Optional[str]) -> str:
        if guess:
            return f"unknown key {key!r} ignored; did you mean {guess!r}? (prefix a key with '_' to mark a comment)"
        return f"unknown key {key!r} ignored (prefix it with '_' to mark a comment)"

    @staticmethod
    def _near_miss(key: str, candidates: List[str]) -> Optional[str]:
        matches = difflib.get_close_matches(key.lower(), candidates, n=1, cutoff=0.6)
        return matches[0] if matches else None


def _whole_numbers(obj: Mapping[str, Any], parts: Tuple[Any, ...], keys: Sequence[str], display: str) -> Iterator[Problem]:
    for key in keys:
        value = obj.get(key)
        if type(value) is float and value.is_integer():
            yield Problem(display, pointer(parts + (key,)),
                          f"{key} must be a whole number without a decimal point ({int(value)}, not {value!r})")


def _segments(doc: Mapping[str, Any], storyboard: Path, display: str, settings: Settings, layout: Layout,
              keys: _Keys, *, build: bool, has_floats: bool) -> Tuple[List[SegmentSpec], List[Problem]]:
    """One pass over the segments, robust to any shape: the rules JSON Schema cannot express (whole
    numbers, unique indexes, the values each provider and model take) and unknown keys, checked
    valid or not so they come in the same round as schema errors; and, when ``build`` (the document
    passed the schema), each segment's spec with its parameters resolved segment > defaults > settings."""
    defaults = doc.get("defaults") if isinstance(doc.get("defaults"), dict) else {}
    segments = doc.get("segments") if isinstance(doc.get("segments"), list) else []
    problems: List[Problem] = []
    if has_floats:
        problems.extend(_whole_numbers(defaults, ("defaults",), ("duration_seconds", "versions"), display))
    fallback = {"provider": settings.provider, "duration_seconds": settings.default_duration,
                "resolution": settings.default_resolution, "quality": settings.default_quality,
                "remove_watermark": settings.default_remove_watermark, "versions": settings.gen_count_per_segment}
    cascade = {**fallback, **{k: v for k, v in defaults.items() if k in fallback}}
    folder = ledger_path(layout.storyboard_folder(storyboard), layout.cwd) if build else ""
    specs: List[SegmentSpec] = []
    first_seen: Dict[int, int] = {}
    for position, segment in enumerate(segments):
        if not isinstance(segment, dict):
            continue
        keys.visit("segment", ("segments", position), segment)
        if "asset" in segment:
            keys.visit_asset(("segments", position, "asset"), segment["asset"])
        if has_floats:
            problems.extend(_whole_numbers(segment, ("segments", position), WHOLE_NUMBER_KEYS, display))
        index = segment.get("segment_index")
        if type(index) is int and index in first_seen:
            problems.append(Problem(display, f"/segments/{position}/segment_index",
                                    f"segment_index {index} is used twice (first at /segments/{first_seen[index]})"))
        elif type(index) is int:
            first_seen[index] = position
        mapped = _mapped(segment, defaults, cascade, settings)
        if isinstance(mapped, list):
            problems.extend(Problem(display, _where(m.key, position, segment, defaults), _with_source(m, segment, defaults))
                            for m in mapped)
        elif build and mapped is not None and not problems:  # a file with problems records nothing
            specs.append(_spec(segment, cascade, index, folder, mapped))
    return specs, problems


# The setting a value comes from when neither the segment nor the file's defaults give it.
_SETTING_OF = {"provider": "PROVIDER", "duration_seconds": "DEFAULT_DURATION", "resolution": "DEFAULT_RESOLUTION",
               "model": "DEFAULT_IS_PRO", "quality": "DEFAULT_QUALITY"}


def _mapped(segment: Mapping[str, Any], defaults: Mapping[str, Any], cascade: Mapping[str, Any],
            settings: Settings) -> Union[Mapped, List[Mismatch], None]:
    """The segment's request as its provider's parameters, the values that provider cannot take,
    or None when a value has the wrong type (the schema says so)."""
    provider = segment.get("provider", cascade["provider"])
    if isinstance(provider, str) and provider not in RULES:
        return [Mismatch("provider", f"unknown provider {provider!r}; use one of {', '.join(map(repr, RULES))}")]
    # The most specific level that names a model or is_pro decides both.
    level = next((d for d in (segment, defaults) if "model" in d or "is_pro" in d), None)
    model, is_pro = (level.get("model"), level.get("is_pro")) if level is not None else (None, settings.default_is_pro)
    duration = segment.get("duration_seconds", cascade["duration_seconds"])
    resolution = segment.get("resolution", cascade["resolution"])
    quality = segment.get("quality", cascade["quality"])
    watermark = segment.get("remove_watermark", cascade["remove_watermark"])
    prompt = segment.get("prompt_text")
    typed = (isinstance(provider, str) and isinstance(prompt, str) and isinstance(model, (str, type(None)))
             and isinstance(is_pro, (bool, type(None))) and (duration is None or type(duration) is int)
             and isinstance(resolution, str) and isinstance(quality, str) and isinstance(watermark, bool))
    if not typed:
        return None
    image_url = segment.get("image_url")
    # The provider's own block: the file's defaults, then the segment's keys over them.
    options = {**_block(defaults, provider), **_block(segment, provider)}
    request = Request(prompt=prompt.strip(), model=model, is_pro=is_pro, duration=duration, resolution=resolution,
                      quality=quality, remove_watermark=watermark,
                      image_url=image_url if isinstance(image_url, str) and image_url else None, options=options)
    return RULES[provider].map(request)


def _block(level: Mapping[str, Any], provider: str) -> Dict[str, Any]:
    block = level.get(provider)
    return dict(block) if isinstance(block, dict) else {}


def _where(key: str, position: int, segment: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The pointer of the value ``key`` came from: the segment's, the defaults', else the segment."""
    if key in segment:
        return f"/segments/{position}/{key}"
    if key in defaults:
        return f"/defaults/{key}"
    return f"/segments/{position}"


def _with_source(mismatch: Mismatch, segment: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """A mismatch's message, naming the setting its value came from when the file did not give it."""
    key = mismatch.key
    if key in segment or key in defaults:
        return mismatch.message
    setting = _SETTING_OF.get(key)
    return f"{mismatch.message} (the value comes from the setting {setting})" if setting else mismatch.message


def _spec(segment: Mapping[str, Any], cascade: Mapping[str, Any], index: int, folder: str, mapped: Mapped) -> SegmentSpec:
    """One schema-valid segment's request parameters, canonical and hashed."""
    text = canonical_json(mapped.params)
    versions = segment.get("versions", cascade["versions"])
    provider = segment.get("provider", cascade["provider"])
    return SegmentSpec(index, versions, text, params_sha(text), f"{folder}/Segment_{index}", mapped.is_pro,
                       provider, mapped.price_key)


def _pointer_order(problem: Problem) -> Tuple[Tuple[int, int, str], ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in problem.pointer.split("/"))


def _tidy(lines: List[Problem]) -> List[Problem]:
    """Each line once, in pointer order, at most ``MAX_LINES_PER_FILE`` of them."""
    if not lines:
        return lines
    unique = sorted(dict.fromkeys(lines), key=_pointer_order)
    if len(unique) <= MAX_LINES_PER_FILE:
        return unique
    kept = unique[:MAX_LINES_PER_FILE]
    return kept + [Problem(kept[0].path, "", f"... and {len(unique) - len(kept)} more like these")]


def _examine(parsed: _Parsed, storyboard: Path, display: str, settings: Settings, layout: Layout,
             strings_suspect: bool) -> Tuple[List[SegmentSpec], List[Problem], List[Problem]]:
    """Specs, problems and warnings of a parsed document, every problem in one round: strings that
    cannot be stored, schema errors, rules, unknown keys. The fast validator decides; ``jsonschema``
    only explains. ``strings_suspect=False`` says the raw file holds no escape that could decode
    to a lone surrogate or NUL, so its strings need no look."""
    doc = parsed.doc
    problems: List[Problem] = list(_bad_strings(doc, display)) if strings_suspect else []
    if parsed.duplicates:
        problems.extend(_duplicate_keys(doc, display, parsed.duplicates))
    schema_valid = not problems and _fast_valid(doc)
    keys = _Keys(display)
    specs: List[SegmentSpec] = []
    if isinstance(doc, dict):
        keys.visit("top", (), doc)
        keys.visit("metadata", ("metadata",), doc.get("metadata"))
        keys.visit("defaults", ("defaults",), doc.get("defaults"))
        specs, rule_problems = _segments(doc, storyboard, display, settings, layout, keys,
                                         build=schema_valid, has_floats=parsed.has_floats)
        problems.extend(rule_problems)
    if not schema_valid:
        problems.extend(_schema_problems(doc, display, keys.explained))
    problems.extend(keys.errors)
    problems = _tidy(problems)
    return ([] if problems else specs), problems, _tidy(keys.warnings)


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_storyboard(path: Path, settings: Settings, layout: Layout, known_fingerprint: Optional[str] = None) -> ParsedStoryboard:
    """Read, validate and expand one storyboard; never raises for anything a file holds or is.
    When its fingerprint equals ``known_fingerprint`` the file is not parsed at all (``unchanged``)."""
    display = ledger_path(path, layout.cwd)
    layout = layout.for_file(display)
    if not _is_utf8(display):
        shown = printable(display)
        return ParsedStoryboard(shown, "", problems=[Problem(
            shown, "", "the file name is not valid UTF-8 (shown with its bytes escaped); rename the file")])
    try:
        raw = _read_capped(path)
    except _NotRegular as exc:
        what = f"a symlink to {exc}" if os.path.islink(path) else str(exc)
        return ParsedStoryboard(display, "", skipped=True,
                                warnings=[Problem(display, "", f"skipped: {what}, not a regular file")])
    except OSError as exc:
        return ParsedStoryboard(display, "", problems=[Problem(display, "", f"cannot read the file: {exc.strerror or exc}")])
    if len(raw) > MAX_FILE_BYTES:
        return ParsedStoryboard(display, "", problems=[Problem(
            display, "", f"larger than {MAX_FILE_BYTES // 2**20} MiB, the limit for a storyboard file; split it into several files")])
    digest = hashlib.sha256(raw)
    digest.update(settings_fingerprint(settings, layout).encode())
    result = ParsedStoryboard(display, digest.hexdigest(), output_mode=layout.output_mode)
    if result.fingerprint == known_fingerprint:
        result.unchanged = True
        return result
    parsed = _parse(raw)
    if parsed.error:
        result.problems.append(Problem(display, "", parsed.error))
        return result
    result.segments, result.problems, result.warnings = _examine(
        parsed, path, display, settings, layout, _SUSPECT_ESCAPE.search(raw) is not None)
    if not result.problems:
        result.project_name = (parsed.doc.get("metadata") or {}).get("project_name")
        result.segment_count = len(parsed.doc["segments"])
    return result
