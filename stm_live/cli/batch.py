"""``stm-live batch PATH... --out DIR``: re-segment folders of scans, in parallel on Dask."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "re-segment folders of scan files in parallel (Dask), resumably, with a summary per folder and class"
DESCRIPTION = (
    "Re-segment scan files and folders (searched recursively) with one model, in parallel on Dask "
    "distributed: a local cluster by default, or a running one (--scheduler). What is done is skipped by "
    "content hash and model id; bad files are reported, never fatal. Results go to OUT/<model>-<id>/: the "
    "daemon's records, class maps and overlays, a .gwy file per frame, detections.csv and summary.csv "
    "(docs/batch.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="scan files and folders")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="results folder (created if needed)")
    parser.add_argument("--model", metavar="M", help="ONNX model file or bundled model name (default: si001-ash3)")
    cluster = parser.add_argument_group("where the work runs")
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="a running Dask scheduler: its address (tcp://host:8786) or its scheduler file; "
                         "default: start a local cluster")
    cluster.add_argument("--workers", type=int, metavar="N",
                         help="local cluster: worker processes (default: one per core; 0 = no Dask, segment in "
                         "this process); with --scheduler: wait for N workers")
    cluster.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"],
                         help="onnxruntime provider on the workers (default auto: the GPU when there is one)")
    cluster.add_argument("--timeout", type=float, default=60.0, metavar="S",
                         help="seconds to wait for the scheduler and workers (60)")
    what = parser.add_argument_group("what is read and written")
    what.add_argument("--pattern", action="append", metavar="GLOB",
                      help="file names looked for in folders (repeatable; default *.sxm, *.npy, *.npz)")
    what.add_argument("--channel", default="Z", help="channel to segment (default: Z)")
    what.add_argument("--direction", default="forward", choices=["forward", "backward"])
    what.add_argument("--width-nm", type=float, metavar="W", help="physical width of array files (they store none)")
    what.add_argument("--height-nm", type=float, help="physical height of array files (default: square pixels)")
    what.add_argument("--min-score", type=float, help="drop detections less certain than this (0..1; default: the "
                      "model's calibrated per-class thresholds)")
    what.add_argument("--min-area-nm2", type=float, help="drop detections smaller than this (nm^2; default: the "
                      "model's calibrated thresholds)")
    what.add_argument("--no-gwy", action="store_true", help="do not write a .gwy file per frame")
    what.add_argument("--no-png", action="store_true", help="do not write an overlay PNG per frame")
    what.add_argument("--retry-bad", action="store_true", help="try again the files an earlier run found bad")
    what.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..batch import BatchSettings, run_batch
    from ..batch.inputs import DEFAULT_PATTERNS
    from ..batch.summary import format_table
    from ..errors import StmLiveError
    from .segment import resolve_model_path

    if args.workers is not None and args.workers < 0:
        raise StmLiveError(f"--workers {args.workers}: expected 0 or more")
    if args.workers == 0 and args.scheduler:
        raise StmLiveError("--workers 0 runs in this process; it cannot be combined with --scheduler")
    settings = BatchSettings(channel=args.channel, direction=args.direction, width_nm=args.width_nm,
                             height_nm=args.height_nm, min_score=args.min_score, min_area_nm2=args.min_area_nm2)
    report = run_batch(
        args.paths, args.out, model_path=resolve_model_path(args.model), settings=settings,
        scheduler=args.scheduler, workers=args.workers, provider=args.provider,
        patterns=tuple(args.pattern or DEFAULT_PATTERNS), gwy=not args.no_gwy, png=not args.no_png,
        retry_bad=args.retry_bad, progress=not args.no_progress, timeout_s=args.timeout,
    )
    done, skipped, bad = report.count("done"), report.count("skipped"), report.count("bad")
    rate = f", {done / report.seconds:.2f} files/s" if done and report.seconds > 0 else ""
    before = f" ({report.bad_before} found bad before, not tried again)" if report.bad_before else ""
    print(f"{len(report.lines)} file(s) on {report.runner}: {done} segmented, {skipped} skipped (done before), "
          f"{bad} bad{before}, in {report.seconds:.1f} s{rate}")
    print()
    print(format_table(report.rows, report.classes))
    if report.bad:
        print()
        print("bad files:")
        for path, reason in report.bad:
            print(f"  {path}: {reason}")
    print()
    print(f"results: {report.folder}")
    print(f"tables:  {report.detections_csv} (one row per detection), {report.summary_csv}")
    sys.stdout.flush()
    return 0
