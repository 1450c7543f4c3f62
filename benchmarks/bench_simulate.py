"""Time to simulate one scan: 512 x 512, all four channels (Z and Current, both directions), artefacts on.

For each surface and artefact setting, prints the median (and min / max) of
``--repeat`` calls of :func:`stm_live.sim.simulate_scan` with different seeds,
after one warm-up call. ``worst`` is the realistic preset with a tip change
in every frame (the most renders per frame: a partial re-image after the
change, a second apex and a hysteresis-shifted backward image). The target is
a median under 0.2 s on the 2-core development machine; run it when the
machine is quiet (check ``uptime``) and report the load with the numbers.

Usage: python benchmarks/bench_simulate.py [--repeat 15] [--pixels 512] [--size-nm 50] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from stm_live.sim import SURFACES, Artefacts, simulate_scan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--size-nm", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=2, help="step edges per frame (more terraces, more work)")
    args = parser.parse_args()
    worst = Artefacts(**{**Artefacts.realistic().to_dict(), "tip_change_chance": 1.0})
    settings = {"none": Artefacts.none(), "realistic": Artefacts.realistic(), "worst": worst}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.pixels} x {args.pixels} px, {args.size_nm:g} nm, "
          f"{args.steps} steps, median of {args.repeat}")
    print(f"{'surface':<12} {'artefacts':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'features':>9}")
    for surface in SURFACES:
        for name, artefacts in settings.items():
            kw = {"size_nm": args.size_nm, "pixels": args.pixels, "steps": args.steps, "artefacts": artefacts}
            simulate_scan(surface, seed=10_000, **kw)  # warm-up
            times = []
            features = 0
            for seed in range(args.repeat):
                t0 = time.perf_counter()
                scan = simulate_scan(surface, seed=seed, **kw)
                times.append(time.perf_counter() - t0)
                features += len(scan.instances)
            print(f"{surface:<12} {name:<10} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f} "
                  f"{features / args.repeat:9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
