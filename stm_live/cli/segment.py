"""``stm-live segment FILE...``: find the features in scan files with a model."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from ..errors import ScanReadError, StmLiveError

HELP = "segment scan files with a model (default: the bundled si001-ash3) and list the features found"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".sxm, .npy or .npz scan files")
    parser.add_argument("--model", metavar="M", help="ONNX model file or bundled model name (default: si001-ash3)")
    parser.add_argument("--channel", default="Z", help="channel to segment (default: Z)")
    parser.add_argument("--direction", default="forward", choices=["forward", "backward"])
    parser.add_argument("--width-nm", type=float, metavar="W", help="physical width of array files (they store none)")
    parser.add_argument("--height-nm", type=float, help="physical height of array files (default: square pixels)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input, one per line")
    parser.add_argument(
        "--mask-out", metavar="PATH",
        help="save the class map (uint8, 0 = background, k = classes[k-1]) as .npy; with several inputs PATH "
        "must be a folder or contain {stem}",
    )
    parser.add_argument("--min-score", type=float,
                        help="drop detections less certain than this (0..1; default: the model's calibrated "
                        "per-class thresholds)")
    parser.add_argument("--min-area-nm2", type=float,
                        help="drop detections smaller than this (nm^2; default: the model's calibrated thresholds)")
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"], help="onnxruntime provider")


def resolve_model_path(model: str | None) -> Path:
    """A model argument as a path: an existing file, or the name of a bundled model."""
    from ..model.runtime import bundled_model_path

    if model is None:
        return bundled_model_path()
    path = Path(model)
    if path.suffix == ".onnx" or path.exists() or "/" in model:
        return path
    return bundled_model_path(model)


def _mask_path(template: str, source: Path, many: bool) -> Path:
    out = Path(template)
    if "{stem}" in template:
        return Path(template.format(stem=source.stem))
    if out.is_dir() or template.endswith("/"):
        return out / f"{source.stem}.mask.npy"
    if many:
        raise StmLiveError(f"--mask-out {template}: with several inputs, give a folder or a name with {{stem}}")
    return out


def _human(record: dict) -> str:
    counts = Counter(d["class"] for d in record["detections"])
    image = record["image"]
    lines = [
        f"{record['source']}: {image['cols']} x {image['rows']} px, "
        f"{image['width_nm']:.4g} x {image['height_nm']:.4g} nm ({image['channel']}); "
        f"model {record['model']['name']} [{record['model']['id']}]; "
        f"{record['timings_ms']['total']:.0f} ms",
        "  " + ", ".join(f"{counts.get(c, 0)} {c}" for c in record["classes"]),
    ]
    for d in record["detections"]:
        lines.append(
            f"  {d['class']:>16s}  x {d['x_nm']:8.3f} nm  y {d['y_nm']:8.3f} nm  "
            f"area {d['area_nm2']:6.3f} nm2  score {d['score']:.2f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import read_frame
    from ..model.runtime import SegmentationModel
    from ..publish.documents import result_record

    model = SegmentationModel(resolve_model_path(args.model), provider=args.provider)
    status = 0
    many = len(args.files) > 1
    for path in map(Path, args.files):
        try:
            frame = read_frame(path, channel=args.channel, direction=args.direction,
                               width_nm=args.width_nm, height_nm=args.height_nm)
            seg = model.segment(frame, min_score=args.min_score, min_area_nm2=args.min_area_nm2)
        except ScanReadError as exc:
            print(f"stm-live segment: error: {exc}", file=sys.stderr)
            status = 2
            continue
        record = result_record(str(path), frame, seg)
        if args.mask_out:
            out = _mask_path(args.mask_out, path, many)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, seg.class_map, allow_pickle=False)
        print(json.dumps(record) if args.json else _human(record), flush=True)
    return status
