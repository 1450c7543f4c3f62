"""Instance embeddings, per-frame feature centring and the few-shot episodes of ``stm-live evaluate``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stm_live.model.evaluate import feature_centre, instance_embeddings, run_episodes

CLASS_VECTORS = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # classes 1 and 2, 1.41 apart


def _frame(rng: np.random.Generator, offset: np.ndarray, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A ``(4, size, size)`` embedding and its mask: 3 x 3 instances of classes 1 and 2 on a grid.

    Every pixel carries the frame's ``offset`` (a tip's doing), feature pixels
    their class vector as well, and all a little noise.
    """
    mask = np.zeros((size, size), np.int64)
    for i, r in enumerate(range(2, size - 3, 6)):
        for j, c in enumerate(range(2, size - 3, 6)):
            mask[r : r + 3, c : c + 3] = 1 + (i + j) % 2
    embedding = np.broadcast_to(offset[:, None, None], (4, size, size)).copy()
    for k in (1, 2):
        embedding[:, mask == k] += CLASS_VECTORS[k - 1][:, None]
    embedding += rng.normal(0, 0.05, embedding.shape)
    return embedding, mask


def test_feature_centre_is_the_mean_over_every_feature_pixel() -> None:
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(3, 10, 12))
    mask = np.zeros((10, 12), np.int64)
    mask[1:3, 1:4] = 1
    mask[6:9, 7:9] = 2
    expected = np.array([embedding[d][mask > 0].mean() for d in range(3)])
    np.testing.assert_allclose(feature_centre(embedding, mask), expected)
    np.testing.assert_array_equal(feature_centre(embedding, np.zeros((10, 12), np.int64)), np.zeros(3))


def test_centred_instance_vectors_do_not_see_a_frame_wide_shift() -> None:
    rng = np.random.default_rng(1)
    embedding, mask = _frame(rng, np.zeros(4))
    shifted = embedding + np.array([3.0, -2.0, 0.5, 7.0])[:, None, None]
    plain, classes = instance_embeddings(embedding, mask)
    plain_shifted, _ = instance_embeddings(shifted, mask)
    centred, centred_classes = instance_embeddings(embedding, mask, centre=True)
    centred_shifted, _ = instance_embeddings(shifted, mask, centre=True)
    assert len(classes) == 64 and set(classes) == {1, 2}
    np.testing.assert_array_equal(centred_classes, classes)
    np.testing.assert_allclose(plain_shifted - plain, np.tile([3.0, -2.0, 0.5, 7.0], (64, 1)), atol=1e-9)
    np.testing.assert_allclose(centred_shifted, centred, atol=1e-9)
    np.testing.assert_allclose(centred, plain - feature_centre(embedding, mask), atol=1e-12)


def test_frame_centring_undoes_per_frame_offsets_in_the_episodes() -> None:
    """Offsets between frames larger than the classes' separation: plain prototypes fail, centred ones do not."""
    rng = np.random.default_rng(2)
    plain, centred, classes = [], [], []
    for _ in range(6):
        embedding, mask = _frame(rng, rng.normal(0, 2.0, 4))
        v, c = instance_embeddings(embedding, mask)
        w, _ = instance_embeddings(embedding, mask, centre=True)
        plain.append(v)
        centred.append(w)
        classes.append(c)
    c = np.concatenate(classes)
    before = run_episodes(np.concatenate(plain), c, shots=1, episodes=50, seed=0)
    after = run_episodes(np.concatenate(centred), c, shots=1, episodes=50, seed=0)
    assert before.ways == after.ways == 2
    assert before.mean < 0.85
    assert after.mean == pytest.approx(1.0)


def test_episodes_need_two_classes_with_enough_instances() -> None:
    vectors = np.zeros((20, 2))
    classes = np.array([1] * 17 + [2] * 3)
    with pytest.raises(ValueError, match="two classes with at least 16 instances"):
        run_episodes(vectors, classes, shots=1)


# --------------------------------------------------------------------------
# Calibration of class offsets (issue 22: boundaries that retrained models place differently)
# --------------------------------------------------------------------------

BUNDLED_SI = Path(__file__).resolve().parents[1] / "models" / "si001-ash3.onnx"


def _shifted_model(tmp_path: Path, offsets: dict[str, float]) -> Path:
    from stm_live.model.format import attach_head, load_onnx, read_info, save_model, with_class_offsets

    model = load_onnx(BUNDLED_SI)
    info = read_info(model)
    assert info.prototypes is not None
    prototypes = with_class_offsets(info.prototypes, info.classes, offsets)
    path = tmp_path / "shifted.onnx"
    save_model(attach_head(model, prototypes), replace(info, prototypes=prototypes), path)
    return path


def test_class_offsets_in_the_head_multiply_the_class_odds(tmp_path: Path) -> None:
    from stm_live.model.format import PROBS_NAME
    from stm_live.model.runtime import SegmentationModel
    from stm_live.sim import simulate_scan

    frame = simulate_scan("si001-ash3", size_nm=12.0, pixels=128, seed=3).frame("Z", "forward")
    plain = SegmentationModel(BUNDLED_SI, provider="cpu")
    shifted = SegmentationModel(_shifted_model(tmp_path, {"AsH3": -1.0, "dimer_vacancy": 0.5}), provider="cpu")
    assert shifted.id != plain.id  # the offsets are part of what the model does
    p = plain.run(plain.prepare(frame)[0])[PROBS_NAME][0].astype(np.float64)
    q = shifted.run(shifted.prepare(frame)[0])[PROBS_NAME][0].astype(np.float64)
    expected = p * np.array([1.0, np.exp(-1.0), 1.0, np.exp(0.5)])[:, None, None]
    expected /= expected.sum(axis=0, keepdims=True)
    np.testing.assert_allclose(q, expected, atol=2e-5)


def test_calibration_finds_and_undoes_a_misplaced_class_boundary(tmp_path: Path) -> None:
    from stm_live.model.evaluate import calibrate_detection
    from stm_live.model.runtime import SegmentationModel

    # A model whose AsH3 prior is far too low (as a retrained model's can be, less so): the
    # thresholds alone cannot win back the AsH3 it now calls background or dangling bond.
    model = SegmentationModel(_shifted_model(tmp_path, {"AsH3": -5.0}), provider="cpu")
    kwargs = {"simulate": "si001-ash3", "count": 3, "seed": 50_000, "size_nm": 25.0, "pixels": 256}
    plain = calibrate_detection(model, **kwargs)
    assert "class_offsets" not in plain["calibration"]
    fitted = calibrate_detection(model, class_offsets=True, **kwargs)
    offsets = fitted["calibration"]["class_offsets"]
    assert set(offsets) == set(model.classes)
    assert offsets["AsH3"] >= 1.2  # most of the 2.4 given back
    before, after = plain["calibration"]["validation_f1"], fitted["calibration"]["validation_f1"]
    assert after["AsH3"] > before["AsH3"] + 0.02
    assert np.mean(list(after.values())) > np.mean(list(before.values()))
