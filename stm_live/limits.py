"""Sane ranges for the physical size of a scan, shared by every door a scan comes in by.

Files (:mod:`stm_live.io`), the wire (:mod:`stm_live.wire`) and the
configuration (``input.width_nm``) all check sizes against these numbers, so a
scan that one door accepts is never refused, or worse, mis-processed, after
another. The ranges are wide (every real STM scan is well inside them) and
exist to stop absurd values before they reach arithmetic that overflows or
allocates without bound: a width of ``5e-324`` m, ``1e30`` m, NaN, a
nanometre value sent as metres.

The check is a pure function returning the reason (or None), so each door
raises its own error type with its own context (file path, message field).

>>> size_problem(50e-9, 50e-9, rows=512, cols=512) is None
True
>>> size_problem(5e-324, 50e-9, rows=512, cols=512)
'width 5e-324 m is outside 1e-11..0.01 m'
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "MAX_LENGTH_M",
    "MAX_PITCH_M",
    "MIN_LENGTH_M",
    "MIN_PITCH_M",
    "length_problem",
    "size_problem",
]

#: Smallest scan width or height: 10 pm (a tenth of an atom; real scans start near 1 nm).
MIN_LENGTH_M: Final = 1e-11
#: Largest scan width or height: 1 cm (no STM piezo moves that far; catches nanometres sent as metres).
MAX_LENGTH_M: Final = 1e-2
#: Smallest pixel pitch (width / cols, height / rows): 0.1 pm, far below any piezo's resolution.
MIN_PITCH_M: Final = 1e-13
#: Largest pixel pitch: 100 um per pixel (a 1 cm survey at 100 px).
MAX_PITCH_M: Final = 1e-4


def _short(value: float) -> str:
    """The shortest exact form when it is short (``5e-324``), else 6 significant digits."""
    text = repr(value)
    return text if len(text) <= 10 else f"{value:.6g}"


def _outside(value: float, lo: float, hi: float) -> bool:
    # Written so that NaN is outside too (every comparison with NaN is False).
    return not (math.isfinite(value) and lo <= value <= hi)


def length_problem(label: str, length_m: float, pixels: int) -> str | None:
    """Why one side of a scan (``length_m`` over ``pixels``) is not sane, or None when it is.

    >>> length_problem("width", 1e30, 512)
    'width 1e+30 m is outside 1e-11..0.01 m'
    >>> length_problem("height", 1e-11, 512)
    'pixel pitch 1.95312e-14 m (height 1e-11 m / 512 px) is outside 1e-13..0.0001 m'
    """
    try:
        length = float(length_m)
    except (TypeError, ValueError):
        return f"{label} {length_m!r} is not a number of metres"
    if _outside(length, MIN_LENGTH_M, MAX_LENGTH_M):
        return f"{label} {_short(length)} m is outside {MIN_LENGTH_M:g}..{MAX_LENGTH_M:g} m"
    pitch = length / pixels
    if _outside(pitch, MIN_PITCH_M, MAX_PITCH_M):
        return (
            f"pixel pitch {pitch:g} m ({label} {_short(length)} m / {pixels} px) is outside "
            f"{MIN_PITCH_M:g}..{MAX_PITCH_M:g} m"
        )
    return None


def size_problem(width_m: float, height_m: float, *, rows: int, cols: int) -> str | None:
    """Why a scan's physical size is not sane, or None when it is.

    Parameters
    ----------
    width_m, height_m : float
        Physical size of the whole frame in metres (not nanometres).
    rows, cols : int
        Pixels of the whole frame (lines, pixels per line), at least 1.

    Returns
    -------
    str or None
        A short reason naming the value and the range it is outside
        (``"width 1e+30 m is outside 1e-11..0.01 m"``), for the caller to
        put in its own error with the file or field name.
    """
    return length_problem("width", width_m, cols) or length_problem("height", height_m, rows)
