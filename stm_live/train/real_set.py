"""The hand-labelled real images as an evaluation set of ``stm-live train``'s comparison.

``eval/real/*.json`` (``docs/real_eval.md``) mark every feature of chosen regions of real
frames; the frames themselves live outside the repository (``../shared/data``). A new
surface model and the one it would replace are both segmented on those frames, zero-shot,
and scored in the **dev** regions with the rule of :mod:`stm_live.model.labels`: object F1
for each label class the model has, and false detections per 100 nm^2 (reported in the
detail, not compared: a lower count is better, and an F1 drop already shows it). The test
regions stay untouched: no training choice is made on them.

The set applies where it can be measured and is left out, with one log line, where it
cannot: a bare encoder (k-shot adaptation on the real frames takes minutes per draw; its
episodes stay on simulated frames), a model with none of the labelled classes, no label
files (an installed package without the repository) or no images.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .compare import SetScores

__all__ = ["DATA_ROOT_ENV", "RealLabelled", "real_labelled_set"]

log = logging.getLogger(__name__)

#: The repository's label files (absent from an installed package).
LABELS_DIR = Path(__file__).resolve().parents[2] / "eval" / "real"
#: Environment variable naming the folder that holds ``real-npy/`` (default ``../shared/data``
#: beside the repository).
DATA_ROOT_ENV = "STM_LIVE_REAL_DATA"


@dataclass(frozen=True)
class RealLabelled:
    """Zero-shot object F1 per label class in the dev regions of hand-labelled real frames."""

    label_files: tuple[Path, ...]
    data_root: Path
    classes: tuple[str, ...]
    split: str = "dev"

    @property
    def name(self) -> str:
        return f"real labelled {', '.join(p.stem for p in self.label_files)} ({self.split} regions)"

    def score(self, model: Path) -> SetScores:
        from ..model.labels import read_label_set
        from ..model.real_eval import load_scan, score_detections
        from ..model.runtime import SegmentationModel

        loaded = SegmentationModel(model, provider="cpu")
        scans = [load_scan(read_label_set(p), self.data_root) for p in self.label_files]
        detections = {s.labels.path: list(loaded.segment(s.frame).detections) for s in scans}
        report = score_detections(detections, scans, self.split, classes=list(self.classes)).to_dict()
        values = {f"real {c} F1": float(s["f1"]) for c, s in report["classes"].items()}
        return SetScores(values, {"split": self.split, **report})


def real_labelled_set(
    name: str, classes: tuple[str, ...], *, labels_dir: Path | None = None, data_root: Path | None = None,
) -> RealLabelled | None:
    """The real labelled set for a model called ``name`` with ``classes``, or None where it does not apply.

    A :data:`stm_live.train.compare.SetFactory`. ``data_root``: the folder holding the
    images named in the label files (default ``$STM_LIVE_REAL_DATA``, else
    ``../shared/data`` beside the repository).
    """
    from ..errors import LabelError
    from ..model.labels import read_label_set

    if not classes:
        log.info("%s: a bare encoder; the real labelled set is not scored for it (episodes on simulated frames)",
                 name)
        return None
    folder = labels_dir if labels_dir is not None else LABELS_DIR
    if data_root is None:
        env = os.environ.get(DATA_ROOT_ENV)
        data_root = Path(env) if env else LABELS_DIR.parents[2] / "shared" / "data"
    files: list[Path] = []
    common: set[str] = set()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            labels = read_label_set(path)
        except LabelError as exc:
            log.warning("real labelled set: %s; left out", exc)
            continue
        shared = set(labels.classes) & set(classes)
        if not shared:
            continue
        if not (data_root / labels.image).is_file():
            log.info("%s: the real labelled set is not scored: %s is not under %s (set %s)", name, labels.image,
                     data_root, DATA_ROOT_ENV)
            return None
        files.append(path)
        common |= shared
    if not files:
        return None
    return RealLabelled(tuple(files), data_root, tuple(c for c in classes if c in common))
