"""Few-shot adaptation on real images: adapt, segment, draw overlays (docs/adapt_*.png).

For each real image in ../shared/data/real-npy (read in place, never copied):
adapt the base encoder from the hand-labelled points in docs/adapt/*.csv
(labelled by looking at the image, not by any algorithm), segment the whole
image with the adapted model, and draw the image with the class map, the
detections (circles) and the labelled points (crosses). Writes
docs/adapt_<name>.png and docs/adapt_real.json (counts, model ids).

Usage: python docs/adapt_real.py [--encoder models/base-encoder.onnx] [--out docs] [--centre-features]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stm_live.cli import main as cli
from stm_live.cli.adapt import read_points
from stm_live.io import read_frame
from stm_live.level import level_frame
from stm_live.model.runtime import SegmentationModel

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real-npy"

# name, file, width (nm), model pitch (nm/px), points
CASES = [
    ("tio2_110_m70", "tio2_110_m70.npy", 10.0, 0.1, "tio2_110_m70_points.csv"),
    ("si001h_brockley", "si001h_brockley_23_2_0.npy", 100.0, 0.1, "si001h_brockley_points.csv"),
]
COLOURS = [(255, 80, 80), (80, 200, 255), (120, 255, 120), (255, 200, 60)]


def draw(frame, seg, points, classes, path: Path, scale: int) -> None:
    z = level_frame(frame.data)
    lo, hi = np.percentile(z, [1, 99.5])
    grey = np.clip((z - lo) / max(hi - lo, 1e-30), 0, 1) * 255
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for k in range(1, len(classes) + 1):
        sel = seg.class_map == k
        rgb[sel] = 0.6 * rgb[sel] + 0.4 * np.array(COLOURS[(k - 1) % len(COLOURS)])
    image = Image.fromarray(rgb.astype(np.uint8)).resize((frame.cols * scale, frame.rows * scale), Image.NEAREST)
    d = ImageDraw.Draw(image)
    px, py = frame.nm_per_px
    for det in seg.detections:
        x, y = det.x_nm / px * scale, det.y_nm / py * scale
        colour = COLOURS[classes.index(det.class_name) % len(COLOURS)]
        d.ellipse([x - 6 * scale, y - 6 * scale, x + 6 * scale, y + 6 * scale], outline=colour, width=2)
    for p in points:
        x, y = p.x_nm / px * scale, p.y_nm / py * scale
        d.line([x - 8, y, x + 8, y], fill=(255, 255, 0), width=2)
        d.line([x, y - 8, x, y + 8], fill=(255, 255, 0), width=2)
    image.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=str(REPO / "models" / "base-encoder.onnx"))
    parser.add_argument("--out", default=str(REPO / "docs"))
    parser.add_argument("--centre-features", action="store_true", help="adapt with --centre-features")
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"skipped: {REAL} is not there (../shared beside the checkout)", file=sys.stderr)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, filename, width_nm, pitch, points_file in CASES:
        image = REAL / filename
        points_path = REPO / "docs" / "adapt" / points_file
        model_path = Path("/tmp") / f"stm-live-adapt-{name}.onnx"
        rc = cli(["-q", "adapt", "--model", args.encoder, "--image", str(image), "--width-nm", str(width_nm),
                  "--points", str(points_path), "--nm-per-px", str(pitch), "--out", str(model_path),
                  "--name", f"{name}-adapted", *(["--centre-features"] if args.centre_features else [])])
        if rc:
            return rc
        model = SegmentationModel(model_path, provider="cpu")
        frame = read_frame(image, width_nm=width_nm)
        seg = model.segment(frame)
        points = read_points(points_path)
        draw(frame, seg, points, list(model.classes), out / f"adapt_{name}.png", scale=2 if frame.cols <= 512 else 1)
        counts = {c: sum(1 for d in seg.detections if d.class_name == c) for c in model.classes}
        summary[name] = {"image": filename, "width_nm": width_nm, "model_nm_per_px": pitch, "points": len(points),
                         "model": model.id, "encoder": model.info.provenance["base_model"]["id"],
                         "feature_centring": args.centre_features,
                         "detections": counts, "timings_ms": {k: round(v, 1) for k, v in seg.timings_ms.items()}}
        print(name, counts)
    (out / "adapt_real.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
