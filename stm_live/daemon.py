"""The daemon: sources, live and whole-frame segmentation and sinks, wired together.

Nothing here computes anything of its own: every stage lives in its module
(:mod:`stm_live.ingest`, :mod:`stm_live.level`, :mod:`stm_live.model`,
:mod:`stm_live.publish`); :class:`Daemon` owns the threads and the bounded
queues between them, and what happens when something goes wrong.

Threads (ZeroMQ sockets are not thread-safe: each socket has one thread)::

    receiver   SUB socket (LineSource) --[lines queue]--> live
    live       LineAssembler -> per scan {LineLeveller, LiveSegmenter}
               -> seg.partial --[publish queue]--> publisher
               -> finished scans --[frame inbox]--> frames
    watcher    FolderWatcher (its own threads) --[frame inbox]--> frames
    frames     read file / whole frame -> SegmentationModel.segment
               -> seg.frame --[publish queue]--> publisher; ResultStore; EventLog
    publisher  XPUB socket (Publisher): encodes, sends, never blocks, counts drops
    main       start-up, signals, heartbeat (status message and state.json), shut-down

* **Live path.** Each accepted line of the configured channel and direction
  (``input.channel``, ``input.direction``) is levelled by the scan's
  :class:`~stm_live.level.LineLeveller` *in arrival order* and added to its
  :class:`~stm_live.model.live.LiveSegmenter`. Lines that arrive out of order
  are levelled against the lines that arrived before them (the leveller's
  reference is a running average of recent lines, so a line a few rows away
  is as good a reference as its neighbour), a duplicate replaces its row
  (the last copy wins, as in the assembler) and a missing line stays empty.
  The final result never depends on this: it comes from the whole-frame path.
* **Cadence and coalescing.** The live worker takes every message waiting in
  its queue (up to :data:`BATCH`) before it segments, then segments each scan
  that received at least ``live.cadence_lines`` new lines once, on its latest
  state. When segmenting takes longer than a line, the lines that arrived
  meanwhile are therefore coalesced into one update: requests never pile up
  and the partial result is never older than the newest line.
* **Whole frames.** A finished scan goes through
  :meth:`SegmentationModel.segment` on the whole frame, the same path as a
  file, so the same scan streamed or saved gives the same detections. Streamed
  scans go before files in the frame inbox.
* **Durability.** Accepted lines are journalled (:mod:`stm_live.ingest.journal`)
  until the scan's result is stored; a result enters the processed set only
  once its files are in place (:class:`~stm_live.publish.ResultStore`). After
  ``kill -9`` and a restart, finished scans whose result was not stored are
  processed, open scans continue with the lines that arrive next, files are
  re-checked against the processed set: every completed input is processed
  once, none is lost.
* **Bad input** (a malformed message, a bad file, a frame the model cannot
  take) is logged with the reason, written to the event log and counted;
  bad files move to ``quarantine/``. Nothing stops the service.
* **SIGTERM / SIGINT**: the watcher and the receiver stop, messages already
  received are processed, the frame in flight and every finished scan are
  segmented, published and stored, the scans still open stay in the journal
  (they continue after the next start), queues are flushed; exit status 0.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import queue
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Final, cast

import numpy as np
import zmq

from . import __version__
from .config import Config
from .errors import ConfigError, ModelError, ScanReadError, WireError
from .frame import Frame, Segmentation
from .ingest.assemble import FinishReason, LineAdded, LineAssembler, MessageIgnored, ScanFinished, ScanKey
from .ingest.journal import JournalFile, ScanJournal, recover
from .ingest.stream import LineSource, Received
from .ingest.watch import FolderWatcher, ReadyFile
from .io import read_frame
from .level import LevelError, LineLeveller, level_frame
from .model.live import LiveSegmenter
from .model.runtime import SegmentationModel, result_record
from .publish import EventLog, Publisher, ResultStore, array_sha256, atomic_write, stored_record
from .wire import FrameMessage, LineMessage, SegMessage, StatusMessage, encode

__all__ = [
    "BATCH",
    "STATE_FILE",
    "Daemon",
    "frame_message",
    "partial_message",
    "read_state",
]

log = logging.getLogger(__name__)

#: Name of the state file in ``results.dir`` (what ``stm-live status`` reads).
STATE_FILE: Final = "state.json"
#: Most messages the live worker takes from its queue before it segments.
BATCH: Final = 512
#: Finished scans waiting for the whole-frame path before the live worker waits.
STREAM_FRAMES_QUEUED: Final = 64
#: Complete files waiting for the whole-frame path before the watcher waits.
FILES_QUEUED: Final = 2
#: Results waiting for the publisher thread before new ones are dropped (and counted).
PUBLISH_QUEUED: Final = 1000
#: How long the shut-down waits for the frame in flight and the queued finished scans.
DRAIN_TIMEOUT_S: Final = 120.0

_NAME_NOISE = re.compile(r"[\s_\-]+")
_COUNTERS: Final = (
    "messages", "lines", "partials", "frames", "files", "errors", "bad_messages", "quarantined", "duplicates",
    "ignored",
)


class _Stop:
    """Sentinel: no more items will follow in this queue."""


_STOP: Final = _Stop()


def _channel_key(name: str) -> str:
    return _NAME_NOISE.sub("", name).lower()


def _utc(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------
# Pure builders
# --------------------------------------------------------------------------


def partial_message(
    scan_id: str, frame: Frame, seg: Segmentation, *, label_maps: bool, up: bool, latency_ms: float = 0.0
) -> SegMessage:
    """The ``seg.partial`` message of a scan in progress.

    Parameters
    ----------
    scan_id : str
        The scan.
    frame : Frame
        Any frame of the scan (only its size is used).
    seg : Segmentation
        :meth:`LiveSegmenter.segment` of the rows so far; ``rows_done``
        counts from the scan's start edge.
    label_maps : bool
        Attach the class map of the rows done (config ``publish.label_maps``).
    up : bool
        Upward scan: the rows done are the bottom ones.
    latency_ms : float
        Filled in by the publisher when it sends.
    """
    rows_done = int(seg.rows_done or 0)
    row0 = frame.rows - rows_done if up else 0
    cmap = seg.class_map[row0:row0 + rows_done] if label_maps else None
    return SegMessage(
        scan_id=scan_id, rows_done=rows_done, rows=frame.rows, cols=frame.cols, width_m=frame.width_m,
        height_m=frame.height_m, model_id=seg.model_id, model_name=seg.model_name, classes=tuple(seg.classes),
        detections=tuple(seg.detections), latency_ms=latency_ms, class_map=cmap, map_row0=row0,
    )


def frame_message(
    scan_id: str, frame: Frame, seg: Segmentation, *, source: str, complete: bool, label_maps: bool,
    latency_ms: float = 0.0,
) -> SegMessage:
    """The ``seg.frame`` message of a finished frame (streamed: ``source="zmq"``, or a file path).

    The class map covers the frame's acquired rows (``frame.valid_rows``).
    """
    rows = frame.valid_rows
    return SegMessage(
        scan_id=scan_id, rows_done=frame.rows_valid or 0, rows=frame.rows, cols=frame.cols, width_m=frame.width_m,
        height_m=frame.height_m, model_id=seg.model_id, model_name=seg.model_name, classes=tuple(seg.classes),
        detections=tuple(seg.detections), latency_ms=latency_ms,
        class_map=seg.class_map[rows] if label_maps else None, map_row0=rows.start, final=True, source=source,
        complete=complete,
    )


def read_state(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The daemon's state file in ``results_dir`` (what ``stm-live status`` shows).

    Raises
    ------
    FileNotFoundError
        No daemon has run with this results folder.
    ValueError
        The file is not a JSON object.
    """
    path = Path(results_dir) / STATE_FILE
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return state


# --------------------------------------------------------------------------
# Small thread-safe parts
# --------------------------------------------------------------------------


class _Counters:
    """Running totals shared by the threads."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


@dataclass(frozen=True, eq=False)
class _StreamJob:
    """A finished streamed scan for the whole-frame path; ``journal`` is deleted once it is stored."""

    finished: ScanFinished
    journal: Path | None
    recovered: bool = False


@dataclass(frozen=True, eq=False)
class _FileJob:
    """A complete file for the whole-frame path; ``handed`` is the clock time the watcher handed it on."""

    ready: ReadyFile
    handed: float


class _FrameInbox:
    """Two bounded lanes into the frames worker: finished streamed scans first, then files."""

    def __init__(self, stream_cap: int, file_cap: int) -> None:
        self._cond = threading.Condition()
        self._stream: deque[_StreamJob] = deque()
        self._files: deque[_FileJob] = deque()
        self._stream_cap = stream_cap
        self._file_cap = file_cap
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._stream) + len(self._files)

    def put_stream(self, job: _StreamJob) -> None:
        with self._cond:
            while len(self._stream) >= self._stream_cap and not self._closed:
                self._cond.wait(0.5)
            self._stream.append(job)
            self._cond.notify_all()

    def put_file(self, job: _FileJob, stopping: threading.Event) -> bool:
        with self._cond:
            while len(self._files) >= self._file_cap:
                if stopping.is_set() or self._closed:
                    return False
                self._cond.wait(0.2)
            self._files.append(job)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> _StreamJob | _FileJob | _Stop | None:
        with self._cond:
            if not (self._stream or self._files or self._closed):
                self._cond.wait(timeout)
            item: _StreamJob | _FileJob | _Stop | None = None
            if self._stream:
                item = self._stream.popleft()
            elif self._files:
                item = self._files.popleft()
            elif self._closed:
                item = _STOP
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more jobs will come; :meth:`get` returns the stop sentinel once the lanes are empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(eq=False)
class _LiveScan:
    """The live state of one scan in progress."""

    key: ScanKey
    frame: Frame
    leveller: LineLeveller
    segmenter: LiveSegmenter | None
    new_lines: int = 0
    arrived: float = 0.0


@dataclass(frozen=True, eq=False)
class _Outgoing:
    """A message for the publisher; its ``latency_ms`` is measured from ``arrived`` when it is sent."""

    message: SegMessage | StatusMessage
    arrived: float | None = None


class _ResultsLock:
    """An exclusive lock on the results folder: one daemon owns it (released by the OS if the process dies)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "daemon.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the daemon's life
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; one daemon per folder is up to the operator
            self._fh = fh
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(
                f"results.dir {self.path.parent} is in use by another stm-live daemon (pid {owner}); "
                "give each daemon its own results folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------


@dataclass
class _Threads:
    receiver: threading.Thread | None = None
    live: threading.Thread | None = None
    frames: threading.Thread | None = None
    publisher: threading.Thread | None = None
    running: list[threading.Thread] = field(default_factory=list)


class Daemon:
    """``stm-live run``: the service, from a checked configuration.

    Parameters
    ----------
    config : Config
        The effective configuration (:func:`stm_live.config.load_config`).
    model : SegmentationModel, optional
        An already loaded model; default: load ``config.model``.
    context : zmq.Context, optional
        Default: a context of its own, terminated on :meth:`close`.
    clock : callable
        Monotonic seconds, for latencies and time-outs.

    Examples
    --------
    In a program (``stm-live run`` does the same with signals)::

        daemon = Daemon(load_config())
        daemon.start()            # binds, starts the threads; raises on a bad set-up
        ...
        daemon.stop()             # from any thread
        daemon.close()            # drains, flushes, closes; idempotent
    """

    def __init__(
        self,
        config: Config,
        *,
        model: SegmentationModel | None = None,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.model = model
        self._own_context = context is None
        self._context = context
        self._clock = clock
        self.results_dir = Path(config.results.dir)
        self.counters = _Counters(_COUNTERS)
        self.state = "starting"
        self.store: ResultStore | None = None
        self.events: EventLog | None = None
        self.journal: ScanJournal | None = None
        self.source: LineSource | None = None
        self.publisher: Publisher | None = None
        self.watcher: FolderWatcher | None = None
        self.assembler = LineAssembler(
            max_open_scans=config.ingest.max_open_scans, scan_timeout_s=config.ingest.scan_timeout_s, clock=clock
        )
        self._lines: queue.Queue[Received | _Stop] = queue.Queue(maxsize=config.live.queue_messages)
        self._outgoing: queue.Queue[_Outgoing | _Stop] = queue.Queue(maxsize=PUBLISH_QUEUED)
        self._inbox = _FrameInbox(STREAM_FRAMES_QUEUED, FILES_QUEUED)
        self._live: dict[ScanKey, _LiveScan] = {}
        self._threads = _Threads()
        self._stop_requested = threading.Event()
        self._stop_ingest = threading.Event()
        self._subscribed = threading.Event()
        self._lock = _ResultsLock(self.results_dir)
        self._started = clock()
        self._started_wall = time.time()
        self._closed = False
        self._recovered: list[JournalFile] = []
        self._bad_logged = 0
        self._channel = _channel_key(config.input.channel)
        self._endpoints: dict[str, str] = {}

    # ------------------------------------------------------------ life cycle

    @property
    def ingest_endpoint(self) -> str | None:
        """The bound ingest address (real port when bound to ``*``), None when ingest is off."""
        return self._endpoints.get("ingest")

    @property
    def publish_endpoint(self) -> str | None:
        """The bound publish address (real port when bound to ``*``), None when publishing is off."""
        return self._endpoints.get("publish")

    def start(self) -> None:
        """Load the model, open the results folder, bind the sockets, start the threads and the watcher.

        Raises
        ------
        ConfigError
            An endpoint cannot be bound, a watched folder is missing, the
            results folder is in use by another daemon.
        ModelError
            The model cannot be loaded.
        """
        cfg = self.config
        try:
            try:
                self.results_dir.mkdir(parents=True, exist_ok=True)
                self._lock.acquire()
            except OSError as exc:
                raise ConfigError(f"results.dir {self.results_dir}: cannot use it: {exc.strerror or exc}") from None
            if self.model is None:
                # No spinning: the live and whole-frame threads share the cores (see SegmentationModel).
                self.model = SegmentationModel(cfg.model.path, provider=cfg.model.provider, threads=cfg.model.threads,
                                               allow_spinning=False)
            if not self.model.has_head:
                raise ModelError(
                    f"{self.model.path}: a bare encoder cannot segment; make a model from it with `stm-live adapt`"
                )
            self.store = ResultStore(self.results_dir, overlay_png=cfg.results.overlay_png)
            self.events = EventLog(self.results_dir / "events.jsonl")
            self._recovered = recover(self.results_dir / "journal")
            self.journal = ScanJournal(self.results_dir / "journal")
            if self._context is None:
                self._context = zmq.Context()
            if cfg.publish.endpoint:
                self.publisher = self._bind("publish.endpoint", cfg.publish.endpoint,
                                            lambda ep: Publisher.bind(self._ctx, ep, send_hwm=cfg.publish.send_hwm))
                self._endpoints["publish"] = self.publisher.endpoint
            if cfg.ingest.endpoint:
                self.source = self._bind("ingest.endpoint", cfg.ingest.endpoint,
                                         lambda ep: LineSource.bind(self._ctx, ep, rcv_hwm=cfg.ingest.rcv_hwm,
                                                                    clock=self._clock))
                self._endpoints["ingest"] = self.source.endpoint
            self._start_threads()
            if cfg.watch.folders:
                self.watcher = FolderWatcher(
                    cfg.watch.folders, on_file=self._on_file, on_bad=self._on_bad_file,
                    patterns=cfg.watch.patterns, recursive=cfg.watch.recursive,
                    is_processed=self.store.is_processed, on_duplicate=self._on_duplicate_file,
                    retry_initial_s=cfg.watch.retry_initial_s, retry_max_s=cfg.watch.retry_max_s,
                    settle_timeout_s=cfg.watch.settle_timeout_s, exclude=[self.results_dir],
                    polling=cfg.watch.polling, clock=self._clock,
                )
                self.watcher.start()
        except BaseException:
            self.stop()
            self.close()
            raise
        self.state = "running"
        assert self.model is not None
        self._event(
            "start", pid=os.getpid(), version=__version__, model=self._model_summary(),
            ingest=self.ingest_endpoint, publish=self.publish_endpoint,
            watch=[str(f) for f in cfg.watch.folders], recovered_scans=len(self._recovered),
        )
        log.info(
            "running: model %s [%s]; ingest %s; publish %s; watching %s; results in %s",
            self.model.name, self.model.id, self.ingest_endpoint or "off", self.publish_endpoint or "off",
            ", ".join(map(str, cfg.watch.folders)) or "no folder", self.results_dir,
        )
        self.heartbeat()

    @property
    def _ctx(self) -> zmq.Context[Any]:
        assert self._context is not None
        return self._context

    @staticmethod
    def _bind(key: str, endpoint: str, bind: Callable[[str], Any]) -> Any:
        try:
            return bind(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"{key} {endpoint}: cannot bind: {exc}") from None

    def _start_threads(self) -> None:
        t = self._threads
        t.publisher = threading.Thread(target=self._guard(self._publisher_loop), name="stm-live-publish", daemon=True)
        t.frames = threading.Thread(target=self._guard(self._frames_loop), name="stm-live-frames", daemon=True)
        t.live = threading.Thread(target=self._guard(self._live_loop), name="stm-live-live", daemon=True)
        t.running = [t.publisher, t.frames, t.live]
        if self.source is not None:
            t.receiver = threading.Thread(target=self._guard(self._receiver_loop), name="stm-live-ingest",
                                          daemon=True)
            t.running.append(t.receiver)
        for thread in t.running:
            thread.start()

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except Exception:  # a bug in a loop: say so loudly, and stop the service cleanly
                log.exception("%s failed; stopping the daemon", threading.current_thread().name)
                self.counters.add("errors")
                self.stop()

        return run

    def stop(self) -> None:
        """Ask the daemon to stop (thread- and signal-safe); :meth:`close` does the work."""
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop_requested.is_set()

    def wait(self) -> None:
        """Publish heartbeats until a stop is requested (the main thread's job)."""
        period = self.config.publish.heartbeat_s
        while not self._stop_requested.wait(period):
            self.heartbeat()

    def close(self) -> None:
        """Stop the sources, finish what was received, flush the sinks, close everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_requested.set()
        if self.state == "running":
            self.state = "stopping"
            self.heartbeat()
        t = self._threads
        if self.watcher is not None:
            self.watcher.stop()
        self._stop_ingest.set()
        if t.receiver is not None:
            t.receiver.join()
        elif t.live is not None:
            self._put_line(_STOP)
        if t.live is not None:
            t.live.join()
        self._inbox.close()
        if t.frames is not None:
            t.frames.join(DRAIN_TIMEOUT_S)
            if t.frames.is_alive():
                log.error("the frame in flight did not finish within %.0f s; leaving it", DRAIN_TIMEOUT_S)
        if t.publisher is not None:
            if self.state == "stopping":
                self.heartbeat()
            self._put_outgoing(_STOP, block=True)
            t.publisher.join(10.0)
        for sock in (self.source, self.publisher):
            if sock is not None:
                sock.close()
        if self.journal is not None:
            open_scans = self.journal.open_keys
            self.journal.close()
            if open_scans:
                log.info("%d scan(s) still open kept in the journal; they continue after the next start: %s",
                         len(open_scans), ", ".join(k[0] for k in open_scans))
        if self._own_context and self._context is not None:
            self._context.term()
        if self.state == "stopping":
            self._event("stop", counters=self._counter_values())
            self._write_state("stopped")
            self.state = "stopped"
        if self.events is not None:
            self.events.close()
        self._lock.release()

    def run(self) -> int:
        """Start, serve until SIGTERM / SIGINT (or :meth:`stop`), shut down cleanly; return 0."""
        self.start()
        restore = self._install_signals()
        try:
            self.wait()
            log.info("stopping: finishing the frame in flight and flushing")
        finally:
            self.close()
            restore()
        counters = self._counter_values()
        log.info("stopped: %d frame(s), %d line(s), %d error(s), %d dropped", counters["frames"],
                 counters["lines"], counters["errors"], counters["dropped"])
        return 0

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        names = ["SIGTERM", "SIGINT", "SIGBREAK"]  # SIGBREAK: Ctrl+Break on Windows
        previous: dict[int, Any] = {}

        first: list[float] = []

        def handler(signum: int, _frame: object) -> None:
            now = time.monotonic()
            if not first:
                first.append(now)
                self.stop()
            elif now - first[0] > 1.0:  # a signal sent twice at once (to a process group) is one request
                log.warning("second %s while stopping: exiting now (results stored so far are safe)",
                            signal.Signals(signum).name)
                os._exit(1)

        for name in names:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """True once a subscriber has subscribed to the publish socket (up to ``timeout_s``)."""
        return self._subscribed.wait(timeout_s)

    # ------------------------------------------------------------- status

    def _model_summary(self) -> dict[str, Any]:
        assert self.model is not None
        return {"id": self.model.id, "name": self.model.name, "path": str(self.model.path),
                "classes": list(self.model.classes)}

    def _counter_values(self) -> dict[str, int]:
        values = self.counters.snapshot()
        values["dropped"] = (self.publisher.dropped if self.publisher is not None else 0) + values.pop(
            "publish_queue_full", 0)
        values["open_scans"] = len(self._live)
        return values

    def _queue_depths(self) -> dict[str, int]:
        return {
            "lines": self._lines.qsize(),
            "frames": len(self._inbox),
            "publish": self._outgoing.qsize(),
            "files_pending": self.watcher.pending if self.watcher is not None else 0,
        }

    def status(self) -> StatusMessage:
        """The heartbeat as it would go out now."""
        state = self.state if self.state in ("starting", "running", "stopping") else "stopping"
        return StatusMessage(
            state=cast(Any, state), uptime_s=self._clock() - self._started, counters=self._counter_values(),
            queues=self._queue_depths(), version=__version__, t=time.time(),
            model_id=self.model.id if self.model is not None else None,
            model_name=self.model.name if self.model is not None else None,
        )

    def heartbeat(self) -> None:
        """Publish a ``status`` message and rewrite the state file."""
        self._put_outgoing(_Outgoing(self.status()))
        self._write_state(self.state)

    def _write_state(self, state: str) -> None:
        msg = self.status()
        doc = {
            "v": 1, "state": state, "pid": os.getpid(), "version": __version__,
            "started": _utc(self._started_wall), "t": round(time.time(), 3), "updated": _utc(time.time()),
            "uptime_s": round(msg.uptime_s, 3), "heartbeat_s": self.config.publish.heartbeat_s,
            "endpoints": {"ingest": self.ingest_endpoint, "publish": self.publish_endpoint},
            "results_dir": str(self.results_dir.resolve()), "watch": [str(f) for f in self.config.watch.folders],
            "model": self._model_summary() if self.model is not None else None,
            "counters": dict(msg.counters), "queues": dict(msg.queues),
        }
        text = json.dumps(doc, indent=1).encode() + b"\n"
        try:
            atomic_write(self.results_dir / STATE_FILE, lambda fh: fh.write(text), fsync=False)
        except OSError as exc:
            log.warning("cannot write the state file in %s: %s", self.results_dir, exc)

    def _event(self, kind: str, **context: Any) -> None:
        if self.events is not None:
            try:
                self.events.write(kind, **context)
            except (OSError, ValueError) as exc:
                log.warning("cannot write to the event log: %s", exc)

    # ------------------------------------------------------------- queues

    def _put_line(self, item: Received | _Stop) -> bool:
        """Into the live worker's queue; waits while it is full (ZeroMQ buffers meanwhile)."""
        deadline = self._clock() + 30.0
        while True:
            try:
                self._lines.put(item, timeout=0.1)
                return True
            except queue.Full:
                if isinstance(item, _Stop) and self._clock() > deadline:
                    log.error("the live worker does not take messages; stopping without it")
                    return False
                if not isinstance(item, _Stop) and self._stop_ingest.is_set():
                    return False

    def _put_outgoing(self, item: _Outgoing | _Stop, *, block: bool = False) -> None:
        if self.publisher is None or self._threads.publisher is None:
            return
        try:
            if block:
                self._outgoing.put(item, timeout=5.0)
            else:
                self._outgoing.put_nowait(item)
        except queue.Full:
            self.counters.add("publish_queue_full")
            drops = self.counters.snapshot()["publish_queue_full"]
            if drops == 1 or drops % 1000 == 0:
                log.warning("the publisher is not keeping up: %d result(s) dropped so far", drops)

    # ------------------------------------------------------------- receiver

    def _receiver_loop(self) -> None:
        assert self.source is not None
        try:
            while not self._stop_ingest.is_set():
                try:
                    received = self.source.receive(0.1)
                except Exception as exc:  # not a malformed message (those come back as errors): the socket
                    self.counters.add("errors")
                    log.exception("receiving from %s failed; retrying", self.ingest_endpoint)
                    self._event("error", where="receiving", error=f"{type(exc).__name__}: {exc}")
                    self._stop_ingest.wait(1.0)
                    continue
                if received is not None:
                    self._put_line(received)
        finally:
            self._put_line(_STOP)  # the live worker ends after the last message received

    # ------------------------------------------------------------- live worker

    def _live_loop(self) -> None:
        self._safely("recovering the scan journal", self._recover)
        next_expire = self._clock() + 1.0
        while True:
            try:
                first = self._lines.get(timeout=0.5)
            except queue.Empty:
                first = None
            batch: list[Received] = []
            stop = isinstance(first, _Stop)
            if isinstance(first, Received):
                batch.append(first)
                while len(batch) < BATCH:
                    try:
                        item = self._lines.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Stop):
                        stop = True
                        break
                    batch.append(item)
            for received in batch:
                self._safely("handling a message", self._ingest, received)
            if not stop:
                self._safely("segmenting partial frames", self._publish_partials)
            now = self._clock()
            if now >= next_expire:
                next_expire = now + 1.0
                for finished in self.assembler.expire(now=now):
                    self._safely("finishing a scan", self._scan_finished, finished)
            if stop:
                return

    def _safely(self, what: str, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except Exception as exc:  # one bad input never stops the service
            self.counters.add("errors")
            log.exception("unexpected error while %s; carrying on", what)
            self._event("error", where=what, error=f"{type(exc).__name__}: {exc}")

    def _wanted(self, key: ScanKey) -> bool:
        return _channel_key(key[1]) == self._channel and key[2] == self.config.input.direction

    def _ingest(self, received: Received) -> None:
        self.counters.add("messages")
        if received.error is not None or received.message is None:
            self._bad_message(str(received.error), received.n_bytes)
            return
        msg = received.message
        if isinstance(msg, LineMessage):
            self.counters.add("lines")
        try:
            events = self.assembler.feed(msg, now=received.arrived)
        except WireError as exc:
            self._bad_message(str(exc), received.n_bytes)
            return
        for event in events:
            if isinstance(event, LineAdded):
                assert isinstance(msg, LineMessage)
                self._line_added(event, msg)
            elif isinstance(event, ScanFinished):
                whole = msg if isinstance(msg, FrameMessage) and event.reason == "frame" else None
                self._scan_finished(event, whole)
            elif isinstance(event, MessageIgnored):
                self.counters.add("ignored")
                log.info("scan %s: %s", event.scan_id, event.reason)
                self._event("ignored", scan_id=event.scan_id, reason=event.reason)

    def _bad_message(self, reason: str, n_bytes: int) -> None:
        self.counters.add("errors")
        self.counters.add("bad_messages")
        self._bad_logged += 1
        if self._bad_logged <= 20 or self._bad_logged % 1000 == 0:
            log.warning("message dropped: %s", reason)
            if self._bad_logged == 20:
                log.warning("more dropped messages are logged every 1000th only (all are in events.jsonl)")
        self._event("bad_message", reason=reason, bytes=n_bytes)

    def _line_added(self, event: LineAdded, msg: LineMessage, *, journal: bool = True) -> None:
        if not self._wanted(event.key):
            return
        if journal and self.journal is not None:
            try:
                self.journal.line(event.key, msg.scan, event.row, msg.data, msg.t)
            except OSError as exc:
                self.counters.add("errors")
                log.error("scan %s: cannot journal line %d (%s); a crash now would lose it", event.key[0],
                          event.row, exc)
        state = self._live.get(event.key)
        if state is None:
            state = self._live[event.key] = self._new_live_scan(event)
        state.frame = event.frame
        if state.segmenter is None:
            return
        levelled = state.leveller.push(event.frame.data[event.row])
        state.segmenter.add_row(event.row, levelled)
        state.new_lines += 1
        state.arrived = event.arrived

    def _new_live_scan(self, event: LineAdded) -> _LiveScan:
        cfg = self.config
        frame = event.frame
        assert self.model is not None
        leveller = LineLeveller(
            frame.cols, reference_lines=cfg.level.stream_reference_lines,
            restore_slope_lines=cfg.level.stream_restore_slope_lines,
            restore_offset_lines=cfg.level.stream_restore_offset_lines, reject=cfg.level.stream_reject,
        )
        segmenter: LiveSegmenter | None = None
        try:
            segmenter = LiveSegmenter(
                self.model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px,
                scan_direction=frame.scan_direction, min_score=cfg.model.min_score,
                min_area_nm2=cfg.model.min_area_nm2, freeze_rows=cfg.live.freeze_rows,
            )
        except (ValueError, ModelError) as exc:
            self.counters.add("errors")
            log.warning("scan %s: no live results (%s); the finished frame is still segmented", event.key[0], exc)
        log.info("scan %s started (%s %s, %d x %d px, %.4g x %.4g nm, scanning %s)", event.key[0], event.key[1],
                 event.key[2], frame.cols, frame.rows, frame.width_nm, frame.height_nm, frame.scan_direction)
        self._event("scan_started", scan_id=event.key[0], channel=event.key[1], direction=event.key[2],
                    rows=frame.rows, cols=frame.cols, width_nm=frame.width_nm, height_nm=frame.height_nm,
                    scan_direction=frame.scan_direction)
        return _LiveScan(event.key, frame, leveller, segmenter)

    def _publish_partials(self) -> None:
        cadence = self.config.live.cadence_lines
        for state in self._live.values():
            if state.segmenter is None or state.new_lines < cadence:
                continue
            state.new_lines = 0
            try:
                seg = state.segmenter.segment()
            except (ValueError, ModelError, LevelError) as exc:
                state.segmenter = None
                self.counters.add("errors")
                log.warning("scan %s: live segmentation failed (%s); no more partial results for it",
                            state.key[0], exc)
                continue
            if not seg.rows_done:
                continue
            msg = partial_message(state.key[0], state.frame, seg, label_maps=self.config.publish.label_maps,
                                  up=state.frame.scan_direction == "up")
            self._put_outgoing(_Outgoing(msg, state.arrived))
            self.counters.add("partials")

    def _scan_finished(self, finished: ScanFinished, whole: FrameMessage | None = None) -> None:
        self._live.pop(finished.key, None)
        if not self._wanted(finished.key):
            log.debug("scan %s %s %s finished (%s); not the configured channel/direction", *finished.key,
                      finished.reason)
            return
        path: Path | None = None
        if self.journal is not None:
            try:
                if whole is not None:
                    self.journal.frame(finished.key, whole.scan, finished.frame.data)
                path = self.journal.finish(finished.key, complete=finished.complete, reason=finished.reason)
            except OSError as exc:
                self.counters.add("errors")
                log.error("scan %s: cannot journal its end (%s)", finished.key[0], exc)
        log.info("scan %s finished (%s): %d of %d rows%s", finished.key[0], finished.reason, finished.rows_received,
                 finished.frame.rows, "" if finished.complete else ", incomplete")
        self._event("scan_finished", scan_id=finished.key[0], reason=finished.reason, complete=finished.complete,
                    rows_received=finished.rows_received, rows_missing=finished.rows_missing)
        self._inbox.put_stream(_StreamJob(finished, path))

    def _recover(self) -> None:
        """Continue where a killed daemon stopped: finished scans to the frames worker, open ones to the assembler."""
        if not self._recovered:
            return
        assert self.journal is not None
        for item in self._recovered:
            if item.end is not None:
                finished = _replay_finished(item)
                if finished is not None:
                    log.info("recovered finished scan %s from the journal", item.info.scan_id)
                    self._inbox.put_stream(_StreamJob(finished, item.path, recovered=True))
                else:
                    self.journal.discard(item.path)
                continue
            self.journal.adopt(item)
            log.info("recovered open scan %s from the journal (%d lines); it continues", item.info.scan_id,
                     len(item.lines))
            now = self._clock()
            for row, values, t in item.lines:
                line = LineMessage(item.info, row, values, t)
                for event in self.assembler.feed(line, now=now):
                    if isinstance(event, LineAdded):
                        self._line_added(event, line, journal=False)
                    elif isinstance(event, ScanFinished):
                        self._scan_finished(event)
        self._recovered = []

    # ------------------------------------------------------------- files

    def _on_file(self, ready: ReadyFile) -> None:
        if not self._inbox.put_file(_FileJob(ready, self._clock()), self._stop_requested):
            log.debug("%s: not processed, the daemon is stopping (it is checked again at the next start)",
                      ready.path)

    def _on_bad_file(self, path: Path, reason: str) -> None:
        self.counters.add("errors")
        assert self.store is not None
        dest = self.store.quarantine(path, reason)
        if dest is not None:
            self.counters.add("quarantined")
        self._event("bad_file", path=str(path), reason=reason, quarantined=str(dest) if dest else None)

    def _on_duplicate_file(self, ready: ReadyFile) -> None:
        self.counters.add("duplicates")

    # ------------------------------------------------------------- frames worker

    def _frames_loop(self) -> None:
        while True:
            job = self._inbox.get(0.5)
            if isinstance(job, _Stop):
                return
            if isinstance(job, _StreamJob):
                self._safely(f"segmenting scan {job.finished.key[0]}", self._process_stream, job)
            elif isinstance(job, _FileJob):
                self._safely(f"segmenting {job.ready.path}", self._process_file, job)

    def _segment(self, frame: Frame) -> Segmentation:
        assert self.model is not None
        cfg = self.config.model
        return self.model.segment(frame, min_score=cfg.min_score, min_area_nm2=cfg.min_area_nm2)

    def _process_stream(self, job: _StreamJob) -> None:
        assert self.store is not None and self.journal is not None
        finished = job.finished
        frame = finished.frame
        scan_id = finished.key[0]
        sha = array_sha256(frame.data)
        already = self.store.is_processed(sha)
        if job.recovered and already:
            log.info("scan %s: its result was stored before the restart", scan_id)
            self.journal.discard(job.journal)
            return
        try:
            seg = self._segment(frame)
        except (ModelError, LevelError, ValueError) as exc:
            self.counters.add("errors")
            log.error("scan %s: cannot segment it: %s", scan_id, exc)
            self._event("error", scan_id=scan_id, where="segmenting", error=str(exc))
            self.journal.discard(job.journal)
            return
        self._publish_frame(scan_id, frame, seg, source="zmq", complete=finished.complete,
                            arrived=None if job.recovered else finished.arrived)
        record = stored_record(result_record("zmq", frame, seg), scan_id=scan_id, complete=finished.complete,
                               sha256=sha)
        if self._store(record, frame, seg, already=already):
            self.journal.discard(job.journal)  # kept otherwise: the next start tries again

    def _process_file(self, job: _FileJob) -> None:
        assert self.store is not None
        cfg = self.config.input
        path = job.ready.path
        try:
            frame = read_frame(path, channel=cfg.channel, direction=cfg.direction, width_nm=cfg.width_nm,
                               height_nm=cfg.height_nm)
        except ScanReadError as exc:
            if not path.exists():
                log.warning("%s: gone before it could be read", path)
                return
            self._on_bad_file(path, exc.reason)
            return
        try:
            seg = self._segment(frame)
        except (ModelError, LevelError, ValueError) as exc:
            self._on_bad_file(path, f"cannot segment it: {exc}")
            return
        self.counters.add("files")
        self._publish_frame(path.stem, frame, seg, source=str(path), complete=frame.complete, arrived=job.handed)
        record = stored_record(result_record(str(path), frame, seg), scan_id=path.stem, complete=frame.complete,
                               sha256=job.ready.sha256)
        self._store(record, frame, seg, already=self.store.is_processed(job.ready.sha256))

    def _publish_frame(
        self, scan_id: str, frame: Frame, seg: Segmentation, *, source: str, complete: bool, arrived: float | None
    ) -> None:
        msg = frame_message(scan_id, frame, seg, source=source, complete=complete,
                            label_maps=self.config.publish.label_maps)
        self._put_outgoing(_Outgoing(msg, arrived if arrived is not None else self._clock()))

    def _store(self, record: Mapping[str, Any], frame: Frame, seg: Segmentation, *, already: bool) -> bool:
        """Store a result unless its content is already stored; False when storing failed."""
        assert self.store is not None
        self.counters.add("frames")
        counts: dict[str, int] = {}
        for d in seg.detections:
            counts[d.class_name] = counts.get(d.class_name, 0) + 1
        summary = ", ".join(f"{counts.get(c, 0)} {c}" for c in seg.classes)
        what = f"{record['scan_id']} ({record['source']})"
        if already:
            self.counters.add("duplicates")
            log.info("%s: %s; the same content is already stored, not stored again", what, summary)
            self._event("duplicate", scan_id=record["scan_id"], source=record["source"], sha256=record["sha256"])
            return True
        try:
            stored = self.store.store(record, seg.class_map, image=_display_image(frame) if self.store.overlay_png
                                      else None)
        except OSError as exc:
            self.counters.add("errors")
            log.error("%s: cannot store the result in %s: %s", what, self.results_dir, exc)
            self._event("error", scan_id=record["scan_id"], where="storing", error=str(exc))
            return False
        log.info("%s: %s in %.0f ms -> %s", what, summary, seg.timings_ms.get("total", 0.0), stored.record.name)
        self._event(
            "frame", scan_id=record["scan_id"], source=record["source"], sha256=record["sha256"],
            complete=record["complete"], detections=len(seg.detections), counts=counts,
            result=str(stored.record), overlay=str(stored.overlay) if stored.overlay else None,
            segment_ms=round(seg.timings_ms.get("total", 0.0), 3),
        )
        return True

    # ------------------------------------------------------------- publisher

    def _publisher_loop(self) -> None:
        assert self.publisher is not None
        publisher = self.publisher
        next_poll = 0.0
        while True:
            try:
                item = self._outgoing.get(timeout=0.2)
            except queue.Empty:
                item = None
            now = self._clock()
            if now >= next_poll or item is None:
                next_poll = now + 0.2
                if publisher.poll_subscriptions(0.0) > 0:
                    self._subscribed.set()
            if isinstance(item, _Stop):
                return
            if item is None:
                continue
            msg = item.message
            if item.arrived is not None and isinstance(msg, SegMessage):
                msg = replace(msg, latency_ms=(self._clock() - item.arrived) * 1e3)
            try:
                parts = encode(msg)
            except WireError as exc:  # a message we built is wrong: a bug, but not a reason to stop
                self.counters.add("errors")
                log.error("cannot encode a %s message: %s", type(msg).__name__, exc)
                continue
            try:
                publisher.send(parts)
            except zmq.ZMQError as exc:
                self.counters.add("errors")
                log.error("cannot publish a %s message: %s", type(msg).__name__, exc)


def _display_image(frame: Frame) -> np.ndarray:
    """The frame for the overlay PNG: each line's median removed (cheap, and shows the lattice); unscanned rows NaN."""
    rows = frame.valid_rows
    image = np.full(frame.data.shape, np.nan, np.float32)
    try:
        image[rows] = level_frame(frame.data[rows], method="median")
    except (LevelError, ValueError):
        image[rows] = frame.data[rows]
    return image


def _replay_finished(item: JournalFile) -> ScanFinished | None:
    """The finished scan a journal file describes, rebuilt by a throwaway assembler (the same rules)."""
    assembler = LineAssembler(max_open_scans=1)
    finished: ScanFinished | None = None
    events: list[Any] = []
    for row, values, t in item.lines:
        events += assembler.feed(LineMessage(item.info, row, values, t), now=0.0)
    if item.frame is not None and np.isfinite(item.frame).any():
        events += assembler.feed(FrameMessage(item.info, item.frame), now=0.0)
    events += assembler.close_all(now=0.0)
    for event in events:
        if isinstance(event, ScanFinished):
            finished = event
    if finished is None or item.end is None:
        return None
    complete, reason = item.end
    return replace(finished, complete=complete, reason=cast(FinishReason, reason), arrived=time.monotonic())

