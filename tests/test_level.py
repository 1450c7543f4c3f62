"""Levelling on small synthetic images whose right answer is known exactly.

Flat, NaN-row, one-row, huge-offset and step-edge inputs, tilted planes with
bumps; the streaming leveller's promises (line by line, no look ahead, scan
direction); resampling, normalisation and trace/retrace combination. Every
function must return finite float32, never touch its input and never warn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stm_live.level import (
    FRAME_METHODS,
    LevelError,
    LineLeveller,
    combine_directions,
    find_scars,
    level_frame,
    level_stream,
    normalise_robust,
    remove_scars,
    resample_to_pitch,
)

ALL_FRAME = [*FRAME_METHODS]


def _grid(rows: int = 64, cols: int = 96) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    return y, x


def _terraces(rows: int = 96, cols: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Two diagonal step edges (three terraces, 1.0 apart) and their labels."""
    y, x = _grid(rows, cols)
    labels = (x + 0.5 * y > 0.35 * cols).astype(int) + (x + 0.5 * y > 0.85 * cols).astype(int)
    return labels.astype(np.float64), labels


def _bumps(rng: np.random.Generator, shape: tuple[int, int], n: int = 8, height: float = 3.0) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        out += height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0)
    return out


def _terrace_error(levelled: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> float:
    """RMS of levelled - truth after removing the mean error on each terrace."""
    err = levelled.astype(np.float64) - truth
    for t in np.unique(labels):
        err[labels == t] -= err[labels == t].mean()
    return float(np.sqrt(np.mean(err**2)))


def _finite_float32(out: np.ndarray, shape: tuple[int, ...]) -> None:
    assert out.dtype == np.float32
    assert out.shape == shape
    assert np.isfinite(out).all()


# --- flat ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL_FRAME)
@pytest.mark.parametrize("value", [0.0, 7.5e-9, -3.0])
def test_flat_frame_levels_to_zeros(method: str, value: float) -> None:
    out = level_frame(np.full((16, 20), value, dtype=np.float32), method=method)
    _finite_float32(out, (16, 20))
    assert np.abs(out).max() <= 1e-6 * max(1.0, abs(value))


def test_flat_stream_levels_to_zeros() -> None:
    out = level_stream(np.full((12, 30), 4.2))
    _finite_float32(out, (12, 30))
    assert np.abs(out).max() < 1e-9


def test_flat_preparation_is_well_behaved() -> None:
    flat = np.full((10, 10), 3.0)
    assert not normalise_robust(flat).any()
    assert np.allclose(resample_to_pitch(flat, nm_per_px=(0.1, 0.1), target_nm_per_px=0.25), 3.0)
    assert not find_scars(flat, np.ones(flat.shape, bool)).any()
    assert np.array_equal(remove_scars(flat), flat.astype(np.float32))


# --- NaN rows (lines not acquired) -----------------------------------------------------------


def _partial(rows: int = 40, cols: int = 50, missing: slice = slice(25, None)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y, x = _grid(rows, cols)
    full = 0.03 * x + 0.02 * y + rng.normal(0, 0.01, (rows, cols)) + rng.normal(0, 1, (rows, 1))
    part = full.copy()
    part[missing] = np.nan
    return full, part


@pytest.mark.parametrize("method", ALL_FRAME)
def test_nan_rows_give_finite_frames_and_zero_background(method: str) -> None:
    _, part = _partial()
    part[5] = np.nan  # a lost line in the middle too
    out = level_frame(part, method=method)
    _finite_float32(out, part.shape)
    assert not out[25:].any() and not out[5].any()


def test_all_nan_frame_is_zeros() -> None:
    for method in ALL_FRAME:
        assert not level_frame(np.full((4, 6), np.nan), method=method).any()
    assert not level_stream(np.full((4, 6), np.nan)).any()


def test_stream_nan_rows_are_background_and_do_not_poison_the_state() -> None:
    full, part = _partial(missing=slice(10, 13))
    with_gap = level_stream(part)
    _finite_float32(with_gap, part.shape)
    # Missing lines come out as one constant, the background (near 0).
    assert np.ptp(with_gap[10:13]) == 0 and abs(with_gap[10, 0]) < 0.05
    # Lines after the gap are levelled as well as without the gap.
    without = level_stream(full)
    assert np.abs(with_gap[13:] - without[13:]).max() < 0.05


def test_stream_partial_lines_keep_their_finite_pixels() -> None:
    lev = LineLeveller(40)
    x = np.arange(40.0)
    for i in range(5):
        lev.push(2.0 * i + 0.1 * x)
    line = 10.0 + 0.1 * x
    line[::3] = np.nan
    out = lev.push(line)
    assert np.isfinite(out).all() and np.abs(out).max() < 1e-6


def test_nan_in_preparation_functions() -> None:
    _, part = _partial()
    _finite_float32(normalise_robust(part), part.shape)
    assert not normalise_robust(part)[30:].any()
    res = resample_to_pitch(part, nm_per_px=(0.1, 0.1), target_nm_per_px=0.2)
    _finite_float32(res, (20, 25))
    both = combine_directions(part, part[:, ::-1][:, ::-1])
    _finite_float32(both, part.shape)
    assert not both[30:].any()


# --- one row ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL_FRAME)
def test_single_row_frame(method: str) -> None:
    row = (5.0 + 0.2 * np.arange(32.0))[None, :]
    out = level_frame(row, method=method)
    _finite_float32(out, (1, 32))
    if method not in ("median", "median_diff", "matching"):  # offset-only row alignment keeps the slope
        assert np.abs(out).max() < 1e-5


def test_single_row_and_single_column_elsewhere() -> None:
    row = (5.0 + 0.2 * np.arange(32.0))[None, :]
    assert np.abs(level_stream(row)).max() < 1e-5
    col = np.arange(8.0)[:, None]
    for method in ALL_FRAME:
        _finite_float32(level_frame(col, method=method), (8, 1))
    _finite_float32(level_stream(col), (8, 1))
    _finite_float32(remove_scars(row), (1, 32))
    _finite_float32(normalise_robust(row), (1, 32))
    assert resample_to_pitch(row, nm_per_px=(1.0, 1.0), target_nm_per_px=4.0).shape == (1, 8)


# --- huge offsets ----------------------------------------------------------------------------


def test_huge_line_offsets_are_removed_exactly() -> None:
    rng = np.random.default_rng(2)
    truth, labels = _terraces()
    noise = rng.normal(0, 0.02, truth.shape)
    offsets = rng.normal(0, 1e6, (truth.shape[0], 1))  # a million times the step height
    raw = truth + noise + offsets
    for out in (level_frame(raw), level_stream(raw)):
        assert _terrace_error(out, truth, labels) < 0.03
    assert _terrace_error(level_frame(raw, method="plane"), truth, labels) > 1e4


def test_huge_global_offset_keeps_detail_in_float32_output() -> None:
    y, x = _grid(32, 32)
    detail = np.sin(x / 3.0) * 1e-3
    for method in ALL_FRAME:
        # float64 input: the detail is there to keep, and comes out as without the offset.
        out = level_frame(1e6 + detail + 1e-4 * y, method=method)
        assert np.abs(out - level_frame(detail + 1e-4 * y, method=method)).max() < 2e-5, method


# --- step edges ------------------------------------------------------------------------------


def test_step_aware_keeps_terraces_flat_where_a_plane_bends_them() -> None:
    rng = np.random.default_rng(3)
    truth, labels = _terraces()
    y, x = _grid(*truth.shape)
    raw = truth + 0.004 * x - 0.003 * y + rng.normal(0, 0.02, truth.shape) + rng.normal(0, 0.3, (truth.shape[0], 1))
    step_aware = _terrace_error(level_frame(raw, method="step-aware"), truth, labels)
    stream = _terrace_error(level_stream(raw), truth, labels)
    plane = _terrace_error(level_frame(raw, method="plane"), truth, labels)
    median = _terrace_error(level_frame(raw, method="median"), truth, labels)
    assert step_aware < 0.03 and stream < 0.05
    assert plane > 0.2 and median > 0.1


def test_step_edge_parallel_to_the_lines() -> None:
    rng = np.random.default_rng(4)
    y, x = _grid(64, 80)
    labels = (y >= 30).astype(int)
    truth = labels.astype(float)
    raw = truth + rng.normal(0, 0.02, truth.shape) + 0.01 * x
    for out in (level_frame(raw), level_stream(raw)):
        assert _terrace_error(out, truth, labels) < 0.03


# --- tilted planes with bumps ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["flatten", "step-aware"])
def test_masked_fits_ignore_bumps_that_tilt_a_plain_plane(method: str) -> None:
    rng = np.random.default_rng(5)
    shape = (80, 80)
    y, x = _grid(*shape)
    bumps = _bumps(rng, shape, n=6, height=5.0)
    bumps[:, 60:] += _bumps(rng, (80, 20), n=10, height=5.0)  # crowd one side
    raw = bumps + 0.05 * x + 0.02 * y + rng.normal(0, 0.02, shape)
    background = np.abs(bumps) < 0.01
    robust = level_frame(raw, method=method)
    plain = level_frame(raw, method="plane")
    # On the bare surface the robust result is flat; the plain plane is tilted by the bumps.
    assert np.std(robust[background]) < 0.05
    assert np.std(plain[background]) > 2 * np.std(robust[background])


def test_plane2_removes_a_bow() -> None:
    y, x = _grid(40, 50)
    bow = 0.01 * (x - 20) ** 2 + 0.02 * (y - 10) ** 2 + 0.1 * x
    assert np.abs(level_frame(bow, method="plane2")).max() < 1e-3
    assert np.abs(level_frame(bow, method="plane")).max() > 1.0


@pytest.mark.parametrize("method", ["median", "median_diff", "matching", "poly"])
def test_row_alignment_methods_remove_line_offsets_on_a_flat_surface(method: str) -> None:
    rng = np.random.default_rng(6)
    raw = rng.normal(0, 5, (50, 1)) + rng.normal(0, 0.01, (50, 60))
    assert np.std(level_frame(raw, method=method)) < 0.02


# --- the streaming leveller ------------------------------------------------------------------


def test_stream_equals_pushing_lines_one_by_one_and_never_looks_ahead() -> None:
    rng = np.random.default_rng(7)
    truth, _ = _terraces(60, 70)
    raw = truth + rng.normal(0, 0.02, truth.shape) + rng.normal(0, 1, (60, 1))
    whole = level_stream(raw)
    lev = LineLeveller(70)
    pushed = np.array([lev.push(line) for line in raw])
    assert np.array_equal(whole, pushed)
    # Changing the future does not change the past.
    other = raw.copy()
    other[40:] = rng.normal(0, 100, (20, 70))
    assert np.array_equal(level_stream(other)[:40], whole[:40])


def test_stream_up_scan_feeds_the_bottom_row_first() -> None:
    rng = np.random.default_rng(8)
    raw = rng.normal(0, 1, (30, 1)) + 0.01 * np.arange(40.0) + rng.normal(0, 0.01, (30, 40))
    up = level_stream(raw, scan_direction="up")
    assert np.array_equal(up, level_stream(raw[::-1], scan_direction="down")[::-1])


def _elongated_bumps(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Many bright features twice as long along x as along y (a chained fit's worst case)."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        out += np.exp(-(((x - cx) / 5.0) ** 2 + ((y - cy) / 2.5) ** 2) / 2)
    return out


@pytest.mark.parametrize("seed", [0, 2])
def test_stream_on_a_flat_surface_with_features_does_not_drift(seed: int) -> None:
    # Fitting each line against the previous ones only (anchor=False) lets
    # small biases add up along the frame; held to the terrace level, the
    # stream is as good as the whole-frame leveller.
    rng = np.random.default_rng(seed)
    shape = (192, 192)
    truth = _elongated_bumps(rng, shape, 150)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    raw = truth + rng.normal(0, 0.05, shape) + rng.normal(0, 2, (shape[0], 1)) + 0.01 * x + 0.004 * y
    labels = np.zeros(shape, dtype=int)
    anchored = _terrace_error(level_stream(raw), truth, labels)
    chained = _terrace_error(level_stream(raw, anchor=False), truth, labels)
    frame = _terrace_error(level_frame(raw), truth, labels)
    assert anchored < 1.2 * frame, (anchored, frame)
    assert anchored < 0.75 * chained, (anchored, chained)


def test_stream_learns_the_terraces_it_crosses() -> None:
    rng = np.random.default_rng(9)
    truth, labels = _terraces(160, 192)
    _, x = _grid(*truth.shape)
    raw = truth + rng.normal(0, 0.03, truth.shape) + rng.normal(0, 0.5, (truth.shape[0], 1)) + 0.002 * x
    lev = LineLeveller(192)
    out = np.array([lev.push(line) for line in raw])
    # Three terraces, one unit apart, each levelled flat.
    assert np.allclose(np.diff(lev.levels), 1.0, atol=0.05), lev.levels
    assert _terrace_error(out, truth, labels) < 0.04
    chained = LineLeveller(192, anchor=False)
    for line in raw:
        chained.push(line)
    assert chained.levels.size == 0


def test_stream_keeps_the_background_of_a_real_current_image(au_mica_sxm: Path) -> None:
    # Constant-height current over a molecule that fills most of the middle
    # lines: no level may be taken from the molecule, and the background
    # after it must come back to where it was before.
    from stm_live.io import read_scan

    scan = read_scan(au_mica_sxm)
    current = scan.frame("Current", "forward")
    z = np.asarray(current.data, dtype=np.float64)
    out = level_stream(z, scan_direction=current.scan_direction)
    _finite_float32(out, z.shape)
    depth = float(np.median(z[:60]) - z.min())
    assert abs(float(np.median(out[200:]) - np.median(out[:60]))) < 0.02 * depth
    # And the constant-height Z channel (feedback off) stays exactly flat.
    flat = level_stream(scan.frame("Z", "forward").data)
    assert not np.abs(flat).max()


def test_reset_starts_a_new_frame() -> None:
    lev = LineLeveller(16)
    first = [lev.push(np.full(16, float(i))) for i in range(3)]
    lev.reset()
    assert lev.lines_used == 0
    again = [lev.push(np.full(16, float(i))) for i in range(3)]
    assert np.array_equal(np.array(first), np.array(again))


def test_line_leveller_rejects_bad_lines_and_options() -> None:
    lev = LineLeveller(8)
    with pytest.raises(LevelError, match=r"expects lines of shape \(8,\), got \(9,\)"):
        lev.push(np.zeros(9))
    with pytest.raises(LevelError, match="real numbers"):
        lev.push(np.array(["a"] * 8))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(LevelError, match="cols must be a positive integer"):
            LineLeveller(bad)  # type: ignore[arg-type]
    with pytest.raises(LevelError, match="reference_lines must be >= 1"):
        LineLeveller(8, reference_lines=0.5)
    with pytest.raises(LevelError, match="scan_direction must be 'down' or 'up'"):
        level_stream(np.zeros((2, 2)), scan_direction="left")  # type: ignore[arg-type]


# --- errors and purity -----------------------------------------------------------------------


def test_unknown_method_and_bad_inputs_name_what_was_expected() -> None:
    with pytest.raises(LevelError, match="unknown levelling method 'planar'; expected one of step-aware, plane"):
        level_frame(np.zeros((3, 3)), method="planar")
    with pytest.raises(LevelError, match=r"2-D image \(rows, cols\), got shape \(3,\)"):
        level_frame(np.zeros(3))
    with pytest.raises(LevelError, match="must not be empty"):
        level_stream(np.zeros((0, 4)))
    with pytest.raises(LevelError, match="forward and backward images differ in shape"):
        combine_directions(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(LevelError, match="target_nm_per_px must be a positive number"):
        resample_to_pitch(np.zeros((2, 2)), nm_per_px=(1.0, 1.0), target_nm_per_px=0.0)
    with pytest.raises(LevelError, match="exclude must have the image's shape"):
        level_frame(np.zeros((3, 3)), exclude=np.zeros((2, 2), bool))
    assert issubclass(LevelError, ValueError)


def test_step_aware_alias_and_exclude_mask() -> None:
    rng = np.random.default_rng(9)
    _, x = _grid(40, 40)
    raw = 0.1 * x + rng.normal(0, 0.01, x.shape)
    raw[10:20, 10:20] += 50.0
    mask = np.zeros(raw.shape, bool)
    mask[10:20, 10:20] = True
    out = level_frame(raw, method="step_aware", exclude=mask)
    assert np.std(out[~mask]) < 0.02 and out[15, 15] > 45


def test_no_function_modifies_its_input() -> None:
    rng = np.random.default_rng(10)
    raw = rng.normal(0, 1, (24, 30))
    raw[3] = np.nan
    raw.flags.writeable = False  # any write raises
    keep = raw.copy()
    for method in ALL_FRAME:
        level_frame(raw, method=method, scars=True)
    level_stream(raw)
    LineLeveller(30).push(raw[3])
    remove_scars(raw)
    normalise_robust(raw)
    resample_to_pitch(raw, nm_per_px=(0.1, 0.1), target_nm_per_px=0.3)
    combine_directions(raw, raw)
    assert np.array_equal(raw, keep, equal_nan=True)


# --- scars -----------------------------------------------------------------------------------


def test_scars_are_found_and_replaced_but_features_are_not() -> None:
    rng = np.random.default_rng(11)
    shape = (60, 80)
    z = rng.normal(0, 0.01, shape)
    z[20, 10:40] += 0.5  # a one-line scar
    z[40:42, 50:70] -= 0.4  # a two-line scar
    z[5:12, 60:70] += 0.5  # a feature seven lines tall
    out = remove_scars(z)
    assert np.abs(out[20, 10:40]).max() < 0.05 and np.abs(out[40:42, 50:70]).max() < 0.05
    assert np.array_equal(out[5:12, 60:70], z[5:12, 60:70].astype(np.float32))
    mask = find_scars(z, np.ones(shape, bool))
    assert mask[20, 10:40].all() and not mask[5:12].any()
    levelled = level_frame(z + rng.normal(0, 1, (60, 1)), scars=True)
    assert np.abs(levelled[20, 10:40]).max() < 0.1


# --- model input preparation -----------------------------------------------------------------


def test_resample_shape_identity_and_pitch() -> None:
    z = np.random.default_rng(12).normal(size=(100, 60))
    same = resample_to_pitch(z, nm_per_px=(0.2, 0.2), target_nm_per_px=0.2)
    assert same.dtype == np.float32 and np.array_equal(same, z.astype(np.float32))
    assert resample_to_pitch(z, nm_per_px=(0.2, 0.1), target_nm_per_px=0.4).shape == (25, 30)
    assert resample_to_pitch(z, nm_per_px=(0.2, 0.2), target_nm_per_px=0.1).shape == (200, 120)
    assert resample_to_pitch(z[:1, :1], nm_per_px=(1.0, 1.0), target_nm_per_px=50.0).shape == (1, 1)


def test_resample_antialiases_when_shrinking_and_interpolates_when_growing() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(float)
    small = resample_to_pitch(checker, nm_per_px=(0.1, 0.1), target_nm_per_px=0.4)
    assert np.abs(small[2:-2, 2:-2] - 0.5).max() < 0.05  # no aliased pattern
    ramp = np.tile(np.arange(10.0), (3, 1))
    big = resample_to_pitch(ramp, nm_per_px=(1.0, 1.0), target_nm_per_px=0.5)
    # Interior output pixel j sits at input position (j + 0.5) / 2 - 0.5.
    j = np.arange(2, 18)
    assert np.allclose(big[1, 2:18], (j + 0.5) / 2 - 0.5, atol=1e-6)


def test_normalise_robust_centre_and_scale() -> None:
    rng = np.random.default_rng(13)
    z = rng.normal(5.0, 2.0, (200, 200))
    z[:20, :20] = 1e3  # a few huge outliers do not move median or MAD much
    out = normalise_robust(z)
    assert abs(np.median(out)) < 0.02
    assert abs(np.median(np.abs(out)) * 1.4826 - 1.0) < 0.05
    assert np.abs(normalise_robust(z, clip=3.0)).max() == pytest.approx(3.0)
    for scale in ("iqr", "std"):
        _finite_float32(normalise_robust(z, scale=scale), z.shape)
    with pytest.raises(LevelError, match="scale must be"):
        normalise_robust(z, scale="range")


def test_combine_directions_aligns_and_averages() -> None:
    rng = np.random.default_rng(14)
    f = rng.normal(0, 1, (10, 12))
    b = f + 0.1 * rng.normal(0, 1, f.shape) + 7.0
    both = combine_directions(f, b)
    assert np.abs(both - f).max() < 0.3
    b_nan = b.copy()
    b_nan[4] = np.nan
    assert np.allclose(combine_directions(f, b_nan)[4], f[4], atol=1e-5)


# --- any input: finite float32 out, no warnings ----------------------------------------------


@st.composite
def _images(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 12))
    cols = draw(st.integers(1, 12))
    scale = draw(st.sampled_from([1e-10, 1.0, 1e6]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (rows, cols))
    if draw(st.booleans()):
        z = np.round(z / scale) * scale  # quantised, many ties
    nan_rows = draw(st.lists(st.integers(0, rows - 1), max_size=rows))
    z[nan_rows] = np.nan
    if draw(st.booleans()):
        z[rng.random(z.shape) < 0.1] = np.inf
    return z


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_images())
def test_any_image_gives_finite_float32_without_warnings(z: np.ndarray) -> None:
    for method in ALL_FRAME:
        _finite_float32(level_frame(z, method=method, scars=True), z.shape)
    _finite_float32(level_stream(z), z.shape)
    _finite_float32(level_stream(z, scan_direction="up"), z.shape)
    _finite_float32(remove_scars(z), z.shape)
    _finite_float32(normalise_robust(z), z.shape)
    _finite_float32(combine_directions(z, z), z.shape)
    assert np.isfinite(resample_to_pitch(z, nm_per_px=(0.3, 0.2), target_nm_per_px=0.25)).all()
