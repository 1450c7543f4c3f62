"""The typed Python form of each message: what the decoders return and the encoders take.

The fields of the headers are defined once, in :mod:`stm_live.wire.topics`;
a test checks that these dataclasses carry every header field (some under a
Python name: ``model`` is ``model_id`` + ``model_name``, ``map_rows`` is
``map_row0`` + the class map's rows) and nothing the headers lack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..frame import Detection, Direction
from .topics import TOPIC_PARTIAL, TOPIC_SEG_FRAME

__all__ = [
    "DecisionMessage",
    "EndMessage",
    "FrameMessage",
    "IngestMessage",
    "LevelLineMessage",
    "LineMessage",
    "Message",
    "ScanInfo",
    "SegMessage",
    "StatusMessage",
]


@dataclass(frozen=True)
class ScanInfo:
    """What a line or frame header says about its scan; the same for every line of it.

    Parameters
    ----------
    scan_id : str
        The controller's name for the scan (1..128 characters, no control characters).
    rows, cols : int
        Lines x pixels per line of the whole frame.
    width_m, height_m : float
        Physical size of the whole frame in metres.
    channel : str
        Channel name (``"Z"``, ``"Current"``).
    direction : {"forward", "backward"}
        Trace or retrace; backward lines are sent already in display order
        (left to right), as everything in stm-live.
    unit : str
        Unit of the values (``"m"`` for Z, ``"A"`` for current).
    bias_v, setpoint_a, angle_deg : float, optional
        Sample bias (V), current setpoint (A), scan-frame rotation (deg).
    offset_m : tuple of float, optional
        Scan-frame centre ``(x, y)`` in metres.
    """

    scan_id: str
    rows: int
    cols: int
    width_m: float
    height_m: float
    channel: str = "Z"
    direction: Direction = "forward"
    unit: str = "m"
    bias_v: float | None = None
    setpoint_a: float | None = None
    offset_m: tuple[float, float] | None = None
    angle_deg: float | None = None

    @property
    def geometry(self) -> tuple[int, int, float, float]:
        """``(rows, cols, width_m, height_m)``: what must not change within a scan."""
        return (self.rows, self.cols, self.width_m, self.height_m)


@dataclass(frozen=True, eq=False)
class LineMessage:
    """``stm.line``: one scan line.

    ``data`` is ``(cols,)``; decoded lines are native float32 (NaN = missing
    pixel). For encoding any array of a dtype in :data:`PAYLOAD_DTYPES` is
    sent as it is. ``row`` counts from the top of the displayed image;
    ``t`` is the acquisition time of the line (Unix seconds), if known.
    """

    scan: ScanInfo
    row: int
    data: np.ndarray
    t: float | None = None


@dataclass(frozen=True, eq=False)
class FrameMessage:
    """``stm.frame``: a whole image, ``data`` of shape ``(rows, cols)`` in display order."""

    scan: ScanInfo
    data: np.ndarray
    t: float | None = None


@dataclass(frozen=True)
class EndMessage:
    """``stm.end``: the scan ``scan_id`` is over; ``complete=False`` means aborted."""

    scan_id: str
    complete: bool


@dataclass(frozen=True, eq=False)
class SegMessage:
    """``seg.partial`` (``final=False``) or ``seg.frame`` (``final=True``).

    Parameters
    ----------
    scan_id : str
        The scan (for files: the file name without suffix).
    rows_done, rows, cols : int
        Rows segmented so far, of the frame's ``rows`` x ``cols``.
    width_m, height_m : float
        Physical size of the whole frame (m).
    model_id, model_name : str
        The model that segmented it.
    classes : tuple of str
        Class names; class map value ``k`` is ``classes[k - 1]``, 0 background.
    detections : tuple of Detection
        Features found, ``x_nm`` from the left, ``y_nm`` from the top edge.
    latency_ms : float
        Arrival of the (last) line to publication, ms.
    class_map : numpy.ndarray, optional
        ``uint8`` ``(n, cols)`` class map of display rows ``map_row0 ..
        map_row0 + n - 1`` (the rows done), sent as the payload; None sends
        no payload (``publish.label_maps`` off).
    map_row0 : int
        First display row ``class_map`` covers (0 for a downward scan).
    final : bool
        True for ``seg.frame``.
    source : str, optional
        ``seg.frame`` only: the file path, or ``"zmq"``.
    complete : bool, optional
        ``seg.frame`` only: the scan finished normally with every row.
    position : Mapping, optional
        Where on the sample (:func:`stm_live.publish.documents.position`).
    not_segmented : str, optional
        ``seg.frame`` only: why the model was not applied (then no detections).
    """

    scan_id: str
    rows_done: int
    rows: int
    cols: int
    width_m: float
    height_m: float
    model_id: str
    model_name: str
    classes: tuple[str, ...]
    detections: tuple[Detection, ...]
    latency_ms: float
    class_map: np.ndarray | None = None
    map_row0: int = 0
    final: bool = False
    source: str | None = None
    complete: bool | None = None
    position: Mapping[str, Any] | None = None
    not_segmented: str | None = None

    @property
    def topic(self) -> str:
        """``"seg.frame"`` or ``"seg.partial"``."""
        return TOPIC_SEG_FRAME if self.final else TOPIC_PARTIAL


@dataclass(frozen=True)
class StatusMessage:
    """``status``: the daemon's heartbeat.

    ``counters`` has at least ``frames``, ``lines``, ``errors`` and
    ``dropped`` (messages not published because a subscriber was full);
    ``queues`` maps queue names to their depth; ``t`` is Unix seconds.
    """

    state: Literal["starting", "running", "stopping"]
    uptime_s: float
    counters: Mapping[str, int]
    queues: Mapping[str, int]
    version: str
    t: float
    model_id: str | None = None
    model_name: str | None = None


@dataclass(frozen=True)
class DecisionMessage:
    """``decision``: what a rule decided for a scan (``params`` as the decision's JSON object)."""

    scan_id: str
    rule: str
    action: str
    params: Mapping[str, Any]
    reason: str
    t: float
    id: str | None = None


@dataclass(frozen=True, eq=False)
class LevelLineMessage:
    """``level.line``: display row ``row`` of scan ``scan_id``, levelled, as it arrived.

    ``data`` is ``(cols,)`` float32 (NaN: missing pixel); ``rows_done`` counts
    the rows acquired so far from the scan's start edge (``scan_direction``).
    """

    scan_id: str
    row: int
    rows_done: int
    rows: int
    cols: int
    width_m: float
    height_m: float
    channel: str
    unit: str
    scan_direction: Literal["down", "up"]
    data: np.ndarray


IngestMessage = LineMessage | FrameMessage | EndMessage
Message = LineMessage | FrameMessage | EndMessage | SegMessage | StatusMessage | LevelLineMessage | DecisionMessage
