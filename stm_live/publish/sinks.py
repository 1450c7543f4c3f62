"""The daemon's sinks: each subscribes to the document bus and does one job at the edge.

* :class:`ZmqSink` sends the published topics on the PUB socket;
* :class:`StoreSink` keeps every finished frame in the result store, retrying
  while the results folder cannot be written;
* :class:`EventLogSink` writes what happened to ``events.jsonl``;
* :class:`Counters` keeps the running totals of the heartbeat (inline);
* :class:`ConsoleSink` tells the person at the microscope, in the log.

None of them builds a document or a record (that is
:mod:`stm_live.publish.documents`); each is small enough to read at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..errors import WireError
from ..wire import check_header, encode_document
from . import documents as docs
from .documents import Document
from .events import EventLog
from .socket import Publisher
from .store import ResultStore

__all__ = ["ConsoleSink", "Counters", "EventLogSink", "StoreSink", "ZmqSink"]

log = logging.getLogger("stm_live.daemon")

#: Results kept in memory for a retry while the results folder cannot be written.
STORE_RETRY_BYTES: Final = 512 << 20
#: First and longest wait between retries of a result that could not be stored (s).
STORE_RETRY_S: Final = (1.0, 30.0)


class ZmqSink:
    """Sends the published documents on the PUB socket, with their latency filled in.

    ``latency_ms`` of a ``seg.*`` document is measured here, at the moment it
    is sent, from the clock time its input arrived (``doc.local["arrived"]``).
    """

    topics: Final = docs.PUBLISHED_TOPICS

    def __init__(self, publisher: Publisher, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.publisher = publisher
        self._clock = clock

    def __call__(self, doc: Document) -> None:
        arrived = doc.local.get("arrived")
        if arrived is not None and "latency_ms" in doc.header:
            header = dict(doc.header)
            header["latency_ms"] = round(max(0.0, (self._clock() - arrived) * 1e3), 3)
            doc = Document(doc.topic, header, doc.payload, doc.local)
        try:
            parts = encode_document(doc)
        except WireError as exc:  # a document we built is wrong: a bug, but not a reason to stop
            raise RuntimeError(f"cannot encode a {doc.topic} document: {exc}") from exc
        self.publisher.send(parts)

    def poll(self, now: float) -> None:
        """Read subscriptions now and then (an XPUB socket queues them)."""
        self.publisher.poll_subscriptions(0.0)


class StoreSink:
    """Stores each ``seg.frame`` durably; a result that cannot be stored is kept and retried.

    Parameters
    ----------
    store : ResultStore
        The results folder.
    emit : callable
        The bus's ``emit``: the store says where each result went (``event``
        ``frame``) or that the content was stored before (``duplicate``).

    Notes
    -----
    When the results folder cannot be written (disk full, folder removed,
    permissions), the result stays in memory (up to
    :data:`STORE_RETRY_BYTES`) and is retried with a growing wait
    (:data:`STORE_RETRY_S`); the streamed scan's journal is deleted only once
    its result is stored, so a restart meanwhile processes it again. Errors
    are logged once per outage and then every 100th try, not once per result or line.
    """

    topics: Final = (docs.SEG_FRAME,)

    def __init__(self, store: ResultStore, *, emit: Callable[[Document], None]) -> None:
        self.store = store
        self._emit = emit
        self._retry: deque[Document] = deque()
        self._retry_bytes = 0
        self._wait = STORE_RETRY_S[0]
        self._next_try = 0.0
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Results waiting for a retry."""
        return len(self._retry)

    def __call__(self, doc: Document) -> None:
        if self._retry:  # keep the order: older results first
            self._hold(doc)
            self.poll(time.monotonic())
            return
        if not self._store(doc):
            self._hold(doc)

    def poll(self, now: float) -> None:
        """Retry held results once their wait is over."""
        if not self._retry or now < self._next_try:
            return
        while self._retry:
            doc = self._retry[0]
            if not self._store(doc):
                self._next_try = now + self._wait
                self._wait = min(self._wait * 2, STORE_RETRY_S[1])
                return
            self._retry.popleft()
            self._retry_bytes -= doc.nbytes
        self._wait = STORE_RETRY_S[0]
        log.info("the results folder %s is writable again; every held result is stored", self.store.dir)

    def _hold(self, doc: Document) -> None:
        size = doc.nbytes
        if self._retry and self._retry_bytes + size > STORE_RETRY_BYTES:
            record = doc.local["record"]
            self._emit(docs.event(
                "error", scan_id=record["scan_id"], where="storing", source=record["source"],
                error=f"not stored: {STORE_RETRY_BYTES >> 20} MB of results already wait for the results folder; "
                      "a streamed scan stays in the journal and a file is checked again at the next start",
            ))
            return
        self._retry.append(doc)
        self._retry_bytes += size

    def _store(self, doc: Document) -> bool:
        record: Mapping[str, Any] = doc.local["record"]
        on_stored = doc.local.get("on_stored")
        try:
            check_header("result", record)  # the record's schema (stm_live/schemas/result.json)
        except WireError as exc:  # a bug in the composer: say so, and keep the result all the same
            log.error("%s: the result record does not match its schema (stored all the same): %s",
                      record.get("scan_id"), exc)
        sha = str(record["sha256"])
        if self.store.is_processed(sha):
            self._emit(docs.event("duplicate", scan_id=record["scan_id"], source=record["source"], sha256=sha))
            if on_stored is not None:
                on_stored()
            return True
        try:
            stored = self.store.store(record, doc.local.get("class_map"), image=doc.local.get("image"))
        except OSError as exc:
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:  # once per outage, then every 100th try
                log.error("%s (%s): cannot store the result in %s: %s; kept in memory and retried (%d failure(s))",
                          record["scan_id"], record["source"], self.store.dir, exc, self._failures)
                self._emit(docs.event("error", scan_id=record["scan_id"], where="storing", error=str(exc),
                                      failures=self._failures))
            return False
        self._failures = 0
        if on_stored is not None:
            on_stored()
        counts: dict[str, int] = {}
        for d in record["detections"]:
            counts[d["class"]] = counts.get(d["class"], 0) + 1
        self._emit(docs.event(
            "frame", scan_id=record["scan_id"], source=record["source"], sha256=sha, complete=record["complete"],
            detections=len(record["detections"]), counts=counts, result=str(stored.record),
            overlay=str(stored.overlay) if stored.overlay else None,
            segment_ms=record["timings_ms"].get("total"), not_segmented=record.get("not_segmented"),
        ))
        return True


_EVENT_KINDS: Final = {
    docs.SCAN_STARTED: "scan_started",
    docs.SCAN_FINISHED: "scan_finished",
}


class EventLogSink:
    """Writes every low-rate document to the event log (not lines, partials or heartbeats)."""

    topics: Final = (docs.SCAN_STARTED, docs.SCAN_FINISHED, docs.BAD_INPUT, docs.EVENT, docs.DECISION)

    def __init__(self, events: EventLog) -> None:
        self.events = events

    def __call__(self, doc: Document) -> None:
        header = dict(doc.header)
        if doc.topic == docs.EVENT:
            kind = header.pop("kind")
        elif doc.topic == docs.BAD_INPUT:
            kind = "bad_message" if header.get("kind") == "message" else f"bad_{header.get('kind', 'input')}"
            header.pop("kind", None)
        elif doc.topic == docs.DECISION:
            kind = "decision"
            header.pop("v", None)
        else:
            kind = _EVENT_KINDS[doc.topic]
        self.events.write(kind, **header)

    def close(self) -> None:
        self.events.close()


class Counters:
    """Running totals for the heartbeat, counted from the documents themselves (an inline sink).

    Workers add what no document stands for (messages and lines received)
    with :meth:`add`.
    """

    NAMES: Final = ("messages", "lines", "partials", "frames", "files", "not_segmented", "errors", "bad_messages",
                    "bad_files", "refused", "quarantined", "duplicates", "ignored", "decisions")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def __call__(self, doc: Document) -> None:
        topic, h = doc.topic, doc.header
        if topic == docs.SEG_PARTIAL:
            self.add("partials")
        elif topic == docs.SEG_FRAME:
            self.add("frames")
            if h.get("source") != "zmq":
                self.add("files")
            if h.get("not_segmented"):
                self.add("not_segmented")
        elif topic == docs.BAD_INPUT:
            self.add("errors")
            kind = h.get("kind")
            self.add({"message": "bad_messages", "file": "bad_files"}.get(str(kind), "refused"))
            if h.get("quarantined"):
                self.add("quarantined")
        elif topic == docs.DECISION:
            self.add("decisions")
        elif topic == docs.EVENT:
            kind = h.get("kind")
            if kind == "error":
                self.add("errors")
            elif kind == "duplicate":
                self.add("duplicates")
            elif kind == "ignored":
                self.add("ignored")


class ConsoleSink:
    """Tells the person at the microscope what happens, in the log (bad inputs rate-limited)."""

    topics: Final = (docs.SCAN_STARTED, docs.SCAN_FINISHED, docs.BAD_INPUT, docs.EVENT, docs.DECISION)

    def __init__(self) -> None:
        self._bad = 0

    def __call__(self, doc: Document) -> None:
        h = doc.header
        if doc.topic == docs.SCAN_STARTED:
            log.info("scan %s started (%s %s, %d x %d px, %.4g x %.4g nm, scanning %s)", h["scan_id"], h["channel"],
                     h["direction"], h["cols"], h["rows"], h["width_nm"], h["height_nm"], h["scan_direction"])
        elif doc.topic == docs.SCAN_FINISHED:
            log.info("scan %s finished (%s): %d of %d rows%s", h["scan_id"], h["reason"], h["rows_received"],
                     h["rows"], "" if h["complete"] else ", incomplete")
        elif doc.topic == docs.BAD_INPUT:
            self._bad += 1
            if self._bad <= 20 or self._bad % 1000 == 0:
                log.warning("%s refused (%s): %s", h["source"], h["kind"], h["reason"])
                if self._bad == 20:
                    log.warning("more refused inputs are logged every 1000th only (all are in events.jsonl)")
        elif doc.topic == docs.DECISION:
            log.info("decision: rule %s -> %s %s on scan %s: %s", h["rule"], h["action"],
                     {k: v for k, v in h["params"].items() if k != "target"}, h["scan_id"], h["reason"])
        elif doc.topic == docs.EVENT:
            self._event(h)

    @staticmethod
    def _event(h: Mapping[str, Any]) -> None:
        kind = h["kind"]
        if kind == "frame":
            counts = h.get("counts") or {}
            summary = ", ".join(f"{n} {c}" for c, n in counts.items()) or "no detections"
            if h.get("not_segmented"):
                summary = f"not segmented: {h['not_segmented']}"
            log.info("%s (%s): %s -> %s", h["scan_id"], h["source"], summary, h["result"])
        elif kind == "duplicate":
            log.info("%s (%s): the same content is already stored, not stored again", h["scan_id"], h["source"])
        elif kind == "ignored":
            log.info("scan %s: %s", h.get("scan_id"), h.get("reason"))
        elif kind == "error" and h.get("where") != "storing":  # the store logs its own, rate-limited
            log.error("%s: %s", h.get("scan_id") or h.get("source") or h.get("where"), h.get("error"))
