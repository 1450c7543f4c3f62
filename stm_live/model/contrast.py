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

__all__ = ["ContrastGate", "feature_contrast"]

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
    """Contrast of the feature at ``(x_nm, y_nm)`` in ``image``'s unit (NaN when its ring is not imaged).

    ``image`` holds the rows from ``row0`` on (``y_nm`` is counted from
    row 0 of the whole frame); ``have_rows`` (one bool per row of ``image``)
    marks the rows acquired so far: others are left out. The image is
    smoothed with a Gaussian of a quarter of ``inner_nm`` within a window
    around the feature only.

    >>> yy, xx = np.mgrid[:40, :40]
    >>> pit = -2.0 * np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 8.0)
    >>> round(feature_contrast(pit, (0.1, 0.1), 2.05, 2.05, bright=False, inner_nm=0.6, outer_nm=1.5), 2)
    1.28

    (a pit 2 deep and 2 px wide, smoothed by 1.5 px: 1.28 deep.)
    """
    px, py = nm_per_px
    rows, cols = image.shape
    reach_x = outer_nm / px + 3
    reach_y = outer_nm / py + 3
    cx, cy = x_nm / px - 0.5, y_nm / py - 0.5 - row0
    r_lo, r_hi = max(int(np.floor(cy - reach_y)), 0), min(int(np.ceil(cy + reach_y)) + 1, rows)
    c_lo, c_hi = max(int(np.floor(cx - reach_x)), 0), min(int(np.ceil(cx + reach_x)) + 1, cols)
    if r_hi <= r_lo or c_hi <= c_lo:
        return float("nan")
    window = np.asarray(image[r_lo:r_hi, c_lo:c_hi], dtype=np.float64)
    have = np.isfinite(window)
    if have_rows is not None:
        have &= np.asarray(have_rows[r_lo:r_hi], bool)[:, None]
    if not have.any():
        return float("nan")
    sigma = (0.25 * inner_nm / py, 0.25 * inner_nm / px)
    weight = ndimage.gaussian_filter(have.astype(np.float64), sigma, mode="nearest")
    smooth = ndimage.gaussian_filter(np.where(have, window, 0.0), sigma, mode="nearest")
    smooth = np.divide(smooth, weight, out=np.full_like(smooth, np.nan), where=weight > 1e-6)
    yy = (np.arange(r_lo, r_hi)[:, None] - cy) * py
    xx = (np.arange(c_lo, c_hi)[None, :] - cx) * px
    d2 = xx**2 + yy**2
    core = (d2 <= inner_nm**2) & have
    ring = (d2 > inner_nm**2) & (d2 <= outer_nm**2) & have
    if not core.any() or not ring.any():
        return float("nan")
    reference = float(np.median(smooth[ring]))
    return float(smooth[core].max() - reference) if bright else float(reference - smooth[core].min())


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
        out = []
        for d in detections:
            rule = self.spec.get(d.class_name)
            if rule is not None and rule.get("unit", unit) != unit:
                if unit not in self._warned:
                    self._warned.add(unit)
                    log.warning("the model's contrast gate was measured on frames in %r, this frame is in %r: "
                                "not applied", rule.get("unit"), unit)
                rule = None
            if rule is None:
                out.append(d)
                continue
            c = feature_contrast(image, nm_per_px, d.x_nm, d.y_nm, bright=bool(rule["bright"]),
                                 inner_nm=float(rule["inner_nm"]), outer_nm=float(rule["outer_nm"]),
                                 row0=row0, have_rows=have_rows)
            if not np.isfinite(c) or c >= float(rule["min"]):
                out.append(d)
        if len(out) < len(detections):  # ids number the detections of one result from 0
            out = [replace(d, id=i) for i, d in enumerate(out)]
        return out
