"""The simulated surfaces: lattice periods, step heights, rotation across steps, features where the truth says.

Every check measures the rendered image the way one would measure a real one
(FFT peaks, terrace means, feature centroids) and compares with the physics
the simulator claims.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from stm_live.sim import SURFACES, Artefacts, simulate_scan, surface_classes
from stm_live.sim.measure import fourier_component, lattice_peak
from stm_live.sim.surfaces import surface_model

ROW_PERIOD_NM = {"si001-ash3": 0.768, "ge001": 0.80, "tio2-110": 0.65}
STEP_NM = {"si001-ash3": 0.136, "ge001": 0.141, "tio2-110": 0.325}
NONE = Artefacts.none()
BARE = {"density_scale": 0.0, "clutter_per_nm2": 0.0}  # lattice and steps only


def _angle_diff(a: float, b: float) -> float:
    """Difference of two directions (degrees), modulo 180."""
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


def test_surface_names_and_classes() -> None:
    assert SURFACES == ("si001-ash3", "ge001", "tio2-110")
    assert surface_classes("si001-ash3") == ("AsH3", "dangling_bond", "dimer_vacancy")
    assert surface_classes("tio2-110") == ("O_vacancy", "hydroxyl")
    assert set(surface_classes("ge001")) == {"dimer_vacancy", "ad_dimer", "phase_defect"}
    with pytest.raises(ValueError, match=r"unknown surface 'si111'.*si001-ash3"):
        surface_classes("si111")


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0])
def test_row_period_and_direction_from_fft(surface: str, angle: float) -> None:
    scan = simulate_scan(surface, size_nm=20.0, pixels=256, seed=11, steps=0, row_angle_deg=angle, artefacts=NONE)
    peak = lattice_peak(scan.frame("Z").data * 1e9, nm_per_px=scan.nm_per_px, min_period_nm=0.3, max_period_nm=3.0)
    assert peak.period_nm == pytest.approx(ROW_PERIOD_NM[surface], rel=0.02)
    # The strongest periodicity runs across the rows.
    assert _angle_diff(peak.angle_deg, angle + 90.0) < 1.0


def test_row_period_is_physical_not_in_pixels() -> None:
    """The same surface on twice the pixels: the same period in nm, twice the period in pixels."""
    periods = []
    for pixels in (128, 256):
        scan = simulate_scan("si001-ash3", size_nm=25.0, pixels=pixels, seed=5, steps=0, row_angle_deg=60.0,
                             artefacts=NONE, **BARE)
        peak = lattice_peak(scan.clean, nm_per_px=scan.nm_per_px, min_period_nm=0.5, max_period_nm=1.5)
        periods.append(peak.period_nm / scan.nm_per_px)
        assert peak.period_nm == pytest.approx(0.768, rel=0.02)
    assert periods[1] / periods[0] == pytest.approx(2.0, rel=0.02)


def test_dimers_along_the_row_at_0384_nm() -> None:
    """With a sharp tip the dimer period along the row is resolved: a peak at 0.384 nm along the row."""
    scan = simulate_scan("si001-ash3", size_nm=12.0, pixels=256, seed=2, steps=0, row_angle_deg=30.0,
                         tip_sigma_nm=0.06, artefacts=NONE, **BARE)
    th = math.radians(30.0)
    k = 2 * math.pi / 0.384
    along = abs(fourier_component(scan.clean, k * math.cos(th), k * math.sin(th), nm_per_px=scan.nm_per_px))
    off = abs(fourier_component(scan.clean, k * math.cos(th + 0.3), k * math.sin(th + 0.3), nm_per_px=scan.nm_per_px))
    assert along > 20 * off


@pytest.mark.parametrize("surface", SURFACES)
def test_step_height(surface: str) -> None:
    scan = simulate_scan(surface, size_nm=20.0, pixels=128, seed=3, steps=1, artefacts=NONE, **BARE)
    z = scan.clean.astype(np.float64) * 1e9
    far = ~ndimage.binary_dilation(scan.step_mask, iterations=8)
    upper = z[far & (scan.terraces == 0)].mean()
    lower = z[far & (scan.terraces == 1)].mean()
    assert upper - lower == pytest.approx(STEP_NM[surface], abs=0.006)


def test_step_mask_follows_the_terrace_boundary() -> None:
    scan = simulate_scan("si001-ash3", size_nm=20.0, pixels=200, seed=8, steps=2, artefacts=NONE)
    t = scan.terraces
    assert set(np.unique(t)) == {0, 1, 2}
    boundary = np.zeros_like(scan.step_mask)
    boundary[:, 1:] |= t[:, 1:] != t[:, :-1]
    boundary[1:, :] |= t[1:, :] != t[:-1, :]
    assert scan.step_mask[boundary].all()
    # ~0.3 nm either side of the edge: nothing of it farther than 0.3 nm + one pixel.
    dist = ndimage.distance_transform_edt(~boundary) * scan.nm_per_px
    assert dist[scan.step_mask].max() <= 0.3 + 1.5 * scan.nm_per_px
    # Features keep off the steps: no ground-truth pixel at a step edge.
    assert scan.instances and not (scan.mask[scan.step_mask] > 0).any()


@pytest.mark.parametrize(("surface", "turn"), [("si001-ash3", 90.0), ("ge001", 90.0), ("tio2-110", 0.0)])
def test_rows_turn_across_a_step_only_on_diamond_surfaces(surface: str, turn: float) -> None:
    scan = simulate_scan(surface, size_nm=30.0, pixels=256, seed=4, steps=1, row_angle_deg=20.0, artefacts=NONE,
                         **BARE)
    far = ~ndimage.binary_dilation(scan.step_mask, iterations=6)
    peaks = [
        lattice_peak(scan.clean, nm_per_px=scan.nm_per_px, min_period_nm=0.4, max_period_nm=1.5,
                     mask=far & (scan.terraces == t))
        for t in (0, 1)
    ]
    for p in peaks:
        assert p.period_nm == pytest.approx(ROW_PERIOD_NM[surface], rel=0.02)
    assert _angle_diff(peaks[0].angle_deg, peaks[1].angle_deg) == pytest.approx(turn, abs=1.5)


def _feature_signal(surface: str, **kw: object) -> tuple[object, np.ndarray]:
    with_features = simulate_scan(surface, clutter_per_nm2=0.0, **kw)
    bare = simulate_scan(surface, density_scale=0.0, clutter_per_nm2=0.0, **kw)
    return with_features, (with_features.clean.astype(np.float64) - bare.clean) * 1e9


@pytest.mark.parametrize("surface", SURFACES)
def test_truth_positions_land_on_the_rendered_features(surface: str) -> None:
    kw = {"size_nm": 20.0, "pixels": 250, "seed": 21, "steps": 1, "artefacts": NONE}
    scan, diff = _feature_signal(surface, **kw)
    px = scan.nm_per_px
    yy, xx = (np.mgrid[: scan.pixels, : scan.pixels] + 0.5) * px
    model = surface_model(surface)
    radius = {k.name: max(k.footprint_u, k.footprint_v) for k in model.kinds}
    assert len(scan.instances) >= 8
    checked = 0
    for inst in scan.instances:
        reach = radius[inst.kind] + 0.1
        if min(inst.x_nm, inst.y_nm, scan.size_nm - inst.x_nm, scan.size_nm - inst.y_nm) < reach:
            continue  # cut by the border: its centroid moves inwards
        checked += 1
        near = (xx - inst.x_nm) ** 2 + (yy - inst.y_nm) ** 2 <= reach**2
        signal = diff[near]
        if inst.class_name == "dimer_vacancy":
            signal = -signal
        elif inst.class_name == "phase_defect":
            signal = np.abs(signal)  # the zig-zag flips: bright and dark in turn
        assert signal.max() > 0.01, inst  # something is rendered there
        w = np.where(signal > 0.3 * signal.max(), signal, 0.0)
        cx = (w * xx[near]).sum() / w.sum()
        cy = (w * yy[near]).sum() / w.sum()
        assert math.hypot(cx - inst.x_nm, cy - inst.y_nm) < 0.15, inst
        r, c = int(inst.y_nm / px), int(inst.x_nm / px)
        assert scan.mask[r, c] == scan.classes.index(inst.class_name) + 1
    assert checked >= 6


@pytest.mark.parametrize("surface", SURFACES)
def test_every_mask_blob_is_one_instance(surface: str) -> None:
    scan = simulate_scan(surface, size_nm=30.0, pixels=256, seed=9, artefacts=Artefacts.realistic())
    labels, n = ndimage.label(scan.mask > 0, structure=np.ones((3, 3)))
    assert n == len(scan.instances)
    px = scan.nm_per_px
    hit = [labels[min(int(i.y_nm / px), scan.pixels - 1), min(int(i.x_nm / px), scan.pixels - 1)]
           for i in scan.instances]
    assert sorted(hit) == list(range(1, n + 1))  # each blob holds exactly one centre
    # One class per blob, the instance's.
    for inst, lab in zip(scan.instances, hit, strict=True):
        assert set(np.unique(scan.mask[labels == lab])) == {scan.classes.index(inst.class_name) + 1}
    # Footprints are compact: 0.3 .. 1 nm in radius.
    areas = np.bincount(labels.ravel())[1:] * px * px
    assert np.all(areas > math.pi * 0.3**2) and np.all(areas < math.pi * 1.0**2)


def test_default_density_is_a_few_dozen_per_class_in_50_nm() -> None:
    scan = simulate_scan("si001-ash3", size_nm=50.0, pixels=256, seed=1, artefacts=NONE)
    counts = {c: sum(i.class_name == c for i in scan.instances) for c in scan.classes}
    assert all(15 <= n <= 120 for n in counts.values()), counts
    half = simulate_scan("si001-ash3", size_nm=50.0, pixels=256, seed=1, artefacts=NONE, density_scale=0.5)
    assert len(half.instances) < 0.65 * len(scan.instances)
    only = simulate_scan("si001-ash3", size_nm=50.0, pixels=256, seed=1, artefacts=NONE,
                         density_per_nm2={"AsH3": 0.0, "dangling_bond": 0.0})
    assert {i.class_name for i in only.instances} == {"dimer_vacancy"}


def _peaks_by_kind(surface: str, **kw: object) -> dict[str, list[tuple[float, float]]]:
    """Per feature kind: (peak |height|, area above half of it) of every isolated feature."""
    scan, diff = _feature_signal(surface, size_nm=30.0, pixels=300, seed=31, steps=0, artefacts=NONE, **kw)
    px = scan.nm_per_px
    out: dict[str, list[tuple[float, float]]] = {}
    for inst in scan.instances:
        r, c = int(inst.y_nm / px), int(inst.x_nm / px)
        h = int(1.0 / px)
        win = diff[max(r - h, 0): r + h + 1, max(c - h, 0): c + h + 1]
        win = -win if inst.class_name == "dimer_vacancy" else win
        peak = float(win.max())
        out.setdefault(inst.kind, []).append((peak, float((win > 0.5 * peak).sum() * px * px)))
    return out


def test_si_classes_differ_the_way_an_expert_sees_them() -> None:
    """Filled states: dangling bonds are the brightest and most compact, AsH3 fragments lower and wider,
    vacancies dark."""
    kinds = _peaks_by_kind("si001-ash3")
    db = np.array(kinds["single DB"])
    ash = np.array(kinds["AsH2+H"] + kinds["AsH3"])
    dv = np.array(kinds["2-DV"] + kinds["1-DV"])
    assert np.median(db[:, 0]) > 1.5 * np.median(ash[:, 0])
    assert np.median(ash[:, 1]) > 1.3 * np.median(db[:, 1])
    assert np.median(dv[:, 0]) > 0.05  # depth, nm (sign flipped above)


def test_dangling_bond_gets_a_dark_halo_in_empty_states() -> None:
    def halo(bias: float) -> float:
        scan, diff = _feature_signal("si001-ash3", size_nm=30.0, pixels=300, seed=12, steps=0, artefacts=NONE,
                                     bias_v=bias, density_per_nm2={"AsH3": 0.0, "dimer_vacancy": 0.0})
        px = scan.nm_per_px
        yy, xx = (np.mgrid[: scan.pixels, : scan.pixels] + 0.5) * px
        rings = []
        for inst in scan.instances:
            if inst.kind == "single DB":
                d = np.hypot(xx - inst.x_nm, yy - inst.y_nm)
                rings.append(diff[(d > 0.75) & (d < 1.2)].mean())
        return float(np.median(rings))

    assert halo(+1.5) < -0.008
    assert halo(-2.0) > -0.002


def _lattice_component(surface: str, bias: float, g_u: float, g_v: float) -> complex:
    th = math.radians(25.0)
    scan = simulate_scan(surface, size_nm=16.0, pixels=256, seed=6, steps=0, row_angle_deg=25.0, bias_v=bias,
                         artefacts=NONE, **BARE)
    e_u = (-math.sin(th), math.cos(th))
    e_v = (math.cos(th), math.sin(th))
    kx, ky = g_u * e_u[0] + g_v * e_v[0], g_u * e_u[1] + g_v * e_v[1]
    return fourier_component(scan.clean, kx, ky, nm_per_px=scan.nm_per_px)


def test_ge_zigzag_inverts_between_filled_and_empty_states() -> None:
    """c(4x2): filled states image the raised atom of each dimer, empty states the lowered one."""
    g = (2 * math.pi / 1.6, 2 * math.pi / 0.8)  # a c(4x2) superstructure spot
    filled = _lattice_component("ge001", -1.5, *g)
    empty = _lattice_component("ge001", +1.5, *g)
    assert abs(filled) > 0 and abs(empty) > 0
    assert math.cos(np.angle(empty) - np.angle(filled)) < -0.9


def test_tio2_row_contrast_inverts_with_bias() -> None:
    """Empty states: Ti rows bright; filled states: bridging-oxygen rows bright (half a period away)."""
    g = (2 * math.pi / 0.65, 0.0)
    empty = _lattice_component("tio2-110", +1.2, *g)
    filled = _lattice_component("tio2-110", -1.2, *g)
    assert math.cos(np.angle(empty) - np.angle(filled)) < -0.9


def test_same_seed_same_scan_other_seed_other_scan() -> None:
    kw = {"size_nm": 12.0, "pixels": 96, "artefacts": Artefacts(**{**Artefacts.realistic().to_dict(),
                                                                     "tip_change_chance": 1.0})}
    a, b, c = (simulate_scan("ge001", seed=s, **kw) for s in (4, 4, 5))
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert np.array_equal(fa.data, fb.data)
    assert np.array_equal(a.clean, b.clean) and np.array_equal(a.mask, b.mask)
    assert a.instances == b.instances and dict(a.events) == dict(b.events)
    assert not np.array_equal(a.frame("Z").data, c.frame("Z").data)


def test_surface_does_not_depend_on_the_pixel_count() -> None:
    scans = [simulate_scan("si001-ash3", size_nm=16.0, pixels=p, seed=13, artefacts=NONE) for p in (128, 256)]
    a, b = scans
    assert [i.class_name for i in a.instances] == [i.class_name for i in b.instances]
    for ia, ib in zip(a.instances, b.instances, strict=True):
        assert (ia.x_nm, ia.y_nm) == pytest.approx((ib.x_nm, ib.y_nm), abs=1e-6)
    # Footprint areas agree in nm^2, not in pixels.
    area = [(s.mask > 0).sum() * s.nm_per_px**2 for s in scans]
    assert area[0] == pytest.approx(area[1], rel=0.1)


def test_frames_are_si_units_display_orientation() -> None:
    scan = simulate_scan("si001-ash3", size_nm=10.0, pixels=64, seed=1, scan_direction="up")
    assert [(f.channel, f.direction, f.unit) for f in scan.frames] == [
        ("Z", "forward", "m"), ("Z", "backward", "m"), ("Current", "forward", "A"), ("Current", "backward", "A")]
    z = scan.frame("Z")
    assert z.width_nm == pytest.approx(10.0) and z.scan_direction == "up" and z.complete
    assert z.bias_v == -2.0 and z.setpoint_a == pytest.approx(50e-12)
    assert np.abs(z.data).max() < 5e-9  # metres, not nm
    assert scan.clean.dtype == np.float32 and scan.mask.dtype == np.uint8
    assert not scan.clean.flags.writeable and not scan.mask.flags.writeable
    with pytest.raises(KeyError, match="no 'Phase'"):
        scan.frame("Phase")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"surface": "graphite"}, "surface='graphite'"),
        ({"pixels": 4}, "pixels=4"),
        ({"size_nm": -1.0}, "size_nm=-1.0"),
        ({"seed": -3}, "seed=-3"),
        ({"bias_v": 0.0}, "bias_v must be a non-zero number of volts"),
        ({"density_per_nm2": {"adatom": 0.1}}, "class names of si001-ash3"),
        ({"artefacts": Artefacts(drift_nm=30.0), "size_nm": 5.0, "pixels": 64}, "run backwards|beyond the 5 nm"),
        ({"artefacts": Artefacts(drift_nm=20.0), "size_nm": 40.0, "pixels": 64}, "beyond the 40 nm frame"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_scan(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=20, deadline=None)
@given(
    surface=st.sampled_from(SURFACES),
    seed=st.integers(0, 2**32 - 1),
    size_nm=st.floats(5.0, 40.0),
    pixels=st.integers(32, 160),
    density_scale=st.floats(0.0, 3.0),
    steps=st.integers(0, 3),
)
def test_ground_truth_invariants_hold_for_any_scan(
    surface: str, seed: int, size_nm: float, pixels: int, density_scale: float, steps: int
) -> None:
    """Whatever the parameters: one mask blob per instance, centres inside and labelled, nothing on a step."""
    scan = simulate_scan(surface, size_nm=size_nm, pixels=pixels, seed=seed, density_scale=density_scale,
                         steps=steps, artefacts=Artefacts.realistic() if seed % 2 else NONE)
    _, n = ndimage.label(scan.mask > 0, structure=np.ones((3, 3)))
    assert n == len(scan.instances)
    px = scan.nm_per_px
    for inst in scan.instances:
        assert 0 <= inst.x_nm < size_nm and 0 <= inst.y_nm < size_nm
        r, c = min(int(inst.y_nm / px), pixels - 1), min(int(inst.x_nm / px), pixels - 1)
        assert scan.classes[scan.mask[r, c] - 1] == inst.class_name
    assert not (scan.mask[scan.step_mask] > 0).any()
    assert all(np.isfinite(f.data).all() for f in scan.frames)


def test_random_surface_models_differ_by_seed_and_simulate() -> None:
    from stm_live.sim import simulate_scan
    from stm_live.sim.surfaces import random_surface_model

    a, b = random_surface_model(1), random_surface_model(2)
    assert random_surface_model(1) == a and a != b
    for model in (a, b):
        assert 3 <= len(model.classes) <= 5 and set(model.density_per_nm2) == set(model.classes)
        scan = simulate_scan(model, size_nm=12.0, pixels=96, seed=4)
        assert scan.classes == model.classes and scan.params["surface"] == "random"
        # Every class is in the truth mask, and the mask's values are the class numbers.
        assert set(np.unique(scan.mask).tolist()) <= set(range(len(model.classes) + 1))
        assert len({i.class_name for i in scan.instances}) >= 2
    with pytest.raises(ValueError, match="bias_v"):
        simulate_scan(a, size_nm=12.0, pixels=96, seed=4, bias_v=1.0)


def test_random_surface_twin_classes_are_scaled_copies() -> None:
    from stm_live.sim.surfaces import random_surface_model

    def kinds_of(model, name):
        return [k for k in model.kinds if k.class_name == name]

    assert all("twin" not in k.name for k in random_surface_model(5, twin_probability=0.0).kinds)
    twins = 0
    for seed in range(40):
        model = random_surface_model(seed, twin_probability=1.0)
        # With certainty every class after the first copies an earlier, original class.
        first = kinds_of(model, model.classes[0])
        assert first and all("twin" not in k.name for k in first)
        for name in model.classes[1:]:
            for kind in kinds_of(model, name):
                assert "twin of r1)" in kind.name  # only r1 is an original when every later class is a twin
                source = first[int(kind.name.split(" kind ")[1].split()[0]) - 1]
                assert len(kind.blobs) == len(source.blobs)
                gains = {round(b.height / s.height, 6) for b, s in zip(kind.blobs, source.blobs, strict=True)}
                widths = {round(b.sigma_u / s.sigma_u, 6) for b, s in zip(kind.blobs, source.blobs, strict=True)}
                (gain,), (width,) = gains, widths  # one height gain and one width factor per class
                assert 1.4 - 1e-6 <= max(gain, 1 / gain) <= 2.6 + 1e-6 and 0.7 <= width <= 1.2
                twins += 1
    assert twins > 40
