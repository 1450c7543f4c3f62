"""The one path from a levelled image to the model's input, shared by training and runtime.

``prepare_image`` resamples to the model's pitch and normalises; the trainer
and :class:`~stm_live.model.runtime.SegmentationModel` both call it, so the
model sees at run time exactly what it saw in training.

Grids: both the image and the model grid start at the image's top-left
corner; pixel ``i`` of a grid with pitch ``p`` has its centre at
``(i + 0.5) * p`` nm (the convention of
:func:`~stm_live.level.resample_to_pitch`). ``grid_index`` maps image pixels
to the model pixel under their centre (class map back to the image),
``sample_index`` model pixels to the image pixel under theirs (labels to the
model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..level import level_frame, normalise_robust, resample_to_pitch

__all__ = [
    "DEFAULT_LEVELLING",
    "DEFAULT_NORMALISATION",
    "grid_index",
    "level_for_model",
    "model_grid_shape",
    "prepare_image",
    "sample_index",
]

#: Levelling applied to whole frames before the model (stored in model metadata).
DEFAULT_LEVELLING: dict[str, Any] = {"method": "step-aware"}
#: Normalisation of the model input (stored in model metadata).
DEFAULT_NORMALISATION: dict[str, Any] = {"method": "robust", "scale": "mad", "clip": 8.0}


def _levelling_of(spec: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    levelling = getattr(spec, "levelling", spec)
    return levelling if levelling else DEFAULT_LEVELLING


def level_for_model(data: np.ndarray, spec: Mapping[str, Any] | Any) -> np.ndarray:
    """Level ``data`` (acquired rows of a frame) the way the model was trained.

    ``spec`` is a model's :class:`~stm_live.model.format.ModelInfo` or its
    ``levelling`` mapping (``{"method": ...}`` plus options for ``level_frame``).
    """
    options = dict(_levelling_of(spec))
    method = options.pop("method", DEFAULT_LEVELLING["method"])
    return level_frame(data, method=method, **options)


def model_grid_shape(
    shape: tuple[int, int], *, nm_per_px: tuple[float, float], target_nm_per_px: float
) -> tuple[int, int]:
    """Rows and columns of an image of ``shape`` after resampling to ``target_nm_per_px``.

    >>> model_grid_shape((512, 512), nm_per_px=(0.1, 0.1), target_nm_per_px=0.2)
    (256, 256)
    """
    rows, cols = shape
    return (
        max(1, round(rows * nm_per_px[1] / target_nm_per_px)),
        max(1, round(cols * nm_per_px[0] / target_nm_per_px)),
    )


def prepare_image(
    levelled: np.ndarray,
    *,
    nm_per_px: tuple[float, float],
    target_nm_per_px: float | None = None,
    normalisation: Mapping[str, Any] | None = None,
    info: Any = None,
) -> np.ndarray:
    """The model input: levelled image resampled to the model pitch and normalised.

    Parameters
    ----------
    levelled : numpy.ndarray
        ``(rows, cols)`` levelled image (any units); NaN (missing) pixels are
        filled with the image median before resampling.
    nm_per_px : tuple of float
        Its pitch ``(x, y)``, nm.
    target_nm_per_px, normalisation
        The model's pitch and normalisation; taken from ``info`` (a
        :class:`~stm_live.model.format.ModelInfo`) when not given.

    Returns
    -------
    numpy.ndarray
        ``model_grid_shape(...)`` float32, C-contiguous.
    """
    if target_nm_per_px is None:
        target_nm_per_px = float(info.nm_per_px)
    if normalisation is None:
        normalisation = info.normalisation if info is not None else DEFAULT_NORMALISATION
    image = np.asarray(levelled, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        fill = float(np.median(image[finite])) if finite.any() else 0.0
        image = np.where(finite, image, np.float32(fill))
    resampled = resample_to_pitch(image, nm_per_px=nm_per_px, target_nm_per_px=target_nm_per_px)
    options = dict(normalisation)
    method = options.pop("method", "robust")
    if method != "robust":
        raise ValueError(f"unknown normalisation {method!r} in model metadata")
    return np.ascontiguousarray(normalise_robust(resampled, **options), dtype=np.float32)


def grid_index(n_in: int, n_out: int, ratio: float) -> np.ndarray:
    """For each of ``n_in`` image pixels, the model pixel under its centre.

    ``ratio`` is the model pitch over the image pitch (> 1: the model grid
    is coarser). Indices are clipped to the ``n_out`` model pixels.

    >>> grid_index(4, 2, 2.0).tolist()
    [0, 0, 1, 1]
    """
    return np.minimum(((np.arange(n_in) + 0.5) / ratio).astype(np.intp), n_out - 1)


def sample_index(n_out: int, n_in: int, ratio: float) -> np.ndarray:
    """For each of ``n_out`` model pixels, the image pixel under its centre (``ratio`` as above).

    >>> sample_index(2, 4, 2.0).tolist()
    [1, 3]
    """
    return np.minimum(((np.arange(n_out) + 0.5) * ratio).astype(np.intp), n_in - 1)


def to_model_grid(
    values: np.ndarray, model_shape: tuple[int, int], *, nm_per_px: tuple[float, float], target_nm_per_px: float
) -> np.ndarray:
    """Nearest-pixel sampling of an image-grid array (labels, masks) onto the model grid.

    >>> to_model_grid(np.arange(16).reshape(4, 4), (2, 2), nm_per_px=(0.1, 0.1), target_nm_per_px=0.2).tolist()
    [[5, 7], [13, 15]]
    """
    rows = sample_index(model_shape[0], values.shape[0], target_nm_per_px / nm_per_px[1])
    cols = sample_index(model_shape[1], values.shape[1], target_nm_per_px / nm_per_px[0])
    return values[np.ix_(rows, cols)]


def to_image_grid(
    values: np.ndarray, image_shape: tuple[int, int], *, nm_per_px: tuple[float, float], target_nm_per_px: float
) -> np.ndarray:
    """Nearest-pixel mapping of a model-grid array (class map) back to the image grid.

    >>> to_image_grid(np.array([[1, 2], [3, 4]]), (4, 4), nm_per_px=(0.1, 0.1), target_nm_per_px=0.2).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    """
    rows = grid_index(image_shape[0], values.shape[0], target_nm_per_px / nm_per_px[1])
    cols = grid_index(image_shape[1], values.shape[1], target_nm_per_px / nm_per_px[0])
    return values[np.ix_(rows, cols)]
