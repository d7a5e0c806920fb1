"""The first cut: per storyboard, the chosen take of every segment in story order, for an editor.

Which take: the segment's pick; else its only done take; else its lowest done version; a segment
with no done take is a named gap (kept at its requested length in timelines, so the story keeps
its timing). Durations are read from the video files (mutagen), never taken from the request.

Formats: ``otio`` (OpenTimelineIO's own JSON), ``edl`` (CMX 3600) and ``fcpxml`` (Final Cut 7
XML, which Premiere imports) through the adapters of ``opentimelineio-plugins``, ``manifest`` (a
selects folder of copies plus manifest.json / manifest.csv) and ``jianying`` (a JianYing draft
folder, through pyJianYingDraft). Everything is built in a temporary sibling and renamed into
place; the takes themselves are only ever read.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import shutil
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import LedgerError, UsageError
from .states import State
from .store import Take

log = logging.getLogger(__name__)

FORMATS = ("otio", "edl", "fcpxml", "manifest", "jianying")
PICKED, ONLY, LOWEST = "pick", "only done take", "lowest done version"
_ADAPTERS = {"edl": ("cmx_3600", ".edl"), "fcpxml": ("fcp_xml", ".xml")}
_EDITORS_EXTRA = "pip install 'ledger[editors]'"


class ExportError(LedgerError):
    """The export could not be written (nothing half-written is left in its place)."""


class MissingExtra(UsageError):
    """The chosen format needs a package of the ``editors`` extra that is not installed."""


@dataclass(frozen=True)
class Clip:
    """One segment's chosen take, with the duration its file really has."""

    segment_index: int
    job_id: int
    version: int
    path: Path
    seconds: float
    prompt: str
    decided_by: str
    note: str = ""
    size: Optional[Tuple[int, int]] = None  # (width, height) asked for: used when the file cannot be read

    @property
    def name(self) -> str:
        return f"Segment_{self.segment_index} v{self.version}"


@dataclass(frozen=True)
class Gap:
    """A segment without a usable take; ``seconds`` is what was requested for it."""

    segment_index: int
    seconds: float
    reason: str

    @property
    def name(self) -> str:
        return f"Segment_{self.segment_index} (no take)"


Item = Union[Clip, Gap]


@dataclass
class Cut:
    """One storyboard's segments in story order: a clip or a gap each."""

    storyboard_path: str
    name: str  # where its export goes, relative to the export folder, e.g. ep1/storyboard_a
    title: str
    items: List[Item] = field(default_factory=list)

    @property
    def clips(self) -> List[Clip]:
        return [item for item in self.items if isinstance(item, Clip)]

    @property
    def gaps(self) -> List[Gap]:
        return [item for item in self.items if isinstance(item, Gap)]

    def decided(self, how: str) -> int:
        return sum(1 for clip in self.clips if clip.decided_by == how)


def video_seconds(path: Path) -> float:
    """The playing time of an MP4 file, from its own header (mutagen reads the movie header)."""
    from mutagen import MutagenError
    from mutagen.mp4 import MP4

    try:
        length = MP4(str(path)).info.length
    except (MutagenError, OSError) as exc:
        raise ExportError(f"cannot read the duration of {path}: {exc}") from exc
    if not length or length <= 0:
        raise ExportError(f"{path} has no playing time")
    return float(length)


def export_name(storyboard_path: str, input_prefix: str) -> str:
    """A storyboard's export name: its path under the input folder without ``.json`` (the layout
    of the output tree, so ``ep1/storyboard_a`` and ``ep2/storyboard_a`` do not collide)."""
    name = storyboard_path
    if input_prefix and name.startswith(input_prefix.rstrip("/") + "/"):
        name = name[len(input_prefix.rstrip("/")) + 1:]
    name = name.lstrip("/")
    return name[:-5] if name.lower().endswith(".json") else name


def _state_note(take: Take) -> str:
    job = take.job
    if job.state is State.FAILED:
        return f"v{job.version} failed: {job.error_message or job.error_kind or 'no reason recorded'}"
    if job.state is State.DONE:
        return f"v{job.version} video file missing"
    if job.state is State.SUBMITTED and job.progress:
        return f"v{job.version} generating ({job.progress}%)"
    return f"v{job.version} {job.state.value}"


def requested_seconds(take: Take) -> float:
    """The length a take was asked for (0 when the request named none)."""
    return float(take.job.params.get("duration") or 0)


def choose(segment: Sequence[Take], resolve: Callable[[str], Path],
           seconds: Callable[[Path], float] = video_seconds) -> Item:
    """The clip (or gap) for one segment's takes, by the rule in the module docstring.

    A done take whose file is on disk is always usable: when its own length cannot be read (a
    container the reader does not know), the length it was asked for stands in, with a note."""
    first = segment[0].job
    usable = [t for t in segment if t.job.state is State.DONE and t.job.video_path
              and resolve(t.job.video_path).is_file()]
    picked = next((t for t in segment if t.picked), None)
    notes: List[str] = []
    if picked is not None and picked in usable:
        chosen = picked
    else:
        if picked is not None:
            notes.append(f"the pick v{picked.job.version} is {picked.job.state.value} or has no file")
        if not usable:
            reasons = [_state_note(t) for t in segment] + notes
            return Gap(first.segment_index, float(first.params.get("duration") or 0), "; ".join(reasons))
        chosen = usable[0]
    path = resolve(chosen.job.video_path or "")
    try:
        length = seconds(path)
    except ExportError as exc:
        length = requested_seconds(chosen)
        notes.append(f"{exc}; its requested length ({length:g} s) is used" if length else
                     f"{exc}, and no length was requested; it is placed with none")
    how = PICKED if chosen is picked else ONLY if len(usable) == 1 else LOWEST
    return Clip(first.segment_index, chosen.job.id, chosen.job.version, path.resolve(), length,
                str(chosen.job.params.get("prompt", "")), how, "; ".join(notes), _size(chosen))


def _size(take: Take) -> Optional[Tuple[int, int]]:
    """The frame size a take was asked for, when its parameters say (``size``, or a resolution)."""
    params = take.job.params
    text = str(params.get("size") or params.get("resolution") or "")
    named = {"horizontal": (1280, 720), "vertical": (720, 1280)}
    if text in named:
        return named[text]
    width, _, height = text.partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


def plan(takes: Iterable[Take], resolve: Callable[[str], Path], input_prefix: str,
         seconds: Callable[[Path], float] = video_seconds) -> List[Cut]:
    """Group takes (already in story order) into one cut per storyboard."""
    grouped: "OrderedDict[str, OrderedDict[int, List[Take]]]" = OrderedDict()
    titles: Dict[str, str] = {}
    for take in takes:
        path = take.job.storyboard_path
        grouped.setdefault(path, OrderedDict()).setdefault(take.job.segment_index, []).append(take)
        titles.setdefault(path, take.project_name or Path(path).stem)
    cuts = []
    for path, segments in grouped.items():
        cut = Cut(path, export_name(path, input_prefix), titles[path])
        cut.items = [choose(segment, resolve, seconds) for segment in segments.values()]
        cuts.append(cut)
    return cuts


# --- writers -----------------------------------------------------------------------------------


def timeline(cut: Cut, fps: int) -> Any:
    """The cut as an OpenTimelineIO timeline: one video track, a clip per segment, named gaps."""
    import opentimelineio as otio

    def span(seconds: float) -> Any:
        return otio.opentime.TimeRange(otio.opentime.RationalTime(0, fps),
                                       otio.opentime.RationalTime(round(seconds * fps), fps))

    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    for item in cut.items:
        if isinstance(item, Gap):
            track.append(otio.schema.Gap(name=item.name, source_range=span(item.seconds),
                                         metadata={"ledger": {"segment_index": item.segment_index,
                                                              "reason": item.reason}}))
            continue
        reference = otio.schema.ExternalReference(target_url=item.path.as_uri(), available_range=span(item.seconds))
        track.append(otio.schema.Clip(
            name=item.name, media_reference=reference, source_range=span(item.seconds),
            metadata={"ledger": {"storyboard": cut.storyboard_path, "segment_index": item.segment_index,
                                 "version": item.version, "job_id": item.job_id, "prompt": item.prompt,
                                 "duration_seconds": item.seconds, "decided_by": item.decided_by},
                      # EDL reels hold 8 characters: say which segment and version, not the file name.
                      "cmx_3600": {"reel": f"S{item.segment_index:03d}V{item.version}"[:8]}}))
    result = otio.schema.Timeline(name=cut.title)
    result.tracks.append(track)
    return result


def _adapter(fmt: str) -> str:
    import opentimelineio as otio

    name = _ADAPTERS[fmt][0]
    if name not in otio.adapters.available_adapter_names():
        raise MissingExtra(f"--format {fmt} needs the OpenTimelineIO adapters: {_EDITORS_EXTRA}")
    return name


def _write_text(dest: Path, text: str) -> None:
    with _staged(dest, folder=False) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def write_otio(cut: Cut, dest: Path, fps: int) -> None:
    """``dest`` (``.otio``): the timeline in OpenTimelineIO's own JSON."""
    import opentimelineio as otio

    _write_text(dest, otio.adapters.write_to_string(timeline(cut, fps), adapter_name="otio_json"))


def write_adapter(cut: Cut, dest: Path, fps: int, fmt: str) -> None:
    """``dest`` through an OpenTimelineIO adapter (EDL or Final Cut 7 XML)."""
    import opentimelineio as otio

    name = _adapter(fmt)
    options = {"rate": fps} if fmt == "edl" else {}
    _write_text(dest, otio.adapters.write_to_string(timeline(cut, fps), adapter_name=name, **options))


MANIFEST_COLUMNS = ("order", "segment_index", "version", "file", "duration_seconds", "decided_by", "prompt",
                    "source_path", "job_id")


def manifest_entries(cut: Cut) -> List[Dict[str, Any]]:
    """One entry per clip, in order, with the name its copy gets: ``001_seg1_v2.mp4``."""
    return [{"order": order, "segment_index": clip.segment_index, "version": clip.version,
             "file": f"{order:03d}_seg{clip.segment_index}_v{clip.version}{clip.path.suffix or '.mp4'}",
             "duration_seconds": round(clip.seconds, 3), "decided_by": clip.decided_by, "prompt": clip.prompt,
             "source_path": str(clip.path), "job_id": clip.job_id}
            for order, clip in enumerate(cut.clips, start=1)]


def _place(source: Path, dest: Path, link: bool) -> None:
    if link:
        try:
            os.link(source, dest)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            log.info("cannot hard-link %s (%s); copying", source, exc.strerror)
    shutil.copyfile(source, dest)


def write_manifest(cut: Cut, dest: Path, link: bool = False) -> None:
    """``dest`` (a folder): the chosen files as ``001_seg1_v2.mp4``, … plus manifest.json / .csv."""
    entries = manifest_entries(cut)
    with _staged(dest, folder=True) as tmp:
        for clip, entry in zip(cut.clips, entries):
            _place(clip.path, tmp / entry["file"], link)
        document = {"storyboard": cut.storyboard_path, "title": cut.title, "clips": entries,
                    "gaps": [{"segment_index": g.segment_index, "requested_seconds": g.seconds, "reason": g.reason}
                             for g in cut.gaps]}
        (tmp / "manifest.json").write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n",
                                           encoding="utf-8")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(entries)
        # A BOM, so spreadsheet programs read the Chinese prompts as UTF-8.
        (tmp / "manifest.csv").write_text(buffer.getvalue(), encoding="utf-8-sig", newline="")


def write_jianying(cut: Cut, dest: Path, fps: int) -> None:
    """``dest`` (a folder): a JianYing draft with the clips one after another on the main track.

    JianYing's main track is magnetic, so gaps are not kept here (they are listed in the summary)."""
    try:
        import pyJianYingDraft as jy
    except ImportError as exc:
        raise MissingExtra(f"--format jianying needs pyJianYingDraft: {_EDITORS_EXTRA}") from exc
    with _staged(dest, folder=True) as tmp:
        materials = [_material(jy, clip) for clip in cut.clips]
        width, height = (materials[0].width, materials[0].height) if materials else (1920, 1080)
        tmp.rmdir()  # the library creates the draft folder itself
        script = jy.DraftFolder(str(tmp.parent)).create_draft(tmp.name, width, height, fps=fps)
        script.append_track(jy.TrackSpec(jy.TrackType.video))
        start = 0
        for material in materials:
            script.add_segment(jy.VideoSegment(material, jy.Timerange(start, material.duration)))
            start += material.duration
        script.save()


def _material(jy: Any, clip: Clip) -> Any:
    """A JianYing video material for ``clip``: read from the file (pyJianYingDraft asks MediaInfo);
    when MediaInfo cannot read it, described from what the ledger knows (the length used for the
    clip, the size that was asked for) so the take is still placed in the draft."""
    try:
        return jy.VideoMaterial(str(clip.path), material_name=clip.name)
    except FileNotFoundError as exc:
        raise ExportError(f"cannot read {clip.path}: {exc}") from exc
    except (ValueError, TypeError, OSError) as exc:
        log.info("MediaInfo cannot read %s (%s); describing it from the ledger", clip.path, exc)
    material = jy.VideoMaterial.__new__(jy.VideoMaterial)
    width, height = clip.size or (1280, 720)
    material.__dict__.update(material_name=clip.name, material_id=uuid.uuid4().hex, local_material_id="",
                             path=str(clip.path), crop_settings=jy.CropSettings(), material_type="video",
                             duration=int(round(clip.seconds * 1_000_000)), width=width, height=height)
    return material


class _staged:
    """Build ``dest`` under a temporary sibling name; on success move it into place (an older
    one is moved aside first, then removed), on failure remove the temporary one."""

    def __init__(self, dest: Path, *, folder: bool) -> None:
        self.dest = dest
        self.folder = folder
        self.tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.folder:
            self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            _remove(self.tmp)
            return
        if self.folder and self.dest.is_dir() and not self.dest.is_symlink():
            old = self.dest.with_name(f".{self.dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            _remove(old)
        else:
            os.replace(self.tmp, self.dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def destination(cut: Cut, out_dir: Path, fmt: str) -> Path:
    """Where one cut's export goes for ``fmt``."""
    base = out_dir / cut.name
    if fmt == "otio":
        return base.with_name(base.name + ".otio")
    if fmt in _ADAPTERS:
        return base.with_name(base.name + _ADAPTERS[fmt][1])
    return base.with_name(base.name + ("_selects" if fmt == "manifest" else "_jianying"))


@dataclass(frozen=True)
class Written:
    """One cut and where it was written (None: nothing to export, no done take)."""

    cut: Cut
    path: Optional[Path]


def export(cuts: Sequence[Cut], fmt: str, out_dir: Path, *, fps: int = 30, link: bool = False) -> Iterator[Written]:
    """Write every cut in ``fmt`` under ``out_dir``, yielding each as it is done."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt in _ADAPTERS:
        _adapter(fmt)
    for cut in cuts:
        if not cut.clips:
            yield Written(cut, None)
            continue
        dest = destination(cut, out_dir, fmt)
        try:
            if fmt == "otio":
                write_otio(cut, dest, fps)
            elif fmt in _ADAPTERS:
                write_adapter(cut, dest, fps, fmt)
            elif fmt == "manifest":
                write_manifest(cut, dest, link)
            else:
                write_jianying(cut, dest, fps)
        except OSError as exc:
            raise ExportError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        yield Written(cut, dest)


def summary_counts(cuts: Sequence[Cut]) -> Tuple[int, int, int, int]:
    """(picked, only done take, lowest done version, gaps) over every cut."""
    return (sum(c.decided(PICKED) for c in cuts), sum(c.decided(ONLY) for c in cuts),
            sum(c.decided(LOWEST) for c in cuts), sum(len(c.gaps) for c in cuts))
