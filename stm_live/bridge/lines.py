"""Which lines of a controller's scan buffer are new: scans and rows from successive grabs.

A controller gives the whole frame buffer at once (``Scan.FrameDataGrab``),
lines in acquisition order and NaN where nothing was scanned yet. Between two
grabs a few lines were added, or a new frame began (the buffer was cleared
and refilled, maybe already past where the last one was). :class:`LineTracker`
turns the sequence of grabs into what the daemon wants: "scan S started",
"row r of S (display order)", "S ended, complete or not". Pure: arrays in,
events out; the caller does the I/O.

A new scan is recognised when the buffer's shape or scan direction changes,
when the caller says so (``new_scan=True``: the controller reported a move to
the start point, or the frame was changed), when a row already sent is NaN
again (the buffer was cleared), or when the last row sent has changed (a new
frame overwrote it between two grabs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LineTracker", "TrackEvents"]


@dataclass
class TrackEvents:
    """What one grab revealed, in the order it happened: ``items`` holds ``("end", scan_id, complete)``,
    ``("start", scan_id)`` and ``("row", display_row, values)`` tuples."""

    items: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def ended(self) -> list[tuple[str, bool]]:
        """``(scan_id, complete)`` of the scans that ended."""
        return [(i[1], i[2]) for i in self.items if i[0] == "end"]

    @property
    def started(self) -> str | None:
        """The scan that started, if any."""
        return next((i[1] for i in self.items if i[0] == "start"), None)

    @property
    def rows(self) -> list[tuple[int, np.ndarray]]:
        """``(display row, values in display order)`` of the new rows."""
        return [(i[1], i[2]) for i in self.items if i[0] == "row"]


class LineTracker:
    """Follow one channel and direction of a controller's buffer across grabs.

    Parameters
    ----------
    new_id : callable
        Returns the id of a newly started scan (the controller has none until it saves a file).
    backward : bool
        The buffer holds backward (retrace) lines, stored right to left: sent mirrored.
    min_finite : float
        A line counts as acquired when at least this fraction of it is finite.

    Examples
    --------
    >>> ids = iter(["s1", "s2"])
    >>> t = LineTracker(lambda: next(ids))
    >>> buf = np.full((3, 4), np.nan, np.float32)
    >>> buf[0] = 1.0
    >>> ev = t.update(buf, up=False)
    >>> ev.started, [r for r, _ in ev.rows]
    ('s1', [0])
    >>> buf[1:] = 2.0
    >>> ev = t.update(buf, up=False)
    >>> [r for r, _ in ev.rows], ev.ended
    ([1, 2], [('s1', True)])
    """

    def __init__(self, new_id: Callable[[], str], *, backward: bool = False, min_finite: float = 0.5) -> None:
        self._new_id = new_id
        self.backward = backward
        self.min_finite = min_finite
        self.scan_id: str | None = None
        self._shape: tuple[int, int] | None = None
        self._up = False
        self._sent: np.ndarray | None = None  # bool per acquisition row
        self._last: tuple[int, np.ndarray] | None = None  # last row sent (acquisition index, values)
        self._done = False

    @property
    def open(self) -> bool:
        """True while a scan has started and not ended."""
        return self.scan_id is not None and not self._done

    @property
    def rows(self) -> int:
        """Rows of the current scan (0 before the first)."""
        return 0 if self._shape is None else self._shape[0]

    @property
    def rows_sent(self) -> int:
        """Rows of the current scan sent so far."""
        return 0 if self._sent is None else int(self._sent.sum())

    def end(self, events: TrackEvents | None = None) -> TrackEvents:
        """End the open scan now (incomplete unless every row was sent)."""
        events = events or TrackEvents()
        if self.open:
            assert self._sent is not None and self.scan_id is not None
            events.items.append(("end", self.scan_id, bool(self._sent.all())))
            self._done = True
        return events

    def _start(self, events: TrackEvents, shape: tuple[int, int], up: bool) -> None:
        self.end(events)
        self.scan_id = self._new_id()
        self._shape = shape
        self._up = up
        self._sent = np.zeros(shape[0], dtype=bool)
        self._last = None
        self._done = False
        events.items.append(("start", self.scan_id))

    def unmark(self, display_rows: list[int]) -> None:
        """Take rows back: they could not be sent and will be reported again by the next :meth:`update`."""
        if self._sent is None or self._shape is None:
            return
        rows = self._shape[0]
        for r in display_rows:
            k = rows - 1 - r if self._up else r
            self._sent[k] = False
        self._done = False
        self._last = None

    def update(self, data: np.ndarray, *, up: bool, new_scan: bool = False) -> TrackEvents:
        """Take one grab of the buffer.

        Parameters
        ----------
        data : numpy.ndarray
            ``(rows, cols)`` the buffer as grabbed: acquisition order, NaN where not scanned.
        up : bool
            The scan runs upwards (its first line is the bottom of the image).
        new_scan : bool
            The caller knows a new scan began since the last grab.

        Returns
        -------
        TrackEvents
            Rows are in acquisition order, each with its display row and its
            values in display order (a backward line mirrored).
        """
        events = TrackEvents()
        rows, cols = data.shape
        acquired = np.isfinite(data).sum(axis=1) >= max(1, int(np.ceil(self.min_finite * cols)))
        if not acquired.any():
            return events  # an empty buffer: nothing scanned since it was cleared
        restart = (new_scan or self.scan_id is None or self._shape != (rows, cols) or self._up != up)
        if not restart and self._sent is not None:
            if np.any(self._sent & ~acquired):
                restart = True  # a row sent before is empty again: the buffer was cleared
            elif self._last is not None and not np.array_equal(data[self._last[0]], self._last[1], equal_nan=True):
                restart = True  # a new frame overwrote it between two grabs
            elif self._done and np.any(acquired & ~self._sent):
                restart = True  # the scan was over; new lines belong to the next one
        if restart:
            self._start(events, (rows, cols), up)
        elif self._done:
            return events
        assert self._sent is not None
        new = np.flatnonzero(acquired & ~self._sent)
        for k in new.tolist():
            line = data[k, ::-1] if self.backward else data[k]
            display = rows - 1 - k if up else k
            events.items.append(("row", display, np.array(line, dtype=np.float32)))
            self._sent[k] = True
        if new.size:
            k = int(new[-1])
            self._last = (k, data[k].copy())
        if self._sent.all():
            self.end(events)
        return events
