"""onnxruntime providers: the GPU chain, the CPU fallback in one line, and one onnxruntime build only.

What can be checked without a GPU is checked for real: this machine's
onnxruntime has no CUDA, so asking it for CUDA and TensorRT exercises the
fallback; the installed package metadata shows what each extra pulls in.
The test that needs a GPU skips with a reason.
"""

from __future__ import annotations

import logging
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from tiny_models import bumps_image, write_tiny_model

from stm_live.errors import ModelError
from stm_live.frame import Frame
from stm_live.model.runtime import (
    SegmentationModel,
    create_session,
    import_onnxruntime,
    onnxruntime_install_problem,
    provider_chain,
)

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    write_tiny_model(path, nm_per_px=0.2)
    return path


def test_the_chain_prefers_tensorrt_then_cuda_then_the_cpu() -> None:
    assert provider_chain("auto", ALL) == [ALL, ALL[1:], ALL[2:]]
    assert provider_chain("auto", ALL[1:]) == [ALL[1:], ALL[2:]]
    assert provider_chain("auto", ["CPUExecutionProvider"]) == [["CPUExecutionProvider"]]
    assert provider_chain("cpu", ALL) == [["CPUExecutionProvider"]]
    assert provider_chain("cuda", ALL) == [ALL[1:]]
    with pytest.raises(ModelError, match=r"no CUDAExecutionProvider .* install stm-live\[gpu\]"):
        provider_chain("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="unknown onnxruntime provider choice 'rocm'"):
        provider_chain("rocm", ALL)


def test_a_gpu_that_does_not_start_falls_back_to_the_cpu_in_one_log_line(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ort = import_onnxruntime()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback is tested where it has not")
    model_bytes = tiny_model.read_bytes()
    with caplog.at_level(logging.INFO, logger="stm_live"):
        session, active = create_session(model_bytes, ort.SessionOptions(), "auto", source="tiny.onnx",
                                         available=ALL)
    assert active == ["CPUExecutionProvider"]
    lines = [r for r in caplog.records if r.name == "stm_live.model.runtime"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].getMessage().startswith("tiny.onnx: no usable GPU, running on the CPU (TensorrtExecutionProvider")
    x = np.zeros((1, 1, 16, 16), np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape[0] == 1
    # Asked for explicitly, a CUDA that does not start is an error, not a quiet CPU run.
    with pytest.raises(ModelError, match=r"model\.provider is 'cuda' but CUDA did not start"):
        create_session(model_bytes, ort.SessionOptions(), "cuda", source="tiny.onnx", available=ALL)


def test_the_cpu_build_runs_without_a_log_line_and_a_broken_model_is_one_error(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="stm_live"):
        model = SegmentationModel(tiny_model)  # provider "auto"
    assert model.providers[0] in ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
    if model.providers == ["CPUExecutionProvider"]:
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    ort = import_onnxruntime()
    with pytest.raises(ModelError, match=r"broken\.onnx: onnxruntime cannot load the model"):
        create_session(b"not an onnx model", ort.SessionOptions(), "auto", source="broken.onnx")


def test_exactly_one_onnxruntime_build_may_be_installed() -> None:
    assert onnxruntime_install_problem({"onnxruntime": "1.20.0"}) is None
    assert onnxruntime_install_problem({"onnxruntime-gpu": "1.20.0", "numpy": "2"}) is None
    mix = onnxruntime_install_problem({"onnxruntime": "1.20.0", "onnxruntime_gpu": "1.20.1"})
    assert mix is not None and "onnxruntime 1.20.0 and onnxruntime-gpu 1.20.1 are installed together" in mix
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in mix
    none = onnxruntime_install_problem({"numpy": "2"})
    assert none is not None and "pip install 'stm-live[cpu]'" in none


def test_this_environment_has_one_onnxruntime_build_and_it_imports() -> None:
    installed = {d.metadata["Name"] for d in metadata.distributions()}
    builds = {n for n in installed if re.fullmatch(r"onnxruntime([-_].+)?", n.lower())}
    assert len(builds) == 1, builds
    assert import_onnxruntime().__name__ == "onnxruntime"


def _requirements(extras: set[str]) -> set[str]:
    """Distribution names stm-live's metadata pulls in for ``extras`` (markers evaluated, no resolver)."""
    from packaging.requirements import Requirement

    names = set()
    for text in metadata.requires("stm-live") or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            names.add(req.name.lower())
    return names


def test_the_extras_make_a_gpu_install_that_cannot_mix_with_the_cpu_build() -> None:
    base = _requirements(set())
    assert not {n for n in base if n.startswith("onnxruntime")}, "onnxruntime must not be a base dependency"
    assert {n for n in _requirements({"cpu"}) if n.startswith("onnxruntime")} == {"onnxruntime"}
    assert {n for n in _requirements({"gpu"}) if n.startswith("onnxruntime")} == {"onnxruntime-gpu"}
    for extra in ("train", "batch", "gpu"):
        assert "onnxruntime" not in _requirements({extra}), f"the {extra} extra must not pull in the CPU build"
    # The dev extra (tests, CI) takes the CPU build through stm-live[cpu].
    dev = [r for r in metadata.requires("stm-live") or [] if r.startswith("stm-live[")]
    assert dev and "cpu" in dev[0] and "gpu" not in dev[0]


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-gpu and an NVIDIA GPU (pip install 'stm-live[gpu]')",
)
def test_on_a_gpu_auto_runs_on_it_with_the_cpus_detections(tiny_model: Path) -> None:
    image = bumps_image((96, 128), [(20, 30), (60, 90)], [(40, 100)])
    frame = Frame(image, width_m=25.6e-9, height_m=19.2e-9)
    gpu = SegmentationModel(tiny_model, provider="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    cpu = SegmentationModel(tiny_model, provider="cpu")
    a, b = gpu.segment(frame), cpu.segment(frame)
    assert [d.class_name for d in a.detections] == [d.class_name for d in b.detections]
    np.testing.assert_allclose([d.x_nm for d in a.detections], [d.x_nm for d in b.detections], atol=0.05)
