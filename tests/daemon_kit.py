"""What the daemon tests share: daemons in-process and as processes, a subscriber, waiting (no fixed sleeps).

The fixtures that use these (``tiny_model``, ``make_daemon``, ``spawn``,
``plain_logging``) are in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
import zmq
from tiny_models import bumps_image
from zmq_sockets import SocketFactory

from stm_live.daemon import read_state
from stm_live.frame import Frame
from stm_live.sim.stream import LineStreamer
from stm_live.wire import SegMessage, StatusMessage, decode

REPO = Path(__file__).resolve().parents[1]
BRIGHT = [(12, 30), (60, 90), (100, 20)]
DARK = [(40, 100), (110, 110)]
T = TypeVar("T")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def bumps_frame(rows: int = 128, cols: int = 128, *, scan_direction: str = "down") -> Frame:
    """A 0.1 nm/px image with three bright bumps and two dark pits (what the tiny model finds)."""
    data = bumps_image((rows, cols), BRIGHT, DARK) * 1e-10
    return Frame(data, cols * 0.1e-9, rows * 0.1e-9, scan_direction=scan_direction)  # type: ignore[arg-type]


def summary(detections: Any) -> list[tuple[str, float, float, float, float]]:
    """Detections as comparable tuples, rounded as the wire rounds them (4 decimals)."""
    return [(d.class_name, round(d.x_nm, 3), round(d.y_nm, 3), round(d.area_nm2, 3), round(d.score, 3))
            for d in detections]


def wait_until(condition: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``condition`` until it is truthy (no fixed sleeps: the deadline is only an upper bound)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def processed(results: Path) -> list[dict[str, Any]]:
    path = results / "processed.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def events(results: Path, kind: str) -> list[dict[str, Any]]:
    path = results / "events.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["kind"] == kind]


class Subscriber:
    """A SUB socket on the daemon's publish endpoint that keeps every message it decodes."""

    def __init__(self, make_socket: SocketFactory, endpoint: str) -> None:
        self.socket = make_socket(zmq.SUB, subscribe=b"")
        self.socket.connect(endpoint)
        self.messages: list[Any] = []
        self.headers: list[tuple[str, dict[str, Any]]] = []  # (topic, raw header), to check against the schemas

    def wait_for(self, match: Callable[[Any], bool], timeout: float = 30.0, what: str = "a message") -> Any:
        for msg in self.messages:
            if match(msg):
                return msg
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(remaining * 1000) + 1):
                parts = self.socket.recv_multipart()
                msg = decode(parts)
                self.headers.append((parts[0].decode(), json.loads(parts[1])))
                self.messages.append(msg)
                if match(msg):
                    return msg
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}")

    def wait_heartbeat(self) -> StatusMessage:
        """A heartbeat arrived: the subscription has reached the daemon (no sleep needed)."""
        return self.wait_for(lambda m: isinstance(m, StatusMessage), what="a status heartbeat")

    def seg(self, scan_id: str, *, final: bool) -> list[SegMessage]:
        return [m for m in self.messages if isinstance(m, SegMessage) and m.scan_id == scan_id and m.final == final]


def frame_done(scan_id: str, source: str | None = None) -> Callable[[Any], bool]:
    def match(m: Any) -> bool:
        return (isinstance(m, SegMessage) and m.final and m.scan_id == scan_id
                and (source is None or str(m.source).endswith(source)))

    return match


def base_settings(tmp_path: Path, model: Path, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "model.path": str(model),
        "model.provider": "cpu",
        "results.dir": str(tmp_path / "results"),
        "ingest.endpoint": "tcp://127.0.0.1:*",
        "publish.endpoint": "tcp://127.0.0.1:*",
        "publish.heartbeat_s": 0.2,
        "watch.retry_initial_s": 0.05,
        "watch.retry_max_s": 0.2,
        "viewer.port": 0,  # `stm-live run` serves its page: on any free port, never a fixed one
    }
    settings.update(extra)
    return settings


def bridge(make_socket: SocketFactory, endpoint: str) -> LineStreamer:
    streamer = LineStreamer(endpoint, context=make_socket.context, connect_timeout_s=10.0)  # type: ignore[attr-defined]
    # Lines still queued when the test leaves the ``with`` block go out (linger 0 dropped the tail of a
    # scan streamed at line_time 0 on a loaded machine); bounded, so a dead daemon cannot hang the teardown.
    streamer.socket.setsockopt(zmq.LINGER, 5000)
    return streamer


class DaemonProcess:
    """``python -m stm_live run --config FILE`` in a subprocess; its log goes to a file."""

    def __init__(self, tmp_path: Path, settings: dict[str, Any], name: str = "daemon") -> None:
        tree: dict[str, Any] = {}
        for dotted, value in settings.items():
            section, key = dotted.split(".")
            tree.setdefault(section, {})[key] = value
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(tree))
        self.results = Path(settings["results.dir"])
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STM_LIVE_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "stm_live", "run", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        self.state: dict[str, Any] = {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                state = read_state(self.results)
            except (FileNotFoundError, ValueError):
                return None
            return state if state.get("pid") == self.proc.pid and state.get("state") == "running" else None

        self.state = wait_until(ready, timeout, "the daemon to start")
        return self.state

    @property
    def ingest(self) -> str:
        return str(self.state["endpoints"]["ingest"])

    @property
    def publish(self) -> str:
        return str(self.state["endpoints"]["publish"])

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process so far (``VmHWM``), MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")
