"""The bridge's ZeroMQ edges: lines out to the daemon, results in, operator commands in.

* :class:`DaemonLink` connects to the daemon's ingest socket (an XPUB, so
  that it sees the daemon's subscription: ZeroMQ drops what is sent before
  it arrived) and sends protocol v1 messages; while no daemon listens,
  messages are dropped and counted, never queued without bound or waited on.
* :func:`operator_request` is the client side of the bridge's control socket
  (``bridge.control_endpoint``, a REP socket the bridge binds): ``pause``,
  ``resume``, ``status``, each answered with the bridge's state as JSON.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import zmq

from ..errors import ControllerError
from ..wire.sender import SEND_HWM, read_subscriptions

__all__ = ["DaemonLink", "operator_request"]

log = logging.getLogger(__name__)



class DaemonLink:
    """Send protocol v1 messages to a daemon's ingest endpoint.

    Parameters
    ----------
    endpoint : str
        The daemon's ingest endpoint (config ``ingest.endpoint``); connected to.
    context : zmq.Context, optional
    """

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        ctx = context if context is not None else zmq.Context.instance()
        self.socket = ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.connect(endpoint)
        self._subscribed = False
        self._warned = False
        self.counters: Counter[str] = Counter()

    def _read_subscriptions(self, timeout_ms: int) -> None:
        self._subscribed = read_subscriptions(self.socket, self._subscribed, timeout_ms)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the daemon's subscription; True once it is there."""
        self._read_subscriptions(0)
        if not self._subscribed:
            self._read_subscriptions(max(0, int(timeout_s * 1000)))
        return self._subscribed

    def send(self, parts: list[bytes]) -> bool:
        """Send one message; False (counted as ``dropped``) while no daemon is subscribed."""
        self._read_subscriptions(0)
        if not self._subscribed:
            self.counters["dropped"] += 1
            if not self._warned:
                log.warning("no daemon subscribed at %s: lines are dropped until one is (is `stm-live run` "
                            "listening there?)", self.endpoint)
                self._warned = True
            return False
        if self._warned:
            log.info("daemon at %s subscribed: forwarding lines", self.endpoint)
            self._warned = False
        self.socket.send_multipart(parts)
        self.counters["sent"] += 1
        return True

    def close(self) -> None:
        """Close the socket (messages sent have up to 2 s to leave)."""
        self.socket.close()


def operator_request(endpoint: str, command: str, *, timeout_s: float = 5.0,
                     context: zmq.Context[Any] | None = None) -> dict[str, Any]:
    """Send ``pause``, ``resume`` or ``status`` to a running bridge; return its state.

    Raises
    ------
    ControllerError
        No bridge answered within ``timeout_s``, or it refused the command.
    """
    ctx = context if context is not None else zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_json({"command": command})
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise ControllerError(f"no bridge answered at {endpoint} within {timeout_s:g} s; is "
                                  "`stm-live bridge nanonis` running with that bridge.control_endpoint?")
        reply: dict[str, Any] = json.loads(sock.recv())
    finally:
        sock.close()
    if not reply.get("ok", False):
        raise ControllerError(f"the bridge at {endpoint} refused {command!r}: {reply.get('error', 'no reason')}")
    return reply
