"""What the page shows, kept from the document stream, and the messages that carry it to browsers.

:class:`ViewerFeed` takes the daemon's documents (``level.line``,
``seg.partial``, ``seg.frame``, ``status``, ``event``, ``bad_input``), or the
same topics decoded from the daemon's PUB socket (``stm-live view
--connect``), and keeps the scan being acquired (levelled image, class map,
detections), the finished frames of the session and the latest status and
problems. For each document it composes what goes to the browsers, only what
is new:

* **binary** messages for pixels: ``[u32 n][n bytes JSON header, space padded to
  a multiple of 4][payload]``; the header's ``k`` is ``"rows"`` (float32 levelled
  rows, little-endian) or ``"labels"`` (uint8 class-map rows), with ``scan``,
  ``row0``, ``n`` and ``cols``;
* **JSON** text messages for everything else: ``{"type": "scan" | "det" | "frame" |
  "status" | "event" | "versions" | "hello" | "reset", ...}``; ``det`` carries the
  detections that appeared (``add``) and disappeared (``del``, by key) since the
  scan's previous partial, and the counts per class.

The feed runs on one thread only (the bus gives the viewer sink a thread of
its own; ``view --connect`` and ``label`` run a thread for it), so its state
needs no lock against the page server: the server asks for a client's
catch-up snapshot with :meth:`ViewerFeed.request_snapshot` (thread-safe) and
the feed answers from its own thread (:meth:`ViewerFeed.serve`). Only the
shelf of finished frames, which the server reads to reopen a frame, has a
lock. Nothing here touches a socket: :attr:`ViewerFeed.deliver` hands the
composed messages to the server.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = [
    "FinishedFrame",
    "LiveScan",
    "Outgoing",
    "ViewerFeed",
    "binary_message",
    "detection_key",
    "parse_binary",
]

log = logging.getLogger(__name__)

#: A message for browsers: bytes go as a binary WebSocket message, str as text.
Outgoing = bytes | str
#: Problems (bad inputs, errors) kept for a page that connects later.
RECENT_EVENTS: Final = 20
#: Model changes and decisions kept for a page that connects later.
RECENT_DECISIONS: Final = 20


def binary_message(kind: str, header: Mapping[str, Any], payload: np.ndarray) -> bytes:
    """A binary message: length-prefixed JSON header padded to 4 bytes, then the raw payload.

    Examples
    --------
    >>> msg = binary_message("rows", {"scan": "s", "row0": 3, "n": 1, "cols": 2}, np.ones(2, "<f4"))
    >>> h, p = parse_binary(msg)
    >>> h["k"], h["row0"], np.frombuffer(p, "<f4").tolist(), (4 + len(msg) - len(p)) % 4
    ('rows', 3, [1.0, 1.0], 0)
    """
    head = json.dumps({"k": kind, **header}, separators=(",", ":")).encode()
    head += b" " * (-(4 + len(head)) % 4)  # the payload starts 4-byte aligned (a Float32Array over it)
    return struct.pack("<I", len(head)) + head + np.ascontiguousarray(payload).tobytes()


def parse_binary(message: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and payload of :func:`binary_message` (for tests and plain clients)."""
    (n,) = struct.unpack_from("<I", message)
    return json.loads(message[4:4 + n]), message[4 + n:]


def detection_key(d: Mapping[str, Any]) -> str:
    """A detection's identity across partials: class and position (0.01 nm)."""
    return f"{d['class']}@{d['x_nm']:.2f},{d['y_nm']:.2f}"


def _text(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _counts(detections: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, int]:
    c = Counter(d["class"] for d in detections)
    return {name: int(c.get(name, 0)) for name in classes}


@dataclass
class LiveScan:
    """The scan being acquired, as the page draws it."""

    scan_id: str
    rows: int
    cols: int
    width_m: float
    height_m: float
    scan_direction: str = "down"
    channel: str = "Z"
    unit: str = "m"
    image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))
    have_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    rows_done: int = 0
    classes: tuple[str, ...] = ()
    detections: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: Mapping[str, Any] | None = None
    latency_ms: float = 0.0
    finished: bool = False

    def __post_init__(self) -> None:
        if self.image.size == 0:
            self.image = np.full((self.rows, self.cols), np.nan, np.float32)
            self.labels = np.zeros((self.rows, self.cols), np.uint8)
            self.have_rows = np.zeros(self.rows, bool)

    def info(self) -> dict[str, Any]:
        return {"type": "scan", "scan": self.scan_id, "rows": self.rows, "cols": self.cols,
                "width_nm": self.width_m * 1e9, "height_nm": self.height_m * 1e9,
                "scan_direction": self.scan_direction, "channel": self.channel, "unit": self.unit,
                "rows_done": self.rows_done, "finished": self.finished}

    def det_message(self, add: list[dict[str, Any]], delete: list[str], *, full: bool = False) -> dict[str, Any]:
        dets = list(self.detections.values())
        return {"type": "det", "scan": self.scan_id, "rows_done": self.rows_done, "classes": list(self.classes),
                "model": self.model, "latency_ms": self.latency_ms, "add": add, "del": delete, "full": full,
                "counts": _counts(dets, self.classes), "total": len(dets)}


@dataclass
class FinishedFrame:
    """A finished frame kept for the strip and for teach-in (image at most a few MB)."""

    key: str
    scan_id: str
    source: str
    complete: bool
    rows: int
    cols: int
    width_nm: float
    height_nm: float
    classes: tuple[str, ...]
    detections: list[dict[str, Any]]
    model: Mapping[str, Any]
    not_segmented: str | None
    t: float
    image: np.ndarray | None = None
    labels: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        return {"key": self.key, "scan": self.scan_id, "source": self.source, "complete": self.complete,
                "rows": self.rows, "cols": self.cols, "width_nm": self.width_nm, "height_nm": self.height_nm,
                "classes": list(self.classes), "counts": _counts(self.detections, self.classes),
                "model": dict(self.model), "not_segmented": self.not_segmented, "t": self.t,
                "has_image": self.image is not None, "has_labels": self.labels is not None}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.image, self.labels) if a is not None)


class FrameShelf:
    """The finished frames of the session, newest last, bounded by count and bytes (thread-safe)."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._frames: OrderedDict[str, FinishedFrame] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, frame: FinishedFrame) -> None:
        with self._lock:
            self._frames.pop(frame.key, None)
            self._frames[frame.key] = frame
            while len(self._frames) > 1 and (len(self._frames) > self.max_frames or
                                             sum(f.nbytes for f in self._frames.values()) > self.max_bytes):
                self._frames.popitem(last=False)

    def get(self, key: str) -> FinishedFrame | None:
        with self._lock:
            return self._frames.get(key)

    def summaries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.summary() for f in self._frames.values()]

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._frames)


class ViewerFeed:
    """The page's state, fed by documents on one thread; composes the messages for the browsers.

    Parameters
    ----------
    keep_frames : int
        Finished frames kept for the strip (their images, for reopening and teach-in).
    keep_mb : int
        Memory those frames may hold.
    on_finished : callable, optional
        ``on_finished(frame, image, source_path)`` for each finished frame
        with an image (teach-in makes it available for labelling).
    clock : callable
        Wall-clock seconds (the page shows times).
    """

    def __init__(
        self,
        *,
        keep_frames: int = 24,
        keep_mb: int = 128,
        on_finished: Callable[[FinishedFrame], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shelf = FrameShelf(keep_frames, keep_mb << 20)
        self.scan: LiveScan | None = None
        self.status: dict[str, Any] | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.decisions: deque[dict[str, Any]] = deque(maxlen=RECENT_DECISIONS)
        self.on_finished = on_finished
        self.hello: dict[str, Any] = {"type": "hello"}
        #: ``deliver(messages, client)``: client None means every browser (set by the server).
        self.deliver: Callable[[list[Outgoing], int | None], None] = lambda msgs, client: None
        self._clock = clock
        self._snapshots: deque[int] = deque()
        self._keys: Counter[str] = Counter()
        self.handled = 0

    # -- the server asks ------------------------------------------------------

    def request_snapshot(self, client: int) -> None:
        """A browser connected or fell behind: send it everything at the next :meth:`serve` (thread-safe)."""
        self._snapshots.append(client)

    def serve(self) -> None:
        """Answer waiting snapshot requests (on the feed's thread)."""
        while self._snapshots:
            client = self._snapshots.popleft()
            self.deliver(self.snapshot(), client)

    def snapshot(self) -> list[Outgoing]:
        """Everything a browser that has nothing needs: hello, status, strip, and the current scan."""
        out: list[Outgoing] = [_text({**self.hello, "frames": self.shelf.summaries(),
                                      "events": list(self.events), "decisions": list(self.decisions)})]
        if self.status is not None:
            out.append(_text(self.status))
        scan = self.scan
        if scan is not None:
            out.append(_text(scan.info()))
            done = np.flatnonzero(scan.have_rows)
            if done.size:
                r0, r1 = int(done[0]), int(done[-1]) + 1
                out.append(binary_message("rows", {"scan": scan.scan_id, "row0": r0, "n": r1 - r0, "cols": scan.cols},
                                          scan.image[r0:r1].astype("<f4")))
            if scan.labels.any():
                lab = np.flatnonzero(scan.labels.any(axis=1))
                r0, r1 = int(lab[0]), int(lab[-1]) + 1
                out.append(binary_message("labels", {"scan": scan.scan_id, "row0": r0, "n": r1 - r0,
                                                     "cols": scan.cols}, scan.labels[r0:r1]))
            out.append(_text(scan.det_message(list(scan.detections.values()), [], full=True)))
        return out

    # -- documents --------------------------------------------------------------

    def handle(self, topic: str, header: Mapping[str, Any], payload: np.ndarray | None = None,
               local: Mapping[str, Any] | None = None) -> None:
        """One document (or decoded message): update the state, deliver what is new, serve snapshots."""
        self.handled += 1
        out: list[Outgoing] = []
        if topic == "level.line":
            out = self._level_line(header, payload)
        elif topic == "seg.partial":
            out = self._partial(header, payload)
        elif topic == "seg.frame":
            out = self._frame(header, payload, local or {})
        elif topic == "status":
            self.status = {"type": "status", **{k: header[k] for k in ("state", "uptime_s", "counters", "queues",
                                                                     "model", "version", "t") if k in header}}
            out = [_text(self.status)]
        elif topic in ("event", "bad_input", "decision"):
            out = self._event(topic, header)
        if out:
            self.deliver(out, None)
        self.serve()

    def _scan_for(self, h: Mapping[str, Any]) -> tuple[LiveScan, list[Outgoing]]:
        scan = self.scan
        if scan is not None and scan.scan_id == h["scan_id"] and (scan.rows, scan.cols) == (h["rows"], h["cols"]):
            return scan, []
        direction = h.get("scan_direction") or (h.get("position") or {}).get("scan_direction") or "down"
        scan = LiveScan(str(h["scan_id"]), int(h["rows"]), int(h["cols"]), float(h["width_m"]), float(h["height_m"]),
                        scan_direction=str(direction), channel=str(h.get("channel", "Z")), unit=str(h.get("unit", "m")))
        self.scan = scan
        return scan, [_text(scan.info())]

    def _level_line(self, h: Mapping[str, Any], payload: np.ndarray | None) -> list[Outgoing]:
        if payload is None:
            return []
        scan, out = self._scan_for(h)
        if scan.finished:  # a restarted scan id: start over
            self.scan = None
            scan, out = self._scan_for(h)
        row = int(h["row"])
        values = np.asarray(payload, dtype=np.float32)
        scan.image[row] = values
        scan.have_rows[row] = True
        scan.rows_done = max(scan.rows_done, int(h.get("rows_done", 0)))
        out.append(binary_message("rows", {"scan": scan.scan_id, "row0": row, "n": 1, "cols": scan.cols,
                                           "rows_done": scan.rows_done}, values.astype("<f4")))
        return out

    def _paste_labels(self, scan: LiveScan, h: Mapping[str, Any], payload: np.ndarray | None) -> list[Outgoing]:
        map_rows = h.get("map_rows")
        if payload is None or not map_rows:
            return []
        r0, r1 = int(map_rows[0]), int(map_rows[1])
        block = np.asarray(payload, dtype=np.uint8).reshape(r1 - r0, scan.cols)
        scan.labels[r0:r1] = block
        return [binary_message("labels", {"scan": scan.scan_id, "row0": r0, "n": r1 - r0, "cols": scan.cols}, block)]

    def _detections(self, scan: LiveScan, h: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        new: dict[str, dict[str, Any]] = {}
        for d in h.get("detections", ()):
            key = detection_key(d)
            new[key] = {**d, "key": key}
        old = scan.detections
        add = [d for k, d in new.items() if old.get(k) != d]
        delete = [k for k in old if k not in new]
        scan.detections = new
        return add, delete

    def _partial(self, h: Mapping[str, Any], payload: np.ndarray | None) -> list[Outgoing]:
        scan, out = self._scan_for(h)
        if scan.finished:
            self.scan = None
            scan, out = self._scan_for(h)
        scan.rows_done = max(scan.rows_done, int(h["rows_done"]))
        scan.classes = tuple(h.get("classes", ()))
        scan.model = h.get("model")
        scan.latency_ms = float(h.get("latency_ms", 0.0))
        out += self._paste_labels(scan, h, payload)
        add, delete = self._detections(scan, h)
        out.append(_text(scan.det_message(add, delete)))
        return out

    def _frame(self, h: Mapping[str, Any], payload: np.ndarray | None, local: Mapping[str, Any]) -> list[Outgoing]:
        rows, cols = int(h["rows"]), int(h["cols"])
        scan_id = str(h["scan_id"])
        scan = self.scan if self.scan is not None and self.scan.scan_id == scan_id else None
        image: np.ndarray | None = None
        labels = np.zeros((rows, cols), np.uint8)
        if payload is not None and h.get("map_rows"):
            r0, r1 = h["map_rows"]
            labels[r0:r1] = np.asarray(payload, np.uint8).reshape(r1 - r0, cols)
        if scan is not None and (scan.rows, scan.cols) == (rows, cols) and scan.have_rows.any():
            image = scan.image.copy()
        elif isinstance(local.get("image"), np.ndarray) and local["image"].shape == (rows, cols):
            image = np.asarray(local["image"], np.float32).copy()
        self._keys[scan_id] += 1
        key = scan_id if self._keys[scan_id] == 1 else f"{scan_id}~{self._keys[scan_id]}"
        frame = FinishedFrame(
            key=key, scan_id=scan_id, source=str(h.get("source")), complete=bool(h.get("complete")), rows=rows,
            cols=cols, width_nm=float(h["width_m"]) * 1e9, height_nm=float(h["height_m"]) * 1e9,
            classes=tuple(h.get("classes", ())), detections=[{**d, "key": detection_key(d)}
                                                            for d in h.get("detections", ())],
            model=dict(h.get("model") or {}), not_segmented=h.get("not_segmented"), t=self._clock(),
            image=image, labels=labels if payload is not None else None,
        )
        self.shelf.add(frame)
        out: list[Outgoing] = []
        if scan is not None:
            scan.finished = True
            out.append(_text(scan.info()))
        out.append(_text({"type": "frame", **frame.summary()}))
        if self.on_finished is not None:
            try:
                self.on_finished(frame)
            except Exception:  # teach-in bookkeeping must never stop the page
                log.exception("offering frame %s for teach-in failed", key)
        return out

    def _event(self, topic: str, h: Mapping[str, Any]) -> list[Outgoing]:
        kind = str(h.get("kind", topic))
        if topic == "bad_input":
            item = {"kind": f"bad_{kind}", "source": h.get("source"), "reason": h.get("reason"),
                    "quarantined": h.get("quarantined"), "t": self._clock()}
            self.events.append(item)
            return [_text({"type": "event", **item})]
        if topic == "decision" or kind in ("model", "decision"):
            item = {"kind": kind if topic == "event" else "decision", "t": self._clock(),
                    **{k: v for k, v in h.items() if k != "kind"}}
            self.decisions.append(item)
            return [_text({"type": "decision", **_plain(item)})]
        if kind == "start":  # where the daemon takes its inputs from, for the status panel
            sources = {"ingest": h.get("ingest"), "publish": h.get("publish"), "watch": list(h.get("watch") or [])}
            self.hello = {**self.hello, "sources": sources}
            return [_text({"type": "sources", **sources})]
        if kind == "error":
            item = {"kind": kind, "source": h.get("source") or h.get("scan_id"), "reason": h.get("error"),
                    "where": h.get("where"), "t": self._clock()}
            self.events.append(item)
            return [_text({"type": "event", **item})]
        return []


def _plain(value: Any) -> Any:
    """JSON-able copy (paths and tuples become strings and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
