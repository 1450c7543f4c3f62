"""The watcher's memory of file hashes across restarts: :class:`HashCache`.

At start-up the folder watcher looks at every file already in its folders and,
without this cache, reads each one whole to hash it, only to find it was
processed in an earlier run: a restart on a folder of 1000 scans read them
all. The cache keeps, per path, the SHA-256 seen for a given ``(size,
mtime_ns, inode)``; a file whose three values are unchanged is the file that
was hashed, and is not read again.

Why these keys: a controller writes a file by appending (size and mtime
change), a copy tool that keeps mtimes (``rsync -t``, ``cp -p``) writes a new
file and renames it (a new inode). A rewrite of the same size within one mtime
tick on the same inode would fool it, so, as git does for its index, entries
are only kept for files whose mtime is at least :data:`RACY_S` old when they
are hashed: such a file is hashed again next time instead.

The cache is a small JSON file (never a pickle) written atomically; a missing,
unreadable or malformed one is an empty cache, logged: it only saves time.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

__all__ = ["RACY_S", "HashCache"]

log = logging.getLogger(__name__)

#: Files modified less than this long before being hashed are not cached (mtime ticks on
#: network shares and FAT are up to 2 s).
RACY_S: Final = 3.0
#: Most entries kept; beyond this the oldest entries are dropped at save.
MAX_ENTRIES: Final = 200_000
_VERSION: Final = 1


def _key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class HashCache:
    """SHA-256 by path, valid while the file's size, mtime and inode are unchanged; thread-safe.

    Parameters
    ----------
    path : path-like
        The JSON file (typically ``<results>/watch_hashes.json``); read now, written by :meth:`save`.
    clock : callable
        Wall-clock seconds, compared with file mtimes (default :func:`time.time`).
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, int, int, str]] = self._load()
        self._dirty = False
        #: Lookups answered from the cache, and lookups that were not.
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[str, tuple[int, int, int, str]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("%s: hash cache unreadable (%s); every file present is hashed again", self.path, exc)
            return {}
        entries: dict[str, tuple[int, int, int, str]] = {}
        files = raw.get("files") if isinstance(raw, dict) and raw.get("version") == _VERSION else None
        if not isinstance(files, dict):
            log.warning("%s: not a version-%d hash cache; every file present is hashed again", self.path, _VERSION)
            return {}
        for name, value in files.items():
            if (
                isinstance(value, list) and len(value) == 4
                and all(type(v) is int for v in value[:3]) and isinstance(value[3], str) and len(value[3]) == 64
            ):
                entries[name] = (value[0], value[1], value[2], value[3])
        return entries

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: Path, st: os.stat_result) -> str | None:
        """The cached SHA-256 of ``path`` if ``st`` (its current ``stat``) matches, else None."""
        with self._lock:
            entry = self._entries.get(str(path))
            if entry is not None and entry[:3] == _key(st):
                self.hits += 1
                return entry[3]
            self.misses += 1
            return None

    def remember(self, path: Path, st: os.stat_result, sha256: str) -> None:
        """Record the hash of ``path`` as read with ``stat`` ``st`` (taken before reading it).

        Skipped for a file modified within :data:`RACY_S`: its mtime may not
        change if it is rewritten at once.
        """
        if self._clock() - st.st_mtime_ns / 1e9 < RACY_S:
            return
        with self._lock:
            self._entries[str(path)] = (*_key(st), sha256)
            self._dirty = True

    @property
    def dirty(self) -> bool:
        """True when entries were added since the last :meth:`save`."""
        return self._dirty

    def save(self) -> None:
        """Write the cache atomically (entries of files that no longer exist dropped); errors are logged."""
        with self._lock:  # held while writing too: two savers (the watcher's thread, stop()) never interleave
            live = {k: v for k, v in self._entries.items() if os.path.lexists(k)}
            if len(live) > MAX_ENTRIES:
                live = dict(sorted(live.items(), key=lambda kv: kv[1][1])[-MAX_ENTRIES:])
            self._entries = live
            self._dirty = False
            payload: dict[str, Any] = {"version": _VERSION, "files": {k: list(v) for k, v in live.items()}}
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            try:
                tmp.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError as exc:
                log.warning("%s: cannot save the hash cache (%s); files will be hashed again at the next start",
                            self.path, exc.strerror or exc)
