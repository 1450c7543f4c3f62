"""Frames per second of `stm-live batch` (in process, 1 and 2 local Dask workers) vs a plain loop over segment.

The same files in the same run, each configuration repeated and the median
reported:

* ``segment loop``: what ``stm-live segment FILE...`` does per file (read,
  segment with one in-process model, build the JSON record), nothing written;
* ``batch, in process``: ``stm-live batch --workers 0``: the loop plus the
  content hash, the completeness check and every result written (record,
  class map, overlay PNG, ``.gwy`` file);
* ``batch, N Dask workers``: ``stm-live batch --workers N`` on a local
  cluster, each worker one process with ``cores // N`` intra-op threads.

Frames/s is over the segmentation phase (files segmented / seconds, the
cluster already up, the model loaded); the start-up (the cluster's processes,
each worker's session) is reported apart, as the time to the first result is
what a user waits for on a small batch.

Usage: python benchmarks/bench_batch.py [--files 24] [--pixels 512] [--repeat 3] [--data DIR]
Needs the batch extra (distributed, gwyfile).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from stm_live.batch import run_batch
from stm_live.batch.dask_cluster import cores_available
from stm_live.io import read_frame
from stm_live.model.runtime import SegmentationModel, bundled_model_path
from stm_live.publish.documents import result_record


def make_files(folder: Path, count: int, pixels: int, size_nm: float) -> list[Path]:
    from stm_live.sim import simulate_scan
    from stm_live.sim.truth import scan_file_bytes

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(30_000, 30_000 + count):
        path = folder / f"sim{seed}.sxm"
        if not path.exists():
            path.write_bytes(scan_file_bytes(simulate_scan("si001-ash3", size_nm=size_nm, pixels=pixels, seed=seed)))
        paths.append(path)
    return paths


def segment_loop(model_path: Path, files: list[Path]) -> tuple[float, float]:
    """(start-up s, segmentation s) of the plain loop."""
    t0 = time.perf_counter()
    model = SegmentationModel(model_path)
    t1 = time.perf_counter()
    for path in files:
        frame = read_frame(path)
        result_record(str(path), frame, model.segment(frame))
    return t1 - t0, time.perf_counter() - t1


def batch(model_path: Path, files: list[Path], workers: int) -> tuple[float, float]:
    """(start-up s, segmentation s) of one batch into a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as out:
        t0 = time.perf_counter()
        report = run_batch(files, out, model_path=model_path, workers=workers, progress=False)
        total = time.perf_counter() - t0
    assert report.count("done") == len(files), report.bad
    return total - report.seconds, report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--size-nm", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=None, help="folder for the simulated files (default: temporary)")
    args = parser.parse_args()
    model_path = args.model or bundled_model_path()
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-batch-data-")
        args.data = Path(tmp.name)
    files = make_files(args.data, args.files, args.pixels, args.size_nm)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores ({cores_available()} usable), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{len(files)} simulated si001-ash3 files, {args.pixels} x {args.pixels} px, {args.size_nm:g} nm; "
          f"model {model_path.name}; median of {args.repeat} runs per configuration")
    configs: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        ("segment loop (in process)", lambda: segment_loop(model_path, files)),
        ("batch, in process (--workers 0)", lambda: batch(model_path, files, 0)),
        ("batch, 1 Dask worker", lambda: batch(model_path, files, 1)),
        ("batch, 2 Dask workers", lambda: batch(model_path, files, 2)),
    ]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in configs}
    for _ in range(args.repeat):  # interleaved, so that a change of load hits every configuration alike
        for name, run in configs:
            runs[name].append(run())
    print(f"\n{'configuration':34s} {'frames/s':>9s} {'ms/frame':>9s} {'start-up s':>11s}  (runs: frames/s)")
    for name, _ in configs:
        rates = [len(files) / seg for _, seg in runs[name]]
        rate = statistics.median(rates)
        start = statistics.median(s for s, _ in runs[name])
        print(f"{name:34s} {rate:9.2f} {1e3 / rate:9.1f} {start:11.2f}  ({', '.join(f'{r:.2f}' for r in rates)})")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
