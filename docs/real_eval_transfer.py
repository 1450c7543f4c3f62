"""Figure of docs/real_eval.md "Zero-shot transfer": real Si(001):H crops beside simulated ones.

Top row: 20 x 20 nm of the two real frames' dev regions (the clean frame's B1, the PH3 frame's
P1) and of simulated 100 nm / 512 px frames without and with ``Realism.si001h()``, each levelled
the model's way with its own grey scale. Bottom row (with ``--models``): the same crops with the
detections of the given models (red dangling bonds, blue vacancies, yellow AsH3). Reads the real
arrays in place (../shared/data/real-npy); writes docs/real_eval_transfer.png.

Usage: python docs/real_eval_transfer.py [--models si001-ash3 CANDIDATE.onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stm_live.io import read_frame
from stm_live.level import level_frame
from stm_live.model.runtime import SegmentationModel, bundled_model_path
from stm_live.sim import Realism, simulate_scan

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real-npy"
CROPS = [  # (title, source, x0 nm, y0 nm)
    ("real, clean frame (B1)", "si001h_brockley_23_2_0", 58.0, 6.0),
    ("real, PH3 frame (P1)", "si001h_ph3_paddington_24_2_0", 62.0, 27.0),
    ("simulated, plain", "plain", 40.0, 40.0),
    ("simulated, Realism.si001h()", "realism", 40.0, 40.0),
]
SIDE_NM, SCALE = 20.0, 4
COLOURS = {"dangling_bond": (255, 60, 60), "dimer_vacancy": (60, 170, 255), "AsH3": (255, 220, 0)}


def frames() -> dict[str, object]:
    out: dict[str, object] = {}
    for _, source, _, _ in CROPS:
        if source == "plain":
            out[source] = simulate_scan("si001-ash3", size_nm=100.0, pixels=512, seed=4).frame("Z")
        elif source == "realism":
            out[source] = simulate_scan("si001-ash3", size_nm=100.0, pixels=512, seed=4,
                                        realism=Realism.si001h()).frame("Z")
        else:
            out[source] = read_frame(REAL / f"{source}.npy", width_nm=100.0)
    return out


def panel(frame: object, x0: float, y0: float, detections: list | None) -> Image.Image:
    z = level_frame(frame.data)  # type: ignore[attr-defined]
    px = frame.nm_per_px[0]  # type: ignore[attr-defined]
    r0, c0, n = int(y0 / px), int(x0 / px), int(SIDE_NM / px)
    crop = z[r0:r0 + n, c0:c0 + n]
    lo, hi = np.percentile(crop, [0.5, 99.7])
    grey = (np.clip((crop - lo) / max(hi - lo, 1e-30), 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(grey).resize((n * SCALE, n * SCALE), Image.NEAREST).convert("RGB")
    if detections is not None:
        d = ImageDraw.Draw(img)
        k = SCALE / px
        for det in detections:
            x, y = (det.x_nm - x0) * k, (det.y_nm - y0) * k
            if 0 <= x < img.width and 0 <= y < img.height:
                d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=COLOURS.get(det.class_name, (0, 255, 0)), width=2)
    return img


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[])
    parser.add_argument("--out", default=str(REPO / "docs" / "real_eval_transfer.png"))
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"skipped: {REAL} is not there", file=sys.stderr)
        return 0
    data = frames()
    rows = [[panel(data[s], x0, y0, None) for _, s, x0, y0 in CROPS]]
    for name in args.models:
        model = SegmentationModel(bundled_model_path(name) if "/" not in name else name, provider="cpu")
        dets = {s: list(model.segment(data[s]).detections) for _, s, _, _ in CROPS}  # type: ignore[arg-type]
        rows.append([panel(data[s], x0, y0, dets[s]) for _, s, x0, y0 in CROPS])
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (len(CROPS) * (w + 6), len(rows) * (h + 6)), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            sheet.paste(im.resize((w, h), Image.NEAREST), (j * (w + 6), i * (h + 6)))
    sheet.save(args.out)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
