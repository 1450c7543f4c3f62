"""The Nanonis client against real sockets that misbehave, and the virtual controller it talks to.

No mocks: a raw TCP server thread plays a broken controller (closes mid-answer,
never answers, answers another command, dribbles bytes), and the virtual
controller plays a working one.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from test_daemon import wait_until

from stm_live.bridge.geometry import ScanFrame
from stm_live.bridge.nanonis.client import Backoff, NanonisConnection
from stm_live.bridge.nanonis.control import NanonisControl
from stm_live.bridge.nanonis.protocol import HEADER_SIZE, ProtocolError, ReplyError, encode_response
from stm_live.errors import ControllerConnectionError, ControllerError
from stm_live.level import level_frame
from stm_live.sim.controller import Fault, VirtualController
from stm_live.sim.sample import VirtualSample


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """``start(handler) -> port``: a TCP server whose every connection runs ``handler(conn)``."""
    listeners: list[socket.socket] = []

    def start(handler: Callable[[socket.socket], None]) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        sock.settimeout(0.2)
        listeners.append(sock)

        def serve() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                conn.settimeout(5.0)
                try:
                    handler(conn)
                finally:
                    conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return int(sock.getsockname()[1])

    yield start
    for sock in listeners:
        sock.close()


def _request(conn: socket.socket) -> bytes:
    header = b""
    while len(header) < HEADER_SIZE:
        header += conn.recv(HEADER_SIZE - len(header))
    size = struct.unpack(">i", header[32:36])[0]
    body = b""
    while len(body) < size:
        body += conn.recv(size - len(body))
    return header


def test_a_controller_closing_mid_answer_is_an_error_not_a_hang(raw_server) -> None:
    def half_answer(conn: socket.socket) -> None:
        _request(conn)
        conn.sendall(encode_response("Bias.Get", {"bias_v": 1.0})[:45])  # header and 5 of 12 body bytes

    port = raw_server(half_answer)
    c = NanonisConnection("127.0.0.1", port, timeout_s=5.0)
    t = time.monotonic()
    with c, pytest.raises(ControllerConnectionError, match=r"closed the connection with 7 of 12 bytes"):
        c.call("Bias.Get")
    assert time.monotonic() - t < 2.0 and not c.connected
    assert c.counters["closed_by_controller"] == 1


def test_a_controller_that_never_answers_times_out(raw_server) -> None:
    def silent(conn: socket.socket) -> None:
        _request(conn)
        time.sleep(1.0)

    port = raw_server(silent)
    c = NanonisConnection("127.0.0.1", port, timeout_s=0.3)
    t = time.monotonic()
    with c, pytest.raises(ControllerConnectionError, match=r"no complete answer to Bias\.Get within 0\.3 s"):
        c.call("Bias.Get")
    assert 0.25 < time.monotonic() - t < 1.0 and c.counters["timeouts"] == 1


def test_an_answer_to_another_command_is_a_protocol_error_and_the_connection_is_reset(raw_server) -> None:
    def wrong(conn: socket.socket) -> None:
        _request(conn)
        conn.sendall(encode_response("Bias.Set"))

    port = raw_server(wrong)
    c = NanonisConnection("127.0.0.1", port, timeout_s=2.0)
    with c, pytest.raises(ControllerConnectionError, match="out of step"):
        c.call("Bias.Get")
    assert not c.connected and c.counters["protocol_errors"] == 1


def test_an_answer_dribbled_byte_by_byte_is_read_exactly(raw_server) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)

    def dribble(conn: socket.socket) -> None:
        for _ in range(2):
            _request(conn)
            for b in encode_response("Scan.FrameDataGrab", {"channel_name": "Z (m)", "data": data,
                                                            "scan_direction": 0}):
                conn.send(bytes([b]))

    port = raw_server(dribble)
    with NanonisConnection("127.0.0.1", port, timeout_s=5.0) as c:
        for _ in range(2):  # and the connection stays in step for the next command
            r = c.call("Scan.FrameDataGrab", {"channel_index": 14, "data_direction": 1})
            np.testing.assert_array_equal(r["data"], data)


def test_refused_connections_back_off_and_then_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    slept: list[float] = []

    def sleep(s: float) -> bool:
        slept.append(round(s, 3))
        return False

    c = NanonisConnection("127.0.0.1", port, backoff=Backoff(0.1, 0.3), sleep=sleep, timeout_s=1.0)
    for _ in range(4):
        with pytest.raises(ControllerConnectionError, match="cannot connect"):
            c.connect()
    assert c.counters["connect_failures"] == 4
    assert all(0 < s <= 0.31 for s in slept) and len(slept) == 3  # waited out the backoff between attempts


def test_an_infinite_controller_wait_is_refused() -> None:
    c = NanonisConnection("127.0.0.1", 9, timeout_s=1.0)
    with pytest.raises(ControllerError, match="infinite timeout"):
        c.call("Scan.WaitEndOfScan", {"timeout_ms": -1})


# -- the virtual controller ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> VirtualSample:
    return VirtualSample(size_nm=120.0, seed=6, steps=1)


def _grab_complete(control: NanonisControl, lines: int) -> np.ndarray:
    def full() -> list[np.ndarray]:
        g = control.grab(14)
        return [g.data] if np.isfinite(g.data).all() else []

    return wait_until(full, 30.0, "a complete frame in the buffer")[0]


def test_a_frame_set_changes_what_the_next_frame_shows(sample: VirtualSample) -> None:
    first = ScanFrame((0.0, 0.0), 30e-9, 30e-9, 135.0)
    with VirtualController(sample, pixels=48, lines=48, line_time_s=0.004, frame=first, drift_nm_per_line=0.0,
                           continuous=False) as vc:
        control = NanonisControl(NanonisConnection("127.0.0.1", vc.port + 2))
        a = _grab_complete(control, 48)
        moved = ScanFrame((20e-9, 10e-9), 15e-9, 15e-9, 135.0)
        control.set_frame(moved)
        control.action("start")
        assert control.frame().close_to(moved)
        wait_until(lambda: vc.scans_started >= 2, 10.0, "the second scan")
        b = _grab_complete(control, 48)
        # What the controller shows is the sample through that window (plus tilt, line offsets and noise):
        # compare, levelled line by line, with the sample rendered there.
        def lev(x: np.ndarray) -> np.ndarray:
            return level_frame(x, method="median").ravel()

        for image, frame in ((a, first), (b, moved)):
            expected = sample.render(frame, 48, 48)
            corr = np.corrcoef(lev(image), lev(expected))[0, 1]
            assert corr > 0.8, corr
        assert abs(np.corrcoef(lev(a), lev(b))[0, 1]) < 0.5
        with pytest.raises(ReplyError, match="leaves the scan range"):
            control.set_frame(ScanFrame((70e-9, 0.0), 30e-9, 30e-9))
        control.conn.close()


def test_a_rotated_window_shows_the_same_sample_as_an_upright_one(sample: VirtualSample) -> None:
    """Both ways: pixels of a 135 deg frame, mapped to an upright frame through the controller's
    coordinates, see the same heights."""
    from scipy import ndimage

    upright = ScanFrame((0.0, 0.0), 40e-9, 40e-9, 0.0)
    rotated = ScanFrame((2e-9, -3e-9), 20e-9, 20e-9, 135.0)
    a = sample.render(upright, 200, 200)
    b = sample.render(rotated, 100, 100)
    x, y = rotated.pixel_centres(100, 100)
    u, v = upright.controller_to_image(x, y)
    pitch = 40.0 / 200
    resampled = ndimage.map_coordinates(a, [np.asarray(v) / pitch - 0.5, np.asarray(u) / pitch - 0.5], order=1)
    assert np.corrcoef(resampled.ravel(), b.ravel())[0, 1] > 0.95


def test_tip_change_pulse_and_faults_on_the_virtual_controller(sample: VirtualSample) -> None:
    with VirtualController(sample, pixels=32, lines=32, line_time_s=0.004, restore_chance=1.0,
                           faults=[Fault("Bias.Get", "error", count=1, after=1)]) as vc:
        control = NanonisControl(NanonisConnection("127.0.0.1", vc.port + 2))
        assert control.bias() == pytest.approx(-1.8)
        with pytest.raises(ReplyError, match="injected fault"):
            control.bias()
        assert control.bias() == pytest.approx(-1.8)  # spent
        vc.force_tip_change()
        assert vc.tip_is_changed
        with pytest.raises(ReplyError, match="outside"):
            control.pulse(12.0, 0.01)
        control.pulse(3.0, 0.01)
        assert not vc.tip_is_changed
        names = [c.name for c in vc.commands()]
        assert names.count("Bias.Pulse") == 2 and names.count("Bias.Get") == 3
        control.conn.close()


def test_one_client_per_port(sample: VirtualSample) -> None:
    with VirtualController(sample, pixels=16, lines=16, autostart=False) as vc:
        first = NanonisConnection("127.0.0.1", vc.port)
        assert first.call("Scan.StatusGet") == {"running": 0}
        second = NanonisConnection("127.0.0.1", vc.port, timeout_s=2.0)
        with second, pytest.raises(ControllerConnectionError):
            second.call("Scan.StatusGet")
        first.close()


def test_the_legacy_layout_has_no_wait_end_of_line(sample: VirtualSample) -> None:
    with VirtualController(sample, pixels=16, lines=16, layout="legacy", autostart=False) as vc:
        legacy = NanonisConnection("127.0.0.1", vc.port, layout="legacy")
        assert "speed_ratio" not in legacy.call("Scan.SpeedGet")
        with pytest.raises(ProtocolError, match="legacy"):
            legacy.call("Scan.WaitEndOfLine", {"timeout_ms": 10})
        legacy.close()
        # One client per port: the controller takes the next one once it has seen the first go.
        wait_until(lambda: vc.port not in vc.busy_ports, 10.0, "the controller to free the port")
        # A client set to the newer layout reads the older answer as broken, and says what to check.
        current = NanonisConnection("127.0.0.1", vc.port, layout="current")
        with pytest.raises(ProtocolError, match=r"bridge\.layout"):
            current.call("Scan.SpeedGet")
        current.close()


def _virtual_controller() -> tuple[subprocess.Popen[bytes], NanonisConnection, dict[str, float] | None, str]:
    """``stm-live simulate --controller nanonis`` on a probed free port: (process, connection, first
    ``Scan.FrameGet`` answer or None if the process exited, what it wrote to stderr then)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "stm_live", "simulate", "--controller", "nanonis", "--port",
                             str(port), "--pixels", "32", "--sample-nm", "100", "--size-nm", "20",
                             "--line-time", "0.01"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    conn = NanonisConnection("127.0.0.1", port + 2, backoff=Backoff(0.05, 0.2), timeout_s=2.0)

    def frame() -> dict[str, float] | bool | None:
        if proc.poll() is not None:
            return True
        try:
            return conn.call("Scan.FrameGet")
        except ControllerConnectionError:
            return None

    got = wait_until(frame, 60.0, "the virtual controller to listen")
    if isinstance(got, dict):
        return proc, conn, got, ""
    conn.close()
    _, err = proc.communicate(timeout=10)
    return proc, conn, None, err.decode()


def test_stm_live_simulate_controller_serves_the_protocol(tmp_path) -> None:
    # The controller serves a block of four ports, so it cannot be asked for port 0: a free port is
    # probed and the three after it are hoped free. Under load another process may hold one of them:
    # the controller then exits saying so, and the test tries another block (at most five).
    for attempt in range(5):
        proc, conn, got, err = _virtual_controller()
        if got is not None:
            break
        if "Address already in use" not in err or attempt == 4:
            pytest.fail(f"the virtual controller exited: {err}")
    try:
        assert got is not None
        f = got
        assert f["width_m"] == pytest.approx(20e-9)
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
