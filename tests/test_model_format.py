"""The model file contract: prototype head, metadata, ids, and adaptation maths (no torch)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_models import DIM, bright_dark_prototypes, tiny_encoder, write_tiny_model

from stm_live.errors import AdaptError, ModelError
from stm_live.model.format import (
    ModelInfo,
    Prototypes,
    attach_head,
    has_head,
    load_onnx,
    model_id,
    read_info,
    save_model,
    strip_head,
)
from stm_live.model.prototypes import (
    LabelledImage,
    Point,
    labels_from_points,
    prototypes_from_labels,
    refine_prototypes,
)


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": x}), strict=True))


def test_head_equals_softmax_of_negative_squared_distances() -> None:
    rng = np.random.default_rng(0)
    protos = Prototypes(rng.normal(size=(5, DIM)).astype(np.float32), (0, 0, 1, 2, 2), temperature=0.7)
    model = attach_head(tiny_encoder(), protos)
    x = rng.normal(size=(1, 1, 9, 11)).astype(np.float32)
    out = _run(model, x)
    e = out["embedding"][0].reshape(DIM, -1).T  # (P, D)
    d2 = ((e[:, None, :] - protos.vectors[None]) ** 2).sum(axis=2)
    logits = -d2 / protos.temperature
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = np.stack([p[:, [0, 1]].sum(1), p[:, 2], p[:, [3, 4]].sum(1)], axis=0).reshape(3, 9, 11)
    np.testing.assert_allclose(out["probs"][0], expected, atol=1e-5)


def test_head_is_stable_far_from_every_prototype_and_on_older_opsets() -> None:
    # Squared distances of thousands over T = 0.7: a naive exp() under- or overflows.
    protos = Prototypes(np.array([[0, 0, 0, 0], [1, 1, 0, 0], [-1, -1, 0, 0]], np.float32), (0, 1, 2), temperature=0.7)
    x = np.full((1, 1, 5, 6), 300.0, np.float32)
    x[0, 0, :, :3] = -300.0
    probs = _run(attach_head(tiny_encoder(), protos), x)["probs"][0]
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-6)
    assert (probs.argmax(axis=0)[:, 4:] == 1).all() and (probs.argmax(axis=0)[:, :2] == 2).all()
    # Opset 17 has no axes input for ReduceMax: the head uses the attribute form there.
    old = tiny_encoder()
    old.opset_import[0].version = 17
    model = attach_head(old, protos)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(2).normal(size=(1, 1, 7, 8)).astype(np.float32)
    expected = _run(attach_head(tiny_encoder(), protos), x)["probs"]
    np.testing.assert_allclose(_run(model, x)["probs"], expected, atol=1e-6)


def test_replacing_the_head_keeps_the_encoder() -> None:
    model = attach_head(tiny_encoder(), bright_dark_prototypes())
    assert has_head(model)
    bare = strip_head(model)
    assert not has_head(bare)
    two = Prototypes(np.ones((2, DIM), np.float32), (0, 1))
    again = attach_head(model, two)
    x = np.random.default_rng(1).normal(size=(1, 1, 6, 6)).astype(np.float32)
    a, b = _run(model, x), _run(again, x)
    np.testing.assert_array_equal(a["embedding"], b["embedding"])
    assert b["probs"].shape == (1, 2, 6, 6)


def test_metadata_round_trip_and_id(tmp_path: Path) -> None:
    info = write_tiny_model(tmp_path / "m.onnx")
    loaded = read_info(load_onnx(tmp_path / "m.onnx"))
    assert loaded.classes == ("bright", "dark") and loaded.nm_per_px == 0.2 and loaded.embedding_dim == DIM
    assert loaded.prototypes is not None and loaded.prototypes.labels == (0, 1, 2)
    assert loaded.id == info.id == model_id(load_onnx(tmp_path / "m.onnx"))
    assert len(loaded.id) == 16
    # Same graph and weights, same id; different prototypes, different id.
    assert write_tiny_model(tmp_path / "again.onnx").id == info.id
    other = attach_head(tiny_encoder(), Prototypes(np.ones((2, DIM), np.float32), (0, 1)))
    assert model_id(other) != info.id
    # Same weights, another input normalisation: another model, another id (kept in the file).
    std = save_model(load_onnx(tmp_path / "m.onnx"), replace(loaded, normalisation={**loaded.normalisation,
                                                                                      "scale": "std"}),
                     tmp_path / "std.onnx")
    assert std.id != info.id and read_info(load_onnx(tmp_path / "std.onnx")).id == std.id
    assert model_id(load_onnx(tmp_path / "std.onnx")) == std.id


def test_non_stm_live_and_corrupt_models_are_clear_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.onnx"
    onnx.save(tiny_encoder(), str(plain))
    with pytest.raises(ModelError, match=r"plain\.onnx: not an stm-live model: metadata .*missing"):
        read_info(load_onnx(plain), source=str(plain))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match=r"junk\.onnx: not a readable ONNX model"):
        load_onnx(junk)
    with pytest.raises(ModelError, match=r"missing\.onnx: model file not found"):
        load_onnx(tmp_path / "missing.onnx")


def test_wrong_format_version_is_refused(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "m.onnx")
    model = load_onnx(tmp_path / "m.onnx")
    for prop in model.metadata_props:
        if prop.key == "stm_live.format":
            prop.value = "99"
    with pytest.raises(ModelError, match="model format 99"):
        read_info(model)


def test_prototype_dimension_must_match_encoder() -> None:
    with pytest.raises(ModelError, match="dimension 3"):
        attach_head(tiny_encoder(), Prototypes(np.ones((2, 3), np.float32), (0, 1)))


def test_prototypes_validate_themselves() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Prototypes(np.full((2, 2), np.nan, np.float32), (0, 1))
    with pytest.raises(ValueError, match="temperature"):
        Prototypes(np.ones((2, 2), np.float32), (0, 1), temperature=0.0)
    info = ModelInfo("x", ("a",), 0.2, 2, prototypes=Prototypes(np.ones((2, 2), np.float32), (0, 1)))
    assert info.to_metadata()["stm_live.classes"] == '["a"]'


def test_labels_from_points_discs_and_background() -> None:
    pts = [Point(2.0, 2.0, "a"), Point(6.0, 2.0, "b"), Point(2.0, 6.0, "background")]
    lab = labels_from_points(pts, ["a", "b"], shape=(40, 40), nm_per_px=(0.2, 0.2), radius_nm=0.5,
                             background_margin_nm=2.0)
    assert lab[10, 10] == 1 and lab[10, 30] == 2 and lab[30, 10] == 0
    assert lab[10, 20] == -1  # between two features: neither class nor background
    assert lab[39, 39] == 0
    with pytest.raises(AdaptError, match="class 'c'"):
        labels_from_points([Point(1, 1, "c")], ["a"], shape=(8, 8), nm_per_px=(0.2, 0.2))


def _clusters(separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 0], [separation, 0, 0, 0], [0, separation, 0, 0]], np.float32)
    labels = rng.choice(3, size=(40, 40), p=[0.8, 0.1, 0.1])
    emb = (centres[labels] + rng.normal(0, 0.5, size=(40, 40, 4))).transpose(2, 0, 1).astype(np.float32)
    return emb, labels


def test_prototypes_from_labels_separate_classes() -> None:
    emb, labels = _clusters(4.0)
    protos = prototypes_from_labels([LabelledImage(emb, labels)], 2, n_background=2, seed=0)
    assert protos.labels.count(0) == 2 and set(protos.labels) == {0, 1, 2}
    np.testing.assert_allclose(protos.vectors[0], [4, 0, 0, 0], atol=0.3)
    np.testing.assert_allclose(protos.vectors[1], [0, 4, 0, 0], atol=0.3)
    e = emb.reshape(4, -1).T
    nearest = np.asarray(protos.labels)[((e[:, None] - protos.vectors[None]) ** 2).sum(2).argmin(1)]
    assert (nearest == labels.reshape(-1)).mean() > 0.97


def test_fitted_temperature_calibrates_overlapping_classes() -> None:
    emb, labels = _clusters(1.5)
    protos = prototypes_from_labels([LabelledImage(emb, labels)], 2, n_background=1, seed=0,
                                    exclude_lookalikes=False)
    e = emb.reshape(4, -1).T
    logits = -((e[:, None] - protos.vectors[None]) ** 2).sum(2) / protos.temperature
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pred = np.asarray(protos.labels)[p.argmax(1)]
    accuracy = (pred == labels.reshape(-1)).mean()
    confidence = p.max(1).mean()
    assert 0.6 < accuracy < 0.99  # the classes really overlap
    assert abs(confidence - accuracy) < 0.05  # and the scores say so


def test_prototypes_need_an_example_of_every_class() -> None:
    emb = np.zeros((4, 5, 5), np.float32)
    labels = np.zeros((5, 5), int)
    labels[0, 0] = 1
    with pytest.raises(AdaptError, match="class 2 has no labelled pixel"):
        prototypes_from_labels([LabelledImage(emb, labels)], 2)


def test_refining_prototypes_lowers_the_error_on_confusable_classes() -> None:
    # Class 1 is a skewed cloud: its mean is a poor prototype next to the background.
    rng = np.random.default_rng(3)
    bg = rng.normal(0, 0.5, size=(3000, 4))
    cls = np.concatenate([rng.normal([1.2, 0, 0, 0], 0.3, size=(400, 4)), rng.normal([4, 0, 0, 0], 0.3, size=(100, 4))])
    emb = np.concatenate([bg, cls]).T.reshape(4, 1, -1).astype(np.float32)
    labels = np.concatenate([np.zeros(3000, int), np.ones(500, int)]).reshape(1, -1)
    image = LabelledImage(emb, labels)
    base = prototypes_from_labels([image], 1, n_background=1, exclude_lookalikes=False)
    refined = refine_prototypes(base, [image], steps=150)

    def balanced_error(p: Prototypes) -> float:
        e = emb.reshape(4, -1).T
        pred = np.asarray(p.labels)[((e[:, None] - p.vectors[None]) ** 2).sum(2).argmin(1)]
        y = labels.reshape(-1)
        return 0.5 * ((pred[y == 0] != 0).mean() + (pred[y == 1] != 1).mean())

    assert balanced_error(refined) < balanced_error(base)
