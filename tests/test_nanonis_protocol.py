"""The Nanonis TCP protocol codec: framing, every command both ways, per-version layouts, bad bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from stm_live.bridge.nanonis.protocol import (
    COMMANDS,
    HEADER_SIZE,
    LAYOUTS,
    ProtocolError,
    ReplyError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    parse_request_header,
    parse_response_header,
)


def _example(kind: str, rng: np.random.Generator) -> object:
    return {"u16": 3, "i16": -2, "u32": 7, "i32": -1000, "f32": 1.5, "f64": -2.25}[kind]


def _values(fields, rng):
    sizes = {f.size for f in fields} | {f.size2 for f in fields}
    out = {}
    for f in fields:
        if f.name in sizes:
            continue
        if f.kind == "str":
            out[f.name] = "C:\\data\\scan_0001.sxm"
        elif f.kind == "i32[]":
            out[f.name] = np.array([0, 14, 30], dtype=np.int32)
        elif f.kind == "f32[]":
            out[f.name] = rng.standard_normal(5).astype(np.float32)
        elif f.kind == "f32[,]":
            out[f.name] = rng.standard_normal((3, 4)).astype(np.float32)
        else:
            out[f.name] = _example(f.kind, rng)
    return out


def _same(a, b):
    assert set(a) <= set(b)
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(b[k], v)
            assert b[k].dtype.isnative
        elif isinstance(v, float):
            assert b[k] == pytest.approx(v)
        else:
            assert b[k] == v


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_round_trips_both_ways(name, layout):
    cmd = COMMANDS[name]
    if layout not in cmd.request:
        with pytest.raises(ProtocolError, match="does not exist in the 'legacy' protocol layout"):
            encode_request(name, {}, layout=layout)
        return
    rng = np.random.default_rng(0)
    args = _values(cmd.request[layout], rng)
    msg = encode_request(name, args, layout=layout)
    got_name, size, flag = parse_request_header(msg[:HEADER_SIZE])
    assert (got_name, size, flag) == (name, len(msg) - HEADER_SIZE, True)
    _same(args, decode_request(name, msg[HEADER_SIZE:], layout=layout))
    values = _values(cmd.response[layout], rng)
    reply = encode_response(name, values, layout=layout)
    assert parse_response_header(reply[:HEADER_SIZE], expected=name) == (name, len(reply) - HEADER_SIZE)
    _same(values, decode_response(name, reply[HEADER_SIZE:], layout=layout))


def test_request_header_is_big_endian_and_zero_padded():
    msg = encode_request("Scan.Action", {"action": 1, "direction": 0})
    assert msg[:32] == b"Scan.Action".ljust(32, b"\x00")
    assert struct.unpack(">iHH", msg[32:40]) == (6, 1, 0)
    assert msg[40:] == struct.pack(">HI", 1, 0)


def test_frame_grab_decodes_one_native_array_per_frame():
    data = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    data[300:] = np.nan
    reply = encode_response("Scan.FrameDataGrab", {"channel_name": "Z (m)", "data": data, "scan_direction": 1})
    r = decode_response("Scan.FrameDataGrab", reply[HEADER_SIZE:])
    assert r["channel_name"] == "Z (m)" and r["scan_direction"] == 1
    assert r["data"].shape == (512, 512) and r["data"].dtype == np.float32 and r["data"].dtype.isnative
    np.testing.assert_array_equal(r["data"], data)
    assert r["data"].flags.writeable  # a private copy, not a view of the receive buffer


def test_error_reply_raises_with_the_controllers_words():
    reply = encode_response("Scan.FrameSet", layout="current", error=(5, "frame outside the scan range"))
    with pytest.raises(ReplyError, match=r"Scan\.FrameSet failed on the controller \(error status 5\): frame "
                                         r"outside the scan range") as info:
        decode_response("Scan.FrameSet", reply[HEADER_SIZE:])
    assert info.value.status == 5


def test_error_reply_with_zeroed_values_still_raises():
    reply = encode_response("Scan.FrameGet", error=(1, "busy"))
    with pytest.raises(ReplyError, match="busy"):
        decode_response("Scan.FrameGet", reply[HEADER_SIZE:])


def test_error_block_alone_is_understood():
    body = struct.pack(">Ii", 2, 4) + b"nope"
    with pytest.raises(ReplyError, match="nope"):
        decode_response("Scan.FrameGet", body)


def test_layout_mismatch_is_an_error_that_names_the_setting():
    # A newer controller answers Scan.SpeedGet with the speed ratio; read with the legacy layout the
    # values end 4 bytes early and the error block does not fit.
    reply = encode_response("Scan.SpeedGet", {"forward_speed_m_s": 1e-7, "backward_speed_m_s": 1e-7,
                                              "forward_time_s": 0.1, "backward_time_s": 0.1,
                                              "keep_constant": 1, "speed_ratio": 1.0}, layout="current")
    with pytest.raises(ProtocolError, match=r"bridge\.layout"):
        decode_response("Scan.SpeedGet", reply[HEADER_SIZE:], layout="legacy")


@pytest.mark.parametrize("cut", [1, 7, 12])
def test_short_body_is_a_protocol_error(cut):
    reply = encode_response("Scan.FrameGet", {"x_m": 0.0, "y_m": 0.0, "width_m": 1e-8, "height_m": 1e-8,
                                              "angle_deg": 0.0})
    with pytest.raises(ProtocolError):
        decode_response("Scan.FrameGet", reply[HEADER_SIZE:-cut])


def test_extra_bytes_are_a_protocol_error():
    reply = encode_response("Bias.Get", {"bias_v": 1.0})
    with pytest.raises(ProtocolError, match="does not end"):
        decode_response("Bias.Get", reply[HEADER_SIZE:] + b"\x00")


def test_array_size_field_beyond_the_body_is_refused():
    body = struct.pack(">ii", 4, 1_000_000) + b"Z (m)"[:4]
    with pytest.raises(ProtocolError):
        decode_response("Scan.FrameDataGrab", body)


def test_headers_are_checked():
    with pytest.raises(ProtocolError, match="out of step"):
        parse_response_header(encode_response("Bias.Get", {"bias_v": 1.0})[:HEADER_SIZE], expected="Bias.Set")
    with pytest.raises(ProtocolError, match="40"):
        parse_request_header(b"short")
    bad = b"Bias.Get".ljust(32, b"\x00") + struct.pack(">iHH", -5, 1, 0)
    with pytest.raises(ProtocolError, match="body size -5"):
        parse_request_header(bad)


def test_unknown_command_and_fields_are_refused():
    with pytest.raises(ProtocolError, match=r"unknown command 'Scan\.Fly'"):
        encode_request("Scan.Fly")
    with pytest.raises(ProtocolError, match="unknown field"):
        encode_request("Bias.Set", {"bias_v": 1.0, "volts": 2.0})
    with pytest.raises(ProtocolError, match="missing field 'bias_v'"):
        encode_request("Bias.Set", {})
    with pytest.raises(ProtocolError, match="does not fit u16"):
        encode_request("Scan.Action", {"action": -1, "direction": 0})
