"""Levelling of a complete frame: planes, row alignment, and a step-aware model.

The methods Gwyddion users know, each a pure function of the image:

``plane`` / ``plane2``
    Least-squares polynomial surface of degree 1 / 2 over all pixels.
``flatten``
    The same surface fitted iteratively to the pixels within ``reject``
    robust standard deviations of the previous fit, so that adsorbates and
    islands do not tilt it.
``median``
    Plane, then each row's median subtracted (Gwyddion: *Align rows, Median*).
``median_diff``
    Plane, then the median of each row's difference to the previous row
    subtracted, accumulated down the frame (*Median of differences*).
``poly``
    A least-squares polynomial in x (``degree``, default 1) fitted to and
    subtracted from each row (*Polynomial*).
``matching``
    Plane, then each row shifted to match the previous one, weighting pixels
    by how well the local x-gradients of the two rows agree (*Matching*).
``step-aware`` (the default)
    Rows are first aligned to their neighbours (offset and slope of the
    difference, fitted robustly), which a step edge does not disturb. Terraces
    are then found as the large regions bounded by steep edges, and every row
    gets an offset and slope from a robust fit of the image *minus its
    terrace heights*: tilt, line offsets and slope jumps go, terraces stay
    flat at their own heights instead of being bent into one plane, and no
    error accumulates from row to row.

Whatever the method, the result's median is 0, non-finite input pixels
come out as 0 (the background level), and the input is never modified. The
row methods work in float32 after subtracting each row's median in float64
(which they are all blind to), so huge offsets lose no precision.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy import ndimage, signal

from .checks import LevelError, as_image, check_positive
from .linefit import (
    MAD_TO_SIGMA,
    evaluate_rows,
    fit_rows,
    masked_row_median,
    robust_line,
    rounding_level,
    row_background,
)
from .scars import remove_scars_inplace

__all__ = ["FRAME_METHODS", "fit_surface", "level_frame"]

#: The ``method`` values :func:`level_frame` understands.
FRAME_METHODS = ("step-aware", "plane", "plane2", "flatten", "median", "median_diff", "poly", "matching")

# Statistics (scales, medians) are taken on every k-th row, k chosen to
# leave about this many pixels: plenty for a robust estimate, a fraction of
# the work on a 512 x 512 frame.
_SAMPLE_PIXELS = 65536


def _row_step(shape: tuple[int, int]) -> int:
    return max(1, shape[0] * shape[1] // _SAMPLE_PIXELS)


def _sample_median(values: np.ndarray, valid: np.ndarray) -> float:
    step = _row_step(values.shape)
    v = values[::step][valid[::step]]
    if v.size == 0:
        v = values[valid]
    if v.size == 0:
        return 0.0
    return float(np.partition(v, v.size // 2)[v.size // 2])


def _coords(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)


def fit_surface(z: np.ndarray, valid: np.ndarray, degree: int) -> np.ndarray:
    """Least-squares polynomial surface of total degree ``degree`` over the ``valid`` pixels.

    Parameters
    ----------
    z : numpy.ndarray
        ``(rows, cols)`` float64, finite everywhere (values where ``valid``
        is False are ignored).
    valid : numpy.ndarray
        ``(rows, cols)`` bool.
    degree : int
        1 for a plane, 2 for a quadric, ...

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float64 surface (all zeros when nothing is valid).

    Examples
    --------
    >>> y, x = np.mgrid[0:4, 0:5]
    >>> z = 1.0 + 2.0 * x - 3.0 * y
    >>> bool(np.allclose(fit_surface(z, np.ones(z.shape, bool), 1), z))
    True
    """
    rows, cols = z.shape
    if not valid.any():
        return np.zeros(z.shape)
    # Terms x^i y^j with i + j <= degree that the grid can determine.
    dx, dy = min(degree, cols - 1), min(degree, rows - 1)
    terms = [(i, j) for j in range(dy + 1) for i in range(dx + 1) if i + j <= degree]
    xp = np.vander(_coords(cols), 2 * dx + 1, increasing=True)
    yp = np.vander(_coords(rows), 2 * dy + 1, increasing=True)
    w = valid.astype(np.float64)
    # einsum's own loops rather than a multi-threaded BLAS (see linefit.evaluate_rows),
    # with the contracted axis contiguous in both operands (vectorised dot products).
    xpt = np.ascontiguousarray(xp.T)
    moments = yp.T @ np.einsum("rc,ic->ri", w, xpt)  # moments[j, i] = sum of w y^j x^i
    w *= z
    proj = yp[:, : dy + 1].T @ np.einsum("rc,ic->ri", w, xpt[: dx + 1])
    gram = np.array([[moments[j + jj, i + ii] for (ii, jj) in terms] for (i, j) in terms])
    rhs = np.array([proj[j, i] for (i, j) in terms])
    coef, *_ = np.linalg.lstsq(gram, rhs, rcond=None)
    c = np.zeros((dy + 1, dx + 1))
    for (i, j), value in zip(terms, coef, strict=True):
        c[j, i] = value
    return evaluate_rows(yp[:, : dy + 1] @ c, xp[:, : dx + 1])


def _flatten(z: np.ndarray, valid: np.ndarray, degree: int, reject: float, iterations: int = 5) -> np.ndarray:
    keep = valid
    surface = fit_surface(z, keep, degree)
    for _ in range(iterations):
        res = z - surface
        centre = _sample_median(res, keep)
        dev = np.abs(res - centre)
        scale = MAD_TO_SIGMA * _sample_median(dev, keep)
        new_keep = valid & (dev <= reject * scale)
        if new_keep.sum() < max(3, valid.sum() // 10) or np.array_equal(new_keep, keep):
            break
        keep = new_keep
        surface = fit_surface(z, keep, degree)
    return surface


def _previous_valid_row(valid_rows: np.ndarray) -> np.ndarray:
    # Index of the nearest earlier row that has data (-1 if none).
    idx = np.where(valid_rows, np.arange(valid_rows.size), -1)
    prev = np.maximum.accumulate(idx)
    out = np.full(valid_rows.size, -1)
    out[1:] = prev[:-1]
    return out


def _row_differences(z: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row minus the previous row that has data, and where both pixels are valid.

    Rows without data are skipped, so a missing line does not cut the chain.
    """
    prev = _previous_valid_row(np.any(valid, axis=1))
    has_prev = prev >= 0
    src = np.where(has_prev, prev, 0)
    diff = z - z[src]
    ok = valid & valid[src] & has_prev[:, None]
    diff[~ok] = 0
    return diff, ok


def _median_diff_offsets(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    diff, ok = _row_differences(z, valid)
    steps = masked_row_median(diff, ok)
    steps[~ok.any(axis=1)] = 0.0
    return np.cumsum(steps)


def _matching_offsets(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    diff, ok = _row_differences(z, valid)
    rows, cols = z.shape
    if cols < 2:
        return _median_diff_offsets(z, valid)
    # Where the two rows have the same local x-gradient they show the same
    # surface: weight those pixels, ignore where the rows differ in shape.
    okg = ok[:, 1:] & ok[:, :-1]
    absg = np.abs(np.diff(diff, axis=1))
    absg[~okg] = 0
    q = absg.sum(axis=1) / np.maximum(okg.sum(axis=1), 1)
    u = absg / np.where(q > 0, q, 1.0)[:, None]
    wg = np.where(okg, np.exp(-0.5 * u * u), 0.0)
    w = np.zeros((rows, cols), dtype=z.dtype)
    w[:, 1:] += wg
    w[:, :-1] += wg
    wsum = w.sum(axis=1)
    num = (w * diff).sum(axis=1)
    # Rows with no usable weights fall back to the median difference.
    fallback = masked_row_median(diff, ok)
    steps = np.where(wsum > 0, num / np.where(wsum > 0, wsum, 1.0), fallback)
    steps[~ok.any(axis=1)] = 0.0
    return np.cumsum(steps)


def _chained_rows(z: np.ndarray, valid: np.ndarray, degree: int, reject: float) -> np.ndarray:
    """Per-row polynomial coefficients that align each row to the previous one."""
    diff, ok = _row_differences(z, valid)
    coef = np.cumsum(fit_rows(diff, degree=degree, reject=reject, valid=ok), axis=0)
    # The first row with data keeps its own shape so far: remove its own robust fit.
    first = int(np.argmax(valid.any(axis=1)))
    ok = valid[first]
    x = np.flatnonzero(ok).astype(np.float64)
    if x.size:
        a, b = robust_line(x, z[first, ok].astype(np.float64), reject=reject, lag=max(1, x.size // 16), refine=False)
        # a + b * pixel in the basis of t = linspace(-1, 1, cols).
        half = 0.5 * (z.shape[1] - 1)
        coef[:, 0] += a + b * half
        if coef.shape[1] > 1:
            coef[:, 1] += b * half
    return coef


def _height_splits(values: np.ndarray, sigma: float, min_fraction: float) -> np.ndarray:
    """Heights that separate the levels of a terraced image: the deep valleys of its height histogram.

    A level is a peak of the smoothed histogram holding at least
    ``min_fraction`` of the pixels whose *prominence* is at least 70 % of its
    height: the histogram falls to under a third of the peak on both sides
    before rising to anything higher. Terraces separated by a step leave
    an almost empty gap between their peaks; the two maxima of a corrugated
    surface's histogram (a sinusoid sits near its extremes) do not.

    Returns
    -------
    numpy.ndarray
        Ascending split heights, one fewer than the levels (empty: one level).
    """
    if values.size == 0 or not sigma > 0:
        return np.zeros(0)
    # The histogram's range from a subsample: percentiles of every pixel cost more than the rest.
    sub = np.sort(values[:: max(1, values.size // 20000)])
    lo, hi = sub[int(0.005 * (sub.size - 1))], sub[int(0.995 * (sub.size - 1))]
    width = max(0.5 * sigma, (hi - lo) / 1000)
    nbins = int(max(1, np.ceil((hi - lo) / width)))
    if nbins < 8:
        return np.zeros(0)
    counts, edges = np.histogram(values, bins=nbins, range=(lo, hi))
    # Smooth over the noise and over fine structure of a level (a hundredth of the range).
    blur = max(2.0 * sigma, (hi - lo) / 100) / width
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), blur, mode="constant")
    peaks, props = signal.find_peaks(smooth, prominence=0.0)
    if peaks.size < 2:
        return np.zeros(0)
    centres = 0.5 * (edges[:-1] + edges[1:])
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    lefts, rights = props["left_bases"], props["right_bases"]
    # Population of a peak: the pixels between its bases.
    pop = cum[rights + 1] - cum[lefts]
    good = (props["prominences"] >= 0.7 * smooth[peaks]) & (pop >= min_fraction * values.size)
    peaks = peaks[good]
    splits = [float(centres[a + int(np.argmin(smooth[a : b + 1]))]) for a, b in itertools.pairwise(peaks)]
    return np.array(splits)


def _bin2(a: np.ndarray) -> np.ndarray:
    """Mean of 2 x 2 blocks (a trailing odd row or column is dropped)."""
    r, c = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return 0.25 * (a[:r:2, :c:2] + a[1:r:2, :c:2] + a[:r:2, 1:c:2] + a[1:r:2, 1:c:2])


def _lag_gradient(z: np.ndarray, lag: int) -> np.ndarray:
    """Largest absolute difference of ``z`` between pixels ``lag`` apart along x or y, centred."""
    rows, cols = z.shape
    grad = np.zeros(z.shape, dtype=z.dtype)
    h = lag // 2
    if cols > lag:
        grad[:, h : h + cols - lag] = np.abs(z[:, lag:] - z[:, :-lag])
    if rows > lag:
        np.maximum(grad[h : h + rows - lag], np.abs(z[lag:] - z[:-lag]), out=grad[h : h + rows - lag])
    return grad


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` dilated by one pixel in all eight directions."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def _terraces(
    lev: np.ndarray, valid: np.ndarray, *, edge: float, min_fraction: float, smooth: int | None = None
) -> np.ndarray:
    """Label terraces: regions bounded by steep edges, split by height level (0: none).

    Edges alone miss a step where an adsorbate sits on it, and heights alone
    confuse two terraces at one height; a terrace is a connected region
    between edges within one level of the height histogram
    (:func:`_height_splits`), and big enough.
    """
    rows, cols = lev.shape
    # Averaging over about a lattice period hides the atomic corrugation,
    # which can be as steep as a step edge, and leaves the steps.
    size = smooth if smooth is not None else max(3, (min(rows, cols) // 20) | 1)
    lev = ndimage.uniform_filter(lev, size=min(size, rows, cols), mode="nearest") if size > 1 else lev
    # Differences a box width apart: the whole step height, where neighbouring
    # pixels of the smoothed image would see only 1 / size of it.
    grad = _lag_gradient(lev, max(1, min(size, rows - 1, cols - 1)))
    # Gradients next to missing data are meaningless.
    inner = valid if valid.all() else valid & ndimage.binary_erosion(valid, iterations=2, border_value=1)
    step = max(1, rows * cols // 65536)
    vals = grad[::step][inner[::step]]
    if vals.size == 0:
        return np.zeros(lev.shape, dtype=np.int32)
    k = vals.size // 2
    rounding = rounding_level(lev[::step])
    scale = max(MAD_TO_SIGMA * float(np.partition(vals, k)[k]), rounding)
    if scale > 0:
        # Thicken the edges by a pixel so that a gap of a pixel or two in a
        # faint step edge does not join the terraces on either side.
        flat = inner & ~_grow(grad > edge * scale)
    else:
        flat = inner
    regions, n = ndimage.label(flat)
    if n == 0:
        return regions
    # Pixel noise from horizontal neighbours (steps and features are rare there).
    pairs = valid[::step, 1:] & valid[::step, :-1]
    dv = np.abs(np.diff(lev[::step], axis=1))[pairs]
    sigma = MAD_TO_SIGMA * float(np.partition(dv, dv.size // 2)[dv.size // 2]) / np.sqrt(2.0) if dv.size else 0.0
    sigma = max(sigma, rounding)
    splits = _height_splits(lev[::step][flat[::step]], sigma, min_fraction)
    if splits.size:
        level = np.zeros(lev.shape, dtype=np.int64)
        for split in splits:
            level += lev > split
        code = np.where(flat, regions.astype(np.int64) * (splits.size + 1) + level + 1, 0)
    else:
        code = regions.astype(np.int64)
    counts = np.bincount(code.ravel())
    big = counts >= max(min_fraction * rows * cols, 4)
    big[0] = False
    remap = np.zeros(counts.size, dtype=np.int32)
    remap[big] = np.arange(1, int(big.sum()) + 1)
    return remap[code]


def _terrace_heights(values: np.ndarray, labels: np.ndarray, n: int, reject: float) -> np.ndarray:
    """Robust mean height of every terrace (index 0, no terrace: 0), from a subsample of rows."""
    step = _row_step(values.shape)
    lab = labels[::step].ravel()
    val = values[::step].ravel()
    sel = lab > 0
    lab, val = lab[sel], val[sel].astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1).astype(np.float64)
    means = np.bincount(lab, weights=val, minlength=n + 1) / np.maximum(counts, 1)
    dev = np.abs(val - means[lab])
    scale = MAD_TO_SIGMA * float(np.partition(dev, dev.size // 2)[dev.size // 2]) if dev.size else 0.0
    keep = dev <= reject * scale
    counts = np.bincount(lab[keep], minlength=n + 1).astype(np.float64)
    sums = np.bincount(lab[keep], weights=val[keep], minlength=n + 1)
    out = np.where(counts > 0, sums / np.maximum(counts, 1), means)
    out[0] = 0.0
    return out


def feature_mask(
    residual: np.ndarray, valid: np.ndarray, *, reject: float = 3.0, flank: float = 1.5, grow: int = 4
) -> np.ndarray:
    """Pixels of features on a levelled image: cores beyond ``reject`` noise levels, grown over their flanks.

    Hysteresis thresholding: a pixel further than ``flank`` robust standard
    deviations from 0, on the same side, belongs to a feature when it is
    connected, within ``grow`` pixels, to one further than ``reject``; the
    result is grown by one more pixel. Faint flanks of broad features bias
    a least-squares background as much as their tops; a single threshold
    misses them.

    Parameters
    ----------
    residual : numpy.ndarray
        ``(rows, cols)`` levelled image (background near 0), finite.
    valid : numpy.ndarray
        ``(rows, cols)`` bool, pixels to consider (and to take the noise level from).
    reject, flank : float, keyword-only
        Core and flank thresholds in robust standard deviations.
    grow : int, keyword-only
        How far (pixels) flanks may extend from a core.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` bool.

    Examples
    --------
    >>> y, x = np.mgrid[0:40, 0:40]
    >>> bump = 10.0 * np.exp(-((x - 20) ** 2 + (y - 20) ** 2) / 50.0)
    >>> noise = np.random.default_rng(0).normal(size=bump.shape)
    >>> mask = feature_mask(bump + noise, np.ones(bump.shape, bool))
    >>> bool(mask[20, 20]), bool(mask[0, 0]), int(mask.sum()) > 100
    (True, False, True)
    """
    step = _row_step(residual.shape)
    sample = np.abs(residual[::step][valid[::step]])
    if sample.size == 0:
        return np.zeros(residual.shape, dtype=bool)
    sigma = max(MAD_TO_SIGMA * float(np.partition(sample, sample.size // 2)[sample.size // 2]),
                rounding_level(residual[::step]))
    out = np.zeros(residual.shape, dtype=bool)
    for sign in (1.0, -1.0):
        r = sign * residual
        low = valid & (r > flank * sigma)
        grown = valid & (r > reject * sigma)
        # Geodesic growth, a few pixels only: flanks, not every corrugation
        # ridge that happens to touch a feature.
        for _ in range(grow):
            grown = _grow(grown) & low | grown
        out |= grown
    return _grow(out)


def _step_aware(
    z: np.ndarray,
    valid: np.ndarray,
    *,
    degree: int,
    reject: float,
    edge: float,
    min_terrace: float,
    smooth: int | None,
) -> np.ndarray:
    rows, cols = z.shape
    chained_coef = _chained_rows(z, valid, degree, reject)
    chained = row_background(chained_coef, cols)
    if rows < 2:
        return chained
    lev0 = z - chained
    if rows >= 128 and cols >= 128:
        # Terraces are large: find them on 2 x 2 binned pixels, a quarter of the work.
        binned = _bin2(np.where(valid, lev0, 0))
        ok = _bin2(valid.astype(z.dtype)) > 0.99
        half = None if smooth is None else max(1, smooth // 2)
        labels = _terraces(binned, ok, edge=edge, min_fraction=min_terrace, smooth=half)
        labels = np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)
        labels = np.pad(labels, ((0, rows - labels.shape[0]), (0, cols - labels.shape[1])), mode="edge")
    else:
        labels = _terraces(lev0, valid, edge=edge, min_fraction=min_terrace, smooth=smooth)
    n = int(labels.max())
    if n == 0:
        return chained
    heights = _terrace_heights(lev0, labels, n, reject).astype(z.dtype)
    usable = labels > 0
    flat = z - heights[labels]
    coef = fit_rows(flat, degree=degree, reject=reject, valid=usable, iterations=1, start=chained_coef)
    # Features and their faint flanks bias row fits; mask them on the
    # levelled image (cores beyond `reject`, grown over their flanks) and fit again.
    features = feature_mask(flat - row_background(coef, cols), usable, reject=reject)
    # A row that would lose most of its pixels is better fitted by its own
    # outlier rejection than from the few left.
    keep_rows = (usable & ~features).sum(axis=1) >= usable.sum(axis=1) // 2
    usable &= ~(features & keep_rows[:, None])
    coef = fit_rows(flat, degree=degree, reject=reject, valid=usable, iterations=1, start=coef)
    background = row_background(coef, cols)
    # Rows with too few terrace pixels keep the chained alignment, shifted to
    # agree with their neighbours' absolute fits.
    weak = usable.sum(axis=1) < max(degree + 2, cols // 16)
    if weak.all():
        return chained
    if weak.any():
        shift = (background - chained).mean(axis=1)
        idx = np.arange(rows)
        shift_weak = np.interp(idx[weak], idx[~weak], shift[~weak])
        background[weak] = chained[weak] + shift_weak[:, None].astype(z.dtype)
    return background


def level_frame(
    data: Any,
    *,
    method: str = "step-aware",
    degree: int | None = None,
    reject: float = 3.0,
    exclude: np.ndarray | None = None,
    scars: bool = False,
    edge: float = 6.0,
    min_terrace: float = 0.01,
    smooth: int | None = None,
) -> np.ndarray:
    """Level a complete frame.

    Parameters
    ----------
    data : array_like
        ``(rows, cols)`` image in display order, any unit; NaN / inf pixels
        (missing lines) are left out of every fit.
    method : str, keyword-only
        One of :data:`FRAME_METHODS` (see the module description);
        ``"step_aware"`` is accepted for ``"step-aware"``.
    degree : int, optional, keyword-only
        Polynomial degree: of the surface for ``plane`` (1), ``plane2`` (2)
        and ``flatten`` (1), of the per-row fit for ``poly`` and
        ``step-aware`` (1). Ignored by the row-offset methods.
    reject : float, keyword-only
        Robust outlier threshold in noise standard deviations (``flatten``,
        ``step-aware``).
    exclude : numpy.ndarray, optional, keyword-only
        ``(rows, cols)`` bool mask of pixels to leave out of the fits
        (known features); they are still levelled.
    scars : bool, keyword-only
        Replace scars (short streaks along one or two lines) by values
        interpolated from the lines above and below, after levelling
        (:func:`~stm_live.level.remove_scars`).
    edge : float, keyword-only
        ``step-aware``: a pixel whose smoothed height gradient exceeds this
        many robust standard deviations of all gradients is a step edge.
    min_terrace : float, keyword-only
        ``step-aware``: regions between edges smaller than this fraction of
        the frame are features, not terraces (left out of the fits).
    smooth : int, optional, keyword-only
        ``step-aware``: width (pixels) of the box average applied before
        looking for step edges and terrace heights, so that atomic rows as
        steep as a step edge are averaged away; default ``min(rows, cols) // 20``
        (odd, at least 3). Wider than the lattice period works best.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float32 in the unit of ``data``, median 0, finite;
        missing pixels are 0. ``data`` is not modified.

    Raises
    ------
    LevelError
        Unknown method, bad option or an input that is not a 2-D image.

    Examples
    --------
    A tilted frame with one line offset and two terraces:

    >>> y, x = np.mgrid[0:32, 0:48].astype(float)
    >>> truth = np.where(x + 0.3 * y > 24, 1.0, 0.0)
    >>> raw = truth + 0.05 * x + 0.02 * y
    >>> raw[10] += 3.0
    >>> out = level_frame(raw)
    >>> err = out - truth
    >>> float(np.ptp(err[truth == 1])) < 1e-4 and float(np.ptp(err[truth == 0])) < 1e-4
    True
    >>> float(np.ptp(level_frame(raw, method="plane"))) > 3  # a plane fit leaves the offset
    True
    """
    image = as_image(data)
    key = "step-aware" if method == "step_aware" else method
    if key not in FRAME_METHODS:
        raise LevelError(f"unknown levelling method {method!r}; expected one of {', '.join(FRAME_METHODS)}")
    reject = check_positive(reject, "reject")
    if degree is not None and (isinstance(degree, bool) or int(degree) != degree or not 0 <= degree <= 5):
        raise LevelError(f"degree must be an integer within 0..5, got {degree!r}")
    valid = np.isfinite(image)
    fit_valid = valid
    if exclude is not None:
        mask = np.asarray(exclude, dtype=bool)
        if mask.shape != image.shape:
            raise LevelError(f"exclude must have the image's shape {image.shape}, got {mask.shape}")
        fit_valid = valid & ~mask
    image[~valid] = 0.0
    if not fit_valid.any():
        return np.zeros(image.shape, dtype=np.float32)
    if key in ("plane", "plane2", "flatten"):
        if key == "flatten":
            out = image - _flatten(image, fit_valid, 1 if degree is None else degree, reject)
        else:
            out = image - fit_surface(image, fit_valid, degree if degree is not None else (1 if key == "plane" else 2))
    else:
        # Every row method is blind to a constant per row: take the row
        # medians out in float64, then work in float32.
        row_median = masked_row_median(image, fit_valid)
        row_median[~fit_valid.any(axis=1)] = 0.0
        z = (image - row_median[:, None]).astype(np.float32)
        z[~valid] = 0.0
        if key == "poly":
            coef = fit_rows(z, degree=1 if degree is None else degree, reject=None, valid=fit_valid)
            out = z - row_background(coef, z.shape[1])
        elif key == "step-aware":
            out = z - _step_aware(
                z,
                fit_valid,
                degree=1 if degree is None else degree,
                reject=reject,
                edge=check_positive(edge, "edge"),
                min_terrace=float(min_terrace),
                smooth=None if smooth is None else max(1, int(smooth)),
            )
        else:
            z64 = z.astype(np.float64)
            flat = z64 - fit_surface(z64, fit_valid, 1)
            if key == "median":
                offsets = masked_row_median(flat, fit_valid)
                offsets[~fit_valid.any(axis=1)] = 0.0
            elif key == "median_diff":
                offsets = _median_diff_offsets(flat, fit_valid)
            else:
                offsets = _matching_offsets(flat, fit_valid)
            out = flat - offsets[:, None]
    if scars:
        out = out.astype(np.float64)
        remove_scars_inplace(out, valid)
    out -= _sample_median(out, valid)
    out[~valid] = 0.0
    return out.astype(np.float32)
