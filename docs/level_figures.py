"""Before/after figures of levelling on the real images in ../shared/data/real-npy.

Writes ``docs/level_real_<name>.png``: the image as stored, then levelled by a
plain plane fit, by Gwyddion-style plane + median row alignment, by
:func:`stm_live.level.level_frame` (step-aware, the default) and line by line
by :class:`stm_live.level.LineLeveller` (rows in order, top row first), each
with its own robust grey scale (0.5 to 99.5 percentile). The arrays are read
in place and never copied; their licence allows evaluation only (see their
SOURCE.md).

Usage: python docs/level_figures.py [--data ../shared/data/real-npy] [--out docs]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from stm_live.level import level_frame, level_stream

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "real-npy"


def panels(raw: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Titles and images of one figure row."""
    return [
        ("as stored", raw),
        ("plane fit", level_frame(raw, method="plane")),
        ("plane + median rows (Gwyddion)", level_frame(raw, method="median")),
        ("level_frame (step-aware)", level_frame(raw)),
        ("LineLeveller (line by line)", level_stream(raw)),
    ]


def figure(name: str, raw: np.ndarray, out: Path) -> Path:
    items = panels(raw)
    fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items), 3.6), dpi=64)
    for ax, (title, img) in zip(axes, items, strict=True):
        lo, hi = np.percentile(img[np.isfinite(img)], [0.5, 99.5])
        ax.imshow(img, cmap="afmhot", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(f"{name} ({raw.shape[1]} x {raw.shape[0]} px)", fontsize=11)
    fig.tight_layout()
    path = out / f"level_real_{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    files = sorted(args.data.glob("*.npy"))
    if not files:
        raise SystemExit(f"no .npy files in {args.data}")
    for path in files:
        raw = np.load(path, allow_pickle=False)
        print(figure(path.stem, raw, args.out))


if __name__ == "__main__":
    main()
