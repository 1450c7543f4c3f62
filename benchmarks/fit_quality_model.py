"""Fit the learned frame-quality combination on the dev part of the tip-state images; write its coefficients.

Writes ``stm_live/quality/learned.py``: 6 means, 6 scales, a 7 x 3 weight matrix
and two thresholds (no image, crop or array of the data). Deterministic:
plain gradient descent from zeros. ``benchmarks/eval_quality.py`` checks that
a fresh fit gives the shipped numbers.

Usage::

    python benchmarks/fit_quality_model.py
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_quality import DATA, REPO, fit_model, judge_part


def main() -> int:
    split = json.loads((REPO / "benchmarks" / "tip_state_split.json").read_text())
    with open(DATA / "labels.csv", newline="") as f:
        label = {r["file"]: r["label"] for r in csv.DictReader(f)}
    dev = judge_part(split["dev"], method="thresholds")
    model = fit_model(dev, [label[n] for n in split["dev"]])
    rounded = {k: (v if k in ("features", "classes") else json.loads(json.dumps(v))) for k, v in model.items()}
    text = (
        '"""The learned frame-quality combination (written by ``benchmarks/fit_quality_model.py``; do not edit).\n\n'
        "Multinomial logistic regression over :data:`stm_live.quality.frame.FEATURE_NAMES`, fitted on the\n"
        "``dev`` part of ``../shared/data/tip-state`` (real H:Si(100) images with crowd labels, GPL-3.0;\n"
        "split in ``benchmarks/tip_state_split.json``). Only these coefficients are kept: no image, crop\n"
        "or array of the data. Thresholds: 10 false alarms per 100 good dev images for each verdict.\n"
        '"""\n\nfrom __future__ import annotations\n\nfrom typing import Any\n\n'
        f"MODEL: dict[str, Any] = {json.dumps(rounded, indent=4)}\n"
    )
    (REPO / "stm_live" / "quality" / "learned.py").write_text(text)
    print(f"wrote stm_live/quality/learned.py from {len(dev)} dev images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
