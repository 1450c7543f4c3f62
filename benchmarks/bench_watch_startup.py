"""Watcher start-up on a folder of already processed files, with and without the hash cache.

A restart of the daemon on a folder of N processed scans: the watcher lists them,
and without a cache reads every file whole (completeness check + SHA-256) to find
that each one was processed in an earlier run. With ``hash_cache`` (issue 18) a
file whose path, size, mtime and inode are unchanged since it was hashed is not
read at all. Timed from ``FolderWatcher.start()`` until all N files are reported as
duplicates; the folder's files stay in the page cache between runs (warm: the
saving on a cold disk, or a network share, is larger, as the bytes are never read).

Usage: python benchmarks/bench_watch_startup.py [--files 1000] [--pixels 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import queue
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from stm_live.frame import Frame
from stm_live.ingest.watch import FolderWatcher, ReadyFile
from stm_live.io import sxm_bytes


def make_folder(folder: Path, n_files: int, pixels: int) -> tuple[set[str], int]:
    """N distinct .sxm files (Z and Current, both directions), an hour old; their hashes and size."""
    data = np.random.default_rng(0).normal(size=(pixels, pixels)).astype(np.float32) * 1e-10
    frames = [Frame(data, 20e-9, 20e-9, channel=c, direction=d)
              for c in ("Z", "Current") for d in ("forward", "backward")]
    base = bytearray(sxm_bytes(frames))
    old = time.time() - 3600.0
    hashes = set()
    for i in range(n_files):
        base[-8:] = np.float64(i).tobytes()  # the last pixel differs: every file is a distinct content
        path = folder / f"scan_{i:05d}.sxm"
        path.write_bytes(base)
        os.utime(path, (old, old))
        hashes.add(hashlib.sha256(base).hexdigest())
    return hashes, len(base)


def start_up(folder: Path, processed: set[str], n_files: int, cache: Path | None) -> tuple[float, dict[str, int]]:
    """Seconds from start() until every file is reported as already processed; the watcher's counts."""
    done: queue.Queue[ReadyFile] = queue.Queue()
    watcher = FolderWatcher([folder], on_file=done.put, on_bad=lambda p, r: None, on_duplicate=done.put,
                            is_processed=processed.__contains__, hash_cache=cache)
    t0 = time.perf_counter()
    watcher.start()
    try:
        for _ in range(n_files):
            done.get(timeout=600)
        elapsed = time.perf_counter() - t0
    finally:
        watcher.stop()
    return elapsed, dict(watcher.counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--pixels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder, results = Path(tmp) / "scans", Path(tmp) / "results"
        folder.mkdir()
        results.mkdir()
        processed, size = make_folder(folder, args.files, args.pixels)
        print(f"{args.files} processed .sxm files of {size / 1e6:.2f} MB ({args.pixels} px, 4 images): "
              f"{args.files * size / 1e9:.2f} GB")
        cache = results / "watch_hashes.json"
        first, counts = start_up(folder, processed, args.files, cache)  # fills the cache
        print(f"first start with an empty cache: {first:.2f} s (hashed {counts['hashed']}; "
              f"cache file {cache.stat().st_size / 1e3:.0f} kB)")
        timings: dict[str, list[float]] = {"no cache (before)": [], "hash cache (after)": []}
        hashed: dict[str, int] = {}
        for _ in range(args.repeats):
            for label, path in (("no cache (before)", None), ("hash cache (after)", cache)):
                elapsed, counts = start_up(folder, processed, args.files, path)
                timings[label].append(elapsed)
                hashed[label] = counts["hashed"]
                assert counts["duplicates"] == args.files
        for label, values in timings.items():
            print(f"{label:20s} median {statistics.median(values):6.2f} s   min {min(values):6.2f}   "
                  f"max {max(values):6.2f}   ({len(values)} runs; files read whole per start: {hashed[label]}, "
                  f"{hashed[label] * size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
