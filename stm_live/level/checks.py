"""Argument checks shared by the levelling functions, and the error they raise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import StmLiveError

__all__ = ["LevelError", "as_image", "check_positive"]


class LevelError(StmLiveError, ValueError):
    """An argument of a levelling function is unusable (shape, dtype, option).

    Also a :class:`ValueError`, like NumPy's own complaints about arguments.
    """


def as_image(data: Any, *, name: str = "data") -> np.ndarray:
    """Return ``data`` as a 2-D float64 array (a copy, so the caller's array is never touched).

    Raises
    ------
    LevelError
        Not a non-empty 2-D real numeric array.

    Examples
    --------
    >>> as_image([[1, 2], [3, 4]]).dtype
    dtype('float64')
    >>> as_image(np.zeros(3))
    Traceback (most recent call last):
    ...
    stm_live.level.checks.LevelError: data must be a 2-D image (rows, cols), got shape (3,)
    """
    arr = np.asarray(data)
    if arr.dtype.kind not in "fiub":
        raise LevelError(f"{name} must be a real numeric image, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise LevelError(f"{name} must be a 2-D image (rows, cols), got shape {arr.shape}")
    if 0 in arr.shape:
        raise LevelError(f"{name} must not be empty, got shape {arr.shape}")
    return np.array(arr, dtype=np.float64, order="C")


def check_positive(value: float, name: str, *, allow_inf: bool = False) -> float:
    """``value`` as a float, or :class:`LevelError` naming ``name`` when it is not > 0."""
    v = float(value)
    if not (v > 0 and (allow_inf or math.isfinite(v))):
        raise LevelError(f"{name} must be a positive number, got {value!r}")
    return v
