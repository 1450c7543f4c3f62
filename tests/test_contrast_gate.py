"""The contrast gate of adapted models (issue 17): features fainter than the clicked ones are not reported.

Real tiny models (tests/tiny_models.py): a fixed 3 x 3 convolution encoder with a prototype head
whose "dark" prototype lies close to background, so that it calls deep pits and shallow ones (0.35
of the depth) alike "dark", with scores near the deep ones' (0.76-0.85 against 0.92-0.95). On the
real Si(001):H frames the faint dark dots along the dimer rows are what a start model adds to the
vacancies a person counts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from daemon_kit import DaemonProcess, Subscriber, base_settings, bridge, bumps_frame, frame_done
from tiny_models import tiny_encoder, write_tiny_model
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.frame import Detection, Frame
from stm_live.io import write_sxm
from stm_live.level import level_frame
from stm_live.model.adapt import AdaptSettings, LabelledFrame, adapt_model
from stm_live.model.contrast import ContrastGate, feature_contrast
from stm_live.model.format import ModelInfo, Prototypes, attach_head, save_model
from stm_live.model.live import LiveSegmenter
from stm_live.model.prototypes import Point
from stm_live.model.runtime import SegmentationModel

SHAPE = (128, 128)
BUMPS = [(20, 30), (60, 90), (100, 40)]
DEEP = [(40, 100), (90, 20), (60, 45), (110, 110)]
FAINT = [(20, 70), (85, 65), (30, 10), (110, 75)]
CLASSES = ["bright", "dark"]


def _nm(rc: tuple[int, int]) -> tuple[float, float]:
    return (rc[1] + 0.5) * 0.2, (rc[0] + 0.5) * 0.2


def _image() -> Frame:
    rr, cc = np.indices(SHAPE)
    img = np.random.default_rng(0).normal(0.0, 0.1, size=SHAPE)
    for height, centres in ((1.0, BUMPS), (-1.0, DEEP), (-0.35, FAINT)):
        for r, c in centres:
            img += height * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.5**2))
    return Frame((img * 1e-10).astype(np.float32), 25.6e-9, 25.6e-9)


def _start_model(path: Path) -> SegmentationModel:
    vectors = np.array([[0, 0, 0, 0], [10, 8, 0, 0], [-3.5, -2.8, 0, 0]], np.float32)
    prototypes = Prototypes(vectors, (0, 1, 2), temperature=4.0)
    info = ModelInfo(name="tiny-bright-dark-loose", classes=tuple(CLASSES), nm_per_px=0.2, embedding_dim=4,
                     context_px=2, levelling={"method": "plane"}, normalisation={"method": "robust", "scale": "mad"},
                     surface="test", prototypes=prototypes, detection={})
    save_model(attach_head(tiny_encoder(), prototypes), info, path)
    return SegmentationModel(path, provider="cpu")


def _found(detections: tuple[Detection, ...], centres: list[tuple[int, int]], cls: str) -> list[bool]:
    out = []
    for rc in centres:
        x, y = _nm(rc)
        out.append(any(d.class_name == cls and (d.x_nm - x) ** 2 + (d.y_nm - y) ** 2 < 1.0 for d in detections))
    return out


def _adapted(tmp_path: Path, settings: AdaptSettings, name: str) -> tuple[SegmentationModel, dict]:
    base = _start_model(tmp_path / "start.onnx")
    points = (Point(*_nm(DEEP[0]), "dark"), Point(*_nm(DEEP[1]), "dark"), Point(*_nm(BUMPS[0]), "bright"))
    proto, info, report = adapt_model(base, [LabelledFrame(_image(), points)], CLASSES, settings)
    save_model(proto, info, tmp_path / f"{name}.onnx")
    return SegmentationModel(tmp_path / f"{name}.onnx", provider="cpu"), report


def test_the_start_model_calls_faint_pits_dark_with_scores_near_the_deep_ones(tmp_path: Path) -> None:
    seg = _start_model(tmp_path / "start.onnx").segment(_image())
    assert all(_found(seg.detections, DEEP + FAINT, "dark"))
    assert all(_found(seg.detections, BUMPS, "bright"))
    faint = [d.score for d in seg.detections if d.class_name == "dark" and any(_found((d,), FAINT, "dark"))]
    deep = [d.score for d in seg.detections if d.class_name == "dark" and any(_found((d,), DEEP, "dark"))]
    assert min(faint) > 0.75 and min(deep) - max(faint) < 0.1  # confident detections, nearly as the deep ones


def test_clicked_deep_pits_gate_out_the_faint_ones_and_keep_every_deep_one(tmp_path: Path) -> None:
    model, report = _adapted(tmp_path, AdaptSettings(), "gated")
    gate = model.info.detection["min_contrast"]
    assert set(gate) == {"bright", "dark"} and gate["dark"]["bright"] is False and gate["bright"]["bright"] is True
    assert gate["dark"]["unit"] == "m" and report["contrast"]["unit"] == "m"
    clicked = report["contrast"]["clicked"]["dark"]
    fraction = AdaptSettings().contrast_fraction
    assert len(clicked) == 2 and gate["dark"]["min"] == pytest.approx(fraction * min(clicked), rel=1e-3)
    assert 0.4e-10 < min(clicked) < 1e-10  # metres: the pits are 1 A deep, smoothed
    seg = model.segment(_image())
    assert all(_found(seg.detections, DEEP, "dark"))  # the two clicked and the two others
    assert not any(_found(seg.detections, FAINT, "dark"))
    assert all(_found(seg.detections, BUMPS, "bright"))
    assert [d.id for d in seg.detections] == list(range(len(seg.detections)))
    # without the gate the adapted model keeps the start model's view of the faint pits
    plain, plain_report = _adapted(tmp_path, AdaptSettings(contrast_fraction=0.0), "plain")
    assert "min_contrast" not in plain.info.detection and "contrast" not in plain_report
    assert all(_found(plain.segment(_image()).detections, FAINT, "dark"))
    assert plain.id != model.id  # the gate is part of what the model does


def test_the_live_path_applies_the_same_gate(tmp_path: Path) -> None:
    model, _ = _adapted(tmp_path, AdaptSettings(), "gated")
    frame = _image()
    levelled = level_frame(frame.data, method="plane")
    whole = model.segment(frame, levelled=levelled)
    live = LiveSegmenter(model, rows=frame.rows, cols=frame.cols, nm_per_px=frame.nm_per_px, freeze_rows=10_000)
    for row in range(frame.rows):
        live.add_row(row, levelled[row])
    seg = live.segment()
    assert sorted((d.class_name, round(d.x_nm, 1), round(d.y_nm, 1)) for d in seg.detections) == \
        sorted((d.class_name, round(d.x_nm, 1), round(d.y_nm, 1)) for d in whole.detections)
    assert not any(_found(seg.detections, FAINT, "dark"))


def test_contrast_needs_its_ring_and_unmeasurable_detections_are_kept() -> None:
    image = np.zeros((40, 40))
    image[18:22, 18:22] = -1.0
    kwargs = {"bright": False, "inner_nm": 0.3, "outer_nm": 0.8}
    assert feature_contrast(image, (0.1, 0.1), 2.0, 2.0, **kwargs) > 0.3
    # rows not acquired yet are left out; with none of the ring acquired there is nothing to compare with
    have = np.zeros(40, bool)
    assert np.isnan(feature_contrast(image, (0.1, 0.1), 2.0, 2.0, have_rows=have, **kwargs))
    assert np.isnan(feature_contrast(image, (0.1, 0.1), 50.0, 2.0, **kwargs))  # outside the image
    gate = ContrastGate({"dark": {"min": 100.0, **kwargs}})
    far = Detection("dark", 50.0, 2.0, 1.0, 0.9, 0)
    pit = Detection("dark", 2.0, 2.0, 1.0, 0.9, 1)
    other = Detection("bright", 1.0, 1.0, 1.0, 0.9, 2)
    kept = gate.keep([far, pit, other], image, (0.1, 0.1), unit="m")
    assert [(d.x_nm, d.id) for d in kept] == [(50.0, 0), (1.0, 1)]  # the pit is too shallow for min 100
    assert not ContrastGate(None) and ContrastGate({"dark": {"min": 1.0, **kwargs}})
    # a gate measured in another unit is not applied
    in_nm = ContrastGate({"dark": {"min": 100.0, "unit": "nm", **kwargs}})
    assert len(in_nm.keep([far, pit, other], image, (0.1, 0.1), unit="m")) == 3
    assert len(in_nm.keep([far, pit, other], image, (0.1, 0.1), unit="nm")) == 2


def test_the_daemon_applies_a_models_gate_live_and_to_finished_frames_and_files(
    tmp_path: Path, spawn: Callable[..., DaemonProcess], make_socket: SocketFactory,
) -> None:
    # A tiny model whose "dark" class is gated above the pits' depth (1 A, smoothed: about 0.6 A): a real
    # daemon process reports the bumps and none of the pits, while scanning, for the frame, and for the file.
    gate = {"dark": {"min": 2e-10, "bright": False, "inner_nm": 0.4, "outer_nm": 1.0, "unit": "m"}}
    model = write_tiny_model(tmp_path / "gated.onnx", nm_per_px=0.2, detection={"min_contrast": gate})
    assert model.detection["min_contrast"] == gate
    watch = tmp_path / "watch"
    watch.mkdir()
    daemon = spawn(base_settings(tmp_path, tmp_path / "gated.onnx", **{"watch.folders": [str(watch)]}))
    sub = Subscriber(make_socket, daemon.publish)
    sub.wait_heartbeat()
    frame = bumps_frame()
    with bridge(make_socket, daemon.ingest) as streamer:
        streamer.stream([("gated-1", frame)], line_time_s=0.003)
        final = sub.wait_for(frame_done("gated-1"), what="seg.frame of the streamed scan")
    assert sorted(d.class_name for d in final.detections) == ["bright"] * 3
    partials = sub.seg("gated-1", final=False)
    assert partials and not any(d.class_name == "dark" for p in partials for d in p.detections)
    assert any(d.class_name == "bright" for p in partials for d in p.detections)
    write_sxm(watch / "gated-1.sxm", [frame])
    from_file = sub.wait_for(frame_done("gated-1", "gated-1.sxm"), what="seg.frame of the .sxm file")
    assert sorted(d.class_name for d in from_file.detections) == ["bright"] * 3
    # the same model without the gate finds the pits: the gate, not the model, removed them
    ungated = SegmentationModel(write_tiny_model(tmp_path / "plain.onnx", nm_per_px=0.2) and tmp_path / "plain.onnx",
                                provider="cpu")
    assert sorted(d.class_name for d in ungated.segment(frame).detections) == ["bright"] * 3 + ["dark"] * 2
    assert daemon.terminate() == 0, daemon.log()
