"""Adapting a model that already has a head: what a few clicks may change (issue 17, simulator target).

Real tiny models (tests/tiny_models.py): a fixed 3 x 3 convolution encoder with a
prototype head, three classes: tall bumps ("high"), bumps of half their height
("mid") and pits ("dark").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tiny_models import tiny_encoder

from stm_live.frame import Frame
from stm_live.model.adapt import AdaptSettings, LabelledFrame, adapt_model
from stm_live.model.format import ModelInfo, Prototypes, attach_head, save_model
from stm_live.model.prototypes import Point
from stm_live.model.runtime import SegmentationModel

SHAPE = (128, 128)
HIGH = [(20, 30), (60, 90), (100, 40)]
ODD_HIGH = [(30, 110), (110, 100)]  # "high" features the start model takes for "mid" (0.75 of the height)
MID = [(40, 60), (85, 60), (15, 75), (70, 20), (110, 70)]
DARK = [(40, 100), (90, 20), (60, 45)]
CLASSES = ["high", "mid", "dark"]


def _nm(rc: tuple[int, int]) -> tuple[float, float]:
    return (rc[1] + 0.5) * 0.2, (rc[0] + 0.5) * 0.2


def _image() -> Frame:
    rr, cc = np.indices(SHAPE)
    img = np.random.default_rng(0).normal(0.0, 0.1, size=SHAPE)
    for height, centres in ((1.0, HIGH), (0.7, ODD_HIGH), (0.65, MID), (-1.0, DARK)):
        for r, c in centres:
            img += height * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.5**2))
    return Frame((img * 1e-10).astype(np.float32), 25.6e-9, 25.6e-9)


def _start_model(path: Path) -> SegmentationModel:
    """A start model that knows all three classes (inputs are normalised to unit noise: bumps ~10)."""
    vectors = np.array([[0, 0, 0, 0], [10, 8, 0, 0], [5, 4, 0, 0], [-10, -8, 0, 0]], np.float32)
    prototypes = Prototypes(vectors, (0, 1, 2, 3), temperature=4.0)
    info = ModelInfo(name="tiny-high-mid-dark", classes=tuple(CLASSES), nm_per_px=0.2, embedding_dim=4,
                     context_px=2, levelling={"method": "plane"}, normalisation={"method": "robust", "scale": "mad"},
                     surface="test", prototypes=prototypes, detection={})
    save_model(attach_head(tiny_encoder(), prototypes), info, path)
    return SegmentationModel(path, provider="cpu")


def _near(detections: tuple, rc: tuple[int, int], cls: str) -> bool:
    x, y = _nm(rc)
    return any(d.class_name == cls and (d.x_nm - x) ** 2 + (d.y_nm - y) ** 2 < 1.0 for d in detections)


def _adapted(tmp_path: Path, base: SegmentationModel, points: list[Point], settings: AdaptSettings,
             name: str) -> tuple[SegmentationModel, dict]:
    proto, info, report = adapt_model(base, [LabelledFrame(_image(), tuple(points))], CLASSES, settings)
    save_model(proto, info, tmp_path / f"{name}.onnx")
    return SegmentationModel(tmp_path / f"{name}.onnx", provider="cpu"), report


def test_the_start_model_is_right_about_the_tiny_image(tmp_path: Path) -> None:
    seg = _start_model(tmp_path / "start.onnx").segment(_image())
    assert all(_near(seg.detections, f, "high") for f in HIGH)
    assert all(_near(seg.detections, f, "mid") for f in MID + ODD_HIGH)  # the odd tall ones look "mid" to it
    assert all(_near(seg.detections, f, "dark") for f in DARK)


def test_a_class_found_at_most_clicks_keeps_the_trained_prototypes(tmp_path: Path) -> None:
    # Two of three clicked "high" examples are found by the start model: one odd miss is no ground for
    # a new prototype (on the simulator such a prototype added false AsH3 across other frames).
    base = _start_model(tmp_path / "start.onnx")
    points = [Point(*_nm(HIGH[0]), "high"), Point(*_nm(HIGH[1]), "high"), Point(*_nm(ODD_HIGH[0]), "high"),
              Point(*_nm(MID[0]), "mid"), Point(*_nm(DARK[0]), "dark")]
    model, report = _adapted(tmp_path, base, points, AdaptSettings(), "most")
    assert report["start_model_found_of_clicked"]["high"] == [2, 3]
    assert report["classes_left_to_the_start_model"] == sorted(CLASSES)
    assert model.info.prototypes is not None and base.info.prototypes is not None
    np.testing.assert_array_equal(model.info.prototypes.vectors, base.info.prototypes.vectors)
    seg, start = model.segment(_image()), base.segment(_image())
    assert sorted((d.class_name, round(d.x_nm, 3)) for d in seg.detections) == \
        sorted((d.class_name, round(d.x_nm, 3)) for d in start.detections)
    # the rule before (new prototypes unless every click is found) adds one for "high"
    _, before = _adapted(tmp_path, base, points, AdaptSettings(start_model_share=0.99), "every")
    assert "high" not in before["classes_left_to_the_start_model"]


def test_new_prototypes_do_not_take_over_a_class_the_start_model_was_confirmed_on(tmp_path: Path) -> None:
    # The start model finds one of three clicked "high" examples (two odd, lower ones look "mid" to it):
    # "high" gets a new prototype, which lies between the tall bumps and the "mid" ones. The start model
    # finds both clicked "mid" examples, so its word on "mid" holds: the new "high" prototype may add the
    # odd clicked ones, not relabel the unclicked "mid" bumps.
    base = _start_model(tmp_path / "start.onnx")
    points = [Point(*_nm(HIGH[0]), "high"), Point(*_nm(ODD_HIGH[0]), "high"), Point(*_nm(ODD_HIGH[1]), "high"),
              Point(*_nm(MID[0]), "mid"), Point(*_nm(MID[1]), "mid"), Point(*_nm(DARK[0]), "dark")]
    model, report = _adapted(tmp_path, base, points, AdaptSettings(), "adapted")
    assert report["start_model_found_of_clicked"]["high"] == [1, 3]
    assert report["classes_left_to_the_start_model"] == ["dark", "mid"]
    kept = report["calibration"]["clicked_kept_of_found_and_background_kept_of_found"]["high"]
    assert kept[3] > 0 and kept[2] == 0  # the start model's "mid" features counted against "high"
    seg = model.segment(_image())
    assert not [f for f in MID[2:] if _near(seg.detections, f, "high")]
    assert all(_near(seg.detections, f, "mid") for f in MID)
    assert all(_near(seg.detections, f, "high") for f in HIGH)


def test_the_start_models_class_offsets_stay_with_its_prototypes_and_reach_new_ones() -> None:
    from stm_live.model.adapt import _with_base_prototypes

    base = Prototypes(np.eye(4, dtype=np.float32), (0, 1, 2, 3), 1.0, offsets=np.array([0.0, -1.5, 0.7, 0.0]))
    info = ModelInfo(name="start", classes=("high", "mid", "dark"), nm_per_px=0.2, embedding_dim=4, prototypes=base)
    clicked = Prototypes(np.full((3, 4), 0.5, np.float32), (0, 1, 2))  # background, high, mid from clicks
    merged = _with_base_prototypes(clicked, info, ["high", "mid"], unchanged={"mid"})
    assert merged.offsets is not None
    got = sorted((label, round(float(o), 3)) for label, o in zip(merged.labels, merged.offsets, strict=True))
    # the new "high" prototype gets high's offset; the start model's keep theirs; "dark" is not labelled
    assert got == [(0, 0.0), (1, -1.5), (1, -1.5), (2, 0.7)]


def _box(rc: tuple[int, int], half_nm: float = 0.6) -> tuple[float, float, float, float]:
    x, y = _nm(rc)
    return x - half_nm, y - half_nm, x + half_nm, y + half_nm


def test_strict_background_drops_boxed_detections_of_a_class_left_to_the_start_model_not_clicks(
        tmp_path: Path) -> None:
    # The start model calls the odd tall bumps "mid". A person clicks two ordinary "mid" bumps (and one of
    # each other class) and drags a box over one odd bump: "mid" stays the start model's class (it finds
    # both clicks), but its thresholds rise until the boxed detection goes, as long as no click is lost.
    base = _start_model(tmp_path / "start.onnx")
    start = base.segment(_image())
    odd = [d for d in start.detections if d.class_name == "mid" and _near((d,), ODD_HIGH[0], "mid")]
    clicked = [d for d in start.detections if d.class_name == "mid" and any(_near((d,), f, "mid") for f in MID[:2])]
    assert len(odd) == 1 and len(clicked) == 2
    points = (Point(*_nm(HIGH[0]), "high"), Point(*_nm(MID[0]), "mid"), Point(*_nm(MID[1]), "mid"),
              Point(*_nm(DARK[0]), "dark"))
    example = LabelledFrame(_image(), points, background_boxes=(_box(ODD_HIGH[0]),))
    # by default the box changes nothing for a class left to the start model
    _, plain, _ = adapt_model(base, [example], CLASSES, AdaptSettings())
    assert plain.detection["min_score"]["mid"] == base.thresholds()[0].get("mid", 0.0)
    proto, info, report = adapt_model(base, [example], CLASSES, AdaptSettings(strict_background=True))
    save_model(proto, info, tmp_path / "boxed.onnx")
    model = SegmentationModel(tmp_path / "boxed.onnx", provider="cpu")
    assert report["classes_left_to_the_start_model"] == sorted(CLASSES)
    seg = model.segment(_image())
    assert all(_near(seg.detections, f, "mid") for f in MID[:2])  # the clicks stay
    # the boxed one goes when it is less certain (or smaller) than both clicks, and stays otherwise
    droppable = odd[0].score < min(d.score for d in clicked) or odd[0].area_nm2 < min(d.area_nm2 for d in clicked)
    assert droppable  # the tiny image is made so: the odd bump is a poorer "mid" than the ordinary ones
    assert not _near(seg.detections, ODD_HIGH[0], "mid")
    assert info.detection["min_score"]["mid"] >= base.thresholds()[0].get("mid", 0.0)
    # nothing else of "mid" changes class; the other classes keep their detections
    assert all(_near(seg.detections, f, "high") for f in HIGH)
    assert all(_near(seg.detections, f, "dark") for f in DARK)
    # without the box, nothing changes
    proto, info, _ = adapt_model(base, [LabelledFrame(_image(), points)], CLASSES,
                                 AdaptSettings(strict_background=True))
    assert info.detection["min_score"]["mid"] == base.thresholds()[0].get("mid", 0.0)
