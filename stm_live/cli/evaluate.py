"""``stm-live evaluate``: object F1, pixel IoU and few-shot episodes against ground truth."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..errors import StmLiveError

HELP = "measure a model on data with ground truth: per-class precision/recall/F1, pixel IoU, few-shot episodes"
DESCRIPTION = """\
DATA are .sxm files with the simulator's ground-truth sidecars (<stem>.truth.json and
<stem>.mask.npy, as written by `stm-live simulate`) or folders of them; --simulate
evaluates on fresh simulated frames instead. A detection matches a true feature of its
class within --max-dist-nm, one to one. Episodes follow the few-shot protocol: N-way
K-shot, --queries per class, --episodes repetitions, on instance embeddings;
--centre-features first subtracts from each frame's instance embeddings the mean
embedding of all that frame's feature pixels (no labels used), as a model made with
`stm-live adapt --centre-features` does.
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="*", metavar="DATA", help=".sxm files with truth sidecars, or folders")
    parser.add_argument("--model", metavar="M", help="model file or bundled name (default: si001-ash3)")
    parser.add_argument("--simulate", metavar="SURFACE", help="evaluate on fresh simulated frames of this surface")
    parser.add_argument("--count", type=int, default=8, help="simulated frames (with --simulate)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the simulated frames and episodes")
    parser.add_argument("--size-nm", type=float, default=50.0, help="simulated frame size (nm)")
    parser.add_argument("--pixels", type=int, default=512, help="simulated frame pixels per side")
    parser.add_argument("--channel", default="Z")
    parser.add_argument("--max-dist-nm", type=float, default=0.5, help="matching distance (nm)")
    parser.add_argument("--min-score", type=float,
                        help="detection score threshold (0..1; default: the model's calibrated thresholds)")
    parser.add_argument("--shots", type=int, nargs="*", default=[1, 3], help="K of the K-shot episodes")
    parser.add_argument("--queries", type=int, default=15, help="queries per class per episode")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per K (0 = skip)")
    parser.add_argument("--centre-features", action="store_true",
                        help="episodes on per-frame feature-centred instance embeddings (transductive)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"model {report['model']['name']} [{report['model']['id']}] on {report['images']} images "
             f"(match within {report['max_dist_nm']} nm)"]
    header = ("class", "TP", "FP", "FN", "prec", "recall", "F1", "IoU")
    lines.append("  {:>16s} {:>5s} {:>5s} {:>5s} {:>6s} {:>6s} {:>6s} {:>6s}".format(*header))
    for name, s in report["objects"].items():
        iou = report["pixel_iou"][name]
        lines.append(f"  {name:>16s} {s['tp']:5d} {s['fp']:5d} {s['fn']:5d} {s['precision']:6.3f} {s['recall']:6.3f} "
                     f"{s['f1']:6.3f} {'  n/a' if iou is None else f'{iou:6.3f}'}")
    centred = ", frame-centred" if report.get("episodes_frame_centred") else ""
    for key, res in report.get("episodes", {}).items():
        if "error" in res:
            lines.append(f"  episodes {key}: {res['error']}")
        else:
            lines.append(f"  episodes {key} ({res['ways']}-way, {res['queries']} queries, {res['episodes']} episodes"
                         f"{centred}): "
                         f"accuracy {100 * res['accuracy_mean']:.1f} % +- {100 * res['accuracy_std']:.1f}")
    if report["classes_without_truth"]:
        lines.append(f"  (no ground truth for: {', '.join(report['classes_without_truth'])})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..model.evaluate import evaluate_model
    from ..model.runtime import SegmentationModel
    from .segment import resolve_model_path

    if not args.data and not args.simulate:
        raise StmLiveError("no data: give .sxm files with truth sidecars, folders of them, or --simulate SURFACE")
    model = SegmentationModel(resolve_model_path(args.model), provider="cpu")
    report = evaluate_model(
        model,
        data=args.data,
        simulate=args.simulate,
        count=args.count,
        seed=args.seed,
        size_nm=args.size_nm,
        pixels=args.pixels,
        channel=args.channel,
        max_dist_nm=args.max_dist_nm,
        min_score=args.min_score,
        shots=args.shots,
        queries=args.queries,
        episodes=args.episodes,
        centre_features=args.centre_features,
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0
