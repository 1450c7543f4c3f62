"""Scan lines from the wire -> frames: :class:`LineAssembler`.

Pure: no sockets, no threads, no files; time comes from an injectable clock
(or the caller's ``now``). The daemon decodes each message with
:mod:`stm_live.wire` and feeds it here; what comes back are events:

* :class:`LineAdded`: a line went into an open scan; carries the partial
  :class:`~stm_live.frame.Frame` (unreceived rows NaN) and the row;
* :class:`ScanFinished`: a scan is over; carries the final frame, whether it
  is complete and why it ended;
* :class:`MessageIgnored`: a message that changes nothing (a late line for a
  scan already finished, an end for an unknown scan), with the reason.

Rules (protocol v1, ``docs/protocol.md``):

* A scan is identified by ``(scan_id, channel, direction)``: a bridge may
  stream several channels and both directions of one scan, each becomes its
  own frame. ``stm.end`` ends every stream of its ``scan_id``.
* Lines may come out of order, twice (the last copy wins; the event says
  ``duplicate``) or never (the row stays NaN). A scan whose every row has
  arrived finishes at once (``reason="all rows"``), without waiting for
  ``stm.end``.
* A line of a new ``scan_id`` on a ``(channel, direction)`` ends the open
  scan of the same channel and direction as incomplete
  (``reason="superseded"``). A whole ``stm.frame`` ends no other scan: it is
  complete on arrival (frames pushed from an archive must not cut a live
  scan short).
* At most ``max_open_scans`` scans are open; beyond that the one idle longest
  ends as incomplete (``reason="evicted"``). :meth:`LineAssembler.expire`
  ends scans idle for ``scan_timeout_s`` (``reason="timed out"``).
* A line or frame whose geometry (rows, cols, physical size, unit) differs
  from its open scan's raises :class:`~stm_live.errors.WireError` for that
  message alone; the scan carries on.
* Open scans hold at most ``max_bytes`` of image buffers together: a new scan
  ends the ones idle longest until it fits, and a scan larger than the whole
  budget is refused (:class:`~stm_live.errors.WireError`).

Each open scan is one :class:`ScanBuffer` object (``scan_type``, a subclass of
it, lets the daemon keep its live state for the scan on the same object), and
the events carry it.
* Lines for a scan finished less than ``late_window_s`` ago are ignored
  (:class:`MessageIgnored`); after that the same id starts a new scan (a
  restarted bridge re-using its ids must not be ignored for ever).

``Frame.rows_valid`` of an assembled frame follows :mod:`stm_live.frame`:
rows acquired in scan order. A scan whose first line is the bottom row
(``rows - 1``) is taken as an upward scan (``scan_direction="up"``,
``rows_valid = rows - lowest row received``), any other as downward
(``rows_valid = highest row received + 1``). Rows never received inside
that range stay NaN.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from ..errors import WireError
from ..frame import Frame
from ..wire import EndMessage, FrameMessage, IngestMessage, LineMessage, ScanInfo

__all__ = [
    "AssemblerEvent",
    "FinishReason",
    "LineAdded",
    "LineAssembler",
    "MessageIgnored",
    "ScanBuffer",
    "ScanFinished",
    "ScanKey",
]

ScanKey = tuple[str, str, str]
"""``(scan_id, channel, direction)``: one stream of one scan."""

FinishReason = Literal["end", "aborted", "all rows", "frame", "superseded", "evicted", "timed out", "closed"]

#: Finished scans remembered, to tell late lines from a new scan.
_FINISHED_MEMORY: Final = 1024


@dataclass(frozen=True, eq=False)
class LineAdded:
    """A line went into the open scan ``key`` (the object ``scan``).

    :attr:`frame` is a read-only *view* of the scan's live buffer: later
    lines of the same scan appear in it. Copy ``frame.data`` to keep a
    snapshot. ``arrived`` is the clock time the line was fed (for latency).
    """

    key: ScanKey
    row: int
    scan: ScanBuffer
    rows_received: int
    duplicate: bool
    arrived: float

    @property
    def frame(self) -> Frame:
        """The scan so far (a view of its buffer)."""
        return self.scan.frame()


@dataclass(frozen=True, eq=False)
class ScanFinished:
    """The scan ``key`` is over; ``frame`` is final and no longer changes.

    ``complete`` is true when the scan ended normally (``stm.end`` with
    ``complete: true``, every row arrived, or a whole ``stm.frame`` with data
    in every row) *and* no row is missing. ``rows_missing`` counts rows
    never received. ``started`` / ``arrived`` are clock times of the scan's
    first message and of the message that finished it.
    """

    key: ScanKey
    frame: Frame
    complete: bool
    reason: FinishReason
    rows_received: int
    rows_missing: int
    started: float
    arrived: float
    scan: ScanBuffer | None = None


@dataclass(frozen=True)
class MessageIgnored:
    """A well-formed message that changes nothing, and why."""

    key: ScanKey | None
    scan_id: str
    reason: str
    arrived: float


AssemblerEvent = LineAdded | ScanFinished | MessageIgnored


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def _describe(info: ScanInfo) -> str:
    return f"{info.cols} x {info.rows} px, {info.width_m * 1e9:.6g} x {info.height_m * 1e9:.6g} nm, unit {info.unit!r}"


class ScanBuffer:
    """The assembly state of one open scan: its image buffer, which rows arrived, when.

    Subclass it (with ``__slots__`` of your own) and give the subclass to
    :class:`LineAssembler` as ``scan_type`` to keep more state per scan.
    """

    __slots__ = (
        "data", "info", "key", "last_seen", "max_row", "min_row", "n_received", "received", "scan_direction",
        "started", "time",
    )

    def __init__(
        self, key: ScanKey, info: ScanInfo, first_row: int, now: float, t: float | None,
        data: np.ndarray | None = None,
    ) -> None:
        self.key = key
        self.info = info
        self.data = np.full((info.rows, info.cols), np.nan, dtype=np.float32) if data is None else data
        self.received = np.zeros(info.rows, dtype=bool)
        self.n_received = 0
        self.min_row = first_row
        self.max_row = first_row
        self.scan_direction: Literal["down", "up"] = "up" if info.rows > 1 and first_row == info.rows - 1 else "down"
        self.started = now
        self.last_seen = now
        self.time = _iso(t)

    @property
    def nbytes(self) -> int:
        """Memory of the image buffer."""
        return int(self.data.nbytes)

    @property
    def rows_valid(self) -> int:
        """Rows acquired, counted from the scan's start edge."""
        if self.n_received == 0:
            return 0
        if self.scan_direction == "up":
            return self.info.rows - self.min_row
        return self.max_row + 1

    def frame(self, data: np.ndarray | None = None, rows_valid: int | None = None) -> Frame:
        """The scan as a :class:`Frame` (a view of the buffer unless ``data`` is given)."""
        info = self.info
        return Frame(
            data=self.data if data is None else data,
            width_m=info.width_m,
            height_m=info.height_m,
            channel=info.channel,
            unit=info.unit,
            direction=info.direction,
            scan_direction=self.scan_direction,
            rows_valid=self.rows_valid if rows_valid is None else rows_valid,
            bias_v=info.bias_v,
            setpoint_a=info.setpoint_a,
            offset_m=info.offset_m,
            angle_deg=info.angle_deg,
            time=self.time,
            source="zmq",
        )


class LineAssembler:
    """Assemble ``stm.line`` / ``stm.frame`` / ``stm.end`` messages into frames.

    Parameters
    ----------
    max_open_scans : int
        Scans assembled at once (config ``ingest.max_open_scans``); the one
        idle longest is ended as incomplete to make room.
    scan_timeout_s : float
        :meth:`expire` ends scans that received nothing for this long
        (config ``ingest.scan_timeout_s``).
    late_window_s : float
        Lines for a scan finished less than this long ago are ignored as
        late; later ones start a new scan with that id.
    max_bytes : int, optional
        Budget for the image buffers of all open scans (config
        ``ingest.assembler_mb``); None: no limit.
    scan_type : type
        :class:`ScanBuffer` or a subclass: what each open scan is.
    clock : callable, optional
        Monotonic seconds (default :func:`time.monotonic`), used when
        :meth:`feed` gets no ``now``.

    Examples
    --------
    >>> from stm_live.wire import EndMessage, LineMessage, ScanInfo
    >>> asm = LineAssembler(clock=lambda: 0.0)
    >>> scan = ScanInfo("s1", rows=2, cols=3, width_m=1e-9, height_m=1e-9)
    >>> [type(e).__name__ for e in asm.feed(LineMessage(scan, 0, np.zeros(3, np.float32)))]
    ['LineAdded']
    >>> done = asm.feed(EndMessage("s1", complete=True))[0]
    >>> done.reason, done.complete, done.rows_missing, done.frame.rows_valid
    ('end', False, 1, 1)
    """

    def __init__(
        self,
        *,
        max_open_scans: int = 4,
        scan_timeout_s: float = 600.0,
        late_window_s: float = 30.0,
        max_bytes: int | None = None,
        scan_type: type[ScanBuffer] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_open_scans < 1:
            raise ValueError(f"max_open_scans must be at least 1, got {max_open_scans}")
        if not (scan_timeout_s > 0 and late_window_s >= 0):
            raise ValueError(
                f"scan_timeout_s must be > 0 and late_window_s >= 0, got {scan_timeout_s}, {late_window_s}"
            )
        self.max_open_scans = max_open_scans
        self.scan_timeout_s = scan_timeout_s
        self.late_window_s = late_window_s
        self.max_bytes = max_bytes
        self._scan_type = scan_type or ScanBuffer
        self._clock = clock
        # Insertion order = order of last activity (moved to the end on every line).
        self._open: OrderedDict[ScanKey, ScanBuffer] = OrderedDict()
        # Finished scans: key -> (finish time, reason).
        self._finished: OrderedDict[ScanKey, tuple[float, FinishReason]] = OrderedDict()
        #: Running totals: lines, duplicates, frames, ends, ignored, rejected, scans_started, scans_finished.
        self.counts: dict[str, int] = dict.fromkeys(
            ("lines", "duplicates", "frames", "ends", "ignored", "rejected", "scans_started", "scans_finished"), 0
        )

    # -- queries -----------------------------------------------------------

    @property
    def open_scans(self) -> tuple[ScanKey, ...]:
        """Keys of the open scans, idle longest first."""
        return tuple(self._open)

    def __len__(self) -> int:
        return len(self._open)

    def scans(self) -> tuple[ScanBuffer, ...]:
        """The open scans, idle longest first."""
        return tuple(self._open.values())

    @property
    def nbytes(self) -> int:
        """Memory of the open scans' image buffers."""
        return sum(s.nbytes for s in self._open.values())

    # -- feeding -----------------------------------------------------------

    def feed(self, msg: IngestMessage, *, now: float | None = None) -> list[AssemblerEvent]:
        """Take one decoded message; return what happened, in order.

        Parameters
        ----------
        msg : LineMessage, FrameMessage or EndMessage
            As :func:`stm_live.wire.decode_ingest` returns it.
        now : float, optional
            Arrival time of the message (clock seconds); default the clock.

        Returns
        -------
        list of LineAdded, ScanFinished, MessageIgnored
            Scans ended to make room come first, then the message's own events.

        Raises
        ------
        WireError
            The message contradicts its open scan (geometry). Nothing changed.
        """
        now = self._clock() if now is None else now
        if isinstance(msg, LineMessage):
            return self._line(msg, now)
        if isinstance(msg, FrameMessage):
            return self._frame(msg, now)
        if isinstance(msg, EndMessage):
            return self._end(msg, now)
        raise TypeError(f"LineAssembler.feed takes stm.line/frame/end messages, got {type(msg).__name__}")

    def expire(self, *, now: float | None = None) -> list[ScanFinished]:
        """End scans idle for ``scan_timeout_s`` or longer (as incomplete)."""
        now = self._clock() if now is None else now
        stale = [k for k, s in self._open.items() if now - s.last_seen >= self.scan_timeout_s]
        return [self._finish(k, "timed out", now) for k in stale]

    def close_all(self, *, now: float | None = None) -> list[ScanFinished]:
        """End every open scan (on shutdown): ``reason="closed"``, incomplete."""
        now = self._clock() if now is None else now
        return [self._finish(k, "closed", now) for k in list(self._open)]

    # -- internals ---------------------------------------------------------

    def _check_geometry(self, scan: ScanBuffer, info: ScanInfo, what: str) -> None:
        old = scan.info
        if info.geometry != old.geometry or info.unit != old.unit:
            self.counts["rejected"] += 1
            raise WireError(
                f"{what} (scan {info.scan_id!r}, {info.channel} {info.direction}): {_describe(info)} does not match "
                f"the open scan's {_describe(old)} (from its first line); message dropped"
            )

    def _is_late(self, key: ScanKey, now: float) -> bool:
        finished = self._finished.get(key)
        if finished is None:
            return False
        if now - finished[0] < self.late_window_s:
            return True
        del self._finished[key]
        return False

    def _ignore(self, key: ScanKey | None, scan_id: str, reason: str, now: float) -> list[AssemblerEvent]:
        self.counts["ignored"] += 1
        return [MessageIgnored(key=key, scan_id=scan_id, reason=reason, arrived=now)]

    def _make_room(self, key: ScanKey, now: float, *, slot: bool = True, nbytes: int = 0) -> list[AssemblerEvent]:
        """End scans a new ``key`` supersedes, then (if it needs a ``slot``) the idlest beyond the limits."""
        events: list[AssemblerEvent] = [
            self._finish(k, "superseded", now) for k in list(self._open) if k[1:] == key[1:] and k[0] != key[0]
        ]
        while slot and self._open and (
            len(self._open) >= self.max_open_scans
            or (self.max_bytes is not None and self.nbytes + nbytes > self.max_bytes)
        ):
            events.append(self._finish(next(iter(self._open)), "evicted", now))
        return events

    def _check_size(self, info: ScanInfo, what: str) -> int:
        nbytes = info.rows * info.cols * 4
        if self.max_bytes is not None and nbytes > self.max_bytes:
            self.counts["rejected"] += 1
            raise WireError(
                f"{what} (scan {info.scan_id!r}): a {info.cols} x {info.rows} px scan needs "
                f"{nbytes / 2**20:.0f} MB, more than the {self.max_bytes / 2**20:.0f} MB allowed for scans being "
                "assembled (limits.assembler_mb); message dropped"
            )
        return nbytes

    def _line(self, msg: LineMessage, now: float) -> list[AssemblerEvent]:
        info = msg.scan
        row = msg.row
        if msg.data.shape != (info.cols,) or not 0 <= row < info.rows:
            raise WireError(
                f"stm.line (scan {info.scan_id!r}, row {row}): data shape {msg.data.shape} for a "
                f"{info.rows} x {info.cols} scan, expected row 0..{info.rows - 1} and ({info.cols},) values"
            )
        key = (info.scan_id, info.channel, info.direction)
        scan = self._open.get(key)
        events: list[AssemblerEvent] = []
        if scan is None:
            if self._is_late(key, now):
                return self._ignore(key, info.scan_id, f"late line {row}: the scan has already finished", now)
            nbytes = self._check_size(info, f"stm.line row {row}")
            events = self._make_room(key, now, nbytes=nbytes)
            scan = self._open[key] = self._scan_type(key, info, msg.row, now, msg.t)
            self.counts["scans_started"] += 1
        else:
            self._check_geometry(scan, info, f"stm.line row {msg.row}")
            self._open.move_to_end(key)
        scan.data[row] = msg.data
        duplicate = bool(scan.received[row])
        if duplicate:
            self.counts["duplicates"] += 1
        else:
            scan.received[row] = True
            scan.n_received += 1
            if row < scan.min_row:
                scan.min_row = row
            elif row > scan.max_row:
                scan.max_row = row
        scan.last_seen = now
        self.counts["lines"] += 1
        events.append(
            LineAdded(key=key, row=row, scan=scan, rows_received=scan.n_received, duplicate=duplicate, arrived=now)
        )
        if scan.n_received == info.rows:
            events.append(self._finish(key, "all rows", now))
        return events

    def _frame(self, msg: FrameMessage, now: float) -> list[AssemblerEvent]:
        info = msg.scan
        data = np.ascontiguousarray(msg.data, dtype=np.float32)
        if data.shape != (info.rows, info.cols):
            raise WireError(
                f"stm.frame (scan {info.scan_id!r}): data shape {data.shape}, expected ({info.rows}, {info.cols})"
            )
        key = (info.scan_id, info.channel, info.direction)
        scan = self._open.get(key)
        events: list[AssemblerEvent] = []
        if scan is None:
            if self._is_late(key, now):
                return self._ignore(key, info.scan_id, "late frame: the scan has already finished", now)
            # Never registered as open: a whole frame finishes at once, and it ends no other scan (an
            # archive pushed over the wire must not cut the microscope's live scan short).
            scan = self._scan_type(key, info, 0, now, msg.t, data)
            self.counts["scans_started"] += 1
        else:
            self._check_geometry(scan, info, "stm.frame")
            del self._open[key]
            scan.data = data
        has_data = np.asarray(np.isfinite(data).any(axis=1))
        scan.received = has_data
        scan.n_received = int(has_data.sum())
        filled = np.flatnonzero(has_data)
        # A frame is in display order; rows with data count from the top (as read_array does).
        scan.scan_direction = "down"
        scan.min_row = int(filled[0]) if filled.size else 0
        scan.max_row = int(filled[-1]) if filled.size else -1
        self.counts["frames"] += 1
        events.append(self._finished_event(scan, "frame", now))
        return events

    def _end(self, msg: EndMessage, now: float) -> list[AssemblerEvent]:
        self.counts["ends"] += 1
        keys = [k for k in self._open if k[0] == msg.scan_id]
        if not keys:
            ended = [why for k, (_, why) in self._finished.items() if k[0] == msg.scan_id]
            if ended and all(why in ("all rows", "frame") for why in ended):
                return []  # the usual end of a scan whose every row (or whole frame) already arrived
            why_ignored = "the scan has already finished" if ended else "no open scan has this id (no line arrived)"
            return self._ignore(None, msg.scan_id, f"stm.end: {why_ignored}", now)
        reason: FinishReason = "end" if msg.complete else "aborted"
        return [self._finish(k, reason, now) for k in keys]

    def _finish(self, key: ScanKey, reason: FinishReason, now: float) -> ScanFinished:
        scan = self._open.pop(key)
        return self._finished_event(scan, reason, now)

    def _finished_event(self, scan: ScanBuffer, reason: FinishReason, now: float) -> ScanFinished:
        self._finished[scan.key] = (now, reason)
        self._finished.move_to_end(scan.key)
        while len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)
        self.counts["scans_finished"] += 1
        rows = scan.info.rows
        missing = rows - scan.n_received
        ended_well = reason in ("end", "all rows", "frame")
        return ScanFinished(
            key=scan.key,
            frame=scan.frame(),
            complete=ended_well and missing == 0,
            reason=reason,
            rows_received=scan.n_received,
            rows_missing=missing,
            started=scan.started,
            arrived=now,
            scan=scan,
        )
