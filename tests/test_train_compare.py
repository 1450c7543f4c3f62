"""`stm-live train` ends by comparing the new model with the one it would replace; pinned numerics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from stm_live.train.compare import Comparison, Row, SetScores, compare_models

pytest.importorskip("torch", reason="the trainer needs the train extra (torch)")

from stm_live.train.numerics import PINNED_ENV, can_pin, is_pinned, pinned_environment
from stm_live.train.settings import SurfaceSettings, TrainSettings

REPO = Path(__file__).resolve().parents[1]


def _rows(*values: tuple[str, float | None, float | None]) -> tuple[Row, ...]:
    return tuple(Row("held-out", name, new, old) for name, new, old in values)


def test_a_worse_score_beyond_the_tolerance_makes_the_new_model_worse() -> None:
    same = Comparison("si", "new.onnx", "old.onnx", _rows(("AsH3 F1", 0.975, 0.981), ("DB F1", 0.99, 0.98)))
    assert not same.new_is_worse and same.reason() == ""  # -0.6 points: within the default 1 point
    worse = Comparison("si", "new.onnx", "old.onnx", _rows(("AsH3 F1", 0.933, 0.981), ("DB F1", 0.99, 0.98)))
    assert worse.new_is_worse and [r.score for r in worse.regressions()] == ["AsH3 F1"]
    assert "AsH3 F1 0.933 against 0.981 (-4.8 points)" in worse.reason()
    assert "tolerance 1.0 points" in worse.reason()
    strict = Comparison("si", "n", "o", _rows(("AsH3 F1", 0.975, 0.981)), tolerance=0.005)
    assert strict.new_is_worse
    # A class the old model finds and the new one does not: worse.
    missing = Comparison("si", "n", "o", _rows(("AsH3 F1", 0.99, 0.98), ("DV F1", None, 0.95)))
    assert missing.new_is_worse and "it has no DV F1" in missing.reason()
    # Nothing to replace: never worse; the table says so.
    alone = Comparison("si", "n", None, _rows(("AsH3 F1", 0.5, None)))
    assert not alone.new_is_worse and "nothing to replace" in alone.table()
    table = worse.table()
    assert "AsH3 F1" in table and "0.933" in table and "0.981" in table and "-4.8" in table


class _Constant:
    """An evaluation set that scores models by a number stored in a side file (a stand-in for a real set)."""

    name = "constant scores"

    def __init__(self, scores: dict[str, dict[str, float]]) -> None:
        self.scores = scores
        self.calls: list[str] = []

    def score(self, model: Path) -> SetScores:
        self.calls.append(model.name)
        return SetScores(self.scores[model.name])


def test_compare_models_scores_both_on_every_set(tmp_path: Path) -> None:
    from tiny_models import write_tiny_model

    new, old = tmp_path / "new.onnx", tmp_path / "old.onnx"
    write_tiny_model(new)
    write_tiny_model(old, nm_per_px=0.1)
    a = _Constant({"new.onnx": {"x": 0.9}, "old.onnx": {"x": 0.95, "y": 0.5}})
    result = compare_models("tiny", new, old, [a])
    assert a.calls == ["new.onnx", "old.onnx"]
    assert [(r.score, r.new, r.old) for r in result.rows] == [("x", 0.9, 0.95), ("y", None, 0.5)]
    assert result.new_is_worse and result.old_id != result.new_id
    # Scores of the new model computed before are reused, not recomputed.
    b = _Constant({"old.onnx": {"x": 0.8}})
    again = compare_models("tiny", new, old, [b], new_scores={b.name: SetScores({"x": 0.9})})
    assert b.calls == ["old.onnx"] and not again.new_is_worse


def test_pinned_environment_pins_every_library_it_names() -> None:
    env = pinned_environment({"PATH": "/bin", "MKL_CBWR": "AVX512"})
    if can_pin():
        assert is_pinned(env) and env["PATH"] == "/bin" and env["MKL_CBWR"] == "COMPATIBLE"
        assert set(PINNED_ENV) == {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OPENBLAS_CORETYPE",
                                   "OPENBLAS_NUM_THREADS"}
    else:  # not x86-64 with AVX2: nothing is forced on a CPU that cannot run it
        assert env == {"PATH": "/bin", "MKL_CBWR": "AVX512"} and not is_pinned(env)


@pytest.mark.skipif(not can_pin(), reason="pinned numerics need an x86-64 CPU with AVX2")
def test_a_pinned_process_runs_avx2_kernels_in_every_library() -> None:
    code = ("import json, numpy, scipy.linalg; from stm_live.train.numerics import actual_numerics; "
            "print(json.dumps(actual_numerics()))")
    out = subprocess.run([sys.executable, "-c", code], env=pinned_environment(), capture_output=True, text=True,
                         check=True, timeout=120)
    numerics = json.loads(out.stdout)
    assert numerics["pinned"] and numerics["torch_cpu_capability"] == "AVX2"
    assert numerics["openblas"] and all(b["architecture"] == "Haswell" for b in numerics["openblas"])
    assert all("/" not in b["library"] for b in numerics["openblas"])  # file names, no paths


def _tiny_recipe(tmp_path: Path, name: str, **changes: object) -> Path:
    surfaces = [
        SurfaceSettings(name="si001-ash3", nm_per_px=0.2, frames=2, val_frames=1, size_nm=(12.0, 14.0),
                        input_nm_per_px=(0.1, 0.2)),
        SurfaceSettings(name="tio2-110", nm_per_px=0.1, frames=2, val_frames=1, size_nm=(6.0, 7.0),
                        input_nm_per_px=(0.05, 0.1)),
    ]
    values: dict[str, object] = dict(run_dir=tmp_path / name, out_dir=tmp_path / "models", surfaces=surfaces,
                                     ssl_steps=3, steps=30, batch=4, crop=32, widths=(4, 8, 8), dim=4,
                                     checkpoint_every=10, threads=1)
    values.update(changes)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(TrainSettings.model_validate(values).model_dump(mode="json")))
    return cfg


def _train(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # A real `stm-live train` process, as a user runs it (it starts the pinned training process itself).
    args = [sys.executable, "-m", "stm_live", "train", "--config", str(cfg), "--no-progress",
            "--evaluate-frames", "2", "--calibrate-frames", "1", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cfg.parent,
                          env={k: v for k, v in os.environ.items() if k not in PINNED_ENV})


def _initializers(path: Path) -> dict[str, bytes]:
    return {i.name: i.raw_data or onnx.numpy_helper.to_array(i).tobytes() for i in onnx.load(path).graph.initializer}


@pytest.mark.slow
def test_the_same_recipe_twice_gives_equal_weights_and_replaces_nothing_worse(tmp_path: Path) -> None:
    first = _train(_tiny_recipe(tmp_path, "a"))
    assert first.returncode == 0, first.stderr
    # Nothing to replace in the output folder: compared with the bundled model of that name,
    # installed (nothing is overwritten), with a warning that it is worse.
    assert "against the bundled si001-ash3" in first.stdout
    assert "warning: the new si001-ash3 is worse than the bundled si001-ash3" in first.stdout
    installed = tmp_path / "models" / "si001-ash3.onnx"
    weights = _initializers(installed)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["comparison"]["si001-ash3"]["reference"] == "bundled"
    assert report["comparison"]["si001-ash3"]["decision"] == "installed"
    numerics = report["training"]["numerics"]
    if can_pin():
        assert numerics["pinned"] and numerics["torch_threads"] == 1  # the recipe's
    # The same recipe in another run folder: equal weights (and so the same id), scored
    # alike on the same held-out frames, so it replaces the first (not worse).
    second = _train(_tiny_recipe(tmp_path, "b"))
    assert second.returncode == 0, second.stderr
    candidate = tmp_path / "b" / "candidates" / "si001-ash3.onnx"
    assert _initializers(candidate) == weights
    again = json.loads((tmp_path / "b" / "report.json").read_text())
    assert again["models"]["si001-ash3"]["id"] == report["models"]["si001-ash3"]["id"]
    assert again["training"]["data_content_hash"] == report["training"]["data_content_hash"]
    comparison = again["comparison"]["si001-ash3"]
    assert comparison["decision"] == "installed" and comparison["old"]["id"] == comparison["new"]["id"]
    assert comparison["reference"] == "replaces" and comparison["old"]["path"] == "../models/si001-ash3.onnx"
    assert all(row["new"] == row["old"] for row in comparison["rows"])
    assert "against" in second.stdout and "installed" in second.stdout
    # Paths in the report are relative to its folder.
    assert again["models"]["si001-ash3"]["path"] == "../models/si001-ash3.onnx"
    assert again["settings"]["run_dir"] == "." and again["settings"]["out_dir"] == "../models"
    assert not [v for v in _strings(again) if os.path.isabs(v) or str(tmp_path) in v]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.slow
def test_a_worse_new_model_is_not_installed_unless_forced(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    bundled = REPO / "models" / "si001-ash3.onnx"
    shutil.copy(bundled, models / "si001-ash3.onnx")
    # A few steps of a tiny encoder: far worse than the bundled model on the same frames.
    cfg = _tiny_recipe(tmp_path, "run", ssl_steps=1, steps=2)
    refused = _train(cfg)
    assert refused.returncode == 1, refused.stderr
    assert (models / "si001-ash3.onnx").read_bytes() == bundled.read_bytes()  # kept
    assert "not installed: the new si001-ash3 is worse than" in refused.stdout
    assert "--force installs it" in refused.stdout and "kept the existing si001-ash3" in refused.stderr
    assert "Traceback" not in refused.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    comparison = report["comparison"]["si001-ash3"]
    assert comparison["decision"] == "refused" and comparison["new_is_worse"]
    worse = [r for r in comparison["rows"] if r["old"] is not None and r["old"] - (r["new"] or 0) > 0.01]
    assert worse and all(r["score"] in comparison["reason"] for r in worse)
    # Nothing there to replace: compared with the bundled tio2-110 and installed all the same.
    assert report["comparison"]["tio2-110"]["decision"] == "installed"
    assert report["comparison"]["tio2-110"]["reference"] == "bundled"
    candidate = tmp_path / "run" / "candidates" / "si001-ash3.onnx"
    assert candidate.is_file() and report["models"]["si001-ash3"]["path"] == "candidates/si001-ash3.onnx"
    # --compare names the model to compare with; here the same verdict.
    assert _train(cfg, "--compare", str(bundled)).returncode == 1
    # --force installs it (the run resumes from its last checkpoint: no retraining).
    forced = _train(cfg, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (models / "si001-ash3.onnx").read_bytes() == candidate.read_bytes()
    assert "(--force)" in forced.stdout
    assert json.loads((tmp_path / "run" / "report.json").read_text())["comparison"]["si001-ash3"]["forced"]
    # No held-out frames, no comparison: an existing model is not replaced without --force.
    blind = _train(cfg, "--evaluate-frames", "0")
    assert blind.returncode == 1 and "is not replaced without a comparison" in blind.stdout


def test_compare_must_name_a_model_of_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stm_live.cli import main

    cfg = _tiny_recipe(tmp_path, "run")
    assert main(["train", "--config", str(cfg), "--compare", "ge001"]) == 2
    err = capsys.readouterr().err
    assert "--compare ge001: model 'ge001' matches none of the models this run makes (si001-ash3, tio2-110)" in err
    assert not (tmp_path / "run").exists()  # nothing trained


def test_held_out_scores_are_those_of_the_evaluation(tmp_path: Path) -> None:
    from stm_live.model.evaluate import evaluate_model
    from stm_live.model.runtime import SegmentationModel
    from stm_live.train.compare import SimulatedHeldOut

    bundled = REPO / "models" / "si001-ash3.onnx"
    held_out = SimulatedHeldOut("si001-ash3", 1, 10_000, 12.0, 120)
    scores = held_out.score(bundled)
    report = evaluate_model(SegmentationModel(bundled, provider="cpu"), simulate="si001-ash3", count=1,
                            seed=10_000, size_nm=12.0, pixels=120, episodes=0)
    assert dict(scores.values) == {f"{c} F1": s["f1"] for c, s in report["objects"].items()}
    assert set(scores.values) == {"AsH3 F1", "dangling_bond F1", "dimer_vacancy F1"}
    assert "seeds 10000-10000" in held_out.name
    base = SimulatedHeldOut("si001-ash3", 2, 10_000, 50.0, 512).score(REPO / "models" / "base-encoder.onnx")
    assert set(base.values) == {"si001-ash3 1-shot accuracy", "si001-ash3 3-shot accuracy"}
    assert all(0.0 <= v <= 1.0 for v in base.values.values()) and np.isfinite(list(base.values.values())).all()


REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (REAL_DATA / "real-npy").is_dir(), reason="../shared/data/real-npy is missing")
def test_the_real_labelled_frames_score_a_surface_model_in_their_dev_regions(tmp_path: Path) -> None:
    from stm_live.train.real_set import real_labelled_set

    si_classes = ("AsH3", "dangling_bond", "dimer_vacancy")
    real = real_labelled_set("si001-ash3", si_classes, data_root=REAL_DATA)
    assert real is not None
    assert [p.stem for p in real.label_files] == ["si001h_brockley_23_2_0", "si001h_ph3_paddington_24_2_0"]
    assert real.classes == ("dangling_bond", "dimer_vacancy") and real.split == "dev"
    bundled = Path(__file__).resolve().parents[1] / "models" / "si001-ash3.onnx"
    scores = real.score(bundled)
    assert set(scores.values) == {"real dangling_bond F1", "real dimer_vacancy F1"}
    assert all(0.0 < v <= 1.0 for v in scores.values.values())
    assert scores.detail["split"] == "dev" and scores.detail["area_nm2"] > 0
    # The same model on both sides is not worse; the table has the real rows.
    same = compare_models("si001-ash3", bundled, bundled, [real])
    assert not same.new_is_worse and {r.score for r in same.rows} == set(scores.values)
    # Where it cannot be measured it is left out: a bare encoder, other classes, no images.
    assert real_labelled_set("base-encoder", (), data_root=REAL_DATA) is None
    assert real_labelled_set("ge001", ("dimer", "phase_defect"), data_root=REAL_DATA) is None
    assert real_labelled_set("si001-ash3", si_classes, data_root=tmp_path) is None
