"""The scan journal: lines survive the process, a torn record is cut off, finished scans say how they ended."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stm_live.ingest.journal import ScanJournal, recover
from stm_live.wire import ScanInfo

INFO = ScanInfo("scan/1", rows=4, cols=3, width_m=2e-9, height_m=2e-9, bias_v=-1.5, offset_m=(1e-9, 2e-9))


def test_open_and_finished_scans_come_back(tmp_path: Path) -> None:
    journal = ScanJournal(tmp_path)
    first = journal.open(INFO)
    first.line(2, np.array([1.0, 2.0, np.nan], ">f4"), 17.5)
    first.line(0, np.array([4, 5, 6], np.int16), None)
    other = ScanInfo("s2", rows=2, cols=3, width_m=1e-9, height_m=1e-9)
    second = journal.open(other)
    second.frame(np.arange(6, dtype=np.float32).reshape(2, 3))
    path2 = second.finish(complete=True, reason="frame")
    assert path2 is not None and path2.parent == tmp_path and "/" not in path2.name[len(str(tmp_path)):]
    assert journal.open(ScanInfo("s3", 1, 1, 1e-9, 1e-9)).finish(complete=False, reason="x") is None  # no record
    assert journal.close() == [INFO]  # the open scan stays on disk

    items = {item.info.scan_id: item for item in recover(tmp_path)}
    open_scan, done = items["scan/1"], items["s2"]
    assert open_scan.info == INFO and open_scan.end is None and open_scan.frame is None
    assert [(row, t) for row, _, t in open_scan.lines] == [(2, 17.5), (0, None)]
    np.testing.assert_array_equal(open_scan.lines[0][1], [1.0, 2.0, np.nan])
    assert open_scan.lines[1][1].dtype == np.float32 and open_scan.lines[1][1].tolist() == [4, 5, 6]
    assert done.end == (True, "frame") and done.frame is not None and done.frame.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_torn_last_record_is_dropped_and_cut_off_before_appending(tmp_path: Path) -> None:
    journal = ScanJournal(tmp_path)
    writer = journal.open(INFO)
    for row in range(3):
        writer.line(row, np.full(3, row, np.float32), None)
    journal.close()
    (path,) = tmp_path.glob("*.journal")
    blob = path.read_bytes()
    path.write_bytes(blob[:-5])  # killed in the middle of writing row 2
    (item,) = recover(tmp_path)
    assert [row for row, _, _ in item.lines] == [0, 1] and item.size < len(blob) - 5

    again = ScanJournal(tmp_path)
    writer = again.adopt(item)
    writer.line(3, np.full(3, 3.0, np.float32), None)
    assert writer.finish(complete=False, reason="aborted") == path
    (item,) = recover(tmp_path)
    assert [row for row, _, _ in item.lines] == [0, 1, 3] and item.end == (False, "aborted")
    again.discard(path)
    assert recover(tmp_path) == []


def test_files_that_are_not_journals_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "x.journal").write_bytes(b"something else")
    (tmp_path / "y.journal").write_bytes(b"STMJ1\n{not json}\n")
    assert recover(tmp_path) == [] and recover(tmp_path / "missing") == []
