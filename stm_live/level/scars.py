"""Scar removal: streaks along one or two scan lines where the feedback misbehaved.

A scar is a run of pixels along the fast-scan direction, one or two lines
high, that lies entirely above (or below) *both* the line before and the
line after it by more than ``threshold`` noise levels. Real features are
taller than two lines and so always share their height with a neighbouring
line somewhere; a step edge parallel to the lines is above one neighbour and
level with the other. Scar pixels are replaced by linear interpolation, per
column, between the nearest good lines above and below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .checks import LevelError, as_image, check_positive
from .linefit import MAD_TO_SIGMA

__all__ = ["find_scars", "long_runs", "remove_scars", "remove_scars_inplace"]


def find_scars(
    z: np.ndarray,
    valid: np.ndarray,
    *,
    threshold: float = 4.0,
    min_length: int | None = None,
    max_width: int = 2,
) -> np.ndarray:
    """Mask of the scar pixels of a float64 image (see :func:`remove_scars` for the options)."""
    rows, cols = z.shape
    scars = np.zeros(z.shape, dtype=bool)
    if rows < 3:
        return scars
    length = max(4, cols // 32) if min_length is None else int(min_length)
    length = min(length, cols)
    dv = z[1:] - z[:-1]
    ok = valid[1:] & valid[:-1]
    if not ok.any():
        return scars
    vals = np.abs(dv[ok])
    # Vertical differences hold twice the noise variance of one pixel.
    sigma = MAD_TO_SIGMA * float(np.partition(vals, vals.size // 2)[vals.size // 2]) / np.sqrt(2.0)
    thr = threshold * sigma
    for width in range(1, max_width + 1):
        n = rows - width - 1
        if n < 1:
            break
        above = z[:n]
        below = z[width + 1 : width + 1 + n]
        band_lo = z[1 : 1 + n].copy()
        band_hi = z[1 : 1 + n].copy()
        band_ok = valid[:n] & valid[width + 1 : width + 1 + n] & valid[1 : 1 + n]
        for k in range(1, width):
            np.minimum(band_lo, z[1 + k : 1 + k + n], out=band_lo)
            np.maximum(band_hi, z[1 + k : 1 + k + n], out=band_hi)
            band_ok &= valid[1 + k : 1 + k + n]
        bright = band_lo - np.maximum(above, below) > thr
        dark = band_hi - np.minimum(above, below) < -thr
        hit = band_ok & (bright | dark)
        for k in range(width):
            scars[1 + k : 1 + k + n] |= hit
    if length > 1:
        scars = long_runs(scars, length)
    return scars


def long_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """Keep only the runs of True along each row that are at least ``length`` long.

    The same as a binary opening with a ``(1, length)`` structuring element,
    in a few passes over the array instead of ``2 * length``.

    Examples
    --------
    >>> long_runs(np.array([[1, 1, 0, 1, 1, 1, 0, 1]], dtype=bool), 3).astype(int).tolist()
    [[0, 0, 0, 1, 1, 1, 0, 0]]
    """
    rows, cols = mask.shape
    padded = np.zeros((rows, cols + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded.ravel())
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    keep = ends - starts >= length
    marks = np.zeros(padded.size + 1, dtype=np.int32)
    marks[starts[keep] + 1] += 1  # starts and ends are distinct positions: no repeats
    marks[ends[keep] + 1] -= 1
    return (np.cumsum(marks)[:-1].reshape(padded.shape)[:, 1:-1] > 0)


def remove_scars_inplace(
    z: np.ndarray,
    valid: np.ndarray,
    *,
    threshold: float = 4.0,
    min_length: int | None = None,
    max_width: int = 2,
) -> np.ndarray:
    """Replace the scars of float64 ``z`` in place; return their mask (internal building block)."""
    scars = find_scars(z, valid, threshold=threshold, min_length=min_length, max_width=max_width)
    if not scars.any():
        return scars
    rows = z.shape[0]
    idx = np.arange(rows)[:, None]
    good = valid & ~scars
    up = np.maximum.accumulate(np.where(good, idx, -1), axis=0)
    down = np.minimum.accumulate(np.where(good, idx, rows)[::-1], axis=0)[::-1]
    r, c = np.nonzero(scars)
    u, d = up[r, c], down[r, c]
    has_u, has_d = u >= 0, d < rows
    zu = z[np.where(has_u, u, 0), c]
    zd = z[np.where(has_d, d, 0), c]
    span = np.where(has_u & has_d, d - u, 1)
    t = np.where(has_u & has_d, (r - u) / span, 0.0)
    value = np.where(has_u & has_d, zu + t * (zd - zu), np.where(has_u, zu, zd))
    fill = has_u | has_d
    z[r[fill], c[fill]] = value[fill]
    return scars


def remove_scars(
    image: Any,
    *,
    threshold: float = 4.0,
    min_length: int | None = None,
    max_width: int = 2,
) -> np.ndarray:
    """Replace scars by values interpolated from the lines above and below.

    Parameters
    ----------
    image : array_like
        ``(rows, cols)`` image in display order (rows are scan lines), best
        levelled first; any unit. NaN / inf pixels are missing.
    threshold : float, keyword-only
        A scar lies this many noise standard deviations above or below both
        neighbouring lines (the noise is estimated robustly from differences
        of neighbouring lines).
    min_length : int, optional, keyword-only
        Shortest scar, in pixels along the line; default ``max(4, cols // 32)``.
    max_width : int, keyword-only
        Tallest scar, in lines (1 or 2 are typical).

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float32 in the unit of ``image``; missing pixels
        are filled with the median of the valid ones. ``image`` is not
        modified.

    Examples
    --------
    >>> z = np.zeros((6, 40))
    >>> z[3, 5:30] = 8.0  # a scar along part of line 3
    >>> z[0, 0] = 0.1  # some noise, so that the noise level is not zero
    >>> float(np.abs(remove_scars(z)[3]).max())
    0.0
    """
    z = as_image(image, name="image")
    threshold = check_positive(threshold, "threshold")
    if isinstance(max_width, bool) or int(max_width) != max_width or max_width < 1:
        raise LevelError(f"max_width must be a positive number of lines, got {max_width!r}")
    if min_length is not None and (int(min_length) != min_length or min_length < 1):
        raise LevelError(f"min_length must be a positive number of pixels, got {min_length!r}")
    valid = np.isfinite(z)
    fill = float(np.median(z[valid])) if valid.any() else 0.0
    z[~valid] = fill
    remove_scars_inplace(z, valid, threshold=threshold, min_length=min_length, max_width=int(max_width))
    return z.astype(np.float32)
