"""Measuring a model on hand-labelled real images (``eval/real/*.json``, ``docs/real_eval.md``).

* :func:`score_model`: a model with a head segments each labelled frame; its
  detections are scored in the regions of one split (per-class precision /
  recall / F1, false detections per 100 nm^2; rule in
  :mod:`stm_live.model.labels`).
* :func:`kshot`: k-shot adaptation as a user would do it. Each draw takes k
  labelled features per class (and, unless told otherwise, k feature-free
  background squares) at random from the *dev* regions, adapts the start
  model from them (:func:`stm_live.model.adapt.adapt_model`) and scores the
  adapted model on the *test* regions; mean and spread over draws.
* :func:`dense_dice`: Dice of a model's class map against the dense mask in
  the regions of one split; :func:`dense_adapt` adapts from the dense mask of
  the dev regions only.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LabelError
from ..frame import Detection, Frame
from .adapt import AdaptSettings, Box, LabelledFrame, adapt_model
from .format import save_model
from .labels import IGNORE, LabelSet, RegionScore, dense_mask, file_sha256, score_regions
from .prototypes import Point
from .runtime import SegmentationModel

__all__ = ["LabelledScan", "dense_adapt", "dense_dice", "false_detections", "kshot", "load_scan", "score_detections",
           "score_model", "support_draw"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledScan:
    """A label file with its image."""

    labels: LabelSet
    frame: Frame


def load_scan(labels: LabelSet, data_root: str | Path) -> LabelledScan:
    """The label file's image from ``data_root`` (``../shared/data``), checked against the recorded hash.

    Raises
    ------
    LabelError
        The image is missing, differs from the labelled one, or has another size.
    """
    from ..io import read_frame

    path = Path(data_root) / labels.image
    if not path.is_file():
        raise LabelError(f"{labels.path}: image {path} not found (give --data-root, the folder holding "
                         f"{labels.image})")
    if labels.sha256 and file_sha256(path) != labels.sha256:
        raise LabelError(f"{labels.path}: {path} is not the labelled image (sha256 differs)")
    frame = read_frame(path, width_nm=labels.width_nm, height_nm=labels.height_nm)
    if (frame.rows, frame.cols) != (labels.rows, labels.cols):
        raise LabelError(f"{labels.path}: image is {frame.rows} x {frame.cols} px, labels say "
                         f"{labels.rows} x {labels.cols}")
    return LabelledScan(labels, frame)


def scored_classes(scans: Sequence[LabelledScan], split: str) -> list[str]:
    """Label classes with at least one unambiguous feature in ``split``."""
    names: dict[str, None] = {}
    for s in scans:
        for c in s.labels.classes:
            if any(f.class_name == c and not f.ambiguous for r in s.labels.regions_of(split)
                   for f in s.labels.features_in(r)):
                names[c] = None
    return list(names)


def score_detections(
    detections: Mapping[str, Sequence[Detection]], scans: Sequence[LabelledScan], split: str,
    classes: Sequence[str] | None = None,
) -> RegionScore:
    """Pool :func:`~stm_live.model.labels.score_regions` over scans (``detections`` keyed by label path)."""
    classes = list(classes or scored_classes(scans, split))
    total = RegionScore.empty(classes)
    for s in scans:
        total.add(score_regions(detections[s.labels.path], s.labels, s.labels.regions_of(split), classes=classes))
    return total


def score_model(
    model: SegmentationModel, scans: Sequence[LabelledScan], split: str = "test",
    *, min_score: float | None = None,
) -> RegionScore:
    """Segment each scan with ``model`` and score the detections in the regions of ``split``."""
    dets = {s.labels.path: list(model.segment(s.frame, min_score=min_score).detections) for s in scans}
    return score_detections(dets, scans, split)


def _free_squares(labels: LabelSet, split: str, side_nm: float, rng: np.random.Generator, n: int) -> list[Box]:
    """``n`` squares inside regions of ``split`` with no feature (ambiguous ones included) within 0.5 nm."""
    regions = [r for r in labels.regions_of(split) if r.x1_nm - r.x0_nm > side_nm and r.y1_nm - r.y0_nm > side_nm]
    out: list[Box] = []
    tries = 0
    while regions and len(out) < n and tries < 2000:
        tries += 1
        r = regions[int(rng.integers(len(regions)))]
        x0 = float(rng.uniform(r.x0_nm, r.x1_nm - side_nm))
        y0 = float(rng.uniform(r.y0_nm, r.y1_nm - side_nm))
        clear = all(not (x0 - 0.5 <= f.x_nm <= x0 + side_nm + 0.5 and y0 - 0.5 <= f.y_nm <= y0 + side_nm + 0.5)
                    for f in labels.features)
        if clear:
            out.append((x0, y0, x0 + side_nm, y0 + side_nm))
    return out


def _squares_on(labels: LabelSet, centres: Sequence[tuple[float, float]], side_nm: float,
                rng: np.random.Generator, n: int) -> list[Box]:
    """``n`` squares centred on randomly chosen ``centres`` (nm), none with a feature within 0.5 nm."""
    out: list[Box] = []
    for j in rng.permutation(len(centres)):
        if len(out) >= n:
            break
        x, y = centres[int(j)]
        x0, y0 = x - side_nm / 2, y - side_nm / 2
        if all(not (x0 - 0.5 <= f.x_nm <= x0 + side_nm + 0.5 and y0 - 0.5 <= f.y_nm <= y0 + side_nm + 0.5)
               for f in labels.features):
            out.append((x0, y0, x0 + side_nm, y0 + side_nm))
    return out


def false_detections(model: SegmentationModel, scans: Sequence[LabelledScan], split: str = "dev",
                     ) -> dict[int, list[tuple[float, float]]]:
    """Per scan, where ``model`` detects something in ``split``'s regions that no label is near.

    "Near": within the label file's match radius of a labelled feature of any class,
    ambiguous ones included. What a person sees on the overlay as plainly wrong.
    """
    out: dict[int, list[tuple[float, float]]] = {}
    for i, s in enumerate(scans):
        radius = s.labels.match_radius_nm
        regions = s.labels.regions_of(split)
        for d in model.segment(s.frame).detections:
            inside = any(r.x0_nm <= d.x_nm < r.x1_nm and r.y0_nm <= d.y_nm < r.y1_nm for r in regions)
            near = any((f.x_nm - d.x_nm) ** 2 + (f.y_nm - d.y_nm) ** 2 <= radius**2 for f in s.labels.features)
            if inside and not near:
                out.setdefault(i, []).append((d.x_nm, d.y_nm))
    return out


def support_draw(
    scans: Sequence[LabelledScan], classes: Sequence[str], k: int, rng: np.random.Generator, *,
    split: str = "dev", background_squares: int | None = None, square_nm: float | None = None,
    background_on: Mapping[int, Sequence[tuple[float, float]]] | None = None,
) -> list[LabelledFrame]:
    """One k-shot support set: k unambiguous features per class from ``split``, plus background squares.

    Features are drawn from all scans' ``split`` regions pooled; each scan
    that gets a feature becomes a labelled frame with those points (and
    ``background_squares`` feature-free squares, default k, of side
    ``square_nm``, default 3x the label file's match radius, from its own
    ``split`` regions). With ``background_on`` (per scan index, positions in
    nm: the start model's false detections, :func:`false_detections`) the
    squares are centred on some of those instead, as a person drags a box
    over detections that are plainly wrong.
    """
    pool: dict[str, list[tuple[int, Any]]] = {c: [] for c in classes}
    for i, s in enumerate(scans):
        for r in s.labels.regions_of(split):
            for f in s.labels.features_in(r):
                if f.class_name in pool and not f.ambiguous:
                    pool[f.class_name].append((i, f))
    chosen: dict[int, list[Point]] = {}
    for c in classes:
        if len(pool[c]) < k:
            raise LabelError(f"class {c!r} has {len(pool[c])} labelled features in the {split} regions, "
                             f"fewer than {k} shots")
        for j in rng.choice(len(pool[c]), size=k, replace=False):
            i, f = pool[c][int(j)]
            chosen.setdefault(i, []).append(Point(f.x_nm, f.y_nm, c))
    n_bg = k if background_squares is None else background_squares
    out = []
    for i, points in sorted(chosen.items()):
        labels = scans[i].labels
        side = square_nm or 3.0 * labels.match_radius_nm
        if background_on is not None:
            boxes = tuple(_squares_on(labels, background_on.get(i, ()), side, rng, n_bg)) if n_bg else ()
        else:
            boxes = tuple(_free_squares(labels, split, side, rng, n_bg)) if n_bg else ()
        out.append(LabelledFrame(scans[i].frame, tuple(points), background_boxes=boxes, source=labels.path))
    return out


def _with_model(proto: Any, info: Any, tmp: Path, name: str) -> SegmentationModel:
    path = tmp / f"{name}.onnx"
    save_model(proto, info, path)
    return SegmentationModel(path, provider="cpu")


def kshot(
    base: SegmentationModel,
    scans: Sequence[LabelledScan],
    shots: Sequence[int] = (1, 3, 5),
    *,
    draws: int = 5,
    seed: int = 0,
    settings: AdaptSettings | None = None,
    background_squares: int | None = None,
    classes: Sequence[str] | None = None,
    background_on_false: bool = False,
) -> dict[str, Any]:
    """k-shot adaptation from the dev regions, scored on the test regions (see the module description).

    ``background_on_false``: the background squares sit on the start model's false detections
    in the dev regions (:func:`false_detections`) instead of on random empty terrace.

    Returns ``{"k": {"draws": [...per-draw RegionScore dicts], "mean": {class: {precision, recall, f1}},
    "sd": {...}, "false_per_100nm2": [mean, sd]}}``.
    """
    settings = settings or AdaptSettings()
    classes = list(classes or [c for c in scored_classes(scans, "test") if c in scored_classes(scans, "dev")])
    out: dict[str, Any] = {"classes": classes, "draws": draws}
    false_at = false_detections(base, scans, "dev") if background_on_false and base.has_head else None
    if false_at is not None:
        out["start_model_false_detections_dev"] = sum(len(v) for v in false_at.values())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for k in shots:
            rng = np.random.default_rng(seed + 1000 * k)
            rows = []
            for d in range(draws):
                support = support_draw(scans, classes, k, rng, background_squares=background_squares,
                                       background_on=false_at)
                proto, info, rep = adapt_model(base, support, classes, replace(settings, seed=seed + d),
                                               name=f"{k}-shot-{d}")
                model = _with_model(proto, info, tmp, f"k{k}d{d}")
                score = score_model(model, scans, "test")
                row = score.to_dict()
                row["adapt"] = rep
                rows.append(row)
                log.info("%d-shot draw %d: %s", k, d, {c: v["f1"] for c, v in row["classes"].items()})
            summary: dict[str, Any] = {"mean": {}, "sd": {}}
            for c in classes:
                for key in ("precision", "recall", "f1"):
                    vals = [r["classes"][c][key] for r in rows]
                    summary["mean"].setdefault(c, {})[key] = round(float(np.mean(vals)), 4)
                    summary["sd"].setdefault(c, {})[key] = round(float(np.std(vals)), 4)
            fd = [r["false_per_100nm2"] for r in rows]
            summary["false_per_100nm2"] = [round(float(np.mean(fd)), 4), round(float(np.std(fd)), 4)]
            summary["draws"] = rows
            out[f"{k}-shot"] = summary
    return out


def dense_dice(model: SegmentationModel, scan: LabelledScan, split: str = "test") -> float:
    """Dice of the model's class map (the mask's class) against the dense mask in ``split``'s regions."""
    labels = scan.labels
    if labels.mask_class is None or labels.mask_class not in model.classes:
        raise LabelError(f"{labels.path}: no dense mask of a class the model has ({list(model.classes)})")
    seg = model.segment(scan.frame)
    predicted = seg.class_map == (model.classes.index(labels.mask_class) + 1)
    return dice(predicted, dense_mask(labels), labels, split)


def dice(predicted: np.ndarray, truth: np.ndarray, labels: LabelSet, split: str) -> float:
    """Dice of boolean ``predicted`` against a dense mask (1 feature, :data:`IGNORE` ignored) in a split."""
    rows, cols = truth.shape
    px, py = labels.width_nm / cols, labels.height_nm / rows
    yy = (np.arange(rows)[:, None] + 0.5) * py
    xx = (np.arange(cols)[None, :] + 0.5) * px
    inside = np.zeros(truth.shape, bool)
    for r in labels.regions_of(split):
        inside |= (xx >= r.x0_nm) & (xx < r.x1_nm) & (yy >= r.y0_nm) & (yy < r.y1_nm)
    valid = inside & (truth != IGNORE)
    t = (truth == 1) & valid
    p = predicted & valid
    denominator = int(t.sum() + p.sum())
    return 2.0 * float((t & p).sum()) / denominator if denominator else 0.0


def dense_adapt(
    base: SegmentationModel, scan: LabelledScan, settings: AdaptSettings | None = None, *, split: str = "dev",
) -> tuple[SegmentationModel, dict[str, Any], tempfile.TemporaryDirectory[str]]:
    """A model adapted from the dense mask inside ``split``'s regions (pixels elsewhere unlabelled).

    Returns the model, the adaptation report, and the temporary folder
    holding the model file (keep it alive while the model is used).
    """
    labels = scan.labels
    if labels.mask_class is None:
        raise LabelError(f"{labels.path}: no dense mask")
    mask = dense_mask(labels).astype(np.int16)
    mask[mask == IGNORE] = -1
    rows, cols = mask.shape
    px, py = labels.width_nm / cols, labels.height_nm / rows
    yy = (np.arange(rows)[:, None] + 0.5) * py
    xx = (np.arange(cols)[None, :] + 0.5) * px
    inside = np.zeros(mask.shape, bool)
    for r in labels.regions_of(split):
        inside |= (xx >= r.x0_nm) & (xx < r.x1_nm) & (yy >= r.y0_nm) & (yy < r.y1_nm)
    mask[~inside] = -1
    example = LabelledFrame(scan.frame, mask=mask, source=labels.path)
    proto, info, report = adapt_model(base, [example], [labels.mask_class], settings, name="dense")
    tmp = tempfile.TemporaryDirectory()
    return _with_model(proto, info, Path(tmp.name), "dense"), report, tmp
