"""Watched folders -> finished scan files: :class:`FolderWatcher`.

A controller writes a scan file over some time; the watcher hands a file on
only once it is complete, and each content only once.

* :func:`file_state` (no side effects) says whether a file is complete:
  an ``.sxm`` when its size equals what its header promises
  (``read_sxm_header(path).expected_size``), an ``.npy`` likewise from its
  array header, an ``.npz`` when :func:`numpy.load` reads every array and its
  size did not change since the previous check.
* :class:`SettleTracker` (pure, clock passed in) decides when to look at a
  file again: right away when it appears, then after ``retry_initial_s``,
  doubling up to ``retry_max_s``, back to the start whenever it grows or an
  event says it changed. A file that stays incomplete and unchanged for
  ``settle_timeout_s`` is given up on (and quarantined by the caller). The
  retries are what make this work on Windows, where watchdog reports no
  "file closed" event and Nanonis runs.
* :class:`FolderWatcher` is the I/O edge: a watchdog observer feeds paths to
  one worker thread, which checks files when due, hashes complete ones
  (SHA-256 of the bytes), skips contents already handed on (this session) or
  already processed (``is_processed``, the result store), and calls
  ``on_file`` / ``on_bad``. Files present at start-up are checked too; with a
  ``hash_cache`` file (:class:`~.hash_cache.HashCache`) those unchanged since an
  earlier run (size, mtime, inode) are not read again.

Nothing that matches the patterns is passed over in silence: a folder named
``x.sxm``, a symbolic link to nothing or a FIFO is reported once through
``on_ignored`` (and a WARNING in the log), a file that cannot be opened
(permission denied; on Windows, locked by its writer) is retried like an
incomplete one and, if it stays so, given up on with that reason.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import logging
import os
import queue
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ..errors import ConfigError, ScanReadError
from ..io.sxm import DATA_MARKER, parse_sxm_header, read_sxm_head
from .hash_cache import HashCache

__all__ = [
    "Bad",
    "Complete",
    "FileState",
    "FolderWatcher",
    "Gone",
    "Ignore",
    "Incomplete",
    "NotAFile",
    "ReadyFile",
    "SettleTracker",
    "Unreadable",
    "file_sha256",
    "file_state",
]

log = logging.getLogger(__name__)

_END_TAG: Final = b":SCANIT_END:"
_HEADER_PROBE: Final = 1 << 20
_NPY_MAGIC: Final = b"\x93NUMPY"
_ZIP_MAGICS: Final = (b"PK\x03\x04", b"PK\x05\x06")


# --------------------------------------------------------------------------
# Completeness
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Complete:
    """The file is complete: ``size`` bytes, all its header promises."""

    path: Path
    size: int


@dataclass(frozen=True)
class Incomplete:
    """Still being written: ``actual`` bytes of ``expected`` (None: not known yet)."""

    path: Path
    expected: int | None
    actual: int
    detail: str = ""

    def describe(self) -> str:
        """One line for a log or reason file."""
        size = f"{self.actual} of {self.expected} bytes" if self.expected is not None else f"{self.actual} bytes"
        return f"incomplete ({size})" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Bad:
    """Not a usable scan file, whatever happens next; ``reason`` says why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Gone:
    """The file no longer exists (deleted or moved away)."""

    path: Path


@dataclass(frozen=True)
class Unreadable:
    """The file is there (``size`` bytes) but cannot be read: permission denied, locked by its writer, ...

    Retried like :class:`Incomplete` (on Windows a controller's open file is
    locked until it is closed), given up on with ``reason`` if it stays so.
    """

    path: Path
    size: int
    reason: str

    def describe(self) -> str:
        """One line for a log or reason file."""
        return f"unreadable ({self.size} bytes): {self.reason}"


@dataclass(frozen=True)
class NotAFile:
    """The name matches a pattern but it is no regular file: a folder, a dangling link, a FIFO."""

    path: Path
    reason: str


FileState = Complete | Incomplete | Unreadable | Bad | NotAFile | Gone


def _sxm_header_unfinished(head: bytes) -> bool:
    """True when ``head`` looks like the start of an .sxm header still being written."""
    if head.lstrip()[:1] != b":":
        return False
    end = head.find(_END_TAG)
    return end < 0 or head.find(DATA_MARKER, end) < 0


def _sxm_state(path: Path, size: int) -> FileState:
    with path.open("rb") as fh:  # OSError (permission denied, ...) is file_state's to report
        head = read_sxm_head(fh)
    try:
        header = parse_sxm_header(path, head)
    except ScanReadError as exc:
        if size < _HEADER_PROBE and _sxm_header_unfinished(head):
            return Incomplete(path, None, size, "the header is not complete yet")
        return Bad(path, exc.reason)
    expected = header.expected_size
    if size < expected:
        return Incomplete(path, expected, size)
    if size > expected:
        return Bad(
            path,
            f"file is larger than its header describes: {size} bytes, expected {expected} "
            f"({header.n_images} images of {header.cols} x {header.rows} px after a {header.data_offset}-byte header)",
        )
    return Complete(path, size)


def _npy_state(path: Path, size: int) -> FileState:
    with path.open("rb") as fh:
        magic = fh.read(len(_NPY_MAGIC))
        if len(magic) < len(_NPY_MAGIC):
            return Incomplete(path, None, size, "the array header is not complete yet")
        if magic != _NPY_MAGIC:
            return Bad(path, "not a NumPy .npy file (it does not start with \\x93NUMPY)")
        fh.seek(0)
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        except (ValueError, EOFError, OSError) as exc:
            if size < 1 << 16:  # the header is at most 64 kB; it may still be arriving
                return Incomplete(path, None, size, f"the array header is not readable yet: {exc}")
            return Bad(path, f"not a readable NumPy .npy file: {exc}")
        if dtype.hasobject:
            return Bad(path, f"the array holds Python objects (dtype {dtype}); stm-live never unpickles")
        expected = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        return Incomplete(path, expected, size)
    if size > expected:
        return Bad(path, f"file is larger than its header describes: {size} bytes, expected {expected}")
    return Complete(path, size)


def _npz_state(path: Path, size: int, previous_size: int | None) -> FileState:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if len(magic) < 4:
        return Incomplete(path, None, size, "nothing readable yet")
    if magic not in _ZIP_MAGICS:
        return Bad(path, "not a NumPy .npz file (not a zip archive)")
    try:
        # Our own file object: np.load leaks the one it opens when the archive is truncated.
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            for key in npz.files:
                npz[key]  # reads and CRC-checks every member
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            return Bad(path, f"an array holds Python objects; stm-live never unpickles ({exc})")
        return Incomplete(path, None, size, f"not readable yet: {exc}")
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        return Incomplete(path, None, size, f"not readable yet: {exc}")
    if previous_size != size:
        return Incomplete(path, None, size, "readable; waiting for its size to stay the same over two checks")
    return Complete(path, size)


def file_state(path: str | os.PathLike[str], *, previous_size: int | None = None) -> FileState:
    """Whether a scan file is complete, still being written, or bad.

    Parameters
    ----------
    path : path-like
        An ``.sxm``, ``.npy`` or ``.npz`` file.
    previous_size : int, optional
        Its size at the previous check (``.npz`` counts as complete only
        when it is unchanged).

    Returns
    -------
    Complete, Incomplete, Unreadable, Bad, NotAFile or Gone
        An empty file is :class:`Incomplete` (the controller may just have
        created it); a file larger than its header promises, a non-scan file
        or one holding pickled objects is :class:`Bad`; one that cannot be
        opened (permission denied) :class:`Unreadable`; a folder, a link to
        nothing or a FIFO :class:`NotAFile`. Never opens anything but a
        regular file (opening a FIFO would block).
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return _not_found(p)
    except OSError as exc:  # a link loop, a folder we may not enter, ...
        return _not_found(p) if p.is_symlink() else Unreadable(p, 0, _os_reason(exc))
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            return NotAFile(p, "a folder named like a scan file, not a file; ignored")
        return NotAFile(p, f"not a regular file ({_kind(st.st_mode)}); ignored")
    size = st.st_size
    suffix = p.suffix.lower()
    if suffix not in (".sxm", ".npy", ".npz"):
        return Bad(p, f"unsupported file type {suffix or '(no suffix)'!r}; expected .sxm, .npy or .npz")
    if size == 0:
        return Incomplete(p, None, 0, "the file is empty")
    try:
        if suffix == ".sxm":
            return _sxm_state(p, size)
        if suffix == ".npy":
            return _npy_state(p, size)
        return _npz_state(p, size, previous_size)
    except FileNotFoundError:
        return Gone(p)
    except OSError as exc:
        return Unreadable(p, size, _os_reason(exc))


def _os_reason(exc: OSError) -> str:
    """``"permission denied (EACCES)"``: what the operating system said, with its code."""
    if isinstance(exc, PermissionError):
        return f"cannot open it: permission denied ({exc.strerror or exc})"
    return f"cannot read it: {exc.strerror or exc}"


def _not_found(path: Path) -> FileState:
    """``stat`` found nothing: gone, or a symbolic link to something that does not exist."""
    try:
        target = os.readlink(path)
    except OSError:
        return Gone(path)
    return NotAFile(path, f"a symbolic link to {target!r}, which does not exist (or is a loop); ignored")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return f"mode {mode:o}"


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes: the content hash files are deduplicated by."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# When to look again (pure)
# --------------------------------------------------------------------------


@dataclass
class _Pending:
    path: Path
    first_seen: float
    last_change: float
    next_check: float
    attempts: int = 0
    size: int | None = None
    last: FileState | None = None


@dataclass(frozen=True)
class Ready:
    """Decision: the file is complete; hand it on."""

    path: Path
    size: int


@dataclass(frozen=True)
class Retry:
    """Decision: look again at ``at`` (clock seconds)."""

    path: Path
    at: float


@dataclass(frozen=True)
class GiveUp:
    """Decision: the file is bad or never completed; quarantine it with ``reason``."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Forget:
    """Decision: the file is gone; nothing to do."""

    path: Path


@dataclass(frozen=True)
class Ignore:
    """Decision: not a file (a folder, a dangling link): report ``reason`` once, leave it where it is."""

    path: Path
    reason: str


Decision = Ready | Retry | GiveUp | Forget | Ignore


class SettleTracker:
    """Which files to check when, with exponential backoff; pure (time is passed in).

    Parameters
    ----------
    retry_initial_s, retry_max_s : float
        First wait before re-checking an incomplete file, doubled on every
        unchanged check up to ``retry_max_s`` (config ``watch.retry_*``).
    settle_timeout_s : float
        Give up on a file incomplete and unchanged for this long
        (config ``watch.settle_timeout_s``).

    Examples
    --------
    >>> t = SettleTracker(retry_initial_s=0.1, retry_max_s=0.4, settle_timeout_s=1.0)
    >>> t.touch(Path("a.sxm"), now=0.0)
    >>> t.due(0.0)
    [PosixPath('a.sxm')]
    >>> [round(t.update(Incomplete(Path("a.sxm"), 10, 5), now=x).at - x, 2) for x in (0.0, 0.1, 0.3)]
    [0.1, 0.2, 0.4]
    """

    def __init__(self, *, retry_initial_s: float, retry_max_s: float, settle_timeout_s: float) -> None:
        if not (0 < retry_initial_s <= retry_max_s and settle_timeout_s > 0):
            raise ValueError(
                "need 0 < retry_initial_s <= retry_max_s and settle_timeout_s > 0, got "
                f"{retry_initial_s}, {retry_max_s}, {settle_timeout_s}"
            )
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.settle_timeout_s = settle_timeout_s
        self._pending: dict[Path, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def touch(self, path: Path, now: float) -> None:
        """A file appeared or changed: check a new one now, a known one soon."""
        entry = self._pending.get(path)
        if entry is None:
            self._pending[path] = _Pending(path, first_seen=now, last_change=now, next_check=now)
            return
        # Something happened to it: start the backoff over, but at most one check per
        # retry_initial_s however many events a write in small chunks produces.
        entry.attempts = 0
        entry.last_change = now
        entry.next_check = min(entry.next_check, now + self.retry_initial_s)

    def due(self, now: float) -> list[Path]:
        """Files whose check is due, oldest first."""
        return [e.path for e in sorted(self._pending.values(), key=lambda e: e.next_check) if e.next_check <= now]

    def next_due(self) -> float | None:
        """Clock time of the next check, None when nothing is pending."""
        return min((e.next_check for e in self._pending.values()), default=None)

    def previous_size(self, path: Path) -> int | None:
        """Size seen at the previous check (for :func:`file_state`)."""
        entry = self._pending.get(path)
        return None if entry is None else entry.size

    def forget(self, path: Path) -> None:
        """Stop tracking ``path`` (no-op when unknown)."""
        self._pending.pop(path, None)

    def update(self, state: FileState, now: float) -> Decision:
        """Record the result of checking a file and decide what happens next."""
        path = state.path
        entry = self._pending.get(path)
        if entry is None:
            entry = self._pending[path] = _Pending(path, first_seen=now, last_change=now, next_check=now)
        if isinstance(state, Complete):
            del self._pending[path]
            return Ready(path, state.size)
        if isinstance(state, Gone):
            del self._pending[path]
            return Forget(path)
        if isinstance(state, Bad):
            del self._pending[path]
            return GiveUp(path, state.reason)
        if isinstance(state, NotAFile):
            del self._pending[path]
            return Ignore(path, state.reason)
        size = state.actual if isinstance(state, Incomplete) else state.size
        if entry.size is not None and size != entry.size:
            entry.attempts = 0
            entry.last_change = now
        entry.size = size
        entry.last = state
        if now - entry.last_change >= self.settle_timeout_s:
            del self._pending[path]
            waited = f"after {now - entry.last_change:.1f} s without change (watch.settle_timeout_s = " \
                f"{self.settle_timeout_s:g})"
            if isinstance(state, Unreadable):
                return GiveUp(path, f"still unreadable {waited}: {state.reason} ({size} bytes)")
            return GiveUp(path, f"still {state.describe()} {waited}; the write was probably interrupted")
        delay = min(self.retry_initial_s * 2.0**entry.attempts, self.retry_max_s)
        entry.attempts += 1
        # Never sleep past the moment the file would be given up on.
        entry.next_check = min(now + delay, entry.last_change + self.settle_timeout_s)
        return Retry(path, entry.next_check)


# --------------------------------------------------------------------------
# The watcher (I/O edge)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadyFile:
    """A complete file, handed on once per content.

    ``sha256`` is None when the watcher hands files on unhashed
    (``hash_files=False``): the receiver reads the file once and hashes the
    bytes it segments. ``stat`` is the file's status when it was judged complete.
    """

    path: Path
    sha256: str | None
    size: int
    stat: os.stat_result | None = None


class _Handler(FileSystemEventHandler):
    def __init__(self, accept: Callable[[str], None]) -> None:
        self._accept = accept

    def _file(self, event: FileSystemEvent, path: str | bytes) -> None:
        # Folders too: one named like a scan file is reported (once), not passed over.
        self._accept(os.fsdecode(path))

    def on_created(self, event: FileSystemEvent) -> None:
        self._file(event, event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._file(event, event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._file(event, event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._file(event, event.dest_path)


class FolderWatcher:
    """Watch folders for scan files and hand each complete content on once.

    Parameters
    ----------
    folders : sequence of path-like
        Existing folders (config ``watch.folders``).
    on_file : callable
        ``on_file(ReadyFile)``, called from the watcher's thread for every
        complete file whose content is new.
    on_bad : callable
        ``on_bad(path, reason)`` for files that are not scans, never
        completed or stayed unreadable (the daemon quarantines them).
    patterns : sequence of str
        File name patterns, matched ignoring case (config ``watch.patterns``).
    recursive : bool
        Also watch sub-folders (config ``watch.recursive``).
    is_processed : callable, optional
        ``is_processed(sha256) -> bool``: contents already done in an
        earlier run (:meth:`stm_live.publish.ResultStore.is_processed`).
    on_duplicate : callable, optional
        ``on_duplicate(ReadyFile)`` for complete files skipped as already seen.
    on_ignored : callable, optional
        ``on_ignored(path, reason)``, once per path and reason, for names that
        match the patterns but are no regular file (a folder ``x.sxm``, a
        symbolic link to nothing, a FIFO); they are left where they are. Each
        is logged as a WARNING whether or not this is given.
    retry_initial_s, retry_max_s, settle_timeout_s : float
        See :class:`SettleTracker`.
    exclude : sequence of path-like
        Folders never looked into (the results folder, if inside a watched one).
    polling : bool
        Poll the folders instead of OS events (network shares; config ``watch.polling``).
    clock : callable
        Monotonic seconds.
    hash_cache : path-like, optional
        A JSON file (in the results folder: ``<results>/watch_hashes.json``)
        remembering each file's SHA-256 by path, size, mtime and inode across
        restarts, so that files unchanged since an earlier run are not read
        and hashed again at start-up. Written when the watcher is idle and at
        :meth:`stop`; None (default): no cache, every file is hashed.
    hash_files : bool
        Hash each complete file before handing it on (and skip contents
        already processed). False hands new files on unhashed: the receiver
        reads each file once, hashes those bytes, checks them against the
        processed set and tells the watcher with :meth:`remember` (the
        daemon does this, so a file replaced between hashing and reading can
        never get another file's record). Files known to the hash cache are
        still skipped without being read.
    """

    def __init__(
        self,
        folders: Sequence[str | os.PathLike[str]],
        *,
        on_file: Callable[[ReadyFile], None],
        on_bad: Callable[[Path, str], None],
        patterns: Sequence[str] = ("*.sxm", "*.npy", "*.npz"),
        recursive: bool = False,
        is_processed: Callable[[str], bool] | None = None,
        on_duplicate: Callable[[ReadyFile], None] | None = None,
        on_ignored: Callable[[Path, str], None] | None = None,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        settle_timeout_s: float = 600.0,
        exclude: Sequence[str | os.PathLike[str]] = (),
        polling: bool = False,
        clock: Callable[[], float] = time.monotonic,
        hash_cache: str | os.PathLike[str] | None = None,
        hash_files: bool = True,
    ) -> None:
        self.folders = tuple(Path(f).resolve() for f in folders)
        self.patterns = tuple(p.lower() for p in patterns)
        self.recursive = recursive
        self.exclude = tuple(Path(e).resolve() for e in exclude)
        self.polling = polling
        self._on_file = on_file
        self._on_bad = on_bad
        self._on_duplicate = on_duplicate
        self._on_ignored = on_ignored
        self._is_processed = is_processed or (lambda _sha: False)
        self._clock = clock
        self._tracker = SettleTracker(
            retry_initial_s=retry_initial_s, retry_max_s=retry_max_s, settle_timeout_s=settle_timeout_s
        )
        self._inbox: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._seen: set[str] = set()
        # Files handed on or skipped, by (size, mtime): later events for them (a close after the
        # last write, a touch) are not news.
        self._done: dict[Path, tuple[int, int]] = {}
        # Names reported as ignored or unreadable, with the reason: each is said once, not per event.
        self._ignored: dict[Path, str] = {}
        self._unreadable: set[Path] = set()
        self._hashes = HashCache(hash_cache) if hash_cache is not None else None
        self._hash_files = hash_files
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: Running totals: handed (on_file), duplicates, bad, ignored (not files), checks, hashed (files
        #: read whole to hash them), cached (hashes taken from the hash cache instead).
        self.counts: dict[str, int] = dict.fromkeys(
            ("handed", "duplicates", "bad", "ignored", "checks", "hashed", "cached"), 0
        )

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """Start watching, then queue the files already there (none slips between the two).

        Raises
        ------
        ConfigError
            A folder does not exist.
        """
        for folder in self.folders:
            if not folder.is_dir():
                raise ConfigError(f"watch.folders: {folder} is not an existing folder")
        observer = PollingObserver(timeout=1.0) if self.polling else Observer()
        handler = _Handler(self._accept)
        for folder in self.folders:
            observer.schedule(handler, str(folder), recursive=self.recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name="stm-live-watch", daemon=True)
        self._thread.start()
        for path in self._existing():
            self._inbox.put(path)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observer and the worker thread (pending files are dropped)."""
        self._stopping.set()
        self._inbox.put(None)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._hashes is not None and self._hashes.dirty:
            self._hashes.save()

    def __enter__(self) -> FolderWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pending(self) -> int:
        """Files being waited on (not complete yet)."""
        return len(self._tracker)

    # -- the observer's side -----------------------------------------------

    def matches(self, path: Path) -> bool:
        """True for a file this watcher is responsible for (pattern, not excluded)."""
        name = path.name.lower()
        if name.startswith(".") or not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
            return False
        return not any(path.is_relative_to(e) for e in self.exclude)

    def _accept(self, path: str) -> None:
        p = Path(path)
        if self.matches(p):
            self._inbox.put(p)

    def _existing(self) -> list[Path]:
        found: list[tuple[float, str, Path]] = []
        for folder in self.folders:
            entries: Iterable[Path] = folder.rglob("*") if self.recursive else folder.iterdir()
            for path in entries:
                # Whatever the name matches, file or not (lstat: a dangling link too): _check reports non-files.
                try:
                    if self.matches(path):
                        heapq.heappush(found, (path.lstat().st_mtime, str(path), path))
                except OSError:
                    continue
        return [heapq.heappop(found)[2] for _ in range(len(found))]

    # -- the worker thread -------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            next_due = self._tracker.next_due()
            if next_due is None and self._hashes is not None and self._hashes.dirty and self._inbox.empty():
                self._hashes.save()  # idle: the start-up scan (or a burst) is done
            wait = None if next_due is None else max(0.0, next_due - self._clock())
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            else:
                if item is None:
                    continue
            now = self._clock()
            while item is not None:
                self._tracker.touch(item, now)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            for path in self._tracker.due(self._clock()):
                if self._stopping.is_set():
                    return
                try:
                    self._check(path)
                except Exception:  # one bad file or callback never stops the watcher
                    self._tracker.forget(path)  # and is not retried in a tight loop
                    log.exception("%s: unexpected error while checking it; it is skipped", path)

    def _check(self, path: Path) -> None:
        try:
            st: os.stat_result | None = path.stat()
        except OSError:
            st = None
        done = self._done.get(path)
        if done is not None:
            if st is not None and (st.st_size, st.st_mtime_ns) == done:
                self._tracker.forget(path)
                return
            del self._done[path]
        if st is not None and self._hashes is not None and stat.S_ISREG(st.st_mode):
            known = self._hashes.lookup(path, st)
            if known is not None:
                # Unchanged since it was hashed complete in an earlier run: neither checked nor read again.
                self._tracker.forget(path)
                self.counts["cached"] += 1
                self._ready(path, st.st_size, known=(st, known))
                return
        self.counts["checks"] += 1
        state = file_state(path, previous_size=self._tracker.previous_size(path))
        decision = self._tracker.update(state, self._clock())
        if not isinstance(decision, Ignore):
            self._ignored.pop(path, None)
        if isinstance(state, Unreadable):
            if path not in self._unreadable:  # said at once, not only when given up on
                self._unreadable.add(path)
                log.warning("%s: %s; retrying until watch.settle_timeout_s", path, state.reason)
        else:
            self._unreadable.discard(path)
        if isinstance(decision, Retry):
            log.debug("%s: %s; next check in %.2f s", path, state, decision.at - self._clock())
        elif isinstance(decision, GiveUp):
            self.counts["bad"] += 1
            self._on_bad(path, decision.reason)
        elif isinstance(decision, Ignore):
            self._ignore(path, decision.reason)
        elif isinstance(decision, Ready):
            self._ready(path, decision.size)

    def _ignore(self, path: Path, reason: str) -> None:
        if self._ignored.get(path) == reason:
            return  # a folder's every change is an event; it was said once
        self._ignored[path] = reason
        self.counts["ignored"] += 1
        log.warning("%s: %s", path, reason)
        if self._on_ignored is not None:
            self._on_ignored(path, reason)

    def remember(self, path: Path, st: os.stat_result, sha256: str) -> None:
        """The receiver of an unhashed file tells its hash (kept in the hash cache for the next start)."""
        self._seen.add(sha256)
        if self._hashes is not None:
            self._hashes.remember(path, st, sha256)

    def recheck(self, path: Path) -> None:
        """Look at ``path`` again from the start (it changed after it was handed on)."""
        self._done.pop(path, None)
        self._accept(str(path))

    def _ready(self, path: Path, size: int, known: tuple[os.stat_result, str] | None = None) -> None:
        if known is None and not self._hash_files:
            try:
                st = path.stat()
            except FileNotFoundError:
                return
            self._done[path] = (st.st_size, st.st_mtime_ns)
            self.counts["handed"] += 1
            self._on_file(ReadyFile(path=path, sha256=None, size=size, stat=st))
            return
        if known is not None:
            st, sha = known
        else:
            try:
                st = path.stat()
                sha = file_sha256(path)
            except FileNotFoundError:
                return
            self.counts["hashed"] += 1
            if self._hashes is not None:
                self._hashes.remember(path, st, sha)
        self._done[path] = (st.st_size, st.st_mtime_ns)
        ready = ReadyFile(path=path, sha256=sha, size=size)
        if sha in self._seen or self._is_processed(sha):
            self._seen.add(sha)
            self.counts["duplicates"] += 1
            log.debug("%s: content %s already processed; skipped", path, sha[:12])
            if self._on_duplicate is not None:
                self._on_duplicate(ready)
            return
        self._seen.add(sha)
        self.counts["handed"] += 1
        self._on_file(ready)
