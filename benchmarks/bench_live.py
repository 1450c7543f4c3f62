"""Per-line cost of live segmentation, in process: what the daemon spends on each scan line.

A simulated 512 x 512 Si(001)+AsH3 scan (50 nm) goes through the daemon's live
path line by line: :class:`~stm_live.level.LineLeveller` then
:class:`~stm_live.model.live.LiveSegmenter` (``add_row`` and ``segment``
after every line, the daemon's every-line cadence). Reported per run: the
median and p99 of the time per line, the per-stage medians (strip inference,
instance search, class map), and the last quarter of the scan separately,
where a search over all acquired rows would cost the most. Medians over
``--runs`` runs.

Usage: python benchmarks/bench_live.py [--model models/si001-ash3.onnx] [--runs 3] [--pixels 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from stm_live.frame import Frame
from stm_live.level import LineLeveller
from stm_live.model.live import LiveSegmenter
from stm_live.model.runtime import SegmentationModel, bundled_model_path
from stm_live.sim import simulate_scan


def one_run(model: SegmentationModel, frame: Frame) -> dict[str, float]:
    leveller = LineLeveller(frame.cols)
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px)
    per_line, stages = [], {"infer": [], "instances": [], "map": []}
    for row in range(frame.rows):
        t0 = time.perf_counter()
        live.add_row(row, leveller.push(frame.data[row]))
        seg = live.segment()
        per_line.append((time.perf_counter() - t0) * 1e3)
        for k in stages:
            if k in seg.timings_ms:
                stages[k].append(seg.timings_ms[k])
    tail = per_line[3 * len(per_line) // 4 :]
    return {
        "line_median": statistics.median(per_line),
        "line_p99": float(np.percentile(per_line, 99)),
        "last_quarter_median": statistics.median(tail),
        **{f"{k}_median": statistics.median(v) for k, v in stages.items() if v},
        "last_quarter_instances": statistics.median(stages["instances"][3 * len(stages["instances"]) // 4 :]),
        "detections": float(len(seg.detections)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(bundled_model_path()))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pixels", type=int, default=512)
    args = parser.parse_args()
    model = SegmentationModel(args.model, provider="cpu")
    frame = simulate_scan("si001-ash3", size_nm=50.0 * args.pixels / 512, pixels=args.pixels, seed=4242).frame()
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {load:.2f}; model {model.name} "
          f"[{model.id}]; frame {frame.rows} x {frame.cols} px, every-line cadence")
    results = [one_run(model, frame) for _ in range(args.runs)]
    for r in results:
        print("  run: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"per line (median of {args.runs} runs): median {med['line_median']:.2f} ms, p99 {med['line_p99']:.2f} ms, "
          f"last quarter {med['last_quarter_median']:.2f} ms")
    print("  stages (median ms): " + ", ".join(f"{k[:-7]} {v:.2f}" for k, v in med.items() if k.endswith("_median")
                                              and not k.startswith(("line", "last"))))
    print(f"  instance search in the last quarter: {med['last_quarter_instances']:.2f} ms; "
          f"{med['detections']:.0f} detections; load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
