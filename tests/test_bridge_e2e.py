"""End to end with real processes and sockets: virtual controller -> bridge -> daemon -> rule -> controller.

The virtual Nanonis controller runs in this process (real TCP sockets on four
ports) so that the test can see every command it received; the bridge
(``python -m stm_live bridge nanonis``) and the daemon (``python -m stm_live
run``) are subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from daemon_kit import DaemonProcess, Subscriber, base_settings, events, wait_until
from tiny_models import write_tiny_model
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the fixture

from stm_live.bridge.geometry import ScanFrame
from stm_live.sim.controller import VirtualController
from stm_live.sim.sample import VirtualSample
from stm_live.wire import SegMessage

FRAME = ScanFrame((5e-9, -5e-9), 30e-9, 30e-9, 135.0)  # rotated, as real files often are


class BridgeProcess:
    """``python -m stm_live bridge nanonis --config FILE`` in a subprocess; its log goes to a file."""

    def __init__(self, tmp_path: Path, settings: dict[str, Any]) -> None:
        self.config = tmp_path / "bridge.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log_path = tmp_path / "bridge.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STM_LIVE_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "stm_live", "-v", "bridge", "nanonis", "--config",
                                      str(self.config)], stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=tmp_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"the bridge exited with {self.proc.returncode}:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def controller() -> Iterator[VirtualController]:
    sample = VirtualSample(size_nm=120.0, seed=2, steps=1)
    with VirtualController(sample, pixels=64, lines=64, line_time_s=0.008, frame=FRAME, drift_nm_per_line=0.0,
                           seed=2) as vc:
        yield vc


ZOOM_RULES = {"rules": [{"name": "zoom-on-bright", "action": "zoom", "params": {"target": "bright", "width_nm": 10},
                         "when": [{"count": {"class": "bright", "min": 1}}, {"fraction_scanned": {"min": 1.0}}],
                         "cooldown_s": 3600}],
              "limits": {"max_offset_nm": 60, "max_step_nm": 40, "min_range_nm": 5, "max_range_nm": 50}}


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """The daemon; with the marker ``daemon_rules`` it runs the zoom rules itself (``decide`` in its config)."""
    model = tmp_path / "tiny.onnx"
    write_tiny_model(model, nm_per_px=0.2)
    extra: dict[str, Any] = {"live.cadence_lines": 16}
    if request.node.get_closest_marker("daemon_rules") is not None:
        extra |= {"decide.rules": ZOOM_RULES["rules"], "decide.limits": ZOOM_RULES["limits"]}
    proc = DaemonProcess(tmp_path, base_settings(tmp_path, model, **extra))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.close()


@pytest.fixture
def spawn_bridge(tmp_path: Path, controller: VirtualController, daemon: DaemonProcess
                 ) -> Iterator[Callable[..., BridgeProcess]]:
    started: list[BridgeProcess] = []

    def make(bridge: dict[str, Any] | None = None, decide: dict[str, Any] | None = None) -> BridgeProcess:
        settings: dict[str, Any] = {
            "bridge": {"port": controller.port, "scan_id_prefix": "e2e", "wait_ms": 200,
                       "control_endpoint": f"ipc://{tmp_path}/bridge.ctl", "decisions": "off",
                       **(bridge or {})},
            "ingest": {"endpoint": daemon.ingest},
            "publish": {"endpoint": daemon.publish},
            "log": {"level": "DEBUG"},
        }
        if decide is not None:
            settings["decide"] = decide
        proc = BridgeProcess(tmp_path, settings)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.close()


def _final(scan_prefix: str, *, width_m: float | None = None) -> Callable[[Any], bool]:
    def match(m: Any) -> bool:
        return (isinstance(m, SegMessage) and m.final and m.scan_id.startswith(scan_prefix) and bool(m.complete)
                and (width_m is None or abs(m.width_m - width_m) < 1e-11))

    return match


def test_lines_go_from_the_virtual_controller_through_the_bridge_into_the_daemon(
    spawn_bridge: Callable[..., BridgeProcess], daemon: DaemonProcess, controller: VirtualController,
    make_socket: SocketFactory,
) -> None:
    sub = Subscriber(make_socket, daemon.publish)
    sub.wait_heartbeat()
    bridge = spawn_bridge()
    final = sub.wait_for(_final("e2e-"), timeout=60.0, what="a complete seg.frame of a bridged scan")
    bridge.alive()
    assert (final.rows, final.cols) == (64, 64)
    assert final.width_m == pytest.approx(30e-9, rel=1e-6) and final.height_m == pytest.approx(30e-9, rel=1e-6)
    # The bridge read the scan's metadata on the control port and its lines on the lines port.
    names = {c.name for c in controller.commands()}
    assert {"Scan.WaitEndOfLine", "Scan.FrameDataGrab", "Scan.WaitEndOfScan", "Scan.FrameGet", "Bias.Get",
            "ZCtrl.SetpntGet", "Scan.BufferGet"} <= names
    assert {c.port for c in controller.commands("Scan.FrameDataGrab")} == {controller.port}
    assert {c.port for c in controller.commands("Scan.FrameGet")} == {controller.port + 2}
    assert bridge.terminate() == 0


def test_a_rule_fires_the_bridge_zooms_and_the_next_frame_is_the_new_window(
    tmp_path: Path, spawn_bridge: Callable[..., BridgeProcess], daemon: DaemonProcess,
    controller: VirtualController, make_socket: SocketFactory,
) -> None:
    sub = Subscriber(make_socket, daemon.publish)
    sub.wait_heartbeat()
    events = tmp_path / "decisions.jsonl"
    decide = {"rules": [{"name": "zoom-on-bright", "action": "zoom", "params": {"target": "bright", "width_nm": 10},
                         "when": [{"count": {"class": "bright", "min": 1}}, {"fraction_scanned": {"min": 1.0}}],
                         "cooldown_s": 3600}],
              "limits": {"max_offset_nm": 60, "max_step_nm": 40, "min_range_nm": 5, "max_range_nm": 50}}
    bridge = spawn_bridge({"decisions": "local", "automation": True, "event_log": str(events)}, decide)

    def frame_set() -> Any:
        bridge.alive()
        sets = controller.commands("Scan.FrameSet")
        return sets[0] if sets else None

    command = wait_until(frame_set, 90.0, "the bridge to send Scan.FrameSet")
    def logged() -> Any:  # written once the commands are sent: a moment after the controller saw them
        lines = events.read_text().splitlines() if events.exists() else []
        return next((e for e in map(json.loads, lines) if e.get("event") == "decision"), None)

    decision = wait_until(logged, 30.0, "the decision in the bridge's event log")
    assert decision["executed"] and decision["decision"]["rule"] == "zoom-on-bright"
    p = decision["decision"]["params"]
    expected = FRAME.centred_on(p["x_nm"], p["y_nm"], width_m=10e-9)
    got = command.args
    # Moves aim where the measured drift will take the target: this sample does not drift, but a
    # drift measured between two frames is noise of a few pm. 20 pm is an eighth of a new pixel.
    aim_m = 2e-11
    assert (got["x_m"], got["y_m"]) == pytest.approx(expected.centre_m, abs=aim_m)
    assert (got["width_m"], got["height_m"], got["angle_deg"]) == pytest.approx((10e-9, 10e-9, 135.0), rel=1e-6)
    # ... then the scan restarts there, and the daemon's next complete frame is the zoomed window.
    starts = [c for c in controller.commands("Scan.Action") if c.args["action"] == 0 and c.t >= command.t]
    assert starts, "no Scan.Action start after the new frame"
    zoomed = sub.wait_for(_final("e2e-", width_m=10e-9), timeout=60.0, what="the zoomed frame's seg.frame")
    assert zoomed.width_m == pytest.approx(10e-9, rel=1e-6)
    assert controller.current_frame.close_to(expected, tol_m=aim_m)
    # The target of the zoom is near the centre of the new window (where the features of the sample are).
    target = FRAME.image_to_controller(p["x_nm"], p["y_nm"])
    assert np.hypot(*np.subtract(controller.current_frame.centre_m, target)) < aim_m
    assert bridge.terminate() == 0


@pytest.mark.daemon_rules
def test_the_daemon_decides_and_the_bridge_executes_its_decision_messages(
    tmp_path: Path, spawn_bridge: Callable[..., BridgeProcess], daemon: DaemonProcess,
    controller: VirtualController, make_socket: SocketFactory,
) -> None:
    """The rules run in the daemon (a sink of its document stream); the bridge takes `decision` messages."""
    sub = Subscriber(make_socket, daemon.publish)
    sub.wait_heartbeat()
    bridge = spawn_bridge({"decisions": "daemon", "automation": True})

    def frame_set() -> Any:
        bridge.alive()
        sets = controller.commands("Scan.FrameSet")
        return sets[0] if sets else None

    wait_until(frame_set, 90.0, "the bridge to send Scan.FrameSet on the daemon's decision")
    decided = wait_until(lambda: events(daemon.results, "decision"), 30.0, "the decision in the daemon's event log")
    assert decided[0]["rule"] == "zoom-on-bright" and decided[0]["action"] == "zoom"
    assert decided[0]["params"]["width_nm"] == 10.0 and decided[0]["params"]["target"]["class"] == "bright"
    wait_until(lambda: daemon.wait_ready()["counters"].get("decisions", 0) >= 1, 30.0, "the decision counted")
    assert "decisions daemon" in bridge.log()
    assert bridge.terminate() == 0


@pytest.mark.slow
@pytest.mark.usefixtures("plain_logging")
def test_the_autonomous_demo_surveys_zooms_sees_the_tip_change_pulses_and_rescans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stm_live.cli import main

    assert main(["demo", "--autonomous", "--frames", "5", "--pixels", "96", "--line-time", "0.01",
                 "--results", str(tmp_path / "auto")]) == 0
    out = capsys.readouterr().out
    assert "decision: zoom-on-AsH3 -> zoom" in out and "decision: tip-change -> pulse" in out
    assert "Scan.FrameSet" in out and "Bias.Pulse" in out
    logged = [json.loads(line) for line in (tmp_path / "auto" / "events.jsonl").read_text().splitlines()]
    assert [e["action"] for e in logged if e["kind"] == "decision"][:2] == ["zoom", "pulse"]
