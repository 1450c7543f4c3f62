"""The simulator against real images (../shared/data/real-npy, skipped when absent).

Loose on purpose: the real arrays have no units and a nominal scale only
(see docs/simulator.md); these tests keep the simulator's defaults from
drifting away from what the real Si(001):H images show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stm_live.sim import Artefacts, simulate_scan
from stm_live.sim.measure import blob_density, lattice_peak, level_simple, noise_floor

SI_REAL = "si001h_brockley_23_2_0.npy"
NM_PER_PX = 100.0 / 512  # the source's resampling


def _real_si(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    raw = np.load(folder / SI_REAL, allow_pickle=False).astype(np.float64)
    r, c = np.mgrid[:512, :512]
    side = (r - 30.0) - c * 482.0 / 470.0  # the step, placed by hand (as in docs/sim_realism.py)
    upper, lower = side > 15, side < -15
    design = np.stack([np.ones(raw.size), r.ravel(), c.ravel(), (side > 0).ravel()], axis=1)
    sel = (upper | lower).ravel()
    coef, *_ = np.linalg.lstsq(design[sel], raw.ravel()[sel], rcond=None)
    return raw * (0.136 / abs(coef[3])), upper, lower, 0.136 / abs(coef[3])


def test_real_si_rows_turn_by_90_degrees_across_its_step(real_npy: Path) -> None:
    """What the simulator builds in is what the real image shows: ~0.77 nm rows, turned across a step."""
    z, upper, lower, _ = _real_si(real_npy)
    lv = level_simple(z)
    peaks = [lattice_peak(lv, nm_per_px=NM_PER_PX, min_period_nm=0.5, max_period_nm=1.2, mask=m)
             for m in (upper, lower)]
    for p in peaks:
        assert p.period_nm == pytest.approx(0.768, rel=0.1)  # the nominal 100 nm scale is itself ~5 % uncertain
    turn = abs(peaks[0].angle_deg - peaks[1].angle_deg) % 180
    assert min(turn, 180 - turn) == pytest.approx(90, abs=10)


def test_simulated_si_matches_the_real_image_statistics(real_npy: Path) -> None:
    real, upper, _, _ = _real_si(real_npy)
    scan = simulate_scan("si001-ash3", size_nm=100.0, pixels=512, seed=0, steps=1, row_angle_deg=42.0,
                         artefacts=Artefacts.realistic())
    sim = scan.frame("Z").data.astype(np.float64) * 1e9
    real_amp = lattice_peak(level_simple(real), nm_per_px=NM_PER_PX, min_period_nm=0.5, max_period_nm=1.2,
                            mask=upper).amplitude
    sim_amp = lattice_peak(level_simple(sim), nm_per_px=NM_PER_PX, min_period_nm=0.5, max_period_nm=1.2,
                           mask=scan.terraces == 0).amplitude
    assert sim_amp / real_amp == pytest.approx(1.0, abs=0.35)  # row corrugation, relative to the step height
    assert noise_floor(sim) / noise_floor(real) == pytest.approx(1.0, abs=0.5)
    dens_real = blob_density(real, nm_per_px=NM_PER_PX, threshold=0.03)
    dens_sim = blob_density(sim, nm_per_px=NM_PER_PX, threshold=0.03)
    for key in ("bright_per_nm2", "dark_per_nm2"):
        assert 0.5 < dens_sim[key] / dens_real[key] < 2.0, (key, dens_sim, dens_real)
    assert level_simple(sim).std() / level_simple(real).std() == pytest.approx(1.0, abs=0.3)
