"""The watcher's start-up hash cache: files unchanged since an earlier run are not read again (issue 18)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import time
from pathlib import Path

import numpy as np
import pytest

from stm_live.frame import Frame
from stm_live.ingest.hash_cache import RACY_S, HashCache
from stm_live.ingest.watch import FolderWatcher, ReadyFile
from stm_live.io import sxm_bytes

WAIT_S = 10.0
OLD = time.time() - 3600.0  # an hour ago: well past the racy window


def _scan(seed: int) -> bytes:
    data = np.random.default_rng(seed).normal(size=(16, 16)).astype(np.float32)
    return sxm_bytes([Frame(data, width_m=5e-9, height_m=5e-9)])


def _write(path: Path, blob: bytes, mtime: float = OLD) -> str:
    path.write_bytes(blob)
    os.utime(path, (mtime, mtime))
    return hashlib.sha256(blob).hexdigest()


def test_lookup_remember_save_and_load(tmp_path: Path) -> None:
    f = tmp_path / "a.sxm"
    sha = _write(f, b"x" * 100)
    cache = HashCache(tmp_path / "cache.json")
    st = f.stat()
    assert cache.lookup(f, st) is None
    cache.remember(f, st, sha)
    assert cache.lookup(f, st) == sha and cache.dirty
    cache.save()
    again = HashCache(tmp_path / "cache.json")
    assert again.lookup(f, f.stat()) == sha and (again.hits, again.misses) == (1, 0)
    # Same size, another mtime; or a new file renamed over it (new inode, same size and mtime): not the file hashed.
    os.utime(f, (OLD + 1, OLD + 1))
    assert again.lookup(f, f.stat()) is None
    other = tmp_path / "b.sxm"
    _write(other, b"y" * 100)
    os.replace(other, f)
    os.utime(f, (OLD, OLD))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert again.lookup(f, f.stat()) is None


def test_a_file_modified_just_now_is_not_cached(tmp_path: Path) -> None:
    f = tmp_path / "fresh.sxm"
    sha = _write(f, b"z" * 10, mtime=time.time() - RACY_S / 3)
    cache = HashCache(tmp_path / "cache.json")
    cache.remember(f, f.stat(), sha)
    assert cache.lookup(f, f.stat()) is None and not cache.dirty


def test_entries_of_deleted_files_are_dropped_at_save(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "cache.json")
    for name in ("keep.sxm", "gone.sxm"):
        f = tmp_path / name
        _write(f, b"k")
        cache.remember(f, f.stat(), "0" * 64)
    (tmp_path / "gone.sxm").unlink()
    cache.save()
    saved = json.loads((tmp_path / "cache.json").read_text())
    assert list(saved["files"]) == [str(tmp_path / "keep.sxm")] and saved["version"] == 1


@pytest.mark.parametrize("text", ["{not json", '{"version": 99, "files": {}}', "[1, 2]", "\xff\xfe"])
def test_a_damaged_cache_is_an_empty_one(tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str) -> None:
    path = tmp_path / "cache.json"
    path.write_bytes(text.encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        cache = HashCache(path)
    assert len(cache) == 0 and "hashed again" in caplog.text


def test_malformed_entries_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    good = [1, 2, 3, "a" * 64]
    path.write_text(json.dumps({"version": 1, "files": {"/g": good, "/b1": [1, 2, "3", "a" * 64], "/b2": [1, 2, 3],
                                                        "/b3": [1, 2, 3, "short"], "/b4": "x"}}))
    assert len(HashCache(path)) == 1


def _watch_once(folder: Path, cache: Path, processed: set[str], expect: int) -> FolderWatcher:
    duplicates: queue.Queue[ReadyFile] = queue.Queue()
    watcher = FolderWatcher([folder], on_file=print, on_bad=print, on_duplicate=duplicates.put,
                            is_processed=processed.__contains__, retry_initial_s=0.02, hash_cache=cache)
    with watcher:
        for _ in range(expect):
            duplicates.get(timeout=WAIT_S)
    return watcher


def test_a_restart_on_processed_files_reads_none_of_them_again(tmp_path: Path) -> None:
    # Before the cache, every restart read and hashed every file in the folder.
    folder = tmp_path / "scans"
    folder.mkdir()
    processed = {_write(folder / f"s{i:03d}.sxm", _scan(i)) for i in range(20)}
    cache = tmp_path / "results" / "watch_hashes.json"
    cache.parent.mkdir()
    first = _watch_once(folder, cache, processed, 20)
    assert (first.counts["hashed"], first.counts["cached"], first.counts["duplicates"]) == (20, 0, 20)
    assert cache.is_file()
    second = _watch_once(folder, cache, processed, 20)
    assert (second.counts["hashed"], second.counts["cached"], second.counts["duplicates"]) == (0, 20, 20)
    assert second.counts["checks"] == 0  # not even the header was read
    # A file rewritten with new content (same size, another mtime) is hashed again, and handed on as new.
    _write(folder / "s005.sxm", _scan(999), mtime=OLD + 60)
    files: queue.Queue[ReadyFile] = queue.Queue()
    third = FolderWatcher([folder], on_file=files.put, on_bad=print, is_processed=processed.__contains__,
                          retry_initial_s=0.02, hash_cache=cache)
    with third:
        assert files.get(timeout=WAIT_S).path.name == "s005.sxm"
    assert third.counts["hashed"] == 1


def test_a_cache_in_an_unwritable_place_is_only_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    processed = {_write(folder / "a.sxm", _scan(1))}
    with caplog.at_level(logging.WARNING):
        watcher = _watch_once(folder, tmp_path / "no-such-folder" / "cache.json", processed, 1)
    assert watcher.counts["duplicates"] == 1 and "cannot save the hash cache" in caplog.text
