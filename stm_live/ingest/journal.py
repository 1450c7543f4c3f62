"""Scans in progress, on disk: what makes a streamed scan survive ``kill -9``.

A scan streamed over ZeroMQ exists only in the daemon's memory until its
result is stored. :class:`ScanJournal` keeps a copy of every accepted line
(or whole frame) on disk, one file per scan, from the moment it is accepted
until the scan's result is in the :class:`~stm_live.publish.ResultStore`:

* :meth:`ScanJournal.open` gives each scan a :class:`JournalWriter`, whose
  :meth:`~JournalWriter.line` / :meth:`~JournalWriter.frame` append to the
  scan's file, one ``write`` call per record on an unbuffered file: once it
  returns, the record is in the operating system's hands and survives the
  process being killed (lines are not fsynced, to keep a line cheap);
* :meth:`JournalWriter.finish` appends the end record (complete or not, and
  why), fsyncs and closes the file (a scan boundary survives a power cut);
  the daemon calls :meth:`ScanJournal.discard` once the result is stored;
* :func:`recover` reads a journal folder after a restart: finished scans
  whose result may not have been stored, and open scans to continue. A
  record cut short by the kill is dropped (and cut off the file, so that
  appending to it again is safe).

File format (``<scan>-<channel>-<direction>-<n>.journal``): the magic line
``STMJ1``, a JSON line with the scan's :class:`~stm_live.wire.ScanInfo`, then
records: ``L`` + row (int32) + t (float64, NaN = unknown) + ``cols`` float32
values; ``F`` + ``rows * cols`` float32 values (a whole frame); ``E`` +
complete (uint8) + reason (a JSON string and a newline). Little-endian.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from ..wire import ScanInfo

__all__ = ["JournalFile", "JournalWriter", "ScanJournal", "read_journal", "recover"]

log = logging.getLogger(__name__)

_MAGIC: Final = b"STMJ1\n"
_LINE: Final = struct.Struct("<cid")  # b"L", row, t
_END: Final = struct.Struct("<cB")  # b"E", complete
_VALUES: Final = np.dtype("<f4")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")

ScanKey = tuple[str, str, str]


def _safe(text: str, limit: int = 60) -> str:
    return (_UNSAFE.sub("_", text).strip("._") or "scan")[:limit]


def _write_all(fh: IO[bytes], data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if n is None:  # pragma: no cover - only non-blocking raw files return None
            raise OSError("journal write would block")
        view = view[n:]


@dataclass(frozen=True, eq=False)
class JournalFile:
    """One scan read back from the journal.

    ``lines`` are ``(row, values, t)`` in the order they were accepted;
    ``frame`` is a whole ``(rows, cols)`` image when one arrived at once;
    ``end`` is ``(complete, reason)`` once the scan finished, None while it
    was still open. ``size`` is the length of the valid part of the file.
    """

    path: Path
    info: ScanInfo
    lines: tuple[tuple[int, np.ndarray, float | None], ...]
    frame: np.ndarray | None
    end: tuple[bool, str] | None
    size: int

    @property
    def key(self) -> ScanKey:
        """``(scan_id, channel, direction)``."""
        return (self.info.scan_id, self.info.channel, self.info.direction)


class JournalWriter:
    """The journal file of one scan: lines, a whole frame, then its end; the file is made on the first record.

    Once :meth:`finish` returns, the file is fsynced (a scan boundary): the
    finished scan survives a power cut, not only a crash. Lines in between are
    not fsynced, to keep a line cheap.
    """

    def __init__(self, journal: ScanJournal, info: ScanInfo, path: Path | None = None,
                 fh: IO[bytes] | None = None) -> None:
        self._journal = journal
        self.info = info
        self.path = path
        self._fh = fh
        self.finished = False

    def _file(self) -> IO[bytes]:
        if self._fh is None:
            if self.finished:
                raise ValueError(f"journal of scan {self.info.scan_id!r} is finished")
            self.path = self._journal._new_path(self.info)
            fh = open(self.path, "xb", buffering=0)  # noqa: SIM115 - open for the scan's life
            header = json.dumps(asdict(self.info), allow_nan=False).encode("utf-8")
            _write_all(fh, _MAGIC + header + b"\n")
            self._fh = fh
            _fsync_dir(self.path.parent)
        return self._fh

    def line(self, row: int, values: np.ndarray, t: float | None) -> None:
        """Append one accepted line (one ``write`` call)."""
        record = _LINE.pack(b"L", row, math.nan if t is None else t)
        _write_all(self._file(), record + np.ascontiguousarray(values, dtype=_VALUES).tobytes())

    def frame(self, data: np.ndarray) -> None:
        """Append a whole frame (``stm.frame``), written from its own memory (no copy of a 256 MB frame)."""
        fh = self._file()
        _write_all(fh, b"F")
        _write_all(fh, np.ascontiguousarray(data, dtype=_VALUES).data.cast("B"))

    def finish(self, *, complete: bool, reason: str) -> Path | None:
        """Append the end record, fsync and close; return the file's path (None: nothing was written)."""
        self.finished = True
        self._journal._forget(self)
        fh, self._fh = self._fh, None
        if fh is None:
            return None
        try:
            _write_all(fh, _END.pack(b"E", int(bool(complete))) + json.dumps(reason).encode() + b"\n")
            os.fsync(fh.fileno())
        finally:
            fh.close()
        return self.path

    def close(self) -> None:
        """Close the file without ending the scan (it continues after a restart)."""
        self._journal._forget(self)
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ScanJournal:
    """The journal folder of the running daemon (one writer per scan: :meth:`open`); thread-safe.

    Parameters
    ----------
    folder : path-like
        Created if missing (``results.dir/journal``).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writers: dict[int, JournalWriter] = {}
        self._serial = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._writers)

    def _new_path(self, info: ScanInfo) -> Path:
        stem = f"{_safe(info.scan_id)}-{_safe(info.channel, 16)}-{info.direction}"
        with self._lock:
            while True:
                self._serial += 1
                path = self.folder / f"{stem}-{os.getpid()}-{self._serial}.journal"
                if not path.exists():
                    return path

    def _forget(self, writer: JournalWriter) -> None:
        with self._lock:
            self._writers.pop(id(writer), None)

    def open(self, info: ScanInfo) -> JournalWriter:
        """A writer for a new scan (its file appears with the first record)."""
        writer = JournalWriter(self, info)
        with self._lock:
            self._writers[id(writer)] = writer
        return writer

    def adopt(self, recovered: JournalFile) -> JournalWriter:
        """Continue writing a file :func:`recover` found open (after cutting off a torn record)."""
        with open(recovered.path, "r+b") as fh:
            fh.truncate(recovered.size)
        fh2 = open(recovered.path, "ab", buffering=0)  # noqa: SIM115 - open for the scan's life
        writer = JournalWriter(self, recovered.info, recovered.path, fh2)
        with self._lock:
            self._writers[id(writer)] = writer
        return writer

    def discard(self, path: Path | None) -> None:
        """Delete a finished scan's file (its result is stored)."""
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> list[ScanInfo]:
        """Close the open files; they stay on disk, to be continued after a restart. Returns their scans."""
        with self._lock:
            writers = list(self._writers.values())
        open_scans = [w.info for w in writers if w.path is not None]
        for writer in writers:
            writer.close()
        return open_scans


def _read(path: Path) -> JournalFile | None:
    blob = path.read_bytes()
    if not blob.startswith(_MAGIC):
        log.warning("%s: not a scan journal (no STMJ1 header); ignored", path)
        return None
    pos = blob.find(b"\n", len(_MAGIC))
    if pos < 0:
        return None
    try:
        fields: dict[str, Any] = json.loads(blob[len(_MAGIC):pos])
        if fields.get("offset_m") is not None:
            fields["offset_m"] = tuple(fields["offset_m"])
        info = ScanInfo(**fields)
    except (ValueError, TypeError) as exc:
        log.warning("%s: damaged journal header (%s); ignored", path, exc)
        return None
    pos += 1
    line_bytes = info.cols * _VALUES.itemsize
    frame_bytes = info.rows * line_bytes
    lines: list[tuple[int, np.ndarray, float | None]] = []
    frame: np.ndarray | None = None
    end: tuple[bool, str] | None = None
    good = pos
    while pos < len(blob) and end is None:
        kind = blob[pos:pos + 1]
        if kind == b"L" and pos + _LINE.size + line_bytes <= len(blob):
            _, row, t = _LINE.unpack_from(blob, pos)
            start = pos + _LINE.size
            values = np.frombuffer(blob, _VALUES, info.cols, start).astype(np.float32)
            lines.append((row, values, None if math.isnan(t) else t))
            pos = start + line_bytes
        elif kind == b"F" and pos + 1 + frame_bytes <= len(blob):
            # A view of the file's bytes (no second copy of a large frame); read-only, like every frame.
            frame = np.frombuffer(blob, _VALUES, info.rows * info.cols, pos + 1).astype(np.float32, copy=False)
            frame = frame.reshape(info.rows, info.cols)
            pos += 1 + frame_bytes
        elif kind == b"E" and (nl := blob.find(b"\n", pos + _END.size)) > 0:
            _, complete = _END.unpack_from(blob, pos)
            try:
                reason = str(json.loads(blob[pos + _END.size:nl]))
            except ValueError:
                reason = "end"
            end = (bool(complete), reason)
            pos = nl + 1
        else:
            break  # a record cut short by a crash, or garbage: everything before it counts
        good = pos
    return JournalFile(path, info, tuple(lines), frame, end, good)


def read_journal(path: str | os.PathLike[str]) -> JournalFile | None:
    """One scan journal file; None when it is not one (logged).

    Raises
    ------
    OSError
        The file cannot be read.
    """
    return _read(Path(path))


def recover(folder: str | os.PathLike[str]) -> list[JournalFile]:
    """Every scan journal in ``folder``, oldest first (by modification time)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob("*.journal"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
        try:
            item = _read(path)
        except OSError as exc:
            log.warning("%s: cannot read the scan journal: %s", path, exc)
            continue
        if item is not None:
            found.append(item)
    return found
