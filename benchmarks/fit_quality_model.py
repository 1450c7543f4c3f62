"""Fit the learned frame-quality combination on simulated frames only; write its coefficients.

The real tip-state images (``../shared/data/tip-state``, GPL-3.0) are for
evaluation only, so nothing shipped may be fitted on them. This script
simulates its own labelled frames with :func:`stm_live.sim.simulate_scan`
(Si(001):H, the sizes and pixel counts of the real images), renders them the
way the real images are rendered (each line flattened, scaled to 8-bit grey),
measures :func:`stm_live.quality.frame.frame_evidence` on each and fits a
multinomial logistic regression, plain gradient descent from zeros. The
thresholds are set on simulated good frames too: 10 false alarms per 100.

* ``good``: a sharp tip (0.08-0.22 nm), the realistic artefacts without a tip
  change, noise 0.3-2 x, 0.5-5 scars per 100 lines, a mild double tip at most;
* ``tip_change``: the same, broken into bands at 1-3 random lines, each band
  under another apex state (moved sideways along or across the lines, blunter,
  more or less contrast, a ghost apex, more noise; a third of the later bands
  back to the first state), as the real Tip Change images look;
* ``bad``, as the real Bad/Blurry class: a blunt tip (0.35-1.2 nm), a strong
  double tip, heavy noise and scars, an unstable tip (large jumps between
  lines), a band where the feedback lost the surface, or a blunt noisy tip.

Frames are 6-40 nm wide, 300 (80 %) or 512 px like the real images, 35 % with
the realism of the real Si(001):H frames, and are rendered the way those are:
blurred by 0.5-1.5 px (the source resampled its images; the blur stays within
each band of a tip change, which is sharp between two lines as in the real
images), each line's straight-line fit removed, scaled to 8-bit grey.
The simulator settings and the features were chosen by looking at how
the fit did on the real ``dev`` images (design); no number is fitted on them.

Deterministic (every frame from its own seed); ``--check`` refits and exits 1
if the result differs from the shipped ``stm_live/quality/learned.py``.
Frames are cached as ``.npy`` under ``--cache`` (outside the repository).

Usage::

    python benchmarks/fit_quality_model.py            # writes stm_live/quality/learned.py
    python benchmarks/fit_quality_model.py --check    # a fresh fit equals the shipped numbers?
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from stm_live.quality.frame import FEATURE_NAMES, frame_evidence, model_features
from stm_live.sim import Artefacts, Realism, simulate_scan

REPO = Path(__file__).resolve().parents[1]
LABELS = ("good", "bad", "tip_change")
#: Frames per label and the first seed (label k uses seeds SEED0 + 100000 k + i).
FRAMES = 300
SEED0 = 500000
#: Share of the frames with the realism of the real Si(001):H frames (contamination, reacted areas, ...).
REALISM_SHARE = 0.35
#: Share of the simulated tip changes that are bands of other apex states (the rest: the simulator's own).
TIP_CHANGE_BANDS = 1.0
BAD_KINDS = ("blunt", "double", "noisy", "unstable", "lost", "blunt+noisy")


def _flatten_to_grey(z: np.ndarray, rng: np.random.Generator, cuts: tuple[int, ...] = ()) -> np.ndarray:
    """The real images' rendering.

    Resampled (a blur of 0.5-1.5 px), every line's straight-line fit removed, scaled to 0..255, 8 bits.
    The blur stays within the bands between ``cuts`` (lines where the apex changed): the lines are
    scanned one after another, so a tip change is sharp between two lines, as in the real images.
    """
    sigma = float(rng.uniform(0.5, 1.5))
    z = np.asarray(z, dtype=np.float64)
    edges = [0, *sorted(cuts), z.shape[0]]
    z = np.concatenate([ndimage.gaussian_filter(z[r0:r1], sigma) if r1 - r0 > 1 else z[r0:r1]
                        for r0, r1 in itertools.pairwise(edges)])
    cols = z.shape[1]
    x = np.arange(cols) - (cols - 1) / 2.0
    a = z - z.mean(axis=1, keepdims=True)
    a = a - ((a @ x) / (x @ x))[:, None] * x[None, :]
    clip = rng.uniform(0.0, 0.5)
    lo, hi = np.percentile(a, [clip, 100.0 - clip])
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.round((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _apex_state(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``z`` as another apex would image it: moved sideways (along or across the lines), blunter,
    with more or less contrast, a ghost of a second apex, more noise; at least one of them clearly."""
    out = z
    while out is z:
        if rng.random() < 0.6:
            out = ndimage.shift(out, (0, float(rng.choice([-1, 1]) * rng.uniform(1.0, 15.0))), order=1,
                                mode="nearest")
        if rng.random() < 0.3:
            out = np.roll(out, int(rng.choice([-1, 1]) * rng.integers(2, 20)), axis=0)
        if rng.random() < 0.5:
            out = ndimage.gaussian_filter(out, float(rng.uniform(0.7, 3.0)))
        if rng.random() < 0.5:
            out = out * float(math.exp(rng.choice([-1, 1]) * rng.uniform(0.25, 0.8)))
        if rng.random() < 0.2:
            out = out + float(rng.uniform(0.3, 0.8)) * ndimage.shift(out, (float(rng.uniform(-6, 6)),
                                                                             float(rng.uniform(-6, 6))), order=1,
                                                                      mode="nearest")
    if rng.random() < 0.3:
        out = out + rng.normal(0.0, float(rng.uniform(0.05, 0.3)) * float(np.std(z)), z.shape)
    return out


def _tip_bands(z: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    """1-3 tip changes at random lines; each band after one is under a new apex state (or, a third of
    the time after the first, back to the first one)."""
    rows = z.shape[0]
    n = int(rng.integers(1, 4))
    cuts = np.sort(rng.choice(np.arange(rows // 8, rows - rows // 8), size=n, replace=False))
    out = z.copy()
    first = z
    for i, r0 in enumerate(cuts):
        r1 = int(cuts[i + 1]) if i + 1 < n else rows
        state = first if i > 0 and rng.random() < 1 / 3 else _apex_state(z, rng)
        out[r0:r1] = state[r0:r1]
    return out, tuple(int(c) for c in cuts)


def _geometry(rng: np.random.Generator) -> dict[str, Any]:
    return {"pixels": 300 if rng.random() < 0.8 else 512,
            "size_nm": float(math.exp(rng.uniform(math.log(6.0), math.log(40.0)))),
            "steps": 0 if rng.random() < 0.6 else None,
            "density_scale": float(rng.uniform(0.2, 1.5)),
            "bias_v": -2.0 if rng.random() < 0.75 else 1.5}


def _base_artefacts(rng: np.random.Generator) -> Artefacts:
    noise = float(rng.uniform(0.3, 2.0))
    real = Artefacts.realistic()
    return replace(real, white_noise_nm=real.white_noise_nm * noise, flicker_noise_nm=real.flicker_noise_nm * noise,
                   scars_per_100_lines=float(rng.uniform(0.5, 5.0)), double_tip=float(rng.uniform(0.0, 0.25)),
                   tip_change_chance=0.0)


def simulated_frame(label: str, seed: int) -> tuple[np.ndarray, str]:
    """One simulated frame of ``label`` as 8-bit grey, and what was done to it."""
    rng = np.random.default_rng([seed, LABELS.index(label)])
    geo = _geometry(rng)
    art = _base_artefacts(rng)
    tip = float(rng.uniform(0.08, 0.22))
    realism = Realism.si001h() if rng.random() < REALISM_SHARE else Realism.none()
    kind = "good"
    post: list[str] = []
    if label == "tip_change":
        if rng.random() < TIP_CHANGE_BANDS:
            # As most real ones look: the image breaks into bands, each under another apex state.
            kind = "bands"
            post.append("bands")
        else:
            art = replace(art, tip_change=float(rng.uniform(0.3, 1.0)), tip_change_chance=1.0)
            kind = "tip_change"
            extra = rng.random()
            if extra < 0.3:
                post.append("second_tip")
            elif extra < 0.5:
                post.append("shift")
    elif label == "bad":
        kind = BAD_KINDS[int(rng.integers(len(BAD_KINDS)))]
        if "blunt" in kind:
            tip = float(rng.uniform(0.35, 1.2))
        if kind == "double":
            art = replace(art, double_tip=float(rng.uniform(0.6, 1.0)))
            tip = float(rng.uniform(0.12, 0.4))
        if "noisy" in kind:
            f = float(rng.uniform(4.0, 20.0))
            art = replace(art, white_noise_nm=0.004 * f, flicker_noise_nm=0.004 * f,
                          scars_per_100_lines=float(rng.uniform(5.0, 30.0)))
        if kind == "unstable":
            art = replace(art, line_offset_nm=float(rng.uniform(0.1, 0.5)),
                          scars_per_100_lines=float(rng.uniform(10.0, 50.0)))
        if kind == "lost":
            post.append("lost")
    scan = simulate_scan("si001-ash3", size_nm=geo["size_nm"], pixels=geo["pixels"], seed=seed, artefacts=art,
                         bias_v=geo["bias_v"], density_scale=geo["density_scale"], tip_sigma_nm=tip, realism=realism,
                         steps=geo["steps"])
    z = scan.frame("Z").data.astype(np.float64) * 1e9  # nm
    rows = z.shape[0]
    cuts: list[int] = []
    if "second_tip" in post:
        # The same sample under another tip from a line on (blunter or sharper, another height).
        tip2 = tip * float(rng.choice([0.6, 2.0, 3.0]))
        other = simulate_scan("si001-ash3", size_nm=geo["size_nm"], pixels=geo["pixels"], seed=seed,
                              artefacts=replace(art, tip_change_chance=0.0), bias_v=geo["bias_v"],
                              density_scale=geo["density_scale"], tip_sigma_nm=tip2, realism=realism,
                              steps=geo["steps"])
        r0 = int(rng.integers(rows // 6, rows - rows // 6))
        z[r0:] = other.frame("Z").data[r0:] * 1e9 + float(rng.normal(0.0, 0.08))
        cuts.append(r0)
    if "shift" in post:
        r0 = int(rng.integers(rows // 6, rows - rows // 6))
        z[r0:] = np.roll(z[r0:], int(rng.integers(2, 12)) * (1 if rng.random() < 0.5 else -1), axis=1)
        cuts.append(r0)
    if "bands" in post:
        z, new = _tip_bands(z, rng)
        cuts.extend(new)
    if "lost" in post:
        # The feedback lost the surface for a band of lines: flat (saturated) with noise, or wild.
        r0 = int(rng.integers(0, rows // 2))
        r1 = int(min(rows, r0 + rng.integers(rows // 5, rows // 2 + 1)))
        z[r0:r1] = float(np.percentile(z, 99.9 if rng.random() < 0.5 else 0.1))
        spikes = rng.random((r1 - r0, z.shape[1])) < rng.uniform(0.0, 0.02)
        z[r0:r1][spikes] += rng.normal(0.0, 0.3, int(spikes.sum()))
    return _flatten_to_grey(z, rng, tuple(cuts)), kind


def _cached_frame(label: str, seed: int, cache: Path | None) -> tuple[np.ndarray, str]:
    if cache is None:
        return simulated_frame(label, seed)
    path = cache / f"{label}_{seed}.npy"
    kind_path = path.with_suffix(".kind")
    if path.is_file() and kind_path.is_file():
        return np.load(path, allow_pickle=False), kind_path.read_text()
    grey, kind = simulated_frame(label, seed)
    np.save(path, grey, allow_pickle=False)
    kind_path.write_text(kind)
    return grey, kind


def simulated_features(frames: int = FRAMES, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Evidence vectors (:data:`FEATURE_NAMES`) and labels of the simulated training frames."""
    xs, ys, kinds = [], [], []
    for k, label in enumerate(LABELS):
        for i in range(frames):
            grey, kind = _cached_frame(label, SEED0 + 100000 * k + i, cache)
            xs.append(model_features(frame_evidence(grey.astype(np.float32))))
            ys.append(k)
            kinds.append(kind)
    return np.array(xs), np.array(ys), kinds


def _fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 4000, rate: float = 0.2) -> tuple[Any, ...]:
    mu, sd = x.mean(0), x.std(0) + 1e-9
    xs = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.zeros((xs.shape[1], 3))
    onehot = np.eye(3)[y]
    for _ in range(steps):
        p = np.exp(xs @ w)
        p /= p.sum(1, keepdims=True)
        w -= rate * (xs.T @ (p - onehot) / len(xs) + l2 * w)
    return mu, sd, w


def proba(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Class probabilities of evidence vectors under a fitted model."""
    p = np.exp(np.c_[(x - np.array(model["mean"])) / np.array(model["scale"]), np.ones(len(x))]
               @ np.array(model["weights"]))
    return p / p.sum(1, keepdims=True)


def fit_model(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The learned combination as :mod:`stm_live.quality.learned` stores it."""
    mu, sd, w = _fit(x, y)
    model = {"features": list(FEATURE_NAMES), "classes": list(LABELS), "mean": mu.tolist(), "scale": sd.tolist(),
             "weights": w.tolist()}
    p = proba(model, x)
    good = y == 0
    model["threshold"] = {"bad": float(np.percentile(p[good, 1], 90)),
                          "tip_change": float(np.percentile(p[good, 2], 90))}
    return model


def settings_digest() -> str:
    """A short hash of the simulation's source (names the cache, so that changed settings re-simulate)."""
    import inspect

    source = "".join(inspect.getsource(f) for f in (_flatten_to_grey, _apex_state, _tip_bands, _geometry,
                                                    _base_artefacts, simulated_frame))
    return hashlib.sha256(f"{source}{SEED0}{BAD_KINDS}{TIP_CHANGE_BANDS}{REALISM_SHARE}".encode()).hexdigest()[:12]


def module_text(model: dict[str, Any], frames: int) -> str:
    """The source of ``stm_live/quality/learned.py``."""
    return (
        '"""The learned frame-quality combination (written by ``benchmarks/fit_quality_model.py``; do not edit).\n\n'
        "Multinomial logistic regression over :data:`stm_live.quality.frame.FEATURE_NAMES`, fitted on\n"
        f"**simulated frames only**: {frames} per verdict from :func:`stm_live.sim.simulate_scan`\n"
        "(Si(001):H, 6-40 nm, 300 or 512 px, bias -2 or +1.5 V, 0-2 steps, 35 % with the real frames'\n"
        "realism; rendered as the real images are: blurred 0.5-1.5 px within each band, each line\n"
        "flattened, scaled to 8-bit grey; seeds\n"
        f"{SEED0} + 100000 k + i). good: a sharp tip (0.08-0.22 nm), the realistic artefacts with noise\n"
        "0.3-2 x, 0.5-5 scars per 100 lines, a double tip up to 0.25, no tip change; tip_change: the same\n"
        "broken into bands at 1-3 lines, each under another apex state (moved sideways, blunter, another\n"
        "contrast, a ghost apex, more noise); bad: a blunt tip (0.35-1.2 nm), a strong double tip (0.6-1),\n"
        "heavy noise (4-20 x) and\n"
        "scars, an unstable tip (line jumps 0.1-0.5 nm), the feedback lost for a band of lines, or a\n"
        "blunt and noisy tip.\n"
        "Thresholds: 10 false alarms per 100 simulated good frames for each verdict. No number here\n"
        "was fitted on the real tip-state images (GPL-3.0, evaluation only: ``benchmarks/eval_quality.py``).\n"
        '"""\n\nfrom __future__ import annotations\n\nfrom typing import Any\n\n'
        f"MODEL: dict[str, Any] = {json.dumps(model, indent=4)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=FRAMES, help="simulated frames per verdict")
    ap.add_argument("--cache", metavar="DIR", help="keep the simulated frames here (outside the repository)")
    ap.add_argument("--check", action="store_true", help="compare a fresh fit with the shipped coefficients")
    a = ap.parse_args(argv)
    cache = None
    if a.cache:
        cache = Path(a.cache) / settings_digest()
        cache.mkdir(parents=True, exist_ok=True)
    x, y, _ = simulated_features(a.frames, cache)
    model = fit_model(x, y)
    target = REPO / "stm_live" / "quality" / "learned.py"
    if a.check:
        from stm_live.quality.learned import MODEL

        same = all(np.allclose(np.array(model[k]), np.array(MODEL[k]), rtol=1e-9, atol=1e-12)
                   for k in ("mean", "scale", "weights")) and all(
            abs(model["threshold"][c] - MODEL["threshold"][c]) < 1e-9 for c in ("bad", "tip_change"))
        print("a fresh fit gives the shipped coefficients" if same else "a fresh fit differs from the shipped ones")
        return 0 if same else 1
    target.write_text(module_text(model, a.frames))
    print(f"wrote {target.relative_to(REPO)} from {len(y)} simulated frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
