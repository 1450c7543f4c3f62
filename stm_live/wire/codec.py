"""Messages to bytes and bytes to messages: parts, headers (checked by their definitions), payloads.

Every header is checked by its one definition in :mod:`stm_live.wire.topics`
(:meth:`~stm_live.wire.schema.MessageSpec.check`), by the encoders and the
decoders alike; this module adds what is about the message as a whole: the
part count, the JSON, and the payload (dtype, length, values).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, NoReturn

import numpy as np

from ..errors import WireError
from ..frame import Detection
from .messages import (
    DecisionMessage,
    EndMessage,
    FrameMessage,
    IngestMessage,
    LevelLineMessage,
    LineMessage,
    Message,
    ScanInfo,
    SegMessage,
    StatusMessage,
)
from .schema import Header
from .topics import (
    INGEST_TOPICS,
    LABEL_DTYPE,
    PAYLOAD_DTYPES,
    PROTOCOL_VERSION,
    PUBLISH_TOPICS,
    SPECS,
    TOPIC_DECISION,
    TOPIC_END,
    TOPIC_FRAME,
    TOPIC_LEVEL_LINE,
    TOPIC_LINE,
    TOPIC_PARTIAL,
    TOPIC_SEG_FRAME,
    TOPIC_STATUS,
    TOPICS,
)

__all__ = [
    "Buffer",
    "check_header",
    "decode",
    "decode_decision",
    "decode_end",
    "decode_frame",
    "decode_ingest",
    "decode_level_line",
    "decode_line",
    "decode_seg",
    "decode_status",
    "encode",
    "encode_decision",
    "encode_document",
    "encode_end",
    "encode_frame",
    "encode_line",
    "encode_seg",
    "encode_status",
    "load_schema",
]

Buffer = bytes | bytearray | memoryview
"""One message part: anything with the buffer protocol (``zmq.Frame`` too)."""

_LINE = SPECS[TOPIC_LINE]
_FRAME = SPECS[TOPIC_FRAME]
_END = SPECS[TOPIC_END]
_LEVEL_LINE = SPECS[TOPIC_LEVEL_LINE]
_STATUS = SPECS[TOPIC_STATUS]
_DECISION = SPECS[TOPIC_DECISION]
_SHAPES = {
    TOPIC_LINE: "[topic, header, payload]",
    TOPIC_FRAME: "[topic, header, payload]",
    TOPIC_END: "[topic, header]",
    TOPIC_STATUS: "[topic, header]",
    TOPIC_DECISION: "[topic, header]",
    TOPIC_LEVEL_LINE: "[topic, header, payload]",
}


def check_header(topic: str, header: Mapping[str, Any]) -> dict[str, Any]:
    """Check a header of ``topic`` (or, for ``"result"``, a stored result record) against its definition.

    Parameters
    ----------
    topic : str
        One of :data:`TOPICS`, or ``"result"``.
    header : Mapping
        The decoded JSON object.

    Returns
    -------
    dict
        Every field, checked and converted (integral numbers as ``int``,
        numbers as ``float``), absent optional fields at their defaults.

    Raises
    ------
    WireError
        Naming the topic, the scan, the field, the value and what was expected.

    Examples
    --------
    >>> check_header("stm.end", {"v": 1, "scan_id": "s1", "complete": True})
    {'v': 1, 'scan_id': 's1', 'complete': True}
    >>> check_header("stm.end", {"v": 1, "scan_id": "s1", "complete": "yes"})
    Traceback (most recent call last):
    ...
    stm_live.errors.WireError: stm.end header (scan 's1'): field 'complete' = 'yes': expected true or false
    """
    spec = SPECS.get(topic)
    if spec is None:
        raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(TOPICS)} or 'result'")
    return spec.check(Header(topic, header, spec.part))


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


def _header(topic: str, parts: Sequence[Buffer], n_parts: tuple[int, ...]) -> Header:
    if len(parts) not in n_parts:
        shape = _SHAPES.get(topic, "[topic, header] or [topic, header, class map]")
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
    return Header(topic, obj)


def _values(h: Header, payload: Buffer, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
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


def _check_values(h: Header, raw: np.ndarray, data: np.ndarray, shape: tuple[int, ...]) -> None:
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


@cache
def _dtype(text: str) -> np.dtype[Any]:
    return np.dtype(text)


# --------------------------------------------------------------------------
# Ingest messages
# --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so that header checks and json see plain types."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _scan_header(scan: ScanInfo, dtype: str, t: float | None, row: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "scan_id": scan.scan_id,
        "rows": _plain(scan.rows),
        "cols": _plain(scan.cols),
    }
    if row is not None:
        obj["row"] = _plain(row)
    obj.update({
        "width_m": _plain(scan.width_m),
        "height_m": _plain(scan.height_m),
        "dtype": dtype,
        "channel": scan.channel,
        "direction": scan.direction,
        "unit": scan.unit,
    })
    for name in ("bias_v", "setpoint_a"):
        value = getattr(scan, name)
        if value is not None:
            obj[name] = _plain(value)
    if scan.offset_m is not None:
        obj["offset_m"] = [_plain(v) for v in scan.offset_m]
    if scan.angle_deg is not None:
        obj["angle_deg"] = _plain(scan.angle_deg)
    if t is not None:
        obj["t"] = _plain(t)
    return obj


def _scan_info(got: dict[str, Any]) -> ScanInfo:
    offset = got["offset_m"]
    return ScanInfo(
        scan_id=got["scan_id"], rows=got["rows"], cols=got["cols"], width_m=got["width_m"],
        height_m=got["height_m"], channel=got["channel"], direction=got["direction"], unit=got["unit"],
        bias_v=got["bias_v"], setpoint_a=got["setpoint_a"],
        offset_m=None if offset is None else (offset[0], offset[1]), angle_deg=got["angle_deg"],
    )


def _array(h: Header, data: Any) -> np.ndarray:
    """``data`` as a C-contiguous array of a payload dtype (a transposed view would go out in memory order)."""
    arr = np.ascontiguousarray(data)
    if arr.dtype.str not in PAYLOAD_DTYPES:
        raise WireError(
            f"{h.where('payload')}: dtype {arr.dtype.str!r} cannot be sent; "
            f"convert to one of {', '.join(PAYLOAD_DTYPES)}"
        )
    return arr


def _check_payload(h: Header, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise WireError(f"{h.where('payload')}: data shape {arr.shape}, expected {shape}")
    if arr.dtype.kind == "f":
        flat = arr.reshape(-1)
        _check_values(h, flat, _to_float32(flat), shape)


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
    h = Header(TOPIC_LINE, {})
    h.scan_id = msg.scan.scan_id
    arr = _array(h, msg.data)
    obj = _scan_header(msg.scan, arr.dtype.str, msg.t, row=msg.row)
    h = Header(TOPIC_LINE, obj)
    got = _LINE.check(h)
    _check_payload(h, arr, (got["cols"],))
    return [TOPIC_LINE.encode(), _dumps(obj), arr.tobytes()]


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
    got = _LINE.check(h)
    data = _values(h, parts[2], _dtype(got["dtype"]), (got["cols"],))
    return LineMessage(scan=_scan_info(got), row=got["row"], data=data, t=got["t"])


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
    h = Header(TOPIC_FRAME, {})
    h.scan_id = msg.scan.scan_id
    arr = _array(h, msg.data)
    obj = _scan_header(msg.scan, arr.dtype.str, msg.t)
    h = Header(TOPIC_FRAME, obj)
    got = _FRAME.check(h)
    _check_payload(h, arr, (got["rows"], got["cols"]))
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
    got = _FRAME.check(h)
    data = _values(h, parts[2], _dtype(got["dtype"]), (got["rows"], got["cols"]))
    return FrameMessage(scan=_scan_info(got), data=data, t=got["t"])


def encode_end(msg: EndMessage) -> list[bytes]:
    """``stm.end`` message parts: ``[b"stm.end", header]``.

    Examples
    --------
    >>> encode_end(EndMessage("s1", complete=False))[1]
    b'{"v":1,"scan_id":"s1","complete":false}'
    """
    obj = {"v": PROTOCOL_VERSION, "scan_id": msg.scan_id, "complete": msg.complete}
    _END.check(Header(TOPIC_END, obj))
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
    got = _END.check(_header(topic, parts, (2,)))
    return EndMessage(scan_id=got["scan_id"], complete=got["complete"])


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
    from ..publish.documents import seg_header  # the one composer (it imports nothing from here)

    return seg_header(
        scan_id=msg.scan_id, rows_done=_plain(msg.rows_done), rows=_plain(msg.rows), cols=_plain(msg.cols),
        width_m=_plain(msg.width_m), height_m=_plain(msg.height_m), model_id=msg.model_id,
        model_name=msg.model_name, classes=msg.classes, detections=msg.detections, latency_ms=msg.latency_ms,
        final=msg.final, source=msg.source, complete=msg.complete, where=msg.position, reason=msg.not_segmented,
    )


def _seg_message(topic: str, got: dict[str, Any], class_map: np.ndarray | None) -> SegMessage:
    final = topic == TOPIC_SEG_FRAME
    map_rows = got["map_rows"]
    return SegMessage(
        scan_id=got["scan_id"], rows_done=got["rows_done"], rows=got["rows"], cols=got["cols"],
        width_m=got["width_m"], height_m=got["height_m"], model_id=got["model"]["id"],
        model_name=got["model"]["name"], classes=tuple(got["classes"]),
        detections=tuple(
            Detection(class_name=d["class"], x_nm=d["x_nm"], y_nm=d["y_nm"], area_nm2=d["area_nm2"],
                      score=d["score"], id=d["id"])
            for d in got["detections"]
        ),
        latency_ms=got["latency_ms"], class_map=class_map, map_row0=0 if map_rows is None else map_rows[0],
        final=final, source=got["source"] if final else None, complete=got["complete"] if final else None,
        position=got["position"], not_segmented=got["not_segmented"] if final else None,
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
        obj["dtype"] = LABEL_DTYPE
        obj["map_rows"] = [int(msg.map_row0), int(msg.map_row0) + int(cmap.shape[0])]
        payload = cmap.tobytes()
        # The composer puts these before "position" and the frame fields; the order is cosmetic.
    SPECS[msg.topic].check(Header(msg.topic, obj))
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
    got = SPECS[topic].check(h)
    map_rows = got["map_rows"]
    if (map_rows is None) != (len(parts) == 2):
        raise WireError(
            f"{h.where()}: a class-map payload and the header fields 'dtype'/'map_rows' come together; "
            f"got {len(parts)} parts and map_rows = {map_rows!r}"
        )
    cmap = None
    if map_rows is not None:
        n = (map_rows[1] - map_rows[0]) * got["cols"]
        size = memoryview(parts[2]).nbytes
        if size != n:
            raise WireError(
                f"{h.where('payload')}: {size} bytes, expected {n} "
                f"(map_rows {map_rows[0]}..{map_rows[1]} x cols = {got['cols']} uint8 values)"
            )
        cmap = np.frombuffer(parts[2], dtype=np.uint8).reshape(map_rows[1] - map_rows[0], got["cols"])
    return _seg_message(topic, got, cmap)


def _status_message(got: dict[str, Any]) -> StatusMessage:
    model = got["model"]
    return StatusMessage(
        state=got["state"], uptime_s=got["uptime_s"], counters=got["counters"], queues=got["queues"],
        version=got["version"], t=got["t"], model_id=None if model is None else model["id"],
        model_name=None if model is None else model["name"],
    )


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
    _STATUS.check(Header(TOPIC_STATUS, obj))
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
    return _status_message(_STATUS.check(_header(topic, parts, (2,))))


def _level_line_message(got: dict[str, Any], data: np.ndarray) -> LevelLineMessage:
    return LevelLineMessage(
        scan_id=got["scan_id"], row=got["row"], rows_done=got["rows_done"], rows=got["rows"], cols=got["cols"],
        width_m=got["width_m"], height_m=got["height_m"], channel=got["channel"], unit=got["unit"],
        scan_direction=got["scan_direction"], data=data,
    )


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
    got = _LEVEL_LINE.check(h)
    n_bytes = memoryview(parts[2]).nbytes
    if n_bytes != got["cols"] * 4:
        raise WireError(f"{h.where('payload')}: {n_bytes} bytes, expected {got['cols'] * 4} "
                        f"(cols = {got['cols']} values of '<f4')")
    data = np.frombuffer(parts[2], dtype="<f4").astype(np.float32)
    return _level_line_message(got, data)


def encode_decision(decision: Mapping[str, Any]) -> list[bytes]:
    """``decision`` message parts: ``[b"decision", header]``.

    Raises
    ------
    WireError
        The decision would not pass :func:`decode_decision`.
    """
    _DECISION.check(Header(TOPIC_DECISION, decision))
    return [TOPIC_DECISION.encode(), _dumps(decision)]


def decode_decision(parts: Sequence[Buffer]) -> DecisionMessage:
    """Check and decode a ``decision`` message.

    Raises
    ------
    WireError
        Wrong topic or part count, bad header.
    """
    topic = _topic(parts)
    if topic != TOPIC_DECISION:
        raise WireError(f"expected topic {TOPIC_DECISION!r}, got {topic!r}")
    got = _DECISION.check(_header(topic, parts, (2,)))
    return DecisionMessage(scan_id=got["scan_id"], rule=got["rule"], action=got["action"],
                           params=json.loads(bytes(parts[1]))["params"], reason=got["reason"], t=got["t"],
                           id=got.get("id"))


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
    if topic not in PUBLISH_TOPICS:
        raise WireError(f"topic {topic!r} is not published; expected one of {', '.join(PUBLISH_TOPICS)}")
    header = doc.header
    h = Header(topic, header)
    got = SPECS[topic].check(h)
    payload = doc.payload
    if topic in (TOPIC_PARTIAL, TOPIC_SEG_FRAME):
        map_rows = got["map_rows"]
        if (map_rows is None) != (payload is None):
            raise WireError(f"{h.where()}: a class-map payload and 'map_rows' come together")
        if payload is not None and (
            payload.dtype != np.uint8 or payload.shape != (map_rows[1] - map_rows[0], got["cols"])
        ):
            raise WireError(f"{h.where('payload')}: class map {payload.dtype} {payload.shape}, expected uint8 "
                            f"({map_rows[1] - map_rows[0]}, {got['cols']})")
    elif topic == TOPIC_LEVEL_LINE:
        if payload is None or payload.dtype != np.dtype("<f4") or payload.shape != (got["cols"],):
            raise WireError(f"{h.where('payload')}: expected ({got['cols']},) little-endian float32 values")
    elif payload is not None:
        raise WireError(f"{h.where()}: a {topic} message has no payload")
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
    if topic == TOPIC_DECISION:
        return decode_decision(parts)
    return decode_seg(parts)


@cache
def _schema_text(topic: str) -> str:
    return resources.files("stm_live").joinpath("schemas", f"{topic}.json").read_text(encoding="utf-8")


def load_schema(topic: str) -> dict[str, Any]:
    """The committed JSON schema of the header of ``topic`` (a fresh dict each call).

    ``"result"`` gives the schema of a stored result record
    (:func:`stm_live.publish.stored_record`). The files are generated from
    :mod:`stm_live.wire.topics` (``python -m stm_live.wire --schemas``).

    Examples
    --------
    >>> load_schema("stm.end")["required"]
    ['v', 'scan_id', 'complete']
    """
    if topic not in SPECS:
        raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(TOPICS)} or 'result'")
    schema: dict[str, Any] = json.loads(_schema_text(topic))
    return schema

