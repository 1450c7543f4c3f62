"""Figures of docs/real_eval.md: what each labelled class looks like (crops of dev-region features).

Writes docs/real_eval_overlay.png (zero-shot and two 3-shot detections on two test regions:
circles, red dangling bonds, blue vacancies, yellow other classes; crosses and lines the
labels) and docs/real_eval_classes.png: per class, five crops centred on labelled
features of the dev regions (levelled, each crop's own grey scale, enlarged),
the mark drawn (a cross, or the two ends of an elongated feature), and for
contrast two ambiguous marks. Needs ../shared/data beside the checkout.

Usage: python eval/real/figures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stm_live.io import read_frame
from stm_live.level import level_frame
from stm_live.model.labels import read_label_set

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data"
ROWS = [  # label file, class, crop size (nm), how many, ambiguous?
    ("si001h_brockley_23_2_0", "dangling_bond", 5.0, 3, False),
    ("si001h_ph3_paddington_24_2_0", "dangling_bond", 5.0, 2, False),
    ("si001h_brockley_23_2_0", "dimer_vacancy", 5.0, 3, False),
    ("si001h_ph3_paddington_24_2_0", "dimer_vacancy", 5.0, 2, False),
    ("si001h_brockley_23_2_0", "dimer_vacancy", 5.0, 2, True),
    ("si001h_ph3_paddington_24_2_0", "dangling_bond", 5.0, 2, True),
    ("tio2_110_m70", "bright_spot", 2.0, 4, False),
    ("tio2_110_m70", "bright_spot", 2.0, 2, True),
]
CELL = 120


def crop(z: np.ndarray, pitch: float, x: float, y: float, size: float) -> tuple[Image.Image, float, int, int]:
    half = round(size / 2 / pitch)
    r, c = int(y / pitch), int(x / pitch)
    r0, c0 = max(r - half, 0), max(c - half, 0)
    window = z[r0:r0 + 2 * half, c0:c0 + 2 * half]
    lo, hi = np.percentile(window, [1, 99.5])
    grey = (np.clip((window - lo) / max(hi - lo, 1e-30), 0, 1) * 255).astype(np.uint8)
    scale = CELL / (2 * half)
    return Image.fromarray(grey).resize((CELL, CELL), Image.NEAREST).convert("RGB"), scale, r0, c0


def overlay(out: Path) -> None:
    """docs/real_eval_overlay.png: zero-shot si001-ash3, and it and the base encoder adapted from 3 clicks."""
    from stm_live.model.adapt import AdaptSettings, adapt_model
    from stm_live.model.format import save_model
    from stm_live.model.real_eval import load_scan, support_draw
    from stm_live.model.runtime import SegmentationModel, bundled_model_path

    sys.path.insert(0, str(HERE))
    from render import render

    scans = [load_scan(read_label_set(HERE / f"{n}.json"), DATA)
             for n in ("si001h_brockley_23_2_0", "si001h_ph3_paddington_24_2_0")]
    support = support_draw(scans, ["dangling_bond", "dimer_vacancy"], 3, np.random.default_rng(3000))
    models = {"zero-shot si001-ash3": SegmentationModel(provider="cpu")}
    for start in ("si001-ash3", "base-encoder"):  # the same clicks, adapt's defaults (the contrast gate included)
        base = SegmentationModel(bundled_model_path(start), provider="cpu")
        proto, info, _ = adapt_model(base, support, ["dangling_bond", "dimer_vacancy"], AdaptSettings())
        path = Path("/tmp") / f"stm-live-real-eval-3shot-{start}.onnx"
        save_model(proto, info, path)
        models[f"3-shot {start}"] = SegmentationModel(path, provider="cpu")
    scan = scans[1]
    box = (0.0, 50.0, 50.0, 75.0)
    labels = json.loads(Path(scan.labels.path).read_text())
    labels["regions"] = [r for r in labels["regions"] if r["id"] in ("P3", "P5")]
    pitch = scan.frame.nm_per_px[0]
    z = level_frame(scan.frame.data)
    panels = []
    for title, model in models.items():
        img = render(z, pitch, box, 4, 5.0, labels)
        d = ImageDraw.Draw(img)
        for det in model.segment(scan.frame).detections:
            if box[0] <= det.x_nm < box[2] and box[1] <= det.y_nm < box[3]:
                x, y = (det.x_nm / pitch - int(box[0] / pitch)) * 4, (det.y_nm / pitch - int(box[1] / pitch)) * 4
                colour = {"dangling_bond": (255, 60, 60), "dimer_vacancy": (60, 170, 255)}.get(det.class_name,
                                                                                            (255, 255, 0))
                d.ellipse([x - 10, y - 10, x + 10, y + 10], outline=colour, width=2)
        d.text((6, img.height - 14), title, fill=(255, 255, 0))
        panels.append(img)
    sheet = Image.new("RGB", (panels[0].width, sum(p.height for p in panels) + 4), (255, 255, 255))
    y = 0
    for p in panels:
        sheet.paste(p, (0, y))
        y += p.height + 4
    sheet.save(out)
    print(out)


def main() -> int:
    if not DATA.is_dir():
        print(f"{DATA} is not there", file=sys.stderr)
        return 1
    rows = []
    for stem, cls, size, n, ambiguous in ROWS:
        labels = read_label_set(HERE / f"{stem}.json")
        frame = read_frame(DATA / labels.image, width_nm=labels.width_nm)
        z = level_frame(frame.data)
        pitch = frame.nm_per_px[0]
        feats = [f for r in labels.regions_of("dev") for f in labels.features_in(r)
                 if f.class_name == cls and f.ambiguous == ambiguous]
        cells = []
        for f in feats[:n]:
            img, scale, r0, c0 = crop(z, pitch, f.x_nm, f.y_nm, size)
            d = ImageDraw.Draw(img)

            def px(x: float, y: float, scale: float = scale, r0: int = r0, c0: int = c0,
                   pitch: float = pitch) -> tuple[float, float]:
                return (x / pitch - c0) * scale, (y / pitch - r0) * scale

            colour = (170, 170, 170) if ambiguous else (255, 60, 60) if cls != "dimer_vacancy" else (60, 170, 255)
            if f.ends_nm:
                d.line([*px(*f.ends_nm[0]), *px(*f.ends_nm[1])], fill=colour, width=2)
            x, y = px(f.x_nm, f.y_nm)
            d.line([x - 6, y, x + 6, y], fill=colour, width=2)
            d.line([x, y - 6, x, y + 6], fill=colour, width=2)
            cells.append(img)
        title = f"{cls}{' (ambiguous)' if ambiguous else ''} - {stem}, {size:g} nm crops"
        rows.append((title, cells))
    width = 5 * (CELL + 4) + 4
    height = sum(CELL + 22 for _ in rows) + 4
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    y = 4
    for title, cells in rows:
        d.text((4, y), title, fill=(0, 0, 0))
        for i, img in enumerate(cells):
            sheet.paste(img, (4 + i * (CELL + 4), y + 16))
        y += CELL + 22
    out = REPO / "docs" / "real_eval_classes.png"
    sheet.save(out)
    print(out)
    overlay(REPO / "docs" / "real_eval_overlay.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

