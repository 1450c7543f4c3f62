"""Decision messages: a ``decision`` travels as ``[b"decision", header]`` (JSON, no payload).

Its one definition is :data:`stm_live.wire.topics.DECISION` (which also
generates ``stm_live/schemas/decision.json`` and the table in
``docs/protocol.md``); this module keeps the names the decision engine and the
bridge use.
"""

from __future__ import annotations

from typing import Any

from ..errors import WireError
from ..wire import check_header, load_schema

__all__ = ["check_decision", "load_decision_schema"]


def load_decision_schema() -> dict[str, Any]:
    """The JSON schema of a decision (a fresh dict each call)."""
    return load_schema("decision")


def check_decision(obj: Any) -> dict[str, Any]:
    """Check a decision dict against its definition; return it.

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
    check_header("decision", obj)
    return obj
