"""LineAssembler: lines out of order, twice or never; scans superseded, evicted, timed out; geometry errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stm_live.errors import WireError
from stm_live.ingest.assemble import LineAdded, LineAssembler, MessageIgnored, ScanFinished
from stm_live.wire import EndMessage, FrameMessage, LineMessage, ScanInfo, decode_line, encode_line

ROWS, COLS = 6, 4
SCAN = ScanInfo("scan-1", rows=ROWS, cols=COLS, width_m=10e-9, height_m=12e-9, bias_v=1.2, unit="m")
IMAGE = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def line(row: int, scan: ScanInfo = SCAN, image: np.ndarray = IMAGE) -> LineMessage:
    return LineMessage(scan, row, image[row].copy())


def other(scan_id: str, **changes: object) -> ScanInfo:
    fields = {**SCAN.__dict__, "scan_id": scan_id, **changes}
    return ScanInfo(**fields)  # type: ignore[arg-type]


def only(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_lines_in_order_build_the_frame_and_finish_when_every_row_is_in() -> None:
    asm = LineAssembler(clock=Clock())
    events = []
    for row in range(ROWS):
        got = asm.feed(line(row))
        events += got
        added = got[0]
        assert isinstance(added, LineAdded) and added.row == row and not added.duplicate
        assert added.frame.rows_valid == row + 1 and added.rows_received == row + 1
        np.testing.assert_array_equal(added.frame.data[: row + 1], IMAGE[: row + 1])
        assert np.isnan(added.frame.data[row + 1 :]).all()
    done = events[-1]
    assert isinstance(done, ScanFinished)
    assert (done.reason, done.complete, done.rows_missing, done.rows_received) == ("all rows", True, 0, ROWS)
    np.testing.assert_array_equal(done.frame.data, IMAGE)
    f = done.frame
    assert (f.width_m, f.height_m, f.bias_v, f.source, f.scan_direction) == (10e-9, 12e-9, 1.2, "zmq", "down")
    assert f.data.dtype == np.float32 and f.data.flags.c_contiguous and not f.data.flags.writeable
    assert len(asm) == 0
    # The usual stm.end after the last line changes nothing and says nothing.
    assert asm.feed(EndMessage("scan-1", complete=True)) == []


def test_out_of_order_duplicate_and_missing_lines() -> None:
    asm = LineAssembler(clock=Clock())
    for row in (2, 0, 3):
        asm.feed(line(row))
    changed = IMAGE[0] + 100
    dup = asm.feed(LineMessage(SCAN, 0, changed))[0]
    assert isinstance(dup, LineAdded) and dup.duplicate and dup.rows_received == 3
    np.testing.assert_array_equal(dup.frame.data[0], changed)  # the last copy wins
    assert dup.frame.rows_valid == 4  # up to the highest row received
    assert np.isnan(dup.frame.data[1]).all()  # a row not received (yet) is NaN
    (done,) = asm.feed(EndMessage("scan-1", complete=True))
    assert isinstance(done, ScanFinished)
    assert done.reason == "end" and not done.complete and done.rows_missing == 3
    assert np.isnan(done.frame.data[[1, 4, 5]]).all()
    assert asm.counts["duplicates"] == 1 and asm.counts["lines"] == 4


def test_an_aborted_scan_is_incomplete() -> None:
    asm = LineAssembler(clock=Clock())
    asm.feed(line(0))
    (done,) = asm.feed(EndMessage("scan-1", complete=False))
    assert isinstance(done, ScanFinished) and done.reason == "aborted" and not done.complete
    assert done.frame.rows_valid == 1 and not done.frame.complete


def test_a_new_scan_id_ends_the_previous_scan_of_the_same_channel_and_direction() -> None:
    asm = LineAssembler(clock=Clock())
    asm.feed(line(0))
    asm.feed(line(0, other("scan-1", channel="Current", unit="A")))  # another channel of the same scan
    events = asm.feed(line(0, other("scan-2")))
    finished = only(events, ScanFinished)
    assert [(e.key, e.reason, e.complete) for e in finished] == [(("scan-1", "Z", "forward"), "superseded", False)]
    assert isinstance(events[-1], LineAdded) and events[-1].key == ("scan-2", "Z", "forward")
    assert set(asm.open_scans) == {("scan-1", "Current", "forward"), ("scan-2", "Z", "forward")}
    # stm.end ends every stream of its scan id.
    (done,) = asm.feed(EndMessage("scan-1", complete=True))
    assert isinstance(done, ScanFinished) and done.key == ("scan-1", "Current", "forward")


def test_forward_and_backward_of_one_scan_are_two_frames() -> None:
    asm = LineAssembler(clock=Clock())
    back = other("scan-1", direction="backward")
    for row in range(ROWS):
        asm.feed(line(row))
        events = asm.feed(line(row, back, IMAGE[:, ::-1]))
    done = only(events, ScanFinished)[0]
    assert done.frame.direction == "backward"
    np.testing.assert_array_equal(done.frame.data, IMAGE[:, ::-1])


def test_beyond_max_open_scans_the_idlest_scan_is_evicted() -> None:
    clock = Clock()
    asm = LineAssembler(max_open_scans=2, clock=clock)
    asm.feed(line(0, other("a", channel="A")))
    clock.now += 1
    asm.feed(line(0, other("b", channel="B")))
    clock.now += 1
    asm.feed(line(1, other("a", channel="A")))  # "a" active again: "b" is now the idlest
    (done,) = asm.feed(FrameMessage(other("f", channel="F"), IMAGE))  # a whole frame needs no room
    assert isinstance(done, ScanFinished) and done.reason == "frame" and len(asm) == 2
    events = asm.feed(line(0, other("c", channel="C")))
    (evicted,) = only(events, ScanFinished)
    assert evicted.key[0] == "b" and evicted.reason == "evicted" and not evicted.complete
    assert [k[0] for k in asm.open_scans] == ["a", "c"]


def test_mismatched_geometry_is_an_error_for_that_message_only() -> None:
    asm = LineAssembler(clock=Clock())
    asm.feed(line(0))
    wide = other("scan-1", width_m=20e-9)
    with pytest.raises(WireError, match=r"stm\.line row 1 \(scan 'scan-1', Z forward\): 4 x 6 px, 20 x 12 nm.*"
                                        r"does not match the open scan's 4 x 6 px, 10 x 12 nm"):
        asm.feed(line(1, wide))
    bigger = other("scan-1", rows=ROWS + 1)
    with pytest.raises(WireError, match="does not match"):
        asm.feed(LineMessage(bigger, 6, np.zeros(COLS, np.float32)))
    with pytest.raises(WireError, match=r"stm\.frame .*does not match"):
        asm.feed(FrameMessage(wide, IMAGE))
    assert asm.counts["rejected"] == 3
    added = asm.feed(line(1))[0]  # the scan carries on
    assert isinstance(added, LineAdded) and added.rows_received == 2


def test_a_message_of_impossible_shape_is_refused() -> None:
    asm = LineAssembler(clock=Clock())
    with pytest.raises(WireError, match=r"expected row 0\.\.5 and \(4,\) values"):
        asm.feed(LineMessage(SCAN, 0, np.zeros(3, np.float32)))
    with pytest.raises(WireError, match=r"expected row 0\.\.5"):
        asm.feed(LineMessage(SCAN, 6, np.zeros(4, np.float32)))
    with pytest.raises(WireError, match=r"data shape \(2, 2\), expected \(6, 4\)"):
        asm.feed(FrameMessage(SCAN, np.zeros((2, 2), np.float32)))
    with pytest.raises(TypeError):
        asm.feed("stm.line")  # type: ignore[arg-type]
    assert len(asm) == 0


def test_late_lines_are_ignored_for_a_while_then_start_a_new_scan() -> None:
    clock = Clock()
    asm = LineAssembler(late_window_s=30.0, clock=clock)
    asm.feed(line(0))
    asm.feed(EndMessage("scan-1", complete=False))
    (ignored,) = asm.feed(line(1))
    assert isinstance(ignored, MessageIgnored) and "late line 1: the scan has already finished" in ignored.reason
    (ignored,) = asm.feed(EndMessage("scan-1", complete=True))
    assert isinstance(ignored, MessageIgnored) and "already finished" in ignored.reason
    clock.now += 31.0  # a restarted bridge re-using its scan ids is not ignored for ever
    (added,) = asm.feed(line(1))
    assert isinstance(added, LineAdded) and added.rows_received == 1
    assert asm.counts["ignored"] == 2


def test_an_end_for_an_unknown_scan_is_ignored_with_a_reason() -> None:
    (ignored,) = LineAssembler(clock=Clock()).feed(EndMessage("nope", complete=True))
    assert isinstance(ignored, MessageIgnored) and "no open scan has this id" in ignored.reason


def test_a_whole_frame_finishes_at_once() -> None:
    asm = LineAssembler(clock=Clock())
    image = IMAGE.copy()
    image[4:] = np.nan  # not scanned
    (done,) = asm.feed(FrameMessage(SCAN, image, t=1.7e9))
    assert isinstance(done, ScanFinished) and done.reason == "frame"
    assert not done.complete and done.rows_missing == 2 and done.frame.rows_valid == 4
    assert done.frame.time == "2023-11-14T22:13:20+00:00"
    (done,) = LineAssembler(clock=Clock()).feed(FrameMessage(SCAN, IMAGE))
    assert isinstance(done, ScanFinished) and done.complete and done.frame.complete


def test_a_frame_replaces_the_lines_of_its_open_scan() -> None:
    asm = LineAssembler(clock=Clock())
    asm.feed(line(0))
    (done,) = asm.feed(FrameMessage(SCAN, IMAGE))
    assert isinstance(done, ScanFinished) and done.complete
    np.testing.assert_array_equal(done.frame.data, IMAGE)
    assert len(asm) == 0


def test_an_upward_scan_fills_from_the_bottom() -> None:
    asm = LineAssembler(clock=Clock())
    for row in (5, 4, 3):
        added = asm.feed(line(row))[0]
    assert isinstance(added, LineAdded)
    assert added.frame.scan_direction == "up" and added.frame.rows_valid == 3
    assert added.frame.valid_rows == slice(3, 6)
    np.testing.assert_array_equal(added.frame.data[added.frame.valid_rows], IMAGE[3:])


def test_the_partial_frame_is_a_read_only_view_of_the_live_scan() -> None:
    asm = LineAssembler(clock=Clock())
    first = asm.feed(line(0))[0]
    assert isinstance(first, LineAdded)
    with pytest.raises(ValueError, match="read-only"):
        first.frame.data[0, 0] = 1.0
    asm.feed(line(1))
    np.testing.assert_array_equal(first.frame.data[1], IMAGE[1])  # later lines show through: copy to keep


def test_expire_and_close_all() -> None:
    clock = Clock()
    asm = LineAssembler(scan_timeout_s=10.0, clock=clock)
    asm.feed(line(0))
    clock.now += 5
    asm.feed(line(0, other("b", channel="B")))
    clock.now += 5
    (expired,) = asm.expire()
    assert expired.key[0] == "scan-1" and expired.reason == "timed out" and not expired.complete
    (closed,) = asm.close_all()
    assert closed.key[0] == "b" and closed.reason == "closed"
    assert asm.expire() == [] and len(asm) == 0


def test_arrival_times_come_from_the_clock_or_the_caller() -> None:
    clock = Clock()
    asm = LineAssembler(clock=clock)
    added = asm.feed(line(0))[0]
    assert isinstance(added, LineAdded) and added.arrived == 100.0
    (done,) = asm.feed(EndMessage("scan-1", complete=False), now=250.0)
    assert isinstance(done, ScanFinished) and (done.started, done.arrived) == (100.0, 250.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_open_scans"):
        LineAssembler(max_open_scans=0)
    with pytest.raises(ValueError, match="scan_timeout_s"):
        LineAssembler(scan_timeout_s=0)


@settings(max_examples=100, deadline=None)
@given(order=st.lists(st.integers(0, ROWS - 1), max_size=3 * ROWS))
def test_any_arrival_order_gives_the_received_rows_and_nan_elsewhere(order: list[int]) -> None:
    asm = LineAssembler(clock=Clock())
    events = []
    for row in order:
        # Through the real wire encoding, big-endian like a Nanonis controller.
        events += asm.feed(decode_line(encode_line(LineMessage(SCAN, row, IMAGE[row].astype(">f4")))))
    events += asm.feed(EndMessage("scan-1", complete=True))
    finished = only(events, ScanFinished)
    received = set(order)
    if not order:
        assert only(events, MessageIgnored)
        return
    (done,) = finished
    for row in range(ROWS):
        if row in received:
            np.testing.assert_array_equal(done.frame.data[row], IMAGE[row])
        else:
            assert np.isnan(done.frame.data[row]).all()
    assert done.rows_received == len(received) and done.complete == (len(received) == ROWS)
    assert done.reason == ("all rows" if len(received) == ROWS else "end")


def test_a_whole_frame_with_a_new_id_does_not_end_the_scan_in_progress() -> None:
    asm = LineAssembler(clock=Clock())
    asm.feed(line(0))
    info = other("archived")
    events = asm.feed(FrameMessage(info, np.ones((info.rows, info.cols), np.float32)))
    assert [(e.key[0], e.reason) for e in only(events, ScanFinished)] == [("archived", "frame")]
    assert asm.open_scans == (("scan-1", "Z", "forward"),)
