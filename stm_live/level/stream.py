"""Line-by-line levelling while the frame is being scanned.

Each arriving scan line is levelled once, from itself and the lines before
it, in two steps.

**Chained fit.** The line is compared with a *reference line*, a running
average of the last few levelled lines, and the offset and slope of the
difference ``d = line - reference`` are estimated: slope from the median of
``d[i + n/2] - d[i]`` (pairs half a line apart), offset from the median of
what is left. Medians of differences shift exactly with any added straight
line, and differences of neighbouring lines cancel what the lines share,
terraces and step edges included, so this guess is within a fraction of a
step of the truth whatever the tilt, the line offset or the terraces.

**Terrace levels** (:class:`~stm_live.level.terraces.TerraceLevels`). A
chained fit alone drifts: each line inherits the error of its reference,
and small biases (features that enter lines brighter on one side, say) add
up to tens of pm over a frame, two to three times the whole-frame
leveller's error on a flat terrace. So each line is then held to the
heights of the terraces seen so far: an absolute robust fit of its offset
and slope to the distance of every pixel from the level of its terrace (the
row fit a whole-frame leveller makes), with the terrace of a pixel read from
the smoothed reference, step flanks, features and unknown terraces left out,
and the slope taken within step-free pieces so that a step never passes for
a tilt. Nothing accumulates from line to line. New terraces entering the
frame become levels once seen on a few lines.

When no terrace level is in reach (a line made mostly of a terrace not yet
seen), the chained fit is refined instead by least squares over the pixels
that are not outliers: beyond ``reject`` robust standard deviations, those
of the previous line (features span several lines), all widened by
``margin`` pixels, plus the columns where the reference itself shows a
feature. With ``anchor=False`` that chained fit is all there is, with a
restoring pull on the reference's slope every ``restore_every`` lines
(median of differences ``cols / 16`` apart that straddle no step, pulled to
zero at ``1 / restore_slope_lines`` per line): the behaviour before terrace
levels existed, bit for bit.

Work per line is O(columns) with a bounded number of NumPy calls on
preallocated buffers, and no line after the current one is ever needed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from .checks import LevelError, as_image, check_positive
from .linefit import MAD_TO_SIGMA, robust_line
from .terraces import TerraceLevels

__all__ = ["LineLeveller", "level_stream"]

#: Flanks of a feature in the reference: beyond this fraction of the outlier threshold.
_FLANK = 0.4


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
        Without ``anchor`` only: the reference's own robust slope is removed
        at a rate of ``1 / restore_slope_lines`` per line, so slope errors
        cannot accumulate. Its first guess comes from medians of differences
        1/16 of a line apart, so a step edge within the lines barely moves
        it. None: no pull.
    restore_offset_lines : float or None, keyword-only
        Without ``anchor`` only: the same for the reference's offset. Off by
        default: with steps in the lines the "own offset" of a line depends
        on which terrace dominates it, and pulling towards it moves whole
        terraces.
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
    anchor : bool, keyword-only
        Hold every line to the heights of the terraces seen so far
        (:class:`~stm_live.level.terraces.TerraceLevels`), so that no error
        accumulates from line to line. False: the chained fit alone, exactly
        as before terrace levels existed (it drifts on flat terraces).

    Notes
    -----
    Input lines are any real dtype in any unit; output lines are float32 in
    the same unit, with the background near 0 (the first line's dominant
    terrace is 0).

    The first line may cross step edges and has no predecessor: its slope
    is fitted within the stretches between the steps found on it
    (:meth:`~stm_live.level.terraces.TerraceLevels.first_line`), and the
    first terrace level is taken from it.

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
    >>> gap = lev.push(np.full(64, np.nan))  # a lost line: the background level
    >>> bool(np.ptp(gap) == 0 and abs(gap[0]) < 1e-12)
    True
    """

    def __init__(
        self,
        cols: int,
        *,
        reference_lines: float = 4.0,
        restore_slope_lines: float | None = 8.0,
        restore_offset_lines: float | None = None,
        reject: float = 3.0,
        margin: int | None = None,
        slope: bool = True,
        min_valid: float = 0.25,
        restore_every: int = 2,
        anchor: bool = True,
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
        margin = min(int(margin), n)
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
        self._d = np.empty(n)
        self._lev = np.empty(n)
        self._r = np.empty(n)
        self._dev = np.empty(n)
        self._tmp = np.empty(n)
        self._w = np.empty(n)
        self._pairs = np.empty(self._half)
        self._own = np.zeros(n, dtype=bool)
        self._rej = np.zeros(n, dtype=bool)
        self._keep = np.zeros(n, dtype=bool)
        # Dilation by a running count: cumulative sums padded by margin + 1 on both sides.
        self._margin = margin
        self._counts = np.zeros(n + 2 * margin + 1, dtype=np.int32)
        self._window = np.zeros(n, dtype=np.int32)
        self._diffs = np.empty(max(n - 1, 1))
        self._jumps = np.zeros(max(n - 1, 1), dtype=bool)
        self._crossed = np.zeros(n, dtype=np.int32)
        self._terraces = TerraceLevels(n, reject=self._reject) if anchor else None
        self.reset()

    @property
    def cols(self) -> int:
        """Pixels per line."""
        return self._cols

    @property
    def levels(self) -> np.ndarray:
        """Heights of the terraces seen since the last :meth:`reset`, ascending, in the unit of the output.

        Empty without ``anchor``. A copy; for diagnostics.
        """
        return self._terraces.levels if self._terraces is not None else np.empty(0)

    @property
    def lines_used(self) -> int:
        """Lines accepted into the reference since the last :meth:`reset`."""
        return self._lines

    def reset(self) -> None:
        """Forget every line seen: the next line starts a new frame."""
        self._ref = np.zeros(self._cols)
        self._prev = np.zeros(self._cols, dtype=bool)
        self._features = np.zeros(self._cols, dtype=bool)
        self._own_line = (0.0, 0.0)
        self._lines = 0
        self._last = (0.0, 0.0)
        if self._terraces is not None:
            self._terraces.reset()

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
        x, raw, lev, d = self._x, self._raw, self._lev, self._d
        np.copyto(raw, v, casting="unsafe")
        terraces = self._terraces
        if self._lines == 0:
            if terraces is not None:
                a, b = terraces.first_line(raw, floor=self._rounding * float(np.max(np.abs(raw))), slope=self._slope)
            else:
                a, b = robust_line(x, raw, reject=self._reject, slope=self._slope, lag=self._lag, refine=False)
        else:
            np.subtract(raw, self._ref, out=d)
            # With terrace levels to anchor to, a first guess within a
            # fraction of a step is all the chained fit has to give.
            if terraces is None:
                a, b = self._fit_difference(d)
            else:
                a, b = self._guess_difference(d)
        np.multiply(x, b, out=lev)
        lev += a
        np.subtract(raw, lev, out=lev)
        if terraces is not None:
            fit = self._anchor(lev, None)
            if fit is not None:
                a += fit[0]
                b += fit[1]
            elif self._lines:
                # No terrace level to hold on to: the chained fit alone.
                self._prev[:] = False
                a, b = self._fit_difference(d)
                np.multiply(x, b, out=lev)
                lev += a
                np.subtract(raw, lev, out=lev)
        self._accept(lev, None)
        self._last = (a, b)
        return lev.astype(np.float32)

    def _anchor(self, lev: np.ndarray, missing: np.ndarray | None) -> tuple[float, float] | None:
        """Fit ``lev`` in place to the terrace levels (the first line starts them); the correction made, or None."""
        terraces = self._terraces
        assert terraces is not None
        floor = self._rounding * float(np.max(np.abs(lev)))
        ref = self._ref if self._lines else None
        passes = 1
        if terraces.count == 0:
            terraces.begin(lev, floor=floor)
            passes = 2  # the line the level came from: fit it twice
        total_a = total_b = 0.0
        for _ in range(passes):
            fit = terraces.correct(lev, ref, floor=floor, slope=self._slope, missing=missing)
            if fit is None:
                return None
            da, db = fit
            np.multiply(self._x, db, out=self._tmp)
            self._tmp += da
            lev -= self._tmp
            total_a += da
            total_b += db
        if passes == 1:
            terraces.learn(lev)
        return total_a, total_b

    def _guess_difference(self, d: np.ndarray) -> tuple[float, float]:
        """First guess of the offset and slope of ``d = line - reference``: medians only.

        Slope from the median of ``d[i + n/2] - d[i]`` (pairs half a line
        apart), offset from the median of what is left; leaves ``d - b x`` in
        ``self._r``.
        """
        x, r, dev = self._x, self._r, self._dev
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
        return float(dev[n // 2]), b

    def _fit_difference(self, d: np.ndarray) -> tuple[float, float]:
        """Robust offset and slope of ``d = line - reference`` (all finite), in place on buffers."""
        x, r, dev, w, tmp = self._x, self._r, self._dev, self._w, self._tmp
        n = self._cols
        a, b = self._guess_difference(d)
        r -= a
        np.abs(r, out=dev)
        spread = MAD_TO_SIGMA * float(np.partition(dev, n // 2)[n // 2])
        thr = self._reject * max(spread, self._rounding * abs(a))
        own, rej, keep = self._own, self._rej, self._keep
        np.greater(dev, thr, out=own)
        np.logical_or(own, self._prev, out=rej)
        # Widen the outliers by `margin` pixels to drop the faint flanks of
        # features, and leave out where the reference shows features.
        self._dilate(rej)
        rej |= self._features
        for i in range(2):
            if i:
                # The refined fit may find a few more outliers (not widened).
                np.abs(r, out=dev)
                np.greater(dev, thr, out=own)
                rej |= own
            np.logical_not(rej, out=keep)
            np.copyto(w, keep)
            s0 = float(w.sum())
            if s0 < 3:
                # Everything looks like a feature: fall back to this line's own inliers.
                np.logical_not(own, out=keep)
                np.copyto(w, keep)
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
            if i + 1 < 2:
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
        if self._terraces is not None:
            # Anchored to the terrace levels, the reference cannot drift.
            return
        # The restoring pull and the feature columns are both drawn from the
        # reference's own fit, on alternate halves of the cadence so that no
        # single line pays for both.
        k = self._restore_every
        phase = self._lines % k
        if phase == 0:
            a, b = self._own_fit()
            self._own_line = (a, b)
            if self._restore_slope or self._restore_offset:
                fa, fb = min(1.0, k * self._restore_offset), min(1.0, k * self._restore_slope)
                ref -= fa * a + fb * b * self._x
                self._own_line = ((1.0 - fa) * a, (1.0 - fb) * b)
        if phase == k // 2:
            self._update_features(*self._own_line)

    def _dilate(self, mask: np.ndarray) -> None:
        """Grow ``mask`` in place by ``margin`` pixels either side (running count of set pixels)."""
        m = self._margin
        if not m:
            return
        n = self._cols
        counts = self._counts
        np.cumsum(mask, out=counts[m + 1 : m + 1 + n])
        counts[m + 1 + n :] = counts[m + n]
        np.subtract(counts[2 * m + 1 :], counts[:n], out=self._window)
        np.greater(self._window, 0, out=mask)

    def _own_fit(self) -> tuple[float, float]:
        """The reference's own offset (median) and slope (median of step-free differences ``lag`` apart)."""
        ref, n, lag = self._ref, self._cols, self._lag
        b = 0.0
        if self._slope and n > lag:
            d1 = self._diffs
            np.subtract(ref[1:], ref[:-1], out=d1)
            centre = float(np.partition(d1, (n - 1) // 2)[(n - 1) // 2])
            d1 -= centre
            np.abs(d1, out=d1)
            spread = float(np.partition(d1, (n - 1) // 2)[(n - 1) // 2])
            # A step: a jump between neighbours far beyond the pixel noise.
            np.greater(d1, self._reject * MAD_TO_SIGMA * spread, out=self._jumps)
            crossed = self._crossed
            np.cumsum(self._jumps, out=crossed[1:])
            ok = crossed[lag:] == crossed[:-lag]
            pairs = (ref[lag:] - ref[:-lag])[ok]
            if pairs.size:
                b = float(np.partition(pairs, pairs.size // 2)[pairs.size // 2]) / lag
        res = self._tmp
        np.multiply(self._x, b, out=res)
        np.subtract(ref, res, out=res)
        a = float(np.partition(res, n // 2)[n // 2])
        return a, b

    def _update_features(self, a: float, b: float) -> None:
        """Columns where the reference shows a feature: left out of the next lines' fits.

        A broad feature grows and shrinks from line to line; the difference
        to the reference then has faint, same-signed flanks that no
        per-line threshold catches, and a fit that includes them drifts.
        Cores beyond ``reject`` noise levels of the reference's own fit
        ``a + b x`` (from the last restoring step) are grown over their flanks
        (beyond ``0.4 reject``) and by ``margin``.
        """
        dev = self._dev
        np.multiply(self._x, b, out=dev)
        dev += a
        np.subtract(self._ref, dev, out=dev)
        np.abs(dev, out=dev)
        n = self._cols
        sigma = MAD_TO_SIGMA * float(np.partition(dev, n // 2)[n // 2])
        feats = self._features
        np.greater(dev, self._reject * sigma, out=feats)
        if not feats.any():
            return
        # Hysteresis: runs above the flank level that contain a core.
        low = dev > _FLANK * self._reject * sigma
        starts = low.copy()
        starts[1:] &= ~low[:-1]
        ids = np.cumsum(starts)
        ids[~low] = 0
        hit = np.zeros(int(ids.max()) + 1, dtype=bool)
        hit[ids[feats]] = True
        hit[0] = False
        np.take(hit, ids, out=feats)
        self._dilate(feats)
        # A reference that is mostly "features" (terraces, a rough surface) says nothing.
        if np.count_nonzero(feats) > n // 2:
            feats[:] = False

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
        if self._terraces is not None:
            # Missing pixels stand in as the reference (the line's median at
            # first) and are left out of the fit.
            lev = self._ref.copy() if self._lines else np.full(self._cols, float(np.median(out[finite])))
            lev[finite] = out[finite]
            fit = self._anchor(lev, ~finite)
            if fit is not None:
                out[finite] = lev[finite]
                a += fit[0]
                b += fit[1]
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
    reject: float = 3.0,
    margin: int | None = None,
    slope: bool = True,
    restore_every: int = 2,
    anchor: bool = True,
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
    reference_lines, restore_slope_lines, restore_offset_lines, reject, margin, slope, restore_every, anchor
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
        anchor=anchor,
    )
    out = np.empty(image.shape, dtype=np.float32)
    order = range(image.shape[0]) if scan_direction == "down" else range(image.shape[0] - 1, -1, -1)
    for r in order:
        out[r] = leveller.push(image[r])
    return out
