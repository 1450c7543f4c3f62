"""The decision engine: rules validated, every condition, cooldowns and caps, decisions against their schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import numpy as np
import pytest

from stm_live.config import load_config
from stm_live.decide import DecisionEngine
from stm_live.decide.messages import check_decision, load_decision_schema
from stm_live.decide.rules import DecideSection
from stm_live.errors import ConfigError, DecisionError, WireError
from stm_live.sim import Artefacts, simulate_scan


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def engine(rules: list[dict[str, Any]], clock: Clock | None = None, **extra: Any) -> DecisionEngine:
    return DecisionEngine(DecideSection.model_validate({"rules": rules, **extra}), clock=clock or Clock())


def seg(scan_id: str, dets: list[tuple[str, float, float]], *, rows_done: int = 100, final: bool = False,
        size_nm: float = 50.0) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1, "scan_id": scan_id, "rows_done": rows_done, "rows": 100, "cols": 100, "width_m": size_nm * 1e-9,
        "height_m": size_nm * 1e-9, "model": {"id": "m", "name": "m"}, "classes": ["AsH3", "dangling_bond"],
        "detections": [{"id": i, "class": c, "x_nm": x, "y_nm": y, "area_nm2": 1.0, "score": 0.5 + 0.01 * i}
                       for i, (c, x, y) in enumerate(dets)],
        "latency_ms": 5.0,
    }
    if final:
        doc.update(source="zmq", complete=rows_done == 100)
    return doc


ZOOM = {"name": "zoom", "action": "zoom", "params": {"target": "AsH3", "width_nm": 10},
        "when": [{"count": {"class": "AsH3", "min": 1}}, {"fraction_scanned": {"min": 1.0}}]}


def test_decisions_match_their_schema_and_the_check_both_ways() -> None:
    schema = load_decision_schema()
    e = engine([ZOOM])
    [d] = e.feed(seg("s1", [("AsH3", 12.0, 30.0)], final=True))
    jsonschema.validate(d, schema)
    assert check_decision(d) is d
    assert d["params"] == {"x_nm": 12.0, "y_nm": 30.0, "width_nm": 10.0,
                           "target": {"class": "AsH3", "id": 0, "score": 0.5}}
    assert d["reason"] == "1 AsH3; 100 % scanned"
    bad = {**d, "action": "fly"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(WireError, match="'action' = 'fly'"):
        check_decision(bad)
    for broken in ({k: v for k, v in d.items() if k != "rule"}, {**d, "extra": 1}, {**d, "params": {"speed": 1}},
                   {**d, "params": {"width_nm": -1.0}}, {**d, "params": {"frame": {"x_m": 0.0}}}):
        with pytest.raises(WireError):
            check_decision(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    with pytest.raises(WireError, match="finite"):  # NaN is not JSON; the check refuses it too
        check_decision({**d, "params": {"x_nm": float("nan")}})


def test_rules_fire_in_order_once_per_scan_and_only_when_every_condition_holds() -> None:
    rescan = {"name": "few", "action": "rescan", "when": [{"count": {"class": "AsH3", "max": 0}},
                                                          {"fraction_scanned": {"min": 1.0}}]}
    e = engine([ZOOM, rescan])
    assert e.feed(seg("s1", [("AsH3", 1, 1)], rows_done=50)) == []  # half scanned
    [d] = e.feed(seg("s1", [("AsH3", 1, 1), ("AsH3", 2, 2)], final=True))
    assert d["rule"] == "zoom" and d["params"]["target"]["id"] == 1  # the most confident
    assert e.feed(seg("s1", [("AsH3", 1, 1)], final=True)) == []  # once per scan
    [d] = e.feed(seg("s2", [("dangling_bond", 1, 1)], final=True))
    assert d["rule"] == "few" and d["action"] == "rescan"


def test_cooldown_and_per_hour_cap() -> None:
    clock = Clock()
    e = engine([{**ZOOM, "cooldown_s": 60, "max_per_hour": 2}], clock)
    assert len(e.feed(seg("a", [("AsH3", 1, 1)], final=True))) == 1
    clock.t += 30
    assert e.feed(seg("b", [("AsH3", 1, 1)], final=True)) == []  # cooling down
    clock.t += 31
    assert len(e.feed(seg("c", [("AsH3", 1, 1)], final=True))) == 1
    clock.t += 100
    assert e.feed(seg("d", [("AsH3", 1, 1)], final=True)) == []  # two in the last hour
    clock.t += 3600
    assert len(e.feed(seg("e", [("AsH3", 1, 1)], final=True))) == 1
    assert e.suppressed["zoom"] == 2


def test_density_region_and_near_conditions() -> None:
    e = engine([
        {"name": "dense", "action": "rescan", "when": [{"density": {"class": "AsH3", "min_per_100nm2": 1.5,
                                                                    "region": [0, 0, 10, 10]}}]},
        {"name": "pair", "action": "move", "params": {"target": "AsH3"},
         "when": [{"near": {"class": "AsH3", "other": "dangling_bond", "within_nm": 1.5}}]},
    ])
    assert e.feed(seg("s1", [("AsH3", 5, 5)])) == []  # 1 in the 10 x 10 nm region: 1 per 100 nm^2
    [d] = e.feed(seg("s2", [("AsH3", 5, 5), ("AsH3", 6, 6)]))
    assert d["rule"] == "dense" and "2 AsH3 per 100 nm^2" in d["reason"]
    [d] = e.feed(seg("s3", [("AsH3", 30, 30), ("dangling_bond", 31, 30.5)]))
    assert d["rule"] == "pair" and "within 1.5 nm" in d["reason"]


def test_found_again_maps_positions_through_both_frames() -> None:
    e = engine([{"name": "again", "action": "rescan",
                 "when": [{"found_again": {"class": "AsH3", "within_nm": 0.5}}], "once_per_scan": True}])
    frame1 = {"x_m": 0.0, "y_m": 0.0, "width_m": 50e-9, "height_m": 50e-9, "angle_deg": 135.0}
    frame2 = {"x_m": 10e-9, "y_m": -5e-9, "width_m": 20e-9, "height_m": 20e-9, "angle_deg": 135.0}
    e.feed({"kind": "scan", "scan_id": "a", "rows": 100, "cols": 100, "frame": frame1})
    e.feed(seg("a", [("AsH3", 30.0, 22.0)], final=True))
    from stm_live.bridge.geometry import ScanFrame

    f1 = ScanFrame((0.0, 0.0), 50e-9, 50e-9, 135.0)
    f2 = ScanFrame((10e-9, -5e-9), 20e-9, 20e-9, 135.0)
    x, y = f2.controller_to_image(*f1.image_to_controller(30.0, 22.0))
    e.feed({"kind": "scan", "scan_id": "b", "rows": 100, "cols": 100, "frame": frame2})
    assert e.feed(seg("b", [("AsH3", x + 2.0, y)], size_nm=20)) == []  # 2 nm off: not it
    [d] = e.feed(seg("b", [("AsH3", x + 0.2, y)], size_nm=20))
    assert "found again" in d["reason"]


PULSE_ON_TIP_CHANGE = {"name": "tip", "action": "pulse", "params": {"bias_v": 3.0, "width_s": 0.05},
                      "when": [{"tip_change": {}}]}


def _tip_change_scan() -> tuple[np.ndarray, int]:
    scan = simulate_scan("si001-ash3", size_nm=30.0, pixels=128, seed=11,
                         artefacts=Artefacts(tip_change=0.8, white_noise_nm=0.003))
    return scan.frame("Z").data, int(scan.events["tip_change"]["row"])


def _first_decision(e: DecisionEngine, z: np.ndarray) -> tuple[int, dict[str, Any]] | None:
    """Feed the lines one by one; the row at which the first decision came, and the decision."""
    for r in range(z.shape[0]):
        out = e.feed({"scan_id": "t", "row": r, "data": z[r], "rows": z.shape[0], "cols": z.shape[1]})
        if out:
            return r, out[0]
    return None


def test_a_tip_change_in_the_lines_fires_the_tip_change_rule() -> None:
    z, row = _tip_change_scan()
    fired = _first_decision(engine([PULSE_ON_TIP_CHANGE]), z)
    assert fired is not None
    r, d = fired
    assert 0 <= r - row <= 10 and d["params"] == {"bias_v": 3.0, "width_s": 0.05, "rescan": True}


def test_the_tip_change_detectors_settings_come_from_the_decide_section() -> None:
    z, row = _tip_change_scan()
    config = load_config(None, use_default_file=False, environ={},
                         overrides={"decide.rules": [PULSE_ON_TIP_CHANGE], "decide.tip_change.threshold": 500.0})
    assert config.decide.tip_change.threshold == 500.0
    # the same change, far below a threshold of 500 spreads: no decision
    assert _first_decision(DecisionEngine(config.decide, clock=Clock()), z) is None
    # the default section finds it, within 10 lines
    fired = _first_decision(DecisionEngine(DecideSection.model_validate({"rules": [PULSE_ON_TIP_CHANGE]}),
                                           clock=Clock()), z)
    assert fired is not None and 0 <= fired[0] - row <= 10
    off = DecideSection.model_validate({"tip_change": {"turn": None, "smooth": 1}}).tip_change.detector_kwargs()
    assert off["turn"] == float("inf") and off["smooth"] == 1


@pytest.mark.parametrize(("key", "value", "message"), [
    ("decide.tip_change.reference", 2, "decide.tip_change.reference"),
    ("decide.tip_change.threshold", -1.0, "decide.tip_change.threshold"),
    ("decide.tip_change.sensitivity", 3.0, "sensitivity"),
])
def test_bad_tip_change_settings_stop_start_up_naming_the_key(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, use_default_file=False, environ={}, overrides={key: value})


def test_frame_quality_is_judged_when_the_scan_ends() -> None:
    verdicts: list[str] = []

    def judge(image: np.ndarray) -> str:
        verdicts.append(image.shape)  # type: ignore[arg-type]
        return "bad"

    rules = DecideSection.model_validate({"rules": [{"name": "bad", "action": "rescan",
                                                     "when": [{"frame_quality": {"verdict": "bad"}}]}]})
    e = DecisionEngine(rules, judge=judge)
    rng = np.random.default_rng(0)
    for r in range(40):
        assert e.feed({"scan_id": "q", "row": r, "data": rng.standard_normal(32), "rows": 40, "cols": 32}) == []
    [d] = e.feed({"kind": "end", "scan_id": "q", "complete": True})
    assert d["reason"] == "frame judged bad" and verdicts == [(40, 32)]


def test_survey_visits_the_grid_row_by_row_without_long_jumps() -> None:
    e = engine([{"name": "survey", "action": "survey",
                 "params": {"grid": {"centre_nm": [0, 0], "cols": 3, "rows": 2, "step_nm": 50, "width_nm": 40}},
                 "when": [{"fraction_scanned": {"min": 1.0}}], "cooldown_s": 0}])
    cells = [e.feed(seg(f"s{k}", [], final=True))[0]["params"]["cell"] for k in range(7)]
    assert cells == [[0, 0], [1, 0], [2, 0], [2, 1], [1, 1], [0, 1], [0, 0]]
    first = e.feed(seg("s9", [], final=True))[0]["params"]["frame"]
    assert first["width_m"] == pytest.approx(40e-9) and first["x_m"] == pytest.approx(0.0)


@pytest.mark.parametrize(("rules", "message"), [
    ([{"name": "a", "action": "zoom", "when": [{"count": {"class": "AsH3", "min": 1}}]}], "needs params target"),
    ([{"name": "a", "action": "rescan", "when": []}], "at least 1 item"),
    ([{"name": "a", "action": "rescan", "when": [{"count": {"class": "x"}, "near": {"class": "a", "other": "b",
                                                                                      "within_nm": 1}}]}],
     "exactly one condition"),
    ([{"name": "a", "action": "pulse", "params": {"bias_v": 12, "width_s": 0.1}, "when": [{"tip_change": {}}]}],
     "max_pulse_v"),
    ([{"name": "a", "action": "rescan", "when": [{"tip_change": {}}]}] * 2, "unique"),
    ([{"name": "a", "action": "fly", "when": [{"tip_change": {}}]}], "expected one of"),
])
def test_bad_rules_stop_start_up_with_a_clear_message(rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, use_default_file=False, environ={}, overrides={"decide.rules": rules})


def test_documents_without_a_scan_are_refused() -> None:
    e = engine([ZOOM])
    with pytest.raises(DecisionError, match="scan_id"):
        e.feed({"rows_done": 1})
    with pytest.raises(DecisionError, match="no kind"):
        e.feed({"scan_id": "x", "foo": 1})


def test_the_daemons_document_topics_are_understood() -> None:
    """scan.started (position), level.line (payload as data), seg.frame, scan.finished: as the daemon emits them."""
    e = engine([{"name": "again", "action": "rescan", "when": [{"found_again": {"class": "AsH3"}}]},
                {"name": "tip", "action": "pulse", "params": {"bias_v": 3.0, "width_s": 0.05},
                 "when": [{"tip_change": {}}]}])
    position = {"centre_m": [0.0, 0.0], "size_m": [5e-8, 5e-8], "angle_deg": 135.0, "scan_direction": "down"}
    e.feed({"kind": "scan.started", "scan_id": "a", "rows": 100, "cols": 100, "position": position})
    e.feed({"kind": "seg.frame", **seg("a", [("AsH3", 10.0, 10.0)], final=True)})
    assert e.feed({"kind": "scan.finished", "scan_id": "a", "complete": True, "reason": "complete"}) == []
    moved = {**position, "centre_m": [1e-9, 0.0]}
    e.feed({"kind": "scan.started", "scan_id": "b", "rows": 100, "cols": 100, "position": moved})
    from stm_live.bridge.geometry import ScanFrame

    x, y = ScanFrame((1e-9, 0.0), 5e-8, 5e-8, 135.0).controller_to_image(
        *ScanFrame((0.0, 0.0), 5e-8, 5e-8, 135.0).image_to_controller(10.0, 10.0))
    [d] = e.feed({"kind": "seg.partial", **seg("b", [("AsH3", x, y)], rows_done=50)})
    assert d["rule"] == "again"
    rng = np.random.default_rng(2)
    out = []
    for r in range(60):
        values = rng.standard_normal(64) * (1.0 if r < 40 else 0.2)
        out += e.feed({"kind": "level.line", "v": 1, "scan_id": "c", "row": r, "rows_done": r + 1, "rows": 100,
                       "cols": 64, "data": values})
    assert [d["rule"] for d in out] == ["tip"]


def test_frame_quality_uses_calibrated_thresholds_from_the_config() -> None:
    y, x = np.mgrid[0:64, 0:64]
    lattice = np.sin(x * 0.7 + y * 0.3) + 0.05 * np.random.default_rng(0).standard_normal((64, 64))
    rule = {"name": "tip", "action": "rescan", "when": [{"frame_quality": {"verdict": "tip_change"}}]}

    def verdict_of(section: dict) -> list[dict]:
        e = DecisionEngine(DecideSection.model_validate({"rules": [rule], **section}))
        for r in range(64):
            assert e.feed({"scan_id": "q", "row": r, "data": lattice[r], "rows": 64, "cols": 64}) == []
        return e.feed({"kind": "end", "scan_id": "q", "complete": True})

    assert verdict_of({}) == []  # a clean lattice is good with the shipped thresholds
    # thresholds below every probability: whatever the frame, the judgement says tip change
    [d] = verdict_of({"frame_quality_thresholds": {"tip_change": 1e-9, "bad": 0.5}})
    assert d["reason"] == "frame judged tip_change"
    with pytest.raises(ValueError, match="tip_change"):
        DecideSection.model_validate({"frame_quality_thresholds": {"tip_change": 1.5, "bad": 0.5}})
