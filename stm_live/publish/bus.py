"""The document bus: every document to every sink that wants it, none able to hold up another.

Workers call :meth:`DocumentBus.emit`, which never blocks: it appends the
document to the queue of each subscribed sink and returns. Each sink runs on a
thread of its own and takes its documents in the order they were emitted
(bluesky's run engine and callbacks, with a queue per callback). So:

* a slow sink (a browser on a bad network, a results folder on a full disk)
  only lets its own queue grow, and each queue is bounded by *bytes*
  (``max_bytes``): beyond it, new documents for that sink are dropped and
  counted (:meth:`DocumentBus.stats`), never the workers slowed;
* a failing sink (it raises) is logged (rate-limited) and counted, and gets
  the next document as usual (bluesky ``make_callback_safe``);
* a sink may ``emit`` documents of its own (the store says where a result
  went; the decision engine emits decisions): they go to every sink, itself
  included if subscribed.

Sinks that are cheap and thread-safe (the counters) can be ``inline``: called
in :meth:`emit` itself, so what they count is up to date when a heartbeat is
composed right after.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .documents import EVENT, Document

__all__ = ["DEFAULT_SINK_BYTES", "DocumentBus", "Sink", "SinkStats"]

log = logging.getLogger(__name__)

#: Default byte budget of one sink's queue.
DEFAULT_SINK_BYTES: Final = 64 << 20
#: Most documents one sink's queue holds whatever their size (headers cost memory too).
MAX_QUEUED_DOCUMENTS: Final = 100_000
#: Seconds between calls of a sink's ``poll`` while its queue is empty.
POLL_S: Final = 0.5


class Sink(Protocol):
    """Anything callable with a document. Optional methods: ``poll(now)`` (called when idle), ``close()``."""

    def __call__(self, doc: Document) -> None: ...


@dataclass
class SinkStats:
    """Running totals of one subscription."""

    delivered: int = 0
    dropped: int = 0
    failed: int = 0
    queued: int = 0
    queued_bytes: int = 0
    dropped_by_topic: dict[str, int] = field(default_factory=dict)


class _Subscription:
    def __init__(
        self,
        name: str,
        sink: Sink,
        topics: frozenset[str] | None,
        max_bytes: int,
        inline: bool,
        on_drop: Callable[[str, Document], None] | None,
    ) -> None:
        self.name = name
        self.sink = sink
        self.topics = topics
        self.max_bytes = max_bytes
        self.inline = inline
        self.on_drop = on_drop
        self.stats = SinkStats()
        self._queue: deque[Document] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._poll = getattr(sink, "poll", None)
        self.thread: threading.Thread | None = None
        self._busy = False

    def wants(self, doc: Document) -> bool:
        return self.topics is None or doc.topic in self.topics

    def offer(self, doc: Document) -> bool:
        """Queue ``doc``; False when it was dropped (the queue is over its budget)."""
        if self.inline:
            self._deliver(doc)
            return True
        size = doc.nbytes
        with self._cond:
            st = self.stats
            if st.queued and (st.queued_bytes + size > self.max_bytes or st.queued >= MAX_QUEUED_DOCUMENTS):
                st.dropped += 1
                st.dropped_by_topic[doc.topic] = st.dropped_by_topic.get(doc.topic, 0) + 1
                dropped = st.dropped
            else:
                self._queue.append(doc)
                st.queued += 1
                st.queued_bytes += size
                self._cond.notify()
                return True
        if dropped == 1 or dropped % 1000 == 0:
            log.warning("sink %s is not keeping up (%d MB queued): %d document(s) dropped so far", self.name,
                        self.max_bytes >> 20, dropped)
        if self.on_drop is not None and doc.topic != EVENT:
            self.on_drop(self.name, doc)
        return False

    def _deliver(self, doc: Document) -> None:
        try:
            self.sink(doc)
        except Exception:  # a failing sink is logged and counted, and gets the next document as usual
            self.stats.failed += 1
            n = self.stats.failed
            if n <= 5 or n % 1000 == 0:
                log.exception("sink %s failed on a %s document (%d failure(s) so far); carrying on", self.name,
                              doc.topic, n)
        else:
            self.stats.delivered += 1

    def run(self) -> None:
        next_poll = time.monotonic() + POLL_S
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    wait = next_poll - time.monotonic() if self._poll is not None else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._queue:
                    doc: Document | None = self._queue.popleft()
                    self._busy = True
                elif self._closing:
                    return
                else:
                    doc = None
            if doc is not None:
                self._deliver(doc)
                with self._cond:
                    self.stats.queued -= 1
                    self.stats.queued_bytes -= doc.nbytes
                    self._busy = False
                    self._cond.notify_all()
            if self._poll is not None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_S
                try:
                    self._poll(time.monotonic())
                except Exception:
                    log.exception("sink %s failed while polling; carrying on", self.name)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True


class DocumentBus:
    """Fan-out of documents to subscribed sinks, each behind its own byte-bounded queue and thread.

    Parameters
    ----------
    on_drop : callable, optional
        ``on_drop(sink_name, doc)`` when a document is dropped for a sink
        (not called for ``event`` documents, so reporting a drop cannot loop).

    Examples
    --------
    >>> from stm_live.publish.documents import event
    >>> seen = []
    >>> bus = DocumentBus()
    >>> bus.subscribe("list", seen.append)
    >>> bus.start(); bus.emit(event("hello", n=1)); bus.close()
    >>> [d.header["kind"] for d in seen]
    ['hello']
    """

    def __init__(self, *, on_drop: Callable[[str, Document], None] | None = None) -> None:
        self._subs: list[_Subscription] = []
        self._on_drop = on_drop
        self._started = False
        self._closed = False

    def subscribe(
        self,
        name: str,
        sink: Sink,
        *,
        topics: Collection[str] | None = None,
        max_bytes: int = DEFAULT_SINK_BYTES,
        inline: bool = False,
    ) -> None:
        """Add a sink before :meth:`start`: it gets every document of ``topics`` (None: all) from then on."""
        if self._started:
            raise RuntimeError("subscribe sinks before the bus starts")
        if any(s.name == name for s in self._subs):
            raise ValueError(f"a sink named {name!r} is already subscribed")
        self._subs.append(_Subscription(name, sink, None if topics is None else frozenset(topics), max_bytes,
                                        inline, self._on_drop))

    def start(self) -> None:
        """Start one thread per (not inline) sink."""
        self._started = True
        for sub in self._subs:
            if not sub.inline:
                sub.thread = threading.Thread(target=sub.run, name=f"stm-live-sink-{sub.name}", daemon=True)
                sub.thread.start()

    def emit(self, doc: Document) -> None:
        """Hand ``doc`` to every sink that wants it; never blocks (a full sink drops it and counts)."""
        if self._closed:
            log.debug("a %s document after the bus closed; not delivered", doc.topic)
            return
        for sub in self._subs:
            if sub.wants(doc):
                sub.offer(doc)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every sink has handled what it was given so far; False on timeout."""
        deadline = time.monotonic() + timeout
        return all(sub.wait_idle(max(0.0, deadline - time.monotonic())) for sub in self._subs if not sub.inline)

    def close(self, timeout: float = 10.0) -> None:
        """Let each sink finish its queue (up to ``timeout`` in all), stop the threads, close the sinks."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        # Sinks emit too (the store says where a result went): flush until a whole pass changes nothing.
        while time.monotonic() < deadline:
            before = sum(sub.stats.delivered + sub.stats.dropped for sub in self._subs)
            if not self.flush(max(0.0, deadline - time.monotonic())):
                break
            if sum(sub.stats.delivered + sub.stats.dropped for sub in self._subs) == before:
                break
        for sub in self._subs:
            sub.close()
        for sub in self._subs:
            if sub.thread is not None:
                sub.thread.join(max(0.0, deadline - time.monotonic()))
                if sub.thread.is_alive():
                    log.error("sink %s did not finish its %d queued document(s) in time; leaving them", sub.name,
                              sub.stats.queued)
        self._closed = True
        for sub in self._subs:
            close: Any = getattr(sub.sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing sink %s failed", sub.name)

    def stats(self) -> dict[str, SinkStats]:
        """Per sink: delivered, dropped, failed, queued (documents and bytes)."""
        return {sub.name: sub.stats for sub in self._subs}

    @property
    def dropped(self) -> int:
        """Documents dropped for some sink, in all."""
        return sum(sub.stats.dropped for sub in self._subs)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in all sink queues."""
        return sum(sub.stats.queued_bytes for sub in self._subs)
