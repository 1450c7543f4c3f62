"""Scan-frame geometry both ways, the line tracker, and drift between frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stm_live.bridge.geometry import ScanFrame, display_row
from stm_live.bridge.lines import LineTracker

finite = st.floats(-1e-6, 1e-6, allow_nan=False)
size = st.floats(1e-9, 1e-6, allow_nan=False)
angle = st.floats(-720.0, 720.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(cx=finite, cy=finite, w=size, h=size, a=angle, u=st.floats(0, 1), v=st.floats(0, 1))
def test_image_to_controller_and_back(cx, cy, w, h, a, u, v):
    f = ScanFrame((cx, cy), w, h, a)
    x_nm, y_nm = u * w * 1e9, v * h * 1e9
    x, y = f.image_to_controller(x_nm, y_nm)
    bx, by = f.controller_to_image(x, y)
    assert bx == pytest.approx(x_nm, abs=1e-6 * w * 1e9 + 1e-9)
    assert by == pytest.approx(y_nm, abs=1e-6 * h * 1e9 + 1e-9)


def test_known_positions_at_0_90_and_135_degrees():
    # 0 deg: the image centre is the frame centre, the top-left corner is up and left.
    f = ScanFrame((10e-9, 20e-9), 40e-9, 20e-9)
    assert f.image_to_controller(20.0, 10.0) == pytest.approx((10e-9, 20e-9))
    assert f.image_to_controller(0.0, 0.0) == pytest.approx((-10e-9, 30e-9))
    # 90 deg clockwise: the image's right (+x) points down (-y) in the controller.
    g = ScanFrame((0.0, 0.0), 40e-9, 40e-9, 90.0)
    assert g.image_to_controller(40.0, 20.0) == pytest.approx((0.0, -20e-9), abs=1e-18)
    assert g.image_to_controller(20.0, 0.0) == pytest.approx((20e-9, 0.0), abs=1e-18)  # image top -> +x
    # 135 deg: the image's right edge centre lies at 135 deg clockwise from +x.
    k = ScanFrame((5e-9, -5e-9), 40e-9, 40e-9, 135.0)
    x, y = k.image_to_controller(40.0, 20.0)
    r = 20e-9
    assert (x, y) == pytest.approx((5e-9 + r * math.cos(math.radians(-135)), -5e-9 + r * math.sin(math.radians(-135))))
    assert k.controller_to_image(x, y) == pytest.approx((40.0, 20.0))


def test_zoom_on_a_feature_of_a_rotated_frame_keeps_it_in_the_centre():
    f = ScanFrame((3e-9, 4e-9), 50e-9, 50e-9, 135.0)
    target = f.image_to_controller(12.0, 38.0)
    z = f.centred_on(12.0, 38.0, width_m=10e-9)
    assert z.centre_m == pytest.approx(target)
    assert (z.width_m, z.height_m, z.angle_deg) == pytest.approx((10e-9, 10e-9, 135.0))
    assert z.controller_to_image(*target) == pytest.approx((5.0, 5.0))


def test_pixel_centres_follow_the_display_convention():
    f = ScanFrame((0.0, 0.0), 4e-9, 2e-9)
    x, y = f.pixel_centres(2, 4)
    assert x[0].tolist() == pytest.approx([-1.5e-9, -0.5e-9, 0.5e-9, 1.5e-9])
    assert y[:, 0].tolist() == pytest.approx([0.5e-9, -0.5e-9])  # row 0 at the top


def test_display_row_and_bad_frames():
    assert [display_row(k, 4, "up") for k in range(4)] == [3, 2, 1, 0]
    assert [display_row(k, 4, "down") for k in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="row 4"):
        display_row(4, 4, "down")
    with pytest.raises(ValueError, match="width"):
        ScanFrame((0.0, 0.0), 0.0, 1e-9)
    with pytest.raises(ValueError, match="finite"):
        ScanFrame((math.nan, 0.0), 1e-9, 1e-9)
    assert ScanFrame((1e-9, 0.0), 1e-8, 1e-8, 10.0).close_to(ScanFrame((1e-9, 0.0), 1e-8, 1e-8, 370.0))


# -- the line tracker ---------------------------------------------------------------


def _ids():
    n = iter(range(1, 100))
    return lambda: f"s{next(n)}"


def _buffer(rows, cols, filled, value=1.0):
    b = np.full((rows, cols), np.nan, np.float32)
    b[:filled] = value + np.arange(filled)[:, None]
    return b


def test_tracker_sends_each_row_once_and_ends_complete():
    t = LineTracker(_ids())
    ev = t.update(_buffer(4, 3, 2), up=False)
    assert ev.started == "s1" and [r for r, _ in ev.rows] == [0, 1]
    assert t.update(_buffer(4, 3, 2), up=False).items == []
    ev = t.update(_buffer(4, 3, 4), up=False)
    assert [r for r, _ in ev.rows] == [2, 3] and ev.ended == [("s1", True)]
    assert [i[0] for i in ev.items] == ["row", "row", "end"]


def test_tracker_upward_scan_sends_display_rows_from_the_bottom():
    t = LineTracker(_ids())
    ev = t.update(_buffer(4, 3, 3), up=True)
    assert [r for r, _ in ev.rows] == [3, 2, 1]


def test_tracker_backward_lines_are_mirrored():
    t = LineTracker(_ids(), backward=True)
    b = np.full((2, 3), np.nan, np.float32)
    b[0] = [1, 2, 3]
    ev = t.update(b, up=False)
    assert ev.rows[0][1].tolist() == [3, 2, 1]


def test_tracker_sees_a_new_frame_that_overwrote_the_old_one_between_grabs():
    t = LineTracker(_ids())
    t.update(_buffer(6, 3, 2, value=1.0), up=False)
    ev = t.update(_buffer(6, 3, 4, value=50.0), up=False)  # a new frame already past row 1
    assert ev.ended == [("s1", False)] and ev.started == "s2"
    assert [r for r, _ in ev.rows] == [0, 1, 2, 3]
    assert [i[0] for i in ev.items][:2] == ["end", "start"]


def test_tracker_sees_a_cleared_buffer_and_a_new_geometry():
    t = LineTracker(_ids())
    t.update(_buffer(4, 3, 3), up=False)
    ev = t.update(_buffer(4, 3, 1, value=9.0), up=False)  # rows sent are NaN again
    assert ev.ended == [("s1", False)] and ev.started == "s2"
    ev = t.update(_buffer(8, 3, 1), up=False)
    assert ev.ended == [("s2", False)] and ev.started == "s3"
    ev = t.update(_buffer(8, 3, 1), up=True)  # same data, but the direction flipped
    assert ev.started == "s4"


def test_tracker_unmark_sends_rows_again_after_a_failure():
    t = LineTracker(_ids())
    ev = t.update(_buffer(4, 3, 2), up=True)
    t.unmark([r for r, _ in ev.rows])
    ev = t.update(_buffer(4, 3, 2), up=True)
    assert [r for r, _ in ev.rows] == [3, 2] and ev.started is None and t.scan_id == "s1"


def test_tracker_ignores_an_empty_buffer_and_partial_lines():
    t = LineTracker(_ids())
    assert t.update(np.full((3, 4), np.nan), up=False).items == []
    b = np.full((3, 4), np.nan, np.float32)
    b[0, :1] = 1.0  # a quarter of a line: not acquired yet
    assert t.update(b, up=False).items == []


# -- drift between frames ------------------------------------------------------------------


@pytest.mark.parametrize(("angle", "zoom"), [(0.0, False), (135.0, False), (135.0, True)])
def test_drift_is_measured_from_the_overlap_of_two_frames(angle: float, zoom: bool) -> None:
    from stm_live.bridge.drift import DriftTracker, measure_drift
    from stm_live.sim.sample import VirtualSample

    sample = VirtualSample(size_nm=120.0, seed=3, steps=1)
    first = ScanFrame((10e-9, 0.0), 40e-9, 40e-9, angle)
    second = ScanFrame((14e-9, 3e-9), 16e-9, 16e-9, angle) if zoom else first
    drift = np.array([1.3e-9, -0.7e-9])
    a = sample.render(first, 128, 128)
    b = sample.render(second, 128, 128, drift_m=np.tile(drift, (128, 1)))
    d = measure_drift(a, first, b, second)
    assert d.reliable
    assert (d.dx_m, d.dy_m) == pytest.approx(tuple(drift), abs=0.15e-9)
    tracker = DriftTracker()
    assert tracker.add(a, first, 10.0) is None
    tracker.add(b, second, 20.0)
    assert tracker.velocity_m_s == pytest.approx(tuple(drift / 10.0), abs=0.02e-9)
    assert tracker.predict(0.0, 0.0, 5.0) == pytest.approx(tuple(drift / 2), abs=0.1e-9)


def test_frames_that_do_not_overlap_give_no_drift() -> None:
    from stm_live.bridge.drift import measure_drift

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64))
    d = measure_drift(a, ScanFrame((0.0, 0.0), 10e-9, 10e-9), a, ScanFrame((50e-9, 0.0), 10e-9, 10e-9))
    assert not d.reliable and d.overlap == 0.0 and (d.dx_m, d.dy_m) == (0.0, 0.0)
