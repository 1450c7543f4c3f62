"""Build the label files ``eval/real/*.json`` from the hand marks in ``eval/real/marks.txt``.

The marks were read by eye from enlarged, levelled crops (``render.py``). This
script only (1) assigns each mark to the region it lies in (a mark in no
region is an error), (2) moves the centre of a round feature marked by a
single point to the extremum of the lightly smoothed image within a small
radius of the hand mark (the brightest pixel for bright features, the darkest
for vacancies; a reading off a 6x enlarged grid is good to 1-2 px), keeping
the hand position in ``hand_nm``, and (3) writes the JSON. Elongated features
(two ends), contamination and ambiguous marks keep the hand position.

Regions and the dev / test split were fixed here before any model or
baseline was run on these images; the test regions are for scoring only.

Usage: python eval/real/build.py   (needs ../shared/data/real-npy beside the checkout)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from stm_live.io import read_frame
from stm_live.level import level_frame
from stm_live.model.labels import FORMAT, Region, file_sha256

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1].parent / "shared" / "data" / "real-npy"

CLASS_CODES = {"D": "dangling_bond", "V": "dimer_vacancy", "C": "contamination", "S": "bright_spot"}
SI_CLASSES = {
    "dangling_bond": "bright round protrusion 0.8-1.5 nm across, alone or in a small group, often with a dark halo "
                     "(on the PH3-dosed frame PH_x-related bright sites look alike and are included)",
    "dimer_vacancy": "dark pit or trench along the dimer rows, 0.6-4 nm long, often with a bright rim or streak "
                     "beside it; elongated ones are marked by their two ends",
    "contamination": "bright cluster larger than about 2 nm or a chain of bright blobs",
}
IMAGES = {
    "B": {
        "stem": "si001h_brockley_23_2_0", "width_nm": 100.0, "classes": SI_CLASSES, "match_radius_nm": 1.0,
        "snap_nm": 0.4, "sigma_px": 1.0,
        "regions": [Region("B1", "dev", 55, 5, 80, 30), Region("B2", "dev", 0, 62, 25, 87),
                    Region("B3", "test", 72, 30, 97, 53), Region("B4", "test", 28, 72, 53, 97)],
    },
    "P": {
        "stem": "si001h_ph3_paddington_24_2_0", "width_nm": 100.0, "classes": SI_CLASSES, "match_radius_nm": 1.0,
        "snap_nm": 0.4, "sigma_px": 1.0,
        "regions": [Region("P1", "dev", 60, 25, 85, 50), Region("P3", "test", 25, 50, 50, 75),
                    Region("P4", "test", 70, 60, 95, 85), Region("P5", "test", 0, 50, 25, 75)],
    },
    "T": {
        "stem": "tio2_110_m70", "width_nm": 10.0, "match_radius_nm": 0.3, "snap_nm": 0.1, "sigma_px": 3.0,
        "classes": {"bright_spot": "bright oval spot on a bright [001] row, about 0.5-0.9 x 0.35-0.5 nm (the "
                                   "brightest of the row features; dimmer spots are marked ambiguous)"},
        "regions": [Region("T1", "dev", 0, 0, 5, 10), Region("T2", "test", 5, 0, 10, 10)],
    },
}


def parse_marks(path: Path) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {k: [] for k in IMAGES}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            fields = line.split()
            out[fields[0]].append(fields[1:])
    return out


def snap(z: np.ndarray, pitch: float, x: float, y: float, radius_nm: float, bright: bool) -> tuple[float, float]:
    r = max(1, round(radius_nm / pitch))
    c, row = int(x / pitch), int(y / pitch)
    r0, r1 = max(row - r, 0), min(row + r + 1, z.shape[0])
    c0, c1 = max(c - r, 0), min(c + r + 1, z.shape[1])
    window = z[r0:r1, c0:c1] * (1 if bright else -1)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    window = np.where((yy - row) ** 2 + (xx - c) ** 2 <= r * r, window, -np.inf)
    i, j = np.unravel_index(int(np.argmax(window)), window.shape)
    return round((c0 + j + 0.5) * pitch, 3), round((r0 + i + 0.5) * pitch, 3)


def build(code: str, rows: list[list[str]]) -> dict:
    spec = IMAGES[code]
    path = REAL / f"{spec['stem']}.npy"
    frame = read_frame(path, width_nm=spec["width_nm"])
    pitch = frame.nm_per_px[0]
    z = ndimage.gaussian_filter(level_frame(frame.data).astype(np.float64), spec["sigma_px"])
    regions: list[Region] = spec["regions"]
    features, ellipses = [], []
    for fields in rows:
        cls = CLASS_CODES[fields[0]]
        ambiguous = fields[-1] == "?"
        nums = [float(v) for v in (fields[1:-1] if ambiguous else fields[1:])]
        x, y = nums[0], nums[1]
        if not any(r.contains(x, y) for r in regions):
            raise SystemExit(f"{spec['stem']}: mark {fields} lies in no region")
        feature: dict = {"class": cls, "x_nm": x, "y_nm": y}
        if code == "T":
            ellipses.append({"x_nm": x, "y_nm": y, "rx_nm": nums[2], "ry_nm": nums[3], "ambiguous": ambiguous})
        elif len(nums) == 6:
            feature["ends_nm"] = [[nums[2], nums[3]], [nums[4], nums[5]]]
        if "ends_nm" not in feature and cls != "contamination" and not ambiguous:
            sx, sy = snap(z, pitch, x, y, spec["snap_nm"], bright=cls != "dimer_vacancy")
            if any(r.contains(sx, sy) and r.contains(x, y) for r in regions):  # never across a region's edge
                feature.update(x_nm=sx, y_nm=sy, hand_nm=[x, y])
        feature["ambiguous"] = ambiguous
        features.append(feature)
    doc = {
        "format": FORMAT,
        "image": {"file": f"real-npy/{spec['stem']}.npy", "sha256": file_sha256(path),
                  "width_nm": spec["width_nm"], "height_nm": spec["width_nm"],
                  "rows": frame.rows, "cols": frame.cols},
        "bias_polarity": None,
        "classes": spec["classes"],
        "match_radius_nm": spec["match_radius_nm"],
        "edge_nm": 0.5 if code != "T" else 0.15,
        "labelled_by": "hand, by eye (eval/real/marks.txt); round single-point centres snapped within "
                       f"{spec['snap_nm']} nm to the local extremum (eval/real/build.py)",
        "regions": [{"id": r.id, "split": r.split, "x0_nm": r.x0_nm, "y0_nm": r.y0_nm,
                     "x1_nm": r.x1_nm, "y1_nm": r.y1_nm} for r in regions],
        "features": features,
    }
    if ellipses:
        doc["mask"] = {"class": "bright_spot", "ellipses": ellipses}
    return doc


def main() -> int:
    if not REAL.is_dir():
        print(f"{REAL} is not there", file=sys.stderr)
        return 1
    marks = parse_marks(HERE / "marks.txt")
    for code, rows in marks.items():
        doc = build(code, rows)
        out = HERE / f"{IMAGES[code]['stem']}.json"
        out.write_text(json.dumps(doc, indent=1) + "\n")
        n = len(doc["features"])
        amb = sum(f["ambiguous"] for f in doc["features"])
        print(f"{out.name}: {n} features ({amb} ambiguous), {len(doc['regions'])} regions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
