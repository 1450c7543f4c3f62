"""Teach-in on simulated frames: what clicks on one frame do to the next frames, against the model without them.

For each seed: simulate a 20 nm, 200 px frame, click (the simulator's truth
positions) the first N features of one class, adapt the bundled ``si001-ash3``
with :func:`stm_live.viewer.teach.adapt_from_support` (what the page's Teach
runs), and compare the base model and the taught one on another frame of the
same surface (seed + 100): found / true / false per class, matched within
0.5 nm (``stm-live evaluate``'s rule). Two cases:

* Ge(001) frames, every ad-dimer clicked as ``ad_dimer`` (a class the Si(001)
  model does not have);
* Si(001) frames, two dangling bonds clicked (a class it has): what naming a
  few features costs the classes not clicked.

Usage: ``python benchmarks/eval_teach.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from stm_live.model.evaluate import match_class
from stm_live.model.format import save_model
from stm_live.model.prototypes import Point
from stm_live.model.runtime import SegmentationModel, bundled_model_path
from stm_live.sim import simulate_scan
from stm_live.viewer.teach import SupportFrame, TeachSettings, adapt_from_support


def run(base: SegmentationModel, surface: str, clicked: str, seeds: tuple[int, ...], clicks: int,
        folder: Path) -> dict[str, dict[str, list[int]]]:
    totals: dict[str, dict[str, list[int]]] = {"base": {}, "taught": {}}
    for seed in seeds:
        first = simulate_scan(surface, size_nm=20, pixels=200, seed=seed)
        points = tuple(Point(i.x_nm, i.y_nm, i.class_name) for i in first.instances if i.class_name == clicked)
        support = SupportFrame("f", folder / "f.npy", "-", 20.0, 20.0, points=points[:clicks])
        model, info = adapt_from_support(base, [(first.frame("Z"), support)], TeachSettings())
        save_model(model, info, folder / "taught.onnx")
        taught = SegmentationModel(folder / "taught.onnx", provider="cpu")
        nxt = simulate_scan(surface, size_nm=20, pixels=200, seed=seed + 100)
        for label, m in (("base", base), ("taught", taught)):
            seg = m.segment(nxt.frame("Z"))
            for c in sorted({i.class_name for i in nxt.instances}):
                true = [(i.x_nm, i.y_nm) for i in nxt.instances if i.class_name == c]
                found = [(d.x_nm, d.y_nm) for d in seg.detections if d.class_name == c]
                s = match_class(found, true, max_dist_nm=0.5)
                t = totals[label].setdefault(c, [0, 0, 0])
                t[0], t[1], t[2] = t[0] + s.tp, t[1] + len(true), t[2] + s.fp
    return totals


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    base = SegmentationModel(bundled_model_path("si001-ash3"), provider="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        out = {
            "ge001, every ad_dimer clicked": run(base, "ge001", "ad_dimer", (3, 7, 8), 99, Path(tmp)),
            "si001-ash3, two dangling bonds clicked": run(base, "si001-ash3", "dangling_bond", (5, 7, 9), 2,
                                                          Path(tmp)),
        }
    for case, totals in out.items():
        print(case)
        for label, per_class in totals.items():
            print(f"  {label:7s} " + "  ".join(f"{c} {f}/{t} found, {fp} false" for c, (f, t, fp) in per_class.items()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
