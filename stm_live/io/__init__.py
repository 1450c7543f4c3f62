"""The one door through which every scan file enters stm-live.

:func:`read_scan` reads any supported file into a :class:`ScanFile`, whose
:meth:`ScanFile.frame` picks one channel and direction. Whatever the format,
what comes out is a display-oriented, native float32 :class:`~stm_live.frame.Frame`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ScanReadError
from ..frame import Frame
from .arrays import read_array
from .sxm import SxmHeader, read_sxm, read_sxm_header, sxm_bytes, write_sxm

__all__ = [
    "SCAN_SUFFIXES",
    "ScanFile",
    "SxmHeader",
    "read_array",
    "read_frame",
    "read_scan",
    "read_sxm",
    "read_sxm_header",
    "sxm_bytes",
    "write_sxm",
]

#: File name suffixes :func:`read_scan` understands.
SCAN_SUFFIXES = (".sxm", ".npy", ".npz")

_NAME_NOISE = re.compile(r"[\s_\-]+")


def _channel_key(name: str) -> str:
    return _NAME_NOISE.sub("", name).lower()


@dataclass(frozen=True)
class ScanFile:
    """Every image of one scan file, with its header when the format has one."""

    path: str
    frames: tuple[Frame, ...]
    header: SxmHeader | None = field(default=None, repr=False)

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names in file order, each once."""
        return tuple(dict.fromkeys(f.channel for f in self.frames))

    def directions(self, channel: str | None = None) -> tuple[str, ...]:
        """Directions stored for ``channel`` (for any channel when None)."""
        wanted = None if channel is None else _channel_key(channel)
        return tuple(
            dict.fromkeys(f.direction for f in self.frames if wanted is None or _channel_key(f.channel) == wanted)
        )

    def frame(self, channel: str = "Z", direction: str = "forward") -> Frame:
        """The frame of ``channel`` / ``direction``.

        Channel names match ignoring case, spaces, ``_`` and ``-``
        (``"frequency shift"`` finds ``Frequency_Shift``).

        Raises
        ------
        ScanReadError
            The file has no such channel or direction; the message lists
            what it does have.
        """
        wanted = _channel_key(channel)
        matches = [f for f in self.frames if _channel_key(f.channel) == wanted]
        if not matches:
            raise ScanReadError(
                self.path, f"unknown channel {channel!r}; the file has {', '.join(self.channels)}"
            )
        for f in matches:
            if f.direction == direction:
                return f
        have = ", ".join(f.direction for f in matches)
        raise ScanReadError(self.path, f"channel {matches[0].channel!r} has no {direction!r} image (it has {have})")


def read_scan(
    path: str | os.PathLike[str],
    *,
    width_nm: float | None = None,
    height_nm: float | None = None,
    data: bytes | None = None,
) -> ScanFile:
    """Read a scan file of any supported kind.

    Parameters
    ----------
    path : str or path-like
        ``.sxm`` (Nanonis), ``.npy`` or ``.npz``.
    width_nm, height_nm : float, optional
        Physical size for formats that do not store it (arrays). Ignored
        for ``.sxm``, whose header is authoritative.
    data : bytes, optional
        The file's bytes, already read: parsed instead of reading ``path``
        (which still names the file and decides its kind), so what is hashed
        is what is segmented.

    Raises
    ------
    ScanReadError
        Unsupported suffix, or any problem reading the file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".sxm":
        header, frames = read_sxm(p, data=data)
        return ScanFile(str(p), frames, header)
    if suffix in (".npy", ".npz"):
        return ScanFile(str(p), read_array(p, width_nm=width_nm, height_nm=height_nm, data=data))
    raise ScanReadError(p, f"unsupported file type {suffix or '(no suffix)'!r}; expected one of {SCAN_SUFFIXES}")


def read_frame(
    path: str | os.PathLike[str],
    *,
    channel: str = "Z",
    direction: str = "forward",
    width_nm: float | None = None,
    height_nm: float | None = None,
) -> Frame:
    """Read one channel and direction of a scan file (see :func:`read_scan`)."""
    return read_scan(path, width_nm=width_nm, height_nm=height_nm).frame(channel, direction)


def header_summary(scan: ScanFile) -> Mapping[str, object]:
    """What ``stm-live info`` reports about a scan file, as plain JSON-able values."""
    first = scan.frames[0]
    header = scan.header
    return {
        "path": scan.path,
        "format": "sxm" if header is not None else Path(scan.path).suffix.lstrip("."),
        "rows": first.rows,
        "cols": first.cols,
        "width_nm": first.width_nm,
        "height_nm": first.height_nm,
        "channels": [
            {"name": name, "unit": next(f.unit for f in scan.frames if f.channel == name),
             "directions": list(scan.directions(name))}
            for name in scan.channels
        ],
        "scan_direction": first.scan_direction,
        "angle_deg": first.angle_deg,
        "bias_v": first.bias_v,
        "setpoint_a": first.setpoint_a,
        "offset_nm": None if first.offset_m is None else [v * 1e9 for v in first.offset_m],
        "rows_valid": first.rows_valid,
        "complete": first.complete,
        "acquired": first.time,
        "acquisition_time_s": header.acq_time_s if header is not None else None,
    }
