"""The whole-frame path: finished streamed scans and complete files -> one result each.

One thread takes jobs from :class:`FrameInbox` in this order (the queue
policy, ``docs/daemon.md``):

1. finished streamed scans (``limits.frames_queue_mb`` of them in memory);
2. finished streamed scans that did not fit and wait in the journal on disk;
3. complete files from the watched folders (two at a time: the rest wait in
   the folder, where they are safe).

Each frame is checked first (:func:`stm_live.model.tiles.applicability`): a
frame too coarse for the model, or constant, gets a ``seg.frame`` saying why
it was not segmented, stored like any result so it is never retried. The
others are segmented whole, or in tiles within a fixed memory budget
(:func:`stm_live.model.tiles.segment_frame`), through the same code for a
streamed scan and a file, so the same scan gives the same detections either
way. Whatever happens to one frame, the next one is processed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..config import Config
from ..errors import ScanReadError
from ..frame import Frame
from ..ingest.journal import ScanJournal, read_journal
from ..ingest.watch import ReadyFile
from ..io import read_scan
from ..level import LevelError, level_frame
from ..model.runtime import SegmentationModel
from ..model.tiles import applicability, segment_frame
from ..publish import documents as docs
from ..publish.documents import Document
from ..publish.store import ResultStore
from .queues import ByteQueue
from .scans import replay_finished, scan_sha256

__all__ = ["FileJob", "FrameInbox", "FrameIntake", "FramesWorker", "IntakeJob", "StreamJob", "display_image"]

log = logging.getLogger("stm_live.daemon")

#: Complete files handed on by the watcher that wait for the frames worker (the rest wait in the folder).
FILES_QUEUED: Final = 2
#: Largest side of the image kept for an overlay PNG (bigger frames are shown subsampled).
OVERLAY_MAX_SIDE: Final = 2048
#: Whole frames from the wire at least this large wait for the whole-frame path in the journal on disk,
#: not in memory (read back when their turn comes: a 256 MB frame is not held twice).
LARGE_FRAME_BYTES: Final = 64 << 20


@dataclass(frozen=True, eq=False)
class StreamJob:
    """A finished streamed scan; ``journal`` is deleted once its result is stored."""

    scan_id: str
    frame: Frame
    complete: bool
    journal: Path | None
    arrived: float | None
    recovered: bool = False

    @property
    def nbytes(self) -> int:
        return int(self.frame.data.nbytes)


@dataclass(frozen=True, eq=False)
class FileJob:
    """A complete file from a watched folder; ``handed`` is the clock time the watcher handed it on."""

    ready: ReadyFile
    handed: float


class FrameInbox:
    """The frames worker's jobs: streamed scans (bounded by bytes), then deferred ones, then files.

    Parameters
    ----------
    stream_bytes : int
        Budget of finished streamed scans held in memory; beyond it
        :meth:`put_stream` refuses and the caller leaves the scan in the
        journal (:meth:`defer`).
    """

    def __init__(self, stream_bytes: int) -> None:
        self._cond = threading.Condition()
        self._stream: deque[StreamJob] = deque()
        self._deferred: deque[Path] = deque()
        self._files: deque[FileJob] = deque()
        self.max_stream_bytes = stream_bytes
        self.stream_bytes = 0
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._stream) + len(self._deferred) + len(self._files)

    def put_stream(self, job: StreamJob) -> bool:
        """Queue a finished scan if it fits (never waits); False when it does not."""
        with self._cond:
            if self._stream and self.stream_bytes + job.nbytes > self.max_stream_bytes:
                return False
            self._stream.append(job)
            self.stream_bytes += job.nbytes
            self._cond.notify_all()
            return True

    def defer(self, journal: Path) -> None:
        """A finished scan waits in its journal file until the streamed scans in memory are done."""
        with self._cond:
            self._deferred.append(journal)
            self._cond.notify_all()

    def put_file(self, job: FileJob, stopping: threading.Event) -> bool:
        """Queue a file, waiting while :data:`FILES_QUEUED` wait already; False when stopping."""
        with self._cond:
            while len(self._files) >= FILES_QUEUED:
                if stopping.is_set() or self._closed:
                    return False
                self._cond.wait(0.2)
            self._files.append(job)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> StreamJob | Path | FileJob | None:
        """The next job by priority; None on timeout (or once closed and empty: see :meth:`drained`)."""
        with self._cond:
            if not (self._stream or self._deferred or self._files or self._closed):
                self._cond.wait(timeout)
            item: StreamJob | Path | FileJob | None = None
            if self._stream:
                item = self._stream.popleft()
                self.stream_bytes -= item.nbytes
            elif self._deferred:
                item = self._deferred.popleft()
            elif self._files:
                item = self._files.popleft()
            self._cond.notify_all()
            return item

    def drained(self) -> bool:
        with self._cond:
            return self._closed and not (self._stream or self._deferred or self._files)

    def close(self) -> None:
        """No more jobs will come; the worker ends once the lanes are empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def display_image(frame: Frame) -> np.ndarray:
    """The frame for the overlay PNG: each line's median removed (shows the lattice); unscanned rows NaN.

    Frames larger than :data:`OVERLAY_MAX_SIDE` are subsampled first (a PNG of
    8192 x 8192 pixels helps nobody and would cost a gigabyte to draw).
    """
    step = max(1, -(-max(frame.rows, frame.cols) // OVERLAY_MAX_SIDE))
    data = frame.data[::step, ::step]
    rows = frame.valid_rows
    rows = slice(-(-rows.start // step), -(-rows.stop // step))
    image = np.full(data.shape, np.nan, np.float32)
    try:
        image[rows] = level_frame(data[rows], method="median")
    except (LevelError, ValueError):
        image[rows] = data[rows]
    return image


@dataclass(frozen=True, eq=False)
class IntakeJob:
    """A whole frame from the wire, finished at once, to journal and hand to the whole-frame path."""

    finished: Any  # ScanFinished
    info: Any  # ScanInfo

    @property
    def nbytes(self) -> int:
        return int(self.finished.frame.data.nbytes)


class FrameIntake:
    """Journals whole frames from the wire on a thread of its own, then hands them on.

    Writing a 256 MB frame to the journal takes a second or more; done by the
    live worker it would hold up every scan line behind it. The live worker
    only assembles the frame and queues it here (``limits.ingest_queue_mb``;
    it takes no more frames off the wire while this is full, so they are
    refused at the door and reported). Once journalled, a large frame waits
    for the whole-frame path in the journal (:data:`LARGE_FRAME_BYTES`), a
    small one in memory when there is room.
    """

    def __init__(self, queue_bytes: int, *, journal: ScanJournal, inbox: FrameInbox,
                 emit: Callable[[Document], None]) -> None:
        self.queue: ByteQueue[IntakeJob] = ByteQueue(queue_bytes)
        self.journal = journal
        self.inbox = inbox
        self._emit = emit
        self._busy = False

    def can_take(self, nbytes: int) -> bool:
        """Whether a frame of ``nbytes`` may be queued now: a large one only when the intake is idle.

        So that at most one large frame is between the wire and the journal at a time (memory).
        """
        if nbytes >= LARGE_FRAME_BYTES:
            return not self._busy and not len(self.queue)
        return self.queue.fits(nbytes)

    def run(self) -> None:
        while True:
            job = self.queue.get(0.5)
            if job is None:
                if self.queue.drained():
                    return
                continue
            self._busy = True
            try:
                self._take(job)
            except Exception as exc:  # one frame's trouble never stops the intake
                log.exception("unexpected error while journalling scan %s; carrying on", job.finished.key[0])
                self._emit(docs.event("error", scan_id=job.finished.key[0], where="journalling a whole frame",
                                      error=f"{type(exc).__name__}: {exc}"))
            finally:
                self._busy = False
                del job  # the frame's memory goes now, not when the next one comes

    def _take(self, job: IntakeJob) -> None:
        finished = job.finished
        scan_id = finished.key[0]
        path: Path | None = None
        try:
            writer = self.journal.open(job.info)
            writer.frame(finished.frame.data)
            path = writer.finish(complete=finished.complete, reason=finished.reason)
        except OSError as exc:
            log.error("scan %s: cannot journal it (%s); a crash now would lose it", scan_id, exc)
        stream = StreamJob(scan_id, finished.frame, finished.complete, path, finished.arrived)
        if path is not None and (job.nbytes >= LARGE_FRAME_BYTES or not self.inbox.put_stream(stream)):
            self.inbox.defer(path)
        elif path is None and not self.inbox.put_stream(stream):
            self._emit(docs.bad_input(
                "zmq", f"refused: {self.inbox.stream_bytes >> 20} MB of finished scans already wait "
                "(limits.frames_queue_mb) and the scan could not be journalled", kind="refused", scan_id=scan_id,
            ))


class FramesWorker:
    """The frames worker's loop: one result document per job, whatever happens to the previous one."""

    def __init__(
        self,
        config: Config,
        model: SegmentationModel,
        *,
        inbox: FrameInbox,
        store: ResultStore,
        journal: ScanJournal,
        emit: Callable[[Document], None],
        on_bad_file: Callable[[Path, str], None],
        remember: Callable[[Path, os.stat_result, str], None] = lambda path, st, sha: None,
        recheck: Callable[[Path], None] = lambda path: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.model = model
        self.inbox = inbox
        self.store = store
        self.journal = journal
        self._emit = emit
        self._on_bad_file = on_bad_file
        self._remember = remember
        self._recheck = recheck
        self._clock = clock
        self._next_model: SegmentationModel | None = None
        #: Nice increment of this thread and its inference threads (``live.whole_frame_nice``; 0: none).
        self.nice = config.live.whole_frame_nice

    def use_model(self, model: SegmentationModel) -> None:
        """Segment with ``model`` from the next frame on (thread-safe: the frame in flight keeps its model)."""
        self._next_model = model

    def _own_session(self, model: SegmentationModel) -> SegmentationModel:
        """A session of ``model`` made on this thread, so that its thread pool shares this thread's priority.

        Falls back to the shared session when the model's file cannot be loaded again.
        """
        if self.nice <= 0:
            return model
        try:
            return SegmentationModel(model.path, provider=self.config.model.provider, threads=self.config.model.threads,
                                     allow_spinning=False)
        except Exception as exc:  # the live path's session still works: use it, and say so
            log.warning("whole-frame path: cannot load %s again (%s); sharing the live path's session", model.path,
                        exc)
            return model

    def _lower_priority(self) -> None:
        """Whole frames yield the CPU to the live path: a nice value for this thread (Linux, macOS)."""
        if self.nice <= 0 or not hasattr(os, "setpriority"):
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as exc:
            log.info("whole-frame path: cannot lower its priority (%s); it competes with the live path", exc)

    def run(self) -> None:
        self._lower_priority()
        self.model = self._own_session(self.model)
        while True:
            job = self.inbox.get(0.5)
            if self._next_model is not None:  # after the wait: a frame that came after the swap uses the new model
                model, self._next_model = self._next_model, None
                self.model = self._own_session(model)
            if job is None:
                if self.inbox.drained():
                    return
                continue
            try:
                if isinstance(job, StreamJob):
                    self.process_stream(job)
                elif isinstance(job, FileJob):
                    self.process_file(job)
                else:
                    self.process_deferred(job)
            except Exception as exc:  # a bug for one frame: say so, and take the next
                log.exception("unexpected error while processing %s; carrying on", job)
                self._emit(docs.event("error", where="whole-frame path", error=f"{type(exc).__name__}: {exc}"))
            finally:
                del job  # a finished frame's memory goes now, not when the next job comes

    # ------------------------------------------------------------------ jobs

    def process_deferred(self, path: Path) -> None:
        """A finished scan that waited in the journal: read it back and process it like any other."""
        try:
            item = read_journal(path)
        except OSError as exc:
            self._emit(docs.event("error", where="reading a deferred scan", source=str(path), error=str(exc)))
            return
        finished = replay_finished(item) if item is not None else None
        if item is None or finished is None:
            self.journal.discard(path)
            return
        self.process_stream(StreamJob(item.info.scan_id, finished.frame, finished.complete, path, None))

    def process_stream(self, job: StreamJob) -> None:
        frame = job.frame
        sha = scan_sha256(frame)
        journal = job.journal

        def stored() -> None:
            self.journal.discard(journal)

        if job.recovered and self.store.is_processed(sha):
            log.info("scan %s: its result was stored before the restart", job.scan_id)
            stored()
            return
        self._segment_and_emit(job.scan_id, frame, source="zmq", complete=job.complete, sha256=sha,
                               arrived=job.arrived, on_stored=stored)

    def process_file(self, job: FileJob) -> None:
        """Read the file once; hash, check and segment those same bytes (a file replaced meanwhile is re-checked)."""
        cfg = self.config.input
        path = job.ready.path
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            log.warning("%s: gone before it could be read", path)
            return
        except OSError as exc:
            self._on_bad_file(path, f"cannot read it: {exc.strerror or exc}")
            return
        if len(data) != job.ready.size:
            log.info("%s: changed since it was complete (%d -> %d bytes); checked again", path, job.ready.size,
                     len(data))
            self._recheck(path)
            return
        sha = hashlib.sha256(data).hexdigest()
        if job.ready.sha256 is None:
            self._remember(path, st, sha)
        if self.store.is_processed(sha):
            self._emit(docs.event("duplicate", scan_id=path.stem, source=str(path), sha256=sha))
            return
        try:
            frame = read_scan(path, width_nm=cfg.width_nm, height_nm=cfg.height_nm, data=data).frame(
                cfg.channel, cfg.direction)
        except ScanReadError as exc:
            self._on_bad_file(path, exc.reason)
            return
        del data  # the frame holds what it needs
        self._segment_and_emit(path.stem, frame, source=str(path), complete=frame.complete, sha256=sha,
                               arrived=job.handed, on_stored=None)

    def _segment_and_emit(
        self, scan_id: str, frame: Frame, *, source: str, complete: bool, sha256: str, arrived: float | None,
        on_stored: Callable[[], None] | None,
    ) -> None:
        cfg = self.config
        model = self.model  # one model for the whole frame, even if it is swapped meanwhile
        reason = applicability(model, frame, max_upsample=cfg.limits.max_upsample)
        if reason is None:
            try:
                seg = segment_frame(model, frame, min_score=cfg.model.min_score,
                                    min_area_nm2=cfg.model.min_area_nm2, tile_model_px=cfg.limits.tile_model_px)
            except Exception as exc:  # the model cannot take this frame: say why, once, and store that
                log.error("%s (%s): cannot segment it: %s: %s", scan_id, source, type(exc).__name__, exc)
                reason = f"not segmented: segmentation failed: {type(exc).__name__}: {exc}"[:1000]
            else:
                image = display_image(frame) if self.store.overlay_png else None
                self._emit(docs.frame_result(scan_id, frame, seg, source=source, complete=complete, sha256=sha256,
                                             label_maps=cfg.publish.label_maps, arrived=arrived, image=image,
                                             on_stored=on_stored))
                return
        log.info("%s (%s): %s", scan_id, source, reason)
        self._emit(docs.not_segmented(scan_id, frame, model_id=model.id, model_name=model.name,
                                      reason=reason, source=source, complete=complete, sha256=sha256,
                                      arrived=arrived, on_stored=on_stored))
