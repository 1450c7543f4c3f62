"""The one definition of every header of protocol v1, and of the stored result record.

Each topic is a :class:`~stm_live.wire.schema.MessageSpec` below: which fields
exist, which are required, their kinds and ranges, what they mean, what is
expected of them, and the rules across fields. Everything else is derived
from these definitions:

* the checks of every encoder and decoder (:mod:`stm_live.wire.codec`);
* the committed JSON schemas ``stm_live/schemas/<topic>.json``
  (``python -m stm_live.wire --schemas`` writes them; a test fails when they
  differ from these definitions);
* the field tables of ``docs/protocol.md`` (``python -m stm_live.wire --docs``);
* and, checked by a test, the fields of the decoded dataclasses
  (:mod:`stm_live.wire.messages`).

To add a field: add it here, run ``python -m stm_live.wire --schemas --docs``,
then give the dataclass and the composer (:mod:`stm_live.publish.documents`)
the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from ..errors import WireError
from ..limits import MAX_LENGTH_M, MAX_PITCH_M, MIN_LENGTH_M, MIN_PITCH_M, length_problem
from .schema import (
    Boolean,
    Choice,
    Const,
    Field,
    Header,
    Integer,
    ListOf,
    MapOf,
    MessageSpec,
    Number,
    ObjectOf,
    Rule,
    Text,
    Version,
)

__all__ = [
    "INGEST_TOPICS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "PAYLOAD_DTYPES",
    "PROTOCOL_VERSION",
    "PUBLISH_TOPICS",
    "REQUIRED_COUNTERS",
    "RESULT",
    "SPECS",
    "STATES",
    "TOPICS",
]

#: The protocol version every header carries as ``"v"``.
PROTOCOL_VERSION: Final = 1

TOPIC_LINE: Final = "stm.line"
TOPIC_FRAME: Final = "stm.frame"
TOPIC_END: Final = "stm.end"
TOPIC_PARTIAL: Final = "seg.partial"
TOPIC_SEG_FRAME: Final = "seg.frame"
TOPIC_STATUS: Final = "status"
TOPIC_DECISION: Final = "decision"
TOPIC_LEVEL_LINE: Final = "level.line"
#: Not a topic: the name of the stored result record's definition.
RESULT: Final = "result"

#: Topics a controller bridge sends to the daemon.
INGEST_TOPICS: Final = (TOPIC_LINE, TOPIC_FRAME, TOPIC_END)
#: Topics the daemon publishes.
PUBLISH_TOPICS: Final = (TOPIC_PARTIAL, TOPIC_SEG_FRAME, TOPIC_STATUS, TOPIC_LEVEL_LINE, TOPIC_DECISION)
#: Every topic of protocol v1.
TOPICS: Final = INGEST_TOPICS + PUBLISH_TOPICS

#: ``dtype.str`` values a line or frame payload may have (byte order explicit).
PAYLOAD_DTYPES: Final = ("<f4", ">f4", "<f8", ">f8", "<i2", ">i2", "<i4", ">i4", "<u2", ">u2")
#: Largest ``rows`` or ``cols`` (Nanonis offers at most 8192 pixels per side).
MAX_SIDE: Final = 1 << 15
#: Largest ``rows * cols`` of one scan: 64 Mpx, 256 MB as float32.
MAX_PIXELS: Final = 1 << 26
#: Counters every ``status`` heartbeat carries.
REQUIRED_COUNTERS: Final = ("frames", "lines", "errors", "dropped")
#: The daemon's states in ``status``.
STATES: Final = ("starting", "running", "stopping")

MAX_ID: Final = 128
MAX_NAME: Final = 64
LABEL_DTYPE: Final = "|u1"
#: Slack for detection centres at the frame's edge, nm (they are rounded to 4 decimals).
EDGE_SLACK_NM: Final = 1e-3


# --------------------------------------------------------------------------
# Fields used by several topics
# --------------------------------------------------------------------------

V = Field("v", Version(PROTOCOL_VERSION), "protocol version")
SCAN_ID = Field("scan_id", Text(1, MAX_ID), "the controller's name for the scan", context="scan_id")
ROWS = Field("rows", Integer(1, MAX_SIDE), "lines of the whole frame")
COLS = Field("cols", Integer(1, MAX_SIDE), "pixels per line")
ROW = Field("row", Integer(0, MAX_SIDE - 1, below="rows"),
            "0-based display row, **row 0 = top of the displayed image**", context="row")


def _length(name: str, what: str) -> Field:
    return Field(
        name, Number(0, MAX_LENGTH_M, lo_open=True, hi_open=True), f"physical {what} of the whole frame, **metres**",
        expected=f"a length in metres, 0 < {name} < {MAX_LENGTH_M:g} (nanometres sent as metres?)",
    )


WIDTH_M = _length("width_m", "width")
HEIGHT_M = _length("height_m", "height")
CHANNEL = Field("channel", Text(1, MAX_NAME), "channel name (`Z`, `Current`)")
UNIT = Field("unit", Text(0, 32), "unit of the values (SI: `m` for Z, `A` for current)")
DIRECTION = Field("direction", Choice(("forward", "backward")), "trace or retrace")
SCAN_DIRECTION = Field("scan_direction", Choice(("down", "up")),
                       "which edge the scan starts from (slow-scan direction)")
MODEL = Field(
    "model",
    ObjectOf((Field("id", Text(1), "the model's content id"), Field("name", Text(1), "the model's name"))),
    "the model",
)
UNIX_T = Number(0)


def _pair(positive: bool) -> ListOf:
    item = Number(0, lo_open=True) if positive else Number()
    return ListOf(item, 2, 2, says=f"[x, y]: two finite{' positive' if positive else ''} numbers in metres")


POSITION = Field(
    "position",
    ObjectOf((
        Field("centre_m", _pair(False), "scan-frame centre `[x, y]` in the controller's coordinates (m)",
              nullable=True),
        Field("size_m", _pair(True), "scan-frame size `[width, height]` (m)"),
        Field("angle_deg", Number(), "scan-frame rotation (deg)", nullable=True),
        replace(SCAN_DIRECTION, description="slow-scan direction: the edge the scan starts from"),
        replace(DIRECTION, description="trace or retrace"),
        Field("bias_v", Number(), "sample bias (V)", nullable=True),
        Field("setpoint_a", Number(), "current setpoint (A)", nullable=True),
    )),
    "where on the sample the frame was taken, as far as its source said (unknown values null)",
    required=False,
)


# --------------------------------------------------------------------------
# Rules across fields
# --------------------------------------------------------------------------


def _pixels(h: Header, got: dict[str, Any]) -> None:
    rows, cols = got["rows"], got["cols"]
    if rows * cols > MAX_PIXELS:
        raise WireError(
            f"{h.where()}: fields 'rows' x 'cols' = {rows} x {cols}: expected at most {MAX_PIXELS} pixels in all"
        )


def _sane_size(h: Header, got: dict[str, Any]) -> None:
    for name, pixels in (("width_m", got["cols"]), ("height_m", got["rows"])):
        problem = length_problem(name, got[name], pixels)
        if problem is not None:  # the same sane ranges as every other door (stm_live.limits)
            h.fail(name, got[name], f"a sane size: {problem}")


PIXELS = Rule(f"`rows * cols` is at most {MAX_PIXELS} (2**26 pixels, 256 MB as float32)", _pixels)
SANE_SIZE = Rule(
    f"`width_m` and `height_m` are at least {MIN_LENGTH_M:g} m, and the pixel pitch (`width_m / cols`, "
    f"`height_m / rows`) is within {MIN_PITCH_M:g}..{MAX_PITCH_M:g} m (`stm_live/limits.py`, the same at every door)",
    _sane_size,
)


def _map_rows(h: Header, got: dict[str, Any]) -> None:
    map_rows, rows = got["map_rows"], got["rows"]
    if map_rows is not None and not map_rows[0] <= map_rows[1] <= rows:
        h.fail("map_rows", map_rows, f"[start, stop]: the display rows the class map covers, "
                                     f"0 <= start <= stop <= {rows}")


def _detections_inside(size_nm: Callable[[dict[str, Any]], tuple[float, float]], bounds: str) -> Rule:
    """Each detection's class is listed and its centre inside the frame, ``size_nm(got)`` nm wide and high."""

    def check(h: Header, got: dict[str, Any]) -> None:
        classes = got["classes"]
        width_nm, height_nm = size_nm(got)
        for i, d in enumerate(got["detections"]):
            if d["class"] not in classes:
                h.fail(f"detections[{i}].class", d["class"], "one of the message's classes " + ", ".join(classes))
            for axis, size in (("x_nm", width_nm), ("y_nm", height_nm)):
                if not -EDGE_SLACK_NM <= d[axis] <= size + EDGE_SLACK_NM:
                    h.fail(f"detections[{i}].{axis}", d[axis],
                           f"a finite number in {-EDGE_SLACK_NM:g}..{size + EDGE_SLACK_NM:g}")

    return Rule(
        f"every detection's `class` is one of `classes`, and its centre lies inside the frame: {bounds} "
        f"({EDGE_SLACK_NM:g} nm slack for rounding)",
        check,
    )


def _nothing_when_not_segmented(also_classes: bool) -> Rule:
    def check(h: Header, got: dict[str, Any]) -> None:
        if got["not_segmented"] is not None:
            if got["detections"]:
                h.fail("detections", h.obj["detections"], "none when the frame was not segmented "
                                                          "('not_segmented' is set)")
            if also_classes and got["classes"]:
                h.fail("classes", h.obj["classes"], "none when the frame was not segmented ('not_segmented' is set)")

    what = "`detections` and `classes` are" if also_classes else "`detections` is"
    return Rule(f"when `not_segmented` is set, {what} empty", check)


# --------------------------------------------------------------------------
# Ingest: bridge -> daemon
# --------------------------------------------------------------------------


def _scan_fields(with_row: bool) -> tuple[Field, ...]:
    return (
        V,
        SCAN_ID,
        ROWS,
        COLS,
        *((ROW,) if with_row else ()),
        WIDTH_M,
        HEIGHT_M,
        Field("dtype", Choice(PAYLOAD_DTYPES), "numpy `dtype.str` of the payload values, byte order explicit",
              expected="a numpy dtype.str with explicit byte order, one of " + ", ".join(PAYLOAD_DTYPES)),
        replace(CHANNEL, required=False, default="Z"),
        replace(DIRECTION, required=False, default="forward",
                description="trace or retrace; backward lines are sent in display order (left to right) too"),
        replace(UNIT, required=False, default="m"),
        Field("bias_v", Number(), "sample bias (V)", required=False),
        Field("setpoint_a", Number(), "current setpoint (A)", required=False),
        Field("offset_m", _pair(False), "scan-frame centre `[x, y]` (m)", required=False),
        Field("angle_deg", Number(), "scan-frame rotation (deg)", required=False),
        Field("t", UNIX_T, "acquisition time, Unix seconds", required=False,
              expected=f"{UNIX_T.expected()} (Unix time in seconds)"),
    )


STM_LINE = MessageSpec(
    TOPIC_LINE,
    "stm.line header (protocol v1)",
    "One scan line; the payload holds `cols` values of `dtype`. NaN marks a missing pixel; a line of only NaN, "
    "and infinities, are rejected.",
    _scan_fields(with_row=True),
    rules=(PIXELS, SANE_SIZE),
)

STM_FRAME = MessageSpec(
    TOPIC_FRAME,
    "stm.frame header (protocol v1)",
    "A whole frame; the payload holds rows * cols values of `dtype` in C order (row 0 first, display orientation).",
    _scan_fields(with_row=False),
    rules=(PIXELS, SANE_SIZE),
)

STM_END = MessageSpec(
    TOPIC_END,
    "stm.end header (protocol v1)",
    "The scan is over; complete=false means aborted. No payload.",
    (V, replace(SCAN_ID, description="the scan"), Field("complete", Boolean(), "`false`: the scan was aborted")),
)


# --------------------------------------------------------------------------
# Published: daemon -> subscribers
# --------------------------------------------------------------------------

DETECTION_FIELDS = (
    Field("id", Integer(0, 1 << 31), "the detection's number within the frame"),
    Field("class", Text(0, control=True), "the class of the feature", expected="one of the message's classes"),
    Field("x_nm", Number(), "centre from the **left** edge of the whole frame (nm)"),
    Field("y_nm", Number(), "centre from the **top** edge of the whole frame (nm)"),
    Field("area_nm2", Number(0), "area (nm²)"),
    Field("score", Number(0, 1), "confidence 0..1"),
)


def _seg_fields(final: bool) -> tuple[Field, ...]:
    fields = (
        V,
        replace(SCAN_ID, description="the scan (for files: the file name without suffix)"),
        ROWS,
        COLS,
        Field("rows_done", Integer(0, MAX_SIDE, at_most="rows"), "rows segmented so far"),
        WIDTH_M,
        HEIGHT_M,
        replace(MODEL, description="the model that segmented it"),
        Field("classes", ListOf(Text(1), max_items=255, unique=True, says="a list of up to 255 distinct class names"),
              "class names; class map value `k` is `classes[k - 1]`, `0` is background"),
        Field("detections", ListOf(ObjectOf(DETECTION_FIELDS), says="a list of detections"),
              "features found, centres from the top-left corner of the whole frame"),
        Field("latency_ms", Number(0), "arrival of the (last) line to publication (ms)"),
        Field("dtype", Const(LABEL_DTYPE), "only with a class-map payload: its dtype", required=False,
              expected=f"{LABEL_DTYPE!r} (uint8 class map)"),
        Field("map_rows", ListOf(Integer(0, MAX_SIDE), 2, 2), "only with a class-map payload: the display rows "
              "`[start, stop)` it covers", required=False,
              expected="[start, stop]: the display rows the class map covers, 0 <= start <= stop <= rows"),
        POSITION,
    )
    if not final:
        return fields
    return (
        *fields,
        Field("source", Text(1, 4096), "the file path, or `zmq`"),
        Field("complete", Boolean(), "the scan ended normally with every row"),
        Field("not_segmented", Text(1, 1024), "the model was not applied, and why (a pixel size too coarse for it, "
              "a constant image, a failure); the daemon then sends no detections, no classes and no class map",
              required=False),
    )


_SEG_RULES = (Rule("`map_rows` `[start, stop]` has `start <= stop <= rows`", _map_rows),
              _detections_inside(lambda got: (got["width_m"] * 1e9, got["height_m"] * 1e9),
                                 "`x_nm` within 0..`width_m * 1e9`, `y_nm` within 0..`height_m * 1e9`"))
_TOGETHER = (("dtype", "map_rows", "with a class-map payload"),)

SEG_PARTIAL = MessageSpec(
    TOPIC_PARTIAL,
    "seg.partial header (protocol v1)",
    "Segmentation of the rows of a frame done so far; optional payload: uint8 class map of map_rows x cols.",
    _seg_fields(final=False),
    rules=_SEG_RULES,
    together=_TOGETHER,
)

SEG_FRAME = MessageSpec(
    TOPIC_SEG_FRAME,
    "seg.frame header (protocol v1)",
    "Segmentation of a finished frame, or why it was not segmented; optional payload: uint8 class map of "
    "map_rows x cols.",
    _seg_fields(final=True),
    rules=(*_SEG_RULES, _nothing_when_not_segmented(also_classes=False)),
    together=_TOGETHER,
)

LEVEL_LINE = MessageSpec(
    TOPIC_LEVEL_LINE,
    "level.line header (protocol v1)",
    "One scan line of a scan in progress, levelled line by line as the daemon received it (what the live model "
    "saw). Payload: cols little-endian float32 values (NaN = missing pixel), display order.",
    (
        V,
        replace(SCAN_ID, description="the scan"),
        ROWS,
        COLS,
        replace(ROW, description="display row, from the top"),
        Field("rows_done", Integer(1, MAX_SIDE, at_most="rows"), "rows acquired so far, from the scan's start edge"),
        WIDTH_M,
        HEIGHT_M,
        CHANNEL,
        UNIT,
        SCAN_DIRECTION,
        Field("dtype", Const("<f4"), "the payload's values", expected="'<f4' (little-endian float32 values)"),
    ),
)

_COUNT = Integer(0)

STATUS = MessageSpec(
    TOPIC_STATUS,
    "status header (protocol v1)",
    "The daemon's heartbeat. No payload.",
    (
        V,
        Field("state", Choice(STATES), "the daemon's state"),
        Field("uptime_s", Number(0), "seconds since start"),
        Field("counters", MapOf(_COUNT, REQUIRED_COUNTERS, says="an object of names to non-negative integers"),
              "counts since start; `dropped`: messages not published because a subscriber was full"),
        Field("queues", MapOf(_COUNT, says="an object of names to non-negative integers"),
              "depth of each internal queue (`lines`, `lines_mb`, `frames`, `files_pending`, `sink_<name>`)"),
        replace(MODEL, description="the model loaded, `null` when none", nullable=True),
        Field("version", Text(1, MAX_NAME), "stm-live version"),
        Field("t", UNIX_T, "Unix seconds", expected=f"{UNIX_T.expected()} (Unix time in seconds)"),
    ),
)


# --------------------------------------------------------------------------
# The stored result record (results_dir/frames/<name>-<sha256[:16]>.json)
# --------------------------------------------------------------------------

_LOOSE = Text(0, control=True)

RESULT_RECORD = MessageSpec(
    RESULT,
    "stored result of one frame",
    "results_dir/frames/<name>-<sha256[:16]>.json: one line of `stm-live segment --json` plus scan_id, complete "
    "and sha256 (the input's content hash).",
    (
        Field("source", Text(1, control=True), "the file path, or `zmq`"),
        Field("image", ObjectOf((
            Field("rows", Integer(1), "lines"),
            Field("cols", Integer(1), "pixels per line"),
            Field("width_nm", Number(0, lo_open=True), "physical width (nm)"),
            Field("height_nm", Number(0, lo_open=True), "physical height (nm)"),
            Field("channel", _LOOSE, "channel name"),
        )), "the image segmented"),
        Field("model", ObjectOf((Field("id", _LOOSE, "the model's content id"), Field("name", _LOOSE, "its name"))),
              "the model"),
        Field("classes", ListOf(_LOOSE, unique=True, says="a list of distinct class names"), "class names"),
        Field("detections", ListOf(ObjectOf((
            replace(DETECTION_FIELDS[0], required=False),
            *DETECTION_FIELDS[1:],
        )), says="a list of detections"), "features found (as in `seg.frame`)"),
        Field("timings_ms", MapOf(Number(0), says="an object of names to finite numbers >= 0"),
              "time spent per stage (ms)"),
        Field("scan_id", Text(1, control=True), "the scan's id (for files, the file name without suffix)",
              context="scan_id"),
        Field("complete", Boolean(), "whether the input was a complete scan"),
        Field("sha256", Text(64, 64, pattern="^[0-9a-f]{64}$"),
              "SHA-256 of the input file's bytes, or of a streamed frame's float32 values",
              expected="64 lowercase hexadecimal digits"),
        replace(POSITION, description="where on the sample the frame was taken (as in `seg.frame`)"),
        Field("not_segmented", Text(1, control=True), "set when the model was not applied to this frame, with the "
              "reason; then no class map is stored", required=False),
    ),
    rules=(
        _detections_inside(lambda got: (got["image"]["width_nm"], got["image"]["height_nm"]),
                           "`x_nm` within 0..`image.width_nm`, `y_nm` within 0..`image.height_nm`"),
        _nothing_when_not_segmented(also_classes=True),
    ),
    part="record",
)

# --------------------------------------------------------------------------
# Decisions (rules over the results: docs/bridge.md)
# --------------------------------------------------------------------------

#: What a rule may ask the controller to do.
DECISION_ACTIONS: Final = ("stop", "rescan", "move", "zoom", "pulse", "tip_shape", "survey")

DECISION = MessageSpec(
    TOPIC_DECISION,
    "decision (protocol v1)",
    "What a rule decided for a scan: published on the bus and in the event log, executed by a bridge only when "
    "automation is on. No payload.",
    (
        V,
        Field("id", Text(1, MAX_ID), "the decision's id (unique within the daemon's run)", required=False),
        replace(SCAN_ID, description="the scan whose results fired the rule"),
        Field("rule", Text(1, MAX_NAME, pattern="^[A-Za-z0-9_.-]+$"), "the rule's name (config `decide.rules`)",
              expected="a rule name: letters, digits, '_', '.', '-'"),
        Field("action", Choice(DECISION_ACTIONS), "what to do"),
        Field("params", ObjectOf((
            Field("x_nm", Number(), "image position (nm from the left edge) of the scan's frame to centre on",
                  required=False),
            Field("y_nm", Number(), "image position (nm from the top edge)", required=False),
            Field("width_nm", Number(0, lo_open=True), "zoom: the new frame's width (nm)", required=False),
            Field("target", ObjectOf((
                Field("class", Text(1, MAX_NAME), "the class of the feature aimed at"),
                Field("id", Integer(0, 1 << 31), "its detection id in the results", required=False),
                Field("score", Number(0, 1), "its score", required=False),
            )), "the feature the frame is centred on", required=False),
            Field("bias_v", Number(), "pulse: sample bias during the pulse (V)", required=False),
            Field("width_s", Number(0, lo_open=True), "pulse: duration (s)", required=False),
            Field("rescan", Boolean(), "pulse / tip_shape: start a new scan afterwards", required=False),
            Field("frame", ObjectOf((
                Field("x_m", Number(), "centre x (m, controller coordinates)"),
                Field("y_m", Number(), "centre y (m)"),
                Field("width_m", Number(0, lo_open=True), "width (m)"),
                Field("height_m", Number(0, lo_open=True), "height (m)"),
                Field("angle_deg", Number(), "rotation (deg, clockwise)", required=False),
            )), "survey: the next frame in controller coordinates", required=False),
            Field("cell", ListOf(Integer(0), min_items=2, max_items=2, says="[column, row] of the survey grid"),
                  "survey: the grid cell of the next frame", required=False),
        )), "the action's arguments"),
        Field("reason", Text(0, 2000), "why the rule fired, for people"),
        Field("t", UNIX_T, "Unix seconds", expected=f"{UNIX_T.expected()} (Unix time in seconds)"),
    ),
)

#: Every definition: the topics of protocol v1, and ``"result"``.
SPECS: Final = {spec.topic: spec for spec in (
    STM_LINE, STM_FRAME, STM_END, SEG_PARTIAL, SEG_FRAME, LEVEL_LINE, STATUS, DECISION, RESULT_RECORD)}
