"""``stm-live train``: train the encoder on simulated surfaces and export the ONNX models."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import StmLiveError

HELP = "train the encoder and prototypes on simulated surfaces (+ unlabelled real frames) and export ONNX models"
DESCRIPTION = """\
Simulates labelled frames of every surface, pretrains the encoder self-supervised (plus any
--unlabelled real frames), trains prototypes with prototype and episodic losses, calibrates
each surface's head on validation frames, and exports <surface>.onnx (and base-encoder.onnx, the
encoder alone, with `export_base_encoder: true`; models/base-encoder.train.yaml makes the bundled one).
Checkpoints go to the run folder; running the same command again resumes. Seeded: the same
settings give the same models. Needs the `train` extra (torch).
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="train.yaml", help="training settings (every key optional)")
    parser.add_argument("--run-dir", help="checkpoints, data cache and report (default: runs/default)")
    parser.add_argument("--out-dir", help="where the ONNX models go (default: models)")
    parser.add_argument("--steps", type=int, help="supervised steps")
    parser.add_argument("--ssl-steps", type=int, help="self-supervised steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all)")
    parser.add_argument("--exclude-surface", action="append", metavar="S",
                        help="leave a surface out entirely (leave-one-surface-out evaluation)")
    parser.add_argument("--unlabelled", nargs="+", metavar="FILE", help="unlabelled real frames for pretraining")
    parser.add_argument("--unlabelled-width-nm", type=float, help="physical width of unlabelled array files")
    parser.add_argument("--unlabelled-nm-per-px", type=float,
                        help="pitch the unlabelled frames are prepared at (default 0.1 nm/px)")
    parser.add_argument("--evaluate-frames", type=int, default=4,
                        help="held-out simulated frames per surface to measure F1 on after training (0 = skip)")
    parser.add_argument("--calibrate-frames", type=int, default=24,
                        help="validation frames per surface for the per-class detection thresholds (0 = skip)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise StmLiveError(
            "stm-live train needs torch: pip install torch==2.13.0 (CPU build), then pip install 'stm-live[train]'"
        ) from None
    from ..train.pipeline import train_models
    from ..train.settings import load_train_settings

    settings = load_train_settings(
        args.config,
        run_dir=args.run_dir,
        out_dir=args.out_dir,
        steps=args.steps,
        ssl_steps=args.ssl_steps,
        seed=args.seed,
        threads=args.threads,
        exclude_surfaces=args.exclude_surface,
        unlabelled=args.unlabelled,
        unlabelled_width_nm=args.unlabelled_width_nm,
        unlabelled_nm_per_px=args.unlabelled_nm_per_px,
    )
    report = train_models(settings, progress=not args.no_progress, evaluate_frames=args.evaluate_frames,
                          calibrate_frames=args.calibrate_frames)
    print(f"trained in {report['timings_s']['total']:.0f} s "
          f"(data {report['timings_s']['data']:.0f} s, fit {report['timings_s']['fit']:.0f} s)")
    for name, model in report["models"].items():
        line = f"  {name}: {Path(settings.out_dir) / (name + '.onnx')} [{model['id']}]"
        metrics = report["metrics"].get(name)
        if metrics:
            line += "  F1 " + ", ".join(f"{c} {s['f1']:.3f}" for c, s in metrics["objects"].items())
        print(line)
    print(f"report: {Path(settings.run_dir) / 'report.json'}")
    log.debug(json.dumps(report["timings_s"]))
    return 0
