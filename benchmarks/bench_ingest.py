"""Speed of the daemon's edges that do not need the model: wire, line assembly, store, watcher.

Per-line costs are what the daemon's latency budget (line arrival to ``seg.partial``,
p99 < 20 ms at 512 px including segmentation) must leave for the model:

* ``decode_line``: one 512-px ``stm.line`` message (big-endian float32) to a LineMessage;
* ``feed``: ``LineAssembler.feed`` of that line (partial Frame view included);
* ``encode_seg``: a ``seg.partial`` with 20 detections and a 512 x 512 class map;
* ``store``: ``ResultStore.store`` of one 512 x 512 result with overlay PNG, fsynced;
* watcher: complete 128 x 128 ``.sxm`` files written into a watched folder, handed on
  per second (completeness check + SHA-256 + dedupe), from first write to last hand-over.

Usage: python benchmarks/bench_ingest.py [--lines 5000] [--files 200]
"""

from __future__ import annotations

import argparse
import platform
import queue
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stm_live.frame import Detection, Frame
from stm_live.ingest.assemble import LineAssembler
from stm_live.ingest.watch import FolderWatcher, ReadyFile
from stm_live.io import sxm_bytes
from stm_live.publish import ResultStore, array_sha256, stored_record
from stm_live.wire import LineMessage, ScanInfo, SegMessage, decode_line, encode_line, encode_seg

SIDE = 512


def _percentiles(samples: list[float]) -> str:
    us = np.array(samples) * 1e6
    return f"p50 {np.percentile(us, 50):8.1f} us   p99 {np.percentile(us, 99):8.1f} us   max {us.max():8.1f} us"


def _time(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def bench_lines(n_lines: int) -> None:
    rng = np.random.default_rng(0)
    lines = [rng.normal(size=SIDE).astype(">f4") * 1e-10 for _ in range(SIDE)]
    scans = [ScanInfo(f"s{k}", rows=SIDE, cols=SIDE, width_m=50e-9, height_m=50e-9) for k in range(n_lines // SIDE + 1)]
    parts = [encode_line(LineMessage(scans[i // SIDE], i % SIDE, lines[i % SIDE])) for i in range(n_lines)]
    print(f"decode_line ({SIDE} px, >f4)   ", _percentiles(_time(lambda i: decode_line(parts[i]), n_lines)))
    decoded = [decode_line(p) for p in parts]
    asm = LineAssembler(max_open_scans=4)
    print(f"LineAssembler.feed ({SIDE} px)  ", _percentiles(_time(lambda i: asm.feed(decoded[i]), n_lines)))
    asm2 = LineAssembler(max_open_scans=4)
    both = _time(lambda i: asm2.feed(decode_line(parts[i])), n_lines)
    print("decode + feed                 ", _percentiles(both))


def bench_publish(n: int) -> None:
    dets = tuple(Detection("AsH3", 1.0 + i, 2.0 + i, 0.4, 0.9, id=i) for i in range(20))
    cmap = (np.random.default_rng(1).random((SIDE, SIDE)) * 4).astype(np.uint8)
    msg = SegMessage(scan_id="s", rows_done=SIDE, rows=SIDE, cols=SIDE, width_m=50e-9, height_m=50e-9,
                     model_id="m", model_name="m", classes=("AsH3", "DB", "DV"), detections=dets, latency_ms=3.0,
                     class_map=cmap)
    print(f"encode_seg (20 det, {SIDE}^2 map)", _percentiles(_time(lambda i: encode_seg(msg), n)))


def bench_store(n: int) -> None:
    image = np.random.default_rng(2).normal(size=(SIDE, SIDE)).astype(np.float32)
    cmap = (image > 1).astype(np.uint8)
    base = {"source": "zmq", "image": {"rows": SIDE, "cols": SIDE, "width_nm": 50.0, "height_nm": 50.0,
            "channel": "Z"}, "model": {"id": "m", "name": "m"}, "classes": ["A"], "detections": [],
            "timings_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp)

        def one(i: int) -> None:
            rec = stored_record(base, scan_id=f"s{i}", complete=True, sha256=array_sha256(np.array([i])))
            store.store(rec, cmap, image=image)

        samples = _time(one, n)
    ms = np.array(samples) * 1e3
    print(f"ResultStore.store ({SIDE}^2 + PNG, fsync)  p50 {np.median(ms):.1f} ms   max {ms.max():.1f} ms")


def bench_watcher(n_files: int) -> None:
    frames = [Frame(np.random.default_rng(i).normal(size=(128, 128)).astype(np.float32), 5e-9, 5e-9)
              for i in range(n_files)]
    blobs = [sxm_bytes([f]) for f in frames]
    got: queue.Queue[ReadyFile] = queue.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        watcher = FolderWatcher([folder], on_file=got.put, on_bad=lambda p, r: None, retry_initial_s=0.01,
                                retry_max_s=0.1)
        watcher.start()
        try:
            t0 = time.perf_counter()
            for i, blob in enumerate(blobs):
                (folder / f"scan_{i:05d}.sxm").write_bytes(blob)
            for _ in range(n_files):
                got.get(timeout=60)
            elapsed = time.perf_counter() - t0
        finally:
            watcher.stop()
    size_kb = len(blobs[0]) / 1e3
    print(f"watcher: {n_files} files of {size_kb:.0f} kB in {elapsed:.2f} s = {n_files / elapsed:.0f} files/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"NumPy {np.__version__}")
    bench_lines(args.lines)
    bench_publish(500)
    bench_store(30)
    bench_watcher(args.files)


if __name__ == "__main__":
    main()
