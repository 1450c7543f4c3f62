"""The live path: messages from the ingest socket -> scans assembled line by line -> levelled lines and partials.

Two threads:

* the **receiver** takes each message off the SUB socket as it arrives (so
  ZeroMQ never buffers more than a message or two), refuses what is malformed
  or over a source's rate, and queues the rest for the live worker, bounded
  by bytes (``limits.ingest_queue_mb``: what does not fit is refused and
  reported, the receiver never waits);
* the **live worker** feeds the :class:`~stm_live.ingest.assemble.LineAssembler`,
  journals each accepted line, levels it (:class:`~stm_live.level.LineLeveller`,
  in arrival order), adds it to the scan's :class:`~stm_live.model.live.LiveSegmenter`,
  and emits ``level.line`` and, every ``live.cadence_lines`` new lines of a
  scan, ``seg.partial`` documents. It takes every message waiting (up to
  :data:`BATCH`) before it segments, so when segmenting takes longer than a
  line the lines that arrived meanwhile are coalesced into one update of the
  latest state: requests never pile up. Finished scans go to the whole-frame
  path (:mod:`stm_live.daemon.frames`).

The live worker has its own queue and thread, and whole frames from files
never enter it: a live scan's lines are never queued behind files.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from ..config import Config
from ..errors import ModelError, WireError
from ..ingest.assemble import LineAdded, LineAssembler, MessageIgnored, ScanFinished
from ..ingest.journal import JournalFile, ScanJournal
from ..ingest.stream import LineSource, Received
from ..level import LevelError, LineLeveller
from ..model.live import LiveSegmenter
from ..model.prepare import model_grid_shape
from ..model.runtime import SegmentationModel
from ..model.tiles import pitch_problem
from ..publish import documents as docs
from ..publish.documents import Document
from ..publish.sinks import Counters
from ..wire import FrameMessage, LineMessage
from .admission import Admission
from .frames import FrameInbox, FrameIntake, IntakeJob, StreamJob
from .queues import ByteQueue
from .scans import LiveScan, replay_finished

__all__ = ["BATCH", "LiveWorker", "Receiver"]

log = logging.getLogger("stm_live.daemon")

#: Most messages the live worker takes from its queue before it segments.
BATCH: Final = 512
#: Every this many partials of a scan, the class map of every row done goes along (else the rows that changed).
KEYFRAME_PARTIALS: Final = 64
#: Largest model grid the live path keeps for one scan (its buffers grow with it: 16 M px is about 300 MB).
LIVE_MAX_MODEL_PX: Final = 16 << 20


def channel_key(name: str) -> str:
    """Channel names compare ignoring case, spaces, ``_`` and ``-``."""
    return "".join(ch for ch in name.lower() if ch not in " \t_-")


class Receiver:
    """The receiver thread's loop: socket -> live queue; never waits on the live worker.

    Each message is admitted against its source's limits first
    (:class:`~stm_live.daemon.admission.Admission`); refusals are reported,
    and logged at most once a minute per source and reason.
    """

    def __init__(
        self,
        source: LineSource,
        lines: ByteQueue[Received],
        whole: ByteQueue[Received],
        *,
        emit: Callable[[Document], None],
        counters: Counters,
        stop: threading.Event,
        admission: Admission | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.lines = lines
        self.whole = whole
        self._emit = emit
        self._counters = counters
        self._stop = stop
        self._admission = admission
        self._clock = clock
        self._said: dict[tuple[str, str], float] = {}

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    received = self.source.receive(0.1)
                except Exception as exc:  # not a malformed message (those come back as errors): the socket
                    log.exception("receiving from %s failed; retrying", self.source.endpoint)
                    self._emit(docs.event("error", where="receiving", error=f"{type(exc).__name__}: {exc}"))
                    self._stop.wait(1.0)
                    continue
                if received is None:
                    continue
                self._counters.add("messages")
                if received.error is not None or received.message is None:
                    self._emit(docs.bad_input(received.source, str(received.error), kind="message",
                                              n_bytes=received.n_bytes))
                    continue
                msg = received.message
                scan_id = getattr(getattr(msg, "scan", msg), "scan_id", None)
                refusal = None if self._admission is None else self._admission.check(
                    received.source, received.arrived, scan_id=scan_id, n_bytes=received.n_bytes)
                if refusal is not None:
                    self._refuse(received, scan_id, refusal)
                    continue
                # Whole frames have a lane of their own: scan lines never wait behind them.
                lane = self.whole if isinstance(msg, FrameMessage) else self.lines
                if not lane.put(received, received.n_bytes):
                    what = "whole frames" if lane is self.whole else "messages"
                    self._emit(docs.bad_input(
                        "zmq", f"refused: {lane.nbytes >> 20} MB of received {what} already wait for the "
                        f"live worker (limits.ingest_queue_mb = {lane.max_bytes >> 20})",
                        kind="refused", n_bytes=received.n_bytes, scan_id=scan_id,
                    ))
        finally:
            # The live worker ends after the last message received.
            self.lines.close()
            self.whole.close()

    def _refuse(self, received: Received, scan_id: str | None, reason: str) -> None:
        """Counted every time; a document (event log, console) at most once a minute per source and reason."""
        self._counters.add("errors")
        self._counters.add("refused")
        key = (received.source, reason.split(";")[0].split(" (scan")[0])
        now = self._clock()
        if now - self._said.get(key, -1e9) < 60.0:
            return
        self._said[key] = now
        if len(self._said) > 4096:
            self._said.clear()
        self._emit(docs.event("refused", source=received.source, scan_id=scan_id, reason=reason,
                              bytes=received.n_bytes))
        log.warning("refused from %s: %s (said once a minute)", received.source, reason)


class LiveWorker:
    """The live worker's loop and state: assembler, journal, levelling, live segmentation."""

    def __init__(
        self,
        config: Config,
        model: SegmentationModel,
        *,
        journal: ScanJournal,
        inbox: FrameInbox,
        intake: FrameIntake,
        emit: Callable[[Document], None],
        counters: Counters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.model = model
        self.journal = journal
        self.inbox = inbox
        self.intake = intake
        self._emit = emit
        self._counters = counters
        self._clock = clock
        self._channel = channel_key(config.input.channel)
        self._next_model: SegmentationModel | None = None
        self.assembler = LineAssembler(
            max_open_scans=config.ingest.max_open_scans, scan_timeout_s=config.ingest.scan_timeout_s,
            max_bytes=config.limits.assembler_mb << 20, scan_type=LiveScan, clock=clock,
        )

    # ------------------------------------------------------------------ loop

    def use_model(self, model: SegmentationModel) -> None:
        """Segment with ``model`` from the next batch on (thread-safe); open scans' live results switch at once."""
        self._next_model = model

    def _swap_model(self) -> None:
        model, self._next_model = self._next_model, None
        if model is None:
            return
        self.model = model
        for scan in self.assembler.scans():
            assert isinstance(scan, LiveScan)
            if scan.leveller is None:
                continue
            # Rebuild the scan's live path on the new model from the lines it has (in scan order): the
            # current partial result already comes from the new model.
            scan.leveller = scan.segmenter = None
            self._start_live(scan, announce=False)
            rows = np.flatnonzero(scan.received)
            for row in rows[::-1] if scan.scan_direction == "up" else rows:
                assert scan.leveller is not None
                levelled = scan.leveller.push(scan.data[row])
                if scan.segmenter is not None:
                    scan.segmenter.add_row(int(row), levelled)
            scan.new_lines = max(scan.new_lines, 1)
        log.info("live path now uses model %s [%s]", model.name, model.id)

    def run(self, lines: ByteQueue[Received], whole: ByteQueue[Received], recovered: list[JournalFile]) -> None:
        """Serve ``lines`` and ``whole`` frames until both are closed and empty; first continue ``recovered`` scans.

        Lines come first: a whole frame is taken only when no line waits (and
        the intake has room for it), one per turn.
        """
        self._safely("recovering the scan journal", self.recover, recovered)
        next_expire = self._clock() + 1.0
        while True:
            if self._next_model is not None:
                self._safely("switching the model", self._swap_model)
                self._safely("segmenting partial frames", self.publish_partials)
            frame_ready = bool(len(whole)) and self.intake.can_take(whole.peek_nbytes())
            # Wait for lines, but not while a whole frame could be taken; briefly while one waits for the intake.
            batch = lines.get_batch(0.0 if frame_ready else 0.05 if len(whole) else 0.5, BATCH)
            for received in batch:
                if self._next_model is not None:  # a swap requested while this batch waited: before its next line
                    self._safely("switching the model", self._swap_model)
                self._safely("handling a message", self.ingest, received)
            if batch:
                self._safely("segmenting partial frames", self.publish_partials)
            took_frame = False
            if frame_ready and not len(lines):
                frame_msg = whole.get(0.0)
                if frame_msg is not None:
                    took_frame = True
                    self._safely("handling a whole frame", self.ingest, frame_msg)
                    del frame_msg  # handed on: not held while waiting for the next message
            now = self._clock()
            if now >= next_expire:
                next_expire = now + 1.0
                for finished in self.assembler.expire(now=now):
                    self._safely("finishing a scan", self.scan_finished, finished)
            if not batch and not took_frame and lines.drained() and whole.drained():
                return

    def _safely(self, what: str, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except Exception as exc:  # one bad input never stops the service
            log.exception("unexpected error while %s; carrying on", what)
            self._emit(docs.event("error", where=what, error=f"{type(exc).__name__}: {exc}"))

    def close(self) -> list[str]:
        """At shut-down: open scans stay in the journal (they continue after the next start); their ids."""
        return [info.scan_id for info in self.journal.close()]

    @property
    def open_scans(self) -> int:
        return len(self.assembler)

    # ------------------------------------------------------------------ messages

    def _wanted(self, scan: LiveScan) -> bool:
        if scan.wanted is None:
            scan.wanted = (channel_key(scan.key[1]) == self._channel
                           and scan.key[2] == self.config.input.direction)
        return scan.wanted

    def ingest(self, received: Received) -> None:
        msg = received.message
        assert msg is not None
        if isinstance(msg, LineMessage):
            self._counters.add("lines")
        try:
            events = self.assembler.feed(msg, now=received.arrived)
        except WireError as exc:
            self._emit(docs.bad_input("zmq", str(exc), kind="message", n_bytes=received.n_bytes))
            return
        for event in events:
            if isinstance(event, LineAdded):
                assert isinstance(msg, LineMessage)
                self.line_added(event, msg)
            elif isinstance(event, ScanFinished):
                self.scan_finished(event, msg if isinstance(msg, FrameMessage) and event.reason == "frame" else None)
            elif isinstance(event, MessageIgnored):
                self._emit(docs.event("ignored", scan_id=event.scan_id, reason=event.reason))

    def line_added(self, event: LineAdded, msg: LineMessage, *, journal: bool = True) -> None:
        scan = event.scan
        assert isinstance(scan, LiveScan)
        if not self._wanted(scan):
            return
        if journal:
            if scan.journal is None:
                scan.journal = self.journal.open(msg.scan)
            try:
                scan.journal.line(event.row, msg.data, msg.t)
            except OSError as exc:
                log.error("scan %s: cannot journal line %d (%s); a crash now would lose it", event.key[0],
                          event.row, exc)
        if scan.leveller is None:
            self._start_live(scan)
        assert scan.leveller is not None
        levelled = scan.leveller.push(scan.data[event.row])
        self._emit(docs.level_line(event.key[0], scan.frame(), event.row, levelled, rows_done=scan.rows_valid,
                                   arrived=event.arrived))
        if scan.segmenter is not None:
            scan.segmenter.add_row(event.row, levelled)
            scan.new_lines += 1
            scan.arrived = event.arrived

    def _start_live(self, scan: LiveScan, *, announce: bool = True) -> None:
        cfg = self.config
        frame = scan.frame()
        scan.leveller = LineLeveller(
            frame.cols, reference_lines=cfg.level.stream_reference_lines,
            restore_slope_lines=cfg.level.stream_restore_slope_lines,
            restore_offset_lines=cfg.level.stream_restore_offset_lines, reject=cfg.level.stream_reject,
            anchor=cfg.level.stream_anchor,
        )
        reason = pitch_problem(self.model, frame, max_upsample=cfg.limits.max_upsample)
        grid = model_grid_shape(frame.data.shape, nm_per_px=frame.nm_per_px, target_nm_per_px=self.model.info.nm_per_px)
        if reason is None and grid[0] * grid[1] > LIVE_MAX_MODEL_PX:
            reason = (f"{grid[1]} x {grid[0]} model pixels is more than the live path takes "
                      f"({LIVE_MAX_MODEL_PX >> 20} M); the finished frame is segmented in tiles")
        if reason is not None:
            log.info("scan %s: no live results (%s)", scan.key[0], reason)
        else:
            try:
                scan.segmenter = LiveSegmenter(
                    self.model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px,
                    scan_direction=frame.scan_direction, min_score=cfg.model.min_score,
                    min_area_nm2=cfg.model.min_area_nm2, freeze_rows=cfg.live.freeze_rows, unit=frame.unit,
                )
            except (ValueError, ModelError) as exc:
                log.warning("scan %s: no live results (%s); the finished frame is still segmented", scan.key[0], exc)
        if announce:
            self._emit(docs.scan_started(scan.key[0], frame))

    def publish_partials(self) -> None:
        cadence = self.config.live.cadence_lines
        for scan in self.assembler.scans():
            assert isinstance(scan, LiveScan)
            if scan.segmenter is None or scan.new_lines < cadence:
                continue
            scan.new_lines = 0
            try:
                seg = scan.segmenter.segment()
            except (ValueError, ModelError, LevelError) as exc:
                scan.segmenter = None
                log.warning("scan %s: live segmentation failed (%s); no more partial results for it", scan.key[0],
                            exc)
                self._emit(docs.event("error", scan_id=scan.key[0], where="live segmentation", error=str(exc)))
                continue
            if seg.rows_done:
                scan.partials += 1
                # Only the rows that changed, but every KEYFRAME_PARTIALS-th time all rows done (for a
                # subscriber that joined late or missed some).
                rows = None if scan.partials % KEYFRAME_PARTIALS == 1 else scan.segmenter.changed_rows
                self._emit(docs.partial(scan.key[0], scan.frame(), seg, label_maps=self.config.publish.label_maps,
                                        map_rows=rows, arrived=scan.arrived))

    def scan_finished(self, finished: ScanFinished, whole: FrameMessage | None = None) -> None:
        scan = finished.scan
        if isinstance(scan, LiveScan) and not self._wanted(scan):
            log.debug("scan %s %s %s finished (%s); not the configured channel/direction", *finished.key,
                      finished.reason)
            return
        self._emit(docs.scan_finished(finished.key[0], reason=finished.reason, complete=finished.complete,
                                      rows_received=finished.rows_received, rows_missing=finished.rows_missing,
                                      rows=finished.frame.rows))
        writer = scan.journal if isinstance(scan, LiveScan) else None
        if whole is not None and writer is None:
            # A whole frame from the wire: journalled by the intake's thread, not here (it can take seconds).
            if not self.intake.queue.put(IntakeJob(finished, whole.scan), finished.frame.data.nbytes):
                self._emit(docs.bad_input("zmq", "refused: the intake of whole frames is full", kind="refused",
                                          scan_id=finished.key[0]))
            return
        path = None
        try:
            if whole is not None and writer is not None:
                writer.frame(finished.frame.data)  # a frame replacing a scan streamed line by line
            if writer is not None:
                path = writer.finish(complete=finished.complete, reason=finished.reason)
        except OSError as exc:
            log.error("scan %s: cannot journal its end (%s)", finished.key[0], exc)
        job = StreamJob(finished.key[0], finished.frame, finished.complete, path, finished.arrived)
        if not self.inbox.put_stream(job):
            if path is not None:
                self.inbox.defer(path)
                log.info("scan %s waits in the journal: %d MB of finished scans are queued before it",
                         finished.key[0], self.inbox.stream_bytes >> 20)
            else:
                self._emit(docs.bad_input(
                    "zmq", f"refused: {self.inbox.stream_bytes >> 20} MB of finished scans already wait "
                    "(limits.frames_queue_mb) and the scan could not be journalled", kind="refused",
                    scan_id=finished.key[0],
                ))

    # ------------------------------------------------------------------ recovery

    def recover(self, recovered: list[JournalFile]) -> None:
        """Continue where a killed daemon stopped: finished scans to the frames worker, open ones to the assembler.

        Each journal is handled on its own: one that cannot be replayed is
        reported and the others still come back.
        """
        for item in recovered:
            self._safely(f"recovering scan {item.info.scan_id} from {item.path.name}", self._recover_one, item)

    def _recover_one(self, item: JournalFile) -> None:
        if item.end is not None:
            finished = replay_finished(item)
            if finished is None:
                self.journal.discard(item.path)
                return
            log.info("recovered finished scan %s from the journal", item.info.scan_id)
            job = StreamJob(item.info.scan_id, finished.frame, finished.complete, item.path, None, recovered=True)
            if not self.inbox.put_stream(job):
                self.inbox.defer(item.path)
            return
        log.info("recovered open scan %s from the journal (%d lines); it continues", item.info.scan_id,
                 len(item.lines))
        writer = self.journal.adopt(item)
        now = self._clock()
        for row, values, t in item.lines:
            line = LineMessage(item.info, row, values, t)
            for event in self.assembler.feed(line, now=now):
                if isinstance(event, LineAdded):
                    assert isinstance(event.scan, LiveScan)
                    event.scan.journal = writer
                    self.line_added(event, line, journal=False)
                elif isinstance(event, ScanFinished):
                    self.scan_finished(event)
