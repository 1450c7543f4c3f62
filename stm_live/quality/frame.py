"""A whole frame judged: ``good``, ``bad`` or ``tip_change``, with the line of a change and the evidence.

What a microscopist looks for, as numbers (:func:`frame_evidence`):

* **a tip change** is a line across which the image changes abruptly and
  for good: its brightness (the tip's apparent height), its finest detail
  (:func:`~stm_live.quality.lines.line_features`), and how well each line
  matches the one before it. For every line the median of each statistic
  over the lines below is compared with that over the lines above, in units
  of the statistic's line-to-line noise; the largest combined change marks
  the candidate line (``tip_change_z``), and a change that is really one odd
  line (a scar) is not counted because medians ignore it;
* a tip change can also be a **break**: one line that does not match the
  line before it while the lines after it match theirs (``break_z``; a
  scar is two such lines, in and out, and does not count);
* a boundary between **bands** imaged by different apex states, even when
  it is smeared over a line or two (``band_break_z``: lines three apart
  compared across it);
* **a bad frame** shows no clear structure: the strongest peak of its power
  spectrum (the atomic lattice, rows) is weak over the background
  (``lattice``), or it is too small to judge. ``sharpness`` (fine detail
  for the contrast) and ``broken_lines`` (lines that match neither
  neighbour) are reported as evidence; on the development images they did
  not help the verdict.

* ``periodicity``: how strongly the image repeats itself (the highest
  autocorrelation beyond its central lobe): resolved rows or dimers repeat,
  the blobs of a blunt tip, blur and noise do not.

:func:`judge_frame` turns the evidence into a verdict with fixed thresholds
(:data:`THRESHOLDS`, set by hand on the development part of the real
tip-state images) or with a learned combination of the numbers
(:mod:`.learned`, the default), fitted on simulated frames only
(``benchmarks/fit_quality_model.py``); ``benchmarks/eval_quality.py``
reports how each does on the real images. Works on any image: metres, amperes, or the grey levels of a PNG;
no physical size is needed. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .lines import line_features

__all__ = ["FEATURE_NAMES", "THRESHOLDS", "Verdict", "frame_evidence", "judge_frame", "model_features"]

#: Decision thresholds (see :func:`judge_frame`), chosen on the development part of the real
#: tip-state images as the best balance of both recalls with at most 10 % of good frames called
#: tip_change and at most 10 % called bad (``benchmarks/eval_quality.py``).
THRESHOLDS: dict[str, float] = {
    "tip_change_z": 14.0,
    "break_z": 8.0,
    "lattice_min": 1.25,
}
#: The evidence numbers the learned combination (:mod:`.learned`) reads, in order.
FEATURE_NAMES = ("log1p_tip_change_z", "log1p_break_z", "lattice", "sharpness", "too_small", "periodicity",
                 "log1p_band_break_z")
#: Fewest lines a frame needs to be judged at all.
MIN_LINES = 32


@dataclass(frozen=True)
class Verdict:
    """The judgement of one frame.

    Attributes
    ----------
    verdict : {"good", "bad", "tip_change"}
    tip_change_line : int or None
        The first line (display row) that looks different, for a tip change.
    evidence : dict
        The numbers behind it (:func:`frame_evidence`), and ``reasons``.
    """

    verdict: str
    tip_change_line: int | None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"verdict": self.verdict, "tip_change_line": self.tip_change_line, "evidence": self.evidence}


def _mad(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(np.median(np.abs(a - np.median(a)))) if a.size else math.nan


def _row_match(img: np.ndarray, lag: int = 1) -> np.ndarray:
    """Correlation of each line with the one ``lag`` lines before it (offset and slope removed); NaN for the
    first ``lag``."""
    rows, cols = img.shape
    x = np.arange(cols) - (cols - 1) / 2.0
    a = img - img.mean(axis=1, keepdims=True)
    slope = (a @ x) / (x @ x)
    a = a - slope[:, None] * x[None, :]
    norm = np.sqrt((a * a).sum(axis=1))
    c = np.full(rows, np.nan)
    den = norm[lag:] * norm[:-lag]
    ok = den > 0
    c[lag:][ok] = (a[lag:] * a[:-lag]).sum(axis=1)[ok] / den[ok]
    return c


def _band_break(img: np.ndarray, edge: int) -> tuple[float, int]:
    """A boundary between two bands imaged differently, even when it is smeared over a line or two.

    Lines three apart are compared (their correlation, in robust units of its spread over the frame):
    a boundary between lines ``b - 1`` and ``b`` lowers all three pairs that span it, ``(b, b - 3)``,
    ``(b + 1, b - 2)`` and ``(b + 2, b - 1)``; a scar of one or two lines lowers at most two in a row.
    Returns the smallest drop of the best such run of three, and ``b``.
    """
    mz = np.arctanh(np.clip(_row_match(img, 3), -0.99, 0.99))
    valid = mz[np.isfinite(mz)]
    if valid.size < 8:
        return 0.0, 0
    drop = (float(np.median(valid)) - mz) / max(1.4826 * _mad(valid), 0.05)
    drop[~np.isfinite(drop)] = 0.0  # the first lines, and flat ones (no correlation to measure)
    run = np.minimum(np.minimum(drop[:-2], drop[1:-1]), drop[2:])
    run = np.r_[run, 0.0, 0.0]
    run[:edge] = 0.0
    run[len(run) - edge:] = 0.0
    b = int(np.argmax(run))
    return max(float(run[b]), 0.0), b


def _change_profile(series: np.ndarray, width: int, floor: float) -> np.ndarray:
    """For every line t: (median of lines t..t+w-1 - median of lines t-w..t-1) / line-to-line noise
    (at least ``floor``)."""
    s = np.asarray(series, dtype=np.float64)
    n = s.size
    z = np.zeros(n)
    steps = np.diff(s)
    noise = 1.4826 * _mad(steps) / math.sqrt(2.0)
    noise = max(noise, floor) if math.isfinite(noise) else floor
    for t in range(width, n - width + 1):
        above = s[t - width:t]
        below = s[t:t + width]
        above, below = above[np.isfinite(above)], below[np.isfinite(below)]
        if above.size and below.size:
            # A step, not a slope: the change must also stand out from the spread within each side
            # (a feature that fades in over many lines has as much spread as change).
            local = 1.4826 * max(_mad(above), _mad(below))
            z[t] = (float(np.median(below)) - float(np.median(above))) / max(noise, local)
    return z


def _periodicity(power: np.ndarray, radius: np.ndarray) -> float:
    """How strongly the image repeats itself: the highest autocorrelation beyond its central lobe.

    ``power`` is the centred power spectrum of the windowed image, ``radius`` each pixel's distance
    from the centre as a fraction of the frame. The autocorrelation (normalised to 1 at zero shift)
    is cut where it first falls to zero around zero shift; the largest value outside that lobe,
    within 0.35 of the frame, is returned: about 0.5-0.8 for resolved rows or dimers, near 0 for
    blobs, blur or noise (a blunt tip keeps the image correlated over long shifts, but not again
    after falling off).
    """
    acf = np.fft.fftshift(np.real(np.fft.ifft2(np.fft.ifftshift(power))))
    rows, cols = acf.shape
    peak = float(acf[rows // 2, cols // 2])
    if not peak > 0:
        return 0.0
    acf /= peak
    lobes, _ = ndimage.label(acf > 0.0)
    outside = (lobes != lobes[rows // 2, cols // 2]) & (radius < 0.35)
    return float(acf[outside].max()) if outside.any() else 0.0


def frame_evidence(image: np.ndarray) -> dict[str, Any]:
    """The numbers :func:`judge_frame` decides on.

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` in display order, any unit; NaN rows (not scanned) are dropped.

    Returns
    -------
    dict
        ``lines``; ``tip_change_z`` (largest combined change across one line,
        in noise units) and ``tip_change_line``; ``lattice`` (log of the
        strongest spectral peak over the median power, less the log of the
        number of frequencies searched: about 0 for noise); ``sharpness`` (log of
        the fine detail over the robust spread of the image); ``broken_lines``
        (fraction of lines that do not match their neighbours); ``periodicity``
        (highest autocorrelation beyond the central lobe: about 0.5-0.8 for
        resolved rows, near 0 for blobs, blur or noise); ``band_break_z`` and ``band_break_line``
        (a boundary between two differently imaged bands, see :func:`_band_break`).
    """
    img = np.asarray(image, dtype=np.float64)
    img = img[np.isfinite(img).all(axis=1)] if img.ndim == 2 else img
    if img.ndim != 2 or img.shape[0] < MIN_LINES or img.shape[1] < MIN_LINES:
        return {"lines": int(img.shape[0]) if img.ndim == 2 else 0}
    rows, cols = img.shape
    if float(np.ptp(img)) == 0.0:
        return {"lines": rows, "flat": True}
    spread = _mad(img - np.median(img, axis=1, keepdims=True))
    scale = spread if spread > 0 else (float(np.std(img)) or 1.0)
    img = (img - float(np.median(img))) / scale  # robust units: the same for metres and grey levels
    # Per-line statistics: brightness, finest detail, match with the previous line.
    bright = np.median(img, axis=1)
    feats = np.array([line_features(img[i], img[i - 1] if i else None) for i in range(rows)])
    detail = feats[:, 0]
    detail[0] = detail[1]
    detail = np.maximum(detail, math.log(1e-2))
    match = _row_match(img)
    match[0] = match[1]
    width = max(6, rows // 12)
    # Noise floors in the image's robust units (and log units), so that a very smooth image or grey
    # levels quantised to integers do not make tiny changes look large.
    profiles = [_change_profile(s, width, floor) for s, floor in
                ((bright, 0.05), (detail, 0.05), (np.arctanh(np.clip(match, -0.99, 0.99)), 0.05))]
    combined = np.sqrt(sum(p * p for p in profiles))
    edge = max(2, rows // 32)  # the first and last lines of a frame are often odd (creep, the turn)
    combined[:edge] = 0.0
    combined[rows - edge:] = 0.0
    # A break: one line that does not match the line before it while its neighbours match theirs
    # (a scar is two such lines in a row: into it and out of it).
    mz = np.arctanh(np.clip(match, -0.99, 0.99))
    mm = float(np.median(mz[1:]))
    ms = max(1.4826 * _mad(mz[1:]), 0.05)
    drop = (mm - mz) / ms
    drop[0] = 0.0
    ok_before = np.r_[True, drop[:-1] < 3.0]
    ok_after = np.r_[drop[1:] < 3.0, True]
    isolated = np.where(ok_before & ok_after, drop, 0.0)
    isolated[:edge] = 0.0
    isolated[rows - edge:] = 0.0
    t = int(np.argmax(combined))
    b = int(np.argmax(isolated))
    band_z, band_line = _band_break(img, edge)
    # Bad lines: far below the typical match with their neighbours.
    m = match[np.isfinite(match)]
    med = float(np.median(m)) if m.size else 0.0
    low = med - max(6 * 1.4826 * _mad(m), 0.15) if m.size else 0.0
    broken = float(np.mean(m < low)) if m.size else 0.0
    # Lattice: strongest peak of the power spectrum away from the centre, over its median.
    a = img - img.mean()
    a = a * np.outer(np.hanning(rows), np.hanning(cols))
    power = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    yy, xx = np.mgrid[0:rows, 0:cols]
    r = np.hypot((yy - rows // 2) / rows, (xx - cols // 2) / cols)
    ring = (r > 0.03) & (r < 0.45)
    # The largest of n noise values is about log(n) above their median: take that off, so that the
    # number means the same for 128 and 512 pixels (about 0 for noise).
    lattice = float(np.log(power[ring].max() / max(float(np.median(power[ring])), 1e-30)) - np.log(ring.sum()))
    periodicity = _periodicity(power, r)
    sharpness = float(np.median(detail))
    return {
        "lines": rows,
        "tip_change_z": round(float(combined[t]), 3),
        "tip_change_line": t,
        "break_z": round(float(isolated[b]), 3),
        "break_line": b,
        "band_break_z": round(band_z, 3),
        "band_break_line": band_line,
        "tip_change_parts": {k: round(float(p[t]), 2) for k, p in zip(("brightness", "detail", "match"), profiles,
                                                                        strict=True)},
        "lattice": round(lattice, 3),
        "periodicity": round(periodicity, 3),
        "sharpness": round(sharpness, 3),
        "broken_lines": round(broken, 4),
    }


def model_features(evidence: dict[str, Any]) -> np.ndarray:
    """The evidence as the vector :data:`FEATURE_NAMES` (what the learned combination reads)."""
    if "tip_change_z" not in evidence:
        return np.array([0.0, 0.0, -5.0, -5.0, 1.0, 0.0, 0.0])
    return np.array([math.log1p(evidence["tip_change_z"]), math.log1p(evidence["break_z"]),
                     float(evidence["lattice"]), float(evidence["sharpness"]), 0.0, float(evidence["periodicity"]),
                     math.log1p(evidence["band_break_z"])])


def _probabilities(ev: dict[str, Any]) -> dict[str, float]:
    from .learned import MODEL

    x = (model_features(ev) - np.array(MODEL["mean"])) / np.array(MODEL["scale"])
    logits = np.r_[x, 1.0] @ np.array(MODEL["weights"])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return dict(zip(MODEL["classes"], (round(float(v), 4) for v in p), strict=True))


def learned_probabilities(image: np.ndarray) -> dict[str, float] | None:
    """The learned judgement's probability of each verdict, or None for a frame too small or flat to judge."""
    ev = frame_evidence(image)
    if ev.get("flat") or "tip_change_z" not in ev:
        return None
    return _probabilities(ev)


def _learned(ev: dict[str, Any], calibration: Mapping[str, float] | None = None) -> Verdict:
    from .learned import MODEL

    prob = _probabilities(ev)
    ev["probability"] = prob
    th = dict(calibration) if calibration is not None else MODEL["threshold"]
    tag = ", calibrated" if calibration is not None else ""
    if prob["tip_change"] > th["tip_change"]:
        line = ev["break_line"] if ev["break_z"] > ev["tip_change_z"] / 2 else ev["tip_change_line"]
        ev["reasons"] = [f"tip change likely ({prob['tip_change']:.2f} > {th['tip_change']:.2f}{tag}); strongest "
                         f"change at line {line}"]
        return Verdict("tip_change", int(line), ev)
    if prob["bad"] > th["bad"]:
        ev["reasons"] = [f"bad frame likely ({prob['bad']:.2f} > {th['bad']:.2f}{tag}): spectral peak "
                         f"{ev['lattice']:.1f}, fine detail {ev['sharpness']:.2f}"]
        return Verdict("bad", None, ev)
    ev["reasons"] = []
    return Verdict("good", None, ev)


def judge_frame(image: np.ndarray, *, method: str = "learned",
                thresholds: dict[str, float] | None = None,
                calibration: Mapping[str, float] | None = None) -> Verdict:
    """``good``, ``bad`` or ``tip_change`` for one frame, with the evidence.

    ``method="learned"`` (default): a logistic combination of the evidence
    (:mod:`.learned`, fitted on simulated frames only) gives each verdict a
    probability; tip_change, then bad, is called above its threshold (set for
    10 false alarms per 100 simulated good frames). ``method="thresholds"``: a tip change when the combined change
    across one line reaches ``tip_change_z`` or one line breaks
    (``break_z``); otherwise bad when its lattice peak is weak
    (``lattice_min``). Either way a frame too small to judge, or flat, is bad.

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` display order, any unit.
    method : {"learned", "thresholds"}
    thresholds : dict, optional
        Override some of :data:`THRESHOLDS` (``method="thresholds"``).
    calibration : mapping, optional
        ``{"tip_change": p, "bad": p}``: the learned judgement's thresholds
        calibrated on a lab's own good frames (:mod:`.calibrate`) instead of
        the simulated ones.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y, x = np.mgrid[0:128, 0:128]
    >>> rows_ = np.sin(x * 0.8 + y * 0.3) + 0.1 * rng.standard_normal((128, 128))
    >>> judge_frame(rows_).verdict
    'good'
    >>> blunt = rows_.copy()
    >>> blunt[70:] = 0.3 * blunt[70:] + 2.0         # dimmer and higher from line 70 on
    >>> v = judge_frame(blunt)
    >>> v.verdict, abs(v.tip_change_line - 70) <= 4
    ('tip_change', True)
    >>> jumped = rows_.copy()
    >>> jumped[70:] = np.roll(jumped[70:], 2, axis=1)  # the apex moved sideways at line 70
    >>> v = judge_frame(jumped)
    >>> v.verdict, v.tip_change_line
    ('tip_change', 70)
    >>> judge_frame(jumped, method="thresholds").verdict
    'tip_change'
    >>> judge_frame(0.1 * rng.standard_normal((128, 128))).verdict
    'bad'
    """
    if method not in ("learned", "thresholds"):
        raise ValueError(f"method {method!r}: expected 'learned' or 'thresholds'")
    th = {**THRESHOLDS, **(thresholds or {})}
    ev = frame_evidence(image)
    if ev.get("flat"):
        ev["reasons"] = ["every value is the same: no image (a channel not recorded, or the feedback off?)"]
        return Verdict("bad", None, ev)
    if "tip_change_z" not in ev:
        ev["reasons"] = [f"only {ev['lines']} complete lines (fewer than {MIN_LINES}): nothing to judge"]
        return Verdict("bad", None, ev)
    if method == "learned":
        return _learned(ev, calibration)
    if ev["tip_change_z"] >= th["tip_change_z"]:
        ev["reasons"] = [f"abrupt lasting change at line {ev['tip_change_line']}: {ev['tip_change_z']:.1f} noise "
                         f"units (>= {th['tip_change_z']:g})"]
        return Verdict("tip_change", int(ev["tip_change_line"]), ev)
    if ev["break_z"] >= th["break_z"]:
        ev["reasons"] = [f"line {ev['break_line']} breaks with the line before it while the lines after it "
                         f"match ({ev['break_z']:.1f} >= {th['break_z']:g})"]
        return Verdict("tip_change", int(ev["break_line"]), ev)
    reasons = []
    if ev["lattice"] < th["lattice_min"]:
        reasons.append(f"no clear lattice or pattern (spectral peak {ev['lattice']:.1f} < {th['lattice_min']:g})")
    ev["reasons"] = reasons
    return Verdict("bad" if reasons else "good", None, ev)
