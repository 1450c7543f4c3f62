"""Adapting a model to labelled images: the library behind ``stm-live adapt``.

:func:`adapt_model` takes a model or bare encoder and one or more labelled
frames (:class:`LabelledFrame`: clicked points, or a mask, plus optional
background rectangles and *complete* rectangles in which every feature is
labelled, so that their other pixels are background) and returns a new ONNX
model with prototypes made from those labels (``stm_live.model.prototypes``).

What it decides from the images themselves (``docs/real_eval.md`` measures it):

* the model pitch (:func:`feature_pitch`): the labelled features' size is
  measured on the frame (scale of the strongest Laplacian-of-Gaussian response
  at each clicked point, or the mask's blob diameters) and the pitch is chosen
  so that they span as many model pixels as the encoder's training features did;
* the detection thresholds: the lowest per-class score at which the new
  head finds no more features in the known background of its own labelled
  frames than the model it started from (with a dense mask: the background
  bias that maximises Dice over folds of the labelled image, cross-validated);
* the contrast gate (clicked points): how far each clicked example stands out
  of its surroundings is measured, and detections fainter than 0.5 of the
  faintest one are not reported (:mod:`stm_live.model.contrast`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from scipy import ndimage

from ..errors import AdaptError
from ..frame import Frame
from .contrast import feature_contrast
from .format import ModelInfo, Prototypes, attach_head, load_onnx, with_info
from .instances import per_class
from .prepare import level_for_model, to_model_grid
from .prototypes import (
    UNLABELLED,
    LabelledImage,
    Point,
    feature_centring,
    head_probabilities,
    labels_from_points,
    prototypes_from_labels,
    refine_prototypes,
)
from .runtime import SegmentationModel

__all__ = ["AdaptSettings", "Box", "LabelledFrame", "adapt_model", "feature_pitch", "feature_size_nm"]

log = logging.getLogger(__name__)

#: A rectangle ``(x0_nm, y0_nm, x1_nm, y1_nm)`` from the image's top-left corner.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LabelledFrame:
    """One labelled image.

    ``points`` (class ``"background"`` marks background) or ``mask`` (image
    grid, 0 background, k the k-th class, negative or 255 unlabelled);
    ``background_boxes``: rectangles with no feature; ``complete_boxes``:
    rectangles in which every feature is labelled (their other pixels are
    background).
    """

    frame: Frame
    points: tuple[Point, ...] = ()
    mask: np.ndarray | None = None
    background_boxes: tuple[Box, ...] = ()
    complete_boxes: tuple[Box, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class AdaptSettings:
    """How :func:`adapt_model` works; the defaults need no expert choice.

    ``nm_per_px`` None: measured from the labelled features
    (:func:`feature_pitch`); ``radius_nm`` None: from the same measurement.
    ``calibrate``: choose detection thresholds on the labelled frames.
    ``prototypes_per_class`` / ``fine_tune_steps`` None: 3 and 100 for dense
    masks (enough pixels to use), 1 and 0 for points. ``keep_base_head``:
    when the start model has a head, its trained prototypes of the labelled
    classes and of the background stay beside the new ones (and its pitch is
    kept), so that a few clicks add to what it knows instead of replacing it.
    ``count_like_a_person``: merge the pieces of dark (trench-like) features
    within their measured size and split touching bright ones; False keeps
    the older rule (pieces within two disc radii merged, nothing split).
    ``score_margin``: with ``calibrate``, no detection is kept that is less
    certain than every clicked example of its class less this margin.
    ``start_model_share``: with ``keep_base_head``, a class the start model
    knows and already detects at more than this share of its clicked
    examples keeps only the start model's trained prototypes and thresholds
    (0.99: only a class found at every clicked example, the rule before).
    ``contrast_fraction``: with clicked examples, a detection is not
    reported when it stands out of its surroundings by less than this
    fraction of the faintest clicked example of its class (the contrast gate,
    :mod:`stm_live.model.contrast`; 0 turns it off). Chosen on the real dev
    regions (docs/real_eval.md): the faint dark dots along the dimer rows
    that the start model calls vacancies are shallower than any vacancy a
    person clicks.
    ``strict_background``: with ``calibrate``, a class left to the start
    model also raises its thresholds to drop what it finds on the marked
    background, without losing a clicked example it finds (off by default:
    on the real dev regions it cut false detections but lost more true
    features than it removed false ones; docs/real_eval.md).
    """

    nm_per_px: float | None = None
    radius_nm: float | None = None
    background_margin_nm: float | None = None
    n_background: int = 4
    prototypes_per_class: int | None = None
    fine_tune_steps: int | None = None
    centre_features: bool = False
    centre_prior_nm2: float = 2.5
    calibrate: bool = True
    keep_base_head: bool = True
    count_like_a_person: bool = True
    score_margin: float = 0.05
    start_model_share: float = 0.5
    strict_background: bool = False
    contrast_fraction: float = 0.5
    seed: int = 0
    extra_provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.contrast_fraction < 1:
            raise AdaptError(f"contrast_fraction must be at least 0 and below 1 (a clicked example must pass its "
                             f"own gate), got {self.contrast_fraction}")


# The encoders were trained on features about this many model pixels across
# (simulated Si(001) dangling bonds / AsH3 at 0.1 nm/px: 0.8-1.2 nm).
_TRAINED_FEATURE_PX = 10.0


def feature_size_nm(levelled: np.ndarray, nm_per_px: float, points_px: Sequence[tuple[float, float, bool]]) -> float:
    """Median diameter (nm) of features at ``points_px`` (``(row, col, bright)``), by LoG scale selection.

    At each point, the scale-normalised Laplacian of Gaussian ``-s^2 LoG_s``
    (negated for dark features) is evaluated over ``s`` = 1..24 px; the
    diameter of a blob whose response peaks at ``s`` is ``2 sqrt(2) s``.

    >>> yy, xx = np.mgrid[:64, :64]
    >>> blob = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 4.0**2))
    >>> round(feature_size_nm(blob, 0.1, [(32, 32, True)]), 1)  # a Gaussian of sigma 4 px: 2 sqrt(2) x 0.4 nm
    1.2
    """
    z = np.asarray(levelled, np.float64)
    z = z - np.median(z)
    sigmas = np.geomspace(1.0, 24.0, 28)
    half = int(4 * sigmas[-1])  # the filters' reach: a window this wide around each point is enough
    best = []
    for r, c, bright in points_px:
        r = min(max(round(r), 0), z.shape[0] - 1)
        c = min(max(round(c), 0), z.shape[1] - 1)
        r0, c0 = max(r - half, 0), max(c - half, 0)
        window = z[r0:r + half + 1, c0:c + half + 1]
        response = [-(s**2) * ndimage.gaussian_laplace(window, s)[r - r0, c - c0] for s in sigmas]
        best.append(sigmas[int(np.argmax(np.asarray(response) * (1 if bright else -1)))])
    return float(np.median(best) * 2 * np.sqrt(2) * nm_per_px)


def feature_pitch(size_nm: float, image_nm_per_px: float, model_nm_per_px: float = 0.1) -> float:
    """Model pitch (nm/px) at which features of ``size_nm`` span what the encoder was trained on.

    Limited to 2.5x finer .. 4x coarser than the image and to half .. twice
    the encoder's own pitch ``model_nm_per_px`` (beyond that the encoder sees
    textures it never saw in training).

    >>> feature_pitch(1.0, 0.2), feature_pitch(0.5, 0.02), feature_pitch(0.3, 0.02)
    (0.1, 0.05, 0.05)
    """
    pitch = size_nm / _TRAINED_FEATURE_PX
    pitch = min(max(pitch, image_nm_per_px / 2.5), image_nm_per_px * 4)
    pitch = min(max(pitch, model_nm_per_px / 2), model_nm_per_px * 2)
    return float(round(pitch, 4))


def _boxes_mask(boxes: Sequence[Box], shape: tuple[int, int], pitch: tuple[float, float], row0: int = 0) -> np.ndarray:
    rows, cols = shape
    yy = (np.arange(rows)[:, None] + 0.5 + row0) * pitch[1]
    xx = (np.arange(cols)[None, :] + 0.5) * pitch[0]
    out = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        out |= (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    return out


def _measure_sizes(example: LabelledFrame, classes: Sequence[str]) -> dict[str, list[tuple[float, bool]]]:
    """``(diameter nm, bright)`` of the labelled features per class: LoG scale at points, blob size in masks."""
    frame = example.frame
    rows = frame.valid_rows
    px = frame.nm_per_px
    out: dict[str, list[tuple[float, bool]]] = {c: [] for c in classes}
    levelled = level_for_model(frame.data[rows], {})
    median = float(np.median(levelled))
    if example.mask is not None:
        mask = np.asarray(example.mask)[rows]
        for k, name in enumerate(classes, start=1):
            lab, n = ndimage.label(mask == k)
            if n:
                counts = np.bincount(lab.ravel())[1:]
                heights = ndimage.mean(levelled, lab, np.arange(1, n + 1))
                out[name].extend((float(d), bool(h >= median))
                                 for d, h in zip(2 * np.sqrt(counts * px[0] * px[1] / np.pi), heights, strict=True))
        return out
    for p in example.points:
        if p.class_name not in out:
            continue
        r, c = p.y_nm / px[1] - rows.start, p.x_nm / px[0]
        if 0 <= r < levelled.shape[0] and 0 <= c < levelled.shape[1]:
            window = levelled[max(int(r) - 2, 0):int(r) + 3, max(int(c) - 2, 0):int(c) + 3]
            bright = float(window.mean()) >= median
            out[p.class_name].append((feature_size_nm(levelled, px[0], [(r, c, bright)]), bright))
    return out


def adapt_model(
    base: SegmentationModel,
    examples: Sequence[LabelledFrame],
    classes: Sequence[str],
    settings: AdaptSettings | None = None,
    *,
    name: str = "adapted",
    surface: str | None = None,
) -> tuple[onnx.ModelProto, ModelInfo, dict[str, Any]]:
    """A model with prototypes made from ``examples`` (see the module description).

    Returns ``(onnx model, info, report)``; write it with
    :func:`stm_live.model.format.save_model`. ``report`` says what was
    measured and chosen (pitch, feature size, thresholds, false detections
    on the labelled frames before and after).

    Raises
    ------
    AdaptError
        No example, a class without labelled pixels, no background, labels
        that do not fit their image.
    """
    settings = settings or AdaptSettings()
    if not examples:
        raise AdaptError("no labelled image")
    classes = list(classes)
    info = base.info
    report: dict[str, Any] = {}
    per_class: dict[str, list[tuple[float, bool]]] = {c: [] for c in classes}
    for e in examples:
        for c, values in _measure_sizes(e, classes).items():
            per_class[c].extend(values)
    sizes = [v for values in per_class.values() for v, _ in values]
    size_nm = float(np.median(sizes)) if sizes else None
    class_size = {c: float(np.median([d for d, _ in v])) for c, v in per_class.items() if v}
    bright_class = {c: 2 * sum(b for _, b in v) > len(v) for c, v in per_class.items() if v}
    report["bright"] = bright_class
    report["feature_size_nm"] = None if size_nm is None else round(size_nm, 4)
    report["class_size_nm"] = {c: round(v, 4) for c, v in class_size.items()}
    keep_head = base.has_head and info.prototypes is not None and settings.keep_base_head \
        and not settings.centre_features
    if settings.nm_per_px:
        pitch = float(settings.nm_per_px)
    elif keep_head:  # its trained prototypes describe features at its own pitch
        pitch = info.nm_per_px
    elif size_nm is not None:
        pitch = feature_pitch(size_nm, examples[0].frame.nm_per_px[0], info.nm_per_px)
    else:
        pitch = info.nm_per_px
    report["nm_per_px"] = pitch
    radius = settings.radius_nm
    if radius is None:
        radius = 0.4 if size_nm is None else float(np.clip(0.35 * size_nm, 1.5 * pitch, 0.6))
    margin = settings.background_margin_nm
    if margin is None:
        margin = 3.0 * radius
    report["radius_nm"] = round(radius, 4)

    def label_images(pitch: float) -> tuple[list[LabelledImage], list[np.ndarray]]:
        images = []
        known_background = []
        for ex in examples:
            frame = ex.frame
            embedding, prepared = base.embed(frame, nm_per_px=pitch)
            h, w = prepared.shape
            rows = frame.valid_rows
            grid = (pitch, pitch)
            if ex.mask is not None:
                mask = np.asarray(ex.mask)
                if mask.shape != frame.data.shape:
                    raise AdaptError(f"{ex.source or 'mask'}: mask shape {mask.shape}, image {frame.data.shape}")
                small = to_model_grid(mask[rows], (h, w), nm_per_px=frame.nm_per_px, target_nm_per_px=pitch)
                labels = np.where((small < 0) | (small > len(classes)), UNLABELLED, small).astype(np.int16)
            else:
                shifted = [replace(p, y_nm=p.y_nm - rows.start * frame.nm_per_px[1]) for p in ex.points]
                labels = labels_from_points(shifted, classes, shape=(h, w), nm_per_px=grid, radius_nm=radius,
                                            background_margin_nm=margin)
            background = np.zeros((h, w), bool)
            if ex.background_boxes:
                background |= _boxes_mask(ex.background_boxes, (h, w), grid, rows.start)
            if ex.complete_boxes:
                inside = _boxes_mask(ex.complete_boxes, (h, w), grid, rows.start)
                # every feature in a complete box is labelled: the pixels not near one are background
                near = labels > 0
                near = ndimage.binary_dilation(near, iterations=max(1, round(radius / pitch)))
                background |= inside & ~near
            if background.any():
                labels = np.where(background & (labels <= 0), 0, labels).astype(np.int16)
            known_background.append(background)
            images.append(LabelledImage(embedding, labels))
        return images, known_background

    dense = all(ex.mask is not None for ex in examples)
    n_per_class = settings.prototypes_per_class or (3 if dense and not settings.centre_features else 1)
    steps = settings.fine_tune_steps if settings.fine_tune_steps is not None else (100 if dense else 0)

    def fit(labelled: Sequence[LabelledImage]) -> Prototypes:
        # a dense mask's background is known: nothing in it is an unlabelled feature
        protos = prototypes_from_labels(labelled, len(classes), n_background=settings.n_background,
                                        seed=settings.seed, exclude_lookalikes=not dense, per_class=n_per_class)
        if steps:
            protos = refine_prototypes(protos, labelled, steps=steps, seed=settings.seed)
        return protos

    report["prototypes_per_class"] = n_per_class
    report["fine_tune_steps"] = steps
    unchanged: set[str] = set()
    if dense and settings.calibrate:
        # the pitch and the background bias by cross-validation on the labelled pixels: the
        # measured pitch and finer ones (a mask tells the extent, a finer grid follows it closer)
        candidates = [pitch] if settings.nm_per_px else sorted({pitch, round(0.75 * pitch, 4), round(0.5 * pitch, 4)})
        tried = {}
        best_key: tuple[float, float] | None = None
        for candidate in candidates:
            imgs, _ = label_images(candidate)
            offset, curve = _cross_validated_offset(imgs, fit)
            score = max(curve.values()) if curve else 0.0
            tried[str(candidate)] = {"offset": offset, "dice": score}
            if best_key is None or score > best_key[0]:
                best_key, pitch, chosen_offset = (score, candidate), candidate, offset
        report["cross_validation"] = tried
        report["nm_per_px"] = pitch
        images, known_background = label_images(pitch)
        prototypes = fit(images)
        offsets = np.where(np.asarray(prototypes.labels) == 0, chosen_offset, 0.0)
        prototypes = replace(prototypes, offsets=offsets.astype(np.float32))
    else:
        images, known_background = label_images(pitch)
        prototypes = fit(images)
        if keep_head:
            found_at = _clicks_the_base_finds(base, examples, classes, radius)
            unchanged = {c for c, (found, clicked) in found_at.items()
                         if c in base.classes and (not clicked or found > settings.start_model_share * clicked)}
            prototypes = _with_base_prototypes(prototypes, info, classes, unchanged)
            report["start_model_found_of_clicked"] = {c: list(v) for c, v in found_at.items()}
            report["classes_left_to_the_start_model"] = sorted(unchanged)
            for c in sorted(set(classes) - unchanged):
                if c in base.classes:
                    log.info("%s: the start model finds %d of %d clicked examples: new prototypes added",
                             c, *found_at[c])
    if settings.centre_features:
        prior_px = settings.centre_prior_nm2 / pitch**2
        prototypes = replace(prototypes, centring=feature_centring(images, prototypes, prior_px=prior_px))

    disc_nm2 = float(np.pi * radius**2)
    detection: dict[str, Any] = {}
    if any(ex.mask is None for ex in examples) and not settings.count_like_a_person:
        detection = {"merge_within_nm": round(2 * radius, 4),
                     "min_area_nm2": {c: round(0.15 * disc_nm2, 4) for c in classes}}
    elif any(ex.mask is None for ex in examples):
        # Dark features (vacancies) are often trenches: pieces closer than their size are one.
        # Bright ones are round: pieces within the labelled disc are one, and touching ones
        # are split when their centres are 0.7 of their size apart (neighbouring spots).
        detection = {"merge_within_nm": {c: round(2 * radius if bright_class.get(c) else
                                                  max(2 * radius, 0.9 * class_size.get(c, 0.0)), 4)
                                         for c in classes},
                     "split_within_nm": {c: round(0.7 * class_size[c], 4) for c in classes
                                         if bright_class.get(c) and c in class_size},
                     "min_area_nm2": {c: round(0.15 * disc_nm2, 4) for c in classes}}
    if unchanged and detection:
        # a class left to the start model keeps how it counts instances as well as its prototypes
        detection = _start_model_rules(detection, info.detection, classes, unchanged)
    new_info = replace(
        info,
        nm_per_px=pitch,
        detection=detection,
        name=name,
        classes=tuple(classes),
        surface=surface or info.surface,
        prototypes=prototypes,
        provenance={"base_model": {"id": info.id, "name": info.name}, "radius_nm": radius,
                    "adapt": {"feature_size_nm": report["feature_size_nm"], "nm_per_px": pitch},
                    **dict(settings.extra_provenance)},
    )
    model = attach_head(load_onnx(base.path), prototypes)
    if settings.calibrate and not dense and (any(b.any() for b in known_background)
                                             or any(ex.points for ex in examples)):
        unchanged_classes = set(report["classes_left_to_the_start_model"]) if keep_head else None
        thresholds = _calibrate(base, model, new_info, examples, known_background, classes, radius,
                                unchanged_classes, settings.score_margin, settings.strict_background)
        report["calibration"] = thresholds
        det = dict(new_info.detection)
        det["min_score"] = thresholds["min_score"]
        det["min_area_nm2"] = thresholds["min_area_nm2"]
        new_info = replace(new_info, detection=det)
    if settings.contrast_fraction > 0 and not dense:
        gate, measured = _contrast_gate(examples, classes, bright_class, class_size, settings.contrast_fraction,
                                        levelling=info)
        if gate:
            new_info = replace(new_info, detection={**new_info.detection, "min_contrast": gate})
        report["contrast"] = {"fraction": settings.contrast_fraction, **measured,
                              "gate": {c: v["min"] for c, v in gate.items()}}
    return model, new_info, report


def _contrast_gate(
    examples: Sequence[LabelledFrame], classes: Sequence[str], bright: Mapping[str, bool],
    size_nm: Mapping[str, float], fraction: float, *, levelling: Any,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per class, ``fraction`` of the faintest clicked example's contrast (:mod:`.contrast`), and what was measured.

    The core radius is 0.8 of the class's measured size (the vacancies and
    dangling bonds of the real Si(001):H frames, about 1 nm: 0.8 nm), the ring
    reaches 2 times the size. Contrast is measured on each frame levelled as
    the model levels it, in the frame's unit; clicks on frames in different
    units give no gate.
    """
    radii = {c: (0.8 * size_nm[c], 2.0 * size_nm[c]) for c in classes if c in size_nm and c in bright}
    measured: dict[str, list[float]] = {c: [] for c in radii}
    units = {ex.frame.unit for ex in examples if any(p.class_name in radii for p in ex.points)}
    if len(units) != 1:
        return {}, {"clicked": measured, "unit": sorted(units)}
    unit = units.pop()
    for ex in examples:
        clicked = [p for p in ex.points if p.class_name in radii]
        if not clicked:
            continue
        rows = ex.frame.valid_rows
        levelled = level_for_model(ex.frame.data[rows], levelling)  # as the runtime levels it
        for p in clicked:
            inner, outer = radii[p.class_name]
            value = feature_contrast(levelled, ex.frame.nm_per_px, p.x_nm, p.y_nm, bright=bright[p.class_name],
                                     inner_nm=inner, outer_nm=outer, row0=rows.start)
            if np.isfinite(value):
                measured[p.class_name].append(float(f"{value:.4g}"))
    gate = {c: {"min": float(f"{fraction * min(v):.4g}"), "bright": bool(bright[c]),
                "inner_nm": round(radii[c][0], 4), "outer_nm": round(radii[c][1], 4), "unit": unit}
            for c, v in measured.items() if v and min(v) > 0}
    return gate, {"clicked": measured, "unit": unit}


def _clicks_the_base_finds(
    base: SegmentationModel, examples: Sequence[LabelledFrame], classes: Sequence[str], radius_nm: float
) -> dict[str, tuple[int, int]]:
    """Per class: ``(clicked examples the start model detects under that class, clicked examples)``.

    A start model that already finds most of a class's clicked examples is on
    its own ground: the one it misses is an outlier (on simulated Si(001), a
    feature cut by the frame's edge, or one just under its threshold), and a
    prototype averaged over a few clicks describes the class worse than the
    trained one fitted on thousands of examples (docs/real_eval.md, "Simulator").
    """
    counts = {c: [0, 0] for c in classes}
    for ex in examples:
        clicked = [p for p in ex.points if p.class_name in counts]
        if not clicked:
            continue
        detections = base.segment(ex.frame).detections
        for p in clicked:
            counts[p.class_name][1] += 1
            counts[p.class_name][0] += any(d.class_name == p.class_name
                                           and (d.x_nm - p.x_nm) ** 2 + (d.y_nm - p.y_nm) ** 2 <= (2 * radius_nm) ** 2
                                           for d in detections)
    return {c: (found, clicked) for c, (found, clicked) in counts.items()}


def _with_base_prototypes(
    prototypes: Prototypes, info: ModelInfo, classes: Sequence[str], unchanged: set[str],
) -> Prototypes:
    """The start model's prototypes of the labelled classes and background, plus new ones where needed.

    New prototypes (from the labels) are added for the classes not in
    ``unchanged`` (the ones the start model already finds at most clicked
    examples, ``AdaptSettings.start_model_share``); the start model's
    temperature is kept.
    """
    base = info.prototypes
    assert base is not None
    index = {c: k for k, c in enumerate(classes, start=1)}
    # background prototypes from a few clicks also cover the frame's unlabelled features: the
    # start model's trained background prototypes are kept instead
    new = [i for i, label in enumerate(prototypes.labels) if label != 0 and classes[label - 1] not in unchanged]
    # the start model's calibrated class offsets (stm-live train) stay with its prototypes, and a
    # new prototype of a class it knows gets that class's offset, so that both compete alike
    base_offsets = np.zeros(len(base.labels), np.float32) if base.offsets is None else base.offsets
    class_offset = {("background" if label == 0 else info.classes[label - 1]): float(o)
                    for label, o in zip(base.labels, base_offsets, strict=True)}
    vectors, labels = [prototypes.vectors[new]], [prototypes.labels[i] for i in new]
    offsets = [class_offset.get(classes[prototypes.labels[i] - 1], 0.0) for i in new]
    for v, label, o in zip(base.vectors, base.labels, base_offsets, strict=True):
        name = "background" if label == 0 else info.classes[label - 1]
        if label == 0 or name in index:
            vectors.append(v[None])
            labels.append(0 if label == 0 else index[name])
            offsets.append(float(o))
    stacked = np.concatenate(vectors).astype(np.float32)
    # the start model's temperature was fitted on many validation pixels, and its calibrated
    # thresholds hold for it: a few clicks are no better ground for a new one
    temperature = base.temperature
    return Prototypes(stacked, tuple(labels), temperature,
                      offsets=np.asarray(offsets, np.float32) if any(offsets) else None)


def _start_model_rules(
    detection: Mapping[str, Any], start: Mapping[str, Any], classes: Sequence[str], kept: set[str]
) -> dict[str, Any]:
    """``detection`` with the start model's instance rules (merge, split, minimum area) for the classes in ``kept``."""
    out = dict(detection)
    for key in ("merge_within_nm", "split_within_nm", "min_area_nm2"):
        value = detection.get(key, 0.0)
        out[key] = {c: round(per_class(start.get(key, 0.0) if c in kept else value, c), 6) for c in classes}
    return out


def _cross_validated_offset(
    images: Sequence[LabelledImage], fit: Any, folds: int = 3
) -> tuple[float, dict[str, float]]:
    """The background logit offset that maximises Dice on held-out bands of the labelled pixels.

    The labelled columns of each image are cut into ``folds`` bands; for each
    band, prototypes are fitted (``fit``) without it and its pixels are
    classified. A pixel is a feature when its log-odds of not being
    background exceed the offset; the offset with the best Dice over all
    held-out pixels (pooled) is returned, with the Dice of each offset tried.
    """
    odds, truth = [], []
    bands = []
    for im in images:
        cols = np.flatnonzero((im.labels >= 0).any(axis=0))
        edges = np.linspace(cols.min(), cols.max() + 1, folds + 1).round().astype(int) if len(cols) else None
        bands.append(edges)
    for f in range(folds):
        train = []
        for im, edges in zip(images, bands, strict=True):
            labels = im.labels.copy()
            if edges is not None:
                labels[:, edges[f]:edges[f + 1]] = UNLABELLED
            train.append(LabelledImage(im.embedding, labels))
        try:
            protos = fit(train)
        except AdaptError:  # a class whose every example lies in the held-out band: no fold here
            continue
        for im, edges in zip(images, bands, strict=True):
            if edges is None:
                continue
            held = np.zeros(im.labels.shape, bool)
            held[:, edges[f]:edges[f + 1]] = True
            held &= im.labels >= 0
            if not held.any():
                continue
            p = head_probabilities(im.embedding[:, held], protos)
            background = np.clip(p[0], 1e-12, 1 - 1e-12)
            odds.append(np.log((1 - background) / background))
            truth.append(im.labels[held] > 0)
    if not odds:
        return 0.0, {}
    o, t = np.concatenate(odds), np.concatenate(truth)
    curve = {}
    for b in np.linspace(-6.0, 6.0, 49):
        pred = o > b
        denominator = int(pred.sum() + t.sum())
        curve[f"{b:.2f}"] = round(2.0 * float((pred & t).sum()) / denominator, 4) if denominator else 0.0
    best = max(curve, key=lambda k: (curve[k], -abs(float(k))))
    return float(best), curve


def _false_in_background(seg_detections: Sequence[Any], background: np.ndarray, pitch: float, row0: int) -> list[Any]:
    out = []
    for d in seg_detections:
        r = int(d.y_nm / pitch) - row0
        c = int(d.x_nm / pitch)
        if 0 <= r < background.shape[0] and 0 <= c < background.shape[1] and background[r, c]:
            out.append(d)
    return out


def _calibrate(
    base: SegmentationModel,
    model: onnx.ModelProto,
    info: ModelInfo,
    examples: Sequence[LabelledFrame],
    known_background: Sequence[np.ndarray],
    classes: Sequence[str],
    radius_nm: float,
    unchanged: set[str] | None = None,
    score_margin: float = 0.05,
    strict_background: bool = False,
) -> dict[str, Any]:
    """Per-class score thresholds from the labelled frames themselves.

    Classes in ``unchanged`` (left to the start model's trained prototypes)
    start from its calibrated thresholds instead of the clicked examples';
    ``unchanged`` None: the start model's head was not kept.

    * *known background* (background rectangles, the unlabelled parts of
      all-labelled rectangles): a hard limit: the thresholds (minimum score
      and area) are raised until the new head finds no more features there
      than the model it started from (a bare encoder finds none, so then none
      at all), keeping as many clicked examples as that allows;
    * *what the start model calls background, or a class it was confirmed
      on*: for a class the start model knows but that got new prototypes
      (not in ``unchanged``), its detections on the labelled frames away from
      every click and every start-model detection of that class, where the
      start model's class map is background or a class in ``unchanged`` (one
      it found at most of that class's clicks, so its word on it holds),
      count as known background too (new prototypes may add what it missed
      at the clicks, not what it rejects elsewhere nor what it rightly calls
      something else);
    * *positives*: a detection less certain than every clicked example of its
      class (less ``score_margin``) is not kept: the clicked features are what
      the person says the class looks like;
    * with ``strict_background``, a class in ``unchanged`` keeps the start
      model's thresholds unless the known background holds detections of it:
      then they rise as far as needed to drop as many of those as possible
      without losing a clicked example the start model finds (a box dragged
      over false detections removes their kind, not the class).
    """
    proto, full = with_info(model, info)
    pitch = full.nm_per_px
    merge = full.detection.get("merge_within_nm", 0.0)
    area_floor = full.detection.get("min_area_nm2", {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        path.write_bytes(proto.SerializeToString())
        candidate = SegmentationModel(path, provider="cpu")
        # (score, area) of detections in the known background and of those on clicked examples
        negatives: dict[str, list[tuple[float, float]]] = {c: [] for c in classes}
        positives: dict[str, list[tuple[float, float]]] = {c: [] for c in classes}
        allowed: dict[str, int] = dict.fromkeys(classes, 0)
        for ex, bg in zip(examples, known_background, strict=True):
            seg = candidate.segment(ex.frame, min_score=0.0, min_area_nm2=0.0)
            for p in ex.points:
                if p.class_name not in positives:
                    continue
                reach = max(2 * radius_nm, float(merge.get(p.class_name, 0.0)) if isinstance(merge, Mapping)
                            else float(merge))
                near = [(d.score, d.area_nm2) for d in seg.detections if d.class_name == p.class_name
                        and (d.x_nm - p.x_nm) ** 2 + (d.y_nm - p.y_nm) ** 2 <= reach**2]
                if near:
                    positives[p.class_name].append(max(near))
            if not bg.any():
                continue
            rows = ex.frame.valid_rows
            row0 = round(rows.start * ex.frame.nm_per_px[1] / pitch)
            for d in _false_in_background(seg.detections, bg, pitch, row0):
                negatives[d.class_name].append((d.score, d.area_nm2))
            if base.has_head:
                for d in _false_in_background(base.segment(ex.frame).detections, bg, pitch, row0):
                    if d.class_name in allowed:
                        allowed[d.class_name] += 1
        if base.has_head and unchanged is not None:
            # A class the start model knows that gets new prototypes may add what it missed at the
            # clicks, not what it calls background elsewhere nor what it calls a class the clicks
            # confirmed it on: on the labelled frame, a detection of such a class away from every
            # click of it and from every start-model detection of it, where the start model sees
            # background or a confirmed class, is a negative (the start model has none there).
            confirmed = {k for k, name in enumerate(base.classes, start=1) if name in unchanged}
            confirmed.add(0)
            for ex in examples:
                start = base.segment(ex.frame)
                seg = candidate.segment(ex.frame, min_score=0.0, min_area_nm2=0.0)
                px = ex.frame.nm_per_px
                for d in seg.detections:
                    if d.class_name not in base.classes or d.class_name in unchanged:
                        continue
                    reach = max(2 * radius_nm, float(merge.get(d.class_name, 0.0)) if isinstance(merge, Mapping)
                                else float(merge))
                    r = min(max(int(d.y_nm / px[1]), 0), start.class_map.shape[0] - 1)
                    c = min(max(int(d.x_nm / px[0]), 0), start.class_map.shape[1] - 1)
                    positions = [(q.x_nm, q.y_nm) for q in ex.points if q.class_name == d.class_name]
                    positions += [(q.x_nm, q.y_nm) for q in start.detections if q.class_name == d.class_name]
                    claimed = any((x - d.x_nm) ** 2 + (y - d.y_nm) ** 2 <= reach**2 for x, y in positions)
                    if not claimed and int(start.class_map[r, c]) in confirmed:
                        negatives[d.class_name].append((d.score, d.area_nm2))
    min_score: dict[str, float] = {}
    min_area: dict[str, float] = {}
    kept: dict[str, list[int]] = {}
    for c in classes:
        pos, neg = positives[c], negatives[c]
        base_area = float(area_floor.get(c, 0.0)) if isinstance(area_floor, Mapping) else 0.0
        left_to_start = unchanged is not None and c in unchanged
        strict = strict_background and left_to_start
        if left_to_start:  # the start model's validated thresholds
            start_scores, start_areas = base.thresholds()
            score_floor, base_area = start_scores.get(c, 0.0), max(base_area, start_areas.get(c, 0.0))
        else:  # positives: nothing less certain than every clicked example (less the margin)
            score_floor = min(s for s, _ in pos) - score_margin if pos else 0.0
        scores = sorted({max(score_floor, 0.0), *(s + 1e-4 for s, _ in neg)})
        areas = sorted({base_area, *(a + 1e-6 for _, a in neg)})
        # strict: a class left to the start model keeps at least its thresholds, and they rise only to drop
        # what it finds on background the person marked, never so far that a clicked example it finds is
        # lost (the clicks say what the class looks like, the boxes what it is not)
        found = sum(1 for s, a in pos if s >= score_floor and a >= base_area)
        best: tuple[int, float, float, int] | None = None  # (clicks kept, score, area, background kept)
        fewest: tuple[int, float, float, int] | None = None  # the same, fewest background kept
        for s_t in scores:
            for a_t in areas:
                n_neg = sum(1 for s, a in neg if s >= s_t and a >= a_t)
                if n_neg > allowed[c]:
                    continue  # never more background detections than the start model
                n_pos = sum(1 for s, a in pos if s >= s_t and a >= a_t)
                key = (-n_pos, s_t, a_t, n_neg)
                if best is None or key < (-best[0], best[1], best[2], best[3]):
                    best = (n_pos, s_t, a_t, n_neg)
                if strict and s_t >= score_floor and a_t >= base_area and n_pos >= found and (
                        fewest is None or (n_neg, s_t, a_t) < (fewest[3], fewest[1], fewest[2])):
                    fewest = (n_pos, s_t, a_t, n_neg)
        if fewest is not None:
            best = fewest
        if best is None:  # unreachable: a threshold above every score keeps nothing
            best = (0, 1.0, base_area, 0)
        min_score[c] = round(min(best[1], 1.0), 4)
        min_area[c] = round(best[2], 6)
        kept[c] = [best[0], len(pos), best[3], len(neg)]
    return {"min_score": min_score, "min_area_nm2": min_area, "allowed": allowed,
            "clicked_kept_of_found_and_background_kept_of_found": kept}
