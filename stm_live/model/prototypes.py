"""Few-shot adaptation without training: prototypes from a few labelled pixels.

A class's prototype is the mean embedding of the pixels labelled with it. The
background (terraces, rows, step edges, unlabelled clutter) is too varied for
one vector, so it gets several prototypes, found by k-means over background
pixels. The head's temperature is chosen to maximise the likelihood of the
labelled pixels, so scores stay roughly calibrated on the new surface.

Labels come from a person in one of two ways (see ``stm-live adapt``):

* a mask at the image's grid (0 = background, k = k-th class name), or
* points clicked on features (``x_nm, y_nm, class``): a disc around each
  point is labelled with its class. Pixels far from every point are
  background candidates; since a handful of points leaves most features
  unlabelled, candidates whose embedding lies as close to a labelled class as
  that class's own pixels do, or closer to a class than to the typical
  background, are not used as background.

Feature centring (:func:`feature_centring`, ``stm-live adapt --centre-features``)
also stores each class prototype relative to the mean embedding of the
labelled image's features, so that the head can centre every frame on its own
features' mean (``stm_live.model.format``): on simulated Si(001) frames that
lifted the leave-one-surface-out episodes by about 2 points (``docs/model.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2

from ..errors import AdaptError
from .format import FeatureCentring, Prototypes

__all__ = [
    "UNLABELLED",
    "LabelledImage",
    "Point",
    "feature_centring",
    "first_stage_features",
    "fit_temperature",
    "head_probabilities",
    "labels_from_points",
    "prototypes_from_labels",
    "refine_prototypes",
]

log = logging.getLogger(__name__)

#: Label value of pixels that say nothing (neither a class nor background).
UNLABELLED = -1
_MAX_PIXELS = 40_000


@dataclass(frozen=True)
class Point:
    """A feature a person clicked: centre in nm from the image's top-left corner."""

    x_nm: float
    y_nm: float
    class_name: str


@dataclass(frozen=True)
class LabelledImage:
    """One image's embeddings with its labels on the same grid.

    ``embedding`` is ``(D, h, w)``; ``labels`` ``(h, w)`` int with
    :data:`UNLABELLED`, 0 (background) or k (``classes[k - 1]``).
    """

    embedding: np.ndarray
    labels: np.ndarray


def labels_from_points(
    points: Sequence[Point],
    classes: Sequence[str],
    *,
    shape: tuple[int, int],
    nm_per_px: tuple[float, float],
    radius_nm: float = 0.4,
    background_margin_nm: float = 1.2,
) -> np.ndarray:
    """Label discs around points; pixels far from every point become background.

    Parameters
    ----------
    points : sequence of Point
        Class ``"background"`` marks a background example explicitly.
    classes : sequence of str
        Class names; each point's class must be one of them (or "background").
    shape : tuple of int
        ``(h, w)`` of the grid the labels are for.
    nm_per_px : tuple of float
        ``(x, y)`` pitch of that grid, nm.
    radius_nm : float
        Radius of the labelled disc around a feature point, nm.
    background_margin_nm : float
        Pixels at least this far from every feature point are background
        candidates (explicit background points override this).

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` int16 labels.

    Examples
    --------
    >>> lab = labels_from_points([Point(1.0, 1.0, "DB")], ["DB"], shape=(8, 8), nm_per_px=(0.25, 0.25),
    ...                          radius_nm=0.3, background_margin_nm=1.0)
    >>> int((lab == 1).sum()), int((lab == 0).sum()) > 0, int(lab[4, 4])
    (4, True, 1)
    """
    h, w = shape
    px_x, px_y = nm_per_px
    index = {name: k for k, name in enumerate(classes, start=1)}
    labels = np.full(shape, UNLABELLED, np.int16)
    yy = (np.arange(h)[:, None] + 0.5) * px_y
    xx = (np.arange(w)[None, :] + 0.5) * px_x
    nearest_feature = np.full(shape, np.inf)
    for p in points:
        if p.class_name == "background":
            continue
        if p.class_name not in index:
            raise AdaptError(f"point at ({p.x_nm}, {p.y_nm}) nm has class {p.class_name!r}, not one of {list(classes)}")
        d2 = (xx - p.x_nm) ** 2 + (yy - p.y_nm) ** 2
        np.minimum(nearest_feature, d2, out=nearest_feature)
    labels[nearest_feature >= background_margin_nm**2] = 0
    for p in points:
        d2 = (xx - p.x_nm) ** 2 + (yy - p.y_nm) ** 2
        disc = d2 <= radius_nm**2
        if not disc.any():  # a radius below the pitch still labels the pixel under the point
            r = min(max(int(p.y_nm / px_y), 0), h - 1)
            c = min(max(int(p.x_nm / px_x), 0), w - 1)
            disc = np.zeros(shape, bool)
            disc[r, c] = True
        labels[disc] = 0 if p.class_name == "background" else index[p.class_name]
    return labels


def _subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= limit else x[rng.choice(len(x), limit, replace=False)]


def fit_temperature(vectors: np.ndarray, labels: Sequence[int], pixels: np.ndarray, pixel_labels: np.ndarray) -> float:
    """Temperature maximising the likelihood of labelled pixels under the head.

    ``vectors`` ``(M, D)`` prototypes with class ``labels``; ``pixels``
    ``(P, D)`` embeddings with classes ``pixel_labels``. Searched on a log grid.
    """
    d2 = ((pixels[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2)  # (P, M)
    proto_labels = np.asarray(labels)
    n_classes = int(proto_labels.max()) + 1
    best_t, best_ll = 1.0, -np.inf
    scale = float(np.median(d2.min(axis=1))) + 1e-6
    for t in scale * np.geomspace(0.05, 50, 41):
        logits = -d2 / t
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        class_p = np.zeros((len(pixels), n_classes))
        for k in range(n_classes):
            class_p[:, k] = p[:, proto_labels == k].sum(axis=1)
        ll = float(np.log(class_p[np.arange(len(pixels)), pixel_labels] + 1e-9).mean())
        if ll > best_ll:
            best_t, best_ll = float(t), ll
    return best_t


def head_probabilities(embedding: np.ndarray, prototypes: Prototypes) -> np.ndarray:
    """Class probabilities ``(C + 1, N)`` of embeddings ``(D, N)`` under the (uncentred) head, in float64."""
    e = embedding.astype(np.float64)
    p = prototypes.vectors.astype(np.float64)
    logits = (2.0 * p @ e - (p**2).sum(axis=1)[:, None]) / prototypes.temperature
    if prototypes.offsets is not None:
        logits += prototypes.offsets.astype(np.float64)[:, None]
    logits -= logits.max(axis=0, keepdims=True)
    x = np.exp(logits)
    labels = np.asarray(prototypes.labels)
    out = np.stack([x[labels == k].sum(axis=0) for k in range(prototypes.n_classes)])
    return out / out.sum(axis=0, keepdims=True)


def first_stage_features(embedding: np.ndarray, prototypes: Prototypes) -> np.ndarray:
    """Where the head's first (uncentred) stage finds features: background probability below 0.5.

    ``embedding`` is ``(D, h, w)``; returns a boolean ``(h, w)`` map. The same
    rule as the ONNX head (``stm_live.model.format``), in float64.
    """
    d, h, w = embedding.shape
    e = embedding.reshape(d, -1).astype(np.float64)
    p = prototypes.vectors.astype(np.float64)
    logits = (2.0 * p @ e - (p**2).sum(axis=1)[:, None]) / prototypes.temperature  # (M, h*w)
    if prototypes.offsets is not None:
        logits += prototypes.offsets.astype(np.float64)[:, None]
    logits -= logits.max(axis=0, keepdims=True)
    x = np.exp(logits)
    background = x[np.asarray(prototypes.labels) == 0].sum(axis=0) / x.sum(axis=0)
    return (background < 0.5).reshape(h, w)


def feature_centring(
    images: Sequence[LabelledImage], prototypes: Prototypes, *, prior_px: float = 256.0
) -> FeatureCentring:
    """The centring of a head made from ``images``: centred class prototypes and the mean feature embedding.

    Each image's feature mean is taken where the uncentred head finds
    features (:func:`first_stage_features`), as the head does on a new frame;
    where it finds none, over the image's labelled feature pixels. Class k's
    centred prototype is its prototype less the mean of those image means,
    weighted by how many of k's labelled pixels each image has.
    """
    means, weights = [], []
    for im in images:
        found = first_stage_features(im.embedding, prototypes)
        if not found.any():
            found = im.labels > 0
        flat = im.embedding.reshape(im.embedding.shape[0], -1)
        means.append(flat[:, found.reshape(-1)].astype(np.float64).mean(axis=1))
        weights.append(int(found.sum()))
    stacked = np.stack(means)
    n_classes = prototypes.n_classes - 1
    centred = np.empty((n_classes, stacked.shape[1]))
    for k in range(1, n_classes + 1):
        rows = [i for i, lab in enumerate(prototypes.labels) if lab == k]
        if len(rows) != 1:
            raise AdaptError(f"feature centring needs one prototype per class; class {k} has {len(rows)}")
        counts = np.array([(im.labels == k).sum() for im in images], np.float64)
        if counts.sum() == 0:
            counts = np.ones(len(images))
        centred[k - 1] = prototypes.vectors[rows[0]] - (counts[:, None] * stacked).sum(axis=0) / counts.sum()
    feature_mean = (np.asarray(weights, np.float64)[:, None] * stacked).sum(axis=0) / max(sum(weights), 1)
    return FeatureCentring(centred, feature_mean, prior_px)


def prototypes_from_labels(
    images: Sequence[LabelledImage],
    n_classes: int,
    *,
    n_background: int = 4,
    seed: int = 0,
    exclude_lookalikes: bool = True,
    per_class: int = 1,
) -> Prototypes:
    """Prototypes (one per class, ``n_background`` for background) from labelled images.

    Parameters
    ----------
    images : sequence of LabelledImage
        Embeddings and labels; any number of images (one is enough).
    n_classes : int
        Number of feature classes C (labels 1..C); each needs labelled pixels.
    n_background : int
        Background prototypes (k-means clusters).
    seed : int
        Seed of the k-means initialisation and pixel subsampling.
    exclude_lookalikes : bool
        Drop background pixels that are as close to a class prototype as
        that class's own labelled pixels (unlabelled features).
    per_class : int
        Prototypes per feature class: more than one (k-means over the class's
        pixels) when a dense mask gives enough pixels (50 per prototype).

    Raises
    ------
    AdaptError
        A class has no labelled pixel, or there is no background.
    """
    rng = np.random.default_rng(seed)
    emb = np.concatenate([im.embedding.reshape(im.embedding.shape[0], -1).T for im in images])
    lab = np.concatenate([im.labels.reshape(-1) for im in images])
    vectors: list[np.ndarray] = []
    proto_labels: list[int] = []
    radii: list[float] = []
    for k in range(1, n_classes + 1):
        pix = emb[lab == k]
        if len(pix) == 0:
            raise AdaptError(f"class {k} has no labelled pixel: every class needs at least one example")
        centre = pix.mean(axis=0)
        vectors.append(centre)
        proto_labels.append(k)
        radii.append(float(np.quantile(((pix - centre) ** 2).sum(axis=1), 0.95)) if len(pix) > 1 else 0.0)
    extra: list[np.ndarray] = []
    extra_labels: list[int] = []
    if per_class > 1:
        for k in range(1, n_classes + 1):
            pix = _subsample(emb[lab == k], _MAX_PIXELS, rng)
            m = min(per_class, len(pix) // 50)
            if m > 1:
                centres, _ = kmeans2(pix.astype(np.float64), m, minit="++", seed=rng)
                extra.extend(centres)
                extra_labels.extend([k] * m)
        if extra:  # the class means give way to the clusters of the classes that have them
            clustered = set(extra_labels)
            keep = [i for i, label in enumerate(proto_labels) if label not in clustered]
            vectors = [vectors[i] for i in keep] + list(extra)
            proto_labels = [proto_labels[i] for i in keep] + extra_labels
            radii = [radii[i] for i in keep] + [0.0] * len(extra)
    background = emb[lab == 0]
    # A large labelled region gives far more background pixels than k-means and the
    # temperature need; a seeded sample keeps the look-alike test below cheap.
    background = _subsample(background, 4 * _MAX_PIXELS, rng)
    if exclude_lookalikes and len(background) and vectors:
        # A background candidate is an unlabelled feature when it lies as close to a
        # class prototype as that class's own pixels do, or closer to a class
        # prototype than to the typical background embedding (the median).
        centres = np.stack(vectors)
        d2 = ((background[:, None, :] - centres[None]) ** 2).sum(axis=2)
        typical = ((background - np.median(background, axis=0)) ** 2).sum(axis=1)
        lookalike = (d2 <= np.maximum(np.asarray(radii), 1e-9)[None]).any(axis=1) | (d2.min(axis=1) < typical)
        if lookalike.mean() < 0.5:  # never throw away most of the background
            log.info("adapt: %d of %d background pixels look like a labelled class; not used as background",
                     int(lookalike.sum()), len(background))
            background = background[~lookalike]
    if len(background) == 0:
        raise AdaptError("no background pixels: label some background (mask value 0, or points far from features)")
    background = _subsample(background, _MAX_PIXELS, rng)
    k_bg = max(1, min(n_background, len(background)))
    if k_bg == 1:
        bg_centres = background.mean(axis=0, keepdims=True)
    else:
        bg_centres, _ = kmeans2(background.astype(np.float64), k_bg, minit="++", seed=rng)
    vectors.extend(bg_centres)
    proto_labels.extend([0] * len(bg_centres))
    vec = np.stack(vectors).astype(np.float32)
    # Calibrate on a balanced sample of labelled pixels.
    sample_x, sample_y = [], []
    per_class = 2000
    for k in range(n_classes + 1):
        pix = background if k == 0 else emb[lab == k]
        pix = _subsample(pix, per_class, rng)
        sample_x.append(pix)
        sample_y.append(np.full(len(pix), k))
    temperature = fit_temperature(vec, proto_labels, np.concatenate(sample_x), np.concatenate(sample_y))
    return Prototypes(vec, tuple(proto_labels), temperature)


def refine_prototypes(
    prototypes: Prototypes,
    images: Sequence[LabelledImage],
    *,
    steps: int = 100,
    lr: float = 0.05,
    seed: int = 0,
) -> Prototypes:
    """Short fine-tuning of the head: move prototypes to lower the labelled pixels' cross-entropy.

    The encoder stays fixed (no torch needed); only the prototype vectors
    move, by Adam on the class-balanced cross-entropy of a sample of labelled
    pixels, and the temperature is refitted afterwards. Use it when the mean
    embeddings alone confuse two classes.
    """
    rng = np.random.default_rng(seed)
    emb = np.concatenate([im.embedding.reshape(im.embedding.shape[0], -1).T for im in images]).astype(np.float64)
    lab = np.concatenate([im.labels.reshape(-1) for im in images])
    labels = np.asarray(prototypes.labels)
    n_classes = prototypes.n_classes
    xs, ys = [], []
    for k in range(n_classes):
        pix = emb[lab == k]
        if len(pix):
            pix = _subsample(pix, 3000, rng)
            xs.append(pix)
            ys.append(np.full(len(pix), k))
    x, y = np.concatenate(xs), np.concatenate(ys)
    weight = 1.0 / np.bincount(y, minlength=n_classes)[y]
    weight /= weight.sum()
    member = labels[None, :] == y[:, None]  # (P, M): prototype belongs to the pixel's class
    v = prototypes.vectors.astype(np.float64).copy()
    t = prototypes.temperature
    m1 = np.zeros_like(v)
    m2 = np.zeros_like(v)
    for i in range(1, steps + 1):
        d2 = ((x[:, None, :] - v[None]) ** 2).sum(axis=2)
        z = -d2 / t
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p_class = (p * member).sum(axis=1, keepdims=True)
        g_logit = (p - p * member / np.maximum(p_class, 1e-12)) * weight[:, None]  # (P, M)
        # d logit_m / d v_m = 2 (x - v_m) / t
        grad = (2.0 / t) * (g_logit.T @ x - g_logit.sum(axis=0)[:, None] * v)
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad**2
        step = lr * (m1 / (1 - 0.9**i)) / (np.sqrt(m2 / (1 - 0.999**i)) + 1e-8)
        v -= step * np.sqrt(t)
    temperature = fit_temperature(v, prototypes.labels, x, y)
    return Prototypes(v.astype(np.float32), prototypes.labels, temperature)
