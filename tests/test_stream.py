"""The ingest SUB socket: bound by the daemon, bridges connect; bad messages come back as errors, never raised."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.config import Config
from stm_live.ingest.stream import LineSource
from stm_live.wire import EndMessage, LineMessage, ScanInfo, encode_end, encode_line

SCAN = ScanInfo("s1", rows=2, cols=3, width_m=1e-9, height_m=1e-9)


@pytest.fixture
def source(make_socket: SocketFactory) -> Iterator[LineSource]:
    ticks = iter(range(1000))
    src = LineSource.bind(make_socket.context, "tcp://127.0.0.1:*",  # type: ignore[attr-defined]
                          rcv_hwm=Config().ingest.rcv_hwm, clock=lambda: float(next(ticks)))
    yield src
    src.close()


def test_messages_arrive_decoded_or_refused_with_a_reason(source: LineSource, make_socket: SocketFactory) -> None:
    bridge = make_socket(zmq.PUB)
    bridge.connect(source.endpoint)
    probe = encode_end(EndMessage("probe", complete=False))
    for _ in range(100):  # a PUB drops until the subscription has reached it: probe until one arrives
        bridge.send_multipart(probe)
        if (first := source.receive(0.05)) is not None:
            break
    else:
        pytest.fail("the bridge never connected")
    assert first.message == EndMessage("probe", False) and first.error is None
    while source.receive(0.0) is not None:
        pass
    bridge.send_multipart([b"stm.line", b"{not json"])
    bridge.send_multipart(encode_line(LineMessage(SCAN, 1, np.array([1, 2, 3], ">f4"))))
    bridge.send_multipart([b"hello", b"world"])
    bad = source.receive(5.0)
    good = source.receive(5.0)
    unknown = source.receive(5.0)
    assert bad is not None and bad.message is None and bad.error is not None
    assert "expected 3 message parts" in str(bad.error)
    assert good is not None and isinstance(good.message, LineMessage) and good.message.row == 1
    assert good.arrived > bad.arrived and good.n_bytes > 12
    assert unknown is not None and unknown.error is not None and "unknown topic 'hello'" in str(unknown.error)
    assert source.receive(0.01) is None


def test_binding_a_port_in_use_fails_clearly(source: LineSource, make_socket: SocketFactory) -> None:
    with pytest.raises(zmq.ZMQError, match="in use"):
        LineSource.bind(make_socket.context, source.endpoint)  # type: ignore[attr-defined]


# A child process: bind with a receive queue ZeroMQ cannot take, then end the context.
# Before sockets were closed on every error, term() waited for the open socket forever.
_BIND_THEN_TERM = """
import sys, zmq
from stm_live.ingest.stream import LineSource
ctx = zmq.Context()
try:
    LineSource.bind(ctx, "tcp://127.0.0.1:*", rcv_hwm=3_000_000_000)
except OverflowError as exc:
    print("refused:", type(exc).__name__)
else:
    sys.exit("bound with rcv_hwm=3e9?")
ctx.term()
print("terminated")
"""


def test_a_failed_bind_closes_its_socket_so_the_context_can_end() -> None:
    proc = subprocess.run([sys.executable, "-c", _BIND_THEN_TERM], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["refused: OverflowError", "terminated"]
