"""Pinned numerics: the same recipe gives the same weights on any x86-64 CPU with AVX2.

The libraries training uses pick their kernels by the CPU they run on, and
kernels for different instruction sets add floating-point numbers in different
orders. Over thousands of optimiser steps the last-bit differences grow into
different models (`docs/model.md`, Reproducibility). Measured on one machine
(an AVX-512 Xeon), each of these changed the weights of a short training run
or the simulated training frames:

* torch's own vectorised kernels (``ATEN_CPU_CAPABILITY``: AVX-512 or AVX2);
* oneDNN, which runs the convolutions (``ONEDNN_MAX_CPU_ISA``);
* MKL, which runs torch's matrix products (``MKL_CBWR``; ``COMPATIBLE`` is the
  one branch MKL promises to give alike on Intel and other x86 CPUs);
* OpenBLAS, which numpy and scipy use while simulating and levelling the
  training frames (``OPENBLAS_CORETYPE``);
* the number of torch threads (the ``threads`` setting).

The libraries read these variables when they load, so a pinned run is a fresh
process started with them (:func:`pinned_environment`; ``stm-live train``
does that). This module imports neither numpy's BLAS users nor torch.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PINNED_ENV", "actual_numerics", "can_pin", "is_pinned", "pinned_environment"]

log = logging.getLogger(__name__)

#: The environment of a pinned training process: AVX2 kernels everywhere, the widest
#: instruction set that both current Intel and AMD server CPUs run.
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_CORETYPE": "Haswell",
    # The simulator's matrices are small; one thread also takes the thread split out of the picture.
    "OPENBLAS_NUM_THREADS": "1",
}


def can_pin() -> bool:
    """Whether this CPU runs the pinned kernels: x86-64 with AVX2 and FMA.

    OpenBLAS told to use Haswell kernels on a CPU without them would stop on
    an illegal instruction, so nothing is pinned there.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    import importlib

    features: dict[str, bool] = {}
    # numpy's own CPU feature detection (private, but there since numpy 1.20; moved in 2.0)
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = dict(importlib.import_module(module).__cpu_features__)
            break
        except (ImportError, AttributeError):
            continue
    return bool(features.get("AVX2") and features.get("FMA3"))


def is_pinned(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` (default: this process's) holds every pinned value."""
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PINNED_ENV.items())


def pinned_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the pinned values; unchanged where :func:`can_pin` is false."""
    out = dict(os.environ if env is None else env)
    if can_pin():
        out.update(PINNED_ENV)
    return out


def actual_numerics() -> dict[str, Any]:
    """What this process's libraries actually use, for the training report and model metadata.

    Imports torch. ``pinned`` is true when every library runs the pinned kernels.
    """
    import torch
    from threadpoolctl import threadpool_info

    blas = [
        {"library": Path(str(i.get("filepath", ""))).name, "architecture": i.get("architecture"),
         "threads": i.get("num_threads")}
        for i in threadpool_info()
        if i.get("internal_api") == "openblas"
    ]
    out: dict[str, Any] = {
        "machine": platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "environment": {k: os.environ.get(k) for k in PINNED_ENV},
        "openblas": blas,
    }
    out["pinned"] = bool(
        is_pinned()
        and out["torch_cpu_capability"] == "AVX2"
        and all(b["architecture"] == PINNED_ENV["OPENBLAS_CORETYPE"] for b in blas)
    )
    return out
