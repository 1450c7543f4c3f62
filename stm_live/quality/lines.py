"""Tip changes, line by line: a sudden, lasting change of the statistics of scan lines.

When the tip apex changes, every line after it looks different: the atomic
corrugation shrinks or grows, edges blur or sharpen, and the forward and
backward lines may stop agreeing. :class:`TipChangeDetector` follows
per-line statistics (:func:`line_features`, each O(columns)) and compares the median of the last few lines
with the median and spread of the lines before them: a change of many
spreads that lasts is a tip change; a single odd line (a scar, a feature) is
not, because it cannot move a median of several lines. Nor is a change in which
the detail along the lines and across them move apart: that is the lattice
turning at a step edge (Si(001)'s dimer rows), not the tip.

Pure: arrays in, events out, no clock. Works on raw or levelled lines, in any
unit (the statistics are logarithms of spreads).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FEATURES", "WATCHED", "TipChangeDetector", "TipChangeEvent", "line_features"]

#: The per-line statistics, in the order :func:`line_features` returns them.
FEATURES = ("detail", "along", "across", "fwd_bwd")
#: The statistics the detector watches: those a tip change moves whatever the lattice's orientation.
WATCHED = ("detail", "fwd_bwd")
_EPS = 1e-30


def _mad(d: np.ndarray) -> float:
    d = d[np.isfinite(d)]
    if d.size < 8:
        return math.nan
    return float(np.median(np.abs(d - np.median(d))))


def _detrend(d: np.ndarray) -> np.ndarray:
    """``d`` less its least-squares line (the two lines' offsets and slopes differ for reasons other than the tip)."""
    ok = np.isfinite(d)
    if ok.sum() < 3:
        return d
    x = np.arange(d.size, dtype=np.float64)
    xm, dm = float(x[ok].mean()), float(d[ok].mean())
    xc = x[ok] - xm
    slope = float((xc * (d[ok] - dm)).sum() / (xc * xc).sum())
    return d - dm - slope * (x - xm)


def _log(v: float) -> float:
    return math.log(v + _EPS) if math.isfinite(v) else math.nan


def line_features(line: np.ndarray, previous: np.ndarray | None = None,
                  backward: np.ndarray | None = None) -> np.ndarray:
    """The statistics of one line: ``(detail, along, across, fwd_bwd)``, O(columns).

    * ``along``: log of the robust spread (median absolute deviation) of the
      differences of neighbouring pixels along the line (a step edge touches
      one of them, tilt shifts them all);
    * ``across``: the same for the difference from the previous line (its
      offset and slope removed): the detail across lines, which is all there
      is when atomic rows run along the scan lines;
    * ``detail``: half the log of the sum of both spreads squared: the
      finest detail whatever its orientation. On Si(001) the dimer rows turn
      by 90 degrees at every step, which swaps ``along`` and ``across`` but
      leaves ``detail``; a blunter tip lowers it, a sharper one raises it;
    * ``fwd_bwd``: log of the robust spread of forward minus backward,
      relative to ``along``: how far the two passes disagree (an unstable or
      double tip).

    Parameters
    ----------
    line : numpy.ndarray
        ``(cols,)`` values of one line, display order; NaN pixels are ignored.
    previous : numpy.ndarray, optional
        The line scanned before it (without it ``detail`` is ``along``'s and ``across`` NaN).
    backward : numpy.ndarray, optional
        The backward line over the same pixels, display order (NaN ``fwd_bwd`` without).

    Returns
    -------
    numpy.ndarray
        ``(4,)`` float64 logarithms (of the line's unit); NaN where a statistic cannot be computed.

    Examples
    --------
    >>> x = np.arange(256.0)
    >>> sharp = line_features(np.sin(x * 1.3))
    >>> blunt = line_features(0.3 * np.sin(x * 1.3))
    >>> bool(sharp[0] > blunt[0] + 1.0)
    True
    """
    v = np.asarray(line, dtype=np.float64)
    out = np.full(4, np.nan)
    if np.isfinite(v).sum() < 8:
        return out
    along = _mad(np.diff(v))
    across = _mad(_detrend(v - np.asarray(previous, dtype=np.float64))) if previous is not None else math.nan
    out[1] = _log(along)
    out[2] = _log(across)
    out[0] = 0.5 * _log(along * along + across * across) if math.isfinite(across) else out[1]
    if backward is not None:
        out[3] = _log(_mad(v - np.asarray(backward, dtype=np.float64))) - out[1]
    return out


@dataclass(frozen=True)
class TipChangeEvent:
    """A tip change: the first line that looks different, the line it was seen at, the evidence.

    ``line`` and ``detected_at`` count lines pushed (0 = the first line of
    the scan), in acquisition order; ``z`` is each statistic's change in
    robust spreads of the lines before it.
    """

    line: int
    detected_at: int
    z: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"line": self.line, "detected_at": self.detected_at, "z": {k: round(v, 2) for k, v in self.z.items()}}


class TipChangeDetector:
    """Watch the lines of one scan for a tip change.

    Each statistic is first averaged over the last ``smooth`` lines. At 0.2 nm
    per pixel the dimer rows are 4 lines apart and, where they run along the
    scan lines, the statistics of a line can swing with the line's place on
    the rows, with a period of 2 to 4 lines (by up to 0.4 in log units, more
    than a tip change moves them). Averaging 3 lines cancels a period of 3
    and takes two thirds of a period of 2 out, at the cost of about one line
    of delay. The threshold is in line-to-line spreads of the averaged
    statistic: as neighbouring averages share two lines, that spread is
    smaller than the averages' spread about their median (for independent
    lines by a factor 1.7), so 9 of them are about 5 of the latter.

    Parameters
    ----------
    reference : int
        Lines before the test window that define "normal".
    test : int
        Lines whose median must have moved (the detection delay is about this
        many lines plus ``smooth - 1``).
    threshold : float
        Change, in robust spreads of the reference lines, that counts.
    min_spread : float
        Smallest spread assumed for a statistic (log units), so that a very
        regular run of lines does not make tiny changes look large.
    stable : float
        The lines just before the test window must agree with the reference
        within this many spreads: while a step edge sweeps through, there is
        no baseline to compare with. (4 before the averaging; the averaged
        statistic's spread is smaller, so the same tolerance takes more.)
    smooth : int
        Lines each statistic is averaged over before the comparison (1: none).
    turn : float
        A change is not a tip change when ``along`` and ``across`` moved apart
        (log units, median of the last ``test`` lines, unaveraged, against the
        median of the reference averages),
        each by at least this much: the lattice turned, as on Si(001) where
        the dimer rows turn by 90 degrees at every step edge, and a step edge
        nearly parallel to the scan lines sweeps from one terrace to the next
        within a few lines. A tip change moves both the same way (a blunter
        tip blurs detail along and across the lines). The lines after the
        turn are then the new normal. ``inf``: never.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> det = TipChangeDetector()
    >>> x = np.arange(256.0)
    >>> lines = [np.sin(x * 1.3) * (1.0 if i < 60 else 0.4) + 0.01 * rng.standard_normal(256) for i in range(100)]
    >>> events = [e for e in (det.push(v) for v in lines) if e is not None]
    >>> events[0].line, events[0].detected_at - events[0].line < 10
    (60, True)
    """

    def __init__(self, *, reference: int = 24, test: int = 4, threshold: float = 9.0,
                 min_spread: float = 0.04, stable: float = 6.0, smooth: int = 3, turn: float = 0.4) -> None:
        if reference < 4 or test < 1 or smooth < 1:
            raise ValueError(f"reference must be >= 4, test and smooth >= 1 lines, got {reference}, {test}, {smooth}")
        self.reference = int(reference)
        self.test = int(test)
        self.threshold = float(threshold)
        self.min_spread = float(min_spread)
        self.stable = float(stable)
        self.smooth = int(smooth)
        self.turn = float(turn)
        self._history: deque[np.ndarray] = deque(maxlen=self.reference + self.test)
        # (line index, statistics) of the last lines, unsmoothed: the running mean, and where the change began
        self._recent: deque[tuple[int, np.ndarray]] = deque(maxlen=self.smooth + self.test)
        self._previous: np.ndarray | None = None
        self._lines = 0
        self.events: list[TipChangeEvent] = []
        #: Lines at which a change was put down to the lattice turning (a step edge), not to the tip.
        self.turns: list[int] = []
        #: The evidence of the last line (statistic -> change in spreads), for diagnostics.
        self.last_z: dict[str, float] = {}

    def reset(self) -> None:
        """A new scan: forget every line."""
        self._history.clear()
        self._recent.clear()
        self._previous = None
        self._lines = 0
        self.events = []
        self.turns = []

    @property
    def lines(self) -> int:
        """Lines pushed since the last reset."""
        return self._lines

    def push(self, line: np.ndarray, backward: np.ndarray | None = None) -> TipChangeEvent | None:
        """Take the next line (acquisition order); a :class:`TipChangeEvent` when it completes the evidence."""
        features = line_features(line, self._previous, backward)
        self._previous = np.asarray(line)
        return self.push_features(features)

    def push_features(self, features: np.ndarray) -> TipChangeEvent | None:
        """As :meth:`push`, with the line's :func:`line_features` already computed."""
        self._lines += 1
        f = np.asarray(features, dtype=np.float64)
        if not math.isfinite(f[0]):
            return None  # an empty or broken line tells nothing
        self._recent.append((self._lines - 1, f))
        if len(self._recent) < self.smooth:
            return None
        self._history.append(np.mean([g for _, g in list(self._recent)[-self.smooth:]], axis=0))
        if len(self._history) < self.reference + self.test:
            return None
        h = np.array(self._history)
        ref, test = h[: self.reference], h[self.reference:]
        pre = ref[-self.test:]
        z: dict[str, float] = {}
        levels: dict[str, tuple[float, float]] = {}
        for name in WATCHED:
            k = FEATURES.index(name)
            r, p, t = ref[:, k], pre[:, k], test[:, k]
            steps = np.diff(r)
            steps = steps[np.isfinite(steps)]
            r = r[np.isfinite(r)]
            p = p[np.isfinite(p)]
            t = t[np.isfinite(t)]
            if steps.size < self.reference // 2 or p.size < (self.test + 1) // 2 or t.size < (self.test + 1) // 2:
                continue
            # Line-to-line noise of the statistic (a slow trend, as when a step edge sweeps
            # across the lines, hardly raises it): the spread of its changes from line to line.
            spread = max(1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / math.sqrt(2.0),
                         self.min_spread)
            before = float(np.median(p))
            if abs(before - float(np.median(r[: -self.test]))) > self.stable * spread:
                continue  # the lines just before were themselves moving (a step edge passing): no baseline
            # An abrupt, lasting change: every test line beyond the lines just before it and beyond
            # the reference as a whole, the same way (a dip that recovers is not a change).
            moves = []
            for med in (before, float(np.median(r))):
                lo, hi = float(t.min()) - med, float(t.max()) - med
                moves.append(lo if lo > 0 else hi if hi < 0 else 0.0)
            moved = min(moves, key=abs) if moves[0] * moves[1] > 0 else 0.0
            z[name] = moved / spread
            levels[name] = (before, float(np.median(t)))
        self.last_z = z
        if not z or max(abs(v) for v in z.values()) < self.threshold:
            return None
        if self._turned(ref, np.array([g for _, g in list(self._recent)[-self.test:]])):
            self.turns.append(self._lines - 1)
            self._history.clear()  # the new terrace is the new normal
            self._recent.clear()
            return None
        event = TipChangeEvent(line=self._first_changed(z, levels), detected_at=self._lines - 1, z=z)
        self.events.append(event)
        self._history.clear()  # the new tip is the new normal
        self._recent.clear()
        return event

    def _turned(self, ref: np.ndarray, test: np.ndarray) -> bool:
        """Whether ``along`` and ``across`` moved apart by at least ``turn`` each: the lattice turned.

        ``ref`` are the reference averages, ``test`` the last lines unaveraged: the first line
        of a tip change can itself be odd (its ``across`` compares two tips), and in averages
        it would reach most of the test window, where a median of single lines ignores it.
        """
        k, m = FEATURES.index("along"), FEATURES.index("across")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no previous line): no turn
            moved = np.nanmedian(test[:, [k, m]], axis=0) - np.nanmedian(ref[:, [k, m]], axis=0)
        if not np.isfinite(moved).all() or moved[0] * moved[1] >= 0:
            return False
        return bool(np.abs(moved).min() >= self.turn)

    def _first_changed(self, z: dict[str, float], levels: dict[str, tuple[float, float]]) -> int:
        """The first line of the change: the earliest line, unsmoothed, of the first test average past halfway."""
        name = max(z, key=lambda n: abs(z[n]))
        k = FEATURES.index(name)
        before, after = levels[name]
        half, sign = 0.5 * (before + after), math.copysign(1.0, after - before)
        recent = list(self._recent)
        first = len(recent) - self.test  # the last line of the test window's first average
        for i in range(max(0, first - self.smooth + 1), first + 1):
            if sign * (recent[i][1][k] - half) > 0:
                return recent[i][0]
        return recent[first][0]
