"""The one composer: every document the daemon emits, and every record it writes, is built here.

Workers (the live and whole-frame paths, the receiver, the watcher's callbacks)
describe what happened by emitting :class:`Document` objects made by the pure
functions of this module; sinks (:mod:`stm_live.publish.sinks`: the ZeroMQ
publisher, the result store, the event log, the counters, the console log, and
later the page and the decision engine) subscribe to the topics they want
(:class:`stm_live.publish.bus.DocumentBus`). Nothing else in the package builds
a message header or a result record, so a field is added in one place.

A document is ``topic`` + ``header`` (plain JSON values) + an optional
``payload`` array + ``local`` objects that never leave the process (the full
class map for the store, the image for the overlay PNG, the journal entry to
delete once the result is stored). For the published topics the header *is*
the ZeroMQ message header, checked against ``stm_live/schemas/<topic>.json``
by :func:`stm_live.wire.encode_document` (and by the tests, for every
builder here).

Topics
------
Published on the bus and on the PUB socket:

``seg.partial``  segmentation of a scan in progress (:func:`partial`)
``seg.frame``    result of a finished frame, or why it was not segmented (:func:`frame_result`, :func:`not_segmented`)
``level.line``   one levelled scan line as it arrives, for viewers (:func:`level_line`)
``status``       the heartbeat (:func:`status`)
``decision``     what a rule decided, from the decision engine's sink (:func:`decision`)

In-process only (the event log, the counters and the console read them):

``scan.started``, ``scan.finished``, ``bad_input``, ``event``.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from ..frame import Detection, Frame, Segmentation

__all__ = [
    "BAD_INPUT",
    "DECISION",
    "EVENT",
    "LEVEL_LINE",
    "PUBLISHED_TOPICS",
    "SCAN_FINISHED",
    "SCAN_STARTED",
    "SEG_FRAME",
    "SEG_PARTIAL",
    "STATUS",
    "Document",
    "bad_input",
    "decision",
    "detection_json",
    "event",
    "frame_result",
    "level_line",
    "not_segmented",
    "partial",
    "position",
    "result_record",
    "scan_finished",
    "scan_started",
    "seg_header",
    "status",
    "stored_record",
]

PROTOCOL_VERSION: Final = 1

SEG_PARTIAL: Final = "seg.partial"
SEG_FRAME: Final = "seg.frame"
LEVEL_LINE: Final = "level.line"
STATUS: Final = "status"
SCAN_STARTED: Final = "scan.started"
SCAN_FINISHED: Final = "scan.finished"
BAD_INPUT: Final = "bad_input"
DECISION: Final = "decision"
EVENT: Final = "event"

#: Topics that go out on the PUB socket (each has a schema in ``stm_live/schemas``).
PUBLISHED_TOPICS: Final = (SEG_PARTIAL, SEG_FRAME, LEVEL_LINE, STATUS, DECISION)

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})
#: What a header costs in memory, roughly, on top of its arrays (for the byte budgets).
_HEADER_BYTES: Final = 512


@dataclass(frozen=True, slots=True, eq=False)
class Document:
    """One thing that happened, for every sink that wants it.

    Parameters
    ----------
    topic : str
        What kind of document (the module's topic constants).
    header : Mapping
        Plain JSON values; for a published topic, the message header.
    payload : numpy.ndarray, optional
        The message payload (a class map's rows, a levelled line), C-contiguous.
    local : Mapping
        Objects for sinks in this process only (never serialised): for
        ``seg.frame`` ``class_map`` (the whole uint8 map), ``image`` (for the
        overlay), ``record`` (the stored record), ``on_stored`` (called once
        the result is durable); ``arrived`` (clock time of the input, for
        latencies) on any topic.
    """

    topic: str
    header: Mapping[str, Any]
    payload: np.ndarray | None = None
    local: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def nbytes(self) -> int:
        """Memory the document holds, roughly: its arrays plus a header allowance (for byte-bounded queues)."""
        n = _HEADER_BYTES + (self.payload.nbytes if self.payload is not None else 0)
        for value in self.local.values():
            if isinstance(value, np.ndarray):
                n += value.nbytes
        detections = self.header.get("detections")
        if isinstance(detections, list):
            n += 96 * len(detections)
        return n


# --------------------------------------------------------------------------
# Pieces shared by headers and records
# --------------------------------------------------------------------------


def _num(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def detection_json(d: Detection) -> dict[str, Any]:
    """A detection as JSON: ``{"id", "class", "x_nm", "y_nm", "area_nm2", "score"}``, 4 decimals.

    Examples
    --------
    >>> detection_json(Detection("AsH3", 1.234567, 2.0, 0.5, 0.9, id=3))
    {'id': 3, 'class': 'AsH3', 'x_nm': 1.2346, 'y_nm': 2.0, 'area_nm2': 0.5, 'score': 0.9}
    """
    return {
        "id": int(d.id),
        "class": str(d.class_name),
        "x_nm": _num(d.x_nm),
        "y_nm": _num(d.y_nm),
        "area_nm2": _num(d.area_nm2),
        "score": _num(d.score),
    }


def position(frame: Frame) -> dict[str, Any]:
    """Where on the sample ``frame`` was taken, as far as its source said.

    ``centre_m`` is the scan frame's centre ``[x, y]`` (m) in the
    controller's coordinates, ``size_m`` ``[width, height]`` (m),
    ``angle_deg`` its rotation, ``scan_direction`` ``down``/``up`` (which edge
    the scan starts from), ``direction`` trace/retrace; ``bias_v`` and
    ``setpoint_a`` the tunnelling conditions. Unknown values are null. With
    these, a detection at ``(x_nm, y_nm)`` from the image's top-left corner
    can be placed on the sample (``docs/protocol.md``).

    Examples
    --------
    >>> f = Frame(np.zeros((2, 2)), 1e-8, 1e-8, offset_m=(1e-7, 0.0), angle_deg=135.0)
    >>> position(f)["centre_m"], position(f)["angle_deg"]
    ([1e-07, 0.0], 135.0)
    """
    return {
        "centre_m": None if frame.offset_m is None else [float(frame.offset_m[0]), float(frame.offset_m[1])],
        "size_m": [float(frame.width_m), float(frame.height_m)],
        "angle_deg": None if frame.angle_deg is None else float(frame.angle_deg),
        "scan_direction": frame.scan_direction,
        "direction": frame.direction,
        "bias_v": None if frame.bias_v is None else float(frame.bias_v),
        "setpoint_a": None if frame.setpoint_a is None else float(frame.setpoint_a),
    }


def seg_header(
    *,
    scan_id: str,
    rows_done: int,
    rows: int,
    cols: int,
    width_m: float,
    height_m: float,
    model_id: str,
    model_name: str,
    classes: Sequence[str],
    detections: Sequence[Detection],
    latency_ms: float = 0.0,
    map_rows: tuple[int, int] | None = None,
    final: bool = False,
    source: str | None = None,
    complete: bool | None = None,
    where: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The header of a ``seg.partial`` (``final=False``) or ``seg.frame`` message.

    ``map_rows`` ``(start, stop)`` names the display rows a uint8 class-map
    payload covers (None: no payload). ``where`` is :func:`position`;
    ``reason`` is set (and ``detections`` empty) when a finished frame was
    not segmented because the model does not apply to it.
    """
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "scan_id": scan_id,
        "rows_done": int(rows_done),
        "rows": int(rows),
        "cols": int(cols),
        "width_m": float(width_m),
        "height_m": float(height_m),
        "model": {"id": model_id, "name": model_name},
        "classes": list(classes),
        "detections": [detection_json(d) for d in detections],
        "latency_ms": _num(latency_ms, 3),
    }
    if map_rows is not None:
        obj["dtype"] = "|u1"
        obj["map_rows"] = [int(map_rows[0]), int(map_rows[1])]
    if where is not None:
        obj["position"] = dict(where)
    if final:
        obj["source"] = source
        obj["complete"] = bool(complete)
        if reason is not None:
            obj["not_segmented"] = reason
    return obj


def result_record(source: str, frame: Frame, seg: Segmentation) -> dict[str, Any]:
    """The JSON result of one input: what ``stm-live segment --json`` prints per line.

    The daemon stores the same record per frame, plus :func:`stored_record`'s fields.
    """
    return {
        "source": source,
        "image": _image(frame),
        "model": {"id": seg.model_id, "name": seg.model_name},
        "classes": list(seg.classes),
        "detections": [detection_json(d) for d in seg.detections],
        "timings_ms": {k: round(v, 3) for k, v in seg.timings_ms.items()},
    }


def _image(frame: Frame) -> dict[str, Any]:
    return {
        "rows": frame.rows,
        "cols": frame.cols,
        "width_nm": round(frame.width_nm, 6),
        "height_nm": round(frame.height_nm, 6),
        "channel": frame.channel,
    }


def stored_record(
    record: Mapping[str, Any],
    *,
    scan_id: str,
    complete: bool,
    sha256: str,
    where: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The stored result of one frame: the ``stm-live segment --json`` record plus provenance.

    Parameters
    ----------
    record : Mapping
        :func:`result_record` of the frame (or of :func:`not_segmented`).
    scan_id : str
        The scan's id (for files, the file name without suffix).
    complete : bool
        Whether the input was a complete scan.
    sha256 : str
        Content hash of the input (file bytes, or ``array_sha256`` plus the
        scan's geometry for streamed scans).
    where : Mapping, optional
        :func:`position` of the frame.

    Returns
    -------
    dict
        A new dict; schema ``stm_live/schemas/result.json``.

    Examples
    --------
    >>> stored_record({"source": "zmq"}, scan_id="s1", complete=True, sha256="ab")
    {'source': 'zmq', 'scan_id': 's1', 'complete': True, 'sha256': 'ab'}
    """
    out = {**record, "scan_id": scan_id, "complete": bool(complete), "sha256": sha256}
    if where is not None:
        out["position"] = dict(where)
    return out


# --------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------


def scan_started(scan_id: str, frame: Frame) -> Document:
    """A scan's first line arrived (``frame``: the scan so far)."""
    return Document(SCAN_STARTED, {
        "scan_id": scan_id, "channel": frame.channel, "direction": frame.direction, "rows": frame.rows,
        "cols": frame.cols, "width_nm": round(frame.width_nm, 6), "height_nm": round(frame.height_nm, 6),
        "scan_direction": frame.scan_direction, "position": position(frame),
    })


def scan_finished(
    scan_id: str, *, reason: str, complete: bool, rows_received: int, rows_missing: int, rows: int
) -> Document:
    """A streamed scan is over (why, and whether every row arrived)."""
    return Document(SCAN_FINISHED, {
        "scan_id": scan_id, "reason": reason, "complete": bool(complete), "rows_received": int(rows_received),
        "rows_missing": int(rows_missing), "rows": int(rows),
    })


def level_line(
    scan_id: str, frame: Frame, row: int, values: np.ndarray, *, rows_done: int, arrived: float | None = None
) -> Document:
    """``level.line``: display row ``row`` of a scan, levelled, as it arrived (float32 payload, ``cols`` values).

    ``frame`` is the scan so far (for its size and position); ``rows_done``
    counts the rows acquired, from the scan's start edge.
    """
    payload = np.ascontiguousarray(values, dtype=np.float32)
    header = {
        "v": PROTOCOL_VERSION, "scan_id": scan_id, "row": int(row), "rows_done": int(rows_done),
        "rows": frame.rows, "cols": frame.cols, "width_m": float(frame.width_m), "height_m": float(frame.height_m),
        "channel": frame.channel, "unit": frame.unit, "scan_direction": frame.scan_direction, "dtype": "<f4",
    }
    return Document(LEVEL_LINE, header, payload, {"arrived": arrived} if arrived is not None else _EMPTY)


def partial(
    scan_id: str,
    frame: Frame,
    seg: Segmentation,
    *,
    label_maps: bool,
    map_rows: tuple[int, int] | None = None,
    arrived: float | None = None,
) -> Document:
    """``seg.partial``: :meth:`LiveSegmenter.segment` of a scan in progress.

    With ``label_maps`` a class map goes along: of the display rows
    ``map_rows`` (the rows the live path rewrote since the previous partial,
    ``LiveSegmenter.changed_rows``), or of every row done when None (upward
    scans fill the image from the bottom: the rows done are the last ones).
    A subscriber pastes each partial's rows into its copy of the map.
    """
    rows_done = int(seg.rows_done or 0)
    if map_rows is None:
        row0 = frame.rows - rows_done if frame.scan_direction == "up" else 0
        map_rows = (row0, row0 + rows_done)
    # No rows changed (a call with nothing new): no class map at all, rather than an empty one.
    cmap = (np.ascontiguousarray(seg.class_map[map_rows[0]:map_rows[1]])
            if label_maps and map_rows[1] > map_rows[0] else None)
    header = seg_header(
        scan_id=scan_id, rows_done=rows_done, rows=frame.rows, cols=frame.cols, width_m=frame.width_m,
        height_m=frame.height_m, model_id=seg.model_id, model_name=seg.model_name, classes=seg.classes,
        detections=seg.detections, map_rows=map_rows if cmap is not None else None, where=position(frame),
    )
    return Document(SEG_PARTIAL, header, cmap, {"arrived": arrived} if arrived is not None else _EMPTY)


def frame_result(
    scan_id: str,
    frame: Frame,
    seg: Segmentation,
    *,
    source: str,
    complete: bool,
    sha256: str,
    label_maps: bool,
    arrived: float | None = None,
    image: np.ndarray | None = None,
    on_stored: Any = None,
) -> Document:
    """``seg.frame``: the result of a finished frame, with what the store needs to keep it.

    ``source`` is the file path or ``"zmq"``; ``image`` the frame for the
    overlay PNG; ``on_stored`` is called by the store once the result is
    durable (the streamed scan's journal is deleted then).
    """
    rows = frame.valid_rows
    cmap = np.ascontiguousarray(seg.class_map[rows]) if label_maps else None
    where = position(frame)
    header = seg_header(
        scan_id=scan_id, rows_done=frame.rows_valid or 0, rows=frame.rows, cols=frame.cols, width_m=frame.width_m,
        height_m=frame.height_m, model_id=seg.model_id, model_name=seg.model_name, classes=seg.classes,
        detections=seg.detections, map_rows=(rows.start, rows.stop) if cmap is not None else None, final=True,
        source=source, complete=complete, where=where,
    )
    record = stored_record(result_record(source, frame, seg), scan_id=scan_id, complete=complete, sha256=sha256,
                           where=where)
    local: dict[str, Any] = {"record": record, "class_map": seg.class_map, "image": image, "on_stored": on_stored}
    if arrived is not None:
        local["arrived"] = arrived
    return Document(SEG_FRAME, header, cmap, local)


def not_segmented(
    scan_id: str,
    frame: Frame,
    *,
    model_id: str,
    model_name: str,
    reason: str,
    source: str,
    complete: bool,
    sha256: str,
    arrived: float | None = None,
    on_stored: Any = None,
) -> Document:
    """``seg.frame`` of a frame the model does not apply to, and why (no detections, no class map).

    Stored like any result, so the input is done and never retried: a survey
    frame too coarse for the model, a constant image.
    """
    where = position(frame)
    header = seg_header(
        scan_id=scan_id, rows_done=frame.rows_valid or 0, rows=frame.rows, cols=frame.cols, width_m=frame.width_m,
        height_m=frame.height_m, model_id=model_id, model_name=model_name, classes=(), detections=(), final=True,
        source=source, complete=complete, where=where, reason=reason,
    )
    record = {
        "source": source, "image": _image(frame), "model": {"id": model_id, "name": model_name}, "classes": [],
        "detections": [], "timings_ms": {}, "not_segmented": reason,
    }
    local: dict[str, Any] = {
        "record": stored_record(record, scan_id=scan_id, complete=complete, sha256=sha256, where=where),
        "class_map": None, "image": None, "on_stored": on_stored,
    }
    if arrived is not None:
        local["arrived"] = arrived
    return Document(SEG_FRAME, header, None, local)


def bad_input(
    source: str,
    reason: str,
    *,
    kind: str,
    n_bytes: int | None = None,
    quarantined: str | None = None,
    scan_id: str | None = None,
) -> Document:
    """An input that was refused: ``kind`` ``message`` (from the wire), ``file`` or ``scan``; and why."""
    header: dict[str, Any] = {"kind": kind, "source": source, "reason": reason}
    if n_bytes is not None:
        header["bytes"] = int(n_bytes)
    if quarantined is not None:
        header["quarantined"] = quarantined
    if scan_id is not None:
        header["scan_id"] = scan_id
    return Document(BAD_INPUT, header)


def decision(content: Mapping[str, Any]) -> Document:
    """``decision``: what a rule of the decision engine decided (:class:`stm_live.decide.DecisionEngine`).

    ``content`` is the engine's decision (``scan_id``, ``rule``, ``action``,
    ``params``, ``reason``, ``t``, and ``id`` when it numbers them); the
    protocol version is set here.
    """
    return Document(DECISION, {"v": PROTOCOL_VERSION, **{k: v for k, v in content.items() if k != "v"}})


def event(kind: str, **context: Any) -> Document:
    """Anything else worth a line in the event log (``start``, ``stop``, ``ignored``, ``duplicate``, ``error``...)."""
    return Document(EVENT, {"kind": kind, **context})


def status(
    *,
    state: str,
    uptime_s: float,
    counters: Mapping[str, int],
    queues: Mapping[str, int],
    version: str,
    t: float,
    model_id: str | None,
    model_name: str | None,
) -> Document:
    """``status``: the heartbeat."""
    header = {
        "v": PROTOCOL_VERSION,
        "state": state,
        "uptime_s": _num(max(0.0, uptime_s), 3),
        "counters": {k: int(v) for k, v in counters.items()},
        "queues": {k: int(v) for k, v in queues.items()},
        "model": None if model_id is None else {"id": model_id, "name": model_name},
        "version": version,
        "t": _num(t, 3) if math.isfinite(t) else 0.0,
    }
    return Document(STATUS, header)
