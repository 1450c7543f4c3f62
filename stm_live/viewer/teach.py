"""Teach-in: clicks on the page become a support set, a new head, a version that can be replayed.

A person clicks features the running model missed or got wrong and names
their class, or marks a region as background. Every change makes a
**version**: the whole support set so far (frames by path and content hash,
points and regions with classes), the adapt settings, the base model and the
model ids before and after. :func:`adapt_from_support` turns a support set
into a model with ``stm_live.model.adapt.adapt_model`` (what ``stm-live adapt``
runs: prototypes from labelled pixels, no torch); :func:`replay` does the same from a version file alone, so
``stm-live adapt --replay VERSION_FILE --out M.onnx`` gives the same model id.

Every version adapts the *base* model (the one the daemon ran before the
first teach-in) with the cumulative support set, so a version file needs no
earlier version to be replayed, and undo is a swap back to the previous
version's model.

The version file (``docs/viewer.md`` documents every field)::

    {"format": "stm-live teach-in version", "v": 1, "version": 2, "parent": 1,
     "time": "2025-05-02T10:11:12Z", "frame": "scan-0003", "undone": false,
     "change": {"points": [...], "regions": [...]},
     "base_model": {"id": "ce5cd42ad8e19506", "name": "si001-ash3", "path": "..."},
     "model_before": {"id": ..., "name": ...}, "model_after": {"id": ..., "name": ..., "path": "..."},
     "classes": ["ad_dimer"], "settings": {...},
     "support": [{"frame": {"path": "frames/scan-0003-....npy", "sha256": "...", "channel": "Z",
                            "direction": "forward", "width_nm": 20.0, "height_nm": 20.0},
                  "points": [{"x_nm": 3.1, "y_nm": 4.2, "class": "ad_dimer"}],
                  "regions": [{"x0_nm": 0, "y0_nm": 0, "x1_nm": 5, "y1_nm": 2, "class": "background"}]}]}

Paths in a version file are relative to the file's folder (or absolute).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..errors import AdaptError
from ..frame import Frame
from ..model.format import ModelInfo, Prototypes, attach_head, save_model, strip_head
from ..model.prototypes import Point
from ..model.runtime import SegmentationModel, bundled_model_path

__all__ = [
    "BACKGROUND",
    "VERSION_FORMAT",
    "Region",
    "SupportFrame",
    "TeachIn",
    "TeachSettings",
    "Version",
    "adapt_from_support",
    "file_sha256",
    "read_version",
    "replay",
]

log = logging.getLogger(__name__)

#: The ``format`` field of a version file.
VERSION_FORMAT: Final = "stm-live teach-in version"
#: The class name that marks background.
BACKGROUND: Final = "background"
_VERSION_V: Final = 1


@dataclass(frozen=True)
class Region:
    """A rectangle in nm from the image's top-left corner, all of whose pixels are ``class_name``."""

    x0_nm: float
    y0_nm: float
    x1_nm: float
    y1_nm: float
    class_name: str = BACKGROUND

    def to_json(self) -> dict[str, Any]:
        return {"x0_nm": round(self.x0_nm, 4), "y0_nm": round(self.y0_nm, 4), "x1_nm": round(self.x1_nm, 4),
                "y1_nm": round(self.y1_nm, 4), "class": self.class_name}


@dataclass(frozen=True)
class SupportFrame:
    """One labelled frame of the support set: where its image is, and what was clicked on it.

    ``path`` is the image file (``.sxm``, ``.npy`` ...), ``sha256`` its bytes'
    hash; ``width_nm``/``height_nm`` are needed for arrays. ``key`` names the
    frame on the page (a scan id, a stored result).
    """

    key: str
    path: Path
    sha256: str
    width_nm: float
    height_nm: float
    channel: str = "Z"
    direction: str = "forward"
    points: tuple[Point, ...] = ()
    regions: tuple[Region, ...] = ()

    def frame_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        path = self.path
        if relative_to is not None:
            try:
                path = Path(os.path.relpath(self.path, relative_to))
            except ValueError:  # another drive (Windows)
                path = self.path
        return {"path": path.as_posix(), "sha256": self.sha256, "channel": self.channel,
                "direction": self.direction, "width_nm": self.width_nm, "height_nm": self.height_nm,
                "key": self.key}


@dataclass(frozen=True)
class TeachSettings:
    """How the support set becomes a model (the options of ``stm_live.model.adapt.AdaptSettings``).

    ``radius_nm`` / ``background_margin_nm`` None: measured from the clicked
    features (as ``stm-live adapt`` does). ``keep_base_classes``: the base
    head's trained prototypes stay beside the new ones and its classes stay in
    the model, so naming one missed feature adds to what the model knows
    instead of replacing it. ``contrast_fraction``: the contrast gate
    (``AdaptSettings.contrast_fraction``); a version file without it was
    written before the gate existed and replays without one (0).
    """

    radius_nm: float | None = None
    background_margin_nm: float | None = None
    background_prototypes: int = 4
    keep_base_classes: bool = True
    contrast_fraction: float = 0.5
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"radius_nm": self.radius_nm, "background_margin_nm": self.background_margin_nm,
                "background_prototypes": self.background_prototypes, "keep_base_classes": self.keep_base_classes,
                "contrast_fraction": self.contrast_fraction, "seed": self.seed}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "settings") -> TeachSettings:
        known = {"radius_nm", "background_margin_nm", "background_prototypes", "keep_base_classes", "seed",
                 "contrast_fraction"}
        unknown = set(data) - known
        if unknown:
            raise AdaptError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}")

        def length(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        try:
            return cls(
                radius_nm=length("radius_nm"),
                background_margin_nm=length("background_margin_nm"),
                background_prototypes=int(data.get("background_prototypes", 4)),
                keep_base_classes=bool(data.get("keep_base_classes", True)),
                contrast_fraction=float(data.get("contrast_fraction", 0.0)),
                seed=int(data.get("seed", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise AdaptError(f"{source}: {exc}") from None


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _support_classes(support: Sequence[SupportFrame]) -> list[str]:
    names = [p.class_name for s in support for p in s.points]
    return list(dict.fromkeys(n for n in names if n != BACKGROUND))


def adapt_from_support(
    base: SegmentationModel,
    support: Sequence[tuple[Frame, SupportFrame]],
    settings: TeachSettings,
    *,
    name: str = "teach-in",
) -> tuple[Any, ModelInfo]:
    """A model adapted from ``base`` with the labelled frames of ``support`` (the one adapt entry point here).

    Parameters
    ----------
    base : SegmentationModel
        The model (or bare encoder) to start from: its encoder makes the
        embeddings; with a head, its pitch and trained prototypes stay.
    support : sequence of (Frame, SupportFrame)
        Each labelled frame's image, its clicks and background regions.
    settings : TeachSettings
        Disc radius and background margin (None: measured from the clicked
        features), background prototypes, seed, and whether the base model's
        trained prototypes and classes stay.
    name : str
        Name of the new model (not part of its id).

    Returns
    -------
    (onnx.ModelProto, ModelInfo)
        The graph with the new head and its metadata, ready for
        :func:`stm_live.model.format.save_model` (which fills in the id).

    Raises
    ------
    AdaptError
        No feature class, a class without a labelled pixel, no background, a
        region of another class than background.

    Notes
    -----
    The adaptation is ``stm_live.model.adapt.adapt_model``, what ``stm-live
    adapt`` runs (measured feature size, thresholds calibrated on the clicks
    and the marked background, the base head's trained prototypes kept). With
    ``keep_base_classes`` the base's classes that the clicks do not name are
    added back with their trained prototypes and thresholds, so naming one
    missed feature does not remove the other classes; but not a class the
    base detected where a click names another one (within :data:`RENAME_NM`):
    the click says that class was wrong there. (Adding the base
    model's own detections on the frame as examples as well was tried: on
    simulated Si(001) and Ge(001) frames it changed nothing or found one
    ad-dimer fewer, so it is not done.)
    """
    from ..model.adapt import AdaptSettings, LabelledFrame, adapt_model

    examples = []
    for frame, s in support:
        for r in s.regions:
            if r.class_name != BACKGROUND:
                raise AdaptError(f"region {r.to_json()}: only background regions are supported; click features")
        boxes = tuple((min(r.x0_nm, r.x1_nm), min(r.y0_nm, r.y1_nm), max(r.x0_nm, r.x1_nm), max(r.y0_nm, r.y1_nm))
                      for r in s.regions)
        examples.append(LabelledFrame(frame, tuple(s.points), background_boxes=boxes, source=str(s.path)))
    classes = _support_classes([s for _, s in support])
    if not classes:
        raise AdaptError("no feature class among the examples: name the class of at least one feature")
    adapt = AdaptSettings(radius_nm=settings.radius_nm, background_margin_nm=settings.background_margin_nm,
                          n_background=settings.background_prototypes, keep_base_head=settings.keep_base_classes,
                          contrast_fraction=settings.contrast_fraction, seed=settings.seed)
    model, info, _report = adapt_model(base, examples, classes, adapt, name=name)
    if settings.keep_base_classes:
        model, info = _with_base_classes(model, info, base, _renamed(base, support))
    info = replace(info, provenance={**dict(info.provenance), "method": "teach-in (stm_live.model.adapt)"})
    return model, info


#: A click this close to a detection of the base model (nm) names that feature.
RENAME_NM: Final = 0.8


def _renamed(base: SegmentationModel, support: Sequence[tuple[Frame, SupportFrame]]) -> set[str]:
    """Base classes the clicks correct: the base detected them where a click names another class."""
    if not base.has_head:
        return set()
    out: set[str] = set()
    for frame, s in support:
        clicks = [p for p in s.points if p.class_name != BACKGROUND]
        if not clicks:
            continue
        for d in base.segment(frame).detections:
            if any(c.class_name != d.class_name and (c.x_nm - d.x_nm) ** 2 + (c.y_nm - d.y_nm) ** 2 <= RENAME_NM**2
                   for c in clicks):
                out.add(d.class_name)
    return out


def _with_base_classes(model: Any, info: ModelInfo, base: SegmentationModel,
                       renamed: set[str]) -> tuple[Any, ModelInfo]:
    """``model`` plus the base head's classes it lacks (but those the clicks renamed): prototypes, thresholds."""
    protos, base_protos = info.prototypes, base.info.prototypes
    if protos is None or base_protos is None or not base.has_head or protos.centring is not None:
        return model, info
    kept = [c for c in base.classes if c not in info.classes and c not in renamed]
    if not kept:
        return model, info
    vectors, labels = [*protos.vectors], list(protos.labels)
    base_offsets = np.zeros(len(base_protos.labels), np.float32) if base_protos.offsets is None else base_protos.offsets
    added: list[float] = []  # the kept prototypes keep their calibrated class offsets
    for k, label in enumerate(base_protos.labels):
        if label and base.classes[label - 1] in kept:
            vectors.append(base_protos.vectors[k])
            labels.append(len(info.classes) + 1 + kept.index(base.classes[label - 1]))
            added.append(float(base_offsets[k]))
    offsets = None
    if protos.offsets is not None or any(added):
        own = np.zeros(len(protos.vectors), np.float32) if protos.offsets is None else protos.offsets
        offsets = np.concatenate([own, np.asarray(added, np.float32)])
    merged = Prototypes(np.stack(vectors), tuple(labels), protos.temperature, offsets=offsets)
    detection = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in info.detection.items()}
    for key in ("min_score", "min_area_nm2", "merge_within_nm", "split_within_nm", "min_contrast"):
        theirs = base.info.detection.get(key)
        for c in kept:
            value = theirs.get(c) if isinstance(theirs, Mapping) else theirs
            mine = detection.get(key)
            if value is None:
                continue
            if isinstance(mine, dict):
                mine[c] = value
            elif mine is None:
                detection[key] = {c: value}
    new_info = replace(info, classes=(*info.classes, *kept), prototypes=merged, detection=detection)
    return attach_head(strip_head(model), merged), new_info


# --------------------------------------------------------------------------
# Version files
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One teach-in change, as listed on the page and written to ``versions/vNNNN.json``."""

    number: int
    parent: int
    time: str
    frame: str
    change: Mapping[str, Any]
    base_model: Mapping[str, Any]
    model_before: Mapping[str, Any]
    model_after: Mapping[str, Any]
    classes: tuple[str, ...]
    settings: TeachSettings
    support: tuple[SupportFrame, ...]
    path: Path
    undone: bool = False

    def to_json(self) -> dict[str, Any]:
        folder = self.path.parent
        return {
            "format": VERSION_FORMAT, "v": _VERSION_V, "version": self.number, "parent": self.parent,
            "time": self.time, "frame": self.frame, "undone": self.undone, "change": dict(self.change),
            "base_model": dict(self.base_model), "model_before": dict(self.model_before),
            "model_after": dict(self.model_after), "classes": list(self.classes), "settings": self.settings.to_json(),
            "support": [
                {"frame": s.frame_json(folder),
                 "points": [{"x_nm": round(p.x_nm, 4), "y_nm": round(p.y_nm, 4), "class": p.class_name}
                            for p in s.points],
                 "regions": [r.to_json() for r in s.regions]}
                for s in self.support
            ],
        }

    def summary(self) -> dict[str, Any]:
        """What the page lists: number, time, frame, what changed, ids before and after, undone."""
        return {"version": self.number, "parent": self.parent, "time": self.time, "frame": self.frame,
                "points": len(self.change.get("points", ())), "regions": len(self.change.get("regions", ())),
                "model_before": dict(self.model_before), "model_after": dict(self.model_after),
                "classes": list(self.classes), "undone": self.undone, "file": self.path.name}


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    if key not in data:
        raise AdaptError(f"{source}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise AdaptError(f"{source}: field {key!r} = {str(value)[:80]!r}: expected {getattr(kind, '__name__', kind)}")
    return value


def read_version(path: str | os.PathLike[str]) -> Version:
    """Read and check a version file.

    Raises
    ------
    AdaptError
        Not found, not JSON, not a version file, a field missing or of the wrong type.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdaptError(f"{p}: version file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdaptError(f"{p}: not a readable JSON version file: {exc}") from None
    src = str(p)
    if not isinstance(data, dict) or data.get("format") != VERSION_FORMAT:
        raise AdaptError(f"{p}: not a teach-in version file (expected \"format\": \"{VERSION_FORMAT}\")")
    if data.get("v") != _VERSION_V:
        raise AdaptError(f"{p}: field 'v' = {data.get('v')!r}: this stm-live reads version files v{_VERSION_V}")
    support = []
    for i, item in enumerate(_need(data, "support", list, src)):
        where = f"{src}: support[{i}]"
        if not isinstance(item, dict):
            raise AdaptError(f"{where}: expected an object")
        fr = _need(item, "frame", dict, where)
        frame_path = Path(_need(fr, "path", str, f"{where}.frame"))
        if not frame_path.is_absolute():
            frame_path = Path(os.path.normpath(p.parent / frame_path))
        points = []
        for j, q in enumerate(item.get("points", [])):
            w = f"{where}.points[{j}]"
            points.append(Point(float(_need(q, "x_nm", (int, float), w)), float(_need(q, "y_nm", (int, float), w)),
                                str(_need(q, "class", str, w))))
        regions = []
        for j, q in enumerate(item.get("regions", [])):
            w = f"{where}.regions[{j}]"
            x0, y0, x1, y1 = (float(_need(q, k, (int, float), w)) for k in ("x0_nm", "y0_nm", "x1_nm", "y1_nm"))
            regions.append(Region(x0, y0, x1, y1, str(_need(q, "class", str, w))))
        support.append(SupportFrame(
            key=str(fr.get("key", frame_path.stem)), path=frame_path, sha256=str(_need(fr, "sha256", str, where)),
            width_nm=float(_need(fr, "width_nm", (int, float), where)),
            height_nm=float(_need(fr, "height_nm", (int, float), where)),
            channel=str(fr.get("channel", "Z")), direction=str(fr.get("direction", "forward")),
            points=tuple(points), regions=tuple(regions),
        ))
    return Version(
        number=int(_need(data, "version", int, src)), parent=int(data.get("parent", 0)),
        time=str(data.get("time", "")), frame=str(data.get("frame", "")), change=data.get("change", {}),
        base_model=_need(data, "base_model", dict, src), model_before=data.get("model_before", {}),
        model_after=_need(data, "model_after", dict, src), classes=tuple(data.get("classes", ())),
        settings=TeachSettings.from_json(data.get("settings", {}), f"{src}: settings"), support=tuple(support),
        path=p, undone=bool(data.get("undone", False)),
    )


def load_support_frame(s: SupportFrame) -> Frame:
    """The image of a support frame, after checking that its bytes are the ones the version names.

    Raises
    ------
    AdaptError
        The file is missing or its content changed.
    """
    from ..io import read_frame

    if not s.path.is_file():
        raise AdaptError(f"support frame {s.path}: not found")
    sha = file_sha256(s.path)
    if sha != s.sha256:
        raise AdaptError(f"support frame {s.path}: its content changed (sha256 {sha[:16]}..., "
                         f"the version names {s.sha256[:16]}...)")
    return read_frame(s.path, channel=s.channel, direction=s.direction, width_nm=s.width_nm, height_nm=s.height_nm)


def _base_model_path(version: Version) -> Path:
    base = version.base_model
    raw = base.get("path")
    if raw:
        p = Path(str(raw))
        if not p.is_absolute():
            p = Path(os.path.normpath(version.path.parent / p))
        if p.is_file():
            return p
    name = base.get("name")
    if name:
        try:
            return bundled_model_path(str(name))
        except Exception:
            pass
    raise AdaptError(f"{version.path}: base model {base.get('name')!r} [{base.get('id')}] not found at {raw!r} "
                     "nor among the bundled models")


def replay(version_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[ModelInfo, Version]:
    """Rebuild the model of a version file offline and write it to ``out``.

    Returns ``(info of the written model, the version)``; the caller compares
    ``info.id`` with ``version.model_after["id"]``.

    Raises
    ------
    AdaptError
        A bad version file, a base model or support frame missing or changed.
    """
    version = read_version(version_path)
    base_path = _base_model_path(version)
    base = SegmentationModel(base_path, provider="cpu")
    if version.base_model.get("id") and base.id != version.base_model["id"]:
        raise AdaptError(f"{version.path}: base model {base_path} has id {base.id}, the version was made from "
                         f"{version.base_model['id']}")
    support = [(load_support_frame(s), s) for s in version.support]
    model, info = adapt_from_support(base, support, version.settings, name=str(version.model_after.get("name")
                                                                                   or Path(out).stem))
    saved = save_model(model, info, out)
    return saved, version


# --------------------------------------------------------------------------
# The teach-in session
# --------------------------------------------------------------------------


@dataclass
class _Available:
    """A frame the page can label: its image (file or array) and size."""

    key: str
    width_nm: float
    height_nm: float
    path: Path | None = None
    image: np.ndarray | None = None
    channel: str = "Z"
    direction: str = "forward"
    sha256: str | None = None
    support_path: Path | None = None


def _utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class TeachIn:
    """The teach-in of one session: frames to label, the support set, the versions, the swaps.

    Parameters
    ----------
    folder : Path
        Where versions (``versions/vNNNN.json``), their models
        (``models/vNNNN-<id>.onnx``) and the images of streamed frames
        (``frames/``) go.
    base : SegmentationModel
        The model before any teach-in (every version adapts it).
    use_model : callable
        ``use_model(model, **context)``: puts a model to work (the daemon's
        :meth:`~stm_live.daemon.Daemon.use_model`, or the label page's own).
    load_model : callable
        ``load_model(path) -> SegmentationModel`` for a version's model file.
    settings : TeachSettings
        The adapt settings every version records.
    """

    folder: Path
    base: SegmentationModel
    use_model: Callable[..., None]
    load_model: Callable[[Path], SegmentationModel]
    settings: TeachSettings = field(default_factory=TeachSettings)
    versions: list[Version] = field(default_factory=list)
    current: int = 0
    _frames: dict[str, _Available] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _frames_lock: threading.Lock = field(default_factory=threading.Lock)
    _models: dict[int, SegmentationModel] = field(default_factory=dict)
    max_frames: int = 64
    #: The listing as of the last change (replaced whole, so any thread reads it without a lock).
    latest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.latest = self._listing()

    # -- frames the page can label ------------------------------------------

    def offer_frame(self, key: str, *, width_nm: float, height_nm: float, image: np.ndarray | None = None,
                    path: Path | None = None, channel: str = "Z", direction: str = "forward") -> None:
        """Make a frame available for labelling: a finished scan's image, or a file."""
        with self._frames_lock:
            self._frames.pop(key, None)
            self._frames[key] = _Available(key, width_nm, height_nm, path, image, channel, direction)
            in_use = {s.key for s in self._support()}
            for old in [k for k in self._frames if k not in in_use][:max(0, len(self._frames) - self.max_frames)]:
                del self._frames[old]

    def has_frame(self, key: str) -> bool:
        """Whether frame ``key`` can be labelled (a finished frame of the session, an opened file)."""
        with self._frames_lock:
            return key in self._frames

    def _support(self) -> tuple[SupportFrame, ...]:
        if not self.current:
            return ()
        return self.versions[self.current - 1].support

    def _support_frame(self, avail: _Available) -> SupportFrame:
        """The frame as a file with a content hash (a streamed frame's image is written once)."""
        if avail.path is not None:
            if avail.sha256 is None:
                avail.sha256 = file_sha256(avail.path)
            return SupportFrame(avail.key, avail.path, avail.sha256, avail.width_nm, avail.height_nm,
                                avail.channel, avail.direction)
        if avail.support_path is None:
            assert avail.image is not None
            data = np.ascontiguousarray(avail.image, dtype="<f4")
            digest = hashlib.sha256(data.tobytes()).hexdigest()[:16]
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in avail.key)[:80]
            target = self.folder / "frames" / f"{safe}-{digest}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            with open(tmp, "wb") as fh:
                np.save(fh, data, allow_pickle=False)
            os.replace(tmp, target)
            avail.support_path = target
            avail.sha256 = file_sha256(target)
        assert avail.sha256 is not None
        return SupportFrame(avail.key, avail.support_path, avail.sha256, avail.width_nm, avail.height_nm,
                            "Z", "forward")

    # -- versions -----------------------------------------------------------

    def current_model(self) -> Mapping[str, Any]:
        if self.current:
            return self.versions[self.current - 1].model_after
        return {"id": self.base.id, "name": self.base.name}

    def _listing(self) -> dict[str, Any]:
        """Every version (newest last), which one is in use (0: the base model), the support set."""
        return {"current": self.current, "base_model": {"id": self.base.id, "name": self.base.name},
                "model": dict(self.current_model()), "versions": [v.summary() for v in self.versions],
                "support": self._support_json()}

    def _support_json(self) -> list[dict[str, Any]]:
        return [{"key": s.key, "points": [{"x_nm": p.x_nm, "y_nm": p.y_nm, "class": p.class_name} for p in s.points],
                 "regions": [r.to_json() for r in s.regions]} for s in self._support()]

    def teach(self, key: str, points: Sequence[Point], regions: Sequence[Region] = ()) -> Version:
        """Add examples on frame ``key``, adapt the base model, swap the new model in; return the version.

        Raises
        ------
        AdaptError
            Unknown frame, no example, or labels that cannot make prototypes
            (nothing changes then).
        """
        if not points and not regions:
            raise AdaptError("nothing to teach: click a feature (with its class) or mark a background region")
        # As the version file writes them (0.1 pm), so that a replay sees exactly these numbers.
        points = [Point(round(p.x_nm, 4), round(p.y_nm, 4), p.class_name) for p in points]
        regions = [Region(round(r.x0_nm, 4), round(r.y0_nm, 4), round(r.x1_nm, 4), round(r.y1_nm, 4), r.class_name)
                   for r in regions]
        with self._lock:
            with self._frames_lock:
                avail = self._frames.get(key)
            if avail is None:
                raise AdaptError(f"frame {key!r} is not available for teach-in (finished frames of this session "
                                 "and opened files are)")
            target = self._support_frame(avail)
            support = list(self._support())
            for i, s in enumerate(support):
                if s.key == key or (s.path == target.path and s.sha256 == target.sha256):
                    support[i] = replace(s, points=s.points + tuple(points), regions=s.regions + tuple(regions))
                    break
            else:
                support.append(replace(target, points=tuple(points), regions=tuple(regions)))
            number = len(self.versions) + 1
            frames = [(self._image(s), s) for s in support]
            before = dict(self.current_model())
            name = f"{self.base.name}-teach-v{number}"
            model, info = adapt_from_support(self.base, frames, self.settings, name=name)
            model_path = self.folder / "models" / f"v{number:04d}.onnx"
            saved = save_model(model, info, model_path)
            version = Version(
                number=number, parent=self.current, time=_utc(), frame=key,
                change={"points": [{"x_nm": round(p.x_nm, 4), "y_nm": round(p.y_nm, 4), "class": p.class_name}
                                   for p in points],
                        "regions": [r.to_json() for r in regions]},
                base_model={"id": self.base.id, "name": self.base.name, "path": str(self.base.path)},
                model_before=before,
                model_after={"id": saved.id, "name": saved.name,
                             "path": os.path.relpath(model_path, self.folder / "versions")},
                classes=saved.classes, settings=self.settings, support=tuple(support),
                path=self.folder / "versions" / f"v{number:04d}.json",
            )
            loaded = self.load_model(model_path)
            _write_json(version.path, version.to_json())
            self.versions.append(version)
            self.current = number
            # Sessions of the model in use and the one undo returns to; older ones load from their files.
            self._models = {k: m for k, m in self._models.items() if k == version.parent}
            self._models[number] = loaded
            self.latest = self._listing()
        self.use_model(loaded, teach_in={"version": number, "file": str(version.path), "action": "teach"})
        log.info("teach-in version %d: %d point(s), %d region(s) on %s; model %s -> %s", number, len(points),
                 len(regions), key, before.get("id"), saved.id)
        return version

    def undo(self) -> Mapping[str, Any]:
        """Go back to the version before the current one (the base model before the first); return its model.

        Raises
        ------
        AdaptError
            Nothing to undo.
        """
        with self._lock:
            if not self.current:
                raise AdaptError("nothing to undo: the model in use is the base model")
            version = self.versions[self.current - 1]
            undone = replace(version, undone=True)
            self.versions[self.current - 1] = undone
            _write_json(undone.path, undone.to_json())
            self.current = version.parent
            if not self.current:
                model = self.base
            elif self.current in self._models:
                model = self._models[self.current]
            else:
                model = self.load_model(self.folder / "models" / f"v{self.current:04d}.onnx")
                self._models[self.current] = model
            now = dict(self.current_model())
            self.latest = self._listing()
        self.use_model(model, teach_in={"version": self.current, "action": "undo", "undone": version.number})
        log.info("teach-in: version %d undone; model %s", version.number, now.get("id"))
        return now

    def _image(self, s: SupportFrame) -> Frame:
        return load_support_frame(s)
