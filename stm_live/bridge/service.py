"""``stm-live bridge nanonis``: the bridge as a service, wiring its parts together.

The parts, each in its own module: :class:`~.nanonis.forward.LineForwarder`
(controller lines -> daemon ingest, its own two controller connections),
:class:`~.executor.Executor` (decisions -> controller commands, on the
control connection), the decision source (``bridge.decisions``: ``local``
runs :class:`~stm_live.decide.DecisionEngine` here over the daemon's
results and the bridge's own lines; ``daemon`` takes the ``decision``
messages the daemon publishes; ``off``), and the operator's control socket
(``bridge.control_endpoint``: pause, resume, status).

Threads: the forwarder's two loops, and one "decisions" thread that owns the
ZeroMQ sockets for results, decisions and the operator (ZeroMQ sockets stay
in the thread that made them).
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..errors import ControllerError, WireError
from .drift import DriftTracker
from .executor import Executor, ScanContext
from .link import DaemonLink
from .nanonis.client import Backoff, NanonisConnection
from .nanonis.control import NanonisControl
from .nanonis.forward import LineForwarder, ScanRecord

if TYPE_CHECKING:
    from ..config import Config
    from ..decide.engine import DecisionEngine

__all__ = ["BridgeService", "decode_decision", "encode_decision"]

log = logging.getLogger(__name__)

TOPIC_DECISION = "decision"


def encode_decision(decision: Mapping[str, Any]) -> list[bytes]:
    """``[b"decision", header]``: a decision message as the daemon would publish it."""
    return [TOPIC_DECISION.encode(), json.dumps(decision, allow_nan=False, separators=(",", ":")).encode("utf-8")]


def decode_decision(parts: list[bytes]) -> dict[str, Any]:
    """A ``decision`` message back to its dict.

    Raises
    ------
    WireError
        Not ``[b"decision", JSON object]`` or it breaks the decision schema.
    """
    from ..decide.messages import check_decision

    if len(parts) != 2 or bytes(parts[0]) != TOPIC_DECISION.encode():
        raise WireError(f"expected [b'decision', header], got {len(parts)} parts with topic {bytes(parts[0])[:32]!r}")
    try:
        obj = json.loads(bytes(parts[1]))
    except ValueError as exc:
        raise WireError(f"decision header: not valid JSON: {exc}") from None
    return check_decision(obj)


class _EventLog:
    """Append-only JSON lines (the bridge's own event log)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class BridgeService:
    """The whole bridge for one controller.

    Parameters
    ----------
    config : Config
        ``bridge`` (controller, behaviour), ``decide`` (rules, limits),
        ``ingest.endpoint`` (where lines go), ``publish.endpoint`` (where
        results and decisions come from).
    context : zmq.Context, optional
    """

    def __init__(self, config: Config, *, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        settings = config.bridge
        self.settings = settings
        self.stop_event = threading.Event()
        self._ctx = context if context is not None else zmq.Context.instance()
        if config.ingest.endpoint is None:
            raise ControllerError("ingest.endpoint is null: the bridge has no daemon to send lines to")
        self.link = DaemonLink(config.ingest.endpoint, context=self._ctx)
        self.control_conn = NanonisConnection(
            settings.host, settings.port + 2, layout=settings.layout, timeout_s=settings.timeout_s, name="control",
            backoff=Backoff(settings.retry_initial_s, settings.retry_max_s), sleep=self.stop_event.wait)
        self.control = NanonisControl(self.control_conn)
        self._event_log = _EventLog(settings.event_log) if settings.event_log is not None else None
        self.drift = DriftTracker()
        self.executor = Executor(self.control, config.decide.limits, automation=settings.automation,
                                 event_log=self._event_log, drift=self.drift)
        self._image: tuple[str, np.ndarray] | None = None  # the scan being assembled, for the drift
        self.engine: DecisionEngine | None = None
        if settings.decisions == "local":
            from ..decide.engine import DecisionEngine

            self.engine = DecisionEngine(config.decide)
        self._docs: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.forwarder = LineForwarder(settings, publish=self.link.send, control=self.control,
                                       stop=self.stop_event, on_scan=self._on_scan,
                                       on_line=self._on_line,
                                       on_end=self._on_end, on_idle=self.executor.on_idle)
        self.decisions: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []

    # -- hooks from the forwarder (its thread) ----------------------------------------

    def _on_scan(self, record: ScanRecord) -> None:
        s = record.state
        self.executor.on_scan(record.scan_id, ScanContext(s.frame, s.pixels, s.lines, record.up, record.started_t))
        if self.engine is not None:
            f = s.frame
            self._docs.put({"kind": "scan", "scan_id": record.scan_id, "rows": record.rows, "cols": record.cols,
                            "frame": {"x_m": f.centre_m[0], "y_m": f.centre_m[1], "width_m": f.width_m,
                                      "height_m": f.height_m, "angle_deg": f.angle_deg}})

    def _on_line(self, doc: dict[str, Any]) -> None:
        if self._image is None or self._image[0] != doc["scan_id"]:
            self._image = (doc["scan_id"], np.full((doc["rows"], doc["cols"]), np.nan, dtype=np.float32))
        self._image[1][doc["row"]] = doc["data"]
        if self.engine is not None:
            self._docs.put(doc)

    def _on_end(self, scan_id: str, complete: bool) -> None:
        self.executor.on_end(scan_id, complete)
        record = self.forwarder.records.get(scan_id)
        if complete and record is not None and self._image is not None and self._image[0] == scan_id:
            d = self.drift.add(self._image[1], record.state.frame, (record.started_t + time.time()) / 2.0)
            if d is not None:
                log.info("drift since the last frame: (%.3g, %.3g) nm (peak %.1f%s)", d.dx_m * 1e9, d.dy_m * 1e9,
                         d.peak, "" if d.reliable else ", not used")
        if self.engine is not None:
            self._docs.put({"kind": "end", "scan_id": scan_id, "complete": complete})

    # -- the decisions thread ---------------------------------------------------------

    def _decisions_loop(self) -> None:
        poller = zmq.Poller()
        sub = None
        rep = None
        try:
            if self.settings.decisions != "off" and self.config.publish.endpoint is not None:
                sub = self._ctx.socket(zmq.SUB)
                sub.setsockopt(zmq.LINGER, 0)
                topics = [b"seg."] if self.settings.decisions == "local" else [TOPIC_DECISION.encode()]
                for t in topics:
                    sub.setsockopt(zmq.SUBSCRIBE, t)
                sub.connect(self.config.publish.endpoint)
                poller.register(sub, zmq.POLLIN)
            if self.settings.control_endpoint is not None:
                rep = self._ctx.socket(zmq.REP)
                rep.setsockopt(zmq.LINGER, 0)
                rep.bind(self.settings.control_endpoint)
                poller.register(rep, zmq.POLLIN)
            while not self.stop_event.is_set():
                events = dict(poller.poll(20))
                if rep is not None and rep in events:
                    self._operator(rep)
                if sub is not None and sub in events:
                    self._results(sub)
                self._drain_docs()
        except zmq.ZMQError as exc:
            log.error("bridge decisions: %s; decisions and operator commands are off", exc)
        finally:
            if sub is not None:
                sub.close(0)
            if rep is not None:
                rep.close(0)

    def _operator(self, rep: zmq.Socket[Any]) -> None:
        try:
            request = json.loads(rep.recv())
            cmd = request.get("command") if isinstance(request, dict) else None
        except ValueError:
            cmd = None
        if cmd == "pause":
            state = self.executor.pause()
        elif cmd == "resume":
            state = self.executor.resume()
        elif cmd == "status":
            state = self.executor.status()
        else:
            rep.send_json({"ok": False, "error": f"unknown command {cmd!r}; expected pause, resume or status"})
            return
        rep.send_json({"ok": True, **state, "forwarder": dict(self.forwarder.counters),
                       "daemon_link": dict(self.link.counters)})

    def _results(self, sub: zmq.Socket[Any]) -> None:
        from ..wire import SegMessage, decode

        while sub.poll(0, zmq.POLLIN):
            parts = sub.recv_multipart()
            try:
                if bytes(parts[0]) == TOPIC_DECISION.encode():
                    self._execute(decode_decision(parts))
                    continue
                msg = decode(parts)
            except WireError as exc:
                log.warning("bridge: a message from the daemon was dropped: %s", exc)
                continue
            if isinstance(msg, SegMessage) and self.engine is not None:
                doc = json.loads(bytes(parts[1]))
                doc["kind"] = msg.topic
                self._feed(doc)

    def _drain_docs(self) -> None:
        while True:
            try:
                doc = self._docs.get_nowait()
            except queue.Empty:
                return
            self._feed(doc)

    def _feed(self, doc: dict[str, Any]) -> None:
        assert self.engine is not None
        for decision in self.engine.feed(doc):
            self._execute(decision)

    def _execute(self, decision: dict[str, Any]) -> None:
        self.decisions.append(decision)
        log.info("decision: %s %s on %s: %s", decision.get("rule"), decision.get("action"),
                 decision.get("scan_id"), decision.get("reason"))
        self.executor.handle(decision)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> BridgeService:
        """Start the forwarder and the decisions thread."""
        for name, target in (("bridge-lines", self.forwarder.run), ("bridge-decisions", self._decisions_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Ask every loop to end and wait for them."""
        self.stop_event.set()
        for t in self._threads:
            t.join(self.settings.wait_ms / 1000.0 + self.settings.timeout_s + 5.0)
        self._threads.clear()

    def close(self) -> None:
        """Stop, then close sockets and the event log."""
        self.stop()
        self.control_conn.close()
        self.link.close()
        if self._event_log is not None:
            self._event_log.close()

    def run(self) -> int:
        """Run until SIGINT/SIGTERM; the exit status."""
        previous = {}

        def handler(signum: int, frame: object) -> None:
            log.info("bridge: signal %d, stopping", signum)
            self.stop_event.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        s = self.settings
        log.info("bridge: Nanonis controller %s:%d-%d (%s layout), lines to %s, automation %s, decisions %s",
                 s.host, s.port, s.port + 2, s.layout, self.config.ingest.endpoint,
                 "ON" if s.automation else "off (dry run)", s.decisions)
        self.start()
        try:
            while not self.stop_event.wait(0.2):
                pass
        finally:
            self.close()
            for sig, h in previous.items():
                signal.signal(sig, h)
        return 0

    def wait_for_daemon(self, timeout_s: float) -> bool:
        """True once the daemon's ingest has subscribed (lines before that are dropped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.link.wait(0.05):
                return True
        return False
