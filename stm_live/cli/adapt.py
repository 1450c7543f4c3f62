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
name). Give --image once per labelled image, each with its own --points or --mask.
With --centre-features the new model centres each frame on its own features' mean
embedding before it decides which class a feature is, so that what a tip change does to
every feature alike cancels (docs/model.md says when that helps).
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="M",
                        help="model or bare encoder to start from (file, or a bundled name such as base-encoder)")
    parser.add_argument("--image", required=True, action="append", metavar="IMG", help="labelled scan (repeatable)")
    labels = parser.add_mutually_exclusive_group(required=True)
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
                        help="pixel pitch the new model runs at (default: the base model's); pick it so the "
                        "lattice period spans about 4-6 px")
    parser.add_argument("--radius-nm", type=float, default=0.4, help="radius labelled around each point (nm)")
    parser.add_argument("--background-margin-nm", type=float, default=1.2,
                        help="pixels this far from every point are background candidates (nm)")
    parser.add_argument("--background-prototypes", type=int, default=4, help="k-means clusters for the background")
    parser.add_argument("--fine-tune-steps", type=int, default=0,
                        help="optionally refine the prototypes by this many gradient steps (head only)")
    parser.add_argument("--centre-features", action="store_true",
                        help="classify features after centring each frame on its features' mean embedding")
    parser.add_argument("--centre-prior-nm2", type=float, default=2.5, metavar="A",
                        help="with --centre-features: a frame's feature mean is pulled towards the labelled "
                        "images' with the weight of "
                        "this much feature area (nm^2), so that a frame or live window with few features is "
                        "classified nearly as without centring")
    parser.add_argument("--seed", type=int, default=0)


def read_points(path: Path) -> list:
    """Points from a CSV with header ``x_nm,y_nm,class``; errors name the file and line."""
    from ..model.prototypes import Point

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            if not {"x_nm", "y_nm", "class"} <= set(fields):
                raise AdaptError(f"{path}: expected a CSV header x_nm,y_nm,class, found {','.join(fields) or 'none'}")
            points = []
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                try:
                    x, y = float(row["x_nm"]), float(row["y_nm"])
                except ValueError:
                    raise AdaptError(
                        f"{path}:{line}: x_nm/y_nm must be numbers, got {row['x_nm']!r}, {row['y_nm']!r}"
                    ) from None
                if not row["class"]:
                    raise AdaptError(f"{path}:{line}: empty class name")
                points.append(Point(x, y, row["class"]))
    except FileNotFoundError:
        raise AdaptError(f"{path}: points file not found") from None
    if not points:
        raise AdaptError(f"{path}: no points")
    return points


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from ..io import read_frame
    from ..model.format import ModelInfo, attach_head, load_onnx, save_model
    from ..model.prepare import to_model_grid
    from ..model.prototypes import (
        LabelledImage,
        feature_centring,
        labels_from_points,
        prototypes_from_labels,
        refine_prototypes,
    )
    from ..model.runtime import SegmentationModel
    from .segment import resolve_model_path

    label_files = args.points or args.mask
    if len(label_files) != len(args.image):
        raise AdaptError(
            f"{len(args.image)} --image but {len(label_files)} --{'points' if args.points else 'mask'}: "
            "give one label file per image"
        )
    if args.mask and not args.classes:
        raise AdaptError("--mask needs --classes a,b,... naming mask values 1, 2, ...")
    if args.centre_features and not args.centre_prior_nm2 > 0:
        raise AdaptError(f"--centre-prior-nm2 must be positive, got {args.centre_prior_nm2}")
    base_path = resolve_model_path(args.model)
    base = SegmentationModel(base_path, provider="cpu")
    info: ModelInfo = base.info
    if args.nm_per_px:
        info = replace(info, nm_per_px=args.nm_per_px)

    if args.points:
        all_points = [read_points(Path(p)) for p in args.points]
        classes = list(dict.fromkeys(p.class_name for pts in all_points for p in pts if p.class_name != "background"))
    else:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise AdaptError("no feature class among the labels (only background?)")

    images = []
    provenance_images = []
    for i, image_path in enumerate(map(Path, args.image)):
        frame = read_frame(image_path, channel=args.channel, direction=args.direction,
                           width_nm=args.width_nm, height_nm=args.height_nm)
        embedding, prepared = base.embed(frame, nm_per_px=info.nm_per_px)
        h, w = prepared.shape
        # Rows not acquired are not part of the model input (partial frames).
        rows = frame.valid_rows
        pitch = (info.nm_per_px, info.nm_per_px)
        if args.points:
            points = all_points[i]
            shifted = [replace(p, y_nm=p.y_nm - rows.start * frame.nm_per_px[1]) for p in points]
            labels = labels_from_points(shifted, classes, shape=(h, w), nm_per_px=pitch, radius_nm=args.radius_nm,
                                        background_margin_nm=args.background_margin_nm)
            label_desc = {"points": len(points), "points_file": str(args.points[i])}
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
            if mask.max() > len(classes) or mask.min() < 0:
                raise AdaptError(f"{mask_path}: mask values {int(mask.min())}..{int(mask.max())}, but only "
                                 f"{len(classes)} --classes (values 0..{len(classes)})")
            mask = mask[rows]
            labels = to_model_grid(mask, (h, w), nm_per_px=frame.nm_per_px,
                                   target_nm_per_px=info.nm_per_px).astype(np.int16)
            label_desc = {"mask_file": str(mask_path), "labelled_pixels": int((mask > 0).sum())}
        images.append(LabelledImage(embedding, labels))
        provenance_images.append({"path": str(image_path), "sha256": _sha256(image_path), **label_desc})
        counts = {c: int((labels == k).sum()) for k, c in enumerate(classes, start=1)}
        log.info("%s: labelled model pixels per class %s, background %d", image_path, counts, int((labels == 0).sum()))

    prototypes = prototypes_from_labels(images, len(classes), n_background=args.background_prototypes, seed=args.seed)
    if args.fine_tune_steps:
        prototypes = refine_prototypes(prototypes, images, steps=args.fine_tune_steps, seed=args.seed)
    if args.centre_features:
        prior_px = args.centre_prior_nm2 / info.nm_per_px**2
        prototypes = replace(prototypes, centring=feature_centring(images, prototypes, prior_px=prior_px))
    out = Path(args.out)
    # Real features are often ragged: pieces of one class within a feature's diameter
    # are one feature, and specks far smaller than a labelled disc are noise.
    disc_nm2 = float(np.pi * args.radius_nm**2)
    detection = (
        {"merge_within_nm": 2 * args.radius_nm, "min_area_nm2": {c: round(0.15 * disc_nm2, 4) for c in classes}}
        if args.points
        else {}
    )
    new_info = replace(
        info,
        detection=detection,
        name=args.name or out.stem,
        classes=tuple(classes),
        surface=args.surface or info.surface,
        prototypes=prototypes,
        provenance={
            "method": "prototypes from labelled examples" + (" + head fine-tuning" if args.fine_tune_steps else ""),
            "base_model": {"id": base.info.id, "name": base.info.name, "path": str(base_path)},
            "images": provenance_images,
            "radius_nm": args.radius_nm if args.points else None,
            "feature_centring": {"prior_nm2": args.centre_prior_nm2} if args.centre_features else None,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    model = attach_head(load_onnx(base_path), prototypes)
    saved = save_model(model, new_info, out)
    print(f"wrote {out}: model {saved.name} [{saved.id}], classes {', '.join(saved.classes)}, "
          f"{len(prototypes.labels)} prototypes, {saved.nm_per_px:g} nm/px"
          + (", features centred per frame" if args.centre_features else ""))
    return 0
