"""The CPU image of ``deploy/Dockerfile.cpu``: built and its demo run, where Docker is available."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TAG = "stm-live:test-cpu"


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("Docker is not installed here (no docker command); the image is built where it is")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers `docker info`: {(info.stderr or info.stdout).strip()[:200]}")
    return docker


def test_dockerfiles_install_exactly_one_onnxruntime_build() -> None:
    cpu = (REPO / "deploy" / "Dockerfile.cpu").read_text()
    gpu = (REPO / "deploy" / "Dockerfile.gpu").read_text()
    assert 'pip install ".[cpu,batch]"' in cpu and "gpu" not in cpu.split("pip install")[1].split("\n")[0]
    assert 'pip install ".[gpu,batch]"' in gpu and "cpu" not in gpu.split("pip install")[1].split("\n")[0]
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        ignored = (REPO / "deploy" / f"{name}.dockerignore").read_text().splitlines()
        copied = {"pyproject.toml", "setup.py", "README.md", "stm_live", "models"}
        assert ignored[ignored.index("*")] == "*" and {f"!{c}" for c in copied} <= set(ignored)


@pytest.mark.slow
def test_the_cpu_image_builds_and_runs_the_demo() -> None:
    docker = _docker()
    build = subprocess.run([docker, "build", "-f", str(REPO / "deploy" / "Dockerfile.cpu"), "-t", TAG, str(REPO)],
                           capture_output=True, text=True, timeout=1800, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    try:
        demo = subprocess.run([docker, "run", "--rm", TAG, "demo", "--frames", "1", "--line-time", "0.005",
                               "--pixels", "256", "--size-nm", "25"],
                              capture_output=True, text=True, timeout=600, check=False)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "stm-live-demo" in demo.stdout + demo.stderr
        version = subprocess.run([docker, "run", "--rm", TAG, "--version"], capture_output=True, text=True,
                                 timeout=120, check=False)
        assert version.stdout.startswith("stm-live ")
    finally:
        subprocess.run([docker, "image", "rm", "-f", TAG], capture_output=True, timeout=120, check=False)
