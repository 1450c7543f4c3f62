"""The Nanonis TCP programming interface, as bytes: the one place that encodes and decodes it.

Written from the Nanonis "TCP Protocol" manual (``TCPProtocol_SPM``; the
commands and layouts used are listed in ``docs/bridge.md``). Everything here
is pure: bytes in, Python values and NumPy arrays out, and back. The client
(:mod:`.client`) and the virtual controller (:mod:`stm_live.sim.controller`)
both speak through it, so they cannot disagree.

The framing, all big-endian:

* request: a 40-byte header (command name, ASCII, zero-padded to 32 bytes;
  int32 body size; uint16 "send response" flag; 2 spare bytes), then the
  body: the command's arguments in order;
* response: a 40-byte header (command name; int32 body size; 4 spare bytes),
  then the body: the command's return values in order, ending with the error
  block: uint32 error status (0 = no error), int32 size of the error
  description, the description (text).

Strings are preceded by an explicit int32 size field; 1-D arrays by a count
field; 2-D arrays by a rows and a columns field. An array is decoded with one
:func:`numpy.frombuffer` call and one conversion to native byte order, never
value by value.

Response layouts changed between controller versions; the layout is a
setting (``bridge.layout``, one of :data:`LAYOUTS`): ``"current"`` follows the
newer manuals (``Scan.WaitEndOfLine`` exists, ``Scan.SpeedGet``/``SpeedSet``
carry the backward/forward speed ratio), ``"legacy"`` the older ones.
A response that does not fill its layout exactly is an error that says so,
rather than values read from the wrong bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from ...errors import ControllerError

__all__ = [
    "COMMANDS",
    "HEADER_SIZE",
    "LAYOUTS",
    "Command",
    "Field",
    "Layout",
    "ProtocolError",
    "ReplyError",
    "command",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "parse_request_header",
    "parse_response_header",
]

Layout = Literal["current", "legacy"]
#: The response layouts known: newer manuals first.
LAYOUTS: Final[tuple[Layout, ...]] = ("current", "legacy")

HEADER_SIZE: Final = 40
_NAME_SIZE: Final = 32
_REQUEST_HEADER = struct.Struct(">32siHH")
_RESPONSE_HEADER = struct.Struct(">32si4x")
#: Largest body accepted (a 8192 x 8192 float32 grab is 256 MiB).
MAX_BODY: Final = 300 * 1024 * 1024

_SCALARS: Final[dict[str, struct.Struct]] = {
    "u16": struct.Struct(">H"),
    "i16": struct.Struct(">h"),
    "u32": struct.Struct(">I"),
    "i32": struct.Struct(">i"),
    "f32": struct.Struct(">f"),
    "f64": struct.Struct(">d"),
}
_ARRAYS: Final[dict[str, str]] = {"i32[]": ">i4", "f32[]": ">f4", "f32[,]": ">f4"}
_ERROR = struct.Struct(">Ii")


class ProtocolError(ControllerError, ValueError):
    """Bytes that do not follow the protocol (or the configured layout)."""


class ReplyError(ControllerError):
    """The controller answered a command with an error status.

    Attributes
    ----------
    command : str
        The command refused.
    status : int
        The error status (non-zero).
    description : str
        The controller's own words.
    """

    def __init__(self, command: str, status: int, description: str, where: str = "") -> None:
        self.command = command
        self.status = status
        self.description = description
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{command} failed on the controller (error status {status}): "
                         f"{description or 'no description'}")


@dataclass(frozen=True)
class Field:
    """One argument or return value: a name, a kind and, for strings and arrays, the size fields.

    ``kind`` is a scalar (``u16 i16 u32 i32 f32 f64``), ``"str"`` (length in
    the field ``size``), ``"i32[]"`` / ``"f32[]"`` (count in ``size``) or
    ``"f32[,]"`` (rows and columns in ``size`` and ``size2``).
    """

    name: str
    kind: str
    size: str | None = None
    size2: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _SCALARS and self.kind not in _ARRAYS and self.kind != "str":
            raise ValueError(f"unknown field kind {self.kind!r}")
        if (self.kind == "str" or self.kind in _ARRAYS) and self.size is None:
            raise ValueError(f"field {self.name!r} of kind {self.kind!r} needs its size field")


@dataclass(frozen=True)
class Command:
    """A command of the TCP interface: its request and response fields per layout."""

    name: str
    request: Mapping[str, tuple[Field, ...]]
    response: Mapping[str, tuple[Field, ...]]
    blocking: bool = field(default=False)

    def fields(self, layout: str, *, response: bool) -> tuple[Field, ...]:
        """The fields of the request (or response) in ``layout``.

        Raises
        ------
        ProtocolError
            The command does not exist in that layout.
        """
        table = self.response if response else self.request
        if layout not in table:
            have = ", ".join(sorted(table))
            raise ProtocolError(
                f"{self.name} does not exist in the {layout!r} protocol layout (only in: {have}); "
                "check bridge.layout against your controller's TCP protocol manual"
            )
        return table[layout]


def _same(fields: tuple[Field, ...]) -> dict[str, tuple[Field, ...]]:
    return {layout: fields for layout in LAYOUTS}


def _f(name: str, kind: str, size: str | None = None, size2: str | None = None) -> Field:
    return Field(name, kind, size, size2)


_SPEED = (_f("forward_speed_m_s", "f32"), _f("backward_speed_m_s", "f32"), _f("forward_time_s", "f32"),
          _f("backward_time_s", "f32"), _f("keep_constant", "u16"))
_FRAME = (_f("x_m", "f32"), _f("y_m", "f32"), _f("width_m", "f32"), _f("height_m", "f32"), _f("angle_deg", "f32"))

#: The commands stm-live uses, by name (see ``docs/bridge.md`` for what each argument means).
COMMANDS: Final[dict[str, Command]] = {
    c.name: c
    for c in (
        # action: 0 start, 1 stop, 2 pause, 3 resume; direction: 1 up, 0 down.
        Command("Scan.Action", _same((_f("action", "u16"), _f("direction", "u32"))), _same(())),
        Command("Scan.StatusGet", _same(()), _same((_f("running", "u32"),))),
        # timeout_ms: -1 waits forever. timed_out: 1 = the wait timed out.
        Command("Scan.WaitEndOfScan", _same((_f("timeout_ms", "i32"),)),
                _same((_f("timed_out", "u32"), _f("path_size", "i32"), _f("path", "str", "path_size"))),
                blocking=True),
        # Newer manuals only. movement: 0 forward, 1 backward, 2 moved to the frame centre,
        # 3 moved to the start point before a scan.
        Command("Scan.WaitEndOfLine", {"current": (_f("timeout_ms", "i32"),)},
                {"current": (_f("timed_out", "u32"), _f("line", "i32"), _f("movement", "u16"),
                             _f("pass_number", "i32"))},
                blocking=True),
        Command("Scan.FrameSet", _same(_FRAME), _same(())),
        Command("Scan.FrameGet", _same(()), _same(_FRAME)),
        Command("Scan.BufferGet", _same(()),
                _same((_f("channel_count", "i32"), _f("channel_indexes", "i32[]", "channel_count"),
                       _f("pixels", "i32"), _f("lines", "i32")))),
        # data_direction: 1 forward, 0 backward. scan_direction: 1 up, 0 down. Rows in
        # acquisition order (as in an .sxm file), NaN where not scanned yet.
        Command("Scan.FrameDataGrab", _same((_f("channel_index", "u32"), _f("data_direction", "u32"))),
                _same((_f("name_size", "i32"), _f("channel_name", "str", "name_size"), _f("rows", "i32"),
                       _f("cols", "i32"), _f("data", "f32[,]", "rows", "cols"), _f("scan_direction", "u32")))),
        Command("Scan.SpeedGet", _same(()),
                {"current": (*_SPEED, _f("speed_ratio", "f32")), "legacy": _SPEED}),
        Command("Scan.SpeedSet", {"current": (*_SPEED, _f("speed_ratio", "f32")), "legacy": _SPEED},
                _same(())),
        Command("Bias.Get", _same(()), _same((_f("bias_v", "f32"),))),
        Command("Bias.Set", _same((_f("bias_v", "f32"),)), _same(())),
        # z_hold: 0 no change, 1 hold, 2 do not hold; absolute: 0 no change, 1 relative, 2 absolute.
        Command("Bias.Pulse", _same((_f("wait", "u32"), _f("width_s", "f32"), _f("bias_v", "f32"),
                                     _f("z_hold", "u16"), _f("absolute", "u16"))), _same(()), blocking=True),
        Command("ZCtrl.SetpntGet", _same(()), _same((_f("setpoint", "f32"),))),
        Command("TipShaper.Start", _same((_f("wait", "u32"), _f("timeout_ms", "i32"))), _same(()), blocking=True),
    )
}


def command(name: str) -> Command:
    """The :class:`Command` called ``name``.

    Raises
    ------
    ProtocolError
        Not a command stm-live knows.
    """
    try:
        return COMMANDS[name]
    except KeyError:
        raise ProtocolError(f"unknown command {name!r}; stm-live speaks {', '.join(sorted(COMMANDS))}") from None


# --------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------


def _encode_fields(fields: tuple[Field, ...], values: Mapping[str, Any], where: str) -> bytes:
    """Body bytes of ``values``; size fields of strings and arrays are filled in when absent."""
    values = dict(values)
    for f in fields:  # sizes first, so that callers need not give them
        if f.kind == "str" and f.name in values:
            values.setdefault(f.size or "", len(str(values[f.name]).encode("utf-8")))
        elif f.kind in ("i32[]", "f32[]") and f.name in values:
            values.setdefault(f.size or "", int(np.asarray(values[f.name]).size))
        elif f.kind == "f32[,]" and f.name in values:
            shape = np.shape(values[f.name])
            if len(shape) != 2:
                raise ProtocolError(f"{where}: field {f.name!r} must be 2-D, got shape {shape}")
            values.setdefault(f.size or "", shape[0])
            values.setdefault(f.size2 or "", shape[1])
    known = {f.name for f in fields}
    extra = sorted(set(values) - known)
    if extra:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(extra)}; expected {', '.join(sorted(known))}")
    parts: list[bytes] = []
    for f in fields:
        if f.name not in values:
            raise ProtocolError(f"{where}: missing field {f.name!r}")
        value = values[f.name]
        if f.kind in _SCALARS:
            try:
                parts.append(_SCALARS[f.kind].pack(value))
            except struct.error as exc:
                raise ProtocolError(f"{where}: field {f.name!r} = {value!r} does not fit {f.kind}: {exc}") from None
        elif f.kind == "str":
            raw = str(value).encode("utf-8")
            if len(raw) != values[f.size or ""]:
                raise ProtocolError(f"{where}: field {f.name!r} has {len(raw)} bytes but {f.size!r} says "
                                    f"{values[f.size or '']}")
            parts.append(raw)
        else:
            arr = np.ascontiguousarray(value, dtype=_ARRAYS[f.kind])
            n = int(values[f.size or ""]) * (int(values[f.size2 or ""]) if f.kind == "f32[,]" else 1)
            if arr.size != n:
                raise ProtocolError(f"{where}: field {f.name!r} has {arr.size} values, its size fields say {n}")
            parts.append(arr.tobytes())
    return b"".join(parts)


def _decode_fields(fields: tuple[Field, ...], body: memoryview, where: str) -> tuple[dict[str, Any], int]:
    """Values of ``fields`` from the start of ``body`` and the offset after them."""
    out: dict[str, Any] = {}
    pos = 0
    size = len(body)
    for f in fields:
        if f.kind in _SCALARS:
            s = _SCALARS[f.kind]
            if pos + s.size > size:
                raise ProtocolError(f"{where}: body ends ({size} bytes) inside field {f.name!r} at byte {pos}")
            out[f.name] = s.unpack_from(body, pos)[0]
            pos += s.size
            continue
        count = int(out[f.size or ""])
        if f.kind == "f32[,]":
            cols = int(out[f.size2 or ""])
            if count < 0 or cols < 0:
                raise ProtocolError(f"{where}: field {f.name!r} has a negative shape {count} x {cols}")
            nbytes = count * cols * 4
        elif count < 0:
            raise ProtocolError(f"{where}: field {f.size!r} = {count} is negative")
        else:
            nbytes = count * (1 if f.kind == "str" else 4)
        if pos + nbytes > size:
            raise ProtocolError(f"{where}: field {f.name!r} needs {nbytes} bytes at byte {pos}, "
                                f"the body has {size - pos} left")
        if f.kind == "str":
            out[f.name] = bytes(body[pos:pos + nbytes]).decode("utf-8", errors="replace")
        else:
            # One frombuffer and one conversion to native float32/int32 per array.
            raw = np.frombuffer(body, dtype=_ARRAYS[f.kind], count=nbytes // 4, offset=pos)
            arr = raw.astype(raw.dtype.newbyteorder("="))
            out[f.name] = arr.reshape(count, cols) if f.kind == "f32[,]" else arr
        pos += nbytes
    return out, pos


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


def _name_bytes(name: str) -> bytes:
    raw = name.encode("ascii")
    if len(raw) > _NAME_SIZE:
        raise ProtocolError(f"command name {name!r} is longer than {_NAME_SIZE} bytes")
    return raw


def encode_request(name: str, args: Mapping[str, Any] | None = None, *, layout: str = "current",
                   send_response: bool = True) -> bytes:
    """A whole request (header and body) for command ``name``.

    Parameters
    ----------
    name : str
        A command of :data:`COMMANDS`.
    args : Mapping, optional
        Argument values by field name (size fields of strings/arrays may be omitted).
    layout : {"current", "legacy"}
    send_response : bool
        The header flag asking the controller to answer (stm-live always asks:
        the answer carries the error status).

    Examples
    --------
    >>> msg = encode_request("Bias.Set", {"bias_v": 1.5})
    >>> len(msg), msg[:8], msg[32:40].hex()
    (44, b'Bias.Set', '0000000400010000')
    """
    cmd = command(name)
    body = _encode_fields(cmd.fields(layout, response=False), args or {}, f"{name} request")
    return _REQUEST_HEADER.pack(_name_bytes(name), len(body), 1 if send_response else 0, 0) + body


def parse_request_header(header: bytes | bytearray | memoryview) -> tuple[str, int, bool]:
    """``(command name, body size, send_response)`` of a 40-byte request header.

    Raises
    ------
    ProtocolError
        Wrong length, a name that is not ASCII, a negative or huge body size.
    """
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"request header has {len(header)} bytes, expected {HEADER_SIZE}")
    raw, size, flag, _ = _REQUEST_HEADER.unpack(header)
    name = _decode_name(raw, "request")
    if not 0 <= size <= MAX_BODY:
        raise ProtocolError(f"request {name!r}: body size {size} outside 0..{MAX_BODY}")
    return name, size, bool(flag)


def decode_request(name: str, body: bytes | bytearray | memoryview, *, layout: str = "current") -> dict[str, Any]:
    """The arguments of a request body (what a controller does on receiving it).

    Raises
    ------
    ProtocolError
        Unknown command, a body shorter or longer than its fields.
    """
    cmd = command(name)
    view = memoryview(body)
    values, end = _decode_fields(cmd.fields(layout, response=False), view, f"{name} request")
    if end != len(view):
        raise ProtocolError(f"{name} request: {len(view) - end} bytes left over after its arguments "
                            f"({len(view)}-byte body, {end} expected)")
    return values


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------


def _decode_name(raw: bytes, what: str) -> str:
    try:
        return raw.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} header: command name {raw!r} is not ASCII") from None


def encode_response(name: str, values: Mapping[str, Any] | None = None, *, layout: str = "current",
                    error: tuple[int, str] | None = None) -> bytes:
    """A whole response (header and body) to ``name``: the values, then the error block.

    With ``error = (status, description)`` the return values are sent as
    zeros (arrays empty, strings empty) before the error block, as a
    controller does when a command fails.

    Examples
    --------
    >>> msg = encode_response("Bias.Get", {"bias_v": -1.5})
    >>> decode_response("Bias.Get", msg[40:])
    {'bias_v': -1.5}
    """
    cmd = command(name)
    fields = cmd.fields(layout, response=True)
    if error is not None:
        values = {f.name: (np.zeros((0, 0), np.float32) if f.kind == "f32[,]" else
                           np.zeros(0) if f.kind in ("i32[]", "f32[]") else "" if f.kind == "str" else 0)
                  for f in fields if f.name not in {g.size for g in fields} | {g.size2 for g in fields}}
    body = _encode_fields(fields, values or {}, f"{name} response")
    status, text = error if error is not None else (0, "")
    raw = text.encode("utf-8")
    body += _ERROR.pack(status, len(raw)) + raw
    return _RESPONSE_HEADER.pack(_name_bytes(name), len(body)) + body


def parse_response_header(header: bytes | bytearray | memoryview, expected: str | None = None) -> tuple[str, int]:
    """``(command name, body size)`` of a 40-byte response header.

    Raises
    ------
    ProtocolError
        Wrong length, a name other than ``expected`` (the answers on one
        connection come in the order of the requests), an impossible size.
    """
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"response header has {len(header)} bytes, expected {HEADER_SIZE}")
    raw, size = _RESPONSE_HEADER.unpack(header)
    name = _decode_name(raw, "response")
    if expected is not None and name != expected:
        raise ProtocolError(f"expected the response to {expected}, got one to {name!r}: the connection is out of step")
    if not 0 <= size <= MAX_BODY:
        raise ProtocolError(f"response to {name}: body size {size} outside 0..{MAX_BODY}")
    return name, size


def _error_block(body: memoryview, pos: int, name: str) -> tuple[int, str]:
    if len(body) - pos < _ERROR.size:
        raise ProtocolError(f"response to {name}: {len(body) - pos} bytes where the {_ERROR.size}-byte error block "
                            "should start; is bridge.layout right for this controller?")
    status, n = _ERROR.unpack_from(body, pos)
    pos += _ERROR.size
    if n < 0 or pos + n != len(body):
        raise ProtocolError(
            f"response to {name}: error description of {n} bytes does not end the {len(body)}-byte body "
            f"({len(body) - pos} bytes left); is bridge.layout right for this controller?"
        )
    return int(status), bytes(body[pos:pos + n]).decode("utf-8", errors="replace")


def decode_response(name: str, body: bytes | bytearray | memoryview, *, layout: str = "current",
                    where: str = "") -> dict[str, Any]:
    """The return values of a response body; raise on an error status.

    Parameters
    ----------
    name : str
        The command answered.
    body : bytes-like
        The body, exactly as many bytes as the header said.
    layout : {"current", "legacy"}
    where : str
        Context for messages (``"controller 127.0.0.1:6501"``).

    Returns
    -------
    dict
        Field name -> value; arrays are native-endian NumPy arrays (2-D for frame data).

    Raises
    ------
    ReplyError
        The controller reported an error (status != 0).
    ProtocolError
        The body does not fit the layout exactly.
    """
    cmd = command(name)
    view = memoryview(body)
    prefix = f"{where}: " if where else ""
    try:
        values, pos = _decode_fields(cmd.fields(layout, response=True), view, f"{prefix}response to {name}")
        status, text = _error_block(view, pos, f"{prefix}{name}")
    except ProtocolError:
        # A refused command may come back without its return values: just the error block.
        try:
            status, text = _error_block(view, 0, name)
        except ProtocolError:
            status = 0
        if status == 0:
            raise
        raise ReplyError(name, status, text, where) from None
    if status != 0:
        raise ReplyError(name, status, text, where)
    return values
