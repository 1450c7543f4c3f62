"""Render levelled, enlarged crops of the real images with a nm grid, for labelling by eye.

Labels are made by looking: this tool draws a crop (levelled the way the
model levels, contrast from the crop's own percentiles, enlarged with
nearest-neighbour pixels) with grid lines every ``--grid-nm`` nm, labelled in
nm from the image's top-left corner, and, with ``--labels``, the features
already marked in a label file (class colour; a cross at the point; a line
for an elongated feature; ambiguous ones dashed grey) and the regions. The
PNGs are for the labeller's eyes only and are written outside the repository
(the images carry no licence for redistribution).

Usage::

    python eval/real/render.py si001h_brockley_23_2_0 --box 10 10 35 35 --scale 6 --out /tmp/crop.png \
        [--labels eval/real/si001h_brockley_23_2_0.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stm_live.io import read_frame
from stm_live.level import level_frame

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real-npy"
COLOURS = {
    "dangling_bond": (255, 60, 60),
    "dimer_vacancy": (60, 170, 255),
    "contamination": (255, 200, 0),
    "bright_spot": (255, 60, 60),
}


def load(name: str, width_nm: float) -> tuple[np.ndarray, float]:
    """The levelled image (display orientation) and its pitch, nm/px."""
    frame = read_frame(REAL / f"{name}.npy", width_nm=width_nm)
    return level_frame(frame.data), frame.nm_per_px[0]


def render(z: np.ndarray, pitch: float, box: tuple[float, float, float, float], scale: int, grid_nm: float,
           labels: dict | None, invert: bool = False, global_contrast: bool = False) -> Image.Image:
    x0, y0, x1, y1 = box
    c0, r0 = max(int(x0 / pitch), 0), max(int(y0 / pitch), 0)
    c1, r1 = min(int(np.ceil(x1 / pitch)), z.shape[1]), min(int(np.ceil(y1 / pitch)), z.shape[0])
    crop = z[r0:r1, c0:c1]
    lo, hi = np.percentile(z if global_contrast else crop, [0.5, 99.8])
    grey = np.clip((crop - lo) / max(hi - lo, 1e-30), 0, 1)
    if invert:
        grey = 1 - grey
    rgb = np.repeat((grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    img = Image.fromarray(rgb).resize(((c1 - c0) * scale, (r1 - r0) * scale), Image.NEAREST)
    d = ImageDraw.Draw(img)

    def to_px(x_nm: float, y_nm: float) -> tuple[float, float]:
        return (x_nm / pitch - c0) * scale, (y_nm / pitch - r0) * scale

    g = np.ceil(x0 / grid_nm) * grid_nm
    while g <= x1:
        px, _ = to_px(g, 0)
        d.line([px, 0, px, img.height], fill=(0, 255, 0) if round(g / grid_nm) % 5 == 0 else (0, 110, 0), width=1)
        d.text((px + 2, 2), f"{g:g}", fill=(0, 255, 0))
        g += grid_nm
    g = np.ceil(y0 / grid_nm) * grid_nm
    while g <= y1:
        _, py = to_px(0, g)
        d.line([0, py, img.width, py], fill=(0, 255, 0) if round(g / grid_nm) % 5 == 0 else (0, 110, 0), width=1)
        d.text((2, py + 2), f"{g:g}", fill=(0, 255, 0))
        g += grid_nm
    if labels:
        for reg in labels.get("regions", []):
            a, b = to_px(reg["x0_nm"], reg["y0_nm"])
            c, e = to_px(reg["x1_nm"], reg["y1_nm"])
            d.rectangle([a, b, c, e], outline=(255, 0, 255), width=2)
            d.text((a + 3, b + 12), f"{reg['id']} ({reg['split']})", fill=(255, 0, 255))
        for e in labels.get("mask", {}).get("ellipses", []):
            a, b = to_px(e["x_nm"] - e["rx_nm"], e["y_nm"] - e["ry_nm"])
            c, f_ = to_px(e["x_nm"] + e["rx_nm"], e["y_nm"] + e["ry_nm"])
            d.ellipse([a, b, c, f_], outline=(170, 170, 170) if e.get("ambiguous") else (0, 255, 255), width=1)
        for f in labels.get("features", []):
            colour = (170, 170, 170) if f.get("ambiguous") else COLOURS.get(f["class"], (255, 255, 255))
            x, y = to_px(f["x_nm"], f["y_nm"])
            if "ends_nm" in f:
                (xa, ya), (xb, yb) = f["ends_nm"]
                d.line([*to_px(xa, ya), *to_px(xb, yb)], fill=colour, width=2)
            r = 5
            d.line([x - r, y, x + r, y], fill=colour, width=2)
            d.line([x, y - r, x, y + r], fill=colour, width=2)
            if f.get("ambiguous"):
                d.ellipse([x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r], outline=colour, width=1)
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="image stem in ../shared/data/real-npy")
    parser.add_argument("--width-nm", type=float, help="default: 10 for tio2*, 100 otherwise")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="crop, nm")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--grid-nm", type=float, default=1.0)
    parser.add_argument("--labels", help="label file to overlay")
    parser.add_argument("--invert", action="store_true")
    parser.add_argument("--global-contrast", action="store_true", help="grey scale from the whole image, not the crop")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not REAL.is_dir():
        print(f"{REAL} is not there", file=sys.stderr)
        return 1
    width = args.width_nm or (10.0 if args.name.startswith("tio2") else 100.0)
    z, pitch = load(args.name, width)
    box = tuple(args.box) if args.box else (0.0, 0.0, z.shape[1] * pitch, z.shape[0] * pitch)
    labels = json.loads(Path(args.labels).read_text()) if args.labels else None
    render(z, pitch, box, args.scale, args.grid_nm, labels, args.invert, args.global_contrast).save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
