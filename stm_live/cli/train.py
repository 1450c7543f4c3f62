"""``stm-live train``: train the encoder on simulated surfaces, export the ONNX models, compare, install."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import StmLiveError

HELP = "train the encoder and prototypes on simulated surfaces (+ unlabelled real frames) and export ONNX models"
DESCRIPTION = """\
Simulates labelled frames of every surface, pretrains the encoder self-supervised (plus any
--unlabelled real frames), trains prototypes with prototype and episodic losses, calibrates
each surface's head on validation frames, and exports <surface>.onnx (and base-encoder.onnx, the
encoder alone, with `export_base_encoder: true`; models/base-encoder.train.yaml makes the bundled one)
into the run folder's candidates/. Then each new model and the one it would replace (the file
of that name in the output folder, or --compare M) are scored on the same held-out frames and
the table printed; a new model worse than the old one by more than --tolerance points on any
score is not installed (exit status 1) unless --force.
Checkpoints go to the run folder; running the same command again resumes. Seeded and pinned:
the same settings give the same weights on any x86-64 CPU with AVX2 (the training runs in a
process whose libraries use AVX2 kernels and 2 threads; --numerics native for the CPU's own).
Needs the `train` extra (torch).
"""
log = logging.getLogger(__name__)

#: Exit status when a new model was not installed because it is worse than the one it would replace.
EXIT_REFUSED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="train.yaml", help="training settings (every key optional)")
    parser.add_argument("--run-dir", help="checkpoints, data cache, candidates and report (default: runs/default)")
    parser.add_argument("--out-dir", help="where the ONNX models are installed (default: models)")
    parser.add_argument("--steps", type=int, help="supervised steps")
    parser.add_argument("--ssl-steps", type=int, help="self-supervised steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default 2; another count gives other weights; 0: all cores)")
    parser.add_argument("--numerics", choices=["pinned", "native"],
                        help="pinned (default): AVX2 kernels, the same weights on any x86-64 CPU with AVX2; "
                        "native: this CPU's fastest kernels")
    parser.add_argument("--exclude-surface", action="append", metavar="S",
                        help="leave a surface out entirely (leave-one-surface-out evaluation)")
    parser.add_argument("--unlabelled", nargs="+", metavar="FILE", help="unlabelled real frames for pretraining")
    parser.add_argument("--unlabelled-width-nm", type=float, help="physical width of unlabelled array files")
    parser.add_argument("--unlabelled-nm-per-px", type=float,
                        help="pitch the unlabelled frames are prepared at (default 0.1 nm/px)")
    parser.add_argument("--evaluate-frames", type=int, default=24,
                        help="held-out simulated frames per surface the new and the old model are compared on "
                        "(default 24; 0 = skip, and replace no existing model without --force)")
    parser.add_argument("--calibrate-frames", type=int, default=24,
                        help="validation frames per surface for the per-class detection thresholds and class "
                        "offsets (recipe key calibrate_class_offsets; 0 = skip)")
    parser.add_argument("--compare", action="append", metavar="M",
                        help="compare the new model with M (file or bundled name) instead of the one in the "
                        "output folder; repeat for several")
    parser.add_argument("--tolerance", type=float, default=1.0, metavar="POINTS",
                        help="largest drop of a score (points of F1 or accuracy) that still installs a new "
                        "model (default 1.0)")
    parser.add_argument("--force", action="store_true", help="install the new models even where they are worse")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _exported_names(settings: Any) -> list[str]:
    names = [s.name for s in settings.surfaces if s.export and s.name not in settings.exclude_surfaces]
    return names + (["base-encoder"] if settings.export_base_encoder else [])


def _compare_targets(models: list[str], exported: list[str]) -> dict[str, str]:
    """``--compare`` models -> the new model each is compared with (by name or surface, or the only one)."""
    from ..model.format import load_onnx, read_info
    from .segment import resolve_model_path

    out: dict[str, str] = {}
    for m in models:
        path = resolve_model_path(m)
        info = read_info(load_onnx(path), source=str(path))
        matches = [n for n in exported if n in (info.name, info.surface)]
        name = exported[0] if len(exported) == 1 else (matches[0] if len(matches) == 1 else None)
        if name is None:
            raise StmLiveError(f"--compare {m}: model {info.name!r} matches none of the models this run makes "
                               f"({', '.join(exported) or 'none'}); name a model of one of them")
        if name in out:
            raise StmLiveError(f"--compare {m}: {name} is already compared with {out[name]}")
        out[name] = str(path.resolve())
    return out


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None:
        raise StmLiveError(
            "stm-live train needs torch: pip install torch==2.13.0 (CPU build), then pip install 'stm-live[train]'"
        )
    from ..train.numerics import can_pin, is_pinned, pinned_environment
    from ..train.settings import load_train_settings

    settings = load_train_settings(
        args.config,
        run_dir=args.run_dir,
        out_dir=args.out_dir,
        steps=args.steps,
        ssl_steps=args.ssl_steps,
        seed=args.seed,
        threads=args.threads,
        numerics=args.numerics,
        exclude_surfaces=args.exclude_surface,
        unlabelled=args.unlabelled,
        unlabelled_width_nm=args.unlabelled_width_nm,
        unlabelled_nm_per_px=args.unlabelled_nm_per_px,
    )
    if args.tolerance < 0:
        raise StmLiveError(f"--tolerance {args.tolerance}: expected a number of points >= 0")
    compare = _compare_targets(args.compare or [], _exported_names(settings))
    request = {
        "settings": settings.model_dump(mode="json"),
        "options": {"progress": not args.no_progress, "evaluate_frames": args.evaluate_frames,
                    "calibrate_frames": args.calibrate_frames, "compare": compare, "force": args.force,
                    "tolerance": args.tolerance / 100},
        "log_level": logging.getLogger("stm_live").level,
    }
    if settings.numerics == "pinned" and can_pin() and not is_pinned():
        # The libraries read their kernel choice when they load: a fresh process with the pinned environment.
        child = subprocess.run([sys.executable, "-m", "stm_live.train"], input=json.dumps(request), text=True,
                               env=pinned_environment(), check=False)
        if child.returncode != 0:
            return child.returncode
        report = json.loads((Path(settings.run_dir) / "report.json").read_text())
    else:
        from ..train.__main__ import train_from_request

        report = train_from_request(request)
    return _print_report(report, settings)


def _print_report(report: dict[str, Any], settings: Any) -> int:
    run_dir = Path(settings.run_dir)
    t = report["timings_s"]
    print(f"trained in {t['total']:.0f} s (data {t['data']:.0f} s, fit {t['fit']:.0f} s, "
          f"compare {t.get('compare', 0):.0f} s)")
    refused = []
    for name, model in report["models"].items():
        record = report["comparison"].get(name, {})
        print(record.get("table", f"{name}: [{model['id']}]"))
        where = _show(run_dir / model["path"])
        if record.get("decision") == "refused":
            refused.append(name)
            print(f"  not installed: {record['reason']}; the new model is at {where}; --force installs it")
        else:
            print(f"  installed {where} [{model['id']}]" + (" (--force)" if record.get("forced") else ""))
            if record.get("reference") == "bundled" and record.get("reason"):
                print(f"  warning: {record['reason']}")
    print(f"report: {_show(run_dir / 'report.json')}")
    if refused:
        print(f"stm-live train: kept the existing {', '.join(refused)}: the new model is worse "
              "(table above); --force installs it", file=sys.stderr)
        return EXIT_REFUSED
    return 0
