"""Queues between the daemon's threads, bounded by bytes (what fills memory), never by count alone.

A put never waits where waiting would hold up scan lines: :meth:`ByteQueue.put`
returns False when the item does not fit and the caller reports what it
refused. An item larger than the whole budget is still taken when the queue
is empty, so nothing is refused only for being big; the budget then bounds
what waits *behind* it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Final, Generic, TypeVar

__all__ = ["ByteQueue"]

T = TypeVar("T")

#: Most items in any queue whatever their size (each costs memory of its own).
MAX_ITEMS: Final = 1_000_000


class ByteQueue(Generic[T]):
    """A FIFO of items with sizes, bounded by their total bytes; thread-safe.

    Parameters
    ----------
    max_bytes : int
        Budget of the items waiting.
    max_items : int
        Most items waiting, whatever their size.

    Examples
    --------
    >>> q: ByteQueue[str] = ByteQueue(10)
    >>> q.put("a", 6), q.put("b", 6), q.put("c", 4)
    (True, False, True)
    >>> q.get_batch(0.0, 10), q.nbytes
    (['a', 'c'], 0)
    """

    def __init__(self, max_bytes: int, *, max_items: int = MAX_ITEMS) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self.refused = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes waiting."""
        with self._cond:
            return self._bytes

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def fits(self, nbytes: int) -> bool:
        """Whether an item of ``nbytes`` would be taken now."""
        with self._cond:
            return not self._items or (self._bytes + nbytes <= self.max_bytes and len(self._items) < self.max_items)

    def put(self, item: T, nbytes: int, *, wait_s: float = 0.0) -> bool:
        """Add ``item`` if it fits (waiting up to ``wait_s`` for room); False when refused or closed."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._items and (self._bytes + nbytes > self.max_bytes or len(self._items) >= self.max_items):
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    self.refused += 1
                    return False
                self._cond.wait(min(remaining, 0.2))
            if self._closed:
                return False
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()
            return True

    def get_batch(self, timeout: float, max_items: int) -> list[T]:
        """Up to ``max_items`` items, waiting up to ``timeout`` for the first; [] on timeout or when drained."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            out: list[T] = []
            while self._items and len(out) < max_items:
                item, nbytes = self._items.popleft()
                self._bytes -= nbytes
                out.append(item)
            if out:
                self._cond.notify_all()
            return out

    def get(self, timeout: float) -> T | None:
        """One item, waiting up to ``timeout``; None on timeout or once closed and empty."""
        batch = self.get_batch(timeout, 1)
        return batch[0] if batch else None

    def peek_nbytes(self) -> int:
        """Size of the oldest item (0 when empty)."""
        with self._cond:
            return self._items[0][1] if self._items else 0

    def close(self) -> None:
        """No more puts; getters drain what is left, then get nothing."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drained(self) -> bool:
        """True once closed and empty (a worker's signal to end)."""
        with self._cond:
            return self._closed and not self._items
