"""Terrace heights seen so far in a stream of levelled lines: the anchor of the line-by-line leveller.

A leveller that fits each line against the lines before it (differences of
neighbouring lines, which keep step edges sharp) lets small errors add up
along the frame: on a single terrace the result drifts by tens of pm over a
512-line frame. A flat surface has no such freedom. Its terraces are flat,
each at its own height, so every levelled pixel should sit on one of a few
*levels* (the terrace heights) plus lattice, features and noise.

:class:`TerraceLevels` keeps those levels. For a new line, already levelled
against its predecessors, :meth:`TerraceLevels.correct` fits a small offset
and slope to the distance of every pixel from the level of its terrace: the
absolute row fit a whole-frame leveller makes, with nothing accumulated from
line to line. The terrace of a pixel is the level nearest to the
*reference* (the average of the last few levelled lines) smoothed over a box
of ``cols / 32`` pixels (at least 16): averaged over a few lines and a box, the corrugation
of a lattice, often a third of a step height and sometimes running along the
lines, shrinks to a few percent. Left out of the fit:

* pixels whose smoothed reference is near no level (terraces not seen yet);
* pixels where the new line departs from the reference by more than usual
  (a step edge that moved), and the stretches where the smoothed reference
  itself jumps (step flanks, features);
* features of the line: cores beyond ``reject`` noise levels grown over
  their flanks, and flanks that continue a feature of the previous line;
* pixels beyond ``reject`` noise levels of the fit.

The slope is fitted within each terrace and each stretch between steps, each
with its own offset, so that a step (or a slightly wrong height between two
levels) never passes for a tilt; a few kept pixels in the middle of a line
cannot tilt its ends, as the slope is shrunk towards the chained fit's by a
prior worth a tenth of a full line. The fit only has to start within half a
step of the truth, which the chained fit gives.

:meth:`TerraceLevels.learn` then moves the levels towards the final line and
adds a new one when the same plateau, a stretch of at least ``min_run``
pixels far from every level, shows up in ``birth_lines`` consecutive lines:
a terrace entering the frame. The first level comes from the first line
(:meth:`TerraceLevels.begin`), whose slope :meth:`TerraceLevels.first_line`
fits between the steps found on it.

Noise levels (of the smoothed reference, of the line about the reference,
of the fit) are refreshed every four lines from the pixels within
``reject`` times their previous value: a broad feature spreading over the
line cannot widen them, and they follow the noise when it grows.

Pure NumPy, O(columns) per line on preallocated buffers, plus a sort of a
stretch of pixels while a terrace not yet known is in view.
"""

from __future__ import annotations

import numpy as np

from .linefit import MAD_TO_SIGMA

__all__ = ["TerraceLevels"]

#: Weight of the chained fit's slope against the absolute fit's, as a fraction of a fully used line.
_SLOPE_PRIOR = 0.1


def _median(values: np.ndarray) -> float:
    """Upper median, partitioning ``values`` in place (scratch)."""
    k = values.size // 2
    values.partition(k)
    return float(values[k])


class TerraceLevels:
    """The heights of the terraces met so far, and the absolute line fit against them.

    Parameters
    ----------
    cols : int
        Pixels per line.
    reject : float, keyword-only
        Outlier threshold in robust standard deviations (of the fit, of the
        smoothed reference about its level, of the new line about the reference).
    flank : float, keyword-only
        Flanks of features: beyond this many standard deviations, on the
        same side as a core.
    birth : float, keyword-only
        A stretch of the smoothed reference further than ``birth`` standard
        deviations from every level may be a terrace not seen yet.
    birth_lines : int, keyword-only
        Consecutive lines in which a new plateau must show up before it
        becomes a level.
    box : int, optional, keyword-only
        Width of the smoothing box, pixels; default ``cols // 32``, at least 16
        and at most ``cols // 8``.
    min_run : int, optional, keyword-only
        Shortest stretch of a new terrace, pixels; default ``max(3, cols // 6)``.
    rate : float, keyword-only
        Fraction of a level's mean residual by which it moves per line.
    max_levels : int, keyword-only
        Levels kept; the one unused the longest goes first.

    Notes
    -----
    Lines are float64 in any unit; every threshold comes from the data's
    own noise levels, never from a unit.

    Examples
    --------
    Two terraces one unit apart; the lower one becomes a level after three
    lines, and a line that the chained fit left 0.02 too high comes back:

    >>> rng = np.random.default_rng(0)
    >>> x = np.arange(256.0)
    >>> def line():
    ...     return np.where(x < 160, 0.0, -1.0) + rng.normal(0, 0.01, x.size)
    >>> t = TerraceLevels(256)
    >>> first = line()
    >>> t.begin(first, floor=1e-12)
    >>> for _ in range(4):
    ...     lev = line()
    ...     _ = t.correct(lev, first, floor=1e-12)
    ...     t.learn(lev)
    >>> t.levels.round(2).tolist()
    [-1.0, 0.0]
    >>> da, db = t.correct(line() + 0.02, first, floor=1e-12)
    >>> round(da, 2)
    0.02
    """

    def __init__(
        self,
        cols: int,
        *,
        reject: float = 3.0,
        flank: float = 1.0,
        birth: float = 4.0,
        birth_lines: int = 3,
        box: int | None = None,
        min_run: int | None = None,
        rate: float = 0.125,
        max_levels: int = 16,
    ) -> None:
        n = self._cols = int(cols)
        self._reject = float(reject)
        self._flank = float(flank)
        self._birth = float(birth)
        self._birth_lines = int(birth_lines)
        self._min_run = max(3, n // 6) if min_run is None else max(1, int(min_run))
        self._min = max(3, n // 16)
        self._gap = max(1, n // 256)
        self._rate = float(rate)
        self._max_levels = int(max_levels)
        self._refresh = 4
        if box is None:
            # A lattice period is ~8 px at usual pitches, whatever the line length.
            box = max(3, min(n // 8, max(n // 32, 16)))
        half = max(1, int(box) // 2)
        self._lag = min(2 * half + 1, max(n - 1, 1))
        i = np.arange(n)
        self._lo = np.maximum(i - half, 0)
        self._hi = np.minimum(i + half + 1, n)
        self._inv = 1.0 / (self._hi - self._lo)
        x = np.arange(n, dtype=np.float64) - 0.5 * (n - 1)
        self._x = x
        self._xx = x * x
        self._prior = _SLOPE_PRIOR * float(self._xx.sum())
        self._cum = np.zeros(n + 1)
        self._s = np.empty(n)  # smoothed line
        self._sr = np.empty(n)  # smoothed reference
        self._res = np.empty(n)
        self._rs = np.empty(n)
        self._abs = np.empty(n)
        self._tmp = np.empty(n)
        self._w = np.empty(n)
        self._gate = np.zeros(n, dtype=bool)
        self._keep = np.zeros(n, dtype=bool)
        self._far = np.zeros(n, dtype=bool)
        self._idx = np.zeros(n, dtype=np.intp)
        self._low = np.zeros(n, dtype=bool)
        self._starts = np.zeros(n, dtype=bool)
        self._ids = np.zeros(n, dtype=np.intp)
        self._prev_next = np.zeros(n, dtype=bool)
        self._pairs = np.empty(max(n - self._lag, 1))
        self.reset()

    def reset(self) -> None:
        """Forget every level."""
        self._levels = np.empty(0)
        self._used = np.empty(0, dtype=np.int64)
        self._mid = np.empty(0)
        self._pending: list[list[float]] = []  # [sum of levels, votes, last line]
        self._line = 0
        self._sigma = 0.0
        self._kept = 0
        self._cached_pieces: np.ndarray | None = None
        self._agree = 0.0
        self._sigp = 0.0
        self._prev = np.zeros(self._cols, dtype=bool)
        self._prev_next = np.zeros(self._cols, dtype=bool)

    @property
    def levels(self) -> np.ndarray:
        """The terrace heights, ascending (a copy)."""
        return self._levels.copy()

    @property
    def count(self) -> int:
        """Number of levels."""
        return int(self._levels.size)

    @property
    def sigma(self) -> float:
        """Robust noise level of the smoothed reference (0 before the first line)."""
        return self._sigma

    def _smooth(self, values: np.ndarray, out: np.ndarray) -> None:
        """Box average of ``values`` into ``out``."""
        cum = self._cum
        np.cumsum(values, out=cum[1:])
        np.take(cum, self._hi, out=out)
        np.take(cum, self._lo, out=self._tmp)
        out -= self._tmp
        out *= self._inv

    def _pieces(self, sr: np.ndarray, floor: float) -> np.ndarray | None:
        """Step-free pieces of the smoothed reference ``sr``, and its noise level.

        Differences of ``sr`` a box apart measure its noise (into
        ``self._sigma``); those beyond ``birth`` noise levels are steps, or
        features. Returns the piece of every pixel (0 near a step or
        feature), or None when there is neither.
        """
        n, lag = self._cols, self._lag
        if n <= lag:
            self._sigma = max(self._sigma, floor)
            return None
        pairs = self._pairs
        np.subtract(sr[lag:], sr[:-lag], out=pairs)
        pairs -= _median(pairs.copy())
        np.abs(pairs, out=pairs)
        self._sigma = self._scale(pairs, np.sqrt(2.0) * self._sigma, floor) / np.sqrt(2.0)
        jumps = np.flatnonzero(pairs > max(self._birth * np.sqrt(2.0) * self._sigma, 0.5 * self._separation()))
        if jumps.size == 0:
            return None
        marks = np.bincount(jumps, minlength=n + 1)[: n + 1] - np.bincount(jumps + lag + 1, minlength=n + 1)[: n + 1]
        edge = np.cumsum(marks[:n]) > 0
        # Stretches of jumps; a feature rises and falls back within one, a
        # step leaves the two sides a separation apart.
        flags = np.concatenate(([False], edge, [False]))
        bounds = np.flatnonzero(flags[1:] != flags[:-1])
        lo, hi = bounds[0::2], bounds[1::2]
        inner = (lo > 0) & (hi < n)
        step = np.zeros(lo.size, dtype=bool)
        step[inner] = np.abs(sr[hi[inner]] - sr[lo[inner] - 1]) > 0.5 * self._separation()
        # ... with room for a terrace on either side.
        left = lo - np.concatenate(([0], hi[:-1]))
        right = np.concatenate((lo[1:], [n])) - hi
        step &= (left >= self._min_run // 4) & (right >= self._min_run // 4)
        if not step.any():
            piece = np.ones(n, dtype=np.intp)
        else:
            marks = np.zeros(n, dtype=np.intp)
            marks[hi[step]] = 1
            piece = np.cumsum(marks) + 1
        piece[edge] = 0
        return piece

    def _scale(self, dev: np.ndarray, old: float, floor: float) -> float:
        """Robust standard deviation of absolute deviations ``dev``, those beyond ``reject`` times ``old`` left out.

        Left in, a broad feature spreading over the line would widen the
        scale, the wider scale let in more of the feature, and so on: cut
        at the old scale, the estimate can only follow the noise (it grows
        by about a third per call when the noise does).
        """
        dev = dev[dev <= self._reject * old] if old > 0 else dev.copy()
        if dev.size < self._min:
            return max(old, floor)
        return max(MAD_TO_SIGMA * _median(dev), floor)

    def _nearest(self, values: np.ndarray, out: np.ndarray) -> None:
        """``values`` minus their nearest level into ``out``; the level's index into ``self._idx``."""
        if self._levels.size == 1:
            np.subtract(values, self._levels[0], out=out)
            self._idx[:] = 0
        else:
            np.copyto(self._idx, np.searchsorted(self._mid, values))
            np.subtract(values, self._levels[self._idx], out=out)

    def _on_levels(self, values: np.ndarray, out: np.ndarray) -> None:
        """``values`` minus the levels chosen in ``self._idx``."""
        if self._levels.size == 1:
            np.subtract(values, self._levels[0], out=out)
        else:
            np.subtract(values, self._levels[self._idx], out=out)

    def correct(
        self,
        lev: np.ndarray,
        ref: np.ndarray | None,
        *,
        floor: float,
        slope: bool = True,
        missing: np.ndarray | None = None,
    ) -> tuple[float, float] | None:
        """Offset and slope to subtract from ``lev`` so that its terrace pixels sit on their levels.

        Parameters
        ----------
        lev : numpy.ndarray
            ``(cols,)`` float64, the line levelled against the previous ones (finite).
        ref : numpy.ndarray or None
            ``(cols,)`` float64, the average of the previous levelled lines;
            None for the first line (the line stands for it).
        floor : float, keyword-only
            Smallest noise level (rounding of the data).
        slope : bool, keyword-only
            Fit a slope as well as an offset.
        missing : numpy.ndarray, optional, keyword-only
            ``(cols,)`` bool, pixels not measured (``lev`` holds stand-ins there).

        Returns
        -------
        (da, db) or None
            Offset, and slope per pixel about the line's centre; None when
            there are no levels yet or too few pixels on one.
        """
        self._kept = 0
        s, sr = self._s, self._sr
        self._smooth(lev, s)
        if ref is None:
            np.copyto(sr, s)
        else:
            self._smooth(ref, sr)
        # Noise levels change slowly: refreshed every few lines, which halves
        # the cost of a line; the steps and the scales on different lines, so
        # that no line pays for both.
        phase = self._line % self._refresh
        refresh = phase == self._refresh // 2 or self._sigma <= 0
        if phase == 0 or ref is None or self._sigma <= 0:
            # Steps move a pixel or so per line: their stretches are redrawn
            # with the noise levels.
            self._cached_pieces = self._pieces(sr, floor)
        pieces = self._cached_pieces
        sigma_s = self._sigma
        if self._levels.size == 0:
            return None
        res, absr, gate, keep, w, tmp, x = self._res, self._abs, self._gate, self._keep, self._w, self._tmp, self._x
        # The terrace of every pixel, from the reference; usable where the
        # reference sits near a level and the new line agrees with it (a
        # step edge that moved since makes them disagree).
        self._nearest(sr, self._rs)
        np.abs(self._rs, out=absr)
        np.less_equal(absr, max(self._reject * sigma_s, self._sigp), out=gate)
        if ref is not None:
            # Compared after taking out the robust line of the difference:
            # the chained fit's guess of the slope is rough.
            np.subtract(s, sr, out=tmp)
            n, h = self._cols, self._cols // 2
            tmp -= (_median(tmp[n - h :] - tmp[:h]) / max(n - h, 1)) * x
            tmp -= _median(tmp[gate]) if gate.any() else 0.0
            np.abs(tmp, out=tmp)
            if refresh or self._agree <= 0:
                self._agree = self._scale(tmp[gate], self._agree, floor)
            np.less_equal(tmp, self._reject * self._agree, out=keep)
            gate &= keep
        if missing is not None:
            np.logical_not(missing, out=keep)
            gate &= keep
        groups = None
        if pieces is not None:
            gate &= pieces > 0  # step flanks
            groups = pieces * self._levels.size + self._idx if self._levels.size > 1 else pieces
        elif self._levels.size > 1:
            groups = self._idx
        self._on_levels(lev, res)
        sample = res[gate]
        if sample.size < self._min:
            self._prev[:] = False
            return None
        a = _median(sample)
        np.subtract(res, a, out=tmp)
        np.abs(tmp, out=absr)
        if refresh or self._sigp <= 0:
            self._sigp = self._scale(absr[gate], self._sigp, floor)
        sigma = self._sigp
        thr = self._reject * sigma
        b = 0.0
        for it in range(2):
            if it:
                np.multiply(x, b, out=tmp)
                tmp += a
                np.subtract(res, tmp, out=tmp)
                np.abs(tmp, out=absr)
            if it:
                # Features and their faint flanks bias a line fit as much as
                # their tops: cores beyond `thr`, grown over their flanks.
                feats = self._features(absr, thr, self._flank * sigma)
                np.logical_not(feats, out=keep)
                gate &= keep
            np.less_equal(absr, thr, out=keep)
            keep &= gate
            np.copyto(w, keep)
            s0 = float(w.sum())
            if s0 < self._min:
                self._prev[:] = False
                return None
            sx = float(w @ x)
            sr_ = float(w @ tmp)
            db = 0.0
            if slope:
                # A few kept pixels in the middle of a line must not tilt its
                # ends: the slope is shrunk towards the chained fit's by a
                # prior worth a tenth of a fully used line.
                sxx = float(w @ self._xx)
                np.multiply(x, tmp, out=absr)
                sxr = float(w @ absr)
                if groups is not None:
                    # Slope from within each terrace and step-free piece
                    # only: a step, or a wrong height between two levels,
                    # must not pass for a tilt.
                    idx = groups[keep]
                    n_k = np.bincount(idx).astype(np.float64)
                    sx_k = np.bincount(idx, weights=x[keep])
                    sr_k = np.bincount(idx, weights=tmp[keep])
                    on = n_k > 0
                    sxx -= float(np.sum(sx_k[on] ** 2 / n_k[on]))
                    sxr -= float(np.sum(sx_k[on] * sr_k[on] / n_k[on]))
                    db = sxr / (sxx + self._prior) if sxx > 0 else 0.0
                else:
                    det = s0 * sxx - sx * sx
                    db = (s0 * sxr - sx * sr_) / (det + s0 * self._prior) if det > 0 else 0.0
            a += (sr_ - db * sx) / s0
            b += db
        self._kept = int(s0)
        return a, b

    def begin(self, lev: np.ndarray, *, floor: float) -> None:
        """Take the first level from ``lev``, the first levelled line: its densest plateau, smoothed."""
        self._smooth(lev, self._s)
        np.copyto(self._sr, self._s)
        self._cached_pieces = self._pieces(self._sr, floor)
        self._kept = 0
        self.learn(lev)

    def first_line(self, v: np.ndarray, *, floor: float, slope: bool = True) -> tuple[float, float]:
        """Offset and slope of a first line that may cross step edges: a staircase fit.

        Step edges are where the line smoothed over the box jumps by more than
        ``birth`` noise levels between points a box apart; between them lie
        segments, and the slope is fitted within the segments at least
        ``min_run`` pixels long, each with its own offset (a staircase has
        no outliers for a single straight line to reject). The offset is the
        median of the longest segment.

        Parameters
        ----------
        v : numpy.ndarray
            ``(cols,)`` float64 raw line, finite.
        floor : float, keyword-only
            Smallest noise level (rounding of the data).
        slope : bool, keyword-only
            Fit a slope as well as an offset.

        Returns
        -------
        a, b : float
            Offset and slope per pixel about the line's centre.
        """
        n, x, lag = self._cols, self._x, self._lag
        # Steps are found on the line smoothed over a box twice the usual:
        # a lattice period can approach the usual box, and a single line
        # has no neighbours to average the lattice with.
        lag = min(max(3, n // 16) | 1, max(n - 1, 1))
        half = lag // 2
        cum = np.concatenate(([0.0], np.cumsum(v)))
        i = np.arange(n)
        lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, n)
        s = (cum[hi] - cum[lo]) / (hi - lo)
        edge = np.zeros(n, dtype=bool)
        if n > lag:
            d = s[lag:] - s[:-lag]
            centre = _median(d.copy())
            dev = np.abs(d - centre)
            spread = max(MAD_TO_SIGMA * _median(dev.copy()), floor)
            jumps = np.flatnonzero(dev > self._birth * spread)
            if jumps.size:
                marks = np.zeros(n + 1, dtype=np.int64)
                np.add.at(marks, jumps, 1)
                np.add.at(marks, jumps + lag + 1, -1)
                edge = np.cumsum(marks[:n]) > 0
        seg = np.cumsum(np.concatenate(([True], edge[1:] != edge[:-1])))
        seg[edge] = 0
        counts = np.bincount(seg)
        counts[0] = 0
        longest = int(np.argmax(counts))
        if counts[longest] == 0:
            return 0.0, 0.0
        usable = counts[seg] >= min(self._min_run, int(counts[longest]))
        usable &= seg > 0
        b = 0.0
        keep = usable.copy()
        for _ in range(3):
            r = v - b * x
            if slope:
                idx = seg[keep]
                n_k = np.bincount(idx).astype(np.float64)
                sx_k = np.bincount(idx, weights=x[keep])
                sr_k = np.bincount(idx, weights=r[keep])
                on = n_k > 0
                sxx = float(x[keep] @ x[keep]) - float(np.sum(sx_k[on] ** 2 / n_k[on]))
                sxr = float(x[keep] @ r[keep]) - float(np.sum(sx_k[on] * sr_k[on] / n_k[on]))
                if sxx > 0:
                    b += sxr / sxx
            # Outliers (features) from every segment's own median.
            r = v - b * x
            med = np.zeros(counts.size)
            for k in np.flatnonzero(counts >= 1):
                sel = r[(seg == k) & usable]
                if sel.size:
                    med[k] = _median(sel.copy())
            dev = np.abs(r - med[seg])
            sigma = max(MAD_TO_SIGMA * _median(dev[usable].copy()), floor)
            keep = usable & (dev <= self._reject * sigma)
        r = v - b * x
        a = _median(r[seg == longest].copy())
        return a, b

    def _features(self, absr: np.ndarray, core: float, flank: float) -> np.ndarray:
        """Runs of ``absr`` beyond ``flank`` that hold a core beyond ``core`` or continue a feature of the last line."""
        low = self._low
        np.greater(absr, flank, out=low)
        starts = self._starts
        starts[0] = low[0]
        np.greater(low[1:], low[:-1], out=starts[1:])
        ids = self._ids
        np.cumsum(starts, out=ids)
        cores = absr > core
        cores |= low & self._prev
        marked = np.zeros(int(ids[-1]) + 1, dtype=bool)
        marked[ids[cores]] = True
        marked[0] = False
        feats = self._prev_next
        np.take(marked, ids, out=feats)
        feats &= low
        # Features continue into the next line.
        self._prev, self._prev_next = feats, self._prev
        return feats

    def learn(self, lev: np.ndarray) -> None:
        """Move the levels towards the final levelled line ``lev`` and add those of new terraces.

        Call after :meth:`correct`, with the line corrected by its result.
        """
        self._line += 1
        line = self._line
        n_levels = self._levels.size
        far = self._far
        sr, sigma = self._sr, self._sigma
        if n_levels == 0:
            far[:] = True
        else:
            if n_levels > 1 and self._kept:
                keep = self._keep  # the inliers of the last fit
                res = self._res
                self._on_levels(lev, res)
                idx = self._idx[keep]
                counts = np.bincount(idx, minlength=n_levels)
                sums = np.bincount(idx, weights=res[keep], minlength=n_levels)
                seen = counts >= self._min
                if seen.any():
                    self._levels[seen] += self._rate * sums[seen] / counts[seen]
                    self._used[seen] = line
                    self._sorted()
                    self._merge()
            elif self._kept:
                self._used[0] = line
            np.abs(self._rs, out=self._abs)
            np.greater(self._abs, self._separation(), out=far)
            if np.count_nonzero(far) < self._min_run:
                self._pending = [p for p in self._pending if p[2] >= line - 1]
                return
        run = self._longest_run(far)
        if run is not None:
            lo, hi = run
            values = sr[lo:hi][far[lo:hi]]
            self._candidate(np.sort(values), sigma, line)
        self._pending = [p for p in self._pending if p[2] >= line - 1]

    def _longest_run(self, far: np.ndarray) -> tuple[int, int] | None:
        """The longest stretch of ``far`` pixels, gaps of up to ``_gap`` pixels bridged, if long enough."""
        flags = np.concatenate(([False], far, [False]))
        edges = np.flatnonzero(flags[1:] != flags[:-1])
        starts, ends = edges[0::2], edges[1::2]
        if starts.size == 0:
            return None
        # Bridge short gaps: features and noise dip below the threshold on a terrace.
        join = starts[1:] - ends[:-1] <= self._gap
        if join.any():
            starts = starts[np.concatenate(([True], ~join))]
            ends = ends[np.concatenate((~join, [True]))]
        lengths = ends - starts
        j = int(np.argmax(lengths))
        if lengths[j] < self._min_run:
            return None
        return int(starts[j]), int(ends[j])

    def _candidate(self, values: np.ndarray, sigma: float, line: int) -> None:
        """The densest plateau of ``values`` (sorted, smoothed heights) votes for a new level."""
        m = values.size
        if m < self._min:
            return
        width = self._reject * sigma
        ends = np.searchsorted(values, values + width, side="right")
        counts = ends - np.arange(m)
        j = int(np.argmax(counts))
        if counts[j] < self._min_run:
            return
        plateau = values[j : ends[j]]
        level = float(plateau[plateau.size // 2])
        if self._levels.size == 0:
            self._add(level, line)
            return
        votes, total = 1, level
        for p in self._pending:
            if p[2] >= line - 1 and abs(p[0] / p[1] - level) <= width:
                p[0] += level
                p[1] += 1
                p[2] = line
                votes, total = int(p[1]), p[0]
                break
        else:
            self._pending.append([level, 1.0, float(line)])
        if votes >= self._birth_lines:
            self._pending = [p for p in self._pending if p[1] < self._birth_lines]
            self._add(total / votes, line)

    def _add(self, level: float, line: int) -> None:
        if self._levels.size and float(np.min(np.abs(self._levels - level))) <= self._separation():
            return
        if self._levels.size >= self._max_levels:
            drop = int(np.argmin(self._used))
            self._levels = np.delete(self._levels, drop)
            self._used = np.delete(self._used, drop)
        self._levels = np.append(self._levels, level)
        self._used = np.append(self._used, line)
        self._sorted()

    def _merge(self) -> None:
        """Levels that have come within ``reject`` noise levels of each other are one: keep the one in use."""
        if self._levels.size < 2:
            return
        close = np.diff(self._levels) <= 0.75 * self._separation()
        if close.any():
            j = int(np.flatnonzero(close)[0])
            drop = j if self._used[j] < self._used[j + 1] else j + 1
            self._levels = np.delete(self._levels, drop)
            self._used = np.delete(self._used, drop)
            self._mid = 0.5 * (self._levels[1:] + self._levels[:-1])

    def _separation(self) -> float:
        """Least height between two levels: beyond the noise of the smoothed reference and the pixel spread."""
        return max(self._birth * self._sigma, 2.0 * self._sigp)

    def _sorted(self) -> None:
        order = np.argsort(self._levels, kind="stable")
        self._levels = self._levels[order]
        self._used = self._used[order]
        self._mid = 0.5 * (self._levels[1:] + self._levels[:-1])
