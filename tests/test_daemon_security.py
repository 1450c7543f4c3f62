"""The daemon's sockets with CURVE (real `stm-live run` processes), and what one source may send."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zmq
from daemon_kit import DaemonProcess, base_settings, bumps_frame, events, processed, wait_until
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.cli import main
from stm_live.config import SecuritySection
from stm_live.security import HandshakeWatch, secure_client
from stm_live.sim.stream import LineStreamer
from stm_live.wire import LineMessage, ScanInfo, SegMessage, StatusMessage, decode, encode_line

pytestmark = pytest.mark.usefixtures("plain_logging")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    assert main(["keys", "daemon", "--dir", str(folder)]) == 0
    for name in ("bridge", "viewer"):
        assert main(["keys", name, "--dir", str(folder), "--allow", str(folder / "allowed")]) == 0
    assert main(["keys", "stranger", "--dir", str(folder)]) == 0  # a key pair the daemon does not know
    return folder


def client(keys: Path, name: str) -> SecuritySection:
    return SecuritySection(server_public_key=keys / "daemon.key", client_secret_key=keys / f"{name}.key_secret")


def secured_settings(tmp_path: Path, model: Path, keys: Path, **extra: Any) -> dict[str, Any]:
    return base_settings(tmp_path, model, **{
        "security.server_secret_key": str(keys / "daemon.key_secret"),
        "security.allowed_clients": str(keys / "allowed"), **extra,
    })


def subscriber(make_socket: SocketFactory, endpoint: str, security: SecuritySection | None) -> zmq.Socket[Any]:
    sub = make_socket(zmq.SUB, subscribe=b"", rcvtimeo_ms=20_000)
    if security is not None:
        secure_client(sub, security)
    sub.connect(endpoint)
    return sub


def test_with_curve_only_allowed_keys_send_scans_and_receive_results(
    tmp_path: Path, tiny_model: Path, keys: Path, spawn: Callable[..., DaemonProcess], make_socket: SocketFactory
) -> None:
    daemon = spawn(secured_settings(tmp_path, tiny_model, keys))
    viewer = subscriber(make_socket, daemon.publish, client(keys, "viewer"))
    assert isinstance(decode(viewer.recv_multipart()), StatusMessage)  # an allowed key hears the heartbeat
    plain = subscriber(make_socket, daemon.publish, None)
    stranger = make_socket(zmq.SUB, subscribe=b"")
    refused = HandshakeWatch(stranger, curve=secure_client(stranger, client(keys, "stranger")))
    stranger.connect(daemon.publish)
    # A stranger's scan never arrives; an allowed bridge's does.
    intruder = make_socket(zmq.PUB)
    watch = HandshakeWatch(intruder, curve=secure_client(intruder, client(keys, "stranger")))
    intruder.connect(daemon.ingest)
    info = ScanInfo("intruder", 4, 4, 1e-9, 1e-9)
    wait_until(lambda: (intruder.send_multipart(encode_line(LineMessage(info, 0, np.zeros(4, np.float32))))
                        or True) and watch.failure(), what="the stranger's handshake refused")
    with LineStreamer(daemon.ingest, context=make_socket.context, connect_timeout_s=20,  # type: ignore[attr-defined]
                      security=client(keys, "bridge")) as streamer:
        streamer.stream([("allowed", bumps_frame())], line_time_s=0.0)
        while True:
            msg = decode(viewer.recv_multipart())
            if isinstance(msg, SegMessage) and msg.final:
                break
    assert msg.scan_id == "allowed" and len(msg.detections) == 5
    assert refused.failure() is not None
    assert not plain.poll(200) and not stranger.poll(200)  # nothing readable without an allowed key
    for monitor in (watch, refused):
        monitor.close()
    wait_until(lambda: len(processed(daemon.results)) == 1, what="the allowed scan stored")
    assert not [e for e in events(daemon.results, "scan_started") if e["scan_id"] == "intruder"]
    assert daemon.terminate() == 0


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:*", "tcp://*:*"])
def test_a_network_address_without_curve_stops_the_daemon_with_one_line(
    tmp_path: Path, tiny_model: Path, endpoint: str
) -> None:
    settings = base_settings(tmp_path, tiny_model, **{"ingest.endpoint": endpoint})
    tree: dict[str, Any] = {}
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        tree.setdefault(section, {})[key] = value
    config = tmp_path / "open.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = subprocess.run([sys.executable, "-m", "stm_live", "run", "--config", str(config)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to bind a network address without CURVE" in lines[0], run.stderr


def test_insecure_binds_a_network_address_and_says_so(
    tmp_path: Path, tiny_model: Path, spawn: Callable[..., DaemonProcess]
) -> None:
    daemon = spawn(base_settings(tmp_path, tiny_model, **{"ingest.endpoint": "tcp://0.0.0.0:*",
                                                           "security.insecure": True}))
    assert "WITHOUT authentication" in daemon.log()
    assert daemon.terminate() == 0


def test_one_source_cannot_fill_the_disk_with_one_line_scans(
    tmp_path: Path, tiny_model: Path, spawn: Callable[..., DaemonProcess], make_socket: SocketFactory
) -> None:
    """Before: 10,000 one-line scans in 75 s, each leaving a journal and a result. Now 30 a minute per source."""
    daemon = spawn(base_settings(tmp_path, tiny_model, **{"ingest.max_new_scans_per_min": 5}))
    pub = make_socket(zmq.PUB, sndhwm=0)
    pub.connect(daemon.ingest)
    frame = bumps_frame(16, 16)
    n = 0

    def flood() -> bool:
        nonlocal n
        for _ in range(20):
            info = ScanInfo(f"junk{n}", 16, 16, frame.width_m, frame.height_m)
            pub.send_multipart(encode_line(LineMessage(info, 0, frame.data[0])))
            n += 1
        return bool(events(daemon.results, "refused"))

    wait_until(flood, what="the refusal")
    refusal = events(daemon.results, "refused")[0]
    assert "more than 5 new scans per minute from 127.0.0.1" in refusal["reason"]
    # The five admitted scans (after the PUB's first messages, lost before it connected) start; no more do.
    wait_until(lambda: len(events(daemon.results, "scan_started")) >= 5, what="the admitted scans")
    wait_until(lambda: read_refused(daemon) >= 1, what="the refusals counted")
    assert len(events(daemon.results, "scan_started")) == 5
    assert len(events(daemon.results, "refused")) == 1  # said once a minute, counted every time
    assert len(events(daemon.results, "scan_started")) == 5
    assert daemon.terminate() == 0


def read_refused(daemon: DaemonProcess) -> int:
    return int(daemon.wait_ready()["counters"]["refused"])
