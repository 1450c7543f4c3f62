"""Lines from a Nanonis controller into the daemon's ingest: the bridge's reading side.

:class:`LineForwarder` runs two loops, each on its own controller connection:

* the **lines** loop (port P): where the controller's manual has it
  (``bridge.layout: current``), ``Scan.WaitEndOfLine`` returns at every line
  end and the buffer is grabbed (``Scan.FrameDataGrab``) right after; with
  the older layout (or ``bridge.lines_from: poll``) the buffer is grabbed
  every ``bridge.poll_lines`` line times. A :class:`~stm_live.bridge.lines.LineTracker`
  picks the rows that are new, and each goes out as an ``stm.line``
  (protocol v1) with the scan's metadata, read once per scan on the control
  connection (``Scan.FrameGet``, ``Scan.BufferGet``, ``Bias.Get``,
  ``ZCtrl.SetpntGet``): frame centre, size and angle, bias, setpoint;
* the **scan-end** loop (port P+1): ``Scan.WaitEndOfScan`` returns at every
  frame end with the saved file's path; the lines loop then grabs once more
  and closes the scan (``stm.end``).

Failures (a closed connection, a timeout, an error reply, a response that
breaks the layout) are logged and counted, and the loop carries on after a
backoff; nothing here raises out of :meth:`LineForwarder.run` or blocks
without a timeout.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import ControllerError
from ...wire import EndMessage, LineMessage, ScanInfo, encode_end, encode_line
from ..lines import LineTracker, TrackEvents
from ..settings import BridgeSection
from .client import Backoff, NanonisConnection
from .control import Grab, NanonisControl, ScanState

__all__ = ["LineForwarder", "ScanRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanRecord:
    """A scan the bridge forwarded: its id, the controller's state when it started, its direction."""

    scan_id: str
    state: ScanState
    up: bool
    rows: int
    cols: int
    started_t: float


class LineForwarder:
    """Forward every new line of the controller's scans to the daemon.

    Parameters
    ----------
    settings : BridgeSection
    publish : callable
        ``publish(parts)`` sends one protocol v1 message to the daemon (the caller's ZeroMQ socket).
    control : NanonisControl
        The control connection (shared with the executor; calls are serialised by its lock).
    stop : threading.Event
        Set to end :meth:`run`.
    on_scan : callable, optional
        ``on_scan(record)`` when a scan starts (after its metadata was read).
    on_line : callable, optional
        ``on_line(doc)`` for every line forwarded (first direction only): ``{"scan_id", "row",
        "rows", "cols", "data" (raw values, display order), "t"}``.
    on_end : callable, optional
        ``on_end(scan_id, complete)``.
    on_idle : callable, optional
        ``on_idle(running)`` when no line came for a while (``running``: what ``Scan.StatusGet`` said).
    """

    def __init__(
        self,
        settings: BridgeSection,
        *,
        publish: Callable[[list[bytes]], object],
        control: NanonisControl,
        stop: threading.Event,
        on_scan: Callable[[ScanRecord], None] | None = None,
        on_line: Callable[[dict[str, Any]], None] | None = None,
        on_end: Callable[[str, bool], None] | None = None,
        on_idle: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self._publish = publish
        self.control = control
        self._stop = stop
        self._on_scan = on_scan
        self._on_line = on_line
        self._on_end = on_end
        self._on_idle = on_idle
        # Every counter listed from the start, so a status read before the first line says "lines: 0".
        self.counters: Counter[str] = Counter(dict.fromkeys(
            ("grabs", "lines", "scans_complete", "scans_incomplete", "controller_errors"), 0))

        def sleep(seconds: float) -> bool:
            return stop.wait(seconds)

        def connection(port: int, name: str) -> NanonisConnection:
            return NanonisConnection(settings.host, port, name=name, layout=settings.layout,
                                     timeout_s=settings.timeout_s, sleep=sleep,
                                     backoff=Backoff(settings.retry_initial_s, settings.retry_max_s))

        self.lines_conn = connection(settings.port, "lines")
        self.scan_conn = connection(settings.port + 1, "scan ends")
        self._lines = NanonisControl(self.lines_conn)
        self._scan_ends: queue.SimpleQueue[tuple[str, str | None]] = queue.SimpleQueue()
        self._serial = 0
        self._prefix = f"{settings.scan_id_prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._trackers: dict[str, LineTracker] = {}
        for d in settings.directions:
            self._trackers[d] = LineTracker(self._next_id if d == settings.directions[0] else self._same_id,
                                            backward=d == "backward")
        self._infos: dict[str, ScanInfo] = {}
        self.records: dict[str, ScanRecord] = {}
        self._backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self._line_time_s: float | None = None
        self._use_wait = settings.lines_from == "wait_end_of_line" or (
            settings.lines_from == "auto" and settings.layout == "current")
        if settings.lines_from == "wait_end_of_line" and settings.layout != "current":
            raise ControllerError("bridge.lines_from: wait_end_of_line needs bridge.layout: current "
                                  "(Scan.WaitEndOfLine is not in the older protocol manuals)")
        self._last_line_t = time.monotonic()

    # -- ids ---------------------------------------------------------------------

    def _next_id(self) -> str:
        self._serial += 1
        return f"{self._prefix}-{self._serial:05d}"

    def _same_id(self) -> str:
        first = self._trackers[self.settings.directions[0]]
        return first.scan_id or self._next_id()

    # -- the loops ---------------------------------------------------------------

    def run(self) -> None:
        """Forward lines until ``stop`` is set; every failure is logged, counted and retried."""
        ends = threading.Thread(target=self._scan_end_loop, name="bridge-scan-ends", daemon=True)
        ends.start()
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                    self._backoff.reset()
                except ControllerError as exc:
                    self.counters["controller_errors"] += 1
                    delay = self._backoff.next_delay()
                    log.warning("%s; retrying in %.2g s", exc, delay)
                    self._stop.wait(delay)
        finally:
            self._close_open_scans(None)
            ends.join(self.settings.wait_ms / 1000.0 + 10.0)
            self.lines_conn.close()
            self.scan_conn.close()

    def _scan_end_loop(self) -> None:
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        while not self._stop.is_set():
            try:
                r = self.scan_conn.call("Scan.WaitEndOfScan", {"timeout_ms": self.settings.wait_ms})
                backoff.reset()
            except ControllerError as exc:
                self.counters["controller_errors"] += 1
                delay = backoff.next_delay()
                log.warning("%s; retrying in %.2g s", exc, delay)
                self._stop.wait(delay)
                continue
            if not r["timed_out"]:
                log.info("controller: end of scan, saved as %s", r["path"] or "(not saved)")
                # The scan open when the controller said so: the next one may start before the
                # lines loop gets to this, and must not be closed with it.
                self._scan_ends.put((r["path"], self._trackers[self.settings.directions[0]].scan_id))

    def _step(self) -> None:
        if self._use_wait:
            r = self.lines_conn.call("Scan.WaitEndOfLine", {"timeout_ms": self.settings.wait_ms})
            if r["timed_out"] and self._scan_ends.empty():
                self._idle()
                return
        ended = set()
        if not self._use_wait:
            if self._line_time_s is None:
                self._line_time_s = max(self.control.line_time_s(), 1e-4)
            # Poll every few line times, every half line near the end of a frame, and at once when
            # it ends: its last lines must be grabbed before the next frame clears the buffer.
            first = self._trackers[self.settings.directions[0]]
            left = (first.rows - first.rows_sent) if first.open else self.settings.poll_lines
            lines = min(self.settings.poll_lines, max(0.5, left - 1.0))
            with contextlib.suppress(queue.Empty):
                ended.add(self._scan_ends.get(timeout=lines * self._line_time_s)[1])
        while not self._scan_ends.empty():
            ended.add(self._scan_ends.get()[1])
        self.grab_and_forward()
        if ended:
            self._close_open_scans(ended)

    def _idle(self) -> None:
        if time.monotonic() - self._last_line_t < 2 * self.settings.wait_ms / 1000.0:
            return
        try:
            running = self.control.running()
        except ControllerError as exc:
            log.warning("%s", exc)
            return
        if self._on_idle is not None:
            self._on_idle(running)

    # -- grabbing ------------------------------------------------------------------

    def grab_and_forward(self) -> None:
        """Grab every configured direction once and forward what is new."""
        for direction, tracker in self._trackers.items():
            grab = self._lines.grab(self.settings.channel_index, backward=direction == "backward")
            self.counters["grabs"] += 1
            current = tracker.scan_id if tracker.open else None
            events = tracker.update(grab.data, up=grab.up)
            self._forward(direction, grab, events, current)

    def _close_open_scans(self, which: set[str | None] | None) -> None:
        """End the open scans (``which``: only those with these ids)."""
        for direction, tracker in self._trackers.items():
            if tracker.open and (which is None or tracker.scan_id in which):
                self._forward(direction, None, tracker.end(), tracker.scan_id)

    def _scan_info(self, scan_id: str, direction: str, grab: Grab) -> ScanInfo:
        key = scan_id
        record = self.records.get(key)
        if record is None:
            state = self.control.state()
            rows, cols = grab.data.shape
            record = ScanRecord(scan_id, state, grab.up, rows, cols, time.time())
            self.records[key] = record
            while len(self.records) > 64:
                self.records.pop(next(iter(self.records)))
            if self._on_scan is not None:
                self._on_scan(record)
        frame = record.state.frame
        channel = grab.channel or "Z"
        unit = grab.unit or ("m" if channel.lower() == "z" else "")
        return ScanInfo(scan_id, rows=record.rows, cols=record.cols, width_m=frame.width_m, height_m=frame.height_m,
                        channel=channel, direction=direction,  # type: ignore[arg-type]
                        unit=unit, bias_v=record.state.bias_v, setpoint_a=record.state.setpoint_a,
                        offset_m=frame.centre_m, angle_deg=frame.angle_deg)

    def _forward(self, direction: str, grab: Grab | None, events: TrackEvents, current: str | None) -> None:
        """Send what one grab revealed, in order (``current``: the scan open before it)."""
        tracker = self._trackers[direction]
        pending = [r for r, _ in events.rows]
        for item in events.items:
            if item[0] == "end":
                self._end(direction, item[1], item[2])
            elif item[0] == "start":
                current = item[1]
            else:
                assert grab is not None and current is not None
                info = self._info(current, direction, grab, tracker, pending)
                row, values = item[1], item[2]
                now = time.time()
                self._publish(encode_line(LineMessage(info, row, values, t=now)))
                pending.remove(row)
                self.counters["lines"] += 1
                self._last_line_t = time.monotonic()
                if self._on_line is not None and direction == self.settings.directions[0]:
                    self._on_line({"scan_id": current, "row": row, "rows": info.rows, "cols": info.cols,
                                   "data": values, "t": now})

    def _info(self, scan_id: str, direction: str, grab: Grab, tracker: LineTracker, pending: list[int]) -> ScanInfo:
        key = f"{scan_id}/{direction}"
        info = self._infos.get(key)
        if info is not None:
            return info
        try:
            info = self._infos[key] = self._scan_info(scan_id, direction, grab)
        except ControllerError:
            # Without its metadata no line can go out: take the rows back for the next try.
            tracker.unmark(pending)
            raise
        log.info("scan %s (%s) started: %d x %d px, %.4g x %.4g nm at (%.4g, %.4g) nm, %g deg, %s", scan_id,
                 direction, info.rows, info.cols, info.width_m * 1e9, info.height_m * 1e9,
                 (info.offset_m or (0, 0))[0] * 1e9, (info.offset_m or (0, 0))[1] * 1e9, info.angle_deg or 0.0,
                 "up" if grab.up else "down")
        return info

    def _end(self, direction: str, scan_id: str, complete: bool) -> None:
        self._infos.pop(f"{scan_id}/{direction}", None)
        self._publish(encode_end(EndMessage(scan_id, complete=complete)))
        self.counters["scans_complete" if complete else "scans_incomplete"] += 1
        log.info("scan %s (%s) ended %s", scan_id, direction, "complete" if complete else "incomplete")
        if self._on_end is not None and direction == self.settings.directions[0]:
            self._on_end(scan_id, complete)
