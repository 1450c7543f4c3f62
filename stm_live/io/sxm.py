"""Nanonis ``.sxm`` scan files: header parsing, reading into Frames, writing.

Layout of an ``.sxm`` file (Nanonis "SXM file format" help page, and the two
real files under ``../shared/data/real-sxm``)::

    :NANONIS_VERSION:\\n2\\n:SCANIT_TYPE:\\n  FLOAT  MSBFIRST\\n ... \\n
    :DATA_INFO:\\n\\tChannel\\tName\\tUnit\\tDirection\\tCalibration\\tOffset\\n ...
    :SCANIT_END:\\n\\n\\n\\x1a\\x04<binary data>

The binary block holds, for every channel of ``DATA_INFO`` in order, the
forward image then (for ``Direction == both``) the backward image, each
``lines x pixels`` values in acquisition order: the first stored row is the
first line scanned (the *bottom* of the image when ``SCAN_DIR`` is ``up``) and
backward rows run right to left. :func:`read_sxm` turns all of that into
display-oriented native float32 :class:`~stm_live.frame.Frame` objects, and
:func:`sxm_bytes` / :func:`write_sxm` do the exact reverse.

We parse the format ourselves rather than through ``nanonispy2``: it is about
as short, reads partially written and forward-only files, never leaks a
big-endian array, and is faster (``benchmarks/bench_sxm_read.py``).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ScanReadError
from ..frame import Direction, Frame
from ..limits import size_problem

__all__ = [
    "DATA_MARKER",
    "HEADER_MAX",
    "SxmChannel",
    "SxmHeader",
    "parse_sxm_header",
    "read_sxm",
    "read_sxm_head",
    "read_sxm_header",
    "sxm_bytes",
    "write_sxm",
]

#: Bytes that separate the text header from the binary data.
DATA_MARKER = b"\x1a\x04"
_END_TAG = b":SCANIT_END:"
_HEADER_PROBE = 1 << 16
_MARKER_WINDOW = 64
#: Most bytes read looking for the end of a header: real headers are ~10 kB, anything past 16 MB is not one.
HEADER_MAX = 16 << 20
_MAX_SIDE = 1 << 15  # largest pixel count per side a Nanonis controller offers is 8192
_MAX_DATA_BYTES = 1 << 33
_FORMATS = {
    ("FLOAT", "MSBFIRST"): ">f4",
    ("FLOAT", "LSBFIRST"): "<f4",
}
_DIRECTIONS = {"both": ("forward", "backward"), "forward": ("forward",), "backward": ("backward",)}


@dataclass(frozen=True)
class SxmChannel:
    """One row of the header's ``DATA_INFO`` table."""

    name: str
    unit: str
    directions: tuple[Direction, ...]
    calibration: float | None = None
    offset: float | None = None


@dataclass(frozen=True)
class SxmHeader:
    """The parts of an ``.sxm`` header stm-live uses, plus all raw fields.

    ``cols`` x ``rows`` are pixels per line x lines. ``data_offset`` is the
    byte position of the first data value; ``expected_size`` is the size a
    complete file has, which the folder watcher compares against the size on
    disk to decide that a controller has finished writing.
    """

    path: str
    fields: Mapping[str, str]
    cols: int
    rows: int
    width_m: float
    height_m: float
    channels: tuple[SxmChannel, ...]
    data_format: str
    data_offset: int
    scan_direction: str = "down"
    angle_deg: float | None = None
    offset_m: tuple[float, float] | None = None
    bias_v: float | None = None
    setpoint_a: float | None = None
    time: str | None = None
    acq_time_s: float | None = None

    @property
    def n_images(self) -> int:
        """Number of stored images (channel x direction pairs)."""
        return sum(len(c.directions) for c in self.channels)

    @property
    def data_bytes(self) -> int:
        """Size of the binary block of a complete file."""
        return self.n_images * self.rows * self.cols * np.dtype(self.data_format).itemsize

    @property
    def expected_size(self) -> int:
        """Total size in bytes of the complete file."""
        return self.data_offset + self.data_bytes


def _split_fields(text: str) -> dict[str, str]:
    """Split header text into ``{KEY: value text}`` (value lines joined by newlines)."""
    fields: dict[str, str] = {}
    key: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if len(stripped) > 2 and stripped.startswith(":") and stripped.endswith(":") and "\t" not in stripped:
            if key is not None:
                fields[key] = "\n".join(lines).strip("\n")
            key, lines = stripped[1:-1], []
        elif key is not None:
            lines.append(line.rstrip("\r"))
    if key is not None:
        fields[key] = "\n".join(lines).strip("\n")
    return fields


def _floats(path: str, fields: Mapping[str, str], key: str, count: int) -> tuple[float, ...]:
    if key not in fields:
        raise ScanReadError(path, f"header field :{key}: is missing")
    parts = fields[key].split()
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ScanReadError(
            path, f"header field :{key}: is malformed: {fields[key].strip()!r} (expected {count} finite numbers)"
        )
    return values


def _optional_float(fields: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(fields[key].split()[0])
    except (KeyError, IndexError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _table(text: str) -> list[dict[str, str]]:
    rows = [line.strip().split("\t") for line in text.splitlines() if line.strip()]
    if not rows:
        return []
    names = [n.strip() for n in rows[0]]
    return [dict(zip(names, (c.strip() for c in row), strict=False)) for row in rows[1:]]


def _parse_channels(path: str, fields: Mapping[str, str]) -> tuple[SxmChannel, ...]:
    if "DATA_INFO" not in fields:
        raise ScanReadError(path, "header field :DATA_INFO: is missing (no channel table)")
    channels = []
    for i, row in enumerate(_table(fields["DATA_INFO"]), start=1):
        name, direction = row.get("Name", ""), row.get("Direction", "").lower()
        if not name or direction not in _DIRECTIONS:
            raise ScanReadError(
                path,
                f"header field :DATA_INFO: row {i} is malformed: {row!r} "
                "(expected Name and Direction in both/forward/backward)",
            )
        channels.append(
            SxmChannel(
                name=name,
                unit=row.get("Unit", ""),
                directions=_DIRECTIONS[direction],  # type: ignore[arg-type]
                calibration=_optional_float(row, "Calibration"),
                offset=_optional_float(row, "Offset"),
            )
        )
    if not channels:
        raise ScanReadError(path, "header field :DATA_INFO: lists no channels")
    return tuple(channels)


def _setpoint_a(fields: Mapping[str, str]) -> float | None:
    rows = _table(fields.get("Z-CONTROLLER", ""))
    if not rows or "Setpoint" not in rows[0]:
        return None
    parts = rows[0]["Setpoint"].split()
    if len(parts) == 2 and parts[1] == "A":
        try:
            return float(parts[0])
        except ValueError:
            return None
    return None


def _record_time(fields: Mapping[str, str]) -> str | None:
    date, clock = fields.get("REC_DATE", "").strip(), fields.get("REC_TIME", "").strip()
    try:
        stamp = _dt.datetime.strptime(f"{date} {clock}", "%d.%m.%Y %H:%M:%S")
    except ValueError:
        return None
    return stamp.isoformat()


def parse_sxm_header(path: str | os.PathLike[str], head: bytes) -> SxmHeader:
    """Parse the header at the start of ``head`` (the first bytes of a file).

    Parameters
    ----------
    path : str or path-like
        Used in error messages only.
    head : bytes
        The file's first bytes; must include the ``\\x1a\\x04`` data marker.

    Raises
    ------
    ScanReadError
        Not an ``.sxm`` header, header incomplete, or a required field
        (``SCAN_PIXELS``, ``SCAN_RANGE``, ``SCANIT_TYPE``, ``DATA_INFO``)
        missing, malformed or absurd.
    """
    spath = str(path)
    if not head.lstrip()[:1] == b":":
        raise ScanReadError(spath, "not a Nanonis .sxm file (no ':KEY:' header at the start)")
    end = head.find(_END_TAG)
    if end < 0:
        if len(head) >= HEADER_MAX:
            raise ScanReadError(
                spath, f"header too large: no :SCANIT_END: tag within the first {HEADER_MAX} bytes "
                "(real .sxm headers are about 10 kB; not an .sxm file, or a corrupt one)"
            )
        raise ScanReadError(spath, "header is incomplete: no :SCANIT_END: tag (truncated or not an .sxm file)")
    # Only whitespace (newlines) may separate the end tag from the marker;
    # searching further would find \x1a\x04 by chance inside the data.
    after = end + len(_END_TAG)
    gap = len(head[after:after + _MARKER_WINDOW]) - len(head[after:after + _MARKER_WINDOW].lstrip(b" \t\r\n"))
    marker = after + gap if head.startswith(DATA_MARKER, after + gap) else -1
    if marker < 0:
        raise ScanReadError(spath, "header is incomplete: no \\x1a\\x04 data marker after :SCANIT_END:")
    fields = _split_fields(head[:end].decode("latin-1"))

    cols_f, rows_f = _floats(spath, fields, "SCAN_PIXELS", 2)
    cols, rows = int(cols_f), int(rows_f)
    if cols != cols_f or rows != rows_f or not (0 < cols <= _MAX_SIDE and 0 < rows <= _MAX_SIDE):
        raise ScanReadError(
            spath, f"header field :SCAN_PIXELS: has impossible dimensions {cols_f:g} x {rows_f:g} "
            f"(expected whole numbers 1..{_MAX_SIDE})"
        )
    width_m, height_m = _floats(spath, fields, "SCAN_RANGE", 2)
    problem = size_problem(width_m, height_m, rows=rows, cols=cols)
    if problem is not None:
        raise ScanReadError(
            spath, f"header field :SCAN_RANGE: is impossible: {width_m:g} x {height_m:g} m for {cols} x {rows} px: "
            f"{problem}"
        )
    scan_type = tuple(fields.get("SCANIT_TYPE", "").split())
    if scan_type not in _FORMATS:
        raise ScanReadError(
            spath, f"header field :SCANIT_TYPE: is {' '.join(scan_type)!r}; expected FLOAT MSBFIRST or FLOAT LSBFIRST"
        )
    scan_dir = fields.get("SCAN_DIR", "down").strip().lower() or "down"
    if scan_dir not in ("up", "down"):
        raise ScanReadError(spath, f"header field :SCAN_DIR: is {scan_dir!r}; expected 'up' or 'down'")
    offset = fields.get("SCAN_OFFSET", "").split()
    try:
        offset_m: tuple[float, float] | None = (float(offset[0]), float(offset[1]))
    except (IndexError, ValueError):
        offset_m = None
    if offset_m is not None and not all(math.isfinite(v) for v in offset_m):
        offset_m = None
    header = SxmHeader(
        path=spath,
        fields=fields,
        cols=cols,
        rows=rows,
        width_m=width_m,
        height_m=height_m,
        channels=_parse_channels(spath, fields),
        data_format=_FORMATS[scan_type],
        data_offset=marker + len(DATA_MARKER),
        scan_direction=scan_dir,
        angle_deg=_optional_float(fields, "SCAN_ANGLE"),
        offset_m=offset_m,
        bias_v=_optional_float(fields, "BIAS"),
        setpoint_a=_setpoint_a(fields),
        time=_record_time(fields),
        acq_time_s=_optional_float(fields, "ACQ_TIME"),
    )
    if header.data_bytes > _MAX_DATA_BYTES:
        raise ScanReadError(spath, f"header describes {header.data_bytes} bytes of data, more than any real scan")
    return header


def read_sxm_head(fh: BinaryIO) -> bytes:
    """The first bytes of an open file, enough to hold the header and its marker.

    At most about :data:`HEADER_MAX` bytes, fewer when the end tag comes
    earlier or the file ends; for :func:`parse_sxm_header`. ``OSError`` from
    reading propagates (the caller knows whether "permission denied" is news).
    """
    size = _HEADER_PROBE
    head = fh.read(size)
    while head.find(_END_TAG) < 0 or len(head) - head.find(_END_TAG) < _MARKER_WINDOW:
        if len(head) < size or size >= HEADER_MAX:
            break
        head += fh.read(size)
        size *= 2
    return head


def _open_error(path: Path, exc: OSError) -> ScanReadError:
    return ScanReadError(path, f"cannot read file: {exc.strerror or exc}")


def read_sxm_header(path: str | os.PathLike[str]) -> SxmHeader:
    """Read and parse only the header of an ``.sxm`` file (cheap; for completeness checks)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = read_sxm_head(fh)
    except OSError as exc:
        raise _open_error(p, exc) from exc
    return parse_sxm_header(p, head)


def _rows_valid(images: np.ndarray) -> int:
    """Rows acquired, in scan order: up to the last row with any finite value.

    ``images`` is ``(n_images, rows, cols)`` in storage (scan) order. Rows are
    checked from the end, so a complete file costs one row per image.
    """
    for row in range(images.shape[1] - 1, -1, -1):
        if np.isfinite(images[:, row, :]).any():
            return row + 1
    return 0


def read_sxm(path: str | os.PathLike[str], *, data: bytes | None = None) -> tuple[SxmHeader, tuple[Frame, ...]]:
    """Read every channel and direction of a Nanonis ``.sxm`` file.

    Parameters
    ----------
    path : str or path-like
        The ``.sxm`` file.
    data : bytes, optional
        The file's bytes, already read (the daemon hashes and parses the same
        bytes); ``path`` then only names it.

    Returns
    -------
    header : SxmHeader
        The parsed header.
    frames : tuple of Frame
        One display-oriented, native float32 frame per channel and direction,
        in file order (channel by channel, forward before backward). Rows not
        yet scanned (NaN in every stored image) are reflected in
        ``Frame.rows_valid``.

    Raises
    ------
    ScanReadError
        For anything that is not a complete, well-formed ``.sxm`` file; the
        message names the file and, for truncation, expected vs actual bytes.
    """
    p = Path(path)
    try:
        with (io.BytesIO(data) if data is not None else p.open("rb")) as fh:
            size = len(data) if data is not None else os.fstat(fh.fileno()).st_size
            if size == 0:
                raise ScanReadError(p, "file is empty (0 bytes)")
            header = parse_sxm_header(p, read_sxm_head(fh))
            have = size - header.data_offset
            if have < header.data_bytes:
                raise ScanReadError(
                    p,
                    f"file is truncated: the header promises {header.data_bytes} data bytes "
                    f"({header.n_images} images of {header.cols} x {header.rows} px), found {have} "
                    f"(file is {size} bytes, expected {header.expected_size})",
                )
            if have > header.data_bytes:
                # Nanonis writes exactly what the header describes; extra bytes
                # mean the header (pixels, channel table) does not describe the data.
                raise ScanReadError(
                    p,
                    f"file does not match its header: {have} data bytes after the marker, the header "
                    f"describes {header.data_bytes} ({header.n_images} images of {header.cols} x {header.rows} px)",
                )
            fh.seek(header.data_offset)
            stored = np.empty((header.n_images, header.rows, header.cols), dtype=header.data_format)
            got = fh.readinto(stored.view(np.uint8).reshape(-1).data)
    except OSError as exc:
        raise _open_error(p, exc) from exc
    if got != header.data_bytes:
        raise ScanReadError(
            p, f"file is truncated: read {got} of {header.data_bytes} data bytes (still being written?)"
        )
    # A row counts as acquired when any channel holds a finite value in it;
    # in-progress Nanonis files carry NaN (all channels) in unscanned lines.
    rows_valid = _rows_valid(stored)
    common = dict(
        width_m=header.width_m,
        height_m=header.height_m,
        scan_direction=header.scan_direction,
        rows_valid=rows_valid,
        bias_v=header.bias_v,
        setpoint_a=header.setpoint_a,
        offset_m=header.offset_m,
        angle_deg=header.angle_deg,
        time=header.time,
        source=str(p),
        header=header.fields,
    )
    frames = []
    k = 0
    for channel in header.channels:
        for direction in channel.directions:
            image = stored[k]
            k += 1
            if header.scan_direction == "up":
                image = image[::-1]
            if direction == "backward":
                image = image[:, ::-1]
            frames.append(
                Frame(
                    data=np.ascontiguousarray(image, dtype=np.float32),
                    channel=channel.name,
                    unit=channel.unit,
                    direction=direction,
                    **common,  # type: ignore[arg-type]
                )
            )
    return header, tuple(frames)


def _fmt(value: float) -> str:
    # 17 significant digits: any float64 reads back bit-exactly.
    return f"{value:.16E}"


def sxm_bytes(
    frames: Sequence[Frame],
    *,
    fields: Mapping[str, str] | None = None,
    big_endian: bool = True,
    line_time_s: float = 0.0,
) -> bytes:
    """Encode frames as a complete Nanonis ``.sxm`` file.

    Parameters
    ----------
    frames : sequence of Frame
        All of the same shape, size and scan direction. Frames are grouped
        by channel in first-seen order; a channel with both directions is
        stored as ``both`` (what ``nanonispy2`` requires), a channel with one
        direction as ``forward`` or ``backward``.
    fields : Mapping[str, str], optional
        Extra header fields (``{"COMMENT": "..."}``) written after the
        standard ones; they cannot override the fields that define the data.
    big_endian : bool
        ``FLOAT MSBFIRST`` (what Nanonis writes) or ``FLOAT LSBFIRST``.
    line_time_s : float
        Time per scan line and direction (``SCAN_TIME``); ``ACQ_TIME`` is
        derived from it.

    Returns
    -------
    bytes
        The file contents; :func:`read_sxm` returns the same frames bit for bit.
    """
    if not frames:
        raise ValueError("sxm_bytes needs at least one frame")
    first = frames[0]
    for f in frames[1:]:
        if (f.rows, f.cols, f.width_m, f.height_m, f.scan_direction) != (
            first.rows, first.cols, first.width_m, first.height_m, first.scan_direction
        ):
            raise ValueError("all frames of one .sxm file must share shape, physical size and scan direction")
    by_channel: dict[str, dict[str, Frame]] = {}
    for f in frames:
        dirs = by_channel.setdefault(f.channel, {})
        if f.direction in dirs:
            raise ValueError(f"two {f.direction} frames for channel {f.channel!r}")
        dirs[f.direction] = f
    dtype = ">f4" if big_endian else "<f4"
    lines: list[tuple[str, str]] = [
        ("NANONIS_VERSION", "2"),
        ("SCANIT_TYPE", "              FLOAT            " + ("MSBFIRST" if big_endian else "LSBFIRST")),
    ]
    if first.time:
        stamp = _dt.datetime.fromisoformat(first.time)
        lines += [("REC_DATE", stamp.strftime(" %d.%m.%Y")), ("REC_TIME", stamp.strftime("%H:%M:%S"))]
    lines += [
        ("SCAN_PIXELS", f"{first.cols:>10d} {first.rows:>9d}"),
        ("SCAN_RANGE", f"{_fmt(first.width_m):>24s} {_fmt(first.height_m):>24s}"),
    ]
    # Nanonis always writes these and nanonispy2 requires them; an unknown
    # value is written as NaN, which reads back as "unknown" (None).
    offset = first.offset_m or (math.nan, math.nan)
    lines += [
        ("SCAN_TIME", f"{_fmt(line_time_s):>24s} {_fmt(line_time_s):>24s}"),
        ("ACQ_TIME", _fmt(line_time_s * first.rows * 2)),
        ("SCAN_OFFSET", f"{_fmt(offset[0]):>24s} {_fmt(offset[1]):>24s}"),
        ("SCAN_ANGLE", _fmt(first.angle_deg or 0.0)),
        ("SCAN_DIR", first.scan_direction),
        ("BIAS", _fmt(math.nan if first.bias_v is None else first.bias_v)),
    ]
    if first.setpoint_a is not None:
        lines.append(
            ("Z-CONTROLLER", f"\tName\ton\tSetpoint\n\tlog Current\t1\t{_fmt(first.setpoint_a)} A")
        )
    reserved = {k for k, _ in lines} | {"DATA_INFO", "SCANIT_END"}
    for key, value in (fields or {}).items():
        if key in reserved:
            raise ValueError(f"header field {key!r} is written from the frames and cannot be overridden")
        lines.append((key, value))
    table = ["\tChannel\tName\tUnit\tDirection\tCalibration\tOffset"]
    blocks: list[np.ndarray] = []
    for i, (name, dirs) in enumerate(by_channel.items()):
        present = [d for d in ("forward", "backward") if d in dirs]
        direction = "both" if len(present) == 2 else present[0]
        unit = next(iter(dirs.values())).unit
        table.append(f"\t{i}\t{name}\t{unit}\t{direction}\t1.000E+0\t0.000E+0")
        for d in present:
            image = dirs[d].data
            if d == "backward":
                image = image[:, ::-1]
            if first.scan_direction == "up":
                image = image[::-1]
            blocks.append(np.ascontiguousarray(image, dtype=dtype))
    lines.append(("DATA_INFO", "\n".join(table) + "\n"))
    text = "".join(f":{k}:\n{v}\n" for k, v in lines) + ":SCANIT_END:\n\n\n"
    return text.encode("latin-1") + DATA_MARKER + b"".join(b.tobytes() for b in blocks)


def write_sxm(
    path: str | os.PathLike[str],
    frames: Sequence[Frame],
    *,
    fields: Mapping[str, str] | None = None,
    big_endian: bool = True,
    line_time_s: float = 0.0,
) -> Path:
    """Write frames to ``path`` as a Nanonis ``.sxm`` file (see :func:`sxm_bytes`).

    The file is written to a temporary name and renamed into place, so a
    reader never sees half a file.
    """
    p = Path(path)
    blob = sxm_bytes(frames, fields=fields, big_endian=big_endian, line_time_s=line_time_s)
    tmp = p.with_name(f".{p.name}.part")
    tmp.write_bytes(blob)
    os.replace(tmp, p)
    return p
