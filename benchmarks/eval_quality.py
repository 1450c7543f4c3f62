"""Frame quality on real images: ``stm-live quality``'s verdicts against crowd labels of tip states.

Uses ``../shared/data/tip-state`` (real H:Si(100) images, GPL-3.0: evaluation
only; nothing of it is written into the repository) with the split fixed in
``benchmarks/tip_state_split.json`` before any development: ``dev`` was used
to design the evidence and choose :data:`stm_live.quality.frame.THRESHOLDS`,
``holdout`` is evaluated once at the end. Nothing is fitted here: the
learned combination is fitted on simulated frames only
(``benchmarks/fit_quality_model.py``).

Reported per part:

* ``tip_change`` recall: images labelled tip_change judged tip_change;
* ``bad`` recall: images labelled bad judged bad;
* false alarms per 100 good images, for each verdict (good judged
  tip_change; good judged bad);
* the confusion matrix;
* both ways of judging: the learned combination of the evidence numbers
  (the default, :mod:`stm_live.quality.learned`, written by
  ``benchmarks/fit_quality_model.py`` from simulated frames: multinomial
  logistic regression, each verdict's threshold at 10 false alarms per 100
  simulated good frames), and the hand-set thresholds it is measured against.

* with ``--calibrated``: the learned combination with its two thresholds
  calibrated (:mod:`stm_live.quality.calibrate`, 10 false alarms per 100)
  on the ``dev`` part's good images, standing in for a lab's own frames
  known to be good; the thresholds are computed here at evaluation time and
  written nowhere (on the ``dev`` part its good images are then in-sample).

Usage::

    python benchmarks/eval_quality.py --part dev --json dev.json
    python benchmarks/eval_quality.py --part holdout --json holdout.json
    python benchmarks/eval_quality.py --part holdout --calibrated
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stm_live.quality.frame import judge_frame, model_features

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tip-state"
LABELS = ("good", "bad", "tip_change")


def _grey(name: str) -> np.ndarray:
    with Image.open(DATA / "images" / name) as im:
        return np.asarray(im.convert("L"), dtype=np.float32)


def judge_part(names: list[str], method: str, calibration: dict[str, float] | None = None) -> list[dict[str, Any]]:
    out = []
    for name in names:
        v = judge_frame(_grey(name), method=method, calibration=calibration)
        out.append({"file": name, "verdict": v.verdict, "features": model_features(v.evidence).tolist()})
    return out


def scores(labels: list[str], verdicts: list[str]) -> dict[str, Any]:
    lab = np.array(labels)
    ver = np.array(verdicts)
    good = lab == "good"
    conf = {t: {p: int(np.sum((lab == t) & (ver == p))) for p in LABELS} for t in LABELS}
    return {
        "n": {t: int(np.sum(lab == t)) for t in LABELS},
        "tip_change_recall": round(float(np.mean(ver[lab == "tip_change"] == "tip_change")), 3),
        "bad_recall": round(float(np.mean(ver[lab == "bad"] == "bad")), 3),
        "good_called_tip_change_per_100": round(100.0 * float(np.mean(ver[good] == "tip_change")), 1),
        "good_called_bad_per_100": round(100.0 * float(np.mean(ver[good] == "bad")), 1),
        "confusion_true_by_predicted": conf,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("dev", "holdout"), required=True)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--calibrated", action="store_true",
                    help="also judge with thresholds calibrated on the dev part's good images")
    a = ap.parse_args(argv)
    if not (DATA / "labels.csv").is_file():
        print(f"{DATA} is missing: nothing to evaluate", file=sys.stderr)
        return 1
    split = json.loads((REPO / "benchmarks" / "tip_state_split.json").read_text())
    with open(DATA / "labels.csv", newline="") as f:
        label = {r["file"]: r["label"] for r in csv.DictReader(f)}
    names = split[a.part]
    labels = [label[n] for n in names]
    by_thresholds = judge_part(names, "thresholds")
    by_learned = judge_part(names, "learned")
    result = {
        "part": a.part,
        "learned_default": scores(labels, [r["verdict"] for r in by_learned]),
        "thresholds": scores(labels, [r["verdict"] for r in by_thresholds]),
    }
    if a.calibrated:
        from stm_live.quality.calibrate import calibrate

        good = [n for n in split["dev"] if label[n] == "good"]
        calibration = calibrate(_grey(n) for n in good)
        by_calibrated = judge_part(names, "learned", calibration={k: calibration[k] for k in ("tip_change", "bad")})
        result["learned_calibrated_on_dev_good"] = {"calibration": calibration,
                                                    **scores(labels, [r["verdict"] for r in by_calibrated])}
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
