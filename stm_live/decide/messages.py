"""Decision messages: the check both sides run (schema ``stm_live/schemas/decision.json``).

A ``decision`` travels as ``[b"decision", header]`` (JSON, no payload), like
the other protocol v1 messages. :func:`check_decision` is the hand-written
twin of the schema (no schema library at run time); a test keeps the two in step.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Any

from ..errors import WireError

__all__ = ["check_decision", "load_decision_schema"]

_REQUIRED = ("v", "scan_id", "rule", "action", "params", "reason", "t")
_OPTIONAL = ("id",)
_ACTIONS = ("stop", "rescan", "move", "zoom", "pulse", "tip_shape", "survey")
_PARAMS = {"x_nm", "y_nm", "width_nm", "target", "bias_v", "width_s", "rescan", "frame", "cell"}


@cache
def _schema_text() -> str:
    return resources.files("stm_live").joinpath("schemas", "decision.json").read_text(encoding="utf-8")


def load_decision_schema() -> dict[str, Any]:
    """The JSON schema of a decision (a fresh dict each call)."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def _number(obj: dict[str, Any], key: str, where: str, *, positive: bool = False) -> None:
    v = obj.get(key)
    if v is None:
        return
    if type(v) not in (int, float) or not math.isfinite(v) or (positive and v <= 0):
        raise WireError(f"{where}: field {key!r} = {v!r}: expected a finite{' positive' if positive else ''} number")


def check_decision(obj: Any) -> dict[str, Any]:
    """Check a decision dict against the protocol; return it.

    Raises
    ------
    WireError
        Naming the field, the bad value and what was expected.

    Examples
    --------
    >>> check_decision({"v": 1, "scan_id": "s1", "rule": "r", "action": "rescan", "params": {}, "reason": "",
    ...                 "t": 1.0})["action"]
    'rescan'
    """
    if not isinstance(obj, dict):
        raise WireError(f"decision: expected a JSON object, got {type(obj).__name__}")
    sid = obj.get("scan_id")
    where = f"decision (scan {sid!r})" if isinstance(sid, str) else "decision"
    for k in _REQUIRED:
        if k not in obj:
            raise WireError(f"{where}: missing required field {k!r}")
    extra = sorted(set(obj) - set(_REQUIRED) - set(_OPTIONAL))
    if extra:
        raise WireError(f"{where}: unknown field {extra[0]!r}; a decision has only "
                        f"{', '.join(sorted(_REQUIRED + _OPTIONAL))}")
    if obj["v"] != 1 or type(obj["v"]) is not int:
        raise WireError(f"{where}: field 'v' = {obj['v']!r}: expected 1")
    for k in ("scan_id", "rule", "reason"):
        if not isinstance(obj[k], str) or (k != "reason" and not obj[k]):
            raise WireError(f"{where}: field {k!r} = {obj[k]!r}: expected a text")
    if obj["action"] not in _ACTIONS:
        raise WireError(f"{where}: field 'action' = {obj['action']!r}: expected one of {', '.join(_ACTIONS)}")
    _number(obj, "t", where)
    params = obj["params"]
    if not isinstance(params, dict):
        raise WireError(f"{where}: field 'params' = {params!r}: expected an object")
    extra = sorted(set(params) - _PARAMS)
    if extra:
        raise WireError(f"{where}: unknown parameter {extra[0]!r}; expected some of {', '.join(sorted(_PARAMS))}")
    for k in ("x_nm", "y_nm", "bias_v"):
        _number(params, k, where)
    for k in ("width_nm", "width_s"):
        _number(params, k, where, positive=True)
    frame = params.get("frame")
    if frame is not None:
        if not isinstance(frame, dict) or not {"x_m", "y_m", "width_m", "height_m"} <= set(frame):
            raise WireError(f"{where}: parameter 'frame' = {frame!r}: expected x_m, y_m, width_m, height_m "
                            "[, angle_deg]")
        for k in ("x_m", "y_m", "angle_deg"):
            _number(frame, k, where)
        for k in ("width_m", "height_m"):
            _number(frame, k, where, positive=True)
    return obj
