"""adapt / discover / evaluate commands end to end, with a tiny real ONNX encoder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import bumps_image, write_tiny_model

from stm_live.cli import main
from stm_live.frame import Frame
from stm_live.io import write_sxm
from stm_live.model.format import load_onnx, read_info
from stm_live.model.runtime import SegmentationModel

BRIGHT = [(20, 30), (60, 90), (100, 40), (30, 110)]
DARK = [(40, 100), (90, 20), (110, 110)]


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    data = bumps_image((128, 128), BRIGHT, DARK) * 1e-10
    return write_sxm(tmp_path / "scan.sxm", [Frame(data, 25.6e-9, 25.6e-9)])  # 0.2 nm/px


@pytest.fixture
def encoder(tmp_path: Path) -> Path:
    path = tmp_path / "enc.onnx"
    write_tiny_model(path, head=False)
    return path


def _centre_nm(r: int, c: int) -> tuple[float, float]:
    return (c + 0.5) * 0.2, (r + 0.5) * 0.2


def test_adapt_from_a_handful_of_points_finds_the_unlabelled_features(
    tmp_path: Path, scan: Path, encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points = tmp_path / "points.csv"
    with points.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x_nm", "y_nm", "class"])
        w.writerow([*_centre_nm(*BRIGHT[0]), "adatom"])  # one example per class
        w.writerow([*_centre_nm(*DARK[0]), "vacancy"])
    out = tmp_path / "adapted.onnx"
    assert main(["adapt", "--model", str(encoder), "--image", str(scan), "--points", str(points),
                 "--out", str(out), "--radius-nm", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "contrast gate" in printed
    info = read_info(load_onnx(out))
    assert set(info.detection["min_contrast"]) == {"adatom", "vacancy"}  # the gate of each clicked class
    assert info.classes == ("adatom", "vacancy") and info.name == "adapted"
    assert info.provenance["images"][0]["points"] == 2
    assert info.provenance["base_model"]["id"] == read_info(load_onnx(encoder)).id
    model = SegmentationModel(out, provider="cpu")
    from stm_live.io import read_frame

    seg = model.segment(read_frame(scan))
    found = {(d.class_name, round(d.y_nm / 0.2 - 0.5), round(d.x_nm / 0.2 - 0.5)) for d in seg.detections}
    for r, c in BRIGHT:  # all four, three of them never labelled
        assert any(name == "adatom" and abs(rr - r) <= 1 and abs(cc - c) <= 1 for name, rr, cc in found)
    for r, c in DARK:
        assert any(name == "vacancy" and abs(rr - r) <= 1 and abs(cc - c) <= 1 for name, rr, cc in found)
    assert len(seg.detections) == len(BRIGHT) + len(DARK)


def test_adapt_from_a_mask(tmp_path: Path, scan: Path, encoder: Path) -> None:
    mask = np.zeros((128, 128), np.uint8)
    rr, cc = np.indices(mask.shape)
    for r, c in BRIGHT[:2]:
        mask[(rr - r) ** 2 + (cc - c) ** 2 <= 4] = 1
    for r, c in DARK[:1]:
        mask[(rr - r) ** 2 + (cc - c) ** 2 <= 4] = 2
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "m.onnx"
    # The tiny encoder's fixed filters suit features at its own pitch only; the pitch measured
    # from the labels is tested with the real base encoder (tests/test_real_eval.py).
    assert main(["adapt", "--model", str(encoder), "--image", str(scan), "--mask", str(tmp_path / "mask.npy"),
                 "--classes", "up,down", "--out", str(out), "--fine-tune-steps", "20", "--nm-per-px", "0.2"]) == 0
    seg = SegmentationModel(out, provider="cpu").segment(__import__("stm_live.io").io.read_frame(scan))
    assert sorted(d.class_name for d in seg.detections) == ["down"] * 3 + ["up"] * 4


@pytest.mark.parametrize(
    ("csv_text", "extra", "message"),
    [
        ("x,y,label\n1,2,a\n", [], "expected a CSV header x_nm,y_nm,class"),
        ("x_nm,y_nm,class\n1,oops,a\n", [], r"points\.csv:2: x_nm/y_nm must be numbers"),
        ("x_nm,y_nm,class\n", [], "no points"),
        ("x_nm,y_nm,class\n1,1,background\n", [], "no feature class"),
        ("x_nm,y_nm,class\n1,1,a\n", ["--contrast-fraction", "1.2"], "--contrast-fraction must be at least 0 "
         "and below 1"),
    ],
)
def test_adapt_point_file_errors_are_one_line(
    tmp_path: Path, scan: Path, encoder: Path, capsys: pytest.CaptureFixture[str],
    csv_text: str, extra: list[str], message: str,
) -> None:
    points = tmp_path / "points.csv"
    points.write_text(csv_text)
    rc = main(["adapt", "--model", str(encoder), "--image", str(scan), "--points", str(points),
               "--out", str(tmp_path / "x.onnx"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_adapt_mask_shape_and_count_errors(
    tmp_path: Path, scan: Path, encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "small.npy", np.zeros((10, 10), np.uint8))
    assert main(["adapt", "--model", str(encoder), "--image", str(scan), "--mask", str(tmp_path / "small.npy"),
                 "--classes", "a", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "mask must be an integer array of the image's shape (128, 128)" in capsys.readouterr().err
    assert main(["adapt", "--model", str(encoder), "--image", str(scan), "--image", str(scan), "--mask",
                 str(tmp_path / "small.npy"), "--classes", "a", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "2 --image but 1 --mask" in capsys.readouterr().err


def test_discover_proposes_bright_and_dark_clusters(
    tmp_path: Path, scan: Path, encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "disc"
    assert main(["discover", str(scan), "--model", str(encoder), "--out", str(out)]) == 0
    clusters = np.load(out / "clusters.npy", allow_pickle=False)
    assert clusters.shape == (128, 128)
    assert (clusters == 0).mean() > 0.9  # the flat background is not clustered
    # The most unusual clusters are the bumps and the pits, each its own.
    assert {int(clusters[r, c]) for r, c in BRIGHT} == {1}
    assert {int(clusters[r, c]) for r, c in DARK} == {2}
    with (out / "proposals.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_class: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append((float(row["x_nm"]), float(row["y_nm"])))
    for name, centres in (("cluster_1", BRIGHT), ("cluster_2", DARK)):
        got = sorted(by_class[name], key=lambda p: (p[1], p[0]))
        want = sorted((_centre_nm(r, c) for r, c in centres), key=lambda p: (p[1], p[0]))
        assert len(got) == len(want)
        for (x, y), (xw, yw) in zip(got, want, strict=True):
            assert abs(x - xw) < 0.25 and abs(y - yw) < 0.25
    assert (out / "clusters.png").is_file()
    assert "6 clusters" in capsys.readouterr().out


def test_evaluate_on_files_with_truth_sidecars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stm_live.sim import simulate_scan, write_simulated

    for seed in (1, 2):
        write_simulated(simulate_scan("si001-ash3", size_nm=12, pixels=120, seed=seed), tmp_path / "data",
                        f"s{seed}")
    model = tmp_path / "tiny.onnx"
    write_tiny_model(model)
    assert main(["evaluate", str(tmp_path / "data"), "--model", str(model), "--json", "--episodes", "5",
                 "--shots", "1", "--queries", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2
    # The tiny model's classes are not the surface's: no truth for them, counted as such.
    assert report["classes_without_truth"] == ["bright", "dark"]
    assert report["objects"]["bright"]["tp"] == 0
    assert "1-shot" in report["episodes"]
    assert report["episodes_frame_centred"] is False

    assert main(["evaluate", str(tmp_path / "data"), "--model", str(model), "--episodes", "5",
                 "--shots", "1", "--queries", "1", "--centre-features"]) == 0
    assert "episodes 1-shot (3-way, 1 queries, 5 episodes, frame-centred): accuracy" in capsys.readouterr().out


def test_evaluate_without_data_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    write_tiny_model(model)
    assert main(["evaluate", "--model", str(model)]) == 2
    assert "no data" in capsys.readouterr().err
