"""Export a trained encoder (and its prototype head) to an stm-live ONNX model."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from ..model.format import EMBEDDING_NAME, INPUT_NAME, ModelInfo, Prototypes, attach_head, save_model, strip_debug_info
from .net import Encoder

__all__ = ["OPSET", "encoder_to_onnx", "export_model"]

OPSET = 18
log = logging.getLogger(__name__)


def encoder_to_onnx(encoder: Encoder) -> onnx.ModelProto:
    """The encoder as an ONNX graph ``image [N,1,H,W] -> embedding [N,D,H,W]``, dynamic N, H, W."""
    encoder = encoder.eval()
    n = torch.export.Dim("N", min=1, max=4096)
    h = torch.export.Dim("H", min=4, max=16384)
    w = torch.export.Dim("W", min=4, max=16384)
    example = (torch.zeros(2, 1, 64, 64),)
    torch_log = logging.getLogger("torch")
    previous = torch_log.level
    torch_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes: irrelevant here
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # torch's exporter emits deprecation chatter from its own internals
        # (and progress lines on stdout); none of it concerns this graph.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            encoder,
            example,
            input_names=[INPUT_NAME],
            output_names=[EMBEDDING_NAME],
            dynamic_shapes=({0: n, 2: h, 3: w},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    torch_log.setLevel(previous)
    assert program is not None  # None only from the legacy (dynamo=False) exporter
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "encoder.onnx")
        program.save(path)
        model = onnx.load(path)
    # The exporter tags each node with the Python stack that made it (absolute paths of
    # this checkout, line numbers of net.py): nothing the runtime needs.
    model = strip_debug_info(model)
    onnx.checker.check_model(model)
    return model


def export_model(
    encoder: Encoder,
    info: ModelInfo,
    path: str | os.PathLike[str],
    *,
    prototypes: Prototypes | None = None,
) -> ModelInfo:
    """Write ``encoder`` (+ a head from ``prototypes``) with ``info`` as metadata to ``path``.

    Returns the saved :class:`ModelInfo` (with its id).
    """
    model = encoder_to_onnx(encoder)
    if prototypes is not None:
        model = attach_head(model, prototypes)
    saved = save_model(model, replace(info, prototypes=prototypes, embedding_dim=encoder.dim), Path(path))
    log.info("wrote %s (model %s, %d classes)", path, saved.id, len(saved.classes))
    return saved
