"""The event log: ``events.jsonl``, one JSON object per event, rotated by size.

The log is for people and tools reading what the daemon did (a scan started,
a file was quarantined, a result stored, a message refused). It is not what
makes results durable (the processed set of :mod:`stm_live.publish.store` is),
so lines are flushed at once but not fsynced.

Rotation: when the file would grow past ``max_bytes`` it is renamed to
``events.jsonl.1`` (older ones shift to ``.2`` ... ``.<backups>``, the oldest
is deleted) and a new file is started, so a flood of bad messages cannot fill
the disk through the log.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from .store import jsonable, utc_iso

__all__ = ["DEFAULT_BACKUPS", "DEFAULT_MAX_BYTES", "EventLog"]

#: Default size at which ``events.jsonl`` is rotated.
DEFAULT_MAX_BYTES: Final = 64 << 20
#: Default number of rotated files kept (``events.jsonl.1`` .. ``.5``).
DEFAULT_BACKUPS: Final = 5


class EventLog:
    """Append-only JSON-lines event log, thread-safe, rotated by size.

    Each line is ``{"time": ISO 8601 UTC, "kind": ..., **context}``; values
    that JSON cannot hold are written as text, non-finite floats as null.

    Parameters
    ----------
    path : path-like
        The log file; its folder is created if missing.
    max_bytes : int
        Size after which the file is rotated (config ``results.events_max_mb``).
    backups : int
        Rotated files kept (config ``results.events_backups``); 0 keeps none.
    clock : callable
        Unix seconds (default :func:`time.time`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 1024 or backups < 0:
            raise ValueError(f"EventLog needs max_bytes >= 1024 and backups >= 0, got {max_bytes}, {backups}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._fh: IO[str] | None = self._open()
        self._size = self.path.stat().st_size

    def _open(self) -> IO[str]:
        return open(self.path, "a", encoding="utf-8")

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = self._open()
        self._size = 0
        self.rotations += 1

    def write(self, kind: str, **context: Any) -> dict[str, Any]:
        """Append one event; return it as written. Never raises for unserialisable context.

        Raises
        ------
        ValueError
            The log is closed.
        OSError
            The file cannot be written (disk full, folder gone).
        """
        event = {"time": utc_iso(self._clock()), "kind": kind, **jsonable(context)}
        line = json.dumps(event, allow_nan=False, ensure_ascii=False) + "\n"
        size = len(line.encode("utf-8"))
        with self._lock:
            if self._fh is None:
                raise ValueError(f"event log {self.path} is closed")
            if self._size and self._size + size > self.max_bytes:
                self._rotate()
                assert self._fh is not None
            self._fh.write(line)
            self._fh.flush()
            self._size += size
        return event

    def close(self) -> None:
        """Close the file (later writes raise ValueError)."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
