"""Speed of levelling: one scan line through the LineLeveller, whole frames, model-input preparation.

Targets (issue 4): a 512-px line in under 50 us (median), a 512 x 512 frame in
under 20 ms. Lines are timed with terrace levels (the default) and without
(``anchor=False``, the chained fit alone). Lines are timed one ``push`` at a time over whole simulated
frames (so that the periodic restoring step is in the distribution), frames
one call at a time; each figure is the median of many runs, with the 90th
and 99th percentiles beside it. Machine and load (``uptime``) are printed
first: the numbers mean little on a busy machine.

Usage: python benchmarks/bench_level.py [--size 512] [--frames 20] [--repeat 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Callable

import numpy as np

from stm_live.level import LineLeveller, level_frame, normalise_robust, resample_to_pitch
from stm_live.level.whole_frame import FRAME_METHODS
from stm_live.sim import Artefacts, simulate_scan


def _stats_us(samples: list[float]) -> str:
    a = np.array(samples) * 1e6
    return f"median {np.median(a):8.1f} us   p90 {np.percentile(a, 90):8.1f}   p99 {np.percentile(a, 99):8.1f}"


def _stats_ms(samples: list[float]) -> str:
    a = np.array(samples) * 1e3
    return f"median {np.median(a):7.2f} ms   p90 {np.percentile(a, 90):7.2f}   min {a.min():7.2f}"


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="pixels per side")
    parser.add_argument("--frames", type=int, default=20, help="frames pushed line by line")
    parser.add_argument("--repeat", type=int, default=30, help="calls per whole-frame measurement")
    args = parser.parse_args()
    n = args.size
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"# uptime: {uptime}")
    scan = simulate_scan("si001-ash3", size_nm=50.0 * n / 512, pixels=n, seed=1, artefacts=Artefacts.realistic())
    frame = scan.frame("Z", "forward")
    raw = np.asarray(frame.data)

    # With terrace levels (the default) and without (the chained fit alone,
    # as before issue 18), frames interleaved so that both see the same load.
    lines: dict[bool, list[float]] = {True: [], False: []}
    levellers = {anchor: LineLeveller(n, anchor=anchor) for anchor in lines}
    for _ in range(args.frames):
        for anchor, leveller in levellers.items():
            leveller.reset()
            times = lines[anchor]
            for row in raw:
                t0 = time.perf_counter()
                leveller.push(row)
                times.append(time.perf_counter() - t0)
    for anchor, label in ((True, ""), (False, " anchor=False")):
        print(f"LineLeveller.push{label}, {n} px line ({len(lines[anchor])} lines):  {_stats_us(lines[anchor])}")

    for method in FRAME_METHODS:
        t = _time(lambda m=method: level_frame(raw, method=m), args.repeat)
        print(f"level_frame {method:12s} {n} x {n}:   {_stats_ms(t)}")
    t = _time(lambda: level_frame(raw, scars=True), args.repeat)
    print(f"level_frame step-aware+scars {n} x {n}: {_stats_ms(t)}")
    levelled = level_frame(raw)
    for target in (frame.nm_per_px[0], 0.08, 0.125, 0.2):
        shape = resample_to_pitch(levelled, nm_per_px=frame.nm_per_px, target_nm_per_px=target).shape
        t = _time(lambda tg=target: resample_to_pitch(levelled, nm_per_px=frame.nm_per_px, target_nm_per_px=tg),
                  args.repeat)
        print(f"resample_to_pitch {frame.nm_per_px[0]:.4f} -> {target:.4f} nm/px {shape}: {_stats_ms(t)}")
    print(f"normalise_robust {n} x {n}:            {_stats_ms(_time(lambda: normalise_robust(levelled), args.repeat))}")
    print(f"# uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
