"""Per-line cost of the line-by-line tip-change detector (what the daemon pays for every line).

Streams levelled lines of one simulated Si(001)+AsH3 frame through
:class:`stm_live.quality.TipChangeDetector` several times and reports the
median time per line of ``push`` (the line statistics plus the test) and of
``push_features`` alone (the test on statistics already computed).

Usage::

    python benchmarks/time_tipchange_line.py --pixels 256 512 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from stm_live.level import LineLeveller
from stm_live.quality import TipChangeDetector, line_features
from stm_live.sim import Artefacts, simulate_scan


def time_lines(pixels: int, repeats: int, seed: int = 1000) -> dict[str, float]:
    scan = simulate_scan("si001-ash3", size_nm=50.0, pixels=pixels, seed=seed, artefacts=Artefacts.realistic())
    z = scan.frame("Z", "forward").data
    lev = LineLeveller(pixels)
    lines = [lev.push(row) for row in z]
    prev = [None, *lines[:-1]]
    feats = [line_features(v, p) for v, p in zip(lines, prev, strict=True)]
    push, test = [], []
    for _ in range(repeats):
        det = TipChangeDetector()
        t0 = time.perf_counter()
        for v in lines:
            det.push(v)
        push.append((time.perf_counter() - t0) / len(lines))
        det = TipChangeDetector()
        t0 = time.perf_counter()
        for f in feats:
            det.push_features(f)
        test.append((time.perf_counter() - t0) / len(lines))
    return {"pixels": pixels, "repeats": repeats, "push_us_median": 1e6 * float(np.median(push)),
            "push_features_us_median": 1e6 * float(np.median(test))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pixels", type=int, nargs="+", default=[256, 512])
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    for n in a.pixels:
        print(json.dumps(time_lines(n, a.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
