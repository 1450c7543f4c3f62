"""One object per scan being streamed: its image buffer, journal, leveller and live segmenter together.

:class:`LiveScan` is what the :class:`~stm_live.ingest.assemble.LineAssembler`
creates for each open scan (``scan_type``), so the assembly state, the
journal file and the live path of a scan live on one object that ends with
the scan, instead of three dictionaries under the same key.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any, cast

import numpy as np

from ..frame import Frame
from ..ingest.assemble import FinishReason, LineAssembler, ScanBuffer, ScanFinished, ScanKey
from ..ingest.journal import JournalFile, JournalWriter
from ..level import LineLeveller
from ..model.live import LiveSegmenter
from ..wire import FrameMessage, LineMessage, ScanInfo

__all__ = ["LiveScan", "replay_finished", "scan_sha256"]


class LiveScan(ScanBuffer):
    """A scan being assembled, with what the daemon keeps for it while it lasts.

    Attributes
    ----------
    journal : JournalWriter or None
        Its journal file (None: not journalled, e.g. another channel).
    leveller : LineLeveller or None
        Levels each line as it arrives (None until the first wanted line).
    segmenter : LiveSegmenter or None
        Live segmentation (None: not wanted, or it failed for this scan).
    new_lines : int
        Lines added since the last partial result.
    partials : int
        Partial results published.
    arrived : float
        Clock time of the newest line (for latencies).
    wanted : bool or None
        Whether this scan is the configured channel and direction (None: not decided yet).
    """

    __slots__ = ("arrived", "journal", "leveller", "new_lines", "partials", "segmenter", "wanted")

    def __init__(self, key: ScanKey, info: ScanInfo, first_row: int, now: float, t: float | None,
                 data: np.ndarray | None = None) -> None:
        super().__init__(key, info, first_row, now, t, data)
        self.journal: JournalWriter | None = None
        self.leveller: LineLeveller | None = None
        self.segmenter: LiveSegmenter | None = None
        self.new_lines = 0
        self.partials = 0
        self.arrived = now
        self.wanted: bool | None = None


def scan_sha256(frame: Frame) -> str:
    """The identity of a streamed scan: its values *and* everything that changes its result.

    The same values sent with another physical size, channel, direction or
    scan direction segment differently, so they are another input (not a
    duplicate of the first).

    Examples
    --------
    >>> a = Frame(np.zeros((2, 2)), 1e-8, 1e-8)
    >>> scan_sha256(a) == scan_sha256(Frame(np.zeros((2, 2)), 2e-8, 1e-8))
    False
    """
    arr = np.ascontiguousarray(frame.data)
    meta = {
        "width_m": frame.width_m, "height_m": frame.height_m, "channel": frame.channel, "unit": frame.unit,
        "direction": frame.direction, "scan_direction": frame.scan_direction, "rows_valid": frame.rows_valid,
    }
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    digest.update(arr.data.cast("B"))
    return digest.hexdigest()


def replay_finished(item: JournalFile) -> ScanFinished | None:
    """The finished scan a journal file describes, rebuilt by a throwaway assembler (the same rules)."""
    assembler = LineAssembler(max_open_scans=1)
    finished: ScanFinished | None = None
    events: list[Any] = []
    for row, values, t in item.lines:
        events += assembler.feed(LineMessage(item.info, row, values, t), now=0.0)
    if item.frame is not None and np.isfinite(item.frame).any():
        events += assembler.feed(FrameMessage(item.info, item.frame), now=0.0)
    events += assembler.close_all(now=0.0)
    for event in events:
        if isinstance(event, ScanFinished):
            finished = event
    if finished is None or item.end is None:
        return None
    complete, reason = item.end
    return replace(finished, complete=complete, reason=cast(FinishReason, reason), arrived=time.monotonic())
