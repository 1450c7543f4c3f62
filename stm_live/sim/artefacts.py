"""What a real microscope does to a perfect surface, one switchable artefact at a time.

Each artefact has one strength (0 = off) in physical units and draws its
randomness from its own random stream, so switching one on or off never
changes what another one does. Artefacts fall in three groups:

* **Where the tip samples** (lateral): ``scale_error``, ``creep_nm``,
  ``drift_nm``, ``hysteresis_nm``. They distort the sampling grid; the ground truth (mask,
  instances, clean topography) is rendered on the same distorted grid as the
  forward image, so it stays pixel-aligned with it.
* **What the tip sees**: ``tip_change`` (blur, contrast and a height jump
  after a row part-way through) and ``double_tip`` (a second apex adds ghost
  copies). The clean topography is imaged with the nominal, single tip.
* **What the Z signal adds** (vertical, added after imaging): ``tilt``,
  ``line_offset_nm``, ``line_slope_nm``, ``white_noise_nm``,
  ``flicker_noise_nm``, ``scars_per_100_lines``; ``current_noise`` for the
  Current channel.

Time runs along the slow scan: row ``r`` of a downward scan is recorded at
frame time ``r / rows`` (forward line, then backward line).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ["Artefacts", "LateralGeometry", "TipHistory", "lateral_geometry", "signal_artefacts", "tip_history"]

#: Decay of piezo creep, as a fraction of the frame time.
CREEP_TAU = 0.1
#: 2 kappa of the tunnelling gap: the current falls e-fold per 1/20 nm.
TWO_KAPPA_PER_NM = 20.0


@dataclass(frozen=True)
class Artefacts:
    """Instrument artefact strengths; 0 switches an artefact off.

    Parameters
    ----------
    scale_error : float
        Largest relative error of the piezo calibration: each axis's scale is
        off by up to this fraction and the axes are skewed by up to this many
        radians (uniformly random; about the frame centre).
    tilt : float
        Slope of the sample plane (nm of height per nm laterally, i.e. tan of
        the tilt angle), in a random direction.
    creep_nm : float
        Lateral piezo creep at the first scanned line, nm, decaying
        exponentially over ~10 % of the frame (random direction). Against the
        slow scan it is capped at 80 % of the scan speed (small frames), so
        the image never folds over; ``events["creep"]["nm"]`` is the amount applied.
    drift_nm : float
        Thermal drift accumulated over the whole frame, nm (random
        direction): a sheared and stretched image.
    line_offset_nm : float
        RMS height offset of each line, nm, plus rare persistent jumps (the
        tip or feedback settling at a new height).
    line_slope_nm : float
        RMS of each line's own slope, as the height change from its first
        to its last pixel, nm.
    white_noise_nm : float
        RMS white noise per pixel, nm.
    flicker_noise_nm : float
        RMS of 1/f noise in time, nm: slow wander between lines and
        correlated streaks within them.
    scars_per_100_lines : float
        Expected number of scars (short streaks where the feedback lost the
        surface) per 100 lines and direction.
    tip_change : float
        Severity 0..1 of a tip change at a random row between 20 % and 80 %
        of the frame: the image after it is blurred (+0.15 nm at 1),
        loses contrast (-40 % at 1) and jumps in height (0.08 nm at 1).
    tip_change_chance : float
        Probability 0..1 that a frame has that tip change at all.
    double_tip : float
        Sensitivity 0..1 of a second tip apex, 0.6..1.5 nm from the first,
        relative to it: ghost copies of bright features and edges.
    hysteresis_nm : float
        Largest lateral offset of the backward image relative to the forward
        one (at mid-line; 40 % of it at the line ends), nm.
    current_noise : float
        Relative RMS white noise of the Current channel.
    """

    scale_error: float = 0.0
    tilt: float = 0.0
    creep_nm: float = 0.0
    drift_nm: float = 0.0
    line_offset_nm: float = 0.0
    line_slope_nm: float = 0.0
    white_noise_nm: float = 0.0
    flicker_noise_nm: float = 0.0
    scars_per_100_lines: float = 0.0
    tip_change: float = 0.0
    tip_change_chance: float = 1.0
    double_tip: float = 0.0
    hysteresis_nm: float = 0.0
    current_noise: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Artefacts.{f.name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        for name in ("tip_change", "tip_change_chance", "double_tip"):
            if getattr(self, name) > 1:
                raise ValueError(f"Artefacts.{name} is a fraction and must be within 0..1, got {getattr(self, name)!r}")

    @classmethod
    def none(cls) -> Artefacts:
        """A perfect microscope: every artefact off."""
        return cls()

    @classmethod
    def realistic(cls) -> Artefacts:
        """The artefact levels of real data (see ``docs/simulator.md`` for how each was chosen).

        Measured on the real Si(001):H images where they are visible
        (noise, scars, line offsets left after the authors' line levelling,
        lateral distortion); typical raw-data levels of a room-temperature
        UHV STM for what processed images no longer show (tilt, raw line
        offsets, creep).
        """
        return cls(
            scale_error=0.05,
            tilt=0.02,
            creep_nm=0.5,
            drift_nm=1.0,
            line_offset_nm=0.02,
            line_slope_nm=0.01,
            white_noise_nm=0.004,
            flicker_noise_nm=0.004,
            scars_per_100_lines=1.0,
            tip_change=0.6,
            tip_change_chance=0.3,
            double_tip=0.1,
            hysteresis_nm=0.3,
            current_noise=0.03,
        )

    def to_dict(self) -> dict[str, float]:
        """The strengths as a plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Artefacts:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown artefact(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        return cls(**dict(values))


def row_times(rows: int, scan_direction: str) -> np.ndarray:
    """Frame time (0..1) at which each display row is recorded."""
    t = np.arange(rows, dtype=np.float64) / rows
    return t if scan_direction == "down" else t[::-1].copy()


@dataclass(frozen=True)
class LateralGeometry:
    """Sample positions of the pixels: ``(x_cols[c] + x_rows[r], y_rows[r])`` nm, per direction."""

    x_cols_forward: np.ndarray
    x_cols_backward: np.ndarray
    x_rows: np.ndarray
    y_rows: np.ndarray
    events: Mapping[str, Any]


def lateral_geometry(
    artefacts: Artefacts,
    streams: Mapping[str, np.random.Generator],
    *,
    rows: int,
    cols: int,
    size_nm: tuple[float, float],
    scan_direction: str,
) -> LateralGeometry:
    """Where each pixel samples the surface, after creep, drift and hysteresis.

    Raises
    ------
    ValueError
        Drift so strong for this frame that the slow-scan position would run
        backwards.
    """
    width, height = size_nm
    px_x, px_y = width / cols, height / rows
    x_cols = (np.arange(cols) + 0.5) * px_x
    y_rows = (np.arange(rows) + 0.5) * px_y
    x_rows = np.zeros(rows)
    t = row_times(rows, scan_direction)
    events: dict[str, Any] = {}
    ex, ey, skew = streams["scale_error"].uniform(-1.0, 1.0, 3)
    if artefacts.scale_error > 0:
        ex, ey, skew = artefacts.scale_error * ex, artefacts.scale_error * ey, artefacts.scale_error * skew
        x_cols = width / 2 + (x_cols - width / 2) * (1 + ex)
        y_rows = height / 2 + (y_rows - height / 2) * (1 + ey)
        x_rows = x_rows + skew * (y_rows - height / 2)
        events["scale_error"] = {"x": float(ex), "y": float(ey), "skew_rad": float(skew)}
    angle = streams["creep"].uniform(0, 2 * math.pi)
    drift_angle = streams["drift"].uniform(0, 2 * math.pi)
    if artefacts.creep_nm > 0:
        # Creep against the slow scan is capped at 80 % of the scan speed that
        # drift leaves, so that a small frame is strongly distorted but never
        # folds over.
        amount = artefacts.creep_nm
        sign = 1.0 if scan_direction == "down" else -1.0
        left = height + min(sign * artefacts.drift_nm * math.sin(drift_angle), 0.0)
        # y = ... + amount sin(angle) exp(-t / tau): at the start it moves by
        # -amount sin(angle) / tau per frame, against the scan when sign * sin > 0.
        backwards = max(sign * math.sin(angle), 0.0) * amount / CREEP_TAU  # nm per frame, at the start
        if backwards > 0.8 * left:
            amount *= max(0.8 * left, 0.0) / backwards
        decay = np.exp(-t / CREEP_TAU)
        x_rows = x_rows + amount * math.cos(angle) * decay
        y_rows = y_rows + amount * math.sin(angle) * decay
        events["creep"] = {"nm": amount, "angle_deg": math.degrees(angle), "tau_frames": CREEP_TAU}
    angle = drift_angle
    if artefacts.drift_nm > 0:
        x_rows = x_rows + artefacts.drift_nm * math.cos(angle) * t
        y_rows = y_rows + artefacts.drift_nm * math.sin(angle) * t
        events["drift"] = {"nm": artefacts.drift_nm, "angle_deg": math.degrees(angle)}
    if rows > 1 and np.any(np.diff(y_rows) <= 0):
        raise ValueError(
            f"creep_nm={artefacts.creep_nm} / drift_nm={artefacts.drift_nm} are too strong for a "
            f"{height:g} nm, {rows}-row frame: the slow-scan position would run backwards; use a weaker artefact"
        )
    x_back = x_cols
    if artefacts.hysteresis_nm > 0:
        shift = artefacts.hysteresis_nm * (0.4 + 0.6 * np.sin(np.pi * (np.arange(cols) + 0.5) / cols))
        x_back = x_cols - shift
        events["hysteresis"] = {"max_nm": artefacts.hysteresis_nm}
    return LateralGeometry(x_cols, x_back, x_rows, y_rows, events)


@dataclass(frozen=True)
class TipHistory:
    """The tip of every row: blur (nm), contrast gain, height jump (nm); the ghost apex."""

    sigma_rows: np.ndarray
    gain_rows: np.ndarray
    jump_rows: np.ndarray
    ghost_offset_nm: tuple[float, float] | None
    ghost_weight: float
    events: Mapping[str, Any]


def tip_history(
    artefacts: Artefacts,
    streams: Mapping[str, np.random.Generator],
    *,
    rows: int,
    sigma_nm: float,
    scan_direction: str,
) -> TipHistory:
    """Draw the tip change (if any) and the double tip's second apex."""
    t = row_times(rows, scan_direction)
    sigma = np.full(rows, sigma_nm)
    gain = np.ones(rows)
    jump = np.zeros(rows)
    events: dict[str, Any] = {}
    rng = streams["tip_change"]
    when = rng.uniform(0.2, 0.8)
    happens = rng.random() < artefacts.tip_change_chance
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if artefacts.tip_change > 0 and happens:
        s = artefacts.tip_change
        after = t >= when
        sigma[after] = sigma_nm + 0.15 * s
        gain[after] = 1.0 - 0.4 * s
        jump[after] = sign * 0.08 * s
        first = int(np.flatnonzero(after)[0] if scan_direction == "down" else np.flatnonzero(after)[-1])
        events["tip_change"] = {"row": first, "severity": s, "sigma_after_nm": float(sigma[first]),
                                "gain_after": float(gain[first]), "jump_nm": float(jump[first])}
    rng = streams["double_tip"]
    dist = rng.uniform(0.6, 1.5)
    angle = rng.uniform(0, 2 * math.pi)
    ghost = None
    if artefacts.double_tip > 0:
        ghost = (dist * math.cos(angle), dist * math.sin(angle))
        events["double_tip"] = {"offset_nm": list(ghost), "weight": artefacts.double_tip}
    return TipHistory(sigma, gain, jump, ghost, artefacts.double_tip, events)


def combine_apices(main: np.ndarray, ghost: np.ndarray, weight: float) -> np.ndarray:
    """Height recorded by a two-apex tip at constant current, nm.

    The current is the sum over apices of ``w_i exp(2 kappa (h_i - z))``;
    holding it constant gives ``z = h1 + ln(1 + q exp(2 kappa (h2 - h1))) / 2 kappa``,
    shifted so that a flat surface reads the same as with one apex.
    """
    k = TWO_KAPPA_PER_NM
    lq = math.log(weight)
    z = main + np.logaddexp(0.0, lq + k * (ghost - main)) / k
    return (z - math.log1p(weight) / k).astype(np.float32)


def _flicker(rng: np.random.Generator, n: int, rms: float) -> np.ndarray:
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    spec /= np.sqrt(f)
    spec[0] = 0.0
    series = np.fft.irfft(spec, n)
    return (series * (rms / series.std())).astype(np.float32)


def signal_artefacts(
    artefacts: Artefacts,
    streams: Mapping[str, np.random.Generator],
    *,
    rows: int,
    cols: int,
    x_rows: np.ndarray,
    y_rows: np.ndarray,
    x_cols: tuple[np.ndarray, np.ndarray],
    size_nm: tuple[float, float],
    scan_direction: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The heights (nm) the Z signal adds to the forward and backward images.

    Tilt is a plane in sample coordinates; offsets, slopes, noise and scars
    follow the time order of the scan. Returns ``(forward, backward, events)``,
    each image ``(rows, cols)`` float32 in display orientation.
    """
    fwd = np.zeros((rows, cols), dtype=np.float32)
    bwd = np.zeros((rows, cols), dtype=np.float32)
    events: dict[str, Any] = {}
    order = np.argsort(row_times(rows, scan_direction), kind="stable")  # display row of the k-th scanned line
    width, height = size_nm
    rng = streams["tilt"]
    angle = rng.uniform(0, 2 * math.pi)
    if artefacts.tilt > 0:
        gx, gy = artefacts.tilt * math.cos(angle), artefacts.tilt * math.sin(angle)
        for out, xc in ((fwd, x_cols[0]), (bwd, x_cols[1])):
            out += ((gx * (xc - width / 2))[None, :] + (gx * x_rows + gy * (y_rows - height / 2))[:, None]).astype(
                np.float32
            )
        events["tilt"] = {"slope": artefacts.tilt, "angle_deg": math.degrees(angle)}
    rng = streams["line_offset"]
    white = rng.standard_normal(rows)
    jumps = np.where(rng.random(rows) < 0.01, rng.standard_normal(rows) * 3.0, 0.0)
    extra = rng.standard_normal(rows)
    if artefacts.line_offset_nm > 0:
        a = artefacts.line_offset_nm
        in_time = a * (white + np.cumsum(jumps))
        off = np.empty(rows)
        off[order] = in_time
        off_b = np.empty(rows)
        off_b[order] = in_time + 0.3 * a * extra
        fwd += off.astype(np.float32)[:, None]
        bwd += off_b.astype(np.float32)[:, None]
    rng = streams["line_slope"]
    slopes = rng.standard_normal((2, rows))
    if artefacts.line_slope_nm > 0:
        ramp = np.linspace(-0.5, 0.5, cols, dtype=np.float32)
        fwd += (artefacts.line_slope_nm * slopes[0]).astype(np.float32)[:, None] * ramp[None, :]
        bwd += (artefacts.line_slope_nm * slopes[1]).astype(np.float32)[:, None] * ramp[None, :]
    rng = streams["flicker"]
    if artefacts.flicker_noise_nm > 0:
        series = _flicker(rng, 2 * rows * cols, artefacts.flicker_noise_nm).reshape(rows, 2, cols)
        fwd[order] += series[:, 0, :]
        bwd[order] += series[:, 1, ::-1]
    rng = streams["white_noise"]
    if artefacts.white_noise_nm > 0:
        fwd += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(artefacts.white_noise_nm)
        bwd += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(artefacts.white_noise_nm)
    rng = streams["scars"]
    if artefacts.scars_per_100_lines > 0:
        scars = []
        for d, out in (("forward", fwd), ("backward", bwd)):
            n = int(rng.poisson(artefacts.scars_per_100_lines * rows / 100.0))
            for _ in range(n):
                r = int(rng.integers(rows))
                length = int(min(cols, 3 + rng.exponential(12.0)))
                c0 = int(rng.integers(0, max(1, cols - length + 1)))
                h = float((1.0 if rng.random() < 0.7 else -1.0) * rng.uniform(0.05, 0.25))
                out[r, c0:c0 + length] += np.float32(h)
                scars.append({"direction": d, "row": r, "col": c0, "length": length, "height_nm": h})
        events["scars"] = scars
    return fwd, bwd, events
