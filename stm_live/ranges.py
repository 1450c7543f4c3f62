"""Sane ranges of numeric settings: :class:`Range`, as ``Annotated`` metadata, and the common kinds.

Every numeric key of ``config.yaml`` (and of the sections other packages
define, such as ``bridge:``) carries one, so an absurd value stops start-up
with the key, the value and the range (:mod:`stm_live.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, ValidationInfo
from pydantic_core import core_schema

__all__ = ["Lines", "Messages", "Range", "Seconds", "Sigmas", "check_retry_max", "plain_number"]


def plain_number(value: float) -> str:
    """``1000000`` rather than ``1e+06`` for whole numbers; ``0.001`` stays ``0.001``."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """A number's sane range, as ``Annotated`` metadata: ``Annotated[int, Range(1, 1000)]``.

    Every numeric setting has one, so an absurd value (``ingest.rcv_hwm:
    3000000000``, which ZeroMQ cannot take, or a timeout of ``1e300`` s)
    stops start-up with the key, the value and the range, instead of failing
    later deep inside a socket or a timer. Booleans are refused (YAML's
    ``yes`` is not a number), NaN and infinities fall outside every range.
    ``above=True`` makes the lower bound exclusive.
    """

    lo: float
    hi: float
    above: bool = False
    unit: str = ""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(
            self._not_bool, core_schema.no_info_after_validator_function(self._check, handler(source))
        )

    def describe(self, integer: bool) -> str:
        """``"an integer from 1 to 1000000"``, ``"a number above 0, up to 86400 s"``."""
        kind = "an integer" if integer else "a number"
        unit = f" {self.unit}" if self.unit else ""
        lo, hi = plain_number(self.lo), plain_number(self.hi)
        if self.above:
            return f"{kind} above {lo}, up to {hi}{unit}"
        return f"{kind} from {lo} to {hi}{unit}"

    @staticmethod
    def _not_bool(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, not true/false")
        return value

    def _check(self, value: float) -> float:
        low_ok = value > self.lo if self.above else value >= self.lo
        if not (math.isfinite(value) and low_ok and value <= self.hi):
            raise ValueError(f"out of range: expected {self.describe(isinstance(value, int))}")
        return value


#: Durations in seconds: at least a millisecond (no busy loops), at most a day
#: (threading timers overflow near 1e9 s; nothing here waits longer than a day).
Seconds = Annotated[float, Range(1e-3, 86400.0, unit="s")]
#: A count of messages ZeroMQ may queue on one socket: a C int there, and each
#: message may hold a line or a frame, so far below 2**31.
Messages = Annotated[int, Range(1, 1_000_000)]
#: A threshold in robust standard deviations.
Sigmas = Annotated[float, Range(0.0, 100.0, above=True)]
#: A number of scan lines (the largest scan has 32768).
Lines = Annotated[float, Range(0.0, 32768.0, above=True)]


def check_retry_max(value: float, info: ValidationInfo) -> float:
    """Validator body of a ``retry_max_s`` setting: at least its section's ``retry_initial_s``."""
    initial = info.data.get("retry_initial_s")
    if initial is not None and value < initial:
        raise ValueError(f"expected at least retry_initial_s ({initial:g})")
    return value
