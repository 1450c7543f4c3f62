"""The decision engine as a sink of the daemon's document stream.

It takes the documents the rules look at (a scan's start with its position,
each levelled line, partial and final results, the scan's end) and emits a
``decision`` document for every rule that fires, which the other sinks then
publish (``decision`` on the PUB socket, where a bridge executes it when its
automation is on), log and count. It runs on its own thread like every sink,
so the rules never slow the live path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from ..errors import DecisionError
from ..publish import documents as docs
from ..publish.documents import Document
from .engine import DecisionEngine

__all__ = ["DecisionSink"]

log = logging.getLogger(__name__)


class DecisionSink:
    """Feeds documents to a :class:`DecisionEngine` and emits what it decides.

    Parameters
    ----------
    engine : DecisionEngine
        The rules (config ``decide``).
    emit : callable
        The bus's ``emit``.
    """

    topics: Final = (docs.SCAN_STARTED, docs.LEVEL_LINE, docs.SEG_PARTIAL, docs.SEG_FRAME, docs.SCAN_FINISHED)

    def __init__(self, engine: DecisionEngine, *, emit: Callable[[Document], None]) -> None:
        self.engine = engine
        self._emit = emit
        self.refused = 0

    def __call__(self, doc: Document) -> None:
        content: dict[str, Any] = {"kind": doc.topic, **doc.header}
        if doc.topic == docs.LEVEL_LINE:
            content["data"] = doc.payload
        try:
            decisions = self.engine.feed(content)
        except DecisionError as exc:  # a document the rules cannot read: say so once in a while, carry on
            self.refused += 1
            if self.refused <= 5 or self.refused % 1000 == 0:
                log.warning("decision rules: %s (%d such documents)", exc, self.refused)
            return
        for decision in decisions:
            self._emit(docs.decision(decision))
