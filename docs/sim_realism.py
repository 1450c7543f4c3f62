"""Real vs simulated STM images: the statistics table and side-by-side figure of docs/simulator.md.

Reads the real arrays in place from ``../shared/data/real-npy`` (never copied),
simulates their counterparts with :func:`stm_live.sim.simulate_scan` at the
same physical scale with ``Artefacts.realistic()``, levels both the same
simple way (plane, then each line's median) and measures both the same way
(:mod:`stm_live.sim.measure`). Prints a Markdown table and writes
``docs/sim_realism.png``.

Units. The Si(001):H arrays have no stated unit; they are converted to nm
with the one length they contain, the single-atomic step (0.136 nm), so
"nm" for real Si data means "calibrated by the step". The TiO2 array is
scaled to 0..1, so TiO2 heights are compared in units of each image's own
row-corrugation amplitude.

Usage: python docs/sim_realism.py [--seeds 4] [--out docs/sim_realism.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stm_live.sim import Artefacts, simulate_scan
from stm_live.sim.measure import blob_density, lattice_peak, level_simple, line_offset_stats, noise_floor

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-npy"
SI_REAL = "si001h_brockley_23_2_0.npy"
SI_PH3 = "si001h_ph3_paddington_24_2_0.npy"
TIO2_REAL = "tio2_110_m70.npy"
SI_NM, TIO2_NM, PIXELS = 100.0, 10.0, 512
STEP_NM = 0.136
# The step of the real Si image, placed by hand: pixels with
# (row - 30) - col * 482 / 470 > 0 lie on the lower-left (upper) terrace.
SI_STEP_LINE = (30.0, 482.0 / 470.0)
EXCLUDE_PX = 15


def _real_si_sides(shape: tuple[int, int]) -> np.ndarray:
    r, c = np.mgrid[: shape[0], : shape[1]]
    return (r - SI_STEP_LINE[0]) - c * SI_STEP_LINE[1]


def step_height(image: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> float:
    """Plane plus step fitted to the pixels of two terraces (boolean masks): the step, image units."""
    r, c = np.mgrid[: image.shape[0], : image.shape[1]]
    sel = upper | lower
    design = np.stack([np.ones(sel.sum()), r[sel], c[sel], upper[sel].astype(float)], axis=1)
    coef, *_ = np.linalg.lstsq(design, image[sel].astype(np.float64), rcond=None)
    return float(coef[3])


def si_stats(image_nm: np.ndarray, upper: np.ndarray, lower: np.ndarray, nm_per_px: float) -> dict[str, float]:
    lv = level_simple(image_nm)
    p_up = lattice_peak(lv, nm_per_px=nm_per_px, min_period_nm=0.5, max_period_nm=1.2, mask=upper)
    p_lo = lattice_peak(lv, nm_per_px=nm_per_px, min_period_nm=0.5, max_period_nm=1.2, mask=lower)
    lines = line_offset_stats(image_nm)
    blobs = blob_density(image_nm, nm_per_px=nm_per_px, threshold=0.03)
    turn = abs(p_up.angle_deg - p_lo.angle_deg) % 180.0
    return {
        "period_upper_nm": p_up.period_nm,
        "period_lower_nm": p_lo.period_nm,
        "turn_deg": min(turn, 180.0 - turn),
        "row_amplitude_nm": 0.5 * (p_up.amplitude + p_lo.amplitude),
        "step_nm": abs(step_height(image_nm, upper, lower)),
        "std_nm": float(lv.std()),
        "p1_nm": float(np.percentile(lv, 1)),
        "p99_nm": float(np.percentile(lv, 99)),
        "line_jump_robust_nm": lines["robust_std"],
        "line_jump_p99_nm": lines["p99"],
        "noise_floor_nm": noise_floor(image_nm),
        "bright_per_100nm2": 100 * blobs["bright_per_nm2"],
        "dark_per_100nm2": 100 * blobs["dark_per_nm2"],
    }


def tio2_stats(image: np.ndarray, nm_per_px: float) -> tuple[dict[str, float], float]:
    lv = level_simple(image)
    peak = lattice_peak(lv, nm_per_px=nm_per_px, min_period_nm=0.4, max_period_nm=1.0)
    unit = peak.amplitude
    lv = lv / unit
    blobs = blob_density(image / unit, nm_per_px=nm_per_px, threshold=1.5, smooth_nm=0.15, background_nm=1.5)
    return {
        "period_nm": peak.period_nm,
        "std_amp": float(lv.std()),
        "p1_amp": float(np.percentile(lv, 1)),
        "p99_amp": float(np.percentile(lv, 99)),
        "line_jump_robust_amp": line_offset_stats(image / unit)["robust_std"],
        "noise_floor_amp": noise_floor(image / unit),
        "bright_per_nm2": blobs["bright_per_nm2"],
    }, unit


def simulated_si(seed: int):
    scan = simulate_scan("si001-ash3", size_nm=SI_NM, pixels=PIXELS, seed=seed, steps=1, row_angle_deg=42.0,
                         artefacts=Artefacts.realistic())
    z = scan.frame("Z").data.astype(np.float64) * 1e9
    from scipy import ndimage

    far = ~ndimage.binary_dilation(scan.step_mask, iterations=EXCLUDE_PX)
    upper = far & (scan.terraces == 0)
    lower = far & (scan.terraces == 1)
    return scan, z, upper, lower


def simulated_tio2(seed: int):
    scan = simulate_scan("tio2-110", size_nm=TIO2_NM, pixels=PIXELS, seed=seed, steps=0, row_angle_deg=83.0,
                         artefacts=Artefacts.realistic())
    return scan, scan.frame("Z").data.astype(np.float64) * 1e9


def _summary(rows: list[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    """Median, minimum and maximum over the simulated frames."""
    return {k: (float(np.median([r[k] for r in rows])), min(r[k] for r in rows), max(r[k] for r in rows))
            for k in rows[0]}


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="simulated frames per comparison")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sim_realism.png"))
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"real data not found at {REAL}")
        return 2

    px_si = SI_NM / PIXELS
    raw = np.load(REAL / SI_REAL, allow_pickle=False).astype(np.float64)
    side = _real_si_sides(raw.shape)
    up_r, lo_r = side > EXCLUDE_PX, side < -EXCLUDE_PX
    calibration = STEP_NM / abs(step_height(raw, up_r, lo_r))  # nm per real unit
    real_si = raw * calibration
    real_stats = si_stats(real_si, up_r, lo_r, px_si)
    ph3 = np.load(REAL / SI_PH3, allow_pickle=False).astype(np.float64) * calibration
    ph3_blobs = blob_density(ph3[100:, 150:], nm_per_px=px_si, threshold=0.03)  # the H-terminated part
    sims = [simulated_si(s) for s in range(args.seeds)]
    sim_rows = [si_stats(z, up, lo, px_si) for _, z, up, lo in sims]
    sim_si = _summary(sim_rows)

    px_t = TIO2_NM / PIXELS
    real_t = np.load(REAL / TIO2_REAL, allow_pickle=False).astype(np.float64)
    real_t_stats, real_t_unit = tio2_stats(real_t, px_t)
    sims_t = [simulated_tio2(s) for s in range(args.seeds)]
    t_rows = [tio2_stats(z, px_t)[0] for _, z in sims_t]
    sim_t = _summary(t_rows)

    print(f"real Si units -> nm: x {calibration:.4f} (step-calibrated)\n")
    print(f"| quantity | real | simulated: median (min - max) of {args.seeds} frames |")
    print("| --- | --- | --- |")
    for k, v in real_stats.items():
        m, lo, hi = sim_si[k]
        print(f"| Si {k} | {_fmt(v)} | {_fmt(m)} ({_fmt(lo)} - {_fmt(hi)}) |")
    print(f"| Si bright_per_100nm2, PH3-dosed image (H-terminated part) | "
          f"{_fmt(100 * ph3_blobs['bright_per_nm2'])} | (AsH3 surface above) |")
    print(f"| Si dark_per_100nm2, PH3-dosed image (H-terminated part) | "
          f"{_fmt(100 * ph3_blobs['dark_per_nm2'])} | |")
    for k, v in real_t_stats.items():
        m, lo, hi = sim_t[k]
        print(f"| TiO2 {k} | {_fmt(v)} | {_fmt(m)} ({_fmt(lo)} - {_fmt(hi)}) |")

    _figure(args.out, real_si, sims[0][1], real_t / real_t_unit, sims_t[0][1] / tio2_stats(sims_t[0][1], px_t)[1],
            px_si, px_t)
    print(f"\nwrote {args.out}")
    return 0


def _radial_psd(image: np.ndarray, nm_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    a = level_simple(image)
    a = a * np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    p = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(a.shape[0], d=nm_per_px))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(a.shape[1], d=nm_per_px))[None, :]
    f = np.hypot(fx, fy)
    bins = np.linspace(0, f.max(), 120)
    idx = np.digitize(f.ravel(), bins)
    psd = np.bincount(idx, weights=p.ravel(), minlength=bins.size + 1)[1: bins.size] / np.maximum(
        np.bincount(idx, minlength=bins.size + 1)[1: bins.size], 1)
    return 0.5 * (bins[1:] + bins[:-1]), psd


def _figure(out: Path, real_si: np.ndarray, sim_si: np.ndarray, real_t: np.ndarray, sim_t: np.ndarray,
            px_si: float, px_t: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs, ss = level_simple(real_si), level_simple(sim_si)
    rt, st = level_simple(real_t), level_simple(sim_t)
    lo, hi = np.percentile(rs, [1, 99.5])
    tlo, thi = np.percentile(rt, [1, 99.5])
    fig, ax = plt.subplots(3, 3, figsize=(18, 18))
    ext_si = (0, SI_NM, SI_NM, 0)
    crop = round(25 / px_si)
    ext_c = (0, 25, 25, 0)
    panels = [
        (ax[0, 0], rs, ext_si, (lo, hi), "real Si(001):H, 100 nm (step-calibrated nm)"),
        (ax[0, 1], ss, ext_si, (lo, hi), "simulated si001-ash3, 100 nm, realistic artefacts"),
        (ax[1, 0], rs[-crop:, :crop], ext_c, (lo, hi), "real, 25 nm crop"),
        (ax[1, 1], ss[-crop:, :crop], ext_c, (lo, hi), "simulated, 25 nm crop"),
        (ax[2, 0], rt, (0, TIO2_NM, TIO2_NM, 0), (tlo, thi), "real TiO2(110), 10 nm (units: row amplitude)"),
        (ax[2, 1], st, (0, TIO2_NM, TIO2_NM, 0), (tlo, thi), "simulated tio2-110, 10 nm (units: row amplitude)"),
    ]
    for a, img, ext, (vmin, vmax), title in panels:
        im = a.imshow(img, cmap="afmhot", vmin=vmin, vmax=vmax, extent=ext, interpolation="nearest")
        a.set_title(title)
        a.set_xlabel("nm")
        fig.colorbar(im, ax=a, fraction=0.046, pad=0.02)
    bins = np.linspace(lo - 0.05, hi + 0.1, 120)
    ax[0, 2].hist(rs.ravel(), bins=bins, density=True, histtype="step", label="real", lw=2)
    ax[0, 2].hist(ss.ravel(), bins=bins, density=True, histtype="step", label="simulated", lw=2)
    ax[0, 2].set_yscale("log")
    ax[0, 2].set_xlabel("height after plane + line-median levelling, nm")
    ax[0, 2].set_title("Si height histogram")
    ax[0, 2].legend()
    for img, label in ((real_si, "real"), (sim_si, "simulated")):
        f, p = _radial_psd(img, px_si)
        ax[1, 2].loglog(f[1:], p[1:], label=label)
    ax[1, 2].axvline(1 / 0.768, color="k", ls=":", lw=1)
    ax[1, 2].set_xlabel("spatial frequency, 1/nm (dotted: 1 / 0.768 nm)")
    ax[1, 2].set_title("Si radially averaged power spectrum")
    ax[1, 2].legend()
    tb = np.linspace(tlo - 1, thi + 2, 120)
    ax[2, 2].hist(rt.ravel(), bins=tb, density=True, histtype="step", label="real", lw=2)
    ax[2, 2].hist(st.ravel(), bins=tb, density=True, histtype="step", label="simulated", lw=2)
    ax[2, 2].set_xlabel("height, units of row amplitude")
    ax[2, 2].set_title("TiO2 height histogram")
    ax[2, 2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=60)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
