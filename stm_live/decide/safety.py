"""Safety checks on what automation asks a controller to do: pure functions over :class:`Limits`.

The engine never emits a decision it knows to break a limit, and the
executor checks again, right before it sends a command: each function
returns ``None`` when the command is allowed, else the reason it is not.
"""

from __future__ import annotations

import math

from ..bridge.geometry import ScanFrame
from .rules import Limits

__all__ = ["check_frame", "check_pulse"]


def check_frame(new: ScanFrame, current: ScanFrame | None, limits: Limits) -> str | None:
    """Why moving to ``new`` (from ``current``) is not allowed, or None.

    Examples
    --------
    >>> lim = Limits(max_offset_nm=100, max_step_nm=20, min_range_nm=5, max_range_nm=80)
    >>> here = ScanFrame((0.0, 0.0), 50e-9, 50e-9)
    >>> check_frame(here.shifted(10e-9, 0), here, lim) is None
    True
    >>> check_frame(here.shifted(30e-9, 0), here, lim)
    'a move of 30 nm exceeds limits.max_step_nm (20 nm)'
    """
    x, y = new.centre_m
    if max(abs(x), abs(y)) * 1e9 > limits.max_offset_nm:
        return (f"frame centre ({x * 1e9:.4g}, {y * 1e9:.4g}) nm lies beyond limits.max_offset_nm "
                f"({limits.max_offset_nm:g} nm)")
    for name, size in (("width", new.width_m), ("height", new.height_m)):
        nm = size * 1e9
        if not limits.min_range_nm <= nm <= limits.max_range_nm:
            return (f"frame {name} {nm:.4g} nm outside limits {limits.min_range_nm:g}..{limits.max_range_nm:g} nm "
                    "(min_range_nm, max_range_nm)")
    if current is not None:
        step = math.hypot(x - current.centre_m[0], y - current.centre_m[1]) * 1e9
        if step > limits.max_step_nm + 1e-6:
            return f"a move of {step:.4g} nm exceeds limits.max_step_nm ({limits.max_step_nm:g} nm)"
    return None


def check_pulse(bias_v: float, width_s: float, limits: Limits) -> str | None:
    """Why a bias pulse of ``bias_v`` for ``width_s`` is not allowed, or None."""
    if not math.isfinite(bias_v) or abs(bias_v) > limits.max_pulse_v:
        return f"pulse of {bias_v:g} V exceeds limits.max_pulse_v ({limits.max_pulse_v:g} V)"
    if not (math.isfinite(width_s) and 0 < width_s <= limits.max_pulse_s):
        return f"pulse of {width_s:g} s outside 0..limits.max_pulse_s ({limits.max_pulse_s:g} s)"
    return None
