"""Model ids: a hash of what decides a model's behaviour and of nothing else; no build-machine paths."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from tiny_models import write_tiny_model

from stm_live.cli import main
from stm_live.model.format import (
    BEHAVIOUR_KEYS,
    Prototypes,
    load_onnx,
    model_id,
    read_info,
    restamp,
    save_model,
    strip_debug_info,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLED = sorted((REPO / "models").glob("*.onnx"))
#: An absolute path on POSIX or Windows.
ABSOLUTE = re.compile(r"^(/|[A-Za-z]:[\\/]|\\\\)")


def test_there_are_bundled_models() -> None:
    assert {p.stem for p in BUNDLED} >= {"si001-ash3", "ge001", "tio2-110", "base-encoder"}


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_models_carry_the_id_of_their_contents(path: Path) -> None:
    # A merge that changes a model (or how ids are computed) without re-stamping fails here:
    # `stm-live model-id --write models/*.onnx` re-stamps.
    model = load_onnx(path)
    assert read_info(model).id == model_id(model)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_models_carry_no_debugging_information(path: Path) -> None:
    model = load_onnx(path)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    assert not any(n.metadata_props or n.doc_string for n in nodes)
    assert not model.graph.doc_string and not model.doc_string
    # Nothing in the file (metadata included) looks like a path of the machine that made it.
    text = model.SerializeToString()
    assert b"site-packages" not in text and b"stack_trace" not in text
    for key, value in read_info(model).to_metadata().items():
        assert not any(ABSOLUTE.match(s) for s in _strings(json.loads(value))), key


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("path", sorted((REPO / "docs").glob("training_report*.json")), ids=lambda p: p.stem)
def test_training_reports_carry_no_absolute_paths(path: Path) -> None:
    strings = list(_strings(json.loads(path.read_text())))
    assert any("models/" in s for s in strings)  # the paths are there, relative
    assert [s for s in strings if ABSOLUTE.match(s)] == []


def _variants(info: Any) -> dict[str, Any]:
    protos = info.prototypes
    assert protos is not None
    return {
        "classes": replace(info, classes=("dark", "bright")),
        "nm_per_px": replace(info, nm_per_px=0.1),
        "context_px": replace(info, context_px=info.context_px + 1),
        "normalisation": replace(info, normalisation={**info.normalisation, "scale": "std"}),
        "levelling": replace(info, levelling={"method": "median"}),
        "prototypes": replace(info, prototypes=Prototypes(protos.vectors + 1.0, protos.labels, protos.temperature)),
        "detection": replace(info, detection={"min_score": {"bright": 0.6}}),
    }


def test_the_id_follows_everything_that_decides_behaviour_and_nothing_else(tmp_path: Path) -> None:
    info = write_tiny_model(tmp_path / "m.onnx", detection={"min_score": {"bright": 0.5},
                                                            "calibration": {"frames": 24}})
    model = load_onnx(tmp_path / "m.onnx")
    # Described otherwise, re-saved by another version, or with the calibration's record changed: the same model.
    same = [
        replace(info, name="renamed", surface="elsewhere", provenance={"who": "me"}, training={"seed": 9},
                version="9.9", id="whatever"),
        replace(info, detection={"min_score": {"bright": 0.5}, "calibration": {"frames": 8}}),
    ]
    for other in same:
        assert save_model(model, other, tmp_path / "same.onnx").id == info.id
    # The exporter's stack traces, doc strings and producer: the same model too.
    noisy = onnx.ModelProto()
    noisy.CopyFrom(model)
    noisy.producer_version = "0.0.1"
    noisy.graph.node[0].doc_string = "made at /home/someone/stm-live/net.py:42"
    noisy.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="/home/someone/net.py")
    assert model_id(noisy) == info.id
    assert strip_debug_info(noisy).SerializeToString() == strip_debug_info(model).SerializeToString()
    # Everything the runtime reads changes it, each on its own.
    variants = _variants(info)
    assert set(variants) == set(BEHAVIOUR_KEYS) - {"format", "embedding_dim"}
    ids = {name: model_id(model, other) for name, other in variants.items()}
    assert info.id not in ids.values() and len(set(ids.values())) == len(ids), ids
    # And the weights.
    weights = onnx.ModelProto()
    weights.CopyFrom(model)
    w = next(i for i in weights.graph.initializer if i.name == "w")
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * np.float32(1.001), "w"))
    assert model_id(weights) != info.id


def test_model_id_command_finds_stale_ids_and_restamps_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.onnx"
    info = write_tiny_model(path)
    assert main(["model-id", str(path)]) == 0
    assert f"{info.id} ok" in capsys.readouterr().out
    # A hand edit of a threshold, without re-stamping: stale.
    model = load_onnx(path)
    props = {p.key: p for p in model.metadata_props}
    props["stm_live.detection"].value = json.dumps({"min_score": {"bright": 0.9}})
    props["stm_live.version"].value = json.dumps("0.0.0")
    onnx.save(model, str(path))
    assert main(["model-id", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"stored {info.id}" in out and "stale" in out
    assert main(["model-id", "--write", str(path)]) == 0
    assert "re-stamped" in capsys.readouterr().out
    restamped = read_info(load_onnx(path))
    assert restamped.id == model_id(load_onnx(path)) != info.id
    assert restamped.detection == {"min_score": {"bright": 0.9}}  # the edit is kept, only the id follows it
    assert main(["model-id", str(path)]) == 0
    # Re-stamping a file whose id is right rewrites nothing.
    before = path.read_bytes()
    assert restamp(path) == (restamped.id, restamped.id) and path.read_bytes() == before


def test_model_id_command_on_bundled_names_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model-id", "si001-ash3"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["model-id", str(tmp_path / "nope.onnx")]) == 2
    assert "nope.onnx: model file not found" in capsys.readouterr().err


def test_restamping_keeps_what_the_model_computes(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = tmp_path / "si.onnx"
    shutil.copy(REPO / "models" / "si001-ash3.onnx", path)
    model = load_onnx(path)
    model.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="/somewhere/net.py")
    onnx.save(model, str(path))
    stored, new = restamp(path)
    assert stored == new  # debugging information is not part of the id
    assert not load_onnx(path).graph.node[0].metadata_props
    x = np.random.default_rng(0).normal(size=(1, 1, 40, 44)).astype(np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})
           for p in (REPO / "models" / "si001-ash3.onnx", path)]
    for a, b in zip(*run, strict=True):
        np.testing.assert_array_equal(a, b)
