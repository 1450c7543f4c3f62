"""Line-by-line levelling while the frame is being scanned.

Each arriving scan line is compared with a *reference line*, a running
average of the last few levelled lines. The offset and slope of the
difference ``line - reference`` are fitted robustly and subtracted:

1. first guess: slope from the median of ``d[i + n/2] - d[i]`` (pairs half a
   line apart), offset from the median of what is left. Medians of
   differences shift exactly with any added straight line, so a tilt of the
   raw data cannot change which pixels count as outliers;
2. outliers are pixels further than ``reject`` noise levels from the guess
   (the noise level being the smaller of the residuals' robust spread and the
   pixel-to-pixel noise), plus those that were outliers in the previous line
   (features span several lines), plus ``margin`` pixels either side (the
   faint flanks of a feature bias a fit as much as its top);
3. least squares over the remaining pixels, twice.

Differences of neighbouring lines cancel what the lines share, terraces and
step edges included, so a step edge crossing the frame is not bent into a
plane, and adsorbates and scars that the new line has and the reference lacks
are outliers. Chaining lines lets errors add up along the frame; averaging
``reference_lines`` lines in the reference damps that, and every
``restore_every`` lines the reference's own robust slope (and optionally its
offset) is pulled a little towards zero, which bounds the drift that remains.

Work per line is O(columns) with a fixed number of NumPy calls on
preallocated buffers, and no line after the current one is ever needed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from .checks import LevelError, as_image, check_positive
from .linefit import MAD_TO_SIGMA, robust_line

__all__ = ["LineLeveller", "level_stream"]


def _optional_rate(lines: float | None, name: str) -> float:
    if lines is None:
        return 0.0
    return 1.0 / check_positive(lines, name, allow_inf=True)


class LineLeveller:
    """Remove the offset and slope of each scan line as it arrives.

    Parameters
    ----------
    cols : int
        Pixels per line.
    reference_lines : float, keyword-only
        Number of recent levelled lines the reference averages: a new line
        enters it with weight ``1 / reference_lines`` (the first lines are
        averaged equally). 1 compares each line with the previous one only.
    restore_slope_lines : float or None, keyword-only
        The reference's own robust slope is removed at a rate of
        ``1 / restore_slope_lines`` per line, so slope errors cannot
        accumulate. Its first guess comes from medians of differences 1/16
        of a line apart, so a step edge within the lines barely moves it.
        None: no pull.
    restore_offset_lines : float or None, keyword-only
        The same for the reference's offset. Off by default: with steps in
        the lines the "own offset" of a line depends on which terrace
        dominates it, and pulling towards it moves whole terraces.
    reject : float, keyword-only
        Outlier threshold in noise standard deviations.
    margin : int, optional, keyword-only
        Pixels either side of an outlier that are also left out of the fit;
        default ``max(1, cols // 48)``.
    slope : bool, keyword-only
        Remove a slope per line as well as an offset.
    min_valid : float, keyword-only
        Lines with fewer finite pixels than this fraction of ``cols`` are not
        trusted: they leave the state unchanged and are levelled with the
        correction of the previous line.
    restore_every : int, keyword-only
        Apply the restoring pull every this many lines (at ``restore_every``
        times the rate), which keeps the cost of an ordinary line low.

    Notes
    -----
    Input lines are any real dtype in any unit; output lines are float32 in
    the same unit, with the background near 0 (the first line's dominant
    level is 0).

    Missing data never poisons the state: non-finite pixels (NaN, inf) are
    left out of every fit and out of the reference, and come out as the
    current background level, the median of the reference line (0 before
    any line was accepted). A line that is entirely missing therefore comes
    out as that constant. The same input sequence always gives the same
    output.

    Examples
    --------
    Lines of a tilted, offset flat surface come out flat:

    >>> lev = LineLeveller(64)
    >>> x = np.arange(64.0)
    >>> out = [lev.push(5.0 * i + 0.1 * x) for i in range(4)]
    >>> float(np.abs(np.array(out)).max()) < 1e-5
    True
    >>> lev.push(np.full(64, np.nan)).tolist() == [0.0] * 64
    True
    """

    def __init__(
        self,
        cols: int,
        *,
        reference_lines: float = 4.0,
        restore_slope_lines: float | None = 8.0,
        restore_offset_lines: float | None = None,
        reject: float = 2.5,
        margin: int | None = None,
        slope: bool = True,
        min_valid: float = 0.25,
        restore_every: int = 4,
    ) -> None:
        if isinstance(cols, bool) or not isinstance(cols, int | np.integer) or cols < 1:
            raise LevelError(f"cols must be a positive integer (pixels per line), got {cols!r}")
        n = self._cols = int(cols)
        reference_lines = check_positive(reference_lines, "reference_lines")
        if reference_lines < 1:
            raise LevelError(f"reference_lines must be >= 1, got {reference_lines!r}")
        self._beta = 1.0 / reference_lines
        self._restore_slope = _optional_rate(restore_slope_lines, "restore_slope_lines")
        self._restore_offset = _optional_rate(restore_offset_lines, "restore_offset_lines")
        if isinstance(restore_every, bool) or int(restore_every) != restore_every or restore_every < 1:
            raise LevelError(f"restore_every must be a positive number of lines, got {restore_every!r}")
        self._restore_every = int(restore_every)
        self._reject = check_positive(reject, "reject")
        if margin is None:
            margin = max(1, n // 48)
        if isinstance(margin, bool) or int(margin) != margin or margin < 0:
            raise LevelError(f"margin must be a number of pixels >= 0, got {margin!r}")
        # (np.convolve's "same" output is as long as the longer input.)
        margin = min(int(margin), (n - 1) // 2)
        self._kernel = np.ones(2 * margin + 1) if margin else None
        self._slope = bool(slope) and n >= 3
        if not 0 <= float(min_valid) <= 1:
            raise LevelError(f"min_valid must be a fraction within 0..1, got {min_valid!r}")
        self._min_count = max(1, math.ceil(float(min_valid) * n))
        self._lag = max(1, n // 16)
        self._half = n // 2
        self._rounding = 16.0 * float(np.finfo(np.float64).eps)
        x = np.arange(n, dtype=np.float64) - 0.5 * (n - 1)
        self._x = x
        self._xx = x * x
        # Work buffers, reused for every line.
        self._raw = np.empty(n)
        self._lev = np.empty(n)
        self._r = np.empty(n)
        self._dev = np.empty(n)
        self._tmp = np.empty(n)
        self._w = np.empty(n)
        self._pairs = np.empty(self._half)
        self._own = np.zeros(n, dtype=bool)
        self._rej = np.zeros(n, dtype=bool)
        self.reset()

    @property
    def cols(self) -> int:
        """Pixels per line."""
        return self._cols

    @property
    def lines_used(self) -> int:
        """Lines accepted into the reference since the last :meth:`reset`."""
        return self._lines

    def reset(self) -> None:
        """Forget every line seen: the next line starts a new frame."""
        self._ref = np.zeros(self._cols)
        self._prev = np.zeros(self._cols, dtype=bool)
        self._lines = 0
        self._last = (0.0, 0.0)

    def push(self, line: Any) -> np.ndarray:
        """Level one scan line against the lines seen so far.

        Parameters
        ----------
        line : array_like
            ``(cols,)`` raw values along the fast-scan axis, any real dtype,
            any unit; NaN / inf for missing pixels. Not modified.

        Returns
        -------
        numpy.ndarray
            ``(cols,)`` new float32 array: the levelled line, finite.

        Raises
        ------
        LevelError
            ``line`` has the wrong shape or is not numeric.
        """
        v = np.asarray(line)
        if v.shape != (self._cols,):
            raise LevelError(f"LineLeveller({self._cols}) expects lines of shape ({self._cols},), got {v.shape}")
        if v.dtype.kind not in "fiub":
            raise LevelError(f"a scan line must be real numbers, got dtype {v.dtype}")
        if not math.isfinite(float(v.sum(dtype=np.float64))):
            return self._push_incomplete(v)
        x, raw, lev = self._x, self._raw, self._lev
        np.copyto(raw, v, casting="unsafe")
        if self._lines == 0:
            a, b = robust_line(x, raw, reject=self._reject, slope=self._slope, lag=self._lag, refine=False)
        else:
            np.subtract(raw, self._ref, out=self._tmp)
            a, b = self._fit_difference(self._tmp)
        np.multiply(x, b, out=lev)
        lev += a
        np.subtract(raw, lev, out=lev)
        self._accept(lev, None)
        self._last = (a, b)
        return lev.astype(np.float32)

    def _fit_difference(self, d: np.ndarray) -> tuple[float, float]:
        """Robust offset and slope of ``d = line - reference`` (all finite), in place on buffers."""
        x, r, dev, w, tmp = self._x, self._r, self._dev, self._w, self._tmp
        n, h = self._cols, self._half
        if self._slope:
            pairs = self._pairs
            np.subtract(d[n - h :], d[:h], out=pairs)
            pairs.partition(h // 2)
            b = float(pairs[h // 2]) / (n - h)
            np.multiply(x, b, out=r)
            np.subtract(d, r, out=r)
        else:
            b = 0.0
            np.copyto(r, d)
        np.copyto(dev, r)
        dev.partition(n // 2)
        a = float(dev[n // 2])
        r -= a
        np.abs(r, out=dev)
        spread = MAD_TO_SIGMA * float(np.partition(dev, n // 2)[n // 2])
        thr = self._reject * max(spread, self._rounding * abs(a))
        own, rej = self._own, self._rej
        for i in range(2):
            if i:
                np.abs(r, out=dev)
            np.greater(dev, thr, out=own)
            np.logical_or(own, self._prev, out=rej)
            if self._kernel is not None:
                # Widen every outlier by `margin` pixels to drop the flanks of features.
                np.greater(np.convolve(rej, self._kernel, mode="same"), 0.5, out=rej)
            np.logical_not(rej, out=rej)
            np.copyto(w, rej)
            s0 = float(w.sum())
            if s0 < 3:
                # Everything looks like a feature: fall back to this line's own inliers.
                np.logical_not(own, out=rej)
                np.copyto(w, rej)
                s0 = float(w.sum())
            sx = float(w @ x)
            sr = float(w @ r)
            if self._slope:
                sxx = float(w @ self._xx)
                np.multiply(x, r, out=tmp)
                sxr = float(w @ tmp)
                det = s0 * sxx - sx * sx
                db = (s0 * sxr - sx * sr) / det if det > 0 else 0.0
            else:
                db = 0.0
            da = (sr - db * sx) / s0 if s0 > 0 else 0.0
            a += da
            b += db
            if i == 0:
                np.multiply(x, db, out=tmp)
                tmp += da
                r -= tmp
        # Features continue into the next line: remember where they were.
        self._prev, self._own = self._own, self._prev
        return a, b

    def _accept(self, lev: np.ndarray, finite: np.ndarray | None) -> None:
        weight = max(self._beta, 1.0 / (self._lines + 1))
        ref = self._ref
        if finite is None:
            np.subtract(lev, ref, out=self._tmp)
            self._tmp *= weight
            ref += self._tmp
        elif self._lines == 0:
            # Unseen columns start at the line's own level so that they are
            # not outliers of the next line's fit.
            ref[:] = float(np.median(lev[finite]))
            ref[finite] = lev[finite]
        else:
            ref[finite] += weight * (lev[finite] - ref[finite])
        self._lines += 1
        if (self._restore_slope or self._restore_offset) and self._lines % self._restore_every == 0:
            a, b = robust_line(self._x, ref, reject=self._reject, slope=self._slope, lag=self._lag, refine=False)
            k = self._restore_every
            ref -= min(1.0, k * self._restore_offset) * a + min(1.0, k * self._restore_slope) * b * self._x

    def _background(self) -> float:
        return float(np.median(self._ref)) if self._lines else 0.0

    def _push_incomplete(self, v: np.ndarray) -> np.ndarray:
        finite = np.isfinite(v)
        count = int(finite.sum())
        out = np.full(self._cols, self._background())
        if count == 0:
            return out.astype(np.float32)
        x = self._x[finite]
        raw = v[finite].astype(np.float64)
        if count < self._min_count:
            a, b = self._last
            out[finite] = raw - (a + b * x)
            return out.astype(np.float32)
        slope = self._slope and count >= 3
        if self._lines == 0:
            a, b = robust_line(x, raw, reject=self._reject, slope=slope)
        else:
            a, b = robust_line(x, raw - self._ref[finite], reject=self._reject, slope=slope)
        out[finite] = raw - (a + b * x)
        self._prev[:] = False
        self._accept(out, finite)
        self._last = (a, b)
        return out.astype(np.float32)


def level_stream(
    data: Any,
    *,
    scan_direction: Literal["down", "up"] = "down",
    reference_lines: float = 4.0,
    restore_slope_lines: float | None = 8.0,
    restore_offset_lines: float | None = None,
    reject: float = 2.5,
    margin: int | None = None,
    slope: bool = True,
    restore_every: int = 4,
) -> np.ndarray:
    """Level a whole image the way the daemon does while scanning: one line at a time.

    Parameters
    ----------
    data : array_like
        ``(rows, cols)`` image in display order (row 0 at the top), any unit;
        NaN rows are lines not (yet) acquired.
    scan_direction : {"down", "up"}, keyword-only
        Slow-scan direction: ``"down"`` feeds row 0 first, ``"up"`` the last
        row first, as the microscope acquired them.
    reference_lines, restore_slope_lines, restore_offset_lines, reject, margin, slope, restore_every
        As for :class:`LineLeveller`.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float32 in display order, the unit of ``data``,
        finite everywhere. ``data`` is not modified.

    Examples
    --------
    >>> z = np.add.outer(np.arange(4.0) ** 2, np.zeros(8))  # an offset per line
    >>> level_stream(z, scan_direction="up").tolist() == np.zeros((4, 8)).tolist()
    True
    """
    image = as_image(data)
    if scan_direction not in ("down", "up"):
        raise LevelError(f"scan_direction must be 'down' or 'up', got {scan_direction!r}")
    leveller = LineLeveller(
        image.shape[1],
        reference_lines=reference_lines,
        restore_slope_lines=restore_slope_lines,
        restore_offset_lines=restore_offset_lines,
        reject=reject,
        margin=margin,
        slope=slope,
        restore_every=restore_every,
    )
    out = np.empty(image.shape, dtype=np.float32)
    order = range(image.shape[0]) if scan_direction == "down" else range(image.shape[0] - 1, -1, -1)
    for r in order:
        out[r] = leveller.push(image[r])
    return out
