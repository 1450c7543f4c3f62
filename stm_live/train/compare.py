"""Before ``stm-live train`` replaces a model: the new one and the old one on the same data.

Every *evaluation set* scores any model file the same way (:class:`EvaluationSet`):
held-out simulated frames of the model's surface (:class:`SimulatedHeldOut`: object
F1 per class for a model with a head, few-shot episode accuracy for a bare
encoder), and whatever other sets are plugged in, such as a labelled set of real
images (:data:`EXTRA_SETS`). :func:`compare_models` scores the new model and the
one it would replace on each, and :class:`Comparison` says whether the new one is
worse: a score more than ``tolerance`` below the old one's, or a score the old
model has and the new one lacks (a class it does not find).

Pure but for reading the model files; no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "DEFAULT_TOLERANCE",
    "EXTRA_SETS",
    "Comparison",
    "EvaluationSet",
    "Row",
    "SetScores",
    "SimulatedHeldOut",
    "compare_models",
]

log = logging.getLogger(__name__)

#: Largest drop of a score (a fraction: 0.01 = 1 point of F1 or accuracy) that still lets a
#: new model replace an old one: the spread that retraining the same recipe may give.
DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class SetScores:
    """One model's scores on one evaluation set.

    ``values``: score name -> value, a fraction, higher is better (``"AsH3 F1"``,
    ``"3-shot accuracy"``); ``detail``: the evaluation's full report (JSON-able).
    """

    values: Mapping[str, float]
    detail: Mapping[str, Any] = field(default_factory=dict)


class EvaluationSet(Protocol):
    """Data on which any two models are scored alike (same frames, same matching rule)."""

    @property
    def name(self) -> str:
        """One line that says what the data is, for the comparison table."""
        ...

    def score(self, model: Path) -> SetScores:
        """Score the model file ``model``."""
        ...


#: Factories of further evaluation sets, tried for every compared model: given the model's
#: name and classes (empty for a bare encoder), a set to score it on, or None where the set
#: does not apply. ``train_models`` always tries the hand-labelled real frames
#: (:func:`stm_live.train.real_set.real_labelled_set`) first; append others here (or pass
#: them to ``train_models(extra_sets=...)``).
SetFactory = Callable[[str, tuple[str, ...]], "EvaluationSet | None"]
EXTRA_SETS: list[SetFactory] = []


@dataclass(frozen=True)
class SimulatedHeldOut:
    """Fresh simulated frames of one surface, seeds ``seed`` .. ``seed + count - 1``.

    A model with a head is scored by object F1 per class (``stm_live.model.evaluate``:
    a detection matches a true feature of its class within 0.5 nm, one to one); a bare
    encoder by few-shot episodes (1- and 3-shot nearest-prototype accuracy over 100
    episodes of the frames' instances).
    """

    surface: str
    count: int
    seed: int
    size_nm: float
    pixels: int

    @property
    def name(self) -> str:
        return (f"simulated {self.surface}, {self.count} frames {self.size_nm:g} nm / {self.pixels} px "
                f"(seeds {self.seed}-{self.seed + self.count - 1})")

    def score(self, model: Path) -> SetScores:
        from ..model.evaluate import evaluate_model
        from ..model.runtime import SegmentationModel

        loaded = SegmentationModel(model, provider="cpu")
        common: dict[str, Any] = dict(simulate=self.surface, count=self.count, seed=self.seed,
                                      size_nm=self.size_nm, pixels=self.pixels)
        if loaded.has_head:
            report = evaluate_model(loaded, episodes=0, **common)
            values = {f"{c} F1": float(s["f1"]) for c, s in report["objects"].items()}
            detail = {"objects": report["objects"], "pixel_iou": report["pixel_iou"], "frames": self.count,
                      "seed": self.seed, "size_nm": self.size_nm, "pixels": self.pixels}
            return SetScores(values, detail)
        report = evaluate_model(loaded, episodes=100, shots=(1, 3), **common)
        episodes = report.get("episodes", {})
        values = {f"{self.surface} {k} accuracy": float(v["accuracy_mean"])
                  for k, v in episodes.items() if "accuracy_mean" in v}
        return SetScores(values, {"episodes": episodes, "frames": self.count, "seed": self.seed})


@dataclass(frozen=True)
class Row:
    """One score of the comparison table: the new and the old model's values (None: not scored)."""

    set_name: str
    score: str
    new: float | None
    old: float | None

    @property
    def change(self) -> float | None:
        return None if self.new is None or self.old is None else self.new - self.old


@dataclass(frozen=True)
class Comparison:
    """A new model against the one it would replace, score by score."""

    name: str
    new_path: str
    old_path: str | None
    rows: tuple[Row, ...]
    tolerance: float = DEFAULT_TOLERANCE
    old_id: str | None = None
    new_id: str | None = None

    def regressions(self) -> list[Row]:
        """Scores where the new model is worse than the old by more than the tolerance, or missing."""
        return [r for r in self.rows if r.old is not None
                and (r.new is None or r.old - r.new > self.tolerance + 1e-9)]

    @property
    def new_is_worse(self) -> bool:
        return self.old_path is not None and bool(self.regressions())

    def reason(self) -> str:
        """Why the new model is worse, in one line (empty when it is not)."""
        parts = []
        for r in self.regressions():
            if r.new is None or r.old is None:
                parts.append(f"it has no {r.score} ({r.set_name})")
            else:
                parts.append(f"{r.score} {r.new:.3f} against {r.old:.3f} ({100 * (r.new - r.old):+.1f} points)")
        if not parts:
            return ""
        return (f"the new {self.name} is worse than {self.old_path} on the same held-out data: " + "; ".join(parts)
                + f" (tolerance {100 * self.tolerance:.1f} points)")

    def table(self) -> str:
        """The comparison as a plain-text table."""
        head = f"{self.name}: new {self.new_path}" + (f" [{self.new_id}]" if self.new_id else "")
        if self.old_path is None:
            lines = [head + ", nothing to replace"]
        else:
            lines = [head + f" against {self.old_path}" + (f" [{self.old_id}]" if self.old_id else "")]
        width = max([len(r.score) for r in self.rows] + [5])
        current = None
        for r in self.rows:
            if r.set_name != current:
                current = r.set_name
                lines.append(f"  {current}")
                lines.append(f"    {'score':<{width}}  {'new':>6}  {'old':>6}  {'change':>7}")
            new = "-" if r.new is None else f"{r.new:.3f}"
            old = "-" if r.old is None else f"{r.old:.3f}"
            change = "" if r.change is None else f"{100 * r.change:+.1f}"
            lines.append(f"    {r.score:<{width}}  {new:>6}  {old:>6}  {change:>7}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "new": {"path": self.new_path, "id": self.new_id},
            "old": None if self.old_path is None else {"path": self.old_path, "id": self.old_id},
            "tolerance": self.tolerance,
            "rows": [{"set": r.set_name, "score": r.score, "new": r.new, "old": r.old} for r in self.rows],
            "new_is_worse": self.new_is_worse,
            "reason": self.reason(),
        }


def compare_models(
    name: str,
    new: Path,
    old: Path | None,
    sets: Sequence[EvaluationSet],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    new_scores: Mapping[str, SetScores] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Comparison:
    """Score ``new`` and ``old`` (None: nothing to replace) on every set; the :class:`Comparison`.

    ``new_scores`` (set name -> scores) reuses scores of the new model already
    computed; ``labels`` maps paths to how the table names them (default: as given).
    """
    from ..model.format import load_onnx, read_info

    def show(p: Path) -> str:
        return (labels or {}).get(str(p), str(p))

    rows: list[Row] = []
    for s in sets:
        a = (new_scores or {}).get(s.name) or s.score(new)
        b = s.score(old) if old is not None else SetScores({})
        for key in [*a.values, *(k for k in b.values if k not in a.values)]:
            rows.append(Row(s.name, key, a.values.get(key), b.values.get(key)))
        log.info("%s on %s: new %s, old %s", name, s.name, dict(a.values), dict(b.values))
    return Comparison(
        name=name,
        new_path=show(new),
        old_path=None if old is None else show(old),
        rows=tuple(rows),
        tolerance=tolerance,
        old_id=None if old is None else read_info(load_onnx(old), source=str(old)).id,
        new_id=read_info(load_onnx(new), source=str(new)).id,
    )
