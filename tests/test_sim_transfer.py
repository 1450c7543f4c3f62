"""The simulator's realism of real Si(001):H frames (stm_live.sim.realism) and the training data that uses it.

Each part is switched on alone and checked to do what it claims, on the
rendered image and the ground truth; off, every scan and every training
frame is what it was before the parts existed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from stm_live.errors import ConfigError
from stm_live.sim import Artefacts, Realism, simulate_scan
from stm_live.sim.measure import lattice_peak
from stm_live.sim.realism import REACTED
from stm_live.train.settings import SurfaceSettings, load_train_settings

NONE = Artefacts.none()
OFF = {f: 0.0 for f in Realism().to_dict() if f != "rim_height"}


def _only(**on: float) -> Realism:
    return Realism.from_dict({**Realism.si001h().to_dict(), **OFF, **on})


def _scan(realism: Realism, seed: int = 3, **kw: object) -> object:
    return simulate_scan("si001-ash3", size_nm=30.0, pixels=300, seed=seed, artefacts=NONE, steps=0,
                         row_angle_deg=30.0, realism=realism, **kw)  # type: ignore[arg-type]


def test_without_realism_every_scan_is_what_it_was() -> None:
    plain = simulate_scan("si001-ash3", size_nm=20.0, pixels=128, seed=4)
    off = simulate_scan("si001-ash3", size_nm=20.0, pixels=128, seed=4, realism=Realism.none())
    for a, b in zip(plain.frames, off.frames, strict=True):
        assert np.array_equal(a.data, b.data)
    assert np.array_equal(plain.mask, off.mask) and plain.instances == off.instances
    assert "realism" not in off.params and "realism" not in off.events
    on = simulate_scan("si001-ash3", size_nm=20.0, pixels=128, seed=4, realism=Realism.si001h())
    assert on.params["realism"] == Realism.si001h().to_dict()
    assert not np.array_equal(on.frame("Z").data, plain.frame("Z").data)


def test_realism_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"Realism.trench_fraction .* within 0..1, got 1.5"):
        Realism(trench_fraction=1.5)
    with pytest.raises(ValueError, match=r"Realism.rim_height must be a finite number >= 0, got -1"):
        Realism(rim_height=-1)
    with pytest.raises(ValueError, match=r"unknown realism setting\(s\) trenches; expected some of"):
        Realism.from_dict({"trenches": 1})
    with pytest.raises(ValueError, match="simulate_scan: realism="):
        simulate_scan("si001-ash3", size_nm=10.0, pixels=64, realism={"trench_fraction": 1})  # type: ignore[arg-type]
    assert not Realism(rim_height=0.8).active and Realism(reacted_chance=0.1).active


def test_trenches_are_long_dark_vacancies_along_the_rows_one_instance_each() -> None:
    scan = _scan(_only(trench_fraction=1.0), density_per_nm2={"AsH3": 0.0, "dangling_bond": 0.0}, clutter_per_nm2=0.0)
    kinds = [i.kind for i in scan.instances]
    assert kinds and all("trench" in k or "-DV" not in k for k in kinds)
    assert sum("trench" in k for k in kinds) == len(kinds)
    # Every mask component is one trench: elongated along the rows (30 degrees), 1.5-3.9 nm long.
    labels, n = ndimage.label(scan.mask == 3)
    assert n == len(scan.instances)
    px = scan.nm_per_px
    lengths = []
    for k in range(1, n + 1):
        r, c = np.nonzero(labels == k)
        if r.size < 20:  # cut by the frame's edge
            continue
        xy = np.stack([c, r]) * px
        w, v = np.linalg.eigh(np.cov(xy))
        axis = v[:, 1]
        angle = math.degrees(math.atan2(axis[1], axis[0])) % 180
        assert min(abs(angle - 30), 180 - abs(angle - 30)) < 12
        lengths.append(4 * math.sqrt(w[1]))
    assert 1.5 < np.median(lengths) < 4.5
    # Dark: the clean topography inside is below the terrace.
    assert scan.clean[scan.mask == 3].mean() < scan.clean[scan.mask == 0].mean() - 0.03e-9


def test_rims_are_bright_background_on_one_side_along_the_fast_axis() -> None:
    plain = _scan(_only(), density_per_nm2={"AsH3": 0.0, "dangling_bond": 0.0}, clutter_per_nm2=0.0)
    rims = _scan(_only(rim_chance=1.0), density_per_nm2={"AsH3": 0.0, "dangling_bond": 0.0}, clutter_per_nm2=0.0)
    assert np.array_equal(plain.mask, rims.mask) and plain.instances == rims.instances
    diff = (rims.clean - plain.clean) * 1e9
    assert diff.max() > 0.05 and diff.min() > -1e-6  # bright only
    bright = diff > 0.02
    peaks = (diff == ndimage.maximum_filter(diff, size=5)) & bright
    assert peaks.sum() > 10 and not np.any(peaks & (rims.mask > 0))  # beside the vacancies: background
    assert (bright & (rims.mask > 0)).sum() < 0.2 * bright.sum()
    # One side per frame along x: the bright pixels sit to the same side of their nearest vacancy.
    r, c = np.nonzero(bright)
    centres = np.array([(i.x_nm, i.y_nm) for i in rims.instances]) / rims.nm_per_px
    nearest = np.argmin(np.hypot(c[:, None] + 0.5 - centres[None, :, 0], r[:, None] + 0.5 - centres[None, :, 1]), 1)
    dx = c + 0.5 - centres[nearest, 0]
    assert max((dx > 0).mean(), (dx < 0).mean()) > 0.9


def test_size_spread_scales_features_and_their_footprints() -> None:
    sizes = []
    for seed in range(6):
        scan = _scan(_only(size_spread=0.5), seed=seed, clutter_per_nm2=0.0)
        f = scan.events["realism"]
        assert 0.9 <= f["size"] <= 1.5 and 1 / 1.5 <= f["height"] <= 1.5
        sizes.append((f["size"], (scan.mask == 2).sum() / max(1, sum(i.class_name == "dangling_bond"
                                                                          for i in scan.instances))))
    sizes.sort()
    assert sizes[-1][0] > sizes[0][0] + 0.1 and sizes[-1][1] > sizes[0][1]  # bigger factor, bigger footprints


def test_contamination_is_irregular_unlabelled_and_keeps_off_features() -> None:
    plain = _scan(_only(), seed=5, density_scale=0.0, clutter_per_nm2=0.0)
    dirty = _scan(_only(contamination_per_nm2=0.01), seed=5, density_scale=0.0, clutter_per_nm2=0.0)
    assert not dirty.instances and not dirty.mask.any()
    extra = (dirty.clean - plain.clean) * 1e9
    labels, n = ndimage.label(extra > 0.01)  # whole clusters
    assert n >= 3
    # Not round, as the surface model's clutter is: elongated, and chains show several blobs (local maxima).
    elongation = []
    for k in range(1, n + 1):
        r, c = np.nonzero(labels == k)
        if r.size > 10:
            w = np.linalg.eigvalsh(np.cov(np.stack([r, c]).astype(float)))
            elongation.append(math.sqrt(w[1] / max(w[0], 1e-9)))
    assert np.mean(np.array(elongation) > 1.5) >= 0.3  # the chains (half the shapes)
    peaks = (extra == ndimage.maximum_filter(extra, size=3)) & (extra > 0.05)
    assert np.bincount(labels[peaks], minlength=n + 1)[1:].max() >= 3
    # Among labelled features, they are placed as the model's clutter is: the features stay.
    with_labels = _scan(_only(contamination_per_nm2=0.01), seed=5)
    assert len(with_labels.instances) > 0.8 * len(_scan(_only(), seed=5).instances)


def test_reacted_area_is_neither_background_nor_a_class() -> None:
    scan = _scan(_only(reacted_chance=1.0), seed=2)
    reacted = scan.mask == REACTED
    assert 0.05 < reacted.mean() < 0.5 and scan.events["realism"]["reacted"]
    px = scan.nm_per_px
    for i in scan.instances:  # no feature is centred in it
        assert not reacted[min(int(i.y_nm / px), 299), min(int(i.x_nm / px), 299)]
    # Inside: no rows, and rough on the scale of its blobs (0.2-0.6 nm) where the terrace is smooth.
    clean = scan.clean * 1e9
    inner = ndimage.binary_erosion(reacted, iterations=5)
    outer = ndimage.binary_erosion(scan.mask == 0, iterations=5) & ~ndimage.binary_dilation(reacted, iterations=5)
    rows = [lattice_peak(clean, nm_per_px=px, min_period_nm=0.6, max_period_nm=1.0, mask=m.astype(float)).amplitude
            for m in (inner, outer)]
    assert rows[0] < 0.3 * rows[1]
    band = ndimage.gaussian_filter(clean, 2) - ndimage.gaussian_filter(clean, 6)
    assert band[inner].std() > 2 * band[outer].std()


def test_training_frames_use_realism_only_when_asked() -> None:
    from stm_live.train.data import _digest, simulate_prepared

    off = SurfaceSettings(name="si001-ash3", frames=1, size_nm=(20.0, 20.0), input_nm_per_px=(0.1, 0.1))
    on = off.model_copy(update={"realism_fraction": 1.0, "realism": {"reacted_chance": 1.0},
                                "realism_input_nm_per_px": (0.195, 0.195)})
    settings = load_train_settings()
    assert _digest(settings, [off], "train") != _digest(settings, [on], "train")
    a, ma, _ = simulate_prepared(off, 3)
    b, mb, _ = simulate_prepared(on, 3)
    assert a.shape == b.shape == (100, 100)  # the model grid (0.2 nm/px); only the input pitch differs
    assert REACTED not in ma and (mb == REACTED).mean() > 0.05
    with pytest.raises(ConfigError, match="unknown realism setting"):
        load_train_settings(surfaces=[{"name": "si001-ash3", "realism": {"trenchez": 0}}])


def test_faint_dots_are_shallow_unlabelled_dips() -> None:
    kw = {"density_per_nm2": {"AsH3": 0.0, "dangling_bond": 0.0}, "clutter_per_nm2": 0.0}
    plain = _scan(_only(), seed=6, **kw)
    dots = _scan(_only(faint_dots_per_nm2=0.03), seed=6, **kw)
    assert all(i.class_name == "dimer_vacancy" for i in dots.instances)  # the dots are not labelled

    def dips(scan: object) -> tuple[np.ndarray, float]:
        # smoothed over the rows (0.77 nm), so that only dips wider than a row trough remain
        clean = ndimage.gaussian_filter(scan.clean * 1e9, 4)  # type: ignore[attr-defined]
        background = np.median(clean)
        depth = np.median([clean[int(i.y_nm / 0.1), int(i.x_nm / 0.1)] for i in scan.instances]) - background  # type: ignore[attr-defined]
        far = ~ndimage.binary_dilation(scan.mask > 0, iterations=12)  # type: ignore[attr-defined]
        found = (clean == ndimage.minimum_filter(clean, size=9)) & far & (clean - background < 0.15 * depth)
        return (clean - background)[found] / depth, depth

    none, _ = dips(plain)
    some, depth = dips(dots)
    assert depth < 0
    assert len(none) <= 2 and len(some) > 10  # away from every vacancy: dips only with the dots
    assert np.median(some) < 0.6 and np.all(some < 1.0)  # shallower than a vacancy
