"""``stm-live adapt``: a model for a new surface or new classes from one to a few labelled images."""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import logging
from pathlib import Path

from ..errors import AdaptError

HELP = "adapt a model to a new surface or new classes from 1..K labelled images (no training)"
DESCRIPTION = """\
Computes new class prototypes from the model's embeddings of labelled images and writes a
new model with them: no gradient training, seconds on a CPU. Labels are either points a
person clicked (CSV with header x_nm,y_nm,class; class 'background' marks background
explicitly) or an integer mask of the image's shape (0 = background, k = k-th --classes
name; 255 = unlabelled). Give --image once per labelled image, each with its own --points or
--mask. A points CSV may also hold rectangles (columns x2_nm,y2_nm filled): class
'background' marks a rectangle with no feature, class 'all_labelled' a rectangle in which
every feature is clicked, so that the rest of it is background. By default the model pitch
and the labelled disc are measured from the clicked features' size on the image, and the
detection thresholds are the lowest that find nothing in the marked background
(docs/real_eval.md).
With --centre-features the new model centres each frame on its own features' mean
embedding before it decides which class a feature is, so that what a tip change does to
every feature alike cancels (docs/model.md says when that helps).
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="M",
                        help="model or bare encoder to start from (file, or a bundled name such as base-encoder)")
    parser.add_argument("--image", action="append", metavar="IMG", help="labelled scan (repeatable)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--points", action="append", metavar="P.csv", help="clicked features, one CSV per --image")
    labels.add_argument("--mask", action="append", metavar="MASK.npy", help="integer mask, one per --image")
    parser.add_argument("--classes", help="comma-separated class names for mask values 1..K (with --mask)")
    parser.add_argument("--out", required=True, metavar="NEW.onnx", help="where to write the adapted model")
    parser.add_argument("--name", help="name of the new model (default: the output file's stem)")
    parser.add_argument("--surface", help="surface the new model is for (metadata)")
    parser.add_argument("--channel", default="Z")
    parser.add_argument("--direction", default="forward", choices=["forward", "backward"])
    parser.add_argument("--width-nm", type=float, metavar="W", help="physical width of array images")
    parser.add_argument("--height-nm", type=float, help="physical height of array images (default: square pixels)")
    parser.add_argument("--nm-per-px", type=float,
                        help="pixel pitch the new model runs at (default: chosen from the labelled features' "
                        "size measured on the image)")
    parser.add_argument("--radius-nm", type=float,
                        help="radius labelled around each point (nm; default: from the measured feature size)")
    parser.add_argument("--background-margin-nm", type=float,
                        help="pixels this far from every point are background candidates (nm; default 3x the "
                        "radius)")
    parser.add_argument("--background-prototypes", type=int, default=4, help="k-means clusters for the background")
    parser.add_argument("--fine-tune-steps", type=int,
                        help="refine the prototypes by this many gradient steps (head only; default 100 with "
                        "--mask, 0 with --points)")
    parser.add_argument("--prototypes-per-class", type=int,
                        help="prototypes per feature class (k-means of its pixels; default 3 with --mask, 1 with "
                        "--points)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="keep the default detection thresholds instead of calibrating them on the marked "
                        "background")
    parser.add_argument("--strict-background", action="store_true",
                        help="with a start model's classes: raise their thresholds until nothing is found on "
                        "the marked background, keeping every clicked example (fewer false detections, fewer "
                        "true ones too)")
    parser.add_argument("--contrast-fraction", type=float, metavar="F",
                        help="with --points: report no feature that stands out of its surroundings by less than "
                        "F x the faintest clicked example of its class (0 <= F < 1; default 0.5; 0 turns the "
                        "gate off)")
    parser.add_argument("--bias-polarity", choices=["positive", "negative"],
                        help="sample bias polarity of the labelled images when the files do not store it "
                        "(.npy); recorded in the model, which warns on frames of the other polarity")
    parser.add_argument("--centre-features", action="store_true",
                        help="classify features after centring each frame on its features' mean embedding")
    parser.add_argument("--centre-prior-nm2", type=float, default=2.5, metavar="A",
                        help="with --centre-features: a frame's feature mean is pulled towards the labelled "
                        "images' with the weight of "
                        "this much feature area (nm^2), so that a frame or live window with few features is "
                        "classified nearly as without centring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", type=Path, metavar="VERSION_FILE",
                        help="rebuild the model of a teach-in version file (docs/viewer.md) instead; "
                        "only --out applies; the model id comes out the same")


#: Classes of rectangle rows in a points CSV.
BACKGROUND_BOX = "background"
ALL_LABELLED_BOX = "all_labelled"


def read_points(path: Path) -> list:
    """Points from a CSV with header ``x_nm,y_nm,class``; errors name the file and line.

    Rows with ``x2_nm,y2_nm`` (optional columns) are rectangles; they are
    returned by :func:`read_labels`, not here.
    """
    return read_labels(path)[0]


def read_labels(path: Path) -> tuple[list, list, list]:
    """``(points, background boxes, all-labelled boxes)`` from a points CSV (see the command's help)."""
    from ..model.prototypes import Point

    points, background, complete = [], [], []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            if not {"x_nm", "y_nm", "class"} <= set(fields):
                raise AdaptError(f"{path}: expected a CSV header x_nm,y_nm,class, found {','.join(fields) or 'none'}")
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                try:
                    x, y = float(row["x_nm"]), float(row["y_nm"])
                except ValueError:
                    raise AdaptError(
                        f"{path}:{line}: x_nm/y_nm must be numbers, got {row['x_nm']!r}, {row['y_nm']!r}"
                    ) from None
                try:
                    x2 = float(row["x2_nm"]) if row.get("x2_nm") else None
                    y2 = float(row["y2_nm"]) if row.get("y2_nm") else None
                except ValueError:
                    raise AdaptError(
                        f"{path}:{line}: x2_nm/y2_nm must be numbers, got {row.get('x2_nm')!r}, {row.get('y2_nm')!r}"
                    ) from None
                if not row["class"]:
                    raise AdaptError(f"{path}:{line}: empty class name")
                if (x2 is None) != (y2 is None):
                    raise AdaptError(f"{path}:{line}: a rectangle needs both x2_nm and y2_nm")
                if x2 is not None and y2 is not None:
                    box = (min(x, x2), min(y, y2), max(x, x2), max(y, y2))
                    if row["class"] == BACKGROUND_BOX:
                        background.append(box)
                    elif row["class"] == ALL_LABELLED_BOX:
                        complete.append(box)
                    else:
                        raise AdaptError(f"{path}:{line}: a rectangle's class must be {BACKGROUND_BOX!r} or "
                                         f"{ALL_LABELLED_BOX!r}, got {row['class']!r}")
                    continue
                points.append(Point(x, y, row["class"]))
    except FileNotFoundError:
        raise AdaptError(f"{path}: points file not found") from None
    if not points:
        raise AdaptError(f"{path}: no points")
    return points, background, complete


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _polarity(bias_v: float | None) -> str | None:
    if bias_v is None or bias_v == 0:
        return None
    return "positive" if bias_v > 0 else "negative"


def _replay(args: argparse.Namespace) -> int:
    from ..viewer.teach import replay

    info, version = replay(args.replay, args.out)
    expected = version.model_after.get("id")
    same = info.id == expected
    print(f"wrote {args.out}: model {info.name} [{info.id}] from teach-in version {version.number} "
          f"({len(version.support)} support frame(s)); "
          + ("the same id as the version's model" if same else f"NOT the version's model id {expected}"))
    return 0 if same else 1


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from ..io import read_frame
    from ..model.adapt import AdaptSettings, LabelledFrame, adapt_model
    from ..model.format import save_model
    from ..model.runtime import SegmentationModel
    from .segment import resolve_model_path

    if args.replay is not None:
        return _replay(args)
    if not args.model or not args.image or not (args.points or args.mask):
        raise AdaptError("--model, --image and --points (or --mask) are needed, or --replay VERSION_FILE")
    label_files = args.points or args.mask
    if len(label_files) != len(args.image):
        raise AdaptError(
            f"{len(args.image)} --image but {len(label_files)} --{'points' if args.points else 'mask'}: "
            "give one label file per image"
        )
    if args.mask and not args.classes:
        raise AdaptError("--mask needs --classes a,b,... naming mask values 1, 2, ...")
    if args.contrast_fraction is not None and not 0 <= args.contrast_fraction < 1:
        raise AdaptError(f"--contrast-fraction must be at least 0 and below 1 (a clicked example must pass its own "
                         f"gate), got {args.contrast_fraction}")
    if args.centre_features and not args.centre_prior_nm2 > 0:
        raise AdaptError(f"--centre-prior-nm2 must be positive, got {args.centre_prior_nm2}")
    for flag in ("nm_per_px", "radius_nm", "background_margin_nm"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise AdaptError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    base_path = resolve_model_path(args.model)
    base = SegmentationModel(base_path, provider="cpu")

    if args.points:
        all_labels = [read_labels(Path(p)) for p in args.points]
        classes = list(dict.fromkeys(p.class_name for pts, _, _ in all_labels for p in pts
                                     if p.class_name != "background"))
    else:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise AdaptError("no feature class among the labels (only background?)")

    examples = []
    provenance_images = []
    polarities = set()
    for i, image_path in enumerate(map(Path, args.image)):
        frame = read_frame(image_path, channel=args.channel, direction=args.direction,
                           width_nm=args.width_nm, height_nm=args.height_nm)
        polarities.add(args.bias_polarity or _polarity(frame.bias_v))
        if args.points:
            points, background, complete = all_labels[i]
            example = LabelledFrame(frame, tuple(points), background_boxes=tuple(background),
                                    complete_boxes=tuple(complete), source=str(image_path))
            label_desc = {"points": len(points), "points_file": str(args.points[i]),
                          "background_boxes": len(background), "all_labelled_boxes": len(complete)}
        else:
            mask_path = Path(args.mask[i])
            try:
                mask = np.load(mask_path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise AdaptError(f"{mask_path}: cannot read mask: {exc}") from None
            if mask.shape != frame.data.shape or mask.dtype.kind not in "iub":
                raise AdaptError(
                    f"{mask_path}: mask must be an integer array of the image's shape {frame.data.shape}, "
                    f"got {mask.dtype} {mask.shape}"
                )
            valid = mask[mask != 255]
            if valid.size and (valid.max() > len(classes) or valid.min() < 0):
                raise AdaptError(f"{mask_path}: mask values {int(valid.min())}..{int(valid.max())}, but only "
                                 f"{len(classes)} --classes (values 0..{len(classes)}, 255 unlabelled)")
            example = LabelledFrame(frame, mask=mask.astype(np.int16), source=str(mask_path))
            label_desc = {"mask_file": str(mask_path), "labelled_pixels": int(((mask > 0) & (mask != 255)).sum())}
        examples.append(example)
        provenance_images.append({"path": str(image_path), "sha256": _sha256(image_path),
                                  "bias_v": frame.bias_v, **label_desc})
    if len(polarities - {None}) > 1:
        raise AdaptError("the labelled images were taken at both bias polarities; contrast inverts between them: "
                         "adapt one model per polarity")
    polarity = next(iter(polarities - {None}), None)
    out = Path(args.out)
    settings = AdaptSettings(
        nm_per_px=args.nm_per_px,
        radius_nm=args.radius_nm,
        background_margin_nm=args.background_margin_nm,
        n_background=args.background_prototypes,
        fine_tune_steps=args.fine_tune_steps,
        prototypes_per_class=args.prototypes_per_class,
        centre_features=args.centre_features,
        centre_prior_nm2=args.centre_prior_nm2,
        calibrate=not args.no_calibrate,
        strict_background=args.strict_background,
        **({} if args.contrast_fraction is None else {"contrast_fraction": args.contrast_fraction}),
        seed=args.seed,
    )
    model, info, report = adapt_model(base, examples, classes, settings, name=args.name or out.stem,
                                      surface=args.surface)
    provenance = {
        **dict(info.provenance),
        "method": "prototypes from labelled examples"
        + (" + head fine-tuning" if report.get("fine_tune_steps") else ""),
        "base_model": {"id": base.info.id, "name": base.info.name, "path": str(base_path)},
        "images": provenance_images,
        "bias_polarity": polarity,
        "feature_centring": {"prior_nm2": args.centre_prior_nm2} if args.centre_features else None,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    saved = save_model(model, replace(info, provenance=provenance), out)
    n_protos = len(info.prototypes.labels) if info.prototypes is not None else 0
    print(f"wrote {out}: model {saved.name} [{saved.id}], classes {', '.join(saved.classes)}, "
          f"{n_protos} prototypes, {saved.nm_per_px:g} nm/px"
          + (f" (measured feature size {report['feature_size_nm']:g} nm)" if report.get("feature_size_nm")
             and not args.nm_per_px else "")
          + (f", bias {polarity}" if polarity else "")
          + (", features centred per frame" if args.centre_features else ""))
    gate = report.get("contrast", {}).get("gate")
    if gate:
        unit = report["contrast"]["unit"]
        print("contrast gate (fainter detections are not reported): "
              + ", ".join(f"{c} {v:.3g} {unit}" for c, v in sorted(gate.items())))
    return 0
