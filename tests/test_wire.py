"""Protocol v1: round trips, the committed JSON schemas, every malformed message, real sockets."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import jsonschema
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.errors import StmLiveError, WireError
from stm_live.frame import Detection, Frame
from stm_live.publish import documents
from stm_live.wire import (
    INGEST_TOPICS,
    PAYLOAD_DTYPES,
    PUBLISH_TOPICS,
    TOPICS,
    EndMessage,
    FrameMessage,
    LineMessage,
    ScanInfo,
    SegMessage,
    StatusMessage,
    decode,
    decode_end,
    decode_frame,
    decode_ingest,
    decode_line,
    decode_seg,
    decode_status,
    encode,
    encode_decision,
    encode_document,
    encode_end,
    encode_frame,
    encode_line,
    encode_seg,
    encode_status,
    load_schema,
)

SCAN = ScanInfo("scan-7", rows=4, cols=5, width_m=20e-9, height_m=16e-9)
FULL_SCAN = ScanInfo(
    "scan-8", rows=4, cols=5, width_m=20e-9, height_m=16e-9, channel="Current", direction="backward", unit="A",
    bias_v=-1.5, setpoint_a=5e-11, offset_m=(1e-7, -2e-7), angle_deg=12.5,
)


def _line(row: int = 1, scan: ScanInfo = SCAN, dtype: str = "<f4", t: float | None = None) -> LineMessage:
    return LineMessage(scan, row=row, data=(np.arange(scan.cols) + row * 10).astype(dtype), t=t)


POSITION = {"centre_m": [1e-7, -2e-7], "size_m": [20e-9, 16e-9], "angle_deg": 135.0, "scan_direction": "up",
            "direction": "backward", "bias_v": -1.5, "setpoint_a": 5e-11}


def _seg(final: bool = False, with_map: bool = True, detections: int = 2, *, where: bool = False,
         reason: str | None = None) -> SegMessage:
    dets = tuple(
        Detection("AsH3", x_nm=1.0 + i, y_nm=2.0 + i, area_nm2=0.5, score=0.9, id=i) for i in range(detections)
    )
    return SegMessage(
        scan_id="scan-7", rows_done=3, rows=4, cols=5, width_m=20e-9, height_m=16e-9, model_id="abc123",
        model_name="si001-ash3", classes=("AsH3", "DB"), detections=dets, latency_ms=4.25,
        class_map=np.arange(15, dtype=np.uint8).reshape(3, 5) % 3 if with_map else None,
        final=final, source="zmq" if final else None, complete=True if final else None,
        position=POSITION if where else None, not_segmented=reason,
    )


def _level_line(full: bool) -> list[Any]:
    scan = FULL_SCAN if full else SCAN
    frame = Frame(np.zeros((scan.rows, scan.cols), np.float32), scan.width_m, scan.height_m, channel=scan.channel,
                  unit=scan.unit, scan_direction="up" if full else "down")
    doc = documents.level_line(scan.scan_id, frame, 3, np.arange(scan.cols, dtype=">f8"), rows_done=1)
    return encode_document(doc)


def _status() -> StatusMessage:
    return StatusMessage(
        state="running", uptime_s=12.5, counters={"frames": 1, "lines": 512, "errors": 0, "dropped": 3, "files": 2},
        queues={"segment": 0, "store": 1}, version="0.1.0", t=1.7e9, model_id="abc123", model_name="si001-ash3",
    )


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", PAYLOAD_DTYPES)
def test_line_round_trip_every_dtype_gives_native_float32(dtype: str) -> None:
    msg = _line(row=2, scan=FULL_SCAN, dtype=dtype, t=1.7e9)
    parts = encode_line(msg)
    assert parts[0] == b"stm.line" and len(parts) == 3
    assert json.loads(parts[1])["dtype"] == dtype
    got = decode_line(parts)
    assert got.scan == FULL_SCAN and got.row == 2 and got.t == 1.7e9
    assert got.data.dtype == np.float32 and got.data.dtype.isnative and got.data.flags.c_contiguous
    np.testing.assert_array_equal(got.data, np.arange(5) + 20)


def test_line_defaults_when_optional_fields_are_absent() -> None:
    header = {"v": 1, "scan_id": "s", "row": 0, "rows": 1, "cols": 2, "width_m": 1e-9, "height_m": 1e-9,
              "dtype": "<f8"}
    got = decode_line([b"stm.line", json.dumps(header).encode(), np.array([1.0, 2.0], "<f8").tobytes()])
    assert (got.scan.channel, got.scan.direction, got.scan.unit) == ("Z", "forward", "m")
    assert got.scan.bias_v is None and got.scan.offset_m is None and got.t is None


def test_frame_round_trip_sends_a_transposed_view_in_display_order() -> None:
    scan = ScanInfo("f", rows=3, cols=2, width_m=1e-9, height_m=1e-9)
    base = np.arange(6, dtype=">f8").reshape(2, 3)
    image = base.T  # (3, 2), not C-contiguous: its memory order differs from its display order
    got = decode_frame(encode_frame(FrameMessage(scan, image)))
    np.testing.assert_array_equal(got.data, image)
    assert got.data.dtype.isnative and got.data.flags.c_contiguous


def test_nan_marks_missing_pixels_and_is_kept() -> None:
    data = np.array([1, np.nan, 3, 4, 5], np.float32)
    got = decode_line(encode_line(LineMessage(SCAN, 0, data)))
    assert np.isnan(got.data[1]) and got.data[0] == 1
    frame = np.full((4, 5), np.nan, np.float32)
    frame[0] = 1.0  # rows not scanned yet are NaN
    assert np.isnan(decode_frame(encode_frame(FrameMessage(SCAN, frame))).data[1:]).all()


def test_end_round_trip() -> None:
    assert decode_end(encode_end(EndMessage("scan-7", complete=False))) == EndMessage("scan-7", False)


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("with_map", [False, True])
def test_seg_round_trip(final: bool, with_map: bool) -> None:
    msg = _seg(final=final, with_map=with_map)
    parts = encode_seg(msg)
    assert parts[0] == (b"seg.frame" if final else b"seg.partial")
    assert len(parts) == (3 if with_map else 2)
    got = decode_seg(parts)
    assert got.detections == msg.detections and got.classes == msg.classes and got.final is final
    assert (got.model_id, got.model_name, got.latency_ms, got.rows_done) == ("abc123", "si001-ash3", 4.25, 3)
    if with_map:
        assert got.class_map is not None and msg.class_map is not None
        np.testing.assert_array_equal(got.class_map, msg.class_map)
        assert json.loads(parts[1])["map_rows"] == [0, 3]
    else:
        assert got.class_map is None
    if final:
        assert (got.source, got.complete) == ("zmq", True)


def test_seg_map_of_an_upward_scan_covers_the_bottom_rows() -> None:
    msg = _seg()
    up = SegMessage(**{**msg.__dict__, "map_row0": 1})
    got = decode_seg(encode_seg(up))
    assert got.map_row0 == 1 and json.loads(encode_seg(up)[1])["map_rows"] == [1, 4]


def test_status_round_trip() -> None:
    got = decode_status(encode_status(_status()))
    assert got == _status()
    no_model = StatusMessage(state="starting", uptime_s=0.0, counters=dict.fromkeys(["frames", "lines", "errors",
                             "dropped"], 0), queues={}, version="0.1.0", t=1.0)
    assert decode_status(encode_status(no_model)) == no_model


def test_encode_and_decode_dispatch_on_type_and_topic() -> None:
    msgs = [_line(), FrameMessage(SCAN, np.ones((4, 5), np.float32)), EndMessage("x", True), _seg(), _status()]
    for msg in msgs:
        assert type(decode(encode(msg))) is type(msg)
    assert isinstance(decode_ingest(encode(_line())), LineMessage)
    with pytest.raises(WireError, match="published by the daemon, not sent to it"):
        decode_ingest(encode(_status()))


def test_encoder_accepts_numpy_scalars_in_fields() -> None:
    scan = ScanInfo("s", rows=np.int64(2), cols=np.int32(3), width_m=np.float64(1e-9), height_m=np.float32(1e-9))  # type: ignore[arg-type]
    got = decode_line(encode_line(LineMessage(scan, np.int64(1), np.zeros(3, np.float32))))  # type: ignore[arg-type]
    assert got.row == 1 and got.scan.cols == 3


# --------------------------------------------------------------------------
# Schemas: committed, and in step with the code in both directions
# --------------------------------------------------------------------------


def _header(parts: list[bytes]) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(parts[1])
    return header


def _minimal_and_full(topic: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Headers the encoders emit with the fewest and with every optional field."""
    if topic == "stm.line":
        return _header(encode_line(_line())), _header(encode_line(_line(scan=FULL_SCAN, t=1.7e9)))
    if topic == "stm.frame":
        data = np.ones((4, 5), np.float32)
        return (_header(encode_frame(FrameMessage(SCAN, data))),
                _header(encode_frame(FrameMessage(FULL_SCAN, data, t=1.7e9))))
    if topic == "stm.end":
        h = _header(encode_end(EndMessage("e", True)))
        return h, h
    if topic in ("seg.partial", "seg.frame"):
        final = topic == "seg.frame"
        full = (_seg(final=True, with_map=True, detections=0, where=True, reason="not segmented: too coarse")
                if final else _seg(final=final, with_map=True, where=True))
        return _header(encode_seg(_seg(final=final, with_map=False, detections=0))), _header(encode_seg(full))
    if topic == "level.line":
        return _header(_level_line(False)), _header(_level_line(True))  # type: ignore[arg-type]
    if topic == "decision":
        return _header(encode_decision(DECISION)), _header(encode_decision(FULL_DECISION))
    h = _header(encode_status(_status()))
    return h, h


DECISION = {"v": 1, "scan_id": "s1", "rule": "tip", "action": "rescan", "params": {}, "reason": "", "t": 1.7e9}
FULL_DECISION = {
    **DECISION, "id": "d-1", "action": "survey",
    "params": {"x_nm": 1.0, "y_nm": 2.0, "width_nm": 10.0, "target": {"class": "AsH3", "id": 3, "score": 0.9},
               "bias_v": -3.0, "width_s": 0.05, "rescan": True, "cell": [1, 2],
               "frame": {"x_m": 1e-7, "y_m": 0.0, "width_m": 5e-8, "height_m": 5e-8, "angle_deg": 135.0}},
}


def _validator(topic: str) -> jsonschema.protocols.Validator:
    schema = load_schema(topic)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


@pytest.mark.parametrize("topic", TOPICS)
def test_encoder_output_validates_against_the_committed_schema(topic: str) -> None:
    minimal, full = _minimal_and_full(topic)
    validator = _validator(topic)
    validator.validate(minimal)
    validator.validate(full)


@pytest.mark.parametrize("topic", TOPICS)
def test_schema_and_code_agree_on_which_fields_exist(topic: str) -> None:
    schema = load_schema(topic)
    minimal, full = _minimal_and_full(topic)
    # Every field the code can emit is in the schema, and the schema names no field the code never emits.
    assert set(full) == set(schema["properties"])
    # Every field the schema requires is always emitted.
    assert set(schema["required"]) <= set(minimal)


@pytest.mark.parametrize("topic", TOPICS)
def test_schema_required_fields_are_exactly_those_the_decoder_requires(topic: str) -> None:
    schema = load_schema(topic)
    if topic.startswith("seg"):
        msg = _seg(final=topic == "seg.frame", with_map=False, where=True)
        parts = encode_seg(msg)
    elif topic == "level.line":
        parts = [bytes(p) for p in _level_line(True)]
    elif topic == "status":
        parts = encode_status(_status())
    elif topic == "decision":
        parts = encode_decision(FULL_DECISION)
    elif topic == "stm.end":
        parts = encode_end(EndMessage("e", True))
    elif topic == "stm.line":
        parts = encode_line(_line(scan=FULL_SCAN, t=1.0))
    else:
        parts = encode_frame(FrameMessage(FULL_SCAN, np.ones((4, 5), np.float32), t=1.0))
    full = _header(parts)
    for name in full:
        header = {k: v for k, v in full.items() if k != name}
        damaged = [parts[0], json.dumps(header).encode(), *parts[2:]]
        if name in schema["required"]:
            with pytest.raises(WireError, match=f"missing required field '{name}'"):
                decode(damaged)
        else:
            decode(damaged)


BAD_HEADERS: list[tuple[str, dict[str, Any]]] = [
    ("v", {"v": 2}),
    ("v", {"v": True}),
    ("v", {"v": "1"}),
    ("scan_id", {"scan_id": ""}),
    ("scan_id", {"scan_id": 7}),
    ("scan_id", {"scan_id": "a\nb"}),
    ("scan_id", {"scan_id": "x" * 129}),
    ("rows", {"rows": 0}),
    ("rows", {"rows": 2.5}),
    ("rows", {"rows": "4"}),
    ("rows", {"rows": True}),
    ("cols", {"cols": 40000}),
    ("row", {"row": -1}),
    ("width_m", {"width_m": 20.0}),
    ("width_m", {"width_m": 0}),
    ("height_m", {"height_m": -1e-9}),
    ("dtype", {"dtype": "float32"}),
    ("dtype", {"dtype": "<i8"}),
    ("dtype", {"dtype": "|O"}),
    ("direction", {"direction": "up"}),
    ("channel", {"channel": ""}),
    ("unit", {"unit": "m\u0007"}),
    ("offset_m", {"offset_m": [1.0]}),
    ("offset_m", {"offset_m": "0 0"}),
    ("bias_v", {"bias_v": "1 V"}),
    ("t", {"t": -5}),
    ("unknown", {"chanel": "Z"}),
]


@pytest.mark.parametrize(("field", "change"), BAD_HEADERS)
def test_decoder_and_schema_both_reject_a_bad_line_header(field: str, change: dict[str, Any]) -> None:
    header = {**_header(encode_line(_line())), **change}
    assert not _validator("stm.line").is_valid(header)
    with pytest.raises(WireError, match=r"^stm\.line header") as info:
        decode_line([b"stm.line", json.dumps(header).encode(), np.zeros(5, "<f4").tobytes()])
    message = str(info.value)
    assert (f"'{field}'" if field != "unknown" else "unknown field 'chanel'") in message


def test_integral_floats_count_as_integers_in_both() -> None:
    header = {**_header(encode_line(_line())), "rows": 4.0, "v": 1.0}
    assert _validator("stm.line").is_valid(header)
    got = decode_line([b"stm.line", json.dumps(header).encode(), np.zeros(5, "<f4").tobytes()])
    assert got.scan.rows == 4 and isinstance(got.scan.rows, int)


def test_null_optional_fields_mean_unknown_in_both() -> None:
    header = {**_header(encode_line(_line())), "bias_v": None, "channel": None, "t": None}
    assert _validator("stm.line").is_valid(header)
    got = decode_line([b"stm.line", json.dumps(header).encode(), np.zeros(5, "<f4").tobytes()])
    assert got.scan.bias_v is None and got.scan.channel == "Z"


def test_result_schema_is_valid() -> None:
    schema = load_schema("result")
    jsonschema.validators.validator_for(schema).check_schema(schema)
    with pytest.raises(ValueError, match="unknown topic"):
        load_schema("stm.lines")


# --------------------------------------------------------------------------
# Every malformed message: a WireError that says what is wrong
# --------------------------------------------------------------------------


def _replace_header(parts: list[bytes], **change: Any) -> list[bytes]:
    header = {**_header(parts), **change}
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


LINE = encode_line(_line())
FRAME_HEADER = encode_frame(FrameMessage(SCAN, np.ones((4, 5), "<f4")))[:2]
MALFORMED: list[tuple[str, list[bytes], str]] = [
    ("empty", [], r"empty message"),
    ("unknown topic", [b"stm.lines", LINE[1], LINE[2]], r"unknown topic 'stm\.lines'; expected one of stm\.line"),
    ("topic not utf-8", [b"\xff\xfe", LINE[1]], r"topic b'\\xff\\xfe' is not UTF-8"),
    ("too few parts", LINE[:2], r"stm\.line: expected 3 message parts \[topic, header, payload\], got 2"),
    ("too many parts", [*LINE, b"x"], r"expected 3 message parts .*got 4"),
    ("end with payload", [*encode_end(EndMessage("e", True)), b"x"], r"stm\.end: expected 2 message parts"),
    ("header not utf-8", [LINE[0], b'{"v": 1, "scan_id": "\xff"}', LINE[2]], r"stm\.line header: not UTF-8"),
    ("bad json", [LINE[0], b'{"v": 1,', LINE[2]], r"stm\.line header: not valid JSON"),
    ("json array", [LINE[0], b"[1, 2]", LINE[2]], r"expected a JSON object \{\.\.\.\}, got list"),
    ("NaN in header", [LINE[0], LINE[1].replace(b'"width_m":2e-08', b'"width_m":NaN'), LINE[2]],
     r"not valid JSON: NaN is not a JSON number"),
    ("Infinity in header", [LINE[0], LINE[1].replace(b'"width_m":2e-08', b'"width_m":Infinity'), LINE[2]],
     r"not valid JSON: Infinity is not a JSON number"),
    ("missing field", [LINE[0], json.dumps({k: v for k, v in _header(LINE).items() if k != "cols"}).encode(), LINE[2]],
     r"stm\.line header \(scan 'scan-7'\): missing required field 'cols'"),
    ("wrong version", _replace_header(LINE, v=2), r"field 'v' = 2: expected 1: this side speaks protocol version 1"),
    ("row out of range", _replace_header(LINE, row=4), r"field 'row' = 4: expected an integer 0\.\.3"),
    ("nanometres sent as metres", _replace_header(LINE, width_m=20.0),
     r"field 'width_m' = 20\.0: expected a length in metres, 0 < width_m < 0\.01 \(nanometres sent as metres\?\)"),
    ("unknown dtype", _replace_header(LINE, dtype="float32"),
     r"field 'dtype' = 'float32': expected a numpy dtype\.str with explicit byte order, one of <f4, >f4"),
    ("too many pixels", _replace_header(LINE, rows=32768, cols=32768), r"expected at most 67108864 pixels"),
    ("payload too short", [LINE[0], LINE[1], LINE[2][:-4]],
     r"stm\.line payload \(scan 'scan-7', row 1\): 16 bytes, expected 20 \(cols = 5 values of '<f4'\)"),
    ("payload too long", [LINE[0], LINE[1], LINE[2] + b"\0\0\0\0"], r"24 bytes, expected 20"),
    ("payload dtype mismatch", _replace_header(LINE, dtype="<f8"),
     r"20 bytes, expected 40 \(cols = 5 values of '<f8'\)"),
    ("inf in payload", [LINE[0], LINE[1], np.array([0, 1, np.inf, 3, 4], "<f4").tobytes()],
     r"payload \(scan 'scan-7', row 1\): value inf at column 2 \(1 such values\); expected finite numbers"),
    ("-inf in payload", [LINE[0], LINE[1], np.array([0, 1, 2, 3, -np.inf], "<f4").tobytes()],
     r"value -inf at column 4"),
    ("float64 beyond float32", [LINE[0], LINE[1].replace(b'"<f4"', b'"<f8"'),
                                np.array([0, 1e300, 2, 3, 4], "<f8").tobytes()],
     r"value 1e\+300 at column 1 does not fit float32"),
    ("all-NaN line", [LINE[0], LINE[1], np.full(5, np.nan, "<f4").tobytes()],
     r"every value is NaN, the line carries no data; send no line at all for a missing one"),
    ("all-NaN frame", [*FRAME_HEADER, np.full(20, np.nan, "<f4").tobytes()],
     r"stm\.frame payload \(scan 'scan-7'\): every value is NaN, the frame carries no data"),
    ("frame size mismatch", [*FRAME_HEADER, b"\x00" * 76],
     r"stm\.frame payload \(scan 'scan-7'\): 76 bytes, expected 80 \(rows x cols = 4 x 5 values of '<f4'\)"),
    ("frame inf position", [*FRAME_HEADER, np.where(np.arange(20) == 13, np.inf, 1.0).astype("<f4").tobytes()],
     r"value inf at row 2, column 3"),
    ("end complete not bool", _replace_header(encode_end(EndMessage("e", True)), complete="yes"),
     r"stm\.end header \(scan 'e'\): field 'complete' = 'yes': expected true or false"),
    ("unknown field", _replace_header(LINE, chanel="Z"), r"unknown field 'chanel'; a stm\.line header has only"),
    ("seg map size", [*encode_seg(_seg())[:2], b"\x00" * 14], r"seg\.partial payload .*14 bytes, expected 15"),
    ("seg map without header fields", [*encode_seg(_seg(with_map=False)), b"\x00" * 15],
     r"a class-map payload and the header fields 'dtype'/'map_rows' come together"),
    ("seg unknown class", _replace_header(encode_seg(_seg(with_map=False)), detections=[
        {"id": 0, "class": "cat", "x_nm": 1, "y_nm": 1, "area_nm2": 1, "score": 0.5}]),
     r"field 'detections\[0\]\.class' = 'cat': expected one of the message's classes AsH3, DB"),
    ("seg detection outside", _replace_header(encode_seg(_seg(with_map=False)), detections=[
        {"id": 0, "class": "DB", "x_nm": 25.0, "y_nm": 1, "area_nm2": 1, "score": 0.5}]),
     r"field 'detections\[0\]\.x_nm' = 25\.0: expected a finite number in"),
    ("status missing counter", _replace_header(encode_status(_status()), counters={"frames": 1}),
     r"field 'counters' = .*: expected an object of names to non-negative integers including frames, lines"),
]


@pytest.mark.parametrize(("parts", "pattern"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_every_malformed_message_raises_a_wire_error_that_says_why(parts: list[bytes], pattern: str) -> None:
    with pytest.raises(WireError, match=pattern) as info:
        decode(parts)
    assert isinstance(info.value, StmLiveError) and isinstance(info.value, ValueError)


def test_encoders_refuse_what_the_decoder_would_reject() -> None:
    with pytest.raises(WireError, match=r"dtype '<i8' cannot be sent; convert to one of"):
        encode_line(LineMessage(SCAN, 0, np.arange(5)))
    with pytest.raises(WireError, match=r"data shape \(4,\), expected \(5,\)"):
        encode_line(LineMessage(SCAN, 0, np.zeros(4, np.float32)))
    with pytest.raises(WireError, match=r"field 'row' = 9"):
        encode_line(LineMessage(SCAN, 9, np.zeros(5, np.float32)))
    with pytest.raises(WireError, match=r"value inf at column 0"):
        encode_line(LineMessage(SCAN, 0, np.array([np.inf, 0, 0, 0, 0])))
    with pytest.raises(WireError, match=r"field 'width_m' = 5\.0"):
        encode_frame(FrameMessage(ScanInfo("s", 1, 1, 5.0, 5.0), np.zeros((1, 1), np.float32)))
    with pytest.raises(WireError, match=r"class map .*expected uint8"):
        encode_seg(SegMessage(**{**_seg().__dict__, "class_map": np.zeros((3, 5), np.int32)}))
    with pytest.raises(WireError, match=r"field 'counters'"):
        encode_status(StatusMessage("running", 1.0, {"frames": 1}, {}, "0.1.0", 1.0))
    with pytest.raises(TypeError, match="not a protocol message"):
        encode("hello")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_bytes_raise_only_wire_errors(parts: list[bytes]) -> None:
    with contextlib.suppress(WireError):
        decode(parts)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(TOPICS), base=st.sampled_from(["line", "seg"]),
       changes=st.dictionaries(st.sampled_from(["v", "scan_id", "row", "rows", "cols", "width_m", "dtype",
                                                "offset_m", "classes", "detections", "map_rows", "counters",
                                                "model", "complete", "state"]), _JSON, max_size=3))
def test_damaged_headers_raise_only_wire_errors(topic: str, base: str, changes: dict[str, Any]) -> None:
    parts = list(encode_line(_line()) if base == "line" else encode_seg(_seg()))
    header = {**_header(parts), **changes}
    with contextlib.suppress(WireError):
        decode([topic.encode(), json.dumps(header).encode(), *parts[2:]])


def test_topic_lists() -> None:
    assert set(INGEST_TOPICS) | set(PUBLISH_TOPICS) == set(TOPICS)
    assert INGEST_TOPICS == ("stm.line", "stm.frame", "stm.end")


# --------------------------------------------------------------------------
# Over real sockets: a bridge's PUB connected to the daemon's bound SUB
# --------------------------------------------------------------------------


def test_a_bridge_pub_reaches_a_bound_sub_over_tcp(make_socket: SocketFactory) -> None:
    sub = make_socket(zmq.SUB, subscribe=b"stm.")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    pub = make_socket(zmq.PUB)
    pub.connect(f"tcp://127.0.0.1:{port}")
    # A PUB drops messages until the subscription has reached it ("slow joiner"): probe until one arrives.
    probe = encode_end(EndMessage("probe", complete=False))
    for _ in range(100):
        pub.send_multipart(probe)
        if sub.poll(50):
            break
    else:
        pytest.fail("the subscription never reached the bridge's PUB socket")
    while sub.poll(0):
        assert decode_ingest(sub.recv_multipart()) == EndMessage("probe", False)
    for row in range(SCAN.rows):
        pub.send_multipart(encode_line(_line(row=row, dtype=">f4")))
    pub.send_multipart(encode_end(EndMessage(SCAN.scan_id, complete=True)))
    rows = []
    for _ in range(SCAN.rows):
        msg = decode_ingest(sub.recv_multipart(copy=False))  # zmq.Frame parts decode too
        assert isinstance(msg, LineMessage)
        rows.append(msg.data)
    assert decode_ingest(sub.recv_multipart()) == EndMessage(SCAN.scan_id, True)
    np.testing.assert_array_equal(np.stack(rows), np.arange(5) + 10 * np.arange(4)[:, None])
