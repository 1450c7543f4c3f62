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

With --labels, DATA is not needed: the model is measured on hand-labelled real images
(eval/real/*.json, docs/real_eval.md; images under --data-root): per-class object
precision / recall / F1 and false detections per 100 nm^2 in the regions of --split.
A model with a head is scored as it is (zero-shot); with --adapt-shots K... the model (or
a bare encoder) is adapted from K clicked features per class drawn from the dev regions
(and K feature-free background squares), --draws times, and scored on the test regions.
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
    parser.add_argument("--labels", nargs="+", metavar="L.json",
                        help="hand-labelled real images (eval/real/*.json) instead of DATA")
    parser.add_argument("--data-root", default="../shared/data",
                        help="folder the label files' image paths are relative to (default: ../shared/data)")
    parser.add_argument("--split", default="test", choices=["dev", "test", "all"],
                        help="with --labels: which regions are scored (default: test)")
    parser.add_argument("--adapt-shots", type=int, nargs="+", metavar="K",
                        help="with --labels: adapt from K dev-region clicks per class and score on the test regions")
    parser.add_argument("--draws", type=int, default=5, help="with --adapt-shots: random support draws per K")
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


def format_labelled(report: dict[str, Any]) -> str:
    """The --labels report as text: one table per row (zero-shot, k-shot means)."""
    lines = [f"model {report['model']['name']} [{report['model']['id']}] on {', '.join(report['labels'])}"]
    for key, row in report["rows"].items():
        fd = row["false_per_100nm2"]
        fd_text = f"{fd[0]:.2f} +- {fd[1]:.2f}" if isinstance(fd, list) else f"{fd:.2f}"
        lines.append(f"  {key}: false detections {fd_text} per 100 nm^2")
        lines.append("  {:>16s} {:>6s} {:>6s} {:>6s}".format("class", "prec", "recall", "F1"))
        for name, s in row["classes"].items():
            lines.append(f"  {name:>16s} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f}")
    return "\n".join(lines)


def run_labelled(args: argparse.Namespace) -> int:
    from ..model.labels import read_label_set
    from ..model.real_eval import kshot, load_scan, score_model
    from ..model.runtime import SegmentationModel
    from .segment import resolve_model_path

    model = SegmentationModel(resolve_model_path(args.model), provider="cpu")
    scans = [load_scan(read_label_set(p), args.data_root) for p in args.labels]
    rows: dict[str, Any] = {}
    if model.has_head:
        score = score_model(model, scans, args.split, min_score=args.min_score).to_dict()
        rows["zero-shot"] = {"classes": score["classes"], "false_per_100nm2": score["false_per_100nm2"],
                             "false_detections": score["false_detections"], "area_nm2": score["area_nm2"]}
    elif not args.adapt_shots:
        raise StmLiveError(f"{model.path} is a bare encoder: give --adapt-shots K to adapt it from the dev regions")
    if args.adapt_shots:
        if args.draws < 1 or min(args.adapt_shots) < 1:
            raise StmLiveError("--adapt-shots and --draws must be at least 1")
        res = kshot(model, scans, args.adapt_shots, draws=args.draws, seed=args.seed)
        for k in args.adapt_shots:
            r = res[f"{k}-shot"]
            rows[f"{k}-shot (mean of {args.draws} draws)"] = {
                "classes": r["mean"], "sd": r["sd"], "false_per_100nm2": r["false_per_100nm2"],
                "pitch_nm": sorted({d["adapt"]["nm_per_px"] for d in r["draws"]}),
            }
    report = {"model": {"id": model.id, "name": model.name, "path": str(model.path)}, "labels": list(args.labels),
              "split": args.split, "rows": rows}
    print(json.dumps(report) if args.json else format_labelled(report))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..model.evaluate import evaluate_model
    from ..model.runtime import SegmentationModel
    from .segment import resolve_model_path

    if args.labels:
        return run_labelled(args)
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
