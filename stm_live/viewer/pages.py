"""The three ways the page runs: inside the daemon, apart from it, and for labelling one file.

* :class:`DaemonPage`: ``stm-live run`` / ``demo``. A sink of the daemon's
  document stream (:class:`ViewerSink`) feeds the page; teach-in swaps the
  daemon's model (:meth:`stm_live.daemon.Daemon.use_model`).
* :class:`RemotePage`: ``stm-live view --connect tcp://HOST:PORT``. A thread
  subscribes to a daemon's PUB socket and feeds the page the same topics
  (``level.line`` draws the image, ``seg.*`` the results, ``status``); ZeroMQ
  reconnects by itself when the daemon restarts. No teach-in (no model here).
* :class:`LabelPage`: ``stm-live label FILE``. One frame, segmented by a
  model; teach-in adapts it and shows the new result at once, no microscope.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..config import Config
from ..errors import WireError
from ..frame import Frame
from ..model.runtime import SegmentationModel
from ..publish import documents as docs
from ..publish.documents import Document
from .server import ViewerServer
from .state import FinishedFrame, ViewerFeed
from .teach import TeachIn, TeachSettings

__all__ = ["DaemonPage", "LabelPage", "RemotePage", "ViewerSink"]

log = logging.getLogger("stm_live.viewer")

#: Seconds between snapshot checks of the feed threads of ``view`` and ``label``.
_SERVE_S: Final = 0.05


def _session_folder(root: Path) -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = root / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    return folder


class ViewerSink:
    """The page's subscription to the daemon's documents (one thread, behind the bus's bounded queue).

    ``latency_ms`` of a partial is filled in as the ZeroMQ sink does, from
    the input's arrival to the moment the page gets it.
    """

    topics: Final = (docs.LEVEL_LINE, docs.SEG_PARTIAL, docs.SEG_FRAME, docs.STATUS, docs.EVENT, docs.BAD_INPUT)

    def __init__(self, feed: ViewerFeed, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.feed = feed
        self._clock = clock

    def __call__(self, doc: Document) -> None:
        header = doc.header
        arrived = doc.local.get("arrived")
        if arrived is not None and "latency_ms" in header:
            header = {**header, "latency_ms": round(max(0.0, (self._clock() - arrived) * 1e3), 3)}
        self.feed.handle(doc.topic, header, doc.payload, doc.local)

    def poll(self, now: float) -> None:
        """Serve snapshot requests while no document comes."""
        self.feed.serve()


def _offer(teach: TeachIn, channel: str = "Z", direction: str = "forward") -> Callable[[FinishedFrame], None]:
    """Make each finished frame available for teach-in: a file by its path, a streamed scan by its image."""

    def offer(frame: FinishedFrame) -> None:
        source = Path(frame.source) if frame.source not in ("", "zmq", "None") else None
        if source is not None and source.is_file():
            teach.offer_frame(frame.key, width_nm=frame.width_nm, height_nm=frame.height_nm, path=source,
                              channel=channel, direction=direction)
        elif frame.image is not None and not frame.not_segmented:
            teach.offer_frame(frame.key, width_nm=frame.width_nm, height_nm=frame.height_nm, image=frame.image)

    return offer


def _feed(config: Config) -> ViewerFeed:
    v = config.viewer
    return ViewerFeed(keep_frames=v.keep_frames, keep_mb=v.keep_mb)


def _model_loader(config: Config) -> Callable[[Path], SegmentationModel]:
    def load(path: Path) -> SegmentationModel:
        return SegmentationModel(path, provider=config.model.provider, threads=config.model.threads,
                                 allow_spinning=False)

    return load


class DaemonPage:
    """The page of a daemon in this process, with teach-in.

    Use: ``page = DaemonPage(config, model)``; ``Daemon(config, model=model,
    sinks=page.sinks)``; ``page.attach(daemon)``; ``page.start()`` (binds, so
    a port in use stops start-up); ... ``page.close()``.
    """

    def __init__(self, config: Config, model: SegmentationModel, *, port: int | None = None) -> None:
        v = config.viewer
        self.config = config
        self.model = model
        self.feed = _feed(config)
        self.server = ViewerServer(self.feed, host=v.host, port=v.port if port is None else port, token=v.token,
                                   results_dir=Path(config.results.dir), client_buffer_kb=v.client_buffer_kb,
                                   mode="daemon", automation=config.bridge.control_endpoint)
        self.teach: TeachIn | None = None

    @property
    def sinks(self) -> list[tuple[str, Any, Collection[str] | None]]:
        """What to give :class:`~stm_live.daemon.Daemon` as ``sinks``."""
        return [("viewer", ViewerSink(self.feed), ViewerSink.topics)]

    def attach(self, daemon: Any) -> None:
        """Teach-in swaps ``daemon``'s model; versions go to ``<results>/teach/<start time>/``."""
        self.teach = TeachIn(folder=_session_folder(Path(self.config.results.dir) / "teach"), base=self.model,
                             use_model=daemon.use_model, load_model=_model_loader(self.config),
                             settings=TeachSettings())
        self.server.teach = self.teach
        self.feed.hello["teach"] = True
        self.feed.on_finished = _offer(self.teach, self.config.input.channel, self.config.input.direction)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> DaemonPage:
        self.server.start()
        return self

    def close(self) -> None:
        self.server.close()


class RemotePage:
    """``stm-live view --connect``: a daemon's published results, from afar (no teach-in).

    Parameters
    ----------
    endpoint : str
        The daemon's publish endpoint (``tcp://HOST:5556``).
    """

    def __init__(self, config: Config, endpoint: str, *, port: int | None = None,
                 context: Any = None) -> None:
        import zmq

        v = config.viewer
        self.endpoint = endpoint
        self.feed = _feed(config)
        self.server = ViewerServer(self.feed, host=v.host, port=v.port if port is None else port, token=v.token,
                                   client_buffer_kb=v.client_buffer_kb, mode="remote", source=endpoint,
                                   automation=config.bridge.control_endpoint)
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0
        self.bad = 0

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> RemotePage:
        import zmq

        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        for topic in (b"level.line", b"seg.", b"status"):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        try:
            sub.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sub.close()
            from ..errors import ConfigError

            raise ConfigError(f"--connect {self.endpoint}: {exc}") from None
        try:
            self.server.start()
        except BaseException:
            sub.close()
            raise
        self._thread = threading.Thread(target=self._receive, args=(sub,), name="stm-live-view", daemon=True)
        self._thread.start()
        return self

    def _receive(self, sub: Any) -> None:
        from ..wire import decode

        try:
            while not self._stop.is_set():
                if sub.poll(int(_SERVE_S * 1000)):
                    parts = sub.recv_multipart(copy=True)
                    try:
                        decode(parts)  # every check of the protocol, before anything is drawn
                        topic = parts[0].decode()
                        header = json.loads(parts[1])
                    except (WireError, ValueError) as exc:
                        self.bad += 1
                        if self.bad <= 20 or self.bad % 1000 == 0:
                            log.warning("a message from %s refused (%d so far): %s", self.endpoint, self.bad, exc)
                        continue
                    payload = None
                    if len(parts) == 3:
                        payload = np.frombuffer(parts[2], "<f4" if topic == "level.line" else np.uint8)
                    self.received += 1
                    self.feed.handle(topic, header, payload)
                self.feed.serve()
        finally:
            sub.close()

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.server.close()
        if self._own_context:
            self._context.term()


class LabelPage:
    """``stm-live label FILE``: one frame on the page, teach-in without a microscope.

    Each version's model segments the frame again at once and the page shows
    the result as a new entry of the strip.
    """

    def __init__(self, config: Config, frame: Frame, path: Path, model: SegmentationModel, out: Path,
                 *, port: int | None = None, settings: TeachSettings | None = None) -> None:
        from ..daemon.frames import display_image

        v = config.viewer
        self.frame = frame
        self.path = path
        self.model = model
        self.key = path.stem
        self.image = display_image(frame)
        self.feed = _feed(config)
        self.teach = TeachIn(folder=out, base=model, use_model=self._use_model, load_model=_model_loader(config),
                             settings=settings or TeachSettings())
        self.server = ViewerServer(self.feed, host=v.host, port=v.port if port is None else port, token=v.token,
                                   teach=self.teach, client_buffer_kb=v.client_buffer_kb, mode="label",
                                   source=str(path))
        self.feed.on_finished = _offer(self.teach, frame.channel, frame.direction)
        self._jobs: list[SegmentationModel] = [model]
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.segmented = 0

    @property
    def url(self) -> str:
        return self.server.url

    def _use_model(self, model: SegmentationModel, **context: Any) -> None:
        self._jobs.append(model)
        self._wake.set()

    def start(self) -> LabelPage:
        self.server.start()
        self._thread = threading.Thread(target=self._run, name="stm-live-label", daemon=True)
        self._thread.start()
        self._wake.set()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_SERVE_S)
            self._wake.clear()
            while self._jobs:
                self._segment(self._jobs.pop(0))
            self.feed.serve()

    def _segment(self, model: SegmentationModel) -> None:
        frame = self.frame
        seg = model.segment(frame)
        rows = frame.valid_rows
        header = docs.seg_header(
            scan_id=self.key, rows_done=frame.rows_valid or 0, rows=frame.rows, cols=frame.cols,
            width_m=frame.width_m, height_m=frame.height_m, model_id=seg.model_id, model_name=seg.model_name,
            classes=seg.classes, detections=seg.detections, map_rows=(rows.start, rows.stop), final=True,
            source=str(self.path), complete=True,
        )
        self.feed.handle(docs.SEG_FRAME, header, np.ascontiguousarray(seg.class_map[rows]), {"image": self.image})
        self.segmented += 1

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self.server.close()


def daemon_with_page(config: Config, *, port: int | None = None) -> tuple[Any, DaemonPage | None]:
    """A :class:`~stm_live.daemon.Daemon` and, when ``viewer.enabled``, its page (not started yet).

    Start the page (``page.start()``, it binds its port) before the daemon, close it after.

    Raises
    ------
    ModelError
        The configured model cannot be loaded.
    """
    from ..daemon import Daemon

    if not config.viewer.enabled:
        return Daemon(config), None
    # The daemon's model, loaded here so that teach-in adapts the very model the daemon starts with.
    model = SegmentationModel(config.model.path, provider=config.model.provider, threads=config.model.threads,
                              allow_spinning=False)
    page = DaemonPage(config, model, port=port)
    daemon = Daemon(config, model=model, sinks=page.sinks)
    page.attach(daemon)
    return daemon, page


def run_with_page(config: Config) -> int:
    """``stm-live run``: the daemon until SIGTERM / Ctrl+C, with its page; the page's address is printed."""
    daemon, page = daemon_with_page(config)
    if page is None:
        return int(daemon.run())
    page.start()
    try:
        print(f"stm-live: page on {page.url}", flush=True)
        return int(daemon.run())
    finally:
        page.close()
