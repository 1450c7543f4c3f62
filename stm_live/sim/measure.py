"""Statistics that compare STM images, real or simulated, on measurable ground.

Used by the simulator's tests and by ``docs/sim_realism.py``: lattice period
and orientation from the Fourier transform (refined far below one FFT bin),
line-to-line offsets, height histograms, and a simple blob count for feature
density. Pure numpy on plain arrays; lengths in nm, heights in whatever unit
the image has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LatticePeak",
    "blob_density",
    "fast_axis_profiles",
    "fit_profile",
    "fourier_component",
    "lattice_peak",
    "level_simple",
    "line_offset_stats",
    "noise_floor",
    "rim_sides",
]


@dataclass(frozen=True)
class LatticePeak:
    """A periodicity of an image: ``period_nm`` along ``angle_deg``, and its amplitude.

    ``angle_deg`` is the direction of the wave vector (perpendicular to the
    rows it describes) from the image x axis, clockwise on screen (y down),
    folded into [0, 180). ``amplitude`` is the sinusoid's amplitude in the
    image's unit.
    """

    period_nm: float
    angle_deg: float
    amplitude: float
    kx: float  # rad/nm
    ky: float  # rad/nm


def _plane_removed(image: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    r, c = np.mgrid[: a.shape[0], : a.shape[1]]
    design = np.stack([np.ones(a.size), r.ravel(), c.ravel()], axis=1)
    w = np.ones(a.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    sel = w > 0
    coef, *_ = np.linalg.lstsq(design[sel] * w[sel, None], a.ravel()[sel] * w[sel], rcond=None)
    return a - (design @ coef).reshape(a.shape)


def level_simple(image: np.ndarray) -> np.ndarray:
    """Plane fit, then each line's median subtracted: the same levelling for real and simulated images.

    Examples
    --------
    >>> a = np.add.outer(np.arange(4.0), np.arange(5.0))
    >>> bool(np.allclose(level_simple(a), 0))
    True
    """
    a = _plane_removed(image)
    return a - np.median(a, axis=1, keepdims=True)


def fourier_component(image: np.ndarray, kx: float, ky: float, *, nm_per_px: float,
                      window: np.ndarray | None = None) -> complex:
    """``sum w h exp(-i k.r) / sum w`` at one wave vector (rad/nm); ``r`` at pixel centres.

    Twice its modulus is the amplitude of a sinusoid of that wave vector.
    """
    a = np.asarray(image, dtype=np.float64)
    w = np.ones_like(a) if window is None else window
    y = (np.arange(a.shape[0]) + 0.5) * nm_per_px
    x = (np.arange(a.shape[1]) + 0.5) * nm_per_px
    return complex(np.exp(-1j * ky * y) @ (a * w) @ np.exp(-1j * kx * x) / w.sum())


def lattice_peak(
    image: np.ndarray,
    *,
    nm_per_px: float,
    min_period_nm: float,
    max_period_nm: float,
    mask: np.ndarray | None = None,
) -> LatticePeak:
    """The strongest periodicity with a period in ``[min_period_nm, max_period_nm]``.

    The image is plane-levelled and Hann-windowed (times ``mask`` if given,
    to measure one terrace), the FFT's strongest peak in the band is found,
    then refined by maximising the windowed Fourier sum around it to a small
    fraction of a bin.

    Examples
    --------
    >>> y, x = np.mgrid[:128, :128] * 0.1
    >>> img = np.cos(2 * np.pi * (x * np.cos(0.5) + y * np.sin(0.5)) / 0.77)
    >>> p = lattice_peak(img, nm_per_px=0.1, min_period_nm=0.5, max_period_nm=2.0)
    >>> round(p.period_nm, 3), round(p.angle_deg, 1)
    (0.77, 28.6)
    """
    a = np.asarray(image, dtype=np.float64)
    rows, cols = a.shape
    window = np.outer(np.hanning(rows), np.hanning(cols))
    if mask is not None:
        window = window * np.asarray(mask, dtype=np.float64)
    a = _plane_removed(a, window)
    a = a - (a * window).sum() / window.sum()
    spec = np.abs(np.fft.fft2(a * window))
    fy = np.fft.fftfreq(rows, d=nm_per_px)[:, None]
    fx = np.fft.fftfreq(cols, d=nm_per_px)[None, :]
    f = np.hypot(fx, fy)
    band = (f >= 1.0 / max_period_nm) & (f <= 1.0 / min_period_nm) & (fx >= 0)
    if not band.any():
        raise ValueError(f"no FFT bin of a {rows} x {cols} image at {nm_per_px} nm/px has a period in "
                         f"[{min_period_nm}, {max_period_nm}] nm")
    i = np.argmax(np.where(band, spec, -1.0))
    ky0 = 2 * np.pi * float(fy.ravel()[i // cols])
    kx0 = 2 * np.pi * float(fx.ravel()[i % cols])
    step_x = 2 * np.pi / (cols * nm_per_px)
    step_y = 2 * np.pi / (rows * nm_per_px)
    y = (np.arange(rows) + 0.5) * nm_per_px
    x = (np.arange(cols) + 0.5) * nm_per_px
    aw = a * window
    best = (kx0, ky0)
    for _ in range(6):
        kxs = best[0] + np.linspace(-1, 1, 9) * step_x
        kys = best[1] + np.linspace(-1, 1, 9) * step_y
        grid = np.abs(np.exp(-1j * np.outer(kys, y)) @ aw @ np.exp(-1j * np.outer(x, kxs)))
        j, k = np.unravel_index(np.argmax(grid), grid.shape)
        best = (float(kxs[k]), float(kys[j]))
        step_x /= 4
        step_y /= 4
    kx, ky = best
    amp = 2 * abs(fourier_component(a, kx, ky, nm_per_px=nm_per_px, window=window))
    kn = math.hypot(kx, ky)
    return LatticePeak(2 * np.pi / kn, math.degrees(math.atan2(ky, kx)) % 180.0, amp, kx, ky)


def line_offset_stats(image: np.ndarray) -> dict[str, float]:
    """Line-to-line offsets of a plane-levelled image: how much each line's median jumps.

    Returns ``{"std", "robust_std", "p99"}`` of the differences between
    consecutive lines' medians, in the image's unit (``robust_std`` is
    1.4826 times the median absolute deviation, blind to rare jumps).
    """
    a = _plane_removed(image)
    d = np.diff(np.median(a, axis=1))
    mad = float(np.median(np.abs(d - np.median(d))))
    return {"std": float(d.std()), "robust_std": 1.4826 * mad, "p99": float(np.percentile(np.abs(d), 99))}


def blob_density(
    image: np.ndarray,
    *,
    nm_per_px: float,
    threshold: float,
    smooth_nm: float = 0.25,
    background_nm: float = 2.0,
    min_area_nm2: float = 0.15,
    max_area_nm2: float = 8.0,
) -> dict[str, float]:
    """Bright and dark blobs per nm^2: a crude, identical feature counter for real and simulated images.

    The levelled image is smoothed (Gaussian ``smooth_nm``) to wash out the
    lattice, its local background (Gaussian ``background_nm``) subtracted,
    and connected regions above ``+threshold`` / below ``-threshold`` with an
    area in ``[min_area_nm2, max_area_nm2]`` counted.
    """
    from scipy import ndimage

    a = level_simple(image)
    fine = ndimage.gaussian_filter(a, smooth_nm / nm_per_px)
    hp = fine - ndimage.gaussian_filter(a, background_nm / nm_per_px)
    px2 = nm_per_px**2
    area_nm2 = a.size * px2
    out: dict[str, float] = {}
    for name, sel in (("bright", hp > threshold), ("dark", hp < -threshold)):
        lab, _n = ndimage.label(sel)
        sizes = np.bincount(lab.ravel())[1:] * px2
        good = int(np.count_nonzero((sizes >= min_area_nm2) & (sizes <= max_area_nm2)))
        out[f"{name}_per_nm2"] = good / area_nm2
    return out


def noise_floor(image: np.ndarray, *, above_cycles_per_px: float = 0.375) -> float:
    """RMS of white noise that would explain the image's spectrum near the Nyquist corners.

    The mean power of the FFT bins whose frequencies along *both* axes
    exceed ``above_cycles_per_px`` (where a lattice rarely has peaks), as the
    standard deviation of white noise with that flat spectrum. An upper
    bound for the true white noise; resampled images read low.
    """
    a = _plane_removed(image)
    spec = np.abs(np.fft.fft2(a)) ** 2
    fy = np.abs(np.fft.fftfreq(a.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(a.shape[1]))[None, :]
    corner = (fx > above_cycles_per_px) & (fy > above_cycles_per_px)
    return float(np.sqrt(spec[np.broadcast_to(corner, spec.shape)].mean() / a.size))


def rim_sides(
    image: np.ndarray, points_px: np.ndarray, *, nm_per_px: float, ring_nm: tuple[float, float] = (0.35, 1.3),
    threshold: float = 3.0,
) -> dict[str, float]:
    """How often a bright spot sits beside dark features, on the right and on the left (along x).

    Around each point ``(row, col)`` a window of about 3 nm is taken; its
    robust spread (1.4826 MAD) is the unit. In the ring ``ring_nm`` around the
    point, the brightest pixel on the right (``x > +0.2 nm``) and on the left
    is compared with ``threshold`` units above the window's median. Returns
    the fractions of points with such a spot on each side and the medians of
    the brightest values (units) and of the depth at the point.

    >>> img = np.zeros((40, 40)); img[20, 20] = -5.0; img[20, 23] = 5.0
    >>> img += np.random.default_rng(0).normal(0, 0.5, img.shape)
    >>> rim_sides(img, np.array([[20, 20]]), nm_per_px=0.2)["right"]
    1.0
    """
    a = np.asarray(image, dtype=np.float64)
    half = round(1.4 / nm_per_px)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1] * nm_per_px
    d = np.hypot(yy, xx)
    ring = (d >= ring_nm[0]) & (d <= ring_nm[1])
    rows = []
    for r, c in np.asarray(points_px, dtype=int):
        if not (half <= r < a.shape[0] - half and half <= c < a.shape[1] - half):
            continue
        w = a[r - half:r + half + 1, c - half:c + half + 1]
        med = np.median(w)
        sd = 1.4826 * np.median(np.abs(w - med))
        right = (w[ring & (xx > 0.2)].max() - med) / sd
        left = (w[ring & (xx < -0.2)].max() - med) / sd
        rows.append((right, left, (a[r - 1:r + 2, c - 1:c + 2].min() - med) / sd))
    if not rows:
        return {"n": 0, "right": float("nan"), "left": float("nan")}
    v = np.array(rows)
    return {"n": len(rows), "right": float((v[:, 0] > threshold).mean()), "left": float((v[:, 1] > threshold).mean()),
            "right_median": float(np.median(v[:, 0])), "left_median": float(np.median(v[:, 1])),
            "depth_median": float(np.median(v[:, 2]))}


def fast_axis_profiles(image: np.ndarray, points_px: np.ndarray, *, half_px: int = 8) -> np.ndarray:
    """Mean profile along x (3 rows, ``2 half_px + 1`` columns) through points, each less its window's median."""
    a = np.asarray(image, dtype=np.float64)
    out = []
    for r, c in np.asarray(points_px, dtype=int):
        if not (6 <= r < a.shape[0] - 6 and half_px + 4 <= c < a.shape[1] - half_px - 4):
            continue
        p = a[r - 1:r + 2, c - half_px:c + half_px + 1].mean(axis=0)
        out.append(p - np.median(a[r - 6:r + 7, c - half_px - 4:c + half_px + 5]))
    return np.mean(out, axis=0) if out else np.full(2 * half_px + 1, np.nan)


def fit_profile(profile: np.ndarray, *, lag: bool) -> dict[str, float]:
    """Fit a Gaussian (optionally smeared by a causal exponential along +x) to a fast-axis profile (px units).

    Returns ``{"amplitude", "sigma_px", "lag_px", "sse"}``: with ``lag`` the
    Gaussian is convolved with ``exp(-x / lag_px)`` for ``x >= 0`` (what a
    slow feedback does along the scan); comparing the two fits' ``sse`` says
    whether the profile shows such a lag.
    """
    from scipy.optimize import least_squares

    p = np.asarray(profile, dtype=np.float64)
    unit = float(np.abs(p).max()) or 1.0
    p = p / unit  # the optimiser's tolerances assume values of order one
    half = (p.size - 1) // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    fine = np.linspace(-half - 8, half + 8, 40 * (2 * half + 16) + 1)
    dx = fine[1] - fine[0]

    def model(q: np.ndarray) -> np.ndarray:
        a, x0, s, b, tau = q
        g = np.exp(-0.5 * ((fine - x0) / s) ** 2)
        if tau > 1e-3:
            k = np.exp(-np.arange(0.0, 8 * tau + dx, dx) / tau)
            g = np.convolve(g, k / k.sum())[: fine.size]
        return a * np.interp(x, fine, g) + b

    sign = 1.0 if p[half] >= 0 else -1.0
    q0 = [sign * abs(p[half]), 0.0, 1.5, 0.0, 0.5 if lag else 0.0]
    lo = [-np.inf, -3.0, 0.3, -np.inf, 0.0]
    hi = [np.inf, 3.0, 6.0, np.inf, 6.0 if lag else 1e-6]
    fit = least_squares(lambda q: model(q) - p, q0, bounds=(lo, hi))
    return {"amplitude": float(fit.x[0]) * unit, "sigma_px": float(fit.x[2]), "lag_px": float(fit.x[4]),
            "sse": float(np.sum(fit.fun**2)) * unit**2}
