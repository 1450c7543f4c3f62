"""Every instrument artefact changes the image the way it claims, and nothing else.

Each test switches on one artefact and compares with the same seed and a
perfect microscope: vertical artefacts leave the ground truth untouched and
add exactly what they describe to Z; lateral ones move the image and the
ground truth together and add nothing to Z.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
import pytest

from stm_live.sim import Artefacts, SimulatedScan, simulate_scan
from stm_live.sim.artefacts import CREEP_TAU
from stm_live.sim.measure import fourier_component

KW = {"surface": "si001-ash3", "size_nm": 16.0, "pixels": 128, "seed": 7, "steps": 1}


@cache
def _scan(**strengths: float) -> SimulatedScan:
    return simulate_scan(artefacts=Artefacts(**strengths), **KW)  # type: ignore[arg-type]


def _z(scan: SimulatedScan, direction: str = "forward") -> np.ndarray:
    return scan.frame("Z", direction).data.astype(np.float64) * 1e9


def _added(scan: SimulatedScan, direction: str = "forward") -> np.ndarray:
    """What the artefacts added to Z on top of the clean topography, nm."""
    return _z(scan, direction) - scan.clean.astype(np.float64) * 1e9


def _same_truth(a: SimulatedScan, b: SimulatedScan) -> None:
    assert np.array_equal(a.clean, b.clean)
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.terraces, b.terraces)
    assert np.array_equal(a.step_mask, b.step_mask)
    assert a.instances == b.instances


def test_no_artefacts_means_z_is_the_clean_topography() -> None:
    base = _scan()
    assert np.array_equal(base.frame("Z").data, base.clean)
    assert np.array_equal(base.frame("Z", "backward").data, base.clean)
    assert Artefacts.none() == Artefacts()
    assert base.events == {}


VERTICAL = [
    {"tilt": 0.03},
    {"line_offset_nm": 0.02},
    {"line_slope_nm": 0.02},
    {"white_noise_nm": 0.005},
    {"flicker_noise_nm": 0.004},
    {"scars_per_100_lines": 3.0},
    {"tip_change": 0.8},
    {"double_tip": 0.3},
    {"hysteresis_nm": 0.3},
    {"current_noise": 0.05},
]


@pytest.mark.parametrize("strengths", VERTICAL, ids=lambda s: next(iter(s)))
def test_non_lateral_artefacts_leave_the_ground_truth_alone(strengths: dict[str, float]) -> None:
    scan = _scan(**strengths)
    _same_truth(scan, _scan())
    channel, direction = {"hysteresis_nm": ("Z", "backward"), "current_noise": ("Current", "forward")}.get(
        next(iter(strengths)), ("Z", "forward"))
    assert not np.array_equal(scan.frame(channel, direction).data, _scan().frame(channel, direction).data)


def test_tilt_adds_a_plane_of_the_stated_slope() -> None:
    d = _added(_scan(tilt=0.03))
    px = _scan().nm_per_px
    r, c = np.mgrid[: d.shape[0], : d.shape[1]]
    design = np.stack([np.ones(d.size), r.ravel(), c.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, d.ravel(), rcond=None)
    assert np.abs(d.ravel() - design @ coef).max() < 1e-4  # a plane, nothing else
    assert math.hypot(coef[1], coef[2]) / px == pytest.approx(0.03, rel=0.01)
    assert np.array_equal(_scan(tilt=0.03).frame("Current").data, _scan().frame("Current").data)


def test_line_offsets_are_constant_along_each_line() -> None:
    scan = simulate_scan(artefacts=Artefacts(line_offset_nm=0.02), **{**KW, "pixels": 256})
    d = _added(scan)
    assert np.ptp(d, axis=1).max() < 1e-5
    jumps = np.diff(d[:, 0])
    robust = 1.4826 * np.median(np.abs(jumps - np.median(jumps)))
    assert robust == pytest.approx(0.02 * math.sqrt(2), rel=0.3)
    # Forward and backward lines share the offset of their moment in time.
    assert np.corrcoef(d[:, 0], _added(scan, "backward")[:, 0])[0, 1] > 0.9


def test_line_slopes_are_straight_and_of_the_stated_size() -> None:
    scan = simulate_scan(artefacts=Artefacts(line_slope_nm=0.02), **{**KW, "pixels": 256})
    d = _added(scan)
    x = np.arange(d.shape[1])
    fit = np.polynomial.polynomial.polyfit(x, d.T, 1)
    resid = d - (fit[0][:, None] + fit[1][:, None] * x[None, :])
    assert np.abs(resid).max() < 1e-5
    rise = fit[1] * (d.shape[1] - 1)  # end-to-end change of each line
    assert np.sqrt(np.mean(rise**2)) == pytest.approx(0.02, rel=0.2)
    assert np.abs(d.mean(axis=1)).max() < 1e-5  # slopes only, no offsets


def test_white_noise_is_white_and_of_the_stated_rms() -> None:
    scan = simulate_scan(artefacts=Artefacts(white_noise_nm=0.005), **{**KW, "pixels": 256})
    d = _added(scan)
    assert d.std() == pytest.approx(0.005, rel=0.03)
    assert abs(d.mean()) < 2e-4
    for lag in (d[:, 1:] * d[:, :-1], d[1:, :] * d[:-1, :]):
        assert abs(lag.mean() / d.var()) < 0.03
    assert abs(np.corrcoef(d.ravel(), _added(scan, "backward").ravel())[0, 1]) < 0.03


def test_flicker_noise_is_one_over_f_in_time() -> None:
    scan = simulate_scan(artefacts=Artefacts(flicker_noise_nm=0.004), **{**KW, "pixels": 256})
    fwd, bwd = _added(scan), _added(scan, "backward")
    # Reassemble the time series: each forward line, then its backward line right to left.
    series = np.stack([fwd, bwd[:, ::-1]], axis=1).ravel()
    assert series.std() == pytest.approx(0.004, rel=0.01)
    spec = np.abs(np.fft.rfft(series)) ** 2
    f = np.arange(spec.size)
    band = (f > 20) & (f < spec.size // 4)
    bins = np.logspace(np.log10(21), np.log10(spec.size // 4), 25).astype(int)
    centres = np.sqrt(bins[1:] * bins[:-1])
    power = np.array([spec[a:b].mean() for a, b in itertools.pairwise(bins)])
    slope = np.polyfit(np.log(centres), np.log(power), 1)[0]
    assert band.any() and slope == pytest.approx(-1.0, abs=0.2)


def test_scars_are_short_streaks_exactly_where_the_events_say() -> None:
    scan = _scan(scars_per_100_lines=3.0)
    scars = scan.events["scars"]
    assert 1 <= len(scars) <= 25
    for direction in ("forward", "backward"):
        expected = np.zeros((scan.pixels, scan.pixels))
        for s in scars:
            if s["direction"] == direction:
                assert 3 <= s["length"] <= scan.pixels
                expected[s["row"], s["col"]: s["col"] + s["length"]] += s["height_nm"]
        assert np.allclose(_added(scan, direction), expected, atol=1e-5)


def test_tip_change_blurs_and_dims_the_rows_after_it_and_nothing_before() -> None:
    kw = {**KW, "steps": 0, "density_scale": 0.0, "clutter_per_nm2": 0.0, "row_angle_deg": 90.0, "pixels": 256}
    scan = simulate_scan(artefacts=Artefacts(tip_change=0.8), **kw)
    ev = scan.events["tip_change"]
    row = ev["row"]
    assert 0.2 * scan.pixels <= row <= 0.8 * scan.pixels
    z, clean = _z(scan), scan.clean.astype(np.float64) * 1e9
    assert np.array_equal(z[:row], clean[:row])
    assert np.allclose(z[row:].mean() - clean[row:].mean(), ev["jump_nm"], atol=2e-3)
    k = 2 * math.pi / 0.768  # rows vertical: the row wave vector lies along x
    before = abs(fourier_component(z[:row], k, 0.0, nm_per_px=scan.nm_per_px))
    after = abs(fourier_component(z[row:], k, 0.0, nm_per_px=scan.nm_per_px))
    sigma0 = 0.12
    expected = ev["gain_after"] * math.exp(-0.5 * k**2 * (ev["sigma_after_nm"] ** 2 - sigma0**2))
    assert after / before == pytest.approx(expected, rel=0.1)
    never = simulate_scan(artefacts=Artefacts(tip_change=0.8, tip_change_chance=0.0), **kw)
    assert np.array_equal(never.frame("Z").data, never.clean)


def test_double_tip_adds_ghosts_of_bright_features_at_the_apex_offset() -> None:
    kw = {**KW, "steps": 0, "clutter_per_nm2": 0.0, "size_nm": 24.0, "pixels": 256}
    scan = simulate_scan(artefacts=Artefacts(double_tip=0.3), **kw)
    d = _added(scan)
    dx, dy = scan.events["double_tip"]["offset_nm"]
    px = scan.nm_per_px
    yy, xx = (np.mgrid[: scan.pixels, : scan.pixels] + 0.5) * px
    # The second apex sits at +offset: it sees a feature when the first apex is at -offset from it.
    ghosts = [(i.x_nm - dx, i.y_nm - dy) for i in scan.instances if i.kind == "single DB"]
    values = [d[int(gy / px), int(gx / px)] for gx, gy in ghosts if 0 < gx < 24 and 0 < gy < 24]
    assert len(values) >= 3 and np.median(values) > 0.03
    inner = (xx > 2.5) & (xx < 21.5) & (yy > 2.5) & (yy < 21.5)  # features centred outside show at the border
    far = inner.copy()
    for i in scan.instances:
        for ox, oy in ((0.0, 0.0), (-dx, -dy)):
            far &= np.hypot(xx - i.x_nm - ox, yy - i.y_nm - oy) > 1.6
    # Far from every feature and every ghost only the lattice is imaged twice: a small change.
    assert far.mean() > 0.1 and np.percentile(np.abs(d[far]), 99) < 0.3 * np.median(values)
    # On a featureless flat surface (lattice blurred away) a double tip changes nothing at all.
    flat = simulate_scan(artefacts=Artefacts(double_tip=0.3), tip_sigma_nm=2.0, density_scale=0.0, **kw)
    assert np.abs(_added(flat)).max() < 1e-6


def test_hysteresis_shifts_only_the_backward_image() -> None:
    kw = {**KW, "steps": 0, "density_scale": 0.0, "clutter_per_nm2": 0.0, "row_angle_deg": 90.0, "pixels": 256}
    base = simulate_scan(artefacts=Artefacts(), **kw)
    scan = simulate_scan(artefacts=Artefacts(hysteresis_nm=0.3), **kw)
    assert np.array_equal(scan.frame("Z").data, base.frame("Z").data)
    k = 2 * math.pi / 0.768
    mid = slice(scan.pixels // 2 - 12, scan.pixels // 2 + 12)
    fwd = fourier_component(_z(scan)[:, mid], k, 0.0, nm_per_px=scan.nm_per_px)
    bwd = fourier_component(_z(scan, "backward")[:, mid], k, 0.0, nm_per_px=scan.nm_per_px)
    shift = np.angle(fwd / bwd) / k  # backward content moved right by this much (nm)
    assert shift == pytest.approx(0.3, abs=0.01)
    ends = slice(0, 6)
    fwd_e = fourier_component(_z(scan)[:, ends], k, 0.0, nm_per_px=scan.nm_per_px)
    bwd_e = fourier_component(_z(scan, "backward")[:, ends], k, 0.0, nm_per_px=scan.nm_per_px)
    assert np.angle(fwd_e / bwd_e) / k == pytest.approx(0.3 * (0.4 + 0.6 * math.sin(math.pi * 3.5 / 256)), abs=0.01)


def test_current_noise_only_touches_the_current() -> None:
    scan, base = _scan(current_noise=0.05), _scan()
    assert np.array_equal(scan.frame("Z").data, base.frame("Z").data)
    ratio = scan.frame("Current").data.astype(np.float64) / base.frame("Current").data - 1
    assert ratio.std() == pytest.approx(0.05, rel=0.05)


def test_current_is_the_feedback_error_along_the_scan() -> None:
    base = _scan()
    slope = np.gradient(base.clean.astype(np.float64), axis=1)
    fwd = base.frame("Current").data.astype(np.float64)
    bwd = base.frame("Current", "backward").data.astype(np.float64)
    assert np.median(fwd) == pytest.approx(base.setpoint_a, rel=0.05)
    assert np.corrcoef(np.log(fwd).ravel(), slope.ravel())[0, 1] > 0.95
    assert np.corrcoef(np.log(bwd).ravel(), slope.ravel())[0, 1] < -0.95


def _predicted_shift(scan: SimulatedScan, y_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where drift and creep moved the tip when it scanned image height ``y_nm`` (first order)."""
    t = (y_nm / scan.nm_per_px - 0.5) / scan.pixels  # row r is scanned at frame time r / rows
    sx = np.zeros_like(t)
    sy = np.zeros_like(t)
    if "drift" in scan.events:
        a = math.radians(scan.events["drift"]["angle_deg"])
        sx += scan.events["drift"]["nm"] * math.cos(a) * t
        sy += scan.events["drift"]["nm"] * math.sin(a) * t
    if "creep" in scan.events:
        a = math.radians(scan.events["creep"]["angle_deg"])
        decay = np.exp(-t / CREEP_TAU)
        sx += scan.events["creep"]["nm"] * math.cos(a) * decay
        sy += scan.events["creep"]["nm"] * math.sin(a) * decay
    return sx, sy


@pytest.mark.parametrize("strengths", [{"drift_nm": 1.0}, {"creep_nm": 0.5}], ids=["drift", "creep"])
def test_drift_and_creep_move_image_and_truth_together_and_add_no_height(strengths: dict[str, float]) -> None:
    scan, base = _scan(**strengths), _scan()
    assert np.array_equal(scan.frame("Z").data, scan.clean)  # nothing vertical
    by_kind: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i in base.instances:
        by_kind.setdefault((i.class_name, i.kind), []).append((i.x_nm, i.y_nm))
    errors = []
    for i in scan.instances:
        if min(i.x_nm, i.y_nm, scan.size_nm - i.x_nm, scan.size_nm - i.y_nm) < 1.5:
            continue  # may have come into view only because of the artefact
        cands = np.array(by_kind[(i.class_name, i.kind)])
        sx, sy = _predicted_shift(scan, np.array([i.y_nm]))
        # The tip was at +shift in the sample: the feature shows up at -shift in the image.
        dist = np.hypot(cands[:, 0] - sx[0] - i.x_nm, cands[:, 1] - sy[0] - i.y_nm)
        errors.append(dist.min())
    assert len(errors) > 10 and max(errors) < 0.01
    if "creep_nm" in strengths:  # creep is gone after the first part of the frame
        late = slice(int(0.7 * scan.pixels), None)
        assert np.abs(_z(scan)[late] - _z(base)[late]).max() < 0.003
        assert np.abs(_z(scan)[:8] - _z(base)[:8]).max() > 0.03


def test_scale_error_is_an_affine_map_about_the_centre() -> None:
    scan, base = _scan(scale_error=0.04), _scan()
    assert np.array_equal(scan.frame("Z").data, scan.clean)
    ev = scan.events["scale_error"]
    assert max(abs(ev["x"]), abs(ev["y"]), abs(ev["skew_rad"])) <= 0.04
    c = scan.size_nm / 2
    base_pos = {(i.kind, round(i.x_nm, 3)): i for i in base.instances}
    matched = 0
    for i in scan.instances:
        y_s = c + (i.y_nm - c) * (1 + ev["y"])  # sample position seen at this image position
        x_s = c + (i.x_nm - c) * (1 + ev["x"]) + ev["skew_rad"] * (y_s - c)
        near = [b for b in base_pos.values() if b.kind == i.kind and math.hypot(b.x_nm - x_s, b.y_nm - y_s) < 0.05]
        matched += len(near) == 1
    assert matched >= 0.9 * len(scan.instances) > 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tilt": -0.1}, "Artefacts.tilt must be a finite number >= 0"),
        ({"white_noise_nm": float("nan")}, "white_noise_nm"),
        ({"double_tip": 1.5}, "Artefacts.double_tip is a fraction"),
    ],
)
def test_impossible_strengths_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Artefacts(**kwargs)


def test_artefacts_round_trip_and_presets() -> None:
    real = Artefacts.realistic()
    assert Artefacts.from_dict(real.to_dict()) == real
    with pytest.raises(ValueError, match=r"unknown artefact.*wobble"):
        Artefacts.from_dict({"wobble": 1.0})
    assert all(v > 0 for v in real.to_dict().values())  # every artefact is present in real data
