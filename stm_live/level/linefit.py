"""Robust straight-line and per-row polynomial fits: the arithmetic under every leveller.

Levelling estimates a background (an offset and a slope per scan line, a plane
per frame) from data in which adsorbates, vacancies and step edges are
outliers. Every estimate here starts from medians, which ignore up to half of
the pixels whatever their values, and is then refined by least squares over
the pixels within ``reject`` robust standard deviations of that first guess:
the refinement recovers the precision a median loses on Gaussian noise, the
rejection keeps the features out.

These are internal helpers of :mod:`stm_live.level`; the public functions live
in its other modules.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MAD_TO_SIGMA",
    "evaluate_rows",
    "fit_rows",
    "masked_row_median",
    "robust_line",
    "robust_scale",
    "rounding_level",
    "row_background",
    "step_free_slope",
]

#: Median absolute deviation of a normal distribution times this is its sigma.
MAD_TO_SIGMA = 1.482602218505602


def _upper_median(values: np.ndarray) -> float:
    # The upper of the two middle values: a single O(n) partition, half the
    # cost of np.median, and just as robust.
    k = values.size // 2
    return float(np.partition(values, k)[k])


def robust_scale(values: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation) of finite ``values``.

    Parameters
    ----------
    values : numpy.ndarray
        Any shape, any real dtype; non-finite values are ignored.

    Returns
    -------
    float
        In the units of ``values``; 0.0 for an empty or constant input.

    Examples
    --------
    >>> robust_scale(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    1.482602218505602
    >>> robust_scale(np.zeros(3)), robust_scale(np.array([np.nan]))
    (0.0, 0.0)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    return MAD_TO_SIGMA * _upper_median(np.abs(v - _upper_median(v)))


def rounding_level(values: np.ndarray) -> float:
    """Smallest meaningful noise level of ``values``: a few units of rounding of their largest magnitude.

    Noise-free (synthetic, constant) data have a robust spread of 0, and a
    threshold of 0 would reject all but the exactly representable pixels;
    thresholds never go below this.

    Examples
    --------
    >>> rounding_level(np.array([0.0, 1.0], dtype=np.float32)) > 0
    True
    >>> rounding_level(np.zeros(3))
    0.0
    """
    if values.size == 0:
        return 0.0
    top = float(np.max(np.abs(values)))
    return 16.0 * float(np.finfo(values.dtype).eps) * top if math.isfinite(top) else 0.0


def step_free_slope(v: np.ndarray, *, lag: int, reject: float = 3.0) -> float:
    """Slope of a line of terraces: median of ``(v[i + lag] - v[i]) / lag`` over pairs with no step between.

    A step is a jump between neighbouring pixels of more than ``reject``
    times the pixel-to-pixel noise. Leaving out the pairs that straddle one
    makes the slope of a staircase its terraces' slope, not the staircase's.

    Parameters
    ----------
    v : numpy.ndarray
        ``(n,)`` float64 finite values on pixels spaced by 1.
    lag : int, keyword-only
        Pixel distance of the pairs (longer: less noise, more pairs lost to steps).
    reject : float, keyword-only
        Step threshold in noise standard deviations.

    Returns
    -------
    float
        Units of ``v`` per pixel; 0.0 when no pair is usable.

    Examples
    --------
    >>> x = np.arange(60.0)
    >>> staircase = 0.01 * x + np.where(x > 20, 5.0, 0.0) + np.where(x > 40, 5.0, 0.0)
    >>> round(step_free_slope(staircase, lag=8), 6)
    0.01
    """
    n = v.size
    lag = min(lag, n - 1)
    if lag < 1:
        return 0.0
    d1 = np.diff(v)
    centre = _upper_median(d1)
    dev = np.abs(d1 - centre)
    jump = dev > reject * MAD_TO_SIGMA * _upper_median(dev)
    crossed = np.concatenate(([0], np.cumsum(jump)))
    ok = crossed[lag:] == crossed[:-lag]
    if not ok.any():
        return float(centre)
    return _upper_median((v[lag:] - v[:-lag])[ok]) / lag


def robust_line(
    x: np.ndarray,
    v: np.ndarray,
    *,
    reject: float = 3.0,
    slope: bool = True,
    lag: int | None = None,
    refine: bool = True,
) -> tuple[float, float]:
    """Fit ``v ~ a + b * x`` robustly: medians first, then least squares on the inliers.

    Parameters
    ----------
    x : numpy.ndarray
        ``(n,)`` float64 positions, ascending (pixels; any origin).
    v : numpy.ndarray
        ``(n,)`` float64 finite values (any unit).
    reject : float, keyword-only
        Points further than ``reject`` robust standard deviations (of the
        residuals) from the current fit are left out of the least-squares
        refinement.
    slope : bool, keyword-only
        Fit the slope ``b``; when False only the offset is fitted (``b = 0``).
    lag : int, optional, keyword-only
        First-guess slope from :func:`step_free_slope` with this lag (``x``
        must then be evenly spaced by 1): insensitive to step edges within
        the line. Default: the slope between the medians of the two halves.
    refine : bool, keyword-only
        Refine the first guess by least squares over the inliers. Without
        (with ``lag``), the result is the step-free slope and the median
        offset: noisier, but a line of several terraces keeps its terraces
        level (least squares over a staircase tilts it whatever the
        rejection, because a staircase has no outliers).

    Returns
    -------
    a, b : float
        Offset (units of ``v``) and slope (units of ``v`` per unit of ``x``).

    Examples
    --------
    A line with a bright adsorbate on a tenth of it:

    >>> x = np.arange(100.0)
    >>> v = 2.0 + 0.5 * x
    >>> v[40:50] += 30.0
    >>> a, b = robust_line(x, v)
    >>> round(a, 6), round(b, 6)
    (2.0, 0.5)
    """
    n = v.size
    if n == 0:
        return 0.0, 0.0
    if not slope or n < 3:
        b = 0.0
        if n == 2 and slope:
            b = float((v[1] - v[0]) / (x[1] - x[0]))
        # One pass of median + inlier mean for the offset alone.
        r = v - b * x
        a = _upper_median(r)
        dev = np.abs(r - a)
        keep = dev <= reject * MAD_TO_SIGMA * _upper_median(dev)
        return float(r[keep].mean()), b
    if lag is not None and 0 < lag < n:
        b0 = step_free_slope(v, lag=lag, reject=reject)
        a0 = _upper_median(v - b0 * x)
        if not refine:
            return float(a0), float(b0)
    else:
        h = n // 2
        ml, mr = _upper_median(v[:h]), _upper_median(v[h:])
        xl, xr = _upper_median(x[:h]), _upper_median(x[h:])
        b0 = (mr - ml) / (xr - xl)
        a0 = 0.5 * (ml + mr) - b0 * 0.5 * (xl + xr)
    a, b = a0, b0
    rounding = rounding_level(v)
    for _ in range(2):
        # Refine on residuals from the current fit (small numbers, no cancellation).
        r = v - (a + b * x)
        dev = np.abs(r)
        keep = dev <= reject * max(MAD_TO_SIGMA * _upper_median(dev), rounding)
        w = keep.astype(np.float64)
        s0 = w.sum()
        xm = float(w @ x) / s0
        xc = x - xm
        sxx = float(w @ (xc * xc))
        rm = float(w @ r) / s0
        db = float(w @ (xc * r)) / sxx if sxx > 0 else 0.0
        b += db
        a += rm - db * xm
    return float(a), float(b)


def _legendre_basis(cols: int, degree: int) -> np.ndarray:
    # Columns 1, t, t^2 ... on t in [-1, 1]: well conditioned up to degree ~ 5
    # for any line length, unlike powers of the pixel index.
    t = np.linspace(-1.0, 1.0, cols) if cols > 1 else np.zeros(1)
    return np.vander(t, degree + 1, increasing=True)


def _alternating_inf(cols: int) -> np.ndarray:
    pattern = np.full(cols, np.inf)
    pattern[::2] = -np.inf
    return pattern


def masked_row_median(z: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Median of each row over its ``valid`` pixels (0.0 for rows with none).

    Parameters
    ----------
    z : numpy.ndarray
        ``(rows, cols)`` float64.
    valid : numpy.ndarray, optional
        ``(rows, cols)`` bool; default: every pixel.

    Returns
    -------
    numpy.ndarray
        ``(rows,)`` float64, within one rank of the exact median.

    Examples
    --------
    >>> z = np.array([[1.0, 2.0, 9.0, 3.0], [5.0, 6.0, 7.0, 8.0]])
    >>> masked_row_median(z, np.array([[True, True, False, True], [False] * 4])).tolist()
    [2.0, 0.0]
    """
    cols = z.shape[1]
    k = cols // 2
    if valid is None or valid.all():
        return np.partition(z, k, axis=1)[:, k].astype(np.float64)
    # Masked pixels become -inf in even and +inf in odd columns, so that the
    # middle of the full row stays (within a few ranks, for masks that are
    # blobs or whole rows) the middle of its valid part: one vectorised
    # partition instead of a sort or a loop over rows.
    filled = np.where(valid, z, _alternating_inf(cols))
    filled.partition(k, axis=1)  # in place: `filled` is ours (np.partition would copy it again)
    med = filled[:, k].copy()
    bad = ~np.isfinite(med)
    if bad.any():
        # Rows almost entirely masked on one parity: exact, row by row.
        for r in np.flatnonzero(bad):
            v = z[r, valid[r]]
            med[r] = _upper_median(v) if v.size else 0.0
    return med


def row_background(coef: np.ndarray, cols: int) -> np.ndarray:
    """Evaluate per-row polynomial coefficients from :func:`fit_rows` on ``cols`` pixels.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` in the dtype of ``coef``.
    """
    return evaluate_rows(coef, _legendre_basis(cols, coef.shape[1] - 1).astype(coef.dtype))


def evaluate_rows(coef: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``coef @ basis.T`` for ``(rows, terms)`` coefficients and a ``(cols, terms)`` basis."""
    # As a few multiply-adds: a matrix product with 2-6 inner
    # terms goes to a multi-threaded BLAS, which stalls badly when other
    # processes keep the cores busy.
    out = np.multiply.outer(coef[:, 0], basis[:, 0])
    for t in range(1, coef.shape[1]):
        out += np.multiply.outer(coef[:, t], basis[:, t])
    return out


def fit_rows(
    z: np.ndarray,
    *,
    degree: int = 1,
    reject: float | None = 3.0,
    valid: np.ndarray | None = None,
    iterations: int = 2,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Fit a polynomial in x to every row at once.

    Parameters
    ----------
    z : numpy.ndarray
        ``(rows, cols)`` float32 or float64 image, finite everywhere (put
        anything, 0 say, where ``valid`` is False). The work is done in its dtype.
    degree : int, keyword-only
        Polynomial degree in x (0: offset only, 1: offset and slope, ...).
    reject : float or None, keyword-only
        Robust outlier rejection: from a median-based start (row medians,
        and slopes from medians of differences 1/16 of a row apart, which a
        step edge barely moves), pixels further than ``reject`` noise
        standard deviations from the current fit are left out,
        ``iterations`` times (the noise level being the robust spread of
        all residuals). None: plain least squares.
    valid : numpy.ndarray, optional, keyword-only
        ``(rows, cols)`` bool mask of usable pixels (default: all).
    iterations : int, keyword-only
        Reweighting passes when ``reject`` is set.
    start : numpy.ndarray, optional, keyword-only
        ``(rows, degree + 1)`` coefficients to start from instead of the
        median-based first guess (a previous fit of a similar image).

    Returns
    -------
    numpy.ndarray
        ``(rows, degree + 1)`` coefficients of Legendre-like powers of
        ``t = linspace(-1, 1, cols)`` (evaluate with :func:`row_background`),
        in the dtype of ``z``. Rows with too few usable pixels get the lower
        degree they allow (an offset, or 0 when no pixel is usable).

    Examples
    --------
    >>> z = np.add.outer([0.0, 10.0], np.arange(5.0))
    >>> z[1, 2] = 99.0
    >>> np.round(z - row_background(fit_rows(z), 5), 9).tolist()
    [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 87.0, 0.0, 0.0]]
    """
    rows, cols = z.shape
    degree = max(0, min(degree, cols - 1))
    if valid is None:
        valid = np.ones(z.shape, dtype=bool)
    basis = _legendre_basis(cols, degree).astype(z.dtype)
    if reject is None:
        return _weighted_row_poly(z, valid, basis)
    coef = np.zeros((rows, degree + 1), dtype=z.dtype)
    if start is not None:
        terms = min(start.shape[1], degree + 1)
        coef[:, :terms] = start[:, :terms]
    else:
        lag = max(1, cols // 16)
        t_step = 2.0 / (cols - 1) if cols > 1 else 1.0
        if degree >= 1 and cols > lag:
            diff = z[:, lag:] - z[:, :-lag]
            # Median slope per pixel, converted to per unit of t.
            coef[:, 1] = masked_row_median(diff, valid[:, lag:] & valid[:, :-lag]) / (lag * t_step)
        coef[:, 0] = masked_row_median(z - np.outer(coef[:, 1], basis[:, 1]) if degree >= 1 else z, valid)
    # Scales come from every `step`-th row: plenty of pixels, a fraction of the work.
    step = max(1, rows * cols // 65536)
    any_valid = bool(valid.any())
    rounding = rounding_level(z[::step])
    for _ in range(iterations):
        res = z - evaluate_rows(coef, basis)
        np.abs(res, out=res)
        scale = MAD_TO_SIGMA * _upper_median(res[::step][valid[::step]]) if any_valid else 0.0
        scale = max(scale, rounding)
        keep = res <= reject * scale
        keep &= valid
        coef = _weighted_row_poly(z, keep, basis)
    return coef


def _weighted_row_poly(z: np.ndarray, keep: np.ndarray, basis: np.ndarray) -> np.ndarray:
    rows = z.shape[0]
    n_terms = basis.shape[1]
    w = keep.astype(z.dtype)
    # Normal equations of every row at once: G[r] = B^T diag(w_r) B, h[r] = B^T (w_r z_r),
    # with einsum's own loops rather than BLAS (see evaluate_rows).
    # The basis holds powers of t, so the Gram matrix holds sums of t^0 .. t^(2 d).
    # The basis goes in as (terms, cols), contiguous along the contracted axis:
    # einsum then runs vectorised dot products (10x faster than "rc,ck->rk").
    powers = basis[:, 1] ** np.arange(2 * n_terms - 1)[:, None] if n_terms > 1 else np.ones((1, basis.shape[0]))
    sums = np.einsum("rc,kc->rk", w, np.ascontiguousarray(powers, dtype=w.dtype)).astype(np.float64)
    index = np.add.outer(np.arange(n_terms), np.arange(n_terms))
    gram = sums[:, index]
    w *= z
    rhs = np.einsum("rc,kc->rk", w, np.ascontiguousarray(basis.T)).astype(np.float64)
    terms = np.minimum(keep.sum(axis=1), n_terms)
    coef = np.zeros((rows, n_terms))
    for t in range(1, n_terms + 1):
        sel = terms == t
        if sel.any():
            coef[sel, :t] = np.linalg.solve(gram[sel][:, :t, :t], rhs[sel][:, :t, None])[..., 0]
    return coef.astype(z.dtype)
