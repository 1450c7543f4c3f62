"""Hand labels of real images and how detections are scored against them.

A label file (``eval/real/*.json``, format in ``docs/real_eval.md``) names one
image, its physical size, the classes, rectangular *regions* in which every
feature was marked (each in a ``dev`` or ``test`` split), the marked features
(class, centre, optionally the two ends of an elongated feature, an
``ambiguous`` flag) and, optionally, a dense mask drawn as ellipses.

Scoring (:func:`score_regions`) follows the matching rule of the protocol:

* a detection's distance to a feature is the distance to its centre, or, for
  an elongated feature, to the segment between its ends;
* per class, detections and features within ``match_radius_nm`` are paired one
  to one (optimal assignment); a detection paired with a feature counts as a
  true positive unless the feature is ambiguous (then it counts for nothing);
* a detection paired with nothing is a false positive of its class; it is a
  *false detection* (a detection of nothing) when no feature of any class,
  ambiguous ones included, lies within the radius;
* a detection whose centre lies outside the region, or unpaired within
  ``edge_nm`` of the region's edge (a feature centred just outside may have
  caused it), is not counted; every unambiguous feature of the region left
  unpaired is a miss.

Everything here is pure: reading a file is the only I/O (:func:`read_label_set`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import LabelError
from ..frame import Detection

__all__ = [
    "FORMAT",
    "IGNORE",
    "Ellipse",
    "LabelSet",
    "LabelledFeature",
    "Region",
    "RegionScore",
    "dense_mask",
    "distance_to_feature",
    "file_sha256",
    "read_label_set",
    "score_region",
    "score_regions",
]

#: Value of the ``format`` key every label file carries.
FORMAT = "stm-live real labels v1"
#: Dense-mask value of pixels that count for nothing (ambiguous features).
IGNORE = 255


@dataclass(frozen=True)
class LabelledFeature:
    """A feature marked by hand: class, centre (nm from the image's top-left corner), optional ends."""

    class_name: str
    x_nm: float
    y_nm: float
    ends_nm: tuple[tuple[float, float], tuple[float, float]] | None = None
    ambiguous: bool = False


@dataclass(frozen=True)
class Region:
    """A rectangle (nm) in which every feature was marked; ``split`` is ``dev`` or ``test``."""

    id: str
    split: str
    x0_nm: float
    y0_nm: float
    x1_nm: float
    y1_nm: float

    @property
    def area_nm2(self) -> float:
        return (self.x1_nm - self.x0_nm) * (self.y1_nm - self.y0_nm)

    def contains(self, x_nm: float, y_nm: float, *, margin_nm: float = 0.0) -> bool:
        """Whether the point lies inside the rectangle shrunk by ``margin_nm`` (grown when negative)."""
        return (self.x0_nm + margin_nm <= x_nm < self.x1_nm - margin_nm
                and self.y0_nm + margin_nm <= y_nm < self.y1_nm - margin_nm)


@dataclass(frozen=True)
class Ellipse:
    """One feature of a dense mask: centre and half-axes along x and y, nm."""

    x_nm: float
    y_nm: float
    rx_nm: float
    ry_nm: float
    ambiguous: bool = False


@dataclass(frozen=True)
class LabelSet:
    """The content of one label file (see the module description)."""

    path: str
    image: str
    sha256: str | None
    width_nm: float
    height_nm: float
    rows: int
    cols: int
    classes: tuple[str, ...]
    match_radius_nm: float
    edge_nm: float
    bias_polarity: str | None
    regions: tuple[Region, ...]
    features: tuple[LabelledFeature, ...]
    mask_class: str | None = None
    ellipses: tuple[Ellipse, ...] = ()

    def regions_of(self, split: str | None) -> tuple[Region, ...]:
        """The regions of ``split`` (all regions for None or ``"all"``)."""
        if split in (None, "all"):
            return self.regions
        return tuple(r for r in self.regions if r.split == split)

    def features_in(self, region: Region) -> tuple[LabelledFeature, ...]:
        """The features whose centre lies in ``region``."""
        return tuple(f for f in self.features if region.contains(f.x_nm, f.y_nm))

    @property
    def nm_per_px(self) -> tuple[float, float]:
        return self.width_nm / self.cols, self.height_nm / self.rows


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise LabelError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise LabelError(f"{where}: {key!r} is {value!r}, expected {getattr(kind, '__name__', kind)}")
    return value


def _number(data: dict[str, Any], key: str, where: str) -> float:
    value = float(_get(data, key, (int, float), where))
    if not math.isfinite(value):
        raise LabelError(f"{where}: {key!r} is {value!r}, expected a finite number")
    return value


def read_label_set(path: str | Path) -> LabelSet:
    """Read and check a label file.

    Raises
    ------
    LabelError
        Unreadable JSON, a missing or mistyped key, an unknown class or
        split, or a feature outside every region; the message names the file
        and the offending entry.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelError(f"{path}: label file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelError(f"{path}: cannot read labels: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LabelError(f"{path}: not a label file (expected \"format\": {FORMAT!r})")
    where = str(path)
    image = _get(data, "image", dict, where)
    classes = tuple(_get(data, "classes", dict, where))
    if not classes:
        raise LabelError(f"{path}: no classes")
    regions = []
    for i, r in enumerate(_get(data, "regions", list, where)):
        w = f"{path}: regions[{i}]"
        split = _get(r, "split", str, w)
        if split not in ("dev", "test"):
            raise LabelError(f"{w}: split {split!r}, expected 'dev' or 'test'")
        x0, y0, x1, y1 = (_number(r, k, w) for k in ("x0_nm", "y0_nm", "x1_nm", "y1_nm"))
        region = Region(str(_get(r, "id", str, w)), split, x0, y0, x1, y1)
        if not (region.x1_nm > region.x0_nm and region.y1_nm > region.y0_nm):
            raise LabelError(f"{w}: empty rectangle {region}")
        regions.append(region)
    if len({r.id for r in regions}) != len(regions):
        raise LabelError(f"{path}: region ids repeat")
    features = []
    for i, f in enumerate(_get(data, "features", list, where)):
        w = f"{path}: features[{i}]"
        name = _get(f, "class", str, w)
        if name not in classes:
            raise LabelError(f"{w}: class {name!r} is not one of {list(classes)}")
        ends = None
        if "ends_nm" in f:
            e = f["ends_nm"]
            try:
                (xa, ya), (xb, yb) = e
                ends = ((float(xa), float(ya)), (float(xb), float(yb)))
            except (TypeError, ValueError):
                raise LabelError(f"{w}: ends_nm is {e!r}, expected [[xa, ya], [xb, yb]]") from None
        feature = LabelledFeature(name, _number(f, "x_nm", w), _number(f, "y_nm", w), ends,
                                  bool(f.get("ambiguous", False)))
        if not any(r.contains(feature.x_nm, feature.y_nm) for r in regions):
            raise LabelError(f"{w}: ({feature.x_nm}, {feature.y_nm}) nm lies in no region")
        features.append(feature)
    ellipses = []
    mask = data.get("mask")
    mask_class = None
    if mask is not None:
        w = f"{path}: mask"
        mask_class = _get(mask, "class", str, w)
        if mask_class not in classes:
            raise LabelError(f"{w}: class {mask_class!r} is not one of {list(classes)}")
        for i, e in enumerate(_get(mask, "ellipses", list, w)):
            we = f"{w}.ellipses[{i}]"
            x, y, rx, ry = (_number(e, k, we) for k in ("x_nm", "y_nm", "rx_nm", "ry_nm"))
            ell = Ellipse(x, y, rx, ry, bool(e.get("ambiguous", False)))
            if ell.rx_nm <= 0 or ell.ry_nm <= 0:
                raise LabelError(f"{we}: half-axes must be positive, got {ell.rx_nm}, {ell.ry_nm}")
            ellipses.append(ell)
    polarity = data.get("bias_polarity")
    if polarity not in (None, "positive", "negative"):
        raise LabelError(f"{path}: bias_polarity {polarity!r}, expected 'positive', 'negative' or null")
    return LabelSet(
        path=str(path),
        image=_get(image, "file", str, f"{path}: image"),
        sha256=image.get("sha256"),
        width_nm=_number(image, "width_nm", f"{path}: image"),
        height_nm=_number(image, "height_nm", f"{path}: image"),
        rows=int(_number(image, "rows", f"{path}: image")),
        cols=int(_number(image, "cols", f"{path}: image")),
        classes=classes,
        match_radius_nm=_number(data, "match_radius_nm", where),
        edge_nm=float(data.get("edge_nm", 0.5)),
        bias_polarity=polarity,
        regions=tuple(regions),
        features=tuple(features),
        mask_class=mask_class,
        ellipses=tuple(ellipses),
    )


def file_sha256(path: str | Path) -> str:
    """First 16 hex digits of a file's SHA-256 (the label files record their image's)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def dense_mask(labels: LabelSet, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The dense mask of the label file's ellipses at the image grid.

    Returns ``(rows, cols)`` uint8: 0 background, 1 the mask's class,
    :data:`IGNORE` inside ambiguous ellipses (an unambiguous ellipse wins where
    both overlap).

    >>> ls = LabelSet("x", "x.npy", None, 4.0, 4.0, 4, 4, ("spot",), 0.3, 0.5, None, (), (), "spot",
    ...               (Ellipse(1.0, 1.0, 0.8, 0.8),))
    >>> dense_mask(ls).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    rows, cols = shape or (labels.rows, labels.cols)
    px, py = labels.width_nm / cols, labels.height_nm / rows
    yy = (np.arange(rows)[:, None] + 0.5) * py
    xx = (np.arange(cols)[None, :] + 0.5) * px
    out = np.zeros((rows, cols), np.uint8)
    for ambiguous in (True, False):
        for e in labels.ellipses:
            if e.ambiguous == ambiguous:
                inside = ((xx - e.x_nm) / e.rx_nm) ** 2 + ((yy - e.y_nm) / e.ry_nm) ** 2 <= 1.0
                out[inside] = IGNORE if ambiguous else 1
    return out


def distance_to_feature(x_nm: float, y_nm: float, feature: LabelledFeature) -> float:
    """Distance (nm) from a point to a feature: to its centre, or to the segment between its ends.

    >>> round(distance_to_feature(1.0, 1.0, LabelledFeature("v", 1.0, 0.0, ((0.0, 0.0), (2.0, 0.0)))), 6)
    1.0
    """
    if feature.ends_nm is None:
        return math.hypot(x_nm - feature.x_nm, y_nm - feature.y_nm)
    (xa, ya), (xb, yb) = feature.ends_nm
    dx, dy = xb - xa, yb - ya
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else min(1.0, max(0.0, ((x_nm - xa) * dx + (y_nm - ya) * dy) / length2))
    return math.hypot(x_nm - (xa + t * dx), y_nm - (ya + t * dy))


@dataclass
class RegionScore:
    """Counts over one or more regions: per class TP / FP / FN, false detections, area."""

    tp: dict[str, int]
    fp: dict[str, int]
    fn: dict[str, int]
    false_detections: int = 0
    area_nm2: float = 0.0
    ignored: int = 0

    @classmethod
    def empty(cls, classes: Iterable[str]) -> RegionScore:
        names = list(classes)
        return cls(dict.fromkeys(names, 0), dict.fromkeys(names, 0), dict.fromkeys(names, 0))

    def add(self, other: RegionScore) -> None:
        for d, o in ((self.tp, other.tp), (self.fp, other.fp), (self.fn, other.fn)):
            for k, v in o.items():
                d[k] = d.get(k, 0) + v
        self.false_detections += other.false_detections
        self.area_nm2 += other.area_nm2
        self.ignored += other.ignored

    def per_class(self) -> dict[str, dict[str, float | int]]:
        """``{class: {tp, fp, fn, precision, recall, f1}}``."""
        out: dict[str, dict[str, float | int]] = {}
        for name in self.tp:
            tp, fp, fn = self.tp[name], self.fp.get(name, 0), self.fn.get(name, 0)
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn) if tp + fn else 0.0
            out[name] = {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4),
                         "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}
        return out

    @property
    def false_per_100nm2(self) -> float:
        return 100.0 * self.false_detections / self.area_nm2 if self.area_nm2 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.per_class(), "false_detections": self.false_detections,
                "area_nm2": round(self.area_nm2, 3), "false_per_100nm2": round(self.false_per_100nm2, 4),
                "ignored_detections": self.ignored}


def score_region(
    detections: Sequence[Detection],
    features: Sequence[LabelledFeature],
    region: Region,
    classes: Sequence[str],
    *,
    match_radius_nm: float,
    edge_nm: float = 0.5,
) -> RegionScore:
    """Score detections against the features of one region (the rule in the module description).

    ``classes`` are the label classes scored; a detection of a class not among
    them is a false positive of that class (and a false detection when it
    lies near no feature at all).

    >>> f = [LabelledFeature("v", 5.0, 5.0, ((4.0, 5.0), (6.0, 5.0))), LabelledFeature("db", 8.0, 8.0)]
    >>> dets = [Detection("v", 4.2, 5.1, 1.0, 0.9), Detection("v", 5.9, 5.0, 1.0, 0.9),
    ...         Detection("db", 2.0, 8.0, 0.5, 0.9)]
    >>> s = score_region(dets, f, Region("A", "test", 0, 0, 10, 10), ["v", "db"], match_radius_nm=0.5)
    >>> s.tp, s.fp, s.fn, s.false_detections
    ({'v': 1, 'db': 0}, {'v': 1, 'db': 1}, {'v': 0, 'db': 1}, 1)
    """
    score = RegionScore.empty(classes)
    score.area_nm2 = region.area_nm2
    inside = [d for d in detections if region.contains(d.x_nm, d.y_nm)]
    score.ignored = len(detections) - len(inside)
    names = list(dict.fromkeys([*classes, *(d.class_name for d in inside)]))
    for name in names:
        dets = [d for d in inside if d.class_name == name]
        truth = [f for f in features if f.class_name == name]
        paired_det = np.full(len(dets), -1)
        if dets and truth:
            dist = np.array([[distance_to_feature(d.x_nm, d.y_nm, f) for f in truth] for d in dets])
            rows, cols = linear_sum_assignment(np.where(dist <= match_radius_nm, dist, 1e6))
            ok = dist[rows, cols] <= match_radius_nm
            paired_det[rows[ok]] = cols[ok]
        paired_truth = set(int(c) for c in paired_det if c >= 0)
        for i, d in enumerate(dets):
            j = int(paired_det[i])
            if j >= 0:
                if not truth[j].ambiguous:
                    score.tp[name] = score.tp.get(name, 0) + 1
                continue
            if not region.contains(d.x_nm, d.y_nm, margin_nm=edge_nm):
                score.ignored += 1
                continue
            score.fp[name] = score.fp.get(name, 0) + 1
            if all(distance_to_feature(d.x_nm, d.y_nm, f) > match_radius_nm for f in features):
                score.false_detections += 1
        score.fn[name] = score.fn.get(name, 0) + sum(
            1 for j, f in enumerate(truth) if not f.ambiguous and j not in paired_truth
        )
    for name in list(score.tp):
        if name not in classes and score.tp[name] == 0 and score.fn[name] == 0 and score.fp[name] == 0:
            del score.tp[name], score.fp[name], score.fn[name]
    return score


def score_regions(
    detections: Sequence[Detection],
    labels: LabelSet,
    regions: Sequence[Region],
    *,
    classes: Sequence[str] | None = None,
) -> RegionScore:
    """Sum of :func:`score_region` over ``regions`` of one labelled image."""
    total = RegionScore.empty(classes or labels.classes)
    for region in regions:
        total.add(score_region(detections, labels.features_in(region), region, classes or labels.classes,
                               match_radius_nm=labels.match_radius_nm, edge_nm=labels.edge_nm))
    return total
