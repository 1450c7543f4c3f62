"""Tiny real ONNX models for tests, built with onnx.helper (no torch, no training).

The "encoder" is one fixed 3x3 convolution with four output channels: the
pixel value, a local mean, and horizontal and vertical differences. With a
prototype head attached it is a complete stm-live model that onnxruntime
runs like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stm_live.model.format import EMBEDDING_NAME, INPUT_NAME, ModelInfo, Prototypes, attach_head, save_model

DIM = 4


def tiny_encoder() -> onnx.ModelProto:
    k = np.zeros((DIM, 1, 3, 3), np.float32)
    k[0, 0, 1, 1] = 1.0
    k[1, 0] = 1.0 / 9
    k[2, 0, 1, 0], k[2, 0, 1, 2] = -0.5, 0.5
    k[3, 0, 0, 1], k[3, 0, 2, 1] = -0.5, 0.5
    graph = helper.make_graph(
        [helper.make_node("Conv", [INPUT_NAME, "w"], [EMBEDDING_NAME], pads=[1, 1, 1, 1], name="enc")],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info(EMBEDDING_NAME, TensorProto.FLOAT, ["N", DIM, "H", "W"])],
        [numpy_helper.from_array(k, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def bright_dark_prototypes() -> Prototypes:
    """Class 1 = bright bump, class 2 = dark pit, background = flat noise.

    Inputs are normalised to unit noise; bumps of :func:`bumps_image` are ten
    times the noise, and their 3 x 3 mean about eight times.
    """
    vectors = np.array([[0, 0, 0, 0], [10, 8, 0, 0], [-10, -8, 0, 0]], np.float32)
    return Prototypes(vectors, (0, 1, 2), temperature=4.0)


def write_tiny_model(
    path: Path,
    *,
    nm_per_px: float = 0.2,
    head: bool = True,
    detection: dict[str, Any] | None = None,
    input_scale: str = "mad",
) -> ModelInfo:
    info = ModelInfo(
        name="tiny-bright-dark",
        classes=("bright", "dark"),
        nm_per_px=nm_per_px,
        embedding_dim=DIM,
        context_px=2,
        levelling={"method": "plane"},
        normalisation={"method": "robust", "scale": input_scale},
        surface="test",
        prototypes=bright_dark_prototypes() if head else None,
        detection=detection or {},
    )
    model = tiny_encoder()
    if head:
        model = attach_head(model, bright_dark_prototypes())
    return save_model(model, info, path)


def bumps_image(
    shape: tuple[int, int], bright: list[tuple[int, int]], dark: list[tuple[int, int]], *, noise: float = 0.1
) -> np.ndarray:
    """A flat noisy image with Gaussian bumps (+1) and pits (-1) of radius ~2 px at the given (row, col).

    ``noise`` is the standard deviation of the white noise (seeded, so the
    image is always the same).
    """
    rr, cc = np.indices(shape)
    img = np.random.default_rng(0).normal(0.0, noise, size=shape)
    for sign, centres in ((1.0, bright), (-1.0, dark)):
        for r, c in centres:
            img += sign * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.5**2))
    return img
