"""Per-frame feature centring of a prototype head: the ONNX graph, ``adapt``'s centring, and what it is for."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_models import DIM, tiny_encoder

from stm_live.cli import main
from stm_live.frame import Frame
from stm_live.io import read_frame, write_sxm
from stm_live.model.format import FeatureCentring, Prototypes, attach_head, load_onnx, model_id, read_info
from stm_live.model.prototypes import LabelledImage, feature_centring, first_stage_features
from stm_live.model.runtime import SegmentationModel


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": x}), strict=True))


def _softmax_per_class(d2: np.ndarray, labels: list[int], t: float, n: int) -> np.ndarray:
    logits = -d2 / t
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.stack([p[:, [m for m, lab in enumerate(labels) if lab == k]].sum(axis=1) for k in range(n)], axis=1)


def _reference(embedding: np.ndarray, protos: Prototypes) -> np.ndarray:
    """The centred head written out plainly for one image: ``(1 + C, H, W)``."""
    assert protos.centring is not None
    d, h, w = embedding.shape
    e = embedding.reshape(d, -1).T.astype(np.float64)
    labels = list(protos.labels)
    n = max(labels) + 1
    first = _softmax_per_class(((e[:, None] - protos.vectors[None]) ** 2).sum(2), labels, protos.temperature, n)
    feature = first[:, 0] < 0.5
    c = protos.centring
    mean = (e[feature].sum(axis=0) + c.prior_px * c.feature_mean) / (feature.sum() + c.prior_px)
    moved = c.centred + mean
    q = _softmax_per_class(((e[:, None] - moved[None]) ** 2).sum(2), list(range(n - 1)), protos.temperature, n - 1)
    out = np.concatenate([first[:, :1], (1 - first[:, :1]) * q], axis=1)
    return out.T.reshape(n, h, w)


def _centred_prototypes(rng: np.random.Generator, prior_px: float = 3.0) -> Prototypes:
    vectors = np.array([[0, 0, 0, 0], [0.2, 0.1, 0, 0], [2, 1.5, 0, 0], [-2, -1.5, 0, 0]], np.float32)
    centring = FeatureCentring(rng.normal(size=(2, DIM)), rng.normal(size=DIM), prior_px)
    return Prototypes(vectors, (0, 0, 1, 2), temperature=0.8, centring=centring)


def test_centred_head_matches_the_plain_formula_per_image() -> None:
    rng = np.random.default_rng(0)
    protos = _centred_prototypes(rng)
    x = rng.normal(0, 1.5, size=(2, 1, 9, 11)).astype(np.float32)  # two images: a mean each
    x[1] += 1.0
    out = _run(attach_head(tiny_encoder(), protos), x)
    for i in range(2):
        expected = _reference(out["embedding"][i], protos)
        assert 0 < (expected[0] < 0.5).sum() < 99  # some features, some background
        np.testing.assert_allclose(out["probs"][i], expected, atol=1e-5)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-5)
    # Opset 17 spells the reductions with attributes: same numbers.
    old = tiny_encoder()
    old.opset_import[0].version = 17
    older = attach_head(old, protos)
    onnx.checker.check_model(older, full_check=True)
    np.testing.assert_allclose(_run(older, x)["probs"], out["probs"], atol=1e-6)


def test_a_frame_without_features_is_classified_as_without_centring() -> None:
    rng = np.random.default_rng(1)
    plain = _centred_prototypes(rng)
    mean = rng.normal(size=DIM).astype(np.float32)
    centred = replace(plain, centring=FeatureCentring(plain.vectors[2:] - mean, mean, 50.0))
    x = rng.normal(0, 0.05, size=(1, 1, 8, 8)).astype(np.float32)  # background only
    a = _run(attach_head(tiny_encoder(), replace(plain, centring=None)), x)["probs"]
    b = _run(attach_head(tiny_encoder(), centred), x)["probs"]
    assert (a[0, 0] > 0.5).all()
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_centring_changes_the_id_and_survives_the_metadata(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    protos = _centred_prototypes(rng)
    plain = attach_head(tiny_encoder(), replace(protos, centring=None))
    centred = attach_head(tiny_encoder(), protos)
    assert model_id(plain) != model_id(centred)
    assert Prototypes.from_json(protos.to_json()).centring.prior_px == 3.0  # type: ignore[union-attr]
    restored = Prototypes.from_json(protos.to_json()).centring
    assert restored is not None
    np.testing.assert_array_equal(restored.centred, protos.centring.centred)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="centred prototypes for 2 classes"):
        Prototypes(protos.vectors, protos.labels, 0.8, FeatureCentring(np.zeros((3, DIM)), np.zeros(DIM)))
    with pytest.raises(ValueError, match="prior must be positive"):
        FeatureCentring(np.zeros((2, DIM)), np.zeros(DIM), 0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        FeatureCentring(np.full((2, DIM), np.nan), np.zeros(DIM))


def test_feature_centring_of_labelled_images() -> None:
    """Class k's centred prototype is its prototype less the mean of where the first stage finds features."""
    rng = np.random.default_rng(3)
    protos = replace(_centred_prototypes(rng), centring=None)
    embedding = np.zeros((DIM, 6, 6))
    embedding[:, 1:3, 1:3] = np.array([2, 1.5, 0, 0])[:, None, None]  # class 1
    embedding[:, 4, 4] = np.array([-2, -1.5, 0, 0])  # class 2
    labels = np.zeros((6, 6), np.int16)
    labels[1:3, 1:3] = 1
    labels[4, 4] = 2
    found = first_stage_features(embedding, protos)
    np.testing.assert_array_equal(found, labels > 0)
    c = feature_centring([LabelledImage(embedding, labels)], protos, prior_px=10.0)
    mean = embedding[:, labels > 0].mean(axis=1)
    np.testing.assert_allclose(c.feature_mean, mean, atol=1e-6)
    np.testing.assert_allclose(c.centred, protos.vectors[2:] - mean, atol=1e-6)
    assert c.prior_px == 10.0


WHERE = {"tall": [(20, 30), (60, 90), (100, 40), (30, 110)], "short": [(40, 70), (90, 20), (110, 100), (70, 50)]}
RR, CC = np.indices((128, 128))


def _discs(heights: dict[str, float], seed: int) -> np.ndarray:
    """Flat-topped discs (radius 3 px) of two heights on white noise, metres."""
    img = np.random.default_rng(seed).normal(0.0, 0.05, size=(128, 128))
    for name, centres in WHERE.items():
        for r, c in centres:
            img[(RR - r) ** 2 + (CC - c) ** 2 <= 9] += heights[name]
    return img * 1e-10


def _labelled_support(tmp_path: Path) -> list[str]:
    """Write the labelled frame, its mask and a tiny encoder; the ``adapt`` arguments that use them."""
    from tiny_models import write_tiny_model

    support = write_sxm(tmp_path / "support.sxm", [Frame(_discs({"tall": 1.0, "short": 0.6}, 0), 25.6e-9, 25.6e-9)])
    mask = np.zeros((128, 128), np.uint8)
    for k, name in enumerate(("tall", "short"), start=1):
        for r, c in WHERE[name]:
            mask[(RR - r) ** 2 + (CC - c) ** 2 <= 9] = k
    np.save(tmp_path / "mask.npy", mask)
    write_tiny_model(tmp_path / "enc.onnx", head=False)
    # The tiny encoder's fixed filters suit its own pitch only: no pitch measured from the mask;
    # one mean prototype per class and no calibration, so that centring alone makes the difference.
    return ["adapt", "--model", str(tmp_path / "enc.onnx"), "--image", str(support), "--mask",
            str(tmp_path / "mask.npy"), "--classes", "tall,short", "--nm-per-px", "0.2",
            "--prototypes-per-class", "1", "--fine-tune-steps", "0", "--no-calibrate"]


def test_adapted_model_tells_classes_apart_after_a_change_that_lifts_every_feature(tmp_path: Path) -> None:
    """Two feature heights; on a new frame every feature is 0.35 higher (a tip's doing).

    The short features are then nearer the tall prototype: without centring
    they are called tall; with centring each frame's features are compared
    with their own mean, and every feature is named right.
    """
    adapt = _labelled_support(tmp_path)
    support = tmp_path / "support.sxm"
    query = write_sxm(tmp_path / "query.sxm", [Frame(_discs({"tall": 1.35, "short": 0.95}, 1), 25.6e-9, 25.6e-9)])
    right = ["short"] * 4 + ["tall"] * 4
    names = {}
    # The 8 features cover 9 nm^2: a prior of 0.5 nm^2 pulls the frame's mean by 5 %.
    for label, extra in (("centred", ["--centre-features", "--centre-prior-nm2", "0.5"]), ("plain", [])):
        out = tmp_path / f"{label}.onnx"
        assert main([*adapt, "--out", str(out), *extra]) == 0
        info = read_info(load_onnx(out))
        centring = info.prototypes.centring  # type: ignore[union-attr]
        if label == "centred":
            assert centring is not None and centring.prior_px == pytest.approx(0.5 / 0.2**2)
            assert info.provenance["feature_centring"] == {"prior_nm2": 0.5}
        else:
            assert centring is None and info.provenance["feature_centring"] is None
        model = SegmentationModel(out, provider="cpu")
        assert sorted(d.class_name for d in model.segment(read_frame(support)).detections) == right
        names[label] = sorted(d.class_name for d in model.segment(read_frame(query)).detections)
    assert names["centred"] == right
    assert names["plain"] == ["tall"] * 8


def test_adapt_refuses_a_prior_that_is_not_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapt = _labelled_support(tmp_path)
    assert main([*adapt, "--out", str(tmp_path / "m.onnx"), "--centre-features", "--centre-prior-nm2", "0"]) == 2
    assert "--centre-prior-nm2 must be positive, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_live_path_with_a_centred_model(tmp_path: Path) -> None:
    """The live path runs the same graph: over the whole acquired frame it gives the whole-frame answer."""
    from stm_live.level import level_frame
    from stm_live.model.live import LiveSegmenter

    adapt = _labelled_support(tmp_path)
    assert main([*adapt, "--out", str(tmp_path / "m.onnx"), "--centre-features", "--centre-prior-nm2", "0.5"]) == 0
    model = SegmentationModel(tmp_path / "m.onnx", provider="cpu")
    frame = Frame(_discs({"tall": 1.35, "short": 0.95}, 1), 25.6e-9, 25.6e-9)
    levelled = level_frame(frame.data, method="plane")
    whole = model.segment(frame, levelled=levelled)
    # Statistics never frozen: every call reruns the model on all rows acquired so far.
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px, freeze_rows=10_000)
    for row in range(frame.rows):
        live.add_row(row, levelled[row])
        if row % 16 == 15:
            seg = live.segment()
    assert seg.rows_done == frame.rows
    assert (seg.class_map == whole.class_map).mean() > 0.999
    assert sorted(d.class_name for d in seg.detections) == sorted(d.class_name for d in whole.detections)
    assert sorted(d.class_name for d in whole.detections) == ["short"] * 4 + ["tall"] * 4
