"""Real ZeroMQ sockets for tests: one context per test, every socket closed with linger 0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

SocketFactory = Callable[..., zmq.Socket[Any]]


@pytest.fixture(name="make_socket")
def make_socket_fixture() -> Iterator[SocketFactory]:
    """``make_socket(zmq.SUB, rcvtimeo_ms=5000, **options)``: a socket closed after the test."""
    context = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []

    def make(kind: int, *, rcvtimeo_ms: int = 5000, **options: int | bytes) -> zmq.Socket[Any]:
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, rcvtimeo_ms)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        sockets.append(sock)
        return sock

    make.context = context  # type: ignore[attr-defined]
    yield make
    for sock in sockets:
        sock.close(linger=0)
    context.term()
