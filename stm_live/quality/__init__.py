"""Image quality: tip changes line by line (:mod:`.lines`) and whole frames judged (:mod:`.frame`)."""

from __future__ import annotations

from .lines import FEATURES, TipChangeDetector, TipChangeEvent, line_features

__all__ = ["FEATURES", "TipChangeDetector", "TipChangeEvent", "line_features"]
