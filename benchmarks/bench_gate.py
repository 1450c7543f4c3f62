"""What the contrast gate of adapted models costs in `segment` (issue 17).

``si001-ash3`` is adapted from 3 clicks per class on one simulated Si(001)+AsH3
frame (50 nm, 512 x 512, seed 60000), once with the default contrast gate and
once without (``contrast_fraction=0``); both models segment the next frame
(seed 60001) ``--repeat`` times, interleaved, and the medians of the total and of
the ``instances`` stage (where the gate runs) are printed with the detections
each reports.

Usage: python benchmarks/bench_gate.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np

from stm_live.model.adapt import AdaptSettings, LabelledFrame, adapt_model
from stm_live.model.format import save_model
from stm_live.model.prototypes import Point
from stm_live.model.runtime import SegmentationModel, bundled_model_path
from stm_live.sim import simulate_scan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    base = SegmentationModel(bundled_model_path("si001-ash3"), provider="cpu")
    support = simulate_scan("si001-ash3", size_nm=50.0, pixels=512, seed=60_000)
    frame = simulate_scan("si001-ash3", size_nm=50.0, pixels=512, seed=60_001).frame("Z")
    rng = np.random.default_rng(0)
    points = []
    for c in base.classes:
        inst = [i for i in support.instances if i.class_name == c]
        points += [Point(inst[int(j)].x_nm, inst[int(j)].y_nm, c) for j in rng.choice(len(inst), 3, replace=False)]
    example = LabelledFrame(support.frame("Z"), tuple(points))
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name, fraction in (("gate", AdaptSettings().contrast_fraction), ("no gate", 0.0)):
            proto, info, _ = adapt_model(base, [example], list(base.classes), AdaptSettings(contrast_fraction=fraction))
            path = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            save_model(proto, info, path)
            models[name] = SegmentationModel(path, provider="cpu")
        for m in models.values():  # warm-up
            m.segment(frame)
        times: dict[str, dict[str, list[float]]] = {n: {"total": [], "instances": []} for n in models}
        found = {}
        for _ in range(args.repeat):
            for name, m in models.items():
                seg = m.segment(frame)
                times[name]["total"].append(seg.timings_ms["total"])
                times[name]["instances"].append(seg.timings_ms["instances"])
                found[name] = len(seg.detections)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"median of {args.repeat} runs, 512 x 512 simulated frame")
    for name, t in times.items():
        print(f"{name:8s} total {statistics.median(t['total']):6.1f} ms, instances "
              f"{statistics.median(t['instances']):5.1f} ms, {found[name]} detections")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
