"""The daemon: sources, workers and sinks wired together; start-up, heartbeat, signals, shut-down.

Nothing here computes anything of its own. Threads (ZeroMQ sockets are not
thread-safe: each socket is used by one thread)::

    receiver   SUB socket (LineSource) --[lines: ByteQueue]--> live      (stm_live.daemon.live)
    live       assembler, journal, levelling, live segmentation --> documents
               finished scans --[FrameInbox]--> frames
    watcher    FolderWatcher (its own threads) --[FrameInbox]--> frames
    frames     whole frames and files --> documents                      (stm_live.daemon.frames)
    sinks      one thread each behind the DocumentBus: zmq, store, events, console
               (+ counters inline, + any extra sinks)                    (stm_live.publish)
    heartbeat  a status document and state.json every publish.heartbeat_s
    main       start-up, signals, shut-down

* **Durability.** Accepted lines are journalled until the scan's result is
  stored; a result enters the processed set only once its files are in place.
  After ``kill -9`` and a restart, finished scans whose result was not stored
  are processed, open scans continue with the lines that arrive next, files
  are re-checked against the processed set: every completed input is
  processed once, none is lost.
* **Memory** is bounded by bytes everywhere (``limits`` in ``config.yaml``):
  what does not fit is refused and reported, never silently lost, and never
  makes a worker wait on another.
* **Bad input** is logged with the reason, written to the event log and
  counted; bad files move to ``quarantine/``. Nothing stops the service.
* **SIGTERM / SIGINT**: the watcher and the receiver stop, messages already
  received are processed, the frame in flight and every finished scan are
  segmented, published and stored, the scans still open stay in the journal
  (they continue after the next start), the sinks are flushed; exit status 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Final

import zmq

from .. import __version__
from ..config import Config
from ..decide.engine import DecisionEngine
from ..decide.sink import DecisionSink
from ..errors import ConfigError, ModelError
from ..ingest.journal import ScanJournal, recover
from ..ingest.stream import LineSource, Received
from ..ingest.watch import FolderWatcher, ReadyFile
from ..model.runtime import SegmentationModel
from ..publish import documents as docs
from ..publish.bus import DocumentBus, Sink
from ..publish.documents import Document
from ..publish.events import EventLog
from ..publish.sinks import ConsoleSink, Counters, EventLogSink, StoreSink, ZmqSink
from ..publish.socket import Publisher
from ..publish.store import ResultStore
from ..security import start_authenticator
from .admission import Admission, SourceLimits
from .frames import FileJob, FrameInbox, FrameIntake, FramesWorker
from .live import LiveWorker, Receiver
from .queues import ByteQueue
from .state import ResultsLock, utc, write_state

__all__ = ["DRAIN_TIMEOUT_S", "Daemon"]

log = logging.getLogger("stm_live.daemon")

#: How long the shut-down waits for the frame in flight and the queued finished scans.
DRAIN_TIMEOUT_S: Final = 120.0
#: How long the shut-down waits for the sinks to write what they were given.
FLUSH_TIMEOUT_S: Final = 30.0


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
    sinks : collection of (name, sink, topics)
        More subscribers of the document stream (a page, a decision engine);
        ``topics`` None means every topic.

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
        sinks: Collection[tuple[str, Sink, Collection[str] | None]] = (),
    ) -> None:
        self.config = config
        self.model = model
        self._own_context = context is None
        self._context = context
        self._clock = clock
        self._extra_sinks = list(sinks)
        self.results_dir = Path(config.results.dir)
        self.counters = Counters()
        self.state = "starting"
        self.bus = DocumentBus(on_drop=self._dropped)
        self.store: ResultStore | None = None
        self.journal: ScanJournal | None = None
        self.source: LineSource | None = None
        self.publisher: Publisher | None = None
        self.watcher: FolderWatcher | None = None
        self.lines: ByteQueue[Received] = ByteQueue(config.limits.ingest_queue_mb << 20)
        self.whole: ByteQueue[Received] = ByteQueue(config.limits.ingest_queue_mb << 20)
        self.inbox = FrameInbox(config.limits.frames_queue_mb << 20)
        self.live: LiveWorker | None = None
        self.intake: FrameIntake | None = None
        self.frames: FramesWorker | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._stop_requested = threading.Event()
        self._stop_ingest = threading.Event()
        self._lock = ResultsLock(self.results_dir)
        self._started = clock()
        self._started_wall = time.time()
        self._closed = False
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

    def emit(self, doc: Document) -> None:
        """Hand a document to every sink (thread-safe, never blocks)."""
        self.bus.emit(doc)

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
        try:
            self._start()
        except BaseException:
            self.stop()
            self.close()
            raise
        self.state = "running"
        assert self.model is not None
        cfg = self.config
        self.emit(docs.event(
            "start", pid=os.getpid(), version=__version__, model=self._model_summary(), ingest=self.ingest_endpoint,
            publish=self.publish_endpoint, watch=[str(f) for f in cfg.watch.folders],
            recovered_scans=self._recovered_count,
        ))
        log.info(
            "running: model %s [%s]; ingest %s; publish %s; watching %s; results in %s",
            self.model.name, self.model.id, self.ingest_endpoint or "off", self.publish_endpoint or "off",
            ", ".join(map(str, cfg.watch.folders)) or "no folder", self.results_dir,
        )
        self.heartbeat()

    def _start(self) -> None:
        cfg = self.config
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
        events = EventLog(self.results_dir / "events.jsonl", max_bytes=cfg.results.events_max_mb << 20,
                          backups=cfg.results.events_backups)
        recovered = recover(self.results_dir / "journal")
        self._recovered_count = len(recovered)
        self.journal = ScanJournal(self.results_dir / "journal")
        if self._context is None:
            self._context = zmq.Context()
        # CURVE: the ZAP handler runs before any server socket exists (they refuse clients without it).
        self._auth = start_authenticator(self._context, cfg.security)
        sink_bytes = cfg.limits.sink_queue_mb << 20
        bus = self.bus
        bus.subscribe("counters", self.counters, inline=True)
        bus.subscribe("console", ConsoleSink(), topics=ConsoleSink.topics, max_bytes=sink_bytes)
        bus.subscribe("events", EventLogSink(events), topics=EventLogSink.topics, max_bytes=sink_bytes)
        bus.subscribe("store", StoreSink(self.store, emit=bus.emit), topics=StoreSink.topics,
                      max_bytes=cfg.limits.store_queue_mb << 20)
        if cfg.publish.endpoint:
            self.publisher = self._bind("publish.endpoint", cfg.publish.endpoint,
                                        lambda ep: Publisher.bind(self._ctx, ep, send_hwm=cfg.publish.send_hwm,
                                                                  security=cfg.security))
            self._endpoints["publish"] = self.publisher.endpoint
            bus.subscribe("zmq", ZmqSink(self.publisher, clock=self._clock), topics=ZmqSink.topics,
                          max_bytes=sink_bytes)
        if cfg.decide.rules:  # the rules run here; a bridge executes the decisions it receives
            engine = DecisionEngine(cfg.decide)
            bus.subscribe("decide", DecisionSink(engine, emit=bus.emit), topics=DecisionSink.topics,
                          max_bytes=sink_bytes)
        for name, sink, topics in self._extra_sinks:
            bus.subscribe(name, sink, topics=topics, max_bytes=sink_bytes)
        if cfg.ingest.endpoint:
            self.source = self._bind("ingest.endpoint", cfg.ingest.endpoint,
                                     lambda ep: LineSource.bind(self._ctx, ep, rcv_hwm=cfg.ingest.rcv_hwm,
                                                                clock=self._clock, security=cfg.security))
            self._endpoints["ingest"] = self.source.endpoint
        bus.start()
        self.intake = FrameIntake(cfg.limits.ingest_queue_mb << 20, journal=self.journal, inbox=self.inbox,
                                  emit=bus.emit)
        self.live = LiveWorker(cfg, self.model, journal=self.journal, inbox=self.inbox, intake=self.intake,
                               emit=bus.emit, counters=self.counters, clock=self._clock)
        self.frames = FramesWorker(cfg, self.model, inbox=self.inbox, store=self.store, journal=self.journal,
                                   emit=bus.emit, on_bad_file=self._on_bad_file, remember=self._remember_hash,
                                   recheck=self._recheck, clock=self._clock)
        self._thread("frames", self.frames.run)
        self._thread("intake", self.intake.run)
        self._thread("live", self.live.run, self.lines, self.whole, recovered)
        if self.source is not None:
            limits = SourceLimits(messages_per_s=cfg.ingest.max_messages_per_s,
                                  new_scans_per_min=cfg.ingest.max_new_scans_per_min,
                                  mb_per_hour=cfg.ingest.max_mb_per_hour)
            receiver = Receiver(self.source, self.lines, self.whole, emit=bus.emit, counters=self.counters,
                                stop=self._stop_ingest, admission=Admission(limits), clock=self._clock)
            self._thread("ingest", receiver.run)
        if cfg.watch.folders:
            self.watcher = FolderWatcher(
                cfg.watch.folders, on_file=self._on_file, on_bad=self._on_bad_file,
                patterns=cfg.watch.patterns, recursive=cfg.watch.recursive,
                is_processed=self.store.is_processed, on_duplicate=self._on_duplicate_file,
                retry_initial_s=cfg.watch.retry_initial_s, retry_max_s=cfg.watch.retry_max_s,
                settle_timeout_s=cfg.watch.settle_timeout_s, exclude=[self.results_dir],
                polling=cfg.watch.polling, clock=self._clock, on_ignored=self._on_ignored_file,
                hash_cache=self.results_dir / "watch_hashes.json", hash_files=False,
            )
            self.watcher.start()
        self._thread("heartbeat", self._heartbeats)

    _recovered_count = 0
    _auth: Any = None

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

    def _thread(self, name: str, loop: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                loop(*args)
            except Exception:  # a bug in a loop: say so loudly, and stop the service cleanly
                log.exception("the %s thread failed; stopping the daemon", name)
                self.stop()

        thread = threading.Thread(target=run, name=f"stm-live-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    def stop(self) -> None:
        """Ask the daemon to stop (thread- and signal-safe); :meth:`close` does the work."""
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop_requested.is_set()

    def wait(self) -> None:
        """Block until a stop is requested (the main thread's job, so that signals reach it)."""
        while not self._stop_requested.wait(0.5):
            pass

    def _heartbeats(self) -> None:
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
        threads = self._threads
        if "heartbeat" in threads:
            threads["heartbeat"].join()
        if self.watcher is not None:
            self.watcher.stop()
        self._stop_ingest.set()
        if "ingest" in threads:
            threads["ingest"].join()  # it closes the lines queue after its last message
        self.lines.close()
        self.whole.close()
        if "live" in threads:
            threads["live"].join()
        if self.intake is not None:
            self.intake.queue.close()
        if "intake" in threads:
            threads["intake"].join()
        self.inbox.close()
        if "frames" in threads:
            threads["frames"].join(DRAIN_TIMEOUT_S)
            if threads["frames"].is_alive():
                log.error("the frame in flight did not finish within %.0f s; leaving it", DRAIN_TIMEOUT_S)
        if self.live is not None:
            open_scans = self.live.close()
            if open_scans:
                log.info("%d scan(s) still open kept in the journal; they continue after the next start: %s",
                         len(open_scans), ", ".join(open_scans))
        if self.state == "stopping":
            self.heartbeat()
            self.emit(docs.event("stop", counters=self.counts()))
        self.bus.close(FLUSH_TIMEOUT_S)
        for sock in (self.source, self.publisher):
            if sock is not None:
                sock.close()
        if self._auth is not None:
            self._auth.stop()  # after the sockets it serves, before the context ends
        if self._own_context and self._context is not None:
            self._context.term()
        if self.state == "stopping":
            self._write_state("stopped")
            self.state = "stopped"
        self._lock.release()

    def run(self) -> int:
        """Start, serve until SIGTERM / SIGINT (or :meth:`stop`), shut down cleanly; return 0."""
        # Signals first: a SIGTERM that comes as soon as state.json says "running" must stop it cleanly too.
        restore = self._install_signals()
        try:
            self.start()
            self.wait()
            log.info("stopping: finishing the frame in flight and flushing")
        finally:
            self.close()
            restore()
        counters = self.counts()
        log.info("stopped: %d frame(s), %d line(s), %d error(s), %d dropped", counters["frames"],
                 counters["lines"], counters["errors"], counters["dropped"])
        return 0

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
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

        for name in ("SIGTERM", "SIGINT", "SIGBREAK"):  # SIGBREAK: Ctrl+Break on Windows
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def use_model(self, model: SegmentationModel, **context: Any) -> None:
        """Swap the running model without a restart (thread-safe): teach-in, a model adapted meanwhile.

        The live path switches before its next batch of lines, rebuilding the
        partial result of every open scan on the new model; the whole-frame
        path from the next frame (the frame in flight keeps its model). An
        ``event`` ``model`` records the swap (old and new ids, and ``context``).

        Raises
        ------
        ModelError
            ``model`` has no head (a bare encoder cannot segment).
        """
        if not model.has_head:
            raise ModelError(f"{model.path}: a bare encoder cannot segment; make a model from it with `stm-live adapt`")
        old = self.model
        self.model = model
        if self.live is not None:
            self.live.use_model(model)
        if self.frames is not None:
            self.frames.use_model(model)
        self.emit(docs.event("model", old={"id": old.id, "name": old.name} if old else None,
                             new={"id": model.id, "name": model.name, "classes": list(model.classes)}, **context))
        log.info("model now %s [%s] (was %s)", model.name, model.id, old.id if old else None)

    # ------------------------------------------------------------ inputs from the watcher

    def _on_file(self, ready: ReadyFile) -> None:
        if not self.inbox.put_file(FileJob(ready, self._clock()), self._stop_requested):
            log.debug("%s: not processed, the daemon is stopping (it is checked again at the next start)",
                      ready.path)

    def _on_bad_file(self, path: Path, reason: str) -> None:
        assert self.store is not None
        dest = self.store.quarantine(path, reason)
        self.emit(docs.bad_input(str(path), reason, kind="file", quarantined=str(dest) if dest else None))

    def _on_duplicate_file(self, ready: ReadyFile) -> None:
        self.counters.add("duplicates")

    def _on_ignored_file(self, path: Path, reason: str) -> None:
        self.emit(docs.event("ignored", source=str(path), reason=reason))

    def _remember_hash(self, path: Path, st: os.stat_result, sha256: str) -> None:
        if self.watcher is not None:
            self.watcher.remember(path, st, sha256)

    def _recheck(self, path: Path) -> None:
        if self.watcher is not None:
            self.watcher.recheck(path)

    def _dropped(self, sink: str, doc: Document) -> None:
        if sink == "store" and doc.topic == docs.SEG_FRAME:
            record = doc.local["record"]
            self.emit(docs.event(
                "error", scan_id=record["scan_id"], source=record["source"], where="storing",
                error="not stored: the result store is behind (limits.store_queue_mb); a streamed scan stays in "
                      "the journal and a file is checked again at the next start",
            ))

    # ------------------------------------------------------------ status

    def _model_summary(self) -> dict[str, Any]:
        assert self.model is not None
        return {"id": self.model.id, "name": self.model.name, "path": str(self.model.path),
                "classes": list(self.model.classes)}

    def counts(self) -> dict[str, int]:
        """The running totals of the heartbeat, with ``dropped`` (not published, or not delivered to a sink)."""
        values = self.counters.snapshot()
        values["dropped"] = (self.publisher.dropped if self.publisher is not None else 0) + self.bus.dropped
        values["open_scans"] = self.live.open_scans if self.live is not None else 0
        return values

    def _queue_depths(self) -> dict[str, int]:
        depths = {
            "lines": len(self.lines),
            "lines_mb": self.lines.nbytes >> 20,
            "whole_frames": len(self.whole) + (len(self.intake.queue) if self.intake is not None else 0),
            "frames": len(self.inbox),
            "files_pending": self.watcher.pending if self.watcher is not None else 0,
        }
        for name, stats in self.bus.stats().items():
            if name != "counters":
                depths[f"sink_{name}"] = stats.queued
        return depths

    def status(self) -> Document:
        """The heartbeat as it would go out now (a ``status`` document)."""
        state = self.state if self.state in ("starting", "running", "stopping") else "stopping"
        return docs.status(
            state=state, uptime_s=self._clock() - self._started, counters=self.counts(),
            queues=self._queue_depths(), version=__version__, t=time.time(),
            model_id=self.model.id if self.model is not None else None,
            model_name=self.model.name if self.model is not None else None,
        )

    def heartbeat(self) -> None:
        """Publish a ``status`` document and rewrite the state file."""
        self.emit(self.status())
        self._write_state(self.state)

    def _write_state(self, state: str) -> None:
        status = self.status().header
        write_state(self.results_dir, {
            "v": 1, "state": state, "pid": os.getpid(), "version": __version__,
            "started": utc(self._started_wall), "t": round(time.time(), 3), "updated": utc(time.time()),
            "uptime_s": status["uptime_s"], "heartbeat_s": self.config.publish.heartbeat_s,
            "endpoints": {"ingest": self.ingest_endpoint, "publish": self.publish_endpoint},
            "results_dir": str(self.results_dir.resolve()), "watch": [str(f) for f in self.config.watch.folders],
            "model": self._model_summary() if self.model is not None else None,
            "counters": status["counters"], "queues": status["queues"],
        })
