"""The simulated microscope on the wire: lines in scan order, paced, after the daemon's subscription."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.frame import Frame
from stm_live.sim.stream import LineStreamer, frame_messages
from stm_live.wire import EndMessage, LineMessage, decode_ingest


def test_lines_go_out_in_scan_order_and_missing_rows_are_not_sent() -> None:
    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    data[1] = np.nan
    up = Frame(data, 3e-9, 4e-9, scan_direction="up", bias_v=-2.0)
    messages = list(frame_messages(up, "s1", dtype=">f8"))
    assert [m.row for m in messages if isinstance(m, LineMessage)] == [3, 2, 0]
    assert messages[-1] == EndMessage("s1", complete=True)
    first = messages[0]
    assert isinstance(first, LineMessage) and first.scan.bias_v == -2.0 and first.data.dtype.str == ">f8"


def test_the_streamer_waits_for_the_subscription_then_paces_the_lines(make_socket: SocketFactory) -> None:
    daemon_side = make_socket(zmq.SUB, subscribe=b"")
    daemon_side.bind("tcp://127.0.0.1:*")
    endpoint = daemon_side.getsockopt_string(zmq.LAST_ENDPOINT)
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 6))
        now[0] += s

    frame = Frame(np.ones((3, 4), np.float32), 4e-9, 3e-9)
    streamer = LineStreamer(endpoint, context=make_socket.context, clock=lambda: now[0],  # type: ignore[attr-defined]
                            sleep=sleep, connect_timeout_s=1e9)
    try:
        # A bound socket handles new connections only while its thread uses it: the daemon polls all the time.
        for _ in range(500):
            daemon_side.poll(10)
            if streamer.wait_for_daemon(0.0):
                break
        else:
            pytest.fail("the subscription never reached the streamer")
        done = streamer.stream([("a", frame), ("b", frame)], line_time_s=0.5)
    finally:
        streamer.socket.close(linger=0)
    assert [d.lines for d in done] == [3, 3]
    assert slept == [0.5] * 5  # the first line goes at once, then one per line time
    got = [decode_ingest(daemon_side.recv_multipart()) for _ in range(8)]
    assert [getattr(m, "row", "end") for m in got] == [0, 1, 2, "end", 0, 1, 2, "end"]
    assert all(m.t is not None for m in got if isinstance(m, LineMessage))


def test_no_daemon_is_a_clear_timeout(make_socket: SocketFactory) -> None:
    streamer = LineStreamer("tcp://127.0.0.1:9", context=make_socket.context,  # type: ignore[attr-defined]
                            connect_timeout_s=0.05)
    try:
        with pytest.raises(TimeoutError, match=r"no daemon subscribed at tcp://127\.0\.0\.1:9"):
            streamer.stream([("a", Frame(np.ones((2, 2)), 1e-9, 1e-9))], line_time_s=0.0)
    finally:
        streamer.socket.close(linger=0)
