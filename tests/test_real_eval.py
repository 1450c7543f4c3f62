"""Hand labels of real images, their scoring rule, and adaptation as a user does it on real frames."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tiny_models import bumps_image, write_tiny_model

from stm_live.cli import main
from stm_live.errors import LabelError
from stm_live.frame import Detection, Frame
from stm_live.io import read_frame, write_sxm
from stm_live.model.adapt import AdaptSettings, LabelledFrame, adapt_model, feature_pitch, feature_size_nm
from stm_live.model.format import load_onnx, read_info, save_model
from stm_live.model.labels import (
    FORMAT,
    IGNORE,
    LabelledFeature,
    Region,
    dense_mask,
    read_label_set,
    score_region,
)
from stm_live.model.prototypes import Point
from stm_live.model.real_eval import load_scan, score_model, support_draw
from stm_live.model.runtime import SegmentationModel

REPO = Path(__file__).resolve().parents[1]
LABELS = sorted((REPO / "eval" / "real").glob("*.json"))
DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "real-npy").is_dir(), reason="../shared/data/real-npy is not there")

BRIGHT = [(20, 30), (60, 90), (100, 40), (30, 110)]
DARK = [(40, 100), (90, 20), (110, 110)]


def _nm(r: int, c: int) -> tuple[float, float]:
    return (c + 0.5) * 0.2, (r + 0.5) * 0.2


# ------------------------------------------------------------------ the committed label set
def test_the_real_label_set_is_complete_enough() -> None:
    sets = [read_label_set(p) for p in LABELS]
    images = {s.image for s in sets}
    assert sum(i.startswith("real-npy/si001h") for i in images) >= 2 and "real-npy/tio2_110_m70.npy" in images
    clear = [f for s in sets for f in s.features if not f.ambiguous]
    assert len(clear) >= 150
    for s in sets:
        assert {r.split for r in s.regions} == {"dev", "test"}, s.path
        for r in s.regions:  # the regions of one image never overlap: a feature is scored once
            for q in s.regions:
                if q is not r:
                    assert r.x1_nm <= q.x0_nm or q.x1_nm <= r.x0_nm or r.y1_nm <= q.y0_nm or q.y1_nm <= r.y0_nm
    test_counts = Counter(f.class_name for s in sets for r in s.regions_of("test") for f in s.features_in(r)
                          if not f.ambiguous)
    assert test_counts["dangling_bond"] >= 20 and test_counts["dimer_vacancy"] >= 20
    tio2 = next(s for s in sets if "tio2" in s.image)
    mask = dense_mask(tio2)
    assert mask.shape == (512, 512) and 0.05 < (mask == 1).mean() < 0.5 and (mask == IGNORE).any()


def _write_labels(path: Path, **changes: object) -> Path:
    doc = {
        "format": FORMAT,
        "image": {"file": "img.npy", "width_nm": 25.6, "height_nm": 25.6, "rows": 128, "cols": 128},
        "classes": {"bright": "", "dark": ""},
        "match_radius_nm": 0.6,
        "regions": [{"id": "A", "split": "dev", "x0_nm": 0, "y0_nm": 0, "x1_nm": 12.8, "y1_nm": 25.6},
                    {"id": "B", "split": "test", "x0_nm": 12.8, "y0_nm": 0, "x1_nm": 25.6, "y1_nm": 25.6}],
        "features": [{"class": "bright", "x_nm": x, "y_nm": y} for x, y in (_nm(*p) for p in BRIGHT)]
        + [{"class": "dark", "x_nm": x, "y_nm": y} for x, y in (_nm(*p) for p in DARK)],
    }
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a label file"),
        ({"features": [{"class": "nope", "x_nm": 1, "y_nm": 1}]}, "features[0]: class 'nope'"),
        ({"features": [{"class": "dark", "x_nm": 99, "y_nm": 1}]}, "features[0]: (99.0, 1.0) nm lies in no region"),
        ({"regions": [{"id": "A", "split": "train", "x0_nm": 0, "y0_nm": 0, "x1_nm": 1, "y1_nm": 1}]},
         "split 'train'"),
        ({"match_radius_nm": "far"}, "'match_radius_nm' is 'far'"),
    ],
)
def test_label_file_errors_name_the_file_and_entry(tmp_path: Path, change: dict, message: str) -> None:
    path = _write_labels(tmp_path / "l.json", **change)
    with pytest.raises(LabelError, match=str(path).replace(".", r"\.") + ".*" + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        read_label_set(path)


def test_scoring_one_detection_per_trench_and_edges() -> None:
    trench = LabelledFeature("v", 5.0, 5.0, ((3.5, 5.0), (6.5, 5.0)))
    spot = LabelledFeature("b", 8.0, 2.0)
    unsure = LabelledFeature("b", 2.0, 8.0, ambiguous=True)
    region = Region("R", "test", 0, 0, 10, 10)
    dets = [
        Detection("v", 3.6, 5.2, 1.0, 0.9),  # on the trench's end: matches it (distance to the segment)
        Detection("v", 6.4, 5.0, 1.0, 0.9),  # a second piece of the same trench: a false positive, not of nothing
        Detection("b", 2.1, 8.0, 0.5, 0.9),  # on the ambiguous feature: counts for nothing
        Detection("b", 5.0, 9.8, 0.5, 0.9),  # unpaired but at the region's edge: not counted
        Detection("b", 5.0, 1.0, 0.5, 0.9),  # nothing there: a false detection
        Detection("b", 12.0, 2.0, 0.5, 0.9),  # outside the region
    ]
    s = score_region(dets, [trench, spot, unsure], region, ["v", "b"], match_radius_nm=0.5)
    assert (s.tp, s.fp, s.fn) == ({"v": 1, "b": 0}, {"v": 1, "b": 1}, {"v": 0, "b": 1})
    assert s.false_detections == 1 and s.ignored == 2 and s.false_per_100nm2 == pytest.approx(1.0)


# ------------------------------------------------------------------ adaptation on a small real model
@pytest.fixture
def scan(tmp_path: Path) -> Path:
    data = bumps_image((128, 128), BRIGHT, DARK) * 1e-10
    return write_sxm(tmp_path / "scan.sxm", [Frame(data, 25.6e-9, 25.6e-9, bias_v=-1.5)])


@pytest.fixture
def encoder(tmp_path: Path) -> Path:
    path = tmp_path / "enc.onnx"
    write_tiny_model(path, head=False)
    return path


def test_feature_size_and_pitch_follow_the_image() -> None:
    yy, xx = np.mgrid[:96, :96]
    for sigma_px in (2.0, 4.0, 6.0):
        blob = np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * sigma_px**2))
        size = feature_size_nm(blob, 0.05, [(48, 48, True)])
        assert size == pytest.approx(2 * np.sqrt(2) * sigma_px * 0.05, rel=0.15)
        dark = feature_size_nm(-blob, 0.05, [(48, 48, False)])
        assert dark == pytest.approx(size)
    # a 100 nm / 512 px Si frame and a 10 nm / 512 px TiO2 frame get different pitches, neither the default
    assert feature_pitch(1.15, 100 / 512) == pytest.approx(0.115)
    assert feature_pitch(0.6, 10 / 512) == pytest.approx(0.06)


def test_marked_background_is_never_detected_on_the_support_frame(tmp_path: Path, encoder: Path) -> None:
    # a faint bump (0.6 of the others) in a rectangle the person marks as background
    data = bumps_image((128, 128), BRIGHT, DARK) * 1e-10
    rr, cc = np.indices(data.shape)
    data = data + 0.6e-10 * np.exp(-((rr - 100) ** 2 + (cc - 100) ** 2) / 4.0)
    frame = Frame(data.astype(np.float32), 25.6e-9, 25.6e-9)
    base = SegmentationModel(encoder, provider="cpu")
    points = (Point(*_nm(*BRIGHT[0]), "up"), Point(*_nm(*DARK[0]), "down"))
    box = (18.0, 18.0, 22.0, 22.0)  # around the faint bump at (20.1, 20.1) nm
    plain = LabelledFrame(frame, points)
    marked = LabelledFrame(frame, points, background_boxes=(box,))
    found = {}
    for name, example in (("plain", plain), ("marked", marked)):
        # the box alone, without the contrast gate (which drops the faint bump by itself: 0.6 of the clicked one)
        settings = AdaptSettings(nm_per_px=0.2, contrast_fraction=0.0)
        proto, info, report = adapt_model(base, [example], ["up", "down"], settings)
        path = save_model(proto, info, tmp_path / f"{name}.onnx") and tmp_path / f"{name}.onnx"
        seg = SegmentationModel(path, provider="cpu").segment(frame)
        found[name] = [d for d in seg.detections if box[0] <= d.x_nm < box[2] and box[1] <= d.y_nm < box[3]]
        if name == "marked":
            assert report["calibration"]["allowed"] == {"up": 0, "down": 0}  # an encoder detects nothing
            assert len(seg.detections) >= len(BRIGHT) + len(DARK) - 1  # the real features are still found
    assert found["plain"], "the faint bump should be a detection when nobody says otherwise"
    assert found["marked"] == []


def test_adapt_records_the_bias_polarity_and_segment_warns_on_the_other(
    tmp_path: Path, scan: Path, encoder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = tmp_path / "p.csv"
    with points.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x_nm", "y_nm", "class", "x2_nm", "y2_nm"])
        w.writerow([*_nm(*BRIGHT[0]), "up", "", ""])
        w.writerow([*_nm(*DARK[0]), "down", "", ""])
        w.writerow([1.0, 1.0, "background", 3.0, 3.0])
    out = tmp_path / "m.onnx"
    assert main(["-q", "adapt", "--model", str(encoder), "--image", str(scan), "--points", str(points),
                 "--out", str(out)]) == 0
    monkeypatch.setattr(logging.getLogger("stm_live"), "propagate", True)  # main() routed it to stderr
    info = read_info(load_onnx(out))
    assert info.provenance["bias_polarity"] == "negative"
    assert info.provenance["images"][0]["background_boxes"] == 1
    model = SegmentationModel(out, provider="cpu")
    same = read_frame(scan)
    with caplog.at_level(logging.WARNING, logger="stm_live.model.runtime"):
        model.segment(same)
        assert not caplog.records
        other = Frame(same.data, same.width_m, same.height_m, bias_v=1.5, source="flipped.sxm")
        model.segment(other)
        model.segment(other)  # one warning per frame source, not one per call
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "flipped.sxm" in warnings[0] and "positive" in warnings[0]


def test_adapt_refuses_labelled_images_of_both_polarities(
    tmp_path: Path, scan: Path, encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = read_frame(scan).data
    other = write_sxm(tmp_path / "pos.sxm", [Frame(data, 25.6e-9, 25.6e-9, bias_v=2.0)])
    points = tmp_path / "p.csv"
    points.write_text(f"x_nm,y_nm,class\n{_nm(*BRIGHT[0])[0]},{_nm(*BRIGHT[0])[1]},up\n")
    rc = main(["adapt", "--model", str(encoder), "--image", str(scan), "--points", str(points), "--image",
               str(other), "--points", str(points), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc != 0 and "both bias polarities" in err and "Traceback" not in err


def test_point_file_rectangles_need_a_known_class(tmp_path: Path, scan: Path, encoder: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    points = tmp_path / "p.csv"
    points.write_text("x_nm,y_nm,class,x2_nm,y2_nm\n1,1,up,,\n1,1,up,2,2\n")
    rc = main(["adapt", "--model", str(encoder), "--image", str(scan), "--points", str(points),
               "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc != 0 and "p.csv:3" in err and "'background' or 'all_labelled'" in err


# ------------------------------------------------------------------ evaluate --labels, small and real
def test_evaluate_labels_zero_and_k_shot_on_a_small_labelled_image(
    tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    np.save(root / "img.npy", bumps_image((128, 128), BRIGHT, DARK))
    labels = _write_labels(tmp_path / "l.json")
    model = tmp_path / "tiny.onnx"
    write_tiny_model(model)
    assert main(["evaluate", "--labels", str(labels), "--data-root", str(root), "--model", str(model),
                 "--split", "all", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    zero = report["rows"]["zero-shot"]
    assert zero["classes"]["bright"]["f1"] == 1.0 and zero["classes"]["dark"]["f1"] == 1.0
    assert zero["false_detections"] == 0 and zero["area_nm2"] == pytest.approx(25.6**2)
    # one click per class from the dev half, scored on the test half: the tiny encoder separates them
    scan = load_scan(read_label_set(labels), root)
    support = support_draw([scan], ["bright", "dark"], 1, np.random.default_rng(0))
    assert all(p.x_nm < 12.8 for ex in support for p in ex.points)
    assert all(b[2] <= 12.8 for ex in support for b in ex.background_boxes)
    assert main(["evaluate", "--labels", str(labels), "--data-root", str(root), "--model", str(encoder),
                 "--adapt-shots", "1", "--draws", "2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"]["1-shot (mean of 2 draws)"]
    assert row["classes"]["bright"]["recall"] == 1.0 and row["classes"]["dark"]["recall"] == 1.0


def test_evaluate_labels_errors_are_one_line(tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = _write_labels(tmp_path / "l.json")
    rc = main(["evaluate", "--labels", str(labels), "--data-root", str(tmp_path), "--model", str(encoder)])
    err = capsys.readouterr().err
    assert rc != 0 and "img.npy not found" in err and "Traceback" not in err


@needs_data
def test_bundled_model_on_the_real_labels() -> None:
    sets = [read_label_set(p) for p in LABELS if "si001h" in p.name]
    scans = [load_scan(s, DATA) for s in sets]
    score = score_model(SegmentationModel(provider="cpu"), scans, "test").per_class()
    # the bundled model finds most real vacancies and dangling bonds (docs/real_eval.md has the figures)
    assert score["dimer_vacancy"]["recall"] > 0.6 and score["dangling_bond"]["recall"] > 0.6


def test_touching_round_features_are_split_and_trench_pieces_merged() -> None:
    from stm_live.model.instances import find_instances

    rr, cc = np.indices((40, 60))
    cmap = np.zeros((40, 60), np.uint8)
    cmap[((rr - 20) ** 2 + (cc - 15) ** 2 <= 36) | ((rr - 20) ** 2 + (cc - 26) ** 2 <= 36)] = 1  # two touching spots
    cmap[20, 45:48] = cmap[20, 50:53] = 2  # a trench found as two pieces, 0.5 nm apart
    probs = np.stack([(cmap == 0), (cmap == 1), (cmap == 2)]).astype(np.float32)
    kw = {"nm_per_px": (0.1, 0.1)}
    plain = find_instances(cmap, probs, ["spot", "trench"], **kw)
    assert [d.class_name for d in plain].count("spot") == 1 and [d.class_name for d in plain].count("trench") == 2
    counted = find_instances(cmap, probs, ["spot", "trench"], split_within_nm={"spot": 0.7},
                             merge_within_nm={"trench": 1.0}, **kw)
    spots = sorted(d.x_nm for d in counted if d.class_name == "spot")
    assert len(spots) == 2 and spots[0] == pytest.approx(1.55, abs=0.15) and spots[1] == pytest.approx(2.65, abs=0.15)
    assert [d.class_name for d in counted].count("trench") == 1


def test_a_dense_mask_gets_a_cross_validated_background_bias(tmp_path: Path, encoder: Path) -> None:
    data = bumps_image((128, 128), BRIGHT, DARK)
    frame = Frame((data * 1e-10).astype(np.float32), 25.6e-9, 25.6e-9)
    mask = np.zeros((128, 128), np.int16)
    for r, c in BRIGHT:
        mask[(np.indices(mask.shape)[0] - r) ** 2 + (np.indices(mask.shape)[1] - c) ** 2 <= 4] = 1
    mask[:, 100:] = 255  # unlabelled
    base = SegmentationModel(encoder, provider="cpu")
    proto, info, report = adapt_model(base, [LabelledFrame(frame, mask=mask)], ["up"], AdaptSettings(nm_per_px=0.2))
    assert info.prototypes is not None and info.prototypes.offsets is not None
    assert report["cross_validation"] and report["prototypes_per_class"] == 3
    path = tmp_path / "dense.onnx"
    save_model(proto, info, path)
    model = SegmentationModel(path, provider="cpu")
    assert read_info(load_onnx(path)).prototypes.offsets is not None  # type: ignore[union-attr]
    probs = model.run(model.prepare(frame)[0])["probs"][0]
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    found = model.segment(frame).detections
    assert sum(1 for d in found if d.class_name == "up") >= 3


def test_new_prototypes_of_a_known_class_add_nothing_the_start_model_calls_background(tmp_path: Path) -> None:
    # The start model knows "bright"; faint bumps (a third of the height) are background to it. One of
    # three clicked "bright" examples is a faint bump, so the class gets a new prototype: it may find the
    # clicked one, not the faint bumps elsewhere that the start model rejects.
    faint = [(20, 100), (100, 100), (64, 64)]
    data = bumps_image((128, 128), BRIGHT, DARK) + 0.35 * bumps_image((128, 128), faint, [], noise=0.0)
    frame = Frame((data * 1e-10).astype(np.float32), 25.6e-9, 25.6e-9)
    start = tmp_path / "start.onnx"
    write_tiny_model(start)
    base = SegmentationModel(start, provider="cpu")
    assert not [d for d in base.segment(frame).detections if d.class_name == "bright"
                and any(abs(d.x_nm - _nm(*f)[0]) < 1 and abs(d.y_nm - _nm(*f)[1]) < 1 for f in faint)]
    points = (Point(*_nm(*BRIGHT[0]), "bright"), Point(*_nm(*BRIGHT[1]), "bright"), Point(*_nm(*faint[0]), "bright"),
              Point(*_nm(*DARK[0]), "dark"))
    # the start model finds 2 of the 3 clicked "bright": by default that class would keep its trained
    # prototypes alone (tests/test_adapt_start_model.py); new ones are asked for here, as for a class
    # it found at fewer clicks
    settings = AdaptSettings(start_model_share=0.99)
    proto, info, report = adapt_model(base, [LabelledFrame(frame, points)], ["bright", "dark"], settings)
    assert "bright" not in report["classes_left_to_the_start_model"]
    kept = report["calibration"]["clicked_kept_of_found_and_background_kept_of_found"]["bright"]
    assert kept[3] > 0 and kept[2] == 0  # negatives where the start model sees background, none kept
    save_model(proto, info, tmp_path / "adapted.onnx")
    seg = SegmentationModel(tmp_path / "adapted.onnx", provider="cpu").segment(frame)
    for f in faint[1:]:
        x, y = _nm(*f)
        assert not [d for d in seg.detections if (d.x_nm - x) ** 2 + (d.y_nm - y) ** 2 < 1.0]
    assert sum(d.class_name == "bright" for d in seg.detections) >= len(BRIGHT) - 1


def test_background_squares_can_sit_on_the_start_models_false_detections(tmp_path: Path) -> None:
    from stm_live.model.real_eval import false_detections

    root = tmp_path / "data"
    root.mkdir()
    unlabelled = (70, 40)  # a bright bump in the dev half that the labels leave out
    np.save(root / "img.npy", bumps_image((128, 128), [*BRIGHT, unlabelled], DARK))
    write_tiny_model(tmp_path / "tiny.onnx")
    model = SegmentationModel(tmp_path / "tiny.onnx", provider="cpu")
    scan = load_scan(read_label_set(_write_labels(tmp_path / "l.json")), root)
    false = false_detections(model, [scan], "dev")
    x, y = _nm(*unlabelled)
    assert list(false) == [0] and len(false[0]) == 1
    assert abs(false[0][0][0] - x) < 0.3 and abs(false[0][0][1] - y) < 0.3
    assert false_detections(model, [scan], "test") == {}  # every detection there is labelled
    support = support_draw([scan], ["bright", "dark"], 1, np.random.default_rng(0), background_on=false)
    [box] = [b for ex in support for b in ex.background_boxes]
    assert box[0] < x < box[2] and box[1] < y < box[3]
    # a position on a labelled feature gives no box: the square must be clear of every label
    on_label = {0: [_nm(*BRIGHT[0])]}
    support = support_draw([scan], ["bright", "dark"], 1, np.random.default_rng(0), background_on=on_label)
    assert [b for ex in support for b in ex.background_boxes] == []
