"""SegmentationModel end to end with a tiny real ONNX model: frames in, Segmentation out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import bumps_image, write_tiny_model

from stm_live.cli import main
from stm_live.errors import ModelError
from stm_live.frame import Frame
from stm_live.io import write_sxm
from stm_live.model.instances import class_map_from_probs
from stm_live.model.runtime import SegmentationModel, select_providers
from stm_live.publish.documents import result_record


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    write_tiny_model(path, nm_per_px=0.2)
    return path


def _frame(shape: tuple[int, int] = (96, 128), pitch_nm: float = 0.2, **kw: object) -> tuple[Frame, list, list]:
    bright = [(20, 30), (60, 90)]
    dark = [(40, 100)]
    data = bumps_image(shape, bright, dark) * 1e-10  # metres: 0.1 nm bumps
    rows, cols = shape
    frame = Frame(data, cols * pitch_nm * 1e-9, rows * pitch_nm * 1e-9, **kw)  # type: ignore[arg-type]
    return frame, bright, dark


def _positions(seg, name: str) -> list[tuple[float, float]]:
    return sorted((d.y_nm, d.x_nm) for d in seg.detections if d.class_name == name)


def test_segment_finds_bumps_and_pits_where_they_are(tiny_model: Path) -> None:
    model = SegmentationModel(tiny_model, provider="cpu")
    frame, bright, _dark = _frame()
    seg = model.segment(frame)
    assert seg.classes == ("bright", "dark") and seg.model_id == model.id
    assert seg.class_map.shape == frame.data.shape and seg.class_map.dtype == np.uint8
    got_bright = _positions(seg, "bright")
    assert len(got_bright) == 2 and len(_positions(seg, "dark")) == 1
    for (y, x), (r, c) in zip(got_bright, sorted(bright), strict=True):
        assert abs(y - (r + 0.5) * 0.2) < 0.25 and abs(x - (c + 0.5) * 0.2) < 0.25
    assert seg.class_map[20, 30] == 1 and seg.class_map[40, 100] == 2 and seg.class_map[5, 5] == 0
    assert set(seg.timings_ms) == {"level", "prepare", "infer", "instances", "map", "total"}


def test_positions_do_not_depend_on_the_input_pitch(tiny_model: Path) -> None:
    model = SegmentationModel(tiny_model, provider="cpu")
    # The same surface sampled twice as finely: the model resamples to its 0.2 nm/px.
    coarse, _, _ = _frame((96, 128), 0.2)
    rr, cc = np.indices((192, 256))
    fine_data = np.random.default_rng(1).normal(0, 0.2, size=(192, 256))
    for sign, (r, c) in ((1, (20, 30)), (1, (60, 90)), (-1, (40, 100))):
        y, x = (r + 0.5) * 0.2, (c + 0.5) * 0.2
        fine_data += sign * np.exp(-(((rr + 0.5) * 0.1 - y) ** 2 + ((cc + 0.5) * 0.1 - x) ** 2) / (2 * 0.3**2))
    fine = Frame(fine_data * 1e-10, 25.6e-9, 19.2e-9)
    a, b = model.segment(coarse), model.segment(fine)
    assert len(a.detections) == len(b.detections) == 3
    for d1, d2 in zip(sorted(a.detections, key=lambda d: d.x_nm), sorted(b.detections, key=lambda d: d.x_nm),
                      strict=True):
        assert d1.class_name == d2.class_name
        assert abs(d1.x_nm - d2.x_nm) < 0.15 and abs(d1.y_nm - d2.y_nm) < 0.15


def test_partial_scan_segments_only_acquired_rows(tiny_model: Path) -> None:
    model = SegmentationModel(tiny_model, provider="cpu")
    frame, _, _ = _frame()
    data = frame.data.copy()
    data[50:] = np.nan  # scan down, half done: bump at row 60 not scanned yet
    partial = Frame(data, frame.width_m, frame.height_m, rows_valid=50)
    seg = model.segment(partial)
    assert seg.rows_done == 50
    assert (seg.class_map[50:] == 0).all()
    assert len(_positions(seg, "bright")) == 1 and len(_positions(seg, "dark")) == 1


def test_upward_partial_scan_keeps_y_from_the_top(tiny_model: Path) -> None:
    model = SegmentationModel(tiny_model, provider="cpu")
    frame, _, _ = _frame()
    data = frame.data.copy()
    data[:50] = np.nan  # scan up: the bottom rows 50.. are done
    seg = model.segment(Frame(data, frame.width_m, frame.height_m, scan_direction="up", rows_valid=46))
    (y, x), = _positions(seg, "bright")
    assert abs(y - 60.5 * 0.2) < 0.25 and abs(x - 90.5 * 0.2) < 0.25


def test_no_rows_and_bare_encoder_are_clear_errors(tmp_path: Path, tiny_model: Path) -> None:
    model = SegmentationModel(tiny_model, provider="cpu")
    frame, _, _ = _frame()
    empty = Frame(np.full(frame.data.shape, np.nan), frame.width_m, frame.height_m, rows_valid=0)
    with pytest.raises(ModelError, match="no rows acquired"):
        model.segment(empty)
    write_tiny_model(tmp_path / "enc.onnx", head=False)
    encoder = SegmentationModel(tmp_path / "enc.onnx", provider="cpu")
    with pytest.raises(ModelError, match="bare encoder"):
        encoder.segment(frame)
    emb, image = encoder.embed(frame)
    assert emb.shape == (4, *image.shape)


def test_missing_model_and_cuda_without_cuda(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.onnx: model file not found"):
        SegmentationModel(tmp_path / "nope.onnx")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ModelError, match="no CUDAExecutionProvider"):
            select_providers("cuda")
        assert select_providers("auto") == ["CPUExecutionProvider"]


def test_result_record_fields(tiny_model: Path) -> None:
    model = SegmentationModel(tiny_model, provider="cpu")
    frame, _, _ = _frame()
    record = result_record("x.sxm", frame, model.segment(frame))
    assert set(record) == {"source", "image", "model", "classes", "detections", "timings_ms"}
    assert record["image"] == {"rows": 96, "cols": 128, "width_nm": 25.6, "height_nm": 19.2, "channel": "Z"}
    assert set(record["detections"][0]) == {"id", "class", "x_nm", "y_nm", "area_nm2", "score"}
    json.dumps(record)


def test_segment_command_json_and_mask(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path) -> None:
    frame, _, _ = _frame()
    sxm = write_sxm(tmp_path / "scan.sxm", [frame])
    npy = tmp_path / "scan.npy"
    np.save(npy, frame.data)
    bad = tmp_path / "bad.sxm"
    bad.write_bytes(sxm.read_bytes()[:3000])
    masks = tmp_path / "masks"
    masks.mkdir()
    rc = main(["segment", str(sxm), str(bad), str(npy), "--width-nm", "25.6", "--model", str(tiny_model),
               "--json", "--mask-out", str(masks)])
    captured = capsys.readouterr()
    assert rc == 2  # the bad file is reported, the others still processed
    assert "bad.sxm" in captured.err and "truncated" in captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["source"] for r in lines] == [str(sxm), str(npy)]
    assert lines[0]["detections"] == lines[1]["detections"]
    assert {d["class"] for d in lines[0]["detections"]} == {"bright", "dark"}
    mask = np.load(masks / "scan.mask.npy", allow_pickle=False)
    assert mask.shape == (96, 128) and mask.dtype == np.uint8 and mask[20, 30] == 1


def test_class_map_is_the_argmax_of_the_probabilities_ties_to_the_lower_class() -> None:
    rng = np.random.default_rng(5)
    probs = rng.random((4, 37, 53)).astype(np.float32)
    probs[:, :5, :5] = 0.25  # four-way ties
    probs[2, 10:12, :] = probs[1, 10:12, :]  # two-way ties between classes 1 and 2
    out = class_map_from_probs(probs)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, probs.argmax(axis=0))
    assert (out[:5, :5] == 0).all()
