"""Frames of any size in tiles within a memory budget; frames the model does not apply to, and why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import bumps_image, write_tiny_model

from stm_live.frame import Frame
from stm_live.model.runtime import SegmentationModel
from stm_live.model.tiles import applicability, segment_frame, tile_bounds


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SegmentationModel:
    path = tmp_path_factory.mktemp("tiles") / "tiny.onnx"
    write_tiny_model(path, nm_per_px=0.2)
    return SegmentationModel(path, provider="cpu")


def bumps(rows: int, cols: int, n: int = 40, *, seed: int = 1) -> tuple[Frame, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    bright = [(int(r), int(c)) for r, c in zip(rng.integers(6, rows - 6, n), rng.integers(6, cols - 6, n),
                                               strict=True)]
    # Keep bumps apart so each is one detection.
    kept: list[tuple[int, int]] = []
    for b in bright:
        if all(abs(b[0] - k[0]) + abs(b[1] - k[1]) > 12 for k in kept):
            kept.append(b)
    data = bumps_image((rows, cols), kept, []) * 1e-10
    return Frame(data, cols * 0.2e-9, rows * 0.2e-9), kept


def test_tile_cores_cover_the_axis_once() -> None:
    for size, core, margin in [(10, 4, 1), (1000, 256, 44), (7, 100, 3)]:
        tiles = tile_bounds(size, core, margin)
        covered = np.zeros(size, int)
        for start, stop, c0, c1 in tiles:
            assert start <= c0 < c1 <= stop and start == max(0, c0 - margin) and stop == min(size, c1 + margin)
            covered[c0:c1] += 1
        assert (covered == 1).all()


def test_a_frame_in_tiles_finds_what_the_whole_frame_finds(model: SegmentationModel) -> None:
    frame, truth = bumps(300, 260)
    whole = segment_frame(model, frame, tile_model_px=4096)
    tiled = segment_frame(model, frame, tile_model_px=64)
    assert whole.timings_ms["tiles"] == 1 and tiled.timings_ms["tiles"] == 25
    assert len(whole.detections) == len(truth)
    assert len(tiled.detections) == len(whole.detections)
    # Each tile normalises its own input: a centre may move by a fraction of a pixel, never more than one.
    for d in whole.detections:
        near = [t for t in tiled.detections if abs(t.x_nm - d.x_nm) <= 0.2 and abs(t.y_nm - d.y_nm) <= 0.2]
        assert [t.class_name for t in near] == [d.class_name], d
    assert [d.id for d in tiled.detections] == list(range(len(truth)))
    agree = (whole.class_map == tiled.class_map).mean()
    assert agree > 0.995, agree


def test_a_partial_frame_in_tiles_keeps_detections_in_display_rows(model: SegmentationModel) -> None:
    frame, _ = bumps(300, 260)
    up = Frame(frame.data, frame.width_m, frame.height_m, scan_direction="up", rows_valid=150)
    whole = segment_frame(model, up, tile_model_px=4096)
    tiled = segment_frame(model, up, tile_model_px=64)
    assert all(d.y_nm >= 150 * 0.2 - 1 for d in tiled.detections)
    assert len(tiled.detections) == len(whole.detections) > 0
    for d in whole.detections:
        assert any(abs(t.x_nm - d.x_nm) <= 0.2 and abs(t.y_nm - d.y_nm) <= 0.2 for t in tiled.detections), d
    assert not tiled.class_map[:150].any()


def test_frames_the_model_does_not_apply_to_say_why(model: SegmentationModel) -> None:
    survey = Frame(np.random.default_rng(0).normal(size=(64, 64)), 1e-6, 1e-6)
    reason = applicability(model, survey)
    assert reason == ("not segmented: pixel size 15.6 nm, the model needs <= 0.8 nm "
                      "(0.2 nm model pixels, at most 4x coarser)")
    assert applicability(model, survey, max_upsample=50) is not None  # 78x coarser: still too coarse
    assert applicability(model, survey, max_upsample=100) is None
    flat = Frame(np.full((32, 32), 3e-9), 6.4e-9, 6.4e-9)
    assert applicability(model, flat) == "not segmented: the image is constant (3e-09 m everywhere)"
    tiny_pixels = Frame(np.random.default_rng(0).normal(size=(64, 64)), 64 * 1e-13, 64 * 1e-13)
    assert "finer" in str(applicability(model, tiny_pixels))
    fine = Frame(np.random.default_rng(0).normal(size=(64, 64)), 12.8e-9, 12.8e-9)
    assert applicability(model, fine) is None


def test_tiling_bounds_memory(model: SegmentationModel, tmp_path: Path) -> None:
    """A frame whose model grid is 16 M px runs in 1 M px tiles (peak memory of tiles, not the frame)."""
    import resource
    import subprocess
    import sys

    script = tmp_path / "big.py"
    script.write_text(f"""
import resource, numpy as np
from stm_live.frame import Frame
from stm_live.model.runtime import SegmentationModel
from stm_live.model.tiles import segment_frame
model = SegmentationModel({str(model.path)!r}, provider="cpu")
data = np.random.default_rng(0).normal(size=(4096, 4096)).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seg = segment_frame(model, Frame(data, 4096 * 0.2e-9, 4096 * 0.2e-9), tile_model_px=1024)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(int(seg.timings_ms["tiles"]), (after - before) // 1024)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=True)
    tiles, grown_mb = map(int, out.stdout.split())
    assert tiles == 16
    # The frame itself is 64 MB; levelling it (float64 temporaries), its class map and one 1 M px tile's
    # inference (about 25 MB here) stay bounded; one 16 M px inference of a real encoder (tens of channels)
    # would need gigabytes. Measured with the bundled model in benchmarks/bench_memory.py.
    assert grown_mb < 600, grown_mb
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss > 0
