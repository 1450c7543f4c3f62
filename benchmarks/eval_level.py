"""Levelling quality on simulated scans: RMS error against the known clean topography.

For every artefact type of :class:`stm_live.sim.Artefacts`, one at a time at
its realistic strength (``Artefacts.realistic()``) on top of the realistic
white noise, and for all of them together, simulated forward Z frames of
every surface are levelled by

* ``stream``: :class:`~stm_live.level.LineLeveller`, rows fed in scan order
  (:func:`~stm_live.level.level_stream`), the output after the last line;
* ``chained``: the same without terrace levels (``anchor=False``): the
  streaming leveller as it was before, each line fitted against the lines
  before it only;
* ``frame``: :func:`~stm_live.level.level_frame` with its default method;
* the baselines ``plane`` (least-squares plane) and ``median`` (Gwyddion's
  plane + *Align rows: median*), and the other frame methods;
* ``oracle``: the raw image minus, per row, the least-squares line through
  ``raw - clean``: the best that any offset + slope per line can do (a floor,
  it uses the truth).

Seed ``k`` has ``k % 3`` atomic step edges. The error of an output is ``levelled - clean`` with its mean removed per
terrace (the truth is defined "up to a constant per terrace"); the table
gives its RMS in pm, averaged (root mean square) over surfaces and seeds.

``--steps 0`` gives the flat-terrace suite (no step edge in any scan).

Usage: python benchmarks/eval_level.py [--pixels 512] [--size-nm 50] [--seeds 3] [--steps N]
       [--methods stream chained frame ...]
"""

from __future__ import annotations

import argparse
import ast
import math
import platform
import time
from collections.abc import Callable

import numpy as np

from stm_live.level import level_frame, level_stream
from stm_live.sim import SURFACES, Artefacts, simulate_scan

#: Artefact columns of the table: name -> the Artefacts fields switched on.
ARTEFACT_TYPES: dict[str, tuple[str, ...]] = {
    "noise only": (),
    "tilt": ("tilt",),
    "line offsets": ("line_offset_nm",),
    "line slopes": ("line_slope_nm",),
    "1/f noise": ("flicker_noise_nm",),
    "scars": ("scars_per_100_lines",),
    "creep": ("creep_nm",),
    "drift": ("drift_nm",),
    "tip change": ("tip_change", "tip_change_chance"),
    "double tip": ("double_tip",),
    "all (realistic)": ("*",),
}

#: Artefact types that involve line offsets (the acceptance criterion compares these with a plane fit).
LINE_OFFSET_TYPES = ("line offsets", "line slopes", "1/f noise", "tip change", "all (realistic)")


def artefacts_for(kind: str, *, scale: float = 1.0) -> Artefacts:
    """The artefacts of one table column: realistic white noise plus the named ones (times ``scale``)."""
    real = Artefacts.realistic()
    names = ARTEFACT_TYPES[kind]
    values = {"white_noise_nm": real.white_noise_nm}
    if names == ("*",):
        values = real.to_dict()
        values = {k: v * scale if k not in ("tip_change_chance", "tip_change", "double_tip") else v
                  for k, v in values.items()}
    else:
        for name in names:
            value = getattr(real, name)
            values[name] = value if name in ("tip_change_chance",) else min(value * scale, 1.0) if name in (
                "tip_change", "double_tip") else value * scale
        if "tip_change" in names:
            values["tip_change_chance"] = 1.0
    return Artefacts(**values)


def terrace_rms(levelled: np.ndarray, clean: np.ndarray, terraces: np.ndarray) -> float:
    """RMS of ``levelled - clean`` after removing its mean on every terrace (units of the inputs)."""
    err = levelled.astype(np.float64) - clean.astype(np.float64)
    labels = terraces.ravel().astype(np.int64)
    labels -= labels.min()
    sums = np.bincount(labels, weights=err.ravel())
    counts = np.bincount(labels)
    err -= (sums / np.maximum(counts, 1))[labels].reshape(err.shape)
    return float(np.sqrt(np.mean(err * err)))


def oracle(raw: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Raw minus the per-row least-squares line through ``raw - clean`` (uses the truth)."""
    diff = raw.astype(np.float64) - clean
    x = np.linspace(-1.0, 1.0, raw.shape[1])
    basis = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(basis, diff.T, rcond=None)
    return raw - (basis @ coef).T


def methods(stream_options: dict | None = None) -> dict[str, Callable[[np.ndarray, str], np.ndarray]]:
    """Name -> function(raw image, scan direction) -> levelled image."""
    opts = stream_options or {}
    out: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {
        "stream": lambda z, d: level_stream(z, scan_direction=d, **opts),  # type: ignore[arg-type]
        "chained": lambda z, d: level_stream(z, scan_direction=d, **{**opts, "anchor": False}),  # type: ignore[arg-type]
        "frame": lambda z, d: level_frame(z),
    }
    for name in ("plane", "median", "median_diff", "matching", "poly", "plane2", "flatten"):
        out[name] = lambda z, d, name=name: level_frame(z, method=name)  # type: ignore[misc]
    out["frame+scars"] = lambda z, d: level_frame(z, scars=True)
    return out


def evaluate(
    *,
    pixels: int,
    size_nm: float,
    seeds: int,
    surfaces: tuple[str, ...],
    scale: float = 1.0,
    stream_options: dict | None = None,
    steps: int | None = None,
    only: tuple[str, ...] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """RMS errors (pm) per artefact type and method, and mean run time (ms) per method (``only``: these methods)."""
    fns = methods(stream_options)
    if only is not None:
        fns = {name: fn for name, fn in fns.items() if name in only}
    results: dict[str, dict[str, float]] = {}
    times: dict[str, list[float]] = {name: [] for name in [*fns, "oracle"]}
    for kind in ARTEFACT_TYPES:
        art = artefacts_for(kind, scale=scale)
        sq: dict[str, list[float]] = {name: [] for name in [*fns, "oracle"]}
        for surface in surfaces:
            for seed in range(seeds):
                # 0, 1 and 2 step edges in turn: terraces are what row levelling gets wrong.
                n_steps = seed % 3 if steps is None else steps
                scan = simulate_scan(surface, size_nm=size_nm, pixels=pixels, seed=seed, artefacts=art, steps=n_steps)
                frame = scan.frame("Z", "forward")
                raw = np.asarray(frame.data)
                clean = scan.clean.astype(np.float64)
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    out = fn(raw, frame.scan_direction)
                    times[name].append(time.perf_counter() - t0)
                    sq[name].append(terrace_rms(out, clean, scan.terraces) ** 2)
                sq["oracle"].append(terrace_rms(oracle(raw, clean), clean, scan.terraces) ** 2)
        results[kind] = {name: math.sqrt(float(np.mean(v))) * 1e12 for name, v in sq.items()}
    return results, {name: 1e3 * float(np.mean(v)) for name, v in times.items() if v}


def markdown(results: dict[str, dict[str, float]], columns: list[str]) -> str:
    """The table: one row per artefact type, one column per method, RMS error in pm."""
    lines = ["| artefact | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for kind, row in results.items():
        best = min(row[c] for c in columns if c != "oracle")
        cells = [(f"**{row[c]:.1f}**" if row[c] == best else f"{row[c]:.1f}") for c in columns]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--size-nm", type=float, default=50.0)
    parser.add_argument("--seeds", type=int, default=3, help="scans per surface and artefact type")
    parser.add_argument("--surfaces", nargs="*", default=list(SURFACES))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every artefact strength (noise excepted)")
    parser.add_argument("--stream", default="{}", help="LineLeveller options as a Python dict literal")
    parser.add_argument("--steps", type=int, help="step edges in every scan (default: seed %% 3)")
    parser.add_argument("--methods", nargs="*", help="columns to compute (default: all); oracle always")
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.machine()} python {platform.python_version()} numpy {np.__version__}")
    print(f"# {len(args.surfaces)} surfaces x {args.seeds} seeds, {args.pixels} px, {args.size_nm} nm, "
          f"scale {args.scale}, steps {'seed % 3' if args.steps is None else args.steps}")
    results, times = evaluate(
        pixels=args.pixels,
        size_nm=args.size_nm,
        seeds=args.seeds,
        surfaces=tuple(args.surfaces),
        scale=args.scale,
        stream_options=ast.literal_eval(args.stream),
        steps=args.steps,
        only=None if args.methods is None else tuple(args.methods),
    )
    columns = ["stream", "chained", "frame", "plane", "median", "median_diff", "matching", "poly", "plane2",
               "flatten", "frame+scars", "oracle"]
    columns = [c for c in columns if c in next(iter(results.values()))]
    print(markdown(results, columns))
    print()
    print("mean time per frame (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    print()
    if not {"stream", "frame"} <= set(columns):
        return
    print("acceptance: stream / frame RMS ratio per artefact type (<= 1.10 wanted); stream < plane on line offsets")
    for kind, row in results.items():
        ratio = row["stream"] / row["frame"]
        mark = "" if ratio <= 1.10 else "  <-- over 10 %"
        beats = ""
        if kind in LINE_OFFSET_TYPES and "plane" in row:
            beats = "  stream < plane" if row["stream"] < row["plane"] else "  stream >= plane  <-- FAILS"
        chained = f"  (chained / frame {row['chained'] / row['frame']:.3f})" if "chained" in row else ""
        print(f"  {kind:18s} {ratio:6.3f}{mark}{beats}{chained}")


if __name__ == "__main__":
    main()
