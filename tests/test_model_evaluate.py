"""Instance embeddings, per-frame feature centring and the few-shot episodes of ``stm-live evaluate``."""

from __future__ import annotations

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
