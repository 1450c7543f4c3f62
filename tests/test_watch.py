"""Folder watching: completeness of real files, backoff, slow writers, duplicates, bad files to quarantine."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stm_live.errors import ConfigError, ScanReadError
from stm_live.frame import Frame
from stm_live.ingest.watch import (
    Bad,
    Complete,
    FolderWatcher,
    Forget,
    GiveUp,
    Gone,
    Incomplete,
    NotAFile,
    Ready,
    ReadyFile,
    Retry,
    SettleTracker,
    file_state,
)
from stm_live.io import read_scan, sxm_bytes
from stm_live.publish import ResultStore

WAIT_S = 10.0  # upper bound for anything the watcher should do; tests normally take milliseconds


def scan_bytes(seed: int = 0, size: int = 32) -> bytes:
    data = np.random.default_rng(seed).normal(size=(size, size)).astype(np.float32) * 1e-10
    return sxm_bytes([Frame(data, width_m=5e-9, height_m=5e-9)])


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------
# file_state: real files
# --------------------------------------------------------------------------


def test_complete_truncated_and_unfinished_sxm(tmp_path: Path) -> None:
    blob = scan_bytes()
    path = tmp_path / "a.sxm"
    path.write_bytes(blob)
    assert file_state(path) == Complete(path, len(blob))
    path.write_bytes(blob[:-100])
    state = file_state(path)
    assert state == Incomplete(path, len(blob), len(blob) - 100)
    assert state.describe() == f"incomplete ({len(blob) - 100} of {len(blob)} bytes)"
    path.write_bytes(blob[:40])  # the header itself is still being written
    state = file_state(path)
    assert isinstance(state, Incomplete) and state.expected is None and "header is not complete" in state.detail
    path.write_bytes(b"")
    assert file_state(path) == Incomplete(path, None, 0, "the file is empty")


def test_bad_sxm_files(tmp_path: Path) -> None:
    path = tmp_path / "notes.sxm"
    path.write_bytes(b"this is a lab note, not a scan\n" * 20)
    state = file_state(path)
    assert isinstance(state, Bad) and "not a Nanonis .sxm file" in state.reason
    blob = scan_bytes()
    path.write_bytes(blob.replace(b":SCAN_PIXELS:\n", b":SCAN_PIXELZ:\n", 1))
    state = file_state(path)
    assert isinstance(state, Bad) and "SCAN_PIXELS" in state.reason
    path.write_bytes(blob + b"\0" * 8)
    state = file_state(path)
    assert isinstance(state, Bad) and "larger than its header describes" in state.reason


def test_npy_states(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((8, 8), np.float32))
    blob = path.read_bytes()
    assert file_state(path) == Complete(path, len(blob))
    path.write_bytes(blob[:-10])
    assert file_state(path) == Incomplete(path, len(blob), len(blob) - 10)
    path.write_bytes(blob[:3])
    assert isinstance(file_state(path), Incomplete)
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    state = file_state(path)
    assert isinstance(state, Bad) and "Python objects" in state.reason and "never unpickles" in state.reason
    path.write_bytes(b"PNG image data, not an array")
    state = file_state(path)
    assert isinstance(state, Bad) and "not a NumPy .npy file" in state.reason


def test_npz_is_complete_when_readable_and_its_size_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, Z=np.zeros((8, 8), np.float32))
    size = path.stat().st_size
    first = file_state(path)
    assert isinstance(first, Incomplete) and "two checks" in first.detail
    assert file_state(path, previous_size=first.actual) == Complete(path, size)
    path.write_bytes(path.read_bytes()[: size // 2])
    assert isinstance(file_state(path, previous_size=size // 2), Incomplete)
    path.write_bytes(b"not a zip archive at all")
    state = file_state(path)
    assert isinstance(state, Bad) and "not a zip archive" in state.reason


def test_other_files(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x")
    state = file_state(path)
    assert isinstance(state, Bad) and "unsupported file type '.txt'" in state.reason
    assert file_state(tmp_path / "gone.sxm") == Gone(tmp_path / "gone.sxm")


# --------------------------------------------------------------------------
# SettleTracker: when to look again (pure)
# --------------------------------------------------------------------------

P = Path("scan.sxm")


def tracker(timeout: float = 10.0) -> SettleTracker:
    return SettleTracker(retry_initial_s=0.1, retry_max_s=0.8, settle_timeout_s=timeout)


def test_backoff_doubles_up_to_the_maximum() -> None:
    t = tracker()
    t.touch(P, 0.0)
    assert t.due(0.0) == [P]
    now, waits = 0.0, []
    for _ in range(6):
        decision = t.update(Incomplete(P, 100, 50), now)
        assert isinstance(decision, Retry)
        waits.append(round(decision.at - now, 3))
        now = decision.at
    assert waits == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    assert t.due(now - 0.01) == [] and t.next_due() == pytest.approx(now)


def test_growth_or_an_event_restarts_the_backoff() -> None:
    t = tracker()
    t.touch(P, 0.0)
    for now in (0.0, 0.1, 0.3):
        t.update(Incomplete(P, 100, 50), now)
    decision = t.update(Incomplete(P, 100, 60), 0.7)  # it grew
    assert isinstance(decision, Retry) and decision.at == pytest.approx(0.8)
    t.update(Incomplete(P, 100, 60), 0.8)
    t.update(Incomplete(P, 100, 60), 1.0)  # next check at 1.4
    t.touch(P, 1.05)  # a write event: look again soon, at most once per retry_initial_s
    assert t.next_due() == pytest.approx(1.15)
    t.touch(P, 1.06)
    assert t.next_due() == pytest.approx(1.15)


def test_a_file_unchanged_for_the_settle_timeout_is_given_up() -> None:
    t = tracker(timeout=1.0)
    t.touch(P, 0.0)
    now = 0.0
    while True:
        decision = t.update(Incomplete(P, 100, 50), now)
        if not isinstance(decision, Retry):
            break
        assert decision.at <= 1.0  # never sleeps past the deadline
        now = decision.at
    assert isinstance(decision, GiveUp) and now == pytest.approx(1.0)
    assert "still incomplete (50 of 100 bytes) after 1.0 s without change" in decision.reason
    assert "watch.settle_timeout_s = 1" in decision.reason and P not in t


def test_complete_bad_and_gone_leave_the_tracker() -> None:
    t = tracker()
    for state, kind in [(Complete(P, 10), Ready), (Bad(P, "junk"), GiveUp), (Gone(P), Forget)]:
        t.touch(P, 0.0)
        assert isinstance(t.update(state, 0.0), kind) and len(t) == 0
    with pytest.raises(ValueError, match="retry_initial_s <= retry_max_s"):
        SettleTracker(retry_initial_s=1.0, retry_max_s=0.5, settle_timeout_s=1.0)


# --------------------------------------------------------------------------
# FolderWatcher: real folder, real watchdog observer
# --------------------------------------------------------------------------


class Sink:
    """Collects what the watcher hands on, for the test thread to wait on."""

    def __init__(self) -> None:
        self.files: queue.Queue[ReadyFile] = queue.Queue()
        self.bad: queue.Queue[tuple[Path, str]] = queue.Queue()
        self.duplicates: queue.Queue[ReadyFile] = queue.Queue()


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def watch(tmp_path: Path, sink: Sink) -> Iterator[Any]:
    watchers: list[FolderWatcher] = []

    def start(folder: Path, **options: Any) -> FolderWatcher:
        settings = dict(retry_initial_s=0.02, retry_max_s=0.1, settle_timeout_s=5.0)
        settings.update(options)
        w = FolderWatcher(
            [folder], on_file=sink.files.put, on_bad=lambda p, r: sink.bad.put((p, r)),
            on_duplicate=sink.duplicates.put, **settings,
        )
        watchers.append(w)
        w.start()
        return w

    yield start
    for w in watchers:
        w.stop()


def test_files_present_at_start_are_processed_unless_already_done(tmp_path: Path, sink: Sink, watch: Any) -> None:
    old, done = scan_bytes(1), scan_bytes(2)
    (tmp_path / "old.sxm").write_bytes(old)
    (tmp_path / "done.sxm").write_bytes(done)
    (tmp_path / "readme.txt").write_text("not a pattern")
    watch(tmp_path, is_processed=lambda h: h == sha(done))
    got = sink.files.get(timeout=WAIT_S)
    assert got == ReadyFile(tmp_path.resolve() / "old.sxm", sha(old), len(old))
    assert sink.duplicates.get(timeout=WAIT_S).sha256 == sha(done)


def test_a_file_written_slowly_in_chunks_is_handed_on_once_complete(tmp_path: Path, sink: Sink, watch: Any) -> None:
    watcher = watch(tmp_path)
    blob = scan_bytes(3, size=64)
    pause = threading.Event()  # never set: wait() is the writer's pause between chunks

    def write_slowly() -> None:
        with open(tmp_path / "slow.sxm", "wb") as fh:
            for start in range(0, len(blob), len(blob) // 8):
                fh.write(blob[start : start + len(blob) // 8])
                fh.flush()
                pause.wait(0.05)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    got = sink.files.get(timeout=WAIT_S)
    writer.join()
    assert got.sha256 == sha(blob) and got.size == len(blob)
    # A second file arrives after the first, and the slow one was not handed on twice.
    (tmp_path / "next.sxm").write_bytes(scan_bytes(4))
    assert sink.files.get(timeout=WAIT_S).path.name == "next.sxm"
    assert sink.files.empty() and watcher.counts["handed"] == 2


def test_the_same_content_under_another_name_is_a_duplicate(tmp_path: Path, sink: Sink, watch: Any) -> None:
    watch(tmp_path)
    blob = scan_bytes(5)
    (tmp_path / "a.sxm").write_bytes(blob)
    assert sink.files.get(timeout=WAIT_S).path.name == "a.sxm"
    (tmp_path / "copy-of-a.sxm").write_bytes(blob)
    dup = sink.duplicates.get(timeout=WAIT_S)
    assert dup.path.name == "copy-of-a.sxm" and dup.sha256 == sha(blob)
    assert sink.files.empty()


def test_files_moved_into_the_folder_are_seen(tmp_path: Path, sink: Sink, watch: Any) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    watch(folder)
    blob = scan_bytes(6)
    (tmp_path / "elsewhere.sxm").write_bytes(blob)
    (tmp_path / "elsewhere.sxm").rename(folder / "moved.sxm")
    assert sink.files.get(timeout=WAIT_S).sha256 == sha(blob)


def test_bad_files_go_to_quarantine_with_their_reasons(tmp_path: Path, sink: Sink, watch: Any) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    store = ResultStore(tmp_path / "results", fsync=False)
    blob = scan_bytes(7)
    (folder / "notes.sxm").write_text("lab notes\n" * 10)
    (folder / "truncated.sxm").write_bytes(blob[: len(blob) // 2])
    (folder / "empty.sxm").write_bytes(b"")
    (folder / "corrupt.npy").write_bytes(b"\x93NUMPY garbage that is no header")
    np.save(folder / "pickled.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    watch(folder, settle_timeout_s=0.5)
    reasons = {}
    for _ in range(5):
        path, reason = sink.bad.get(timeout=WAIT_S)
        store.quarantine(path, reason)
        reasons[path.name] = reason
    assert "not a Nanonis .sxm file" in reasons["notes.sxm"]
    assert f"still incomplete ({len(blob) // 2} of {len(blob)} bytes)" in reasons["truncated.sxm"]
    assert "the file is empty" in reasons["empty.sxm"]
    assert "corrupt.npy" in reasons and "Python objects" in reasons["pickled.npy"]
    quarantined = sorted(p.name for p in store.quarantine_dir.iterdir())
    for name in reasons:
        assert name in quarantined and f"{name}.reason.txt" in quarantined
        assert reasons[name] in (store.quarantine_dir / f"{name}.reason.txt").read_text()
    assert not any(folder.iterdir()) and sink.files.empty()


def test_polling_works_without_file_events(tmp_path: Path, sink: Sink, watch: Any) -> None:
    watch(tmp_path, polling=True)  # what network shares need; like Windows, no "closed" events
    blob = scan_bytes(8)
    (tmp_path / "polled.sxm").write_bytes(blob)
    assert sink.files.get(timeout=WAIT_S).sha256 == sha(blob)


def test_a_failing_callback_does_not_stop_the_watcher(tmp_path: Path, sink: Sink) -> None:
    def on_file(ready: ReadyFile) -> None:
        if ready.path.name == "first.sxm":
            raise RuntimeError("the daemon choked on it")
        sink.files.put(ready)

    with FolderWatcher([tmp_path], on_file=on_file, on_bad=print, retry_initial_s=0.02) as watcher:
        (tmp_path / "first.sxm").write_bytes(scan_bytes(9))
        (tmp_path / "second.sxm").write_bytes(scan_bytes(10))
        assert sink.files.get(timeout=WAIT_S).path.name == "second.sxm"
        # Late "modified" events may queue a re-check for a moment; it must settle to none.
        deadline = time.monotonic() + WAIT_S
        while watcher.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watcher.pending == 0


def test_patterns_hidden_files_and_excluded_folders(tmp_path: Path) -> None:
    w = FolderWatcher([tmp_path], on_file=print, on_bad=print, patterns=["*.SXM"], exclude=[tmp_path / "results"])
    assert w.matches(tmp_path / "a.sxm") and w.matches(tmp_path / "B.Sxm")
    assert not w.matches(tmp_path / "a.npy")
    assert not w.matches(tmp_path / ".a.sxm.part")  # writers' temporary files
    assert not w.matches(tmp_path.resolve() / "results" / "x.sxm")


def test_a_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    w = FolderWatcher([tmp_path / "nope"], on_file=print, on_bad=print)
    with pytest.raises(ConfigError, match=r"watch\.folders: .*nope is not an existing folder"):
        w.start()
    w.stop()


# --------------------------------------------------------------------------
# Reasons that say what is really wrong (issue 18, fault 8)
# --------------------------------------------------------------------------


def test_a_huge_header_is_reported_as_too_large_not_as_missing_its_end_tag(tmp_path: Path) -> None:
    # Before: "header is incomplete: no :SCANIT_END: tag", as if the file were truncated.
    path = tmp_path / "huge.sxm"
    blob = scan_bytes()
    filler = b":COMMENT:\n" + b"x" * (20 << 20) + b"\n"
    path.write_bytes(blob.replace(b":SCAN_PIXELS:", filler + b":SCAN_PIXELS:", 1))
    state = file_state(path)
    assert isinstance(state, Bad), state
    assert state.reason.startswith("header too large: no :SCANIT_END: tag within the first 16777216 bytes")
    with pytest.raises(ScanReadError, match=r"huge\.sxm: header too large: no :SCANIT_END: tag within"):
        read_scan(path)


def test_folders_links_to_nothing_and_fifos_are_not_files(tmp_path: Path) -> None:
    (tmp_path / "folder.sxm").mkdir()
    (tmp_path / "dangling.sxm").symlink_to(tmp_path / "nowhere.sxm")
    (tmp_path / "loop.sxm").symlink_to(tmp_path / "loop.sxm")
    os.mkfifo(tmp_path / "pipe.sxm")  # opening it would block the watcher for ever
    states = {name: file_state(tmp_path / name) for name in ("folder.sxm", "dangling.sxm", "loop.sxm", "pipe.sxm")}
    assert all(isinstance(s, NotAFile) for s in states.values()), states
    reasons = {name: s.reason for name, s in states.items() if isinstance(s, NotAFile)}
    assert reasons["folder.sxm"].startswith("a folder named like a scan file, not a file")
    assert reasons["dangling.sxm"].startswith(f"a symbolic link to {str(tmp_path / 'nowhere.sxm')!r}, which does not")
    assert "symbolic link" in reasons["loop.sxm"] and "a FIFO" in reasons["pipe.sxm"]
    # A link to a real scan is a scan.
    (tmp_path / "real.sxm").write_bytes(scan_bytes())
    (tmp_path / "link.sxm").symlink_to(tmp_path / "real.sxm")
    assert isinstance(file_state(tmp_path / "link.sxm"), Complete)


def test_a_folder_or_dangling_link_in_a_watched_folder_is_reported_once(
    tmp_path: Path, sink: Sink, watch: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: both were passed over without a word, at start-up and when they appeared.
    ignored: queue.Queue[tuple[Path, str]] = queue.Queue()
    (tmp_path / "old-folder.sxm").mkdir()
    (tmp_path / "old-link.sxm").symlink_to(tmp_path / "gone.sxm")
    with caplog.at_level(logging.WARNING, logger="stm_live.ingest.watch"):
        watcher = watch(tmp_path, on_ignored=lambda p, r: ignored.put((p, r)))
        first = {ignored.get(timeout=WAIT_S)[0].name for _ in range(2)}
        assert first == {"old-folder.sxm", "old-link.sxm"}
        (tmp_path / "new-folder.sxm").mkdir()
        (tmp_path / "new-link.npy").symlink_to(tmp_path / "missing.npy")
        later = {ignored.get(timeout=WAIT_S) for _ in range(2)}
        assert {p.name for p, _ in later} == {"new-folder.sxm", "new-link.npy"}
        assert any("not a file" in r for _, r in later) and any("symbolic link" in r for _, r in later)
        # Changes inside the folder are events for it; it is not reported again. Files still flow.
        (tmp_path / "new-folder.sxm" / "inside.txt").write_text("x")
        (tmp_path / "good.sxm").write_bytes(scan_bytes(11))
        assert sink.files.get(timeout=WAIT_S).path.name == "good.sxm"
    assert ignored.empty() and sink.bad.empty() and watcher.counts["ignored"] == 4
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("new-folder.sxm: a folder named like a scan file" in m for m in logged) == 1
    assert all((tmp_path / n).exists() or (tmp_path / n).is_symlink() for n in ("old-folder.sxm", "old-link.sxm"))


# Runs the watcher in a child process and prints what on_bad said about the unreadable file.
# Root reads any file whatever its mode: as root, the child first gives up the two
# capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as an ordinary user has none.
_UNREADABLE = """
import ctypes, json, os, queue, sys
from pathlib import Path
folder = Path(sys.argv[1])
if os.geteuid() == 0:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) == 0:
        keep = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF
        data[0].effective &= keep
        data[0].permitted &= keep
        libc.capset(ctypes.byref(header), data)
try:
    open(folder / "locked.sxm", "rb").close()
except PermissionError:
    pass
else:
    print(json.dumps({"skip": "cannot make a file unreadable here (root, and dropping capabilities failed)"}))
    sys.exit(0)
from stm_live.ingest.watch import FolderWatcher, file_state
print(json.dumps({"state": type(file_state(folder / "locked.sxm")).__name__}), flush=True)
bad = queue.Queue()
with FolderWatcher([folder], on_file=print, on_bad=lambda p, r: bad.put((p.name, r)),
                   retry_initial_s=0.02, retry_max_s=0.05, settle_timeout_s=0.3):
    name, reason = bad.get(timeout=20)
print(json.dumps({"name": name, "reason": reason}))
"""


def test_a_permission_denied_file_is_reported_as_such(tmp_path: Path) -> None:
    # Before: "still incomplete (0 bytes): cannot read it yet: Permission denied".
    blob = scan_bytes(12)
    locked = tmp_path / "locked.sxm"
    locked.write_bytes(blob)
    locked.chmod(0)
    proc = subprocess.run([sys.executable, "-c", _UNREADABLE, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    if "skip" in lines[0]:
        pytest.skip(lines[0]["skip"])
    first, last = lines[-2:]
    assert first == {"state": "Unreadable"}
    assert last["name"] == "locked.sxm"
    assert last["reason"].startswith("still unreadable after ")
    assert "cannot open it: permission denied (Permission denied)" in last["reason"]
    assert f"({len(blob)} bytes)" in last["reason"] and "incomplete" not in last["reason"]
