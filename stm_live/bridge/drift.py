"""Drift between two frames, by cross-correlating their overlap. Pure.

Between two frames the sample creeps under the scanner (thermal drift,
piezo creep), so a feature found at one place in a frame is somewhere else
by the time the next frame is scanned. :func:`measure_drift` finds how far:
the previous frame is resampled onto the current frame's pixels through
both frames' geometry (centre, size, angle: the two need not be the same
window, a zoom or a move is fine), both are levelled, and the largest
rectangle they share is phase-correlated. The result is the sample's
displacement in controller coordinates (metres) and the strength of the
correlation peak, so that a caller can ignore a doubtful measurement.

:class:`DriftTracker` keeps the drift velocity from successive frames, to
predict where a feature will be when the next frame reaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .geometry import ScanFrame

__all__ = ["Drift", "DriftTracker", "measure_drift"]


@dataclass(frozen=True)
class Drift:
    """Displacement of the sample between two frames.

    Attributes
    ----------
    dx_m, dy_m : float
        Where a point of the sample seen in the first frame is in the second,
        minus where it was: controller coordinates, metres.
    peak : float
        Height of the correlation peak over the mean of the correlation
        surface's largest values elsewhere (about 1 for noise; a clear match
        is well above 3).
    overlap : float
        Fraction of the second frame's pixels that the first frame also covers.
    """

    dx_m: float
    dy_m: float
    peak: float
    overlap: float

    @property
    def reliable(self) -> bool:
        """A clear peak over a useful overlap."""
        return self.peak >= 3.0 and self.overlap >= 0.2


def _level(image: np.ndarray) -> np.ndarray:
    """Rows to a common median, then a plane removed; NaN -> 0."""
    a = np.array(image, dtype=np.float64)
    a -= np.nanmedian(a, axis=1, keepdims=True)
    rows, cols = a.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    ok = np.isfinite(a)
    if ok.sum() > 3:
        design = np.stack([np.ones(ok.sum()), xx[ok], yy[ok]], axis=1)
        coef, *_ = np.linalg.lstsq(design, a[ok], rcond=None)
        a -= coef[0] + coef[1] * xx + coef[2] * yy
    a[~ok] = 0.0
    return a


def _largest_rectangle(mask: np.ndarray) -> tuple[slice, slice]:
    """A large axis-aligned rectangle inside ``mask`` (the bounding box of its rows and columns that are
    entirely covered, shrunk until covered)."""
    rows = np.flatnonzero(mask.mean(axis=1) > 0.98)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.98)
    if rows.size == 0 or cols.size == 0:
        return slice(0, 0), slice(0, 0)
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    while r1 - r0 > 8 and c1 - c0 > 8 and not mask[r0:r1, c0:c1].all():
        r0, r1, c0, c1 = r0 + 1, r1 - 1, c0 + 1, c1 - 1
    return slice(r0, r1), slice(c0, c1)


def _subpixel(c: np.ndarray, k: int, axis: int) -> float:
    n = c.shape[axis]
    other = [int(i) for i in np.unravel_index(int(np.argmax(c)), c.shape)]
    vals = []
    for d in (-1, 0, 1):
        idx = list(other)
        idx[axis] = (k + d) % n
        vals.append(float(c[tuple(idx)]))
    denom = vals[0] - 2 * vals[1] + vals[2]
    return 0.0 if denom == 0 else 0.5 * (vals[0] - vals[2]) / denom


def measure_drift(first: np.ndarray, first_frame: ScanFrame, second: np.ndarray, second_frame: ScanFrame,
                  *, max_shift_fraction: float = 0.25) -> Drift:
    """How far the sample moved between two frames.

    Parameters
    ----------
    first, second : numpy.ndarray
        ``(rows, cols)`` images (display order, any unit; NaN where not scanned).
    first_frame, second_frame : ScanFrame
        Their scan frames.
    max_shift_fraction : float
        Largest shift searched, as a fraction of the shared rectangle's side.

    Returns
    -------
    Drift
        ``peak`` 0 and no displacement when the frames do not overlap.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> img = ndimage.gaussian_filter(rng.standard_normal((96, 96)), 2)
    >>> f = ScanFrame((0.0, 0.0), 96e-9, 96e-9)
    >>> moved = np.roll(img, (3, -5), axis=(0, 1))   # features 5 px left, 3 px down
    >>> d = measure_drift(img, f, moved, f)
    >>> abs(d.dx_m * 1e9 + 5) < 0.2, abs(d.dy_m * 1e9 + 3) < 0.2, d.reliable
    (True, True, True)
    """
    rows, cols = second.shape
    x_m, y_m = second_frame.pixel_centres(rows, cols)
    fx, fy = first_frame.controller_to_image(x_m, y_m)
    r1, c1 = first.shape
    pr = np.asarray(fy) / (first_frame.height_m * 1e9 / r1) - 0.5
    pc = np.asarray(fx) / (first_frame.width_m * 1e9 / c1) - 0.5
    inside = (pr >= 0) & (pr <= r1 - 1) & (pc >= 0) & (pc <= c1 - 1)
    a_lev = _level(first)
    resampled = ndimage.map_coordinates(a_lev, [pr, pc], order=1, mode="constant", cval=0.0)
    valid = inside & np.isfinite(second)
    overlap = float(valid.mean())
    rs, cs = _largest_rectangle(valid)
    h, w = rs.stop - rs.start, cs.stop - cs.start
    if h < 16 or w < 16:
        return Drift(0.0, 0.0, 0.0, overlap)
    a = resampled[rs, cs]
    b = _level(second[rs, cs])
    win = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fb * np.conj(fa)
    cross /= np.maximum(np.abs(cross), 1e-30)
    corr = np.fft.ifft2(cross).real
    max_r = max(1, int(max_shift_fraction * h))
    max_c = max(1, int(max_shift_fraction * w))
    shift_r = (np.arange(h) + h // 2) % h - h // 2
    shift_c = (np.arange(w) + w // 2) % w - w // 2
    allowed = (np.abs(shift_r)[:, None] <= max_r) & (np.abs(shift_c)[None, :] <= max_c)
    masked = np.where(allowed, corr, -np.inf)
    k = int(np.argmax(masked))
    kr, kc = divmod(k, w)
    best = float(corr[kr, kc])
    others = np.sort(np.where(allowed, corr, -np.inf), axis=None)
    others = others[np.isfinite(others)][-50:-5]
    peak = best / max(float(np.mean(np.abs(others))) if others.size else 1e-30, 1e-30)
    dr = shift_r[kr] + _subpixel(corr, kr, 0)
    dc = shift_c[kc] + _subpixel(corr, kc, 1)
    # Content moved dc pixels right and dr down in the second image: along the frame's own axes.
    px_x = second_frame.width_m / cols
    px_y = second_frame.height_m / rows
    u, v = dc * px_x, -dr * px_y
    t = math.radians(second_frame.angle_deg)
    dx = u * math.cos(t) + v * math.sin(t)
    dy = -u * math.sin(t) + v * math.cos(t)
    return Drift(float(dx), float(dy), float(peak), overlap)


class DriftTracker:
    """The drift velocity from successive frames, and where a point will be later.

    Parameters
    ----------
    smoothing : float
        Weight of a new measurement in the running velocity (0..1].
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        self.smoothing = float(smoothing)
        self.velocity_m_s: tuple[float, float] = (0.0, 0.0)
        self.measurements = 0
        self._last: tuple[np.ndarray, ScanFrame, float] | None = None

    def add(self, image: np.ndarray, frame: ScanFrame, t_mid: float) -> Drift | None:
        """A finished frame (its image, frame and the time of its middle line); the drift from the last one."""
        last, self._last = self._last, (image, frame, t_mid)
        if last is None or t_mid <= last[2]:
            return None
        d = measure_drift(last[0], last[1], image, frame)
        if not d.reliable:
            return d
        dt = t_mid - last[2]
        vx, vy = d.dx_m / dt, d.dy_m / dt
        a = self.smoothing if self.measurements else 1.0
        self.velocity_m_s = ((1 - a) * self.velocity_m_s[0] + a * vx, (1 - a) * self.velocity_m_s[1] + a * vy)
        self.measurements += 1
        return d

    def predict(self, x_m: float, y_m: float, dt_s: float) -> tuple[float, float]:
        """Where a sample point at ``(x, y)`` now will be after ``dt_s`` seconds."""
        return x_m + self.velocity_m_s[0] * dt_s, y_m + self.velocity_m_s[1] * dt_s
