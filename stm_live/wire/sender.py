"""The sending side of protocol v1: what a controller bridge's socket shares, wherever it runs.

A sender (the Nanonis bridge's :class:`~stm_live.bridge.link.DaemonLink`, the
simulator's :class:`~stm_live.sim.stream.LineStreamer`) holds an XPUB socket
connected to the daemon's bound SUB. XPUB hands it the daemon's subscription
messages, so the sender knows whether a daemon is listening (a PUB would drop
lines silently until the subscription arrived: the slow joiner).
"""

from __future__ import annotations

from typing import Any

import zmq

__all__ = ["SEND_HWM", "read_subscriptions"]

#: Messages a sender queues per connection before ZeroMQ drops (a whole 8192-line scan fits).
SEND_HWM = 100_000


def read_subscriptions(socket: zmq.Socket[Any], subscribed: bool, timeout_ms: int) -> bool:
    """Read the subscription messages waiting on an XPUB ``socket``; whether a subscriber is there now.

    Waits up to ``timeout_ms`` for the first one (0: only what has already
    arrived); ``subscribed`` is the state before.
    """
    while socket.poll(timeout_ms, zmq.POLLIN):
        timeout_ms = 0
        msg = socket.recv()
        if msg[:1] == b"\x01":
            subscribed = True
        elif msg[:1] == b"\x00":
            subscribed = False
    return subscribed
