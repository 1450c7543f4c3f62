"""Read speed of the .sxm reader: stm-live's own parser vs nanonispy2, same files.

Both readers are timed on the two real files in ../shared/data/real-sxm (when
present) and on a synthetic 512 x 512, 4-channel, both-direction file written
by our writer. Each measurement is the median of ``--repeat`` full reads
(header parse + all channels); MB/s is file size / median time. nanonispy2
returns big-endian unflipped arrays, so for a fair comparison its timing
includes the conversion to native float32 in display orientation that
stm-live needs anyway (``--raw`` times it without).

Usage: python benchmarks/bench_sxm_read.py [--repeat 50] [--processes 5] [--raw]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stm_live.frame import Frame
from stm_live.io import read_sxm, write_sxm

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-sxm"


def _ours(path: Path) -> object:
    return read_sxm(path)


def _nanonispy2(convert: bool) -> Callable[[Path], None]:
    import nanonispy2

    def read(path: Path) -> object:
        scan = nanonispy2.read.Scan(str(path))
        out = [scan]
        if convert:
            up = scan.header["scan_dir"] == "up"
            for dirs in scan.signals.values():
                for direction, image in dirs.items():
                    if up:
                        image = image[::-1]
                    if direction == "backward":
                        image = image[:, ::-1]
                    out.append(np.ascontiguousarray(image, dtype=np.float32))
        return out

    return read


def _median_s(fn: Callable[[Path], object], path: Path, repeat: int) -> float:
    result = fn(path)  # warm the page cache and imports
    times = []
    for _ in range(repeat):
        # Like a real consumer, the previous result is released only after
        # the next read returns; otherwise the timings mostly measure how
        # malloc happens to recycle the freed buffers.
        t0 = time.perf_counter()
        new = fn(path)
        times.append(time.perf_counter() - t0)
        result = new
    del result
    return statistics.median(times)


def _time_in_fresh_process(reader: str, path: Path, repeat: int, raw: bool) -> float:
    """Median read time, measured in a new interpreter per reader.

    Timing both readers in one process makes the result depend on which ran
    first (glibc's malloc adapts its mmap threshold to earlier frees, so the
    second reader often gets pre-faulted memory); a fresh process each is fair.
    """
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import bench_sxm_read as b; from pathlib import Path; "
        f"fn = b._ours if {reader!r} == 'stm-live' else b._nanonispy2(not {raw!r}); "
        f"print(b._median_s(fn, Path({str(path)!r}), {repeat}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="reads per process")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per reader and file")
    parser.add_argument("--raw", action="store_true", help="time nanonispy2 without converting its arrays")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        synthetic = Path(tmp) / "synthetic_512x512_4ch.sxm"
        frames = [
            Frame(rng.normal(size=(512, 512)).astype(np.float32), 5e-8, 5e-8, channel=name, direction=d)
            for name in ("Z", "Current", "LIX", "LIY")
            for d in ("forward", "backward")
        ]
        write_sxm(synthetic, frames)
        files = [*sorted(SHARED.glob("*.sxm")), synthetic]
        print(f"machine: {platform.processor() or platform.machine()}, {platform.python_implementation()} "
              f"{platform.python_version()}, numpy {np.__version__}; median over {args.processes} processes "
              f"of the median of {args.repeat} reads")
        print(f"{'file':40s} {'MB':>6s} {'stm-live MB/s':>14s} {'nanonispy2 MB/s':>16s} {'speed-up':>9s}")
        for path in files:
            size_mb = path.stat().st_size / 1e6
            ours_runs, theirs_runs = [], []
            for _ in range(args.processes):  # interleaved, so drifts in machine load hit both
                ours_runs.append(_time_in_fresh_process("stm-live", path, args.repeat, args.raw))
                theirs_runs.append(_time_in_fresh_process("nanonispy2", path, args.repeat, args.raw))
            ours, theirs = statistics.median(ours_runs), statistics.median(theirs_runs)
            print(f"{path.name[:40]:40s} {size_mb:6.2f} {size_mb / ours:14.0f} {size_mb / theirs:16.0f} "
                  f"{theirs / ours:8.1f}x")


if __name__ == "__main__":
    main()
