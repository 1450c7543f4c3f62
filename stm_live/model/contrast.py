"""How far a feature stands out of its surroundings: the contrast gate of adapted models.

A feature's *contrast* is the brightest (bright class) or darkest (dark class)
value of the lightly smoothed, levelled image within ``inner_nm`` of its
centre, against the median of the ring from ``inner_nm`` to ``outer_nm``: a
height (or current) in the frame's own unit. Physical units, not units of the
frame's spread: the spread of a frame depends on what it holds. On 8 simulated
Si(001) frames of one kind, the vacancies' 10th-percentile contrast in units
of the frame's spread ranged over 1.25-2.61, in metres over 0.56-0.67 A.

``stm-live adapt`` measures it at every clicked example and stores a gate per
class (``detection["min_contrast"]`` of the model: a fraction of the faintest
clicked example's contrast, with the class's polarity and radii); a detection
fainter than the gate is not reported. On the real Si(001):H frames the
faint dark dots along the dimer rows are what an adapted model adds beyond
the vacancies a person counts, and they are shallower than every vacancy one
would click (docs/real_eval.md, "The contrast gate").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage

from ..frame import Detection

__all__ = ["ContrastGate", "feature_contrast", "feature_contrasts"]

log = logging.getLogger(__name__)


def feature_contrast(
    image: np.ndarray,
    nm_per_px: tuple[float, float],
    x_nm: float,
    y_nm: float,
    *,
    bright: bool,
    inner_nm: float,
    outer_nm: float,
    row0: int = 0,
    have_rows: np.ndarray | None = None,
) -> float:
    """Contrast of the feature at ``(x_nm, y_nm)`` in ``image``'s unit (NaN when it is not imaged).

    One point of :func:`feature_contrasts`.

    >>> yy, xx = np.mgrid[:40, :40]
    >>> pit = -2.0 * np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 8.0)
    >>> round(feature_contrast(pit, (0.1, 0.1), 2.05, 2.05, bright=False, inner_nm=0.6, outer_nm=1.5), 2)
    1.32

    (a pit 2 deep and 2 px wide, smoothed by 1.5 px: 1.32 deep.)
    """
    return float(feature_contrasts(image, nm_per_px, np.array([x_nm]), np.array([y_nm]), bright=bright,
                                   inner_nm=inner_nm, outer_nm=outer_nm, row0=row0, have_rows=have_rows)[0])


def _disc_offsets(nm_per_px: tuple[float, float], r0_nm: float, r1_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``(drow, dcol)`` of the pixels whose centre lies in ``r0_nm < d <= r1_nm`` of a pixel centre."""
    px, py = nm_per_px
    reach_r, reach_c = int(np.ceil(r1_nm / py)), int(np.ceil(r1_nm / px))
    dr, dc = np.mgrid[-reach_r:reach_r + 1, -reach_c:reach_c + 1]
    d2 = (dr * py) ** 2 + (dc * px) ** 2
    keep = (d2 > r0_nm**2) & (d2 <= r1_nm**2) if r0_nm > 0 else d2 <= r1_nm**2
    return dr[keep], dc[keep]


def feature_contrasts(
    image: np.ndarray,
    nm_per_px: tuple[float, float],
    x_nm: np.ndarray,
    y_nm: np.ndarray,
    *,
    bright: bool,
    inner_nm: float,
    outer_nm: float,
    row0: int = 0,
    have_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Contrast of features centred at ``(x_nm, y_nm)`` (arrays), in ``image``'s unit (NaN: not imaged).

    The extreme is the brightest (``bright``) or darkest value within
    ``inner_nm`` of the centre's pixel after smoothing with a Gaussian of a
    quarter of ``inner_nm``; the reference is the median of the pixels from
    ``inner_nm`` to ``outer_nm`` as they are (a median needs no smoothing).
    ``image`` holds the rows from ``row0`` on (``y_nm`` is counted from row 0
    of the whole frame); ``have_rows`` (one bool per row of ``image``) marks
    the rows acquired so far: other rows, non-finite pixels and pixels outside
    the image are left out. All features at once: their patches are gathered
    by fixed pixel offsets and smoothed in one call (benchmarks/bench_gate.py:
    about 6 ms for 126 features of a 512 x 512 frame).
    """
    shape = _Shape(nm_per_px, inner_nm, outer_nm)
    padded = _Padded(image, have_rows, shape.pad)
    return padded.contrasts(shape, x_nm, y_nm, bright=bright, row0=row0)


# The Gaussian's kernel reaches this many sigmas (scipy's default is 4): the extreme of the core is
# what matters, and 2 sigmas hold 95 % of the weight along each axis.
_TRUNCATE = 2.0


class _Shape:
    """Pixel offsets of a class's ring and core patch at one pitch."""

    def __init__(self, nm_per_px: tuple[float, float], inner_nm: float, outer_nm: float) -> None:
        px, py = nm_per_px
        self.nm_per_px, self.inner_nm = nm_per_px, inner_nm
        dr, dc = _disc_offsets(nm_per_px, inner_nm, outer_nm)
        step = max(1, len(dr) // 512)  # a median of 512 of the ring's pixels is as good as of all
        self.ring = dr[::step], dc[::step]
        self.sigma = (0.25 * inner_nm / py, 0.25 * inner_nm / px)
        reach_r = int(np.ceil(inner_nm / py + _TRUNCATE * self.sigma[0]))
        reach_c = int(np.ceil(inner_nm / px + _TRUNCATE * self.sigma[1]))
        self.patch = np.mgrid[-reach_r:reach_r + 1, -reach_c:reach_c + 1]
        self.core = (self.patch[0] * py) ** 2 + (self.patch[1] * px) ** 2 <= inner_nm**2
        self.pad = max(reach_r, reach_c, int(np.abs(dr).max(initial=0)), int(np.abs(dc).max(initial=0))) + 1


class _Padded:
    """One float32 copy of the image with a NaN border, NaN wherever nothing usable was measured."""

    def __init__(self, image: np.ndarray, have_rows: np.ndarray | None, pad: int) -> None:
        rows, cols = image.shape
        self.rows, self.cols, self.pad = rows, cols, pad
        self.width = cols + 2 * pad
        padded = np.full((rows + 2 * pad, self.width), np.nan, np.float32)
        view = padded[pad:pad + rows, pad:pad + cols]
        view[...] = image
        if have_rows is not None:
            view[~np.asarray(have_rows, bool)] = np.nan
        self.flat = padded.ravel()

    def _gather(self, centre: np.ndarray, dr: np.ndarray, dc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = np.clip(centre[:, None] + (dr * self.width + dc)[None, :], 0, self.flat.size - 1)
        values = self.flat[index]
        ok = np.isfinite(values)
        return np.where(ok, values, np.float32(0.0)), ok

    def contrasts(self, shape: _Shape, x_nm: np.ndarray, y_nm: np.ndarray, *, bright: bool,
                  row0: int = 0) -> np.ndarray:
        px, py = shape.nm_per_px
        out = np.full(len(x_nm), np.nan)
        if not len(x_nm):
            return out
        pad = self.pad
        r = np.clip(np.floor(np.asarray(y_nm) / py).astype(np.int64) - row0, -pad, self.rows + pad - 1)
        c = np.clip(np.floor(np.asarray(x_nm) / px).astype(np.int64), -pad, self.cols + pad - 1)
        centre = (r + pad) * self.width + (c + pad)
        # reference: the ring's median
        ring, ring_ok = self._gather(centre, *shape.ring)
        n_ring = ring_ok.sum(axis=1)
        if ring_ok.all():
            reference = np.median(ring, axis=1)
        else:  # the median of the usable values: unusable ones sort last
            ring = np.sort(np.where(ring_ok, ring, np.inf), axis=1)
            idx = np.arange(len(r))
            lo, hi = np.clip((n_ring - 1) // 2, 0, None), np.clip(n_ring // 2, 0, None)
            reference = 0.5 * (ring[idx, lo] + ring[idx, hi])
        # extreme: the core of each smoothed patch (a patch leaves the Gaussian room around the core)
        dr, dc = shape.patch
        patch, patch_ok = self._gather(centre, dr.ravel(), dc.ravel())
        grid = (len(r), *dr.shape)
        patch, patch_ok = patch.reshape(grid), patch_ok.reshape(grid)
        sigma = (0.0, *shape.sigma)
        smooth = ndimage.gaussian_filter(patch, sigma, mode="nearest", truncate=_TRUNCATE)
        if not patch_ok.all():  # normalised convolution: unusable pixels carry no weight
            weight = ndimage.gaussian_filter(patch_ok.astype(np.float32), sigma, mode="nearest", truncate=_TRUNCATE)
            smooth = np.divide(smooth, weight, out=np.zeros_like(smooth), where=weight > 1e-6)
        core = shape.core[None] & patch_ok
        n_core = core.sum(axis=(1, 2))
        if bright:
            extreme = np.where(core, smooth, -np.inf).max(axis=(1, 2))
        else:
            extreme = np.where(core, smooth, np.inf).min(axis=(1, 2))
        ok = (n_ring > 0) & (n_core > 0)
        out[ok] = extreme[ok] - reference[ok] if bright else reference[ok] - extreme[ok]
        return out


class ContrastGate:
    """The per-class contrast gate stored in a model's ``detection["min_contrast"]``.

    ``spec`` maps a class to ``{"min": gate, "bright": bool, "inner_nm": r1,
    "outer_nm": r2, "unit": unit}``; classes not in it pass, and so do all
    detections of a frame in another unit than the gate's (logged once per
    unit: a gate measured on arrays in nm says nothing about a frame in m).
    """

    def __init__(self, spec: Mapping[str, Mapping[str, Any]] | None) -> None:
        self.spec = {name: dict(v) for name, v in (spec or {}).items()}
        self._warned: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.spec)

    def keep(
        self,
        detections: Sequence[Detection],
        image: np.ndarray,
        nm_per_px: tuple[float, float],
        *,
        unit: str,
        row0: int = 0,
        have_rows: np.ndarray | None = None,
    ) -> list[Detection]:
        """The detections at least as contrasty as their class's gate (unmeasurable ones are kept)."""
        drop = np.zeros(len(detections), bool)
        work: list[tuple[list[int], Mapping[str, Any], _Shape]] = []
        for name, rule in self.spec.items():
            which = [i for i, d in enumerate(detections) if d.class_name == name]
            if not which:
                continue
            if rule.get("unit", unit) != unit:
                if unit not in self._warned:
                    self._warned.add(unit)
                    log.warning("the model's contrast gate was measured on frames in %r, this frame is in %r: "
                                "not applied", rule.get("unit"), unit)
                continue
            work.append((which, rule, _Shape(nm_per_px, float(rule["inner_nm"]), float(rule["outer_nm"]))))
        if work:
            padded = _Padded(image, have_rows, max(shape.pad for _, _, shape in work))
            for which, spec, shape in work:
                values = padded.contrasts(shape, np.array([detections[i].x_nm for i in which]),
                                          np.array([detections[i].y_nm for i in which]),
                                          bright=bool(spec["bright"]), row0=row0)
                drop[which] = np.isfinite(values) & (values < float(spec["min"]))
        if not drop.any():
            return list(detections)
        # ids number the detections of one result from 0
        return [replace(d, id=i) for i, d in enumerate(d for d, gone in zip(detections, drop, strict=True) if not gone)]
