"""Decisions: rules over the live results and image quality, and the safety limits.

* :mod:`.rules`: the ``decide:`` configuration (rules, conditions, actions, limits);
* :mod:`.engine`: :class:`DecisionEngine` ``(rules, clock).feed(doc) -> list[decision]``, pure;
* :mod:`.safety`: the limit checks the engine and the executor share;
* :mod:`.messages`: the ``decision`` message check (schema ``schemas/decision.json``).

The engine is imported lazily, so that reading the configuration stays light.
"""

from __future__ import annotations

from typing import Any

from .rules import DecideSection, Limits, Rule

__all__ = ["DecideSection", "DecisionEngine", "Limits", "Rule"]


def __getattr__(name: str) -> Any:
    if name == "DecisionEngine":
        from .engine import DecisionEngine

        return DecisionEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
