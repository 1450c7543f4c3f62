"""ZeroMQ protocol v1: the one place where messages become bytes and bytes messages.

Every message is multipart ``[topic, header, payload?]``: the topic as UTF-8
text, the header a UTF-8 JSON object with ``"v": 1``, and, where the kind has
one, a payload of raw C-ordered values whose numpy ``dtype.str`` (byte order
explicit) the header names. Nothing is ever pickled. ``docs/protocol.md``
explains the protocol for people writing controller bridges, and
``stm_live/schemas/<topic>.json`` is the JSON schema of each header; a test
keeps the two sides of this module and the schemas in step.

Ingest (controller bridge -> daemon):

* ``stm.line``: one scan line, :class:`LineMessage`;
* ``stm.frame``: a whole image at once, :class:`FrameMessage`;
* ``stm.end``: a scan is over (or aborted), :class:`EndMessage`.

Publish (daemon -> subscribers):

* ``seg.partial`` / ``seg.frame``: segmentation of a partial / finished
  frame, :class:`SegMessage`;
* ``level.line``: one levelled scan line as it arrived, :class:`LevelLineMessage`;
* ``status``: the heartbeat, :class:`StatusMessage`.

The daemon's headers are built by :mod:`stm_live.publish.documents` (the one
composer); :func:`encode_document` checks a document's header with the same
checks as the decoders and returns its parts.

Every ``encode_*`` function is pure and returns ``list[bytes]`` ready for
``socket.send_multipart``; every ``decode_*`` function checks the part count,
the header (JSON object, version, every field's presence, type and range,
no unknown fields) and the payload (dtype, length, values), and raises
:class:`~stm_live.errors.WireError` naming the topic, the scan, the field, the
bad value and what was expected. Encoders run the same header checks, so what
one side sends the other accepts.

Payload values (decided here, documented in ``docs/protocol.md``):

* dtypes: :data:`PAYLOAD_DTYPES` (float32/float64/int16/int32/uint16 in
  either byte order); decoded arrays are native-endian C-contiguous float32;
* NaN in a line or frame payload marks a missing pixel (or, in a frame, an
  unscanned row) and is kept; a line or frame that is *entirely* NaN carries
  no data and is rejected (send nothing for a missing line);
* infinities, and float64 values beyond the float32 range, are rejected.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final, Literal, NoReturn

import numpy as np

from .errors import WireError
from .frame import Detection, Direction
from .limits import MAX_LENGTH_M, length_problem

__all__ = [
    "INGEST_TOPICS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "PAYLOAD_DTYPES",
    "PROTOCOL_VERSION",
    "PUBLISH_TOPICS",
    "TOPICS",
    "Buffer",
    "EndMessage",
    "FrameMessage",
    "IngestMessage",
    "LevelLineMessage",
    "LineMessage",
    "Message",
    "ScanInfo",
    "SegMessage",
    "StatusMessage",
    "decode",
    "decode_end",
    "decode_frame",
    "decode_ingest",
    "decode_level_line",
    "decode_line",
    "decode_seg",
    "decode_status",
    "encode",
    "encode_document",
    "encode_end",
    "encode_frame",
    "encode_line",
    "encode_seg",
    "encode_status",
    "load_schema",
]

#: The protocol version every header carries as ``"v"``.
PROTOCOL_VERSION: Final = 1

TOPIC_LINE: Final = "stm.line"
TOPIC_FRAME: Final = "stm.frame"
TOPIC_END: Final = "stm.end"
TOPIC_PARTIAL: Final = "seg.partial"
TOPIC_SEG_FRAME: Final = "seg.frame"
TOPIC_STATUS: Final = "status"
TOPIC_LEVEL_LINE: Final = "level.line"

#: Topics a controller bridge sends to the daemon.
INGEST_TOPICS: Final = (TOPIC_LINE, TOPIC_FRAME, TOPIC_END)
#: Topics the daemon publishes.
PUBLISH_TOPICS: Final = (TOPIC_PARTIAL, TOPIC_SEG_FRAME, TOPIC_STATUS, TOPIC_LEVEL_LINE)
#: Every topic of protocol v1.
TOPICS: Final = INGEST_TOPICS + PUBLISH_TOPICS

#: ``dtype.str`` values a line or frame payload may have (byte order explicit).
PAYLOAD_DTYPES: Final = ("<f4", ">f4", "<f8", ">f8", "<i2", ">i2", "<i4", ">i4", "<u2", ">u2")
#: Largest ``rows`` or ``cols`` (Nanonis offers at most 8192 pixels per side).
MAX_SIDE: Final = 1 << 15
#: Largest ``rows * cols`` of one scan: 64 Mpx, 256 MB as float32.
MAX_PIXELS: Final = 1 << 26
#: Physical sizes are in metres and below 1 cm (catches nanometres sent as metres).
_MAX_ID = 128
_MAX_NAME = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL_DTYPE: Final = "|u1"

Buffer = bytes | bytearray | memoryview
"""One message part: anything with the buffer protocol (``zmq.Frame`` too)."""


# --------------------------------------------------------------------------
# Message types
# --------------------------------------------------------------------------


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
Message = LineMessage | FrameMessage | EndMessage | SegMessage | StatusMessage | LevelLineMessage

REQUIRED_COUNTERS: Final = ("frames", "lines", "errors", "dropped")
STATES: Final = ("starting", "running", "stopping")


# --------------------------------------------------------------------------
# Header checks, shared by encoders and decoders
# --------------------------------------------------------------------------

_MISSING: Any = object()


class _Header:
    """A decoded JSON header with typed, range-checked accessors.

    Every accessor raises :class:`WireError` whose message names the topic,
    the scan (once known), the field, the bad value and the expectation.
    """

    __slots__ = ("obj", "row", "scan_id", "topic")

    def __init__(self, topic: str, obj: Mapping[str, Any]) -> None:
        self.topic = topic
        self.obj = obj
        self.scan_id: str | None = None
        self.row: int | None = None

    def where(self, part: str = "header") -> str:
        ctx = []
        if self.scan_id is not None:
            ctx.append(f"scan {self.scan_id!r}")
        if self.row is not None:
            ctx.append(f"row {self.row}")
        return f"{self.topic} {part}" + (f" ({', '.join(ctx)})" if ctx else "")

    def fail(self, name: str, value: Any, expected: str) -> NoReturn:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise WireError(f"{self.where()}: field {name!r} = {shown}: expected {expected}")

    def get(self, name: str, default: Any) -> Any:
        value = self.obj.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise WireError(f"{self.where()}: missing required field {name!r}")
            return default
        return value

    def check_fields(self, allowed: frozenset[str]) -> None:
        extra = self.obj.keys() - allowed
        if extra:
            raise WireError(
                f"{self.where()}: unknown field {sorted(extra)[0]!r}; a {self.topic} header has only "
                f"{', '.join(sorted(allowed))}"
            )

    def version(self) -> None:
        value = self.get("v", _MISSING)
        if type(value) is not int and not (type(value) is float and value == PROTOCOL_VERSION):
            self.fail("v", value, f"{PROTOCOL_VERSION} (protocol version)")
        if value != PROTOCOL_VERSION:
            self.fail("v", value, f"{PROTOCOL_VERSION}: this side speaks protocol version {PROTOCOL_VERSION} only")

    def text(self, name: str, default: Any = _MISSING, *, max_len: int = _MAX_NAME, empty: bool = False) -> Any:
        value = self.get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or (not value and not empty) or len(value) > max_len or _CONTROL.search(value):
            self.fail(name, value, f"a text of {0 if empty else 1}..{max_len} characters without control characters")
        return value

    def integer(self, name: str, lo: int, hi: int, default: Any = _MISSING) -> Any:
        value = self.get(name, default)
        if value is default and default is not _MISSING:
            return value
        if type(value) is float and value.is_integer():
            value = int(value)  # JSON has one number type; 5.0 is 5 (as in JSON Schema)
        if type(value) is not int or not lo <= value <= hi:
            self.fail(name, value, f"an integer {lo}..{hi}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, lo: float | None = None, hi: float | None = None,
               hint: str = "") -> Any:
        value = self.get(name, default)
        if value is default and default is not _MISSING:
            return value
        if type(value) not in (int, float) or not math.isfinite(value) or (lo is not None and value < lo) or (
            hi is not None and value > hi
        ):
            rng = ""
            if lo is not None or hi is not None:
                rng = f" in {'-inf' if lo is None else f'{lo:g}'}..{'inf' if hi is None else f'{hi:g}'}"
            self.fail(name, value, f"a finite number{rng}{hint}")
        return float(value)

    def length_m(self, name: str) -> float:
        value = self.get(name, _MISSING)
        if type(value) not in (int, float) or not (math.isfinite(value) and 0 < value < MAX_LENGTH_M):
            self.fail(name, value, f"a length in metres, 0 < {name} < {MAX_LENGTH_M:g} (nanometres sent as metres?)")
        return float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        value = self.get(name, default)
        if type(value) is not bool:
            self.fail(name, value, "true or false")
        return value

    def choice(self, name: str, options: Sequence[str], default: Any = _MISSING) -> Any:
        value = self.get(name, default)
        if value not in options or type(value) is not str:
            self.fail(name, value, "one of " + ", ".join(repr(o) for o in options))
        return value


_SCAN_FIELDS = frozenset(
    {"v", "scan_id", "rows", "cols", "width_m", "height_m", "dtype", "channel", "direction", "unit",
     "bias_v", "setpoint_a", "offset_m", "angle_deg", "t"}
)
_LINE_FIELDS = _SCAN_FIELDS | {"row"}
_FRAME_FIELDS = _SCAN_FIELDS
_END_FIELDS = frozenset({"v", "scan_id", "complete"})
_SEG_FIELDS = frozenset(
    {"v", "scan_id", "rows_done", "rows", "cols", "width_m", "height_m", "model", "classes", "detections",
     "latency_ms", "dtype", "map_rows", "position"}
)
_SEG_FRAME_FIELDS = _SEG_FIELDS | {"source", "complete", "not_segmented"}
_POSITION_FIELDS = frozenset(
    {"centre_m", "size_m", "angle_deg", "scan_direction", "direction", "bias_v", "setpoint_a"}
)
_LEVEL_LINE_FIELDS = frozenset(
    {"v", "scan_id", "row", "rows_done", "rows", "cols", "width_m", "height_m", "channel", "unit", "scan_direction",
     "dtype"}
)
_STATUS_FIELDS = frozenset({"v", "state", "uptime_s", "counters", "queues", "model", "version", "t"})
_DETECTION_FIELDS = frozenset({"id", "class", "x_nm", "y_nm", "area_nm2", "score"})


def _check_scan_header(h: _Header) -> tuple[ScanInfo, np.dtype[Any], float | None]:
    """The fields ``stm.line`` and ``stm.frame`` share."""
    h.version()
    h.scan_id = h.text("scan_id", max_len=_MAX_ID)
    rows = h.integer("rows", 1, MAX_SIDE)
    cols = h.integer("cols", 1, MAX_SIDE)
    if rows * cols > MAX_PIXELS:
        raise WireError(
            f"{h.where()}: fields 'rows' x 'cols' = {rows} x {cols}: expected at most {MAX_PIXELS} pixels in all"
        )
    width_m = h.length_m("width_m")
    height_m = h.length_m("height_m")
    for name, length, n in (("width_m", width_m, cols), ("height_m", height_m, rows)):
        problem = length_problem(name, length, n)
        if problem is not None:  # the same sane ranges as every other door (stm_live.limits)
            h.fail(name, length, f"a sane size: {problem}")
    dtype_str = h.get("dtype", _MISSING)
    if dtype_str not in PAYLOAD_DTYPES or type(dtype_str) is not str:
        h.fail("dtype", dtype_str, "a numpy dtype.str with explicit byte order, one of " + ", ".join(PAYLOAD_DTYPES))
    offset = h.get("offset_m", None)
    if offset is not None:
        if (
            not isinstance(offset, list)
            or len(offset) != 2
            or not all(type(v) in (int, float) and math.isfinite(v) for v in offset)
        ):
            h.fail("offset_m", offset, "[x, y]: two finite numbers in metres")
        offset = (float(offset[0]), float(offset[1]))
    t = h.number("t", None, lo=0.0, hint=" (Unix time in seconds)")
    h.check_fields(_LINE_FIELDS if h.topic == TOPIC_LINE else _FRAME_FIELDS)
    info = ScanInfo(
        scan_id=h.scan_id,
        rows=rows,
        cols=cols,
        width_m=width_m,
        height_m=height_m,
        channel=h.text("channel", "Z"),
        direction=h.choice("direction", ("forward", "backward"), "forward"),
        unit=h.text("unit", "m", max_len=32, empty=True),
        bias_v=h.number("bias_v", None),
        setpoint_a=h.number("setpoint_a", None),
        offset_m=offset,
        angle_deg=h.number("angle_deg", None),
    )
    return info, _dtype(dtype_str), t


@cache
def _dtype(text: str) -> np.dtype[Any]:
    return np.dtype(text)


def _check_end_header(h: _Header) -> EndMessage:
    h.version()
    h.scan_id = h.text("scan_id", max_len=_MAX_ID)
    complete = h.boolean("complete")
    h.check_fields(_END_FIELDS)
    return EndMessage(scan_id=h.scan_id, complete=complete)


def _check_model(h: _Header, required: bool) -> tuple[str | None, str | None]:
    model = h.get("model", _MISSING if required else None)
    if model is None:
        return None, None
    if (
        not isinstance(model, dict)
        or set(model) != {"id", "name"}
        or not all(isinstance(model[k], str) and model[k] and not _CONTROL.search(model[k]) for k in model)
    ):
        h.fail("model", model, '{"id": text, "name": text}')
    return model["id"], model["name"]


def _check_detection(h: _Header, i: int, d: Any, classes: Sequence[str], width_nm: float,
                     height_nm: float) -> Detection:
    name = f"detections[{i}]"
    if not isinstance(d, dict):
        h.fail(name, d, "an object {id, class, x_nm, y_nm, area_nm2, score}")
    if set(d) != _DETECTION_FIELDS:
        missing = sorted(_DETECTION_FIELDS - set(d))
        what = f"missing {missing}" if missing else f"unknown {sorted(set(d) - _DETECTION_FIELDS)}"
        h.fail(name, d, f"exactly the fields id, class, x_nm, y_nm, area_nm2, score ({what})")
    sub = _Header(h.topic, d)
    sub.scan_id = h.scan_id
    try:
        det_id = sub.integer("id", 0, 1 << 31)
        cls = d["class"]
        if cls not in classes:
            sub.fail("class", cls, "one of the message's classes " + ", ".join(classes))
        # Centres lie inside the frame; a little slack for rounding to 4 decimals.
        x = sub.number("x_nm", lo=-1e-3, hi=width_nm + 1e-3)
        y = sub.number("y_nm", lo=-1e-3, hi=height_nm + 1e-3)
        area = sub.number("area_nm2", lo=0.0)
        score = sub.number("score", lo=0.0, hi=1.0)
    except WireError as exc:
        raise WireError(str(exc).replace(": field '", f": field '{name}.", 1)) from None
    return Detection(class_name=cls, x_nm=x, y_nm=y, area_nm2=area, score=score, id=det_id)


def _check_seg_header(h: _Header, final: bool) -> dict[str, Any]:
    h.version()
    h.scan_id = h.text("scan_id", max_len=_MAX_ID)
    rows = h.integer("rows", 1, MAX_SIDE)
    cols = h.integer("cols", 1, MAX_SIDE)
    rows_done = h.integer("rows_done", 0, rows)
    width_m = h.length_m("width_m")
    height_m = h.length_m("height_m")
    model_id, model_name = _check_model(h, required=True)
    classes = h.get("classes", _MISSING)
    if (
        not isinstance(classes, list)
        or not all(isinstance(c, str) and c and not _CONTROL.search(c) for c in classes)
        or len(set(classes)) != len(classes)
        or len(classes) > 255
    ):
        h.fail("classes", classes, "a list of up to 255 distinct class names")
    detections = h.get("detections", _MISSING)
    if not isinstance(detections, list):
        h.fail("detections", detections, "a list of detections")
    dets = tuple(
        _check_detection(h, i, d, classes, width_m * 1e9, height_m * 1e9) for i, d in enumerate(detections)
    )
    latency = h.number("latency_ms", lo=0.0)
    dtype = h.get("dtype", None)
    map_rows = h.get("map_rows", None)
    if (dtype is None) != (map_rows is None):
        raise WireError(f"{h.where()}: fields 'dtype' and 'map_rows' come together (with a class-map payload)")
    if dtype is not None:
        if dtype != _LABEL_DTYPE:
            h.fail("dtype", dtype, f"{_LABEL_DTYPE!r} (uint8 class map)")
        if isinstance(map_rows, list):
            map_rows = [int(v) if type(v) is float and v.is_integer() else v for v in map_rows]
        if (
            not isinstance(map_rows, list)
            or len(map_rows) != 2
            or not all(type(v) is int for v in map_rows)
            or not 0 <= map_rows[0] <= map_rows[1] <= rows
        ):
            h.fail(
                "map_rows", map_rows,
                f"[start, stop]: the display rows the class map covers, 0 <= start <= stop <= {rows}",
            )
    out: dict[str, Any] = dict(
        scan_id=h.scan_id, rows_done=rows_done, rows=rows, cols=cols, width_m=width_m, height_m=height_m,
        model_id=model_id, model_name=model_name, classes=tuple(classes), detections=dets, latency_ms=latency,
        final=final, map_rows=map_rows, position=_check_position(h),
    )
    if final:
        out["source"] = h.text("source", max_len=4096)
        out["complete"] = h.boolean("complete")
        out["not_segmented"] = h.text("not_segmented", None, max_len=1024)
        if out["not_segmented"] is not None and dets:
            h.fail("detections", detections, "none when the frame was not segmented ('not_segmented' is set)")
    h.check_fields(_SEG_FRAME_FIELDS if final else _SEG_FIELDS)
    return out


def _check_pair(h: _Header, name: str, value: Any, *, positive: bool) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in value)
    ):
        h.fail(name, value, f"[x, y]: two finite{' positive' if positive else ''} numbers in metres")
    return [float(value[0]), float(value[1])]


def _check_position(h: _Header) -> dict[str, Any] | None:
    """The optional ``position`` object: where on the sample the frame was taken."""
    where = h.get("position", None)
    if where is None:
        return None
    if not isinstance(where, dict) or set(where) != _POSITION_FIELDS:
        h.fail("position", where, "an object with exactly " + ", ".join(sorted(_POSITION_FIELDS)))
    sub = _Header(h.topic, where)
    sub.scan_id = h.scan_id
    try:
        out: dict[str, Any] = {
            "centre_m": None if where["centre_m"] is None else _check_pair(sub, "centre_m", where["centre_m"],
                                                                          positive=False),
            "size_m": _check_pair(sub, "size_m", where["size_m"], positive=True),
            "angle_deg": sub.number("angle_deg", None),
            "scan_direction": sub.choice("scan_direction", ("down", "up")),
            "direction": sub.choice("direction", ("forward", "backward")),
            "bias_v": sub.number("bias_v", None),
            "setpoint_a": sub.number("setpoint_a", None),
        }
    except WireError as exc:
        raise WireError(str(exc).replace(": field '", ": field 'position.", 1)) from None
    return out


def _check_level_line_header(h: _Header) -> dict[str, Any]:
    h.version()
    h.scan_id = h.text("scan_id", max_len=_MAX_ID)
    rows = h.integer("rows", 1, MAX_SIDE)
    cols = h.integer("cols", 1, MAX_SIDE)
    row = h.integer("row", 0, rows - 1)
    h.row = row
    out = dict(
        scan_id=h.scan_id, row=row, rows_done=h.integer("rows_done", 1, rows), rows=rows, cols=cols,
        width_m=h.length_m("width_m"), height_m=h.length_m("height_m"), channel=h.text("channel"),
        unit=h.text("unit", max_len=32, empty=True), scan_direction=h.choice("scan_direction", ("down", "up")),
    )
    if h.get("dtype", _MISSING) != "<f4":
        h.fail("dtype", h.get("dtype", None), "'<f4' (little-endian float32 values)")
    h.check_fields(_LEVEL_LINE_FIELDS)
    return out


def _check_counts(h: _Header, name: str, required: Sequence[str]) -> dict[str, int]:
    value = h.get(name, _MISSING)
    if (
        not isinstance(value, dict)
        or not all(type(v) is int and v >= 0 and k and not _CONTROL.search(k) for k, v in value.items())
        or not set(required) <= set(value)
    ):
        need = f" including {', '.join(required)}" if required else ""
        h.fail(name, value, f"an object of names to non-negative integers{need}")
    return dict(value)


def _check_status_header(h: _Header) -> StatusMessage:
    h.version()
    state = h.choice("state", STATES)
    uptime = h.number("uptime_s", lo=0.0)
    counters = _check_counts(h, "counters", REQUIRED_COUNTERS)
    queues = _check_counts(h, "queues", ())
    h.get("model", _MISSING)  # required, null when no model is loaded
    model_id, model_name = _check_model(h, required=False)
    version = h.text("version")
    t = h.number("t", lo=0.0, hint=" (Unix time in seconds)")
    h.check_fields(_STATUS_FIELDS)
    return StatusMessage(
        state=state, uptime_s=uptime, counters=counters, queues=queues, version=version, t=t,
        model_id=model_id, model_name=model_name,
    )


# --------------------------------------------------------------------------
# Parts and payloads
# --------------------------------------------------------------------------


def _topic(parts: Sequence[Buffer]) -> str:
    if not isinstance(parts, Sequence) or isinstance(parts, bytes | bytearray | str) or not parts:
        raise WireError("empty message: expected multipart [topic, header, payload?]")
    raw = bytes(parts[0])
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"topic {raw[:40]!r} is not UTF-8 text; expected one of {', '.join(TOPICS)}") from None
    if topic not in TOPICS:
        raise WireError(f"unknown topic {topic[:40]!r}; expected one of {', '.join(TOPICS)}")
    return topic


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number (only finite numbers are allowed)")


def _header(topic: str, parts: Sequence[Buffer], n_parts: tuple[int, ...]) -> _Header:
    if len(parts) not in n_parts:
        shape = {
            TOPIC_LINE: "[topic, header, payload]",
            TOPIC_FRAME: "[topic, header, payload]",
            TOPIC_END: "[topic, header]",
            TOPIC_STATUS: "[topic, header]",
            TOPIC_LEVEL_LINE: "[topic, header, payload]",
        }.get(topic, "[topic, header] or [topic, header, class map]")
        want = " or ".join(str(n) for n in n_parts)
        raise WireError(f"{topic}: expected {want} message parts {shape}, got {len(parts)}")
    raw = bytes(parts[1])
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise WireError(f"{topic} header: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise WireError(f"{topic} header: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError(f"{topic} header: expected a JSON object {{...}}, got {type(obj).__name__}")
    return _Header(topic, obj)


def _values(h: _Header, payload: Buffer, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Payload bytes -> native float32 array of ``shape``, checked."""
    count = math.prod(shape)
    n_bytes = memoryview(payload).nbytes
    if n_bytes != count * dtype.itemsize:
        what = f"cols = {shape[0]}" if len(shape) == 1 else f"rows x cols = {shape[0]} x {shape[1]}"
        raise WireError(
            f"{h.where('payload')}: {n_bytes} bytes, expected {count * dtype.itemsize} ({what} values of {dtype.str!r})"
        )
    raw = np.frombuffer(payload, dtype=dtype)
    data = _to_float32(raw)
    if dtype.kind == "f":
        _check_values(h, raw, data, shape)
    return data.reshape(shape)


def _to_float32(raw: np.ndarray) -> np.ndarray:
    """Native float32: a view of native little-endian float32 bytes (no copy of a 256 MB frame), else a copy.

    float64 values beyond float32's range become inf (reported by the check).
    """
    if raw.dtype.itemsize == 8:
        with np.errstate(over="ignore"):
            return raw.astype(np.float32)
    return raw.astype(np.float32, copy=False)


def _position(index: int, shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"column {index}"
    r, c = divmod(index, shape[1])
    return f"row {r}, column {c}"


def _check_values(h: _Header, raw: np.ndarray, data: np.ndarray, shape: tuple[int, ...]) -> None:
    finite = np.isfinite(data)
    if finite.all():
        return
    inf = np.flatnonzero(np.isinf(data))
    if inf.size:
        i = int(inf[0])
        value = raw[i]
        if np.isfinite(value):
            reason = f"value {float(value):g} at {_position(i, shape)} does not fit float32"
        else:
            reason = f"value {float(value)} at {_position(i, shape)}"
        raise WireError(
            f"{h.where('payload')}: {reason} ({inf.size} such values); expected finite numbers "
            "(NaN marks a missing pixel)"
        )
    if not finite.any():
        what = "line" if len(shape) == 1 else "frame"
        raise WireError(
            f"{h.where('payload')}: every value is NaN, the {what} carries no data; "
            f"send no {what} at all for a missing one"
        )


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------
# Ingest messages
# --------------------------------------------------------------------------


def _scan_header(scan: ScanInfo, dtype: str, t: float | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "scan_id": scan.scan_id,
        "rows": _plain(scan.rows),
        "cols": _plain(scan.cols),
        "width_m": _plain(scan.width_m),
        "height_m": _plain(scan.height_m),
        "dtype": dtype,
        "channel": scan.channel,
        "direction": scan.direction,
        "unit": scan.unit,
    }
    for name in ("bias_v", "setpoint_a", "angle_deg"):
        value = getattr(scan, name)
        if value is not None:
            obj[name] = _plain(value)
    if scan.offset_m is not None:
        obj["offset_m"] = [_plain(v) for v in scan.offset_m]
    if t is not None:
        obj["t"] = _plain(t)
    return obj


def _array(h: _Header, data: Any) -> np.ndarray:
    """``data`` as a C-contiguous array of a payload dtype (a transposed view would go out in memory order)."""
    arr = np.ascontiguousarray(data)
    if arr.dtype.str not in PAYLOAD_DTYPES:
        raise WireError(
            f"{h.where('payload')}: dtype {arr.dtype.str!r} cannot be sent; "
            f"convert to one of {', '.join(PAYLOAD_DTYPES)}"
        )
    return arr


def _check_payload(h: _Header, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise WireError(f"{h.where('payload')}: data shape {arr.shape}, expected {shape}")
    if arr.dtype.kind == "f":
        flat = arr.reshape(-1)
        _check_values(h, flat, _to_float32(flat), shape)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so that header checks and json see plain types."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def encode_line(msg: LineMessage) -> list[bytes]:
    """``stm.line`` message parts for ``msg``.

    Parameters
    ----------
    msg : LineMessage
        ``data`` of shape ``(cols,)`` and a dtype in :data:`PAYLOAD_DTYPES`;
        sent as it is, with its ``dtype.str``.

    Returns
    -------
    list of bytes
        ``[b"stm.line", header, payload]`` for ``socket.send_multipart``.

    Raises
    ------
    WireError
        A field or the data would not pass :func:`decode_line`.

    Examples
    --------
    >>> scan = ScanInfo("s1", rows=2, cols=3, width_m=5e-9, height_m=5e-9)
    >>> parts = encode_line(LineMessage(scan, row=1, data=np.array([1, 2, np.nan], ">f4")))
    >>> line = decode_line(parts)
    >>> line.row, line.data.dtype.str, line.data.tolist()[:2]
    (1, '<f4', [1.0, 2.0])
    """
    h = _Header(TOPIC_LINE, {})
    h.scan_id = msg.scan.scan_id
    arr = _array(h, msg.data)
    obj = _scan_header(msg.scan, arr.dtype.str, msg.t)
    obj["row"] = _plain(msg.row)
    h = _Header(TOPIC_LINE, obj)
    info, _, _, _ = _check_line_header(h)
    _check_payload(h, arr, (info.cols,))
    return [TOPIC_LINE.encode(), _dumps(obj), arr.tobytes()]


def _check_line_header(h: _Header) -> tuple[ScanInfo, int, np.dtype[Any], float | None]:
    info, dtype, t = _check_scan_header(h)
    row = h.integer("row", 0, info.rows - 1)
    h.row = row
    return info, row, dtype, t


def decode_line(parts: Sequence[Buffer]) -> LineMessage:
    """Check and decode an ``stm.line`` message.

    Parameters
    ----------
    parts : sequence of bytes-like
        ``[topic, header, payload]`` as received.

    Returns
    -------
    LineMessage
        With ``data`` a new ``(cols,)`` native float32 array.

    Raises
    ------
    WireError
        Wrong topic or part count, bad header or payload; the message names
        the scan, row, field, value and expectation.
    """
    topic = _topic(parts)
    if topic != TOPIC_LINE:
        raise WireError(f"expected topic {TOPIC_LINE!r}, got {topic!r}")
    h = _header(topic, parts, (3,))
    info, row, dtype, t = _check_line_header(h)
    data = _values(h, parts[2], dtype, (info.cols,))
    return LineMessage(scan=info, row=row, data=data, t=t)


def encode_frame(msg: FrameMessage) -> list[bytes]:
    """``stm.frame`` message parts: ``[b"stm.frame", header, payload]``, C order.

    ``msg.data`` has shape ``(rows, cols)`` and a dtype in
    :data:`PAYLOAD_DTYPES`; a transposed or strided view is made contiguous
    first (its displayed order is what is sent).

    Raises
    ------
    WireError
        A field or the data would not pass :func:`decode_frame`.
    """
    h = _Header(TOPIC_FRAME, {})
    h.scan_id = msg.scan.scan_id
    arr = _array(h, msg.data)
    obj = _scan_header(msg.scan, arr.dtype.str, msg.t)
    h = _Header(TOPIC_FRAME, obj)
    info, _, _ = _check_scan_header(h)
    _check_payload(h, arr, (info.rows, info.cols))
    return [TOPIC_FRAME.encode(), _dumps(obj), arr.tobytes()]


def decode_frame(parts: Sequence[Buffer]) -> FrameMessage:
    """Check and decode an ``stm.frame`` message; ``data`` is ``(rows, cols)`` native float32.

    Raises
    ------
    WireError
        Wrong topic or part count, bad header or payload.
    """
    topic = _topic(parts)
    if topic != TOPIC_FRAME:
        raise WireError(f"expected topic {TOPIC_FRAME!r}, got {topic!r}")
    h = _header(topic, parts, (3,))
    info, dtype, t = _check_scan_header(h)
    data = _values(h, parts[2], dtype, (info.rows, info.cols))
    return FrameMessage(scan=info, data=data, t=t)


def encode_end(msg: EndMessage) -> list[bytes]:
    """``stm.end`` message parts: ``[b"stm.end", header]``.

    Examples
    --------
    >>> encode_end(EndMessage("s1", complete=False))[1]
    b'{"v":1,"scan_id":"s1","complete":false}'
    """
    obj = {"v": PROTOCOL_VERSION, "scan_id": msg.scan_id, "complete": msg.complete}
    _check_end_header(_Header(TOPIC_END, obj))
    return [TOPIC_END.encode(), _dumps(obj)]


def decode_end(parts: Sequence[Buffer]) -> EndMessage:
    """Check and decode an ``stm.end`` message.

    Raises
    ------
    WireError
        Wrong topic or part count (a payload is an error), bad header.
    """
    topic = _topic(parts)
    if topic != TOPIC_END:
        raise WireError(f"expected topic {TOPIC_END!r}, got {topic!r}")
    return _check_end_header(_header(topic, parts, (2,)))


def decode_ingest(parts: Sequence[Buffer]) -> IngestMessage:
    """Decode any message a controller bridge may send (``stm.line/frame/end``).

    Raises
    ------
    WireError
        For a publish topic, or anything :func:`decode_line`,
        :func:`decode_frame` or :func:`decode_end` rejects.
    """
    topic = _topic(parts)
    if topic == TOPIC_LINE:
        return decode_line(parts)
    if topic == TOPIC_FRAME:
        return decode_frame(parts)
    if topic == TOPIC_END:
        return decode_end(parts)
    raise WireError(
        f"topic {topic!r} is published by the daemon, not sent to it; expected one of {', '.join(INGEST_TOPICS)}"
    )


# --------------------------------------------------------------------------
# Published messages
# --------------------------------------------------------------------------


def _seg_header(msg: SegMessage) -> dict[str, Any]:
    from .publish.documents import seg_header  # the one composer (it imports nothing from here)

    return seg_header(
        scan_id=msg.scan_id, rows_done=_plain(msg.rows_done), rows=_plain(msg.rows), cols=_plain(msg.cols),
        width_m=_plain(msg.width_m), height_m=_plain(msg.height_m), model_id=msg.model_id,
        model_name=msg.model_name, classes=msg.classes, detections=msg.detections, latency_ms=msg.latency_ms,
        final=msg.final, source=msg.source, complete=msg.complete, where=msg.position, reason=msg.not_segmented,
    )


def encode_seg(msg: SegMessage) -> list[bytes]:
    """``seg.partial`` / ``seg.frame`` message parts.

    Returns
    -------
    list of bytes
        ``[topic, header]``, plus the class map as a third part (C order,
        uint8) with ``dtype`` and ``map_rows`` in the header when
        ``msg.class_map`` is set.

    Raises
    ------
    WireError
        A field would not pass :func:`decode_seg`, or the class map is not
        ``uint8`` of ``cols`` columns within the frame.
    """
    obj = _seg_header(msg)
    payload: bytes | None = None
    if msg.class_map is not None:
        cmap = np.ascontiguousarray(msg.class_map)
        if cmap.dtype != np.uint8 or cmap.ndim != 2 or cmap.shape[1] != msg.cols:
            raise WireError(
                f"{msg.topic} class map (scan {msg.scan_id!r}): {cmap.dtype} {cmap.shape}, "
                f"expected uint8 (n, cols={msg.cols})"
            )
        obj["dtype"] = _LABEL_DTYPE
        obj["map_rows"] = [int(msg.map_row0), int(msg.map_row0) + int(cmap.shape[0])]
        payload = cmap.tobytes()
        # The composer puts these before "position" and the frame fields; the order is cosmetic.
    _check_seg_header(_Header(msg.topic, obj), msg.final)
    parts = [msg.topic.encode(), _dumps(obj)]
    if payload is not None:
        parts.append(payload)
    return parts


def decode_seg(parts: Sequence[Buffer]) -> SegMessage:
    """Check and decode a ``seg.partial`` or ``seg.frame`` message.

    Returns
    -------
    SegMessage
        ``class_map`` is a read-only ``uint8`` view of the payload, or None.

    Raises
    ------
    WireError
        Wrong topic or part count, bad header, class map of the wrong size.
    """
    topic = _topic(parts)
    if topic not in (TOPIC_PARTIAL, TOPIC_SEG_FRAME):
        raise WireError(f"expected topic {TOPIC_PARTIAL!r} or {TOPIC_SEG_FRAME!r}, got {topic!r}")
    h = _header(topic, parts, (2, 3))
    fields = _check_seg_header(h, topic == TOPIC_SEG_FRAME)
    map_rows = fields.pop("map_rows")
    if (map_rows is None) != (len(parts) == 2):
        raise WireError(
            f"{h.where()}: a class-map payload and the header fields 'dtype'/'map_rows' come together; "
            f"got {len(parts)} parts and map_rows = {map_rows!r}"
        )
    cmap = None
    if map_rows is not None:
        n = (map_rows[1] - map_rows[0]) * fields["cols"]
        size = memoryview(parts[2]).nbytes
        if size != n:
            raise WireError(
                f"{h.where('payload')}: {size} bytes, expected {n} "
                f"(map_rows {map_rows[0]}..{map_rows[1]} x cols = {fields['cols']} uint8 values)"
            )
        cmap = np.frombuffer(parts[2], dtype=np.uint8).reshape(map_rows[1] - map_rows[0], fields["cols"])
        fields["map_row0"] = map_rows[0]
    return SegMessage(class_map=cmap, **fields)


def encode_status(msg: StatusMessage) -> list[bytes]:
    """``status`` message parts: ``[b"status", header]``.

    Raises
    ------
    WireError
        A field would not pass :func:`decode_status` (for instance a
        required counter is missing).
    """
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "state": msg.state,
        "uptime_s": round(float(msg.uptime_s), 3),
        "counters": {k: int(v) for k, v in msg.counters.items()},
        "queues": {k: int(v) for k, v in msg.queues.items()},
        "model": None if msg.model_id is None else {"id": msg.model_id, "name": msg.model_name},
        "version": msg.version,
        "t": round(float(msg.t), 3),
    }
    _check_status_header(_Header(TOPIC_STATUS, obj))
    return [TOPIC_STATUS.encode(), _dumps(obj)]


def decode_status(parts: Sequence[Buffer]) -> StatusMessage:
    """Check and decode a ``status`` heartbeat.

    Raises
    ------
    WireError
        Wrong topic or part count, bad header.
    """
    topic = _topic(parts)
    if topic != TOPIC_STATUS:
        raise WireError(f"expected topic {TOPIC_STATUS!r}, got {topic!r}")
    return _check_status_header(_header(topic, parts, (2,)))


def decode_level_line(parts: Sequence[Buffer]) -> LevelLineMessage:
    """Check and decode a ``level.line`` message; ``data`` is a ``(cols,)`` native float32 array.

    Raises
    ------
    WireError
        Wrong topic or part count, bad header or payload.
    """
    topic = _topic(parts)
    if topic != TOPIC_LEVEL_LINE:
        raise WireError(f"expected topic {TOPIC_LEVEL_LINE!r}, got {topic!r}")
    h = _header(topic, parts, (3,))
    fields = _check_level_line_header(h)
    n_bytes = memoryview(parts[2]).nbytes
    if n_bytes != fields["cols"] * 4:
        raise WireError(f"{h.where('payload')}: {n_bytes} bytes, expected {fields['cols'] * 4} "
                        f"(cols = {fields['cols']} values of '<f4')")
    data = np.frombuffer(parts[2], dtype="<f4").astype(np.float32)
    return LevelLineMessage(data=data, **fields)


def encode_document(doc: Any) -> list[Buffer]:
    """The message parts of a published document (:class:`stm_live.publish.documents.Document`).

    The header is checked with the decoder's checks first, so a subscriber
    accepts whatever the daemon sends; the payload goes out without a copy.

    Raises
    ------
    WireError
        The topic is not published, or the header or payload is wrong (a bug
        in the composer: the caller logs it and carries on).
    """
    topic = doc.topic
    header = doc.header
    h = _Header(topic, header)
    payload = doc.payload
    if topic in (TOPIC_PARTIAL, TOPIC_SEG_FRAME):
        fields = _check_seg_header(h, topic == TOPIC_SEG_FRAME)
        map_rows = fields["map_rows"]
        if (map_rows is None) != (payload is None):
            raise WireError(f"{h.where()}: a class-map payload and 'map_rows' come together")
        if payload is not None and (
            payload.dtype != np.uint8 or payload.shape != (map_rows[1] - map_rows[0], fields["cols"])
        ):
            raise WireError(f"{h.where('payload')}: class map {payload.dtype} {payload.shape}, expected uint8 "
                            f"({map_rows[1] - map_rows[0]}, {fields['cols']})")
    elif topic == TOPIC_LEVEL_LINE:
        fields = _check_level_line_header(h)
        if payload is None or payload.dtype != np.dtype("<f4") or payload.shape != (fields["cols"],):
            raise WireError(f"{h.where('payload')}: expected ({fields['cols']},) little-endian float32 values")
    elif topic == TOPIC_STATUS:
        _check_status_header(h)
        if payload is not None:
            raise WireError(f"{h.where()}: a status message has no payload")
    else:
        raise WireError(f"topic {topic!r} is not published; expected one of {', '.join(PUBLISH_TOPICS)}")
    parts: list[Buffer] = [topic.encode(), _dumps(header)]
    if payload is not None:
        parts.append(np.ascontiguousarray(payload).data.cast("B"))
    return parts


# --------------------------------------------------------------------------
# Any message
# --------------------------------------------------------------------------


def encode(msg: Message) -> list[bytes]:
    """Message parts for any message type (dispatches on the type)."""
    if isinstance(msg, LineMessage):
        return encode_line(msg)
    if isinstance(msg, FrameMessage):
        return encode_frame(msg)
    if isinstance(msg, EndMessage):
        return encode_end(msg)
    if isinstance(msg, SegMessage):
        return encode_seg(msg)
    if isinstance(msg, StatusMessage):
        return encode_status(msg)
    raise TypeError(f"not a protocol message: {type(msg).__name__}")


def decode(parts: Sequence[Buffer]) -> Message:
    """Decode any protocol v1 message (dispatches on the topic).

    Raises
    ------
    WireError
        Unknown topic, or whatever the topic's decoder rejects.
    """
    topic = _topic(parts)
    if topic in INGEST_TOPICS:
        return decode_ingest(parts)
    if topic == TOPIC_STATUS:
        return decode_status(parts)
    if topic == TOPIC_LEVEL_LINE:
        return decode_level_line(parts)
    return decode_seg(parts)


@cache
def _schema_text(topic: str) -> str:
    return resources.files("stm_live").joinpath("schemas", f"{topic}.json").read_text(encoding="utf-8")


def load_schema(topic: str) -> dict[str, Any]:
    """The JSON schema of the header of ``topic`` (a fresh dict each call).

    ``"result"`` gives the schema of a stored result record
    (:func:`stm_live.publish.stored_record`).

    Examples
    --------
    >>> load_schema("stm.end")["required"]
    ['v', 'scan_id', 'complete']
    """
    if topic not in TOPICS and topic != "result":
        raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(TOPICS)} or 'result'")
    schema: dict[str, Any] = json.loads(_schema_text(topic))
    return schema
