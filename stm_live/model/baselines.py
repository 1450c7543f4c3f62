"""The simplest detectors that could work, to measure the learned model against.

Both work on the levelled image, smoothed and divided by a robust spread
(1.4826 x MAD), one detector per class and contrast (bright or dark
features), with parameters tuned on labelled data that is not scored:

* :func:`threshold_detect`: connected regions above ``+t`` (bright) or below
  ``-t`` (dark) of at least ``min_area_nm2``; one detection per region, at its
  weighted centroid;
* :func:`log_detect`: a Laplacian-of-Gaussian blob detector: local maxima of
  the scale-normalised response ``-s^2 LoG_s`` (negated for dark features)
  over a few scales, above ``t``, at least ``min_distance_nm`` apart.

:func:`threshold_mask` is the dense version of the first (a mask, no
instances), for Dice against a dense mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..frame import Detection

__all__ = ["log_detect", "standardise", "threshold_detect", "threshold_mask"]


def standardise(levelled: np.ndarray, sigma_px: float = 0.0) -> np.ndarray:
    """Smoothed image less its median, over 1.4826 x MAD (float64)."""
    z = np.asarray(levelled, np.float64)
    if sigma_px > 0:
        z = ndimage.gaussian_filter(z, sigma_px)
    z = z - np.median(z)
    mad = 1.4826 * float(np.median(np.abs(z)))
    return z / (mad if mad > 0 else 1.0)


def threshold_mask(levelled: np.ndarray, threshold: float, *, sigma_px: float = 0.0, bright: bool = True) -> np.ndarray:
    """Pixels above ``threshold`` (bright) or below ``-threshold`` (dark) of :func:`standardise`.

    >>> threshold_mask(np.array([[0.0, 0, 5], [0, 0, 0], [1, 0, 0]]), 3.0).astype(int).tolist()
    [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    """
    z = standardise(levelled, sigma_px)
    return z > threshold if bright else z < -threshold


def threshold_detect(
    levelled: np.ndarray,
    nm_per_px: tuple[float, float],
    class_name: str,
    *,
    threshold: float,
    sigma_px: float = 1.0,
    bright: bool = True,
    min_area_nm2: float = 0.0,
) -> list[Detection]:
    """Connected regions of :func:`threshold_mask` as detections of ``class_name``."""
    z = standardise(levelled, sigma_px) * (1 if bright else -1)
    member = z > threshold
    labels, n = ndimage.label(member, structure=np.ones((3, 3), bool))
    if not n:
        return []
    index = np.arange(1, n + 1)
    weight = np.clip(z, 0, None)
    mass = ndimage.sum(weight, labels, index)
    count = ndimage.sum(member, labels, index)
    cy = ndimage.sum(weight * np.arange(z.shape[0])[:, None], labels, index) / np.maximum(mass, 1e-12)
    cx = ndimage.sum(weight * np.arange(z.shape[1])[None, :], labels, index) / np.maximum(mass, 1e-12)
    px_area = nm_per_px[0] * nm_per_px[1]
    out = []
    for x, y, c, m in zip(cx, cy, count, mass, strict=True):
        area = float(c) * px_area
        if area >= min_area_nm2:
            out.append(Detection(class_name, float((x + 0.5) * nm_per_px[0]), float((y + 0.5) * nm_per_px[1]),
                                 area, float(m / max(c, 1))))
    return out


def log_detect(
    levelled: np.ndarray,
    nm_per_px: tuple[float, float],
    class_name: str,
    *,
    threshold: float,
    sigmas_nm: Sequence[float] = (0.2, 0.3, 0.45, 0.65),
    bright: bool = True,
    min_distance_nm: float = 0.6,
) -> list[Detection]:
    """Laplacian-of-Gaussian blobs: local maxima over space and scale of ``-s^2 LoG_s`` above ``threshold``.

    The image is standardised first (:func:`standardise`), so ``threshold`` is
    in units of the image's robust spread.

    >>> yy, xx = np.mgrid[:40, :40]
    >>> img = np.exp(-((yy - 20) ** 2 + (xx - 12) ** 2) / 8.0) + 0.01 * np.sin(xx)
    >>> [(round(d.x_nm, 2), round(d.y_nm, 2)) for d in log_detect(img, (0.1, 0.1), "b", threshold=1.0)]
    [(1.25, 2.05)]
    """
    z = standardise(levelled) * (1 if bright else -1)
    px = float(np.sqrt(nm_per_px[0] * nm_per_px[1]))
    stack = np.stack([-(s / px) ** 2 * ndimage.gaussian_laplace(z, s / px) for s in sigmas_nm])
    best = stack.max(axis=0)
    size = max(3, int(2 * round(min_distance_nm / px / 2) + 1))
    peaks = (best == ndimage.maximum_filter(best, size=size)) & (best > threshold)
    rows, cols = np.nonzero(peaks)
    scale = np.asarray(sigmas_nm)[stack[:, rows, cols].argmax(axis=0)] if len(rows) else np.array([])
    return [
        Detection(class_name, float((c + 0.5) * nm_per_px[0]), float((r + 0.5) * nm_per_px[1]),
                  float(2 * np.pi * s**2), float(best[r, c]))
        for r, c, s in zip(rows, cols, scale, strict=True)
    ]
