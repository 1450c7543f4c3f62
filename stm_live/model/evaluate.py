"""Measuring a model against ground truth: object matching, pixel IoU, few-shot episodes.

Object level: a detection matches a true feature of its class within
``max_dist_nm`` (0.5 nm by default), one to one (optimal assignment), giving
true positives, false positives and misses per class, hence precision,
recall and F1. Pixel level: intersection over union per class between the
predicted class map and the true mask.

Episodes (the paper's protocol): each feature instance is described by the
mean embedding over its mask region; an N-way K-shot episode draws K support
and Q query instances per class, makes one prototype per class from the
support, and classifies each query by its nearest prototype. Accuracy is
averaged over many episodes (mean and standard deviation reported).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from ..errors import StmLiveError
from ..frame import Detection
from .prepare import to_model_grid

if TYPE_CHECKING:
    from ..io import ScanFile
    from .runtime import SegmentationModel

log = logging.getLogger(__name__)

__all__ = [
    "ClassScore",
    "EpisodeResult",
    "Truth",
    "calibrate_detection",
    "evaluate_model",
    "instance_embeddings",
    "match_class",
    "object_scores",
    "pixel_iou",
    "run_episodes",
]


@dataclass(frozen=True)
class Truth:
    """A true feature: class and centre in nm from the image's top-left corner."""

    class_name: str
    x_nm: float
    y_nm: float


@dataclass
class ClassScore:
    """Counts for one class, accumulated over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    distances_nm: list[float] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def add(self, other: ClassScore) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.distances_nm.extend(other.distances_nm)

    def to_dict(self) -> dict[str, float | None]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "median_error_nm": round(float(np.median(self.distances_nm)), 4) if self.distances_nm else None,
        }


def match_class(
    predicted: Sequence[tuple[float, float]], truth: Sequence[tuple[float, float]], *, max_dist_nm: float = 0.5
) -> ClassScore:
    """One-to-one matching of predicted to true positions (nm) of one class.

    >>> s = match_class([(0.0, 0.0), (5.0, 5.0)], [(0.1, 0.0), (9.0, 9.0)])
    >>> (s.tp, s.fp, s.fn)
    (1, 1, 1)
    """
    score = ClassScore()
    if not predicted or not truth:
        score.fp, score.fn = len(predicted), len(truth)
        return score
    p = np.asarray(predicted, float)
    t = np.asarray(truth, float)
    d = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(axis=2))
    cost = np.where(d <= max_dist_nm, d, 1e6)
    rows, cols = linear_sum_assignment(cost)
    ok = d[rows, cols] <= max_dist_nm
    score.tp = int(ok.sum())
    score.fp = len(p) - score.tp
    score.fn = len(t) - score.tp
    score.distances_nm = [float(v) for v in d[rows, cols][ok]]
    return score


def object_scores(
    detections: Sequence[Detection], truth: Sequence[Truth], classes: Sequence[str], *, max_dist_nm: float = 0.5
) -> dict[str, ClassScore]:
    """Per-class matching of one image's detections against its ground truth."""
    return {
        name: match_class(
            [(d.x_nm, d.y_nm) for d in detections if d.class_name == name],
            [(t.x_nm, t.y_nm) for t in truth if t.class_name == name],
            max_dist_nm=max_dist_nm,
        )
        for name in classes
    }


def pixel_iou(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[int, tuple[int, int]]:
    """Per class k in 1..n: (intersection, union) pixel counts of two class maps."""
    out = {}
    for k in range(1, n_classes + 1):
        a, b = predicted == k, truth == k
        out[k] = (int((a & b).sum()), int((a | b).sum()))
    return out


def feature_centre(embedding: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean embedding ``(D,)`` over the feature pixels (``mask > 0``, every class) of one frame.

    Zeros when the frame has no feature pixel. No class label is used, only
    where features are.
    """
    feature = mask > 0
    if not feature.any():
        return np.zeros(embedding.shape[0])
    return embedding[:, feature].mean(axis=1)


def instance_embeddings(
    embedding: np.ndarray, mask: np.ndarray, *, min_pixels: int = 1, centre: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding of every connected region of every class in ``mask``.

    ``embedding`` is ``(D, h, w)``, ``mask`` ``(h, w)`` class indices on the
    same grid. Returns ``(vectors (n, D), classes (n,))``.

    ``centre`` subtracts the frame's :func:`feature_centre` from every vector
    (per-frame feature centring): what a frame's tip and contrast do to all
    its features alike cancels between frames. It is transductive (it uses
    the frame's unlabelled features, not their classes). A model made with
    ``stm-live adapt --centre-features`` does the same in its head, over the
    pixels its first stage finds features at.
    """
    vectors, classes = [], []
    flat = embedding.reshape(embedding.shape[0], -1)
    for k in np.unique(mask):
        if k == 0:
            continue
        labels, n = ndimage.label(mask == k)
        if n == 0:
            continue
        lab = labels.reshape(-1)
        counts = np.bincount(lab, minlength=n + 1)[1:]
        sums = np.stack([np.bincount(lab, weights=row, minlength=n + 1)[1:] for row in flat], axis=1)
        keep = counts >= min_pixels
        vectors.append(sums[keep] / counts[keep, None])
        classes.append(np.full(int(keep.sum()), int(k)))
    if not vectors:
        return np.zeros((0, embedding.shape[0])), np.zeros(0, int)
    out = np.concatenate(vectors)
    if centre:
        out = out - feature_centre(embedding, mask)
    return out, np.concatenate(classes)


@dataclass(frozen=True)
class EpisodeResult:
    """Accuracy over episodes: mean and standard deviation, and the protocol used."""

    mean: float
    std: float
    episodes: int
    ways: int
    shots: int
    queries: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "accuracy_mean": round(self.mean, 4),
            "accuracy_std": round(self.std, 4),
            "episodes": self.episodes,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
        }


def run_episodes(
    vectors: np.ndarray,
    classes: np.ndarray,
    *,
    shots: int,
    queries: int = 15,
    episodes: int = 100,
    seed: int = 0,
    ways: int | None = None,
) -> EpisodeResult:
    """N-way K-shot nearest-prototype classification of instance embeddings.

    Classes with fewer than ``shots + queries`` instances are left out; N is
    all remaining classes unless ``ways`` is smaller.

    Raises
    ------
    ValueError
        Fewer than two classes have enough instances.
    """
    rng = np.random.default_rng(seed)
    pools: Mapping[int, np.ndarray] = {
        int(k): np.flatnonzero(classes == k) for k in np.unique(classes) if (classes == k).sum() >= shots + queries
    }
    names = sorted(pools)
    if len(names) < 2:
        raise ValueError(
            f"episodes need two classes with at least {shots + queries} instances each; "
            f"counts: { {int(k): int((classes == k).sum()) for k in np.unique(classes)} }"
        )
    n_way = len(names) if ways is None else min(ways, len(names))
    accuracies = []
    for _ in range(episodes):
        chosen = rng.choice(names, size=n_way, replace=False)
        protos, qx, qy = [], [], []
        for j, k in enumerate(chosen):
            pick = rng.choice(pools[int(k)], size=shots + queries, replace=False)
            protos.append(vectors[pick[:shots]].mean(axis=0))
            qx.append(vectors[pick[shots:]])
            qy.append(np.full(queries, j))
        p = np.stack(protos)
        q = np.concatenate(qx)
        pred = ((q[:, None, :] - p[None]) ** 2).sum(axis=2).argmin(axis=1)
        accuracies.append(float((pred == np.concatenate(qy)).mean()))
    return EpisodeResult(float(np.mean(accuracies)), float(np.std(accuracies)), episodes, n_way, shots, queries)


def _sidecar_items(paths: list[str]) -> Iterator[tuple[str, ScanFile, np.ndarray, list[Truth], tuple[str, ...]]]:
    import numpy as np

    from ..io import read_scan
    from ..sim import read_truth

    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.sxm")) if p.is_dir() else [p])
    if not files:
        raise StmLiveError(f"no .sxm files in {', '.join(paths) or 'the data given'}")
    for path in files:
        truth = read_truth(path)
        scan = read_scan(path)
        mask = np.asarray(truth.mask)
        yield str(path), scan, mask, [Truth(i.class_name, i.x_nm, i.y_nm) for i in truth.instances], truth.classes


def _simulated_items(
    surface: str, count: int, seed: int, size_nm: float, pixels: int
) -> Iterator[tuple[str, ScanFile, np.ndarray, list[Truth], tuple[str, ...]]]:
    from ..io import ScanFile
    from ..sim import simulate_scan

    for i in range(count):
        scan = simulate_scan(surface, size_nm=size_nm, pixels=pixels, seed=seed + i)
        truth = [Truth(t.class_name, t.x_nm, t.y_nm) for t in scan.instances]
        yield f"sim:{surface}:{seed + i}", ScanFile(f"sim:{surface}:{seed + i}", scan.frames), scan.mask, truth, \
            scan.classes


def evaluate_model(
    model: SegmentationModel,
    *,
    data: Sequence[str] = (),
    simulate: str | None = None,
    count: int = 8,
    seed: int = 1000,
    size_nm: float = 50.0,
    pixels: int = 512,
    channel: str = "Z",
    max_dist_nm: float = 0.5,
    min_score: float | None = None,
    shots: Sequence[int] = (1, 3),
    queries: int = 15,
    episodes: int = 100,
    nm_per_px: float | None = None,
    centre_features: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on files with truth sidecars (``data``) or fresh simulated frames.

    Returns the report: per-class object counts/precision/recall/F1
    (``objects``) and ``pixel_iou`` when the model has a head, and
    ``episodes`` (K-shot accuracy of nearest-prototype classification of
    instance embeddings) when ``episodes`` > 0. A bare encoder gives episodes
    only; ``nm_per_px`` overrides the pitch its embeddings are computed at;
    ``centre_features`` centres each frame's instance embeddings on its
    features' mean (see :func:`instance_embeddings`).
    """
    items = (
        _simulated_items(simulate, count, seed, size_nm, pixels)
        if simulate
        else _sidecar_items(list(data))
    )
    totals: dict[str, ClassScore] = {c: ClassScore() for c in model.classes}
    inter = dict.fromkeys(model.classes, 0)
    union = dict.fromkeys(model.classes, 0)
    vectors, labels = [], []
    n_images = 0
    truth_classes: tuple[str, ...] = ()
    for source, scan, mask, truth, classes in items:
        truth_classes = tuple(classes)
        frame = scan.frame(channel, "forward")
        if model.has_head:
            seg = model.segment(frame, min_score=min_score)
            scores = object_scores(seg.detections, truth, model.classes, max_dist_nm=max_dist_nm)
            for name, score in scores.items():
                totals[name].add(score)
            # Pixel IoU by class name (the truth's class order may differ from the model's).
            remap = np.zeros(len(classes) + 1, np.uint8)
            for k, name in enumerate(classes, start=1):
                if name in model.classes:
                    remap[k] = model.classes.index(name) + 1
            for k, (i, u) in pixel_iou(seg.class_map, remap[mask], len(model.classes)).items():
                inter[model.classes[k - 1]] += i
                union[model.classes[k - 1]] += u
            log.info("%s: %d detections", source, len(seg.detections))
        if episodes:
            pitch = nm_per_px or model.info.nm_per_px
            embedding, prepared = model.embed(frame, nm_per_px=pitch)
            small = to_model_grid(mask, prepared.shape, nm_per_px=frame.nm_per_px, target_nm_per_px=pitch)
            v, c = instance_embeddings(embedding, small, centre=centre_features)
            vectors.append(v)
            labels.append(c)
        n_images += 1
    missing = [c for c in model.classes if c not in truth_classes]
    report: dict[str, Any] = {
        "model": {"id": model.id, "name": model.name, "path": str(model.path)},
        "images": n_images,
        "max_dist_nm": max_dist_nm,
        "objects": {c: s.to_dict() for c, s in totals.items()},
        "pixel_iou": {c: round(inter[c] / union[c], 4) if union[c] else None for c in model.classes},
        "classes_without_truth": missing,
    }
    if episodes and vectors:
        allv, allc = np.concatenate(vectors), np.concatenate(labels)
        report["episodes"] = {}
        report["episodes_frame_centred"] = centre_features
        for k in shots:
            try:
                res = run_episodes(allv, allc, shots=k, queries=queries, episodes=episodes, seed=seed)
            except ValueError as exc:
                report["episodes"][f"{k}-shot"] = {"error": str(exc)}
                continue
            report["episodes"][f"{k}-shot"] = res.to_dict()
    return report


#: Per-class logit offsets :func:`calibrate_detection` tries (coordinate ascent over the classes).
OFFSET_GRID = (-2.4, -1.8, -1.2, -0.9, -0.6, -0.3, 0.0, 0.3, 0.6, 0.9, 1.2, 1.8, 2.4)


def calibrate_detection(
    model: SegmentationModel,
    *,
    simulate: str,
    count: int = 6,
    seed: int = 50_000,
    size_nm: float = 50.0,
    pixels: int = 512,
    max_dist_nm: float = 0.5,
    class_offsets: bool = False,
    passes: int = 2,
) -> dict[str, Any]:
    """Per-class score and area thresholds (and class offsets) that maximise object F1 on validation frames.

    Every candidate region (no thresholds) of fresh simulated frames is
    matched one to one to the truth; for each class, the pair (minimum mean
    probability, minimum area) with the best F1 over a grid is kept. Use
    seeds that the final evaluation does not use.

    With ``class_offsets``, a logit offset per class (added to the logits of
    every prototype of the class, background fixed at 0: a prior that moves
    the boundaries between the classes and the background) is chosen too, by
    coordinate ascent over :data:`OFFSET_GRID` (``passes`` rounds over the
    classes), maximising the mean over the classes of their best F1. Retrained
    models put these boundaries in different places (docs/model.md, the spread
    over seeds); calibrating them on the same frames narrows the spread.

    Returns ``{"min_score": {class: p}, "min_area_nm2": {class: a},
    "calibration": {...}}``, the form of :attr:`ModelInfo.detection`;
    ``calibration["class_offsets"]`` (with ``class_offsets``) holds the
    offsets to add to the model's prototypes (:func:`with_class_offsets`)
    for the thresholds to hold.
    """
    from .format import PROBS_NAME

    frames = []
    n_true = dict.fromkeys(model.classes, 0)
    for _source, scan, _mask, truth, _classes in _simulated_items(simulate, count, seed, size_nm, pixels):
        frame = scan.frame("Z", "forward")
        image, _ = model.prepare(frame)
        truth_of = {c: np.asarray([(t.x_nm, t.y_nm) for t in truth if t.class_name == c], float).reshape(-1, 2)
                    for c in model.classes}
        for c in model.classes:
            n_true[c] += len(truth_of[c])
        frames.append((model.run(image)[PROBS_NAME][0], frame, truth_of))

    def candidates(offsets: tuple[float, ...]) -> dict[str, np.ndarray]:
        # (score, area, matched) of every candidate region, per class
        factor = np.exp(np.asarray(offsets, np.float32))[:, None, None]
        out: dict[str, list[tuple[float, float, bool]]] = {c: [] for c in model.classes}
        for probs, frame, truth_of in frames:
            if any(offsets):
                probs = probs.copy()
                probs[1:] *= factor
                probs /= probs.sum(axis=0, keepdims=True)
            for name in model.classes:
                dets = [d for d in model.detect(probs, frame, min_score=0.0, min_area_nm2=0.0) if d.class_name == name]
                true = truth_of[name]
                matched = np.zeros(len(dets), bool)
                if dets and len(true):
                    p = np.array([(d.x_nm, d.y_nm) for d in dets])
                    d2 = np.sqrt(((p[:, None] - true[None]) ** 2).sum(axis=2))
                    rows, cols = linear_sum_assignment(np.where(d2 <= max_dist_nm, d2, 1e6))
                    matched[rows[d2[rows, cols] <= max_dist_nm]] = True
                out[name].extend((d.score, d.area_nm2, bool(m)) for d, m in zip(dets, matched, strict=True))
        return {c: np.asarray(v, float).reshape(-1, 3) for c, v in out.items()}

    def thresholds(offsets: tuple[float, ...]) -> dict[str, tuple[float, float, float | None]]:
        # per class (best F1, min score, min area)
        best_of: dict[str, tuple[float, float, float | None]] = {}
        for name, arr in candidates(offsets).items():
            if n_true[name] == 0:  # nothing to score the class on
                best_of[name] = (0.5, 0.0, None)
                continue
            if not len(arr):  # features of the class, none found: F1 0, not a class left out
                best_of[name] = (0.5, 0.0, 0.0)
                continue
            score, area, ok = arr[:, 0], arr[:, 1], arr[:, 2] > 0
            true_areas = area[ok]
            area_grid = np.unique(np.concatenate([[0.0], np.quantile(true_areas, [0.0, 0.02, 0.05, 0.1])
                                                  if len(true_areas) else [0.0], np.linspace(0, 0.5, 11)]))
            best = (-1.0, 0.5, 0.0)
            for s_t in np.arange(0.3, 0.96, 0.05):
                for a_t in area_grid:
                    keep = (score >= s_t) & (area >= a_t)
                    tp = int((keep & ok).sum())
                    fp = int((keep & ~ok).sum())
                    f1 = 2 * tp / (2 * tp + fp + (n_true[name] - tp)) if n_true[name] + fp else 0.0
                    if f1 > best[0] + 1e-9:
                        best = (f1, float(s_t), float(a_t))
            best_of[name] = (round(best[1], 3), round(best[2], 4), round(best[0], 4))
        return best_of

    def objective(result: dict[str, tuple[float, float, float | None]]) -> float:
        scored = [f1 for _, _, f1 in result.values() if f1 is not None]
        return float(np.mean(scored)) if scored else 0.0

    offsets = tuple(0.0 for _ in model.classes)
    result = thresholds(offsets)
    if class_offsets:
        tried = {offsets: objective(result)}
        for _ in range(passes):
            for k in range(len(offsets)):
                for value in OFFSET_GRID:
                    candidate = (*offsets[:k], float(value), *offsets[k + 1:])
                    if candidate in tried:
                        continue
                    trial = thresholds(candidate)
                    tried[candidate] = objective(trial)
                    if tried[candidate] > objective(result) + 1e-9:
                        offsets, result = candidate, trial
        log.info("calibrated class offsets %s (mean validation F1 %.4f; %.4f without)",
                 dict(zip(model.classes, offsets, strict=True)), objective(result), tried[(0.0,) * len(offsets)])
    calibration: dict[str, Any] = {"frames": count, "seed": seed, "size_nm": size_nm, "pixels": pixels,
                                   "validation_f1": {c: r[2] for c, r in result.items()}, "max_dist_nm": max_dist_nm}
    if class_offsets:
        calibration["class_offsets"] = dict(zip(model.classes, offsets, strict=True))
    return {
        "min_score": {c: r[0] for c, r in result.items()},
        "min_area_nm2": {c: r[1] for c, r in result.items()},
        "calibration": calibration,
    }
