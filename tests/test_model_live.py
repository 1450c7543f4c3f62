"""LiveSegmenter: line-by-line segmentation agrees with the whole-frame path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import bumps_image, write_tiny_model

from stm_live.frame import Frame
from stm_live.level import level_frame
from stm_live.model.instances import class_map_from_probs, find_instances
from stm_live.model.live import LiveSegmenter
from stm_live.model.prepare import to_image_grid
from stm_live.model.runtime import SegmentationModel

BRIGHT = [(12, 30), (60, 90), (100, 20)]
DARK = [(40, 100), (110, 110)]


@pytest.fixture(params=["mad", "std"])
def model(tmp_path: Path, request: pytest.FixtureRequest) -> SegmentationModel:
    # Both input spreads the bundled models use: si001-ash3 the MAD, base-encoder (and the
    # models adapted from it) the standard deviation.
    write_tiny_model(tmp_path / "tiny.onnx", nm_per_px=0.2, input_scale=request.param)
    return SegmentationModel(tmp_path / "tiny.onnx", provider="cpu")


def _scan(pitch_nm: float = 0.1) -> tuple[Frame, np.ndarray]:
    shape = (128, 128)
    data = bumps_image(shape, BRIGHT, DARK) * 1e-10
    frame = Frame(data, shape[1] * pitch_nm * 1e-9, shape[0] * pitch_nm * 1e-9)
    return frame, level_frame(frame.data, method="plane")


def _summary(seg) -> list[tuple[str, float, float]]:
    return sorted((d.class_name, round(d.x_nm, 1), round(d.y_nm, 1)) for d in seg.detections)


@pytest.mark.parametrize("direction", ["down", "up"])
def test_live_result_after_last_line_equals_whole_frame(model: SegmentationModel, direction: str) -> None:
    frame, levelled = _scan()
    whole = model.segment(frame, levelled=levelled)
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px,
                         scan_direction=direction, freeze_rows=10_000)  # statistics never frozen: exact
    order = range(frame.rows) if direction == "down" else range(frame.rows - 1, -1, -1)
    for row in order:
        live.add_row(row, levelled[row])
        seg = live.segment()
    assert seg.rows_done == frame.rows
    assert (seg.class_map == whole.class_map).mean() > 0.999
    assert _summary(seg) == _summary(whole)


def test_live_with_frozen_statistics_finds_the_same_features(model: SegmentationModel) -> None:
    frame, levelled = _scan()
    whole = model.segment(frame, levelled=levelled)
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px, freeze_rows=16)
    partial_counts = []
    for row in range(frame.rows):
        live.add_row(row, levelled[row])
        seg = live.segment()
        partial_counts.append(len(seg.detections))
        assert (seg.class_map[live.rows_done:] == 0).all()  # nothing below the scan front
    assert len(seg.detections) == len(whole.detections) == len(BRIGHT) + len(DARK)
    for a, b in zip(_summary(seg), _summary(whole), strict=True):
        assert a[0] == b[0] and abs(a[1] - b[1]) <= 0.2 and abs(a[2] - b[2]) <= 0.2
    # Features appear while the scan is running, top one first.
    assert partial_counts[40] >= 1 and partial_counts[40] < partial_counts[-1]


def test_missing_and_out_of_order_lines(model: SegmentationModel) -> None:
    frame, levelled = _scan()
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px, freeze_rows=10_000)
    rows = [r for r in range(frame.rows) if r % 17 != 5]  # some lines never arrive
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    for r in rows:
        live.add_row(r, levelled[r])
    seg = live.segment()
    whole = SegmentationModel.segment(model, frame, levelled=levelled)
    assert _summary(seg) == _summary(whole)
    with pytest.raises(ValueError, match="outside"):
        live.add_row(frame.rows, levelled[0])
    with pytest.raises(ValueError, match="expected"):
        live.add_row(0, levelled[0][:5])


def test_no_lines_yet_gives_an_empty_result(model: SegmentationModel) -> None:
    live = LiveSegmenter(model, rows=64, cols=64, nm_per_px=(0.1, 0.1))
    seg = live.segment()
    assert seg.rows_done == 0 and not seg.detections and not seg.class_map.any()
    live.add_row(0, np.full(64, np.nan))  # a line with no data changes nothing
    assert live.segment().rows_done == 0


def _search_all(live: LiveSegmenter) -> list:
    """Detections from a fresh search over every acquired model row of ``live``'s own probabilities."""
    done = live._done_model
    rows = slice(live.h - done, live.h) if live.up else slice(0, done)
    probs = live._probs[:, rows]
    pitch = live.model.info.nm_per_px
    return find_instances(
        class_map_from_probs(probs), probs, live.model.classes, nm_per_px=(pitch, pitch),
        min_score=live.min_score, min_area_nm2=live.min_area_nm2, row_offset=rows.start,
        merge_within_nm=live.model.info.detection.get("merge_within_nm", 0.0),
    )


def _assert_same(live_dets, fresh) -> None:
    assert len(live_dets) == len(fresh)
    for a, b in zip(live_dets, fresh, strict=True):
        assert (a.id, a.class_name) == (b.id, b.class_name)
        assert a.x_nm == pytest.approx(b.x_nm, abs=1e-9) and a.y_nm == pytest.approx(b.y_nm, abs=1e-9)
        assert a.area_nm2 == pytest.approx(b.area_nm2) and a.score == pytest.approx(b.score)


def _crowded_scan() -> tuple[Frame, np.ndarray]:
    # Many features, some pairs closer than the merge distance, some tall
    # enough to span several lines of context.
    rng = np.random.default_rng(3)
    bright = [(int(r), int(c)) for r, c in rng.integers(4, 124, size=(40, 2))]
    dark = [(int(r), int(c)) for r, c in rng.integers(4, 124, size=(25, 2))]
    bright += [(70, 60), (73, 63), (30, 10), (30, 14)]
    data = bumps_image((128, 128), bright, dark) * 1e-10
    frame = Frame(data, 12.8e-9, 12.8e-9)
    return frame, level_frame(frame.data, method="plane")


def _map_of_all_rows(live: LiveSegmenter) -> np.ndarray:
    """The class map at the input grid, from the whole model-grid map, with unacquired rows blank."""
    pitch = live.model.info.nm_per_px
    full = to_image_grid(class_map_from_probs(live._probs), (live.rows, live.cols), nm_per_px=live.nm_per_px,
                         target_nm_per_px=pitch)
    if live.up:
        full[: live.rows - live.rows_done] = 0
    else:
        full[live.rows_done :] = 0
    return full


@pytest.mark.parametrize("direction", ["down", "up"])
@pytest.mark.parametrize(("merge_nm", "model_pitch"), [(0.0, 0.1), (1.0, 0.1), (0.6, 0.2)])
def test_incremental_instance_search_equals_a_search_of_all_rows(
    tmp_path: Path, direction: str, merge_nm: float, model_pitch: float
) -> None:
    # The live path searches only from the oldest feature that can still
    # change, and updates the input-grid map only where it changed; at every
    # line its result must equal a fresh search of every row and a fresh map.
    detection = {"merge_within_nm": merge_nm} if merge_nm else None
    write_tiny_model(tmp_path / "m.onnx", nm_per_px=model_pitch, detection=detection)
    model = SegmentationModel(tmp_path / "m.onnx", provider="cpu")
    frame, levelled = _crowded_scan()
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px,
                         scan_direction=direction, freeze_rows=8)
    order = range(frame.rows) if direction == "down" else range(frame.rows - 1, -1, -1)
    searched = []
    for row in order:
        live.add_row(row, levelled[row])
        seg = live.segment()
        _assert_same(seg.detections, _search_all(live))
        assert np.array_equal(seg.class_map, _map_of_all_rows(live))
        searched.append(live._done_model - live._search_from)
    assert len(seg.detections) >= 25
    # The search no longer covers the whole frame once features behind the front are final.
    assert max(searched[-20:]) < live.h // 2


def test_incremental_instance_search_with_the_bundled_model() -> None:
    from stm_live.model.runtime import bundled_model_path
    from stm_live.sim import simulate_scan

    model = SegmentationModel(bundled_model_path(), provider="cpu")
    scan = simulate_scan("si001-ash3", size_nm=16.0, pixels=160, seed=7)
    frame = scan.frame("Z", "forward")
    levelled = level_frame(frame.data, method="plane")
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px)
    for row in range(frame.rows):
        live.add_row(row, levelled[row])
        if row % 3 == 2 or row == frame.rows - 1:
            seg = live.segment()
            _assert_same(seg.detections, _search_all(live))
    assert len(seg.detections) >= 5


@pytest.mark.parametrize("direction", ["down", "up"])
def test_pasting_only_the_changed_rows_rebuilds_every_class_map(model: SegmentationModel, direction: str) -> None:
    """What a live view does with ``seg.partial``: paste ``changed_rows`` into its copy of the map."""
    frame, levelled = _scan()
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px,
                         scan_direction=direction, freeze_rows=16)
    pasted = np.zeros((frame.rows, frame.cols), np.uint8)
    order = range(frame.rows) if direction == "down" else range(frame.rows - 1, -1, -1)
    widths = []
    for n, row in enumerate(order):
        live.add_row(row, levelled[row])
        if n % 3:  # coalesced: several lines per segmentation now and then
            continue
        seg = live.segment()
        start, stop = live.changed_rows
        pasted[start:stop] = seg.class_map[start:stop]
        widths.append(stop - start)
        np.testing.assert_array_equal(pasted, seg.class_map)
    # Once the normalisation is frozen only a band near the front changes, not every row done.
    assert max(widths[-10:]) < frame.rows // 2
