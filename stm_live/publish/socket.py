"""The daemon's ZeroMQ PUB edge: non-blocking sends, dropped messages counted.

:class:`Publisher` binds an ``XPUB`` socket with ``XPUB_NODROP`` and sends
without blocking: when a subscriber's queue (``publish.send_hwm`` messages)
is full, :meth:`Publisher.send` returns False and counts the message as
dropped instead of waiting. (A plain PUB socket drops for slow subscribers
too, but silently, so drops could not be counted.) While one subscriber is
stuck with a full queue the message is dropped for every subscriber: ZeroMQ
decides per message, not per peer. The drop count goes out in every
``status`` heartbeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import zmq

from ..config import SecuritySection
from ..security import make_server_socket
from ..wire import Buffer

__all__ = ["Publisher"]

log = logging.getLogger(__name__)


class Publisher:
    """Non-blocking multipart sends on a bound ``XPUB`` socket.

    Parameters
    ----------
    socket : zmq.Socket
        A bound ``XPUB`` socket (see :meth:`bind`); a plain ``PUB`` socket
        works too but never reports drops.

    Notes
    -----
    An XPUB socket queues the subscriptions it receives; call
    :meth:`poll_subscriptions` now and then to read them. Thread-safe: sends
    are serialised by a lock.

    Attributes
    ----------
    sent, dropped : int
        Messages sent, and not sent because a subscriber's queue was full.
    """

    def __init__(self, socket: zmq.Socket[Any]) -> None:
        self.socket = socket
        self.sent = 0
        self.dropped = 0
        self._subscriptions: dict[bytes, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def bind(
        cls,
        context: zmq.Context[Any],
        endpoint: str,
        *,
        send_hwm: int = 1000,
        security: SecuritySection | None = None,
    ) -> Publisher:
        """Bind a new ``XPUB`` socket at ``endpoint`` (config ``publish.endpoint``, ``publish.send_hwm``).

        With ``security`` (config ``security``) the address is checked (no
        network address without CURVE unless ``insecure``) and the socket is a
        CURVE server when keys are configured (start the authenticator on
        ``context`` first). The socket is closed on any error, so the context
        can still terminate.

        Raises
        ------
        zmq.ZMQError
            The endpoint cannot be bound (in use, bad address).
        ConfigError
            With ``security``: a network address without CURVE, or an unusable key file.
        """

        def configure(sock: zmq.Socket[Any]) -> None:
            sock.setsockopt(zmq.SNDHWM, send_hwm)
            # Without NODROP a full subscriber silently loses messages and send never says so.
            sock.setsockopt(zmq.XPUB_NODROP, 1)

        if security is not None:
            return cls(make_server_socket(context, zmq.XPUB, endpoint, security, what="publish.endpoint",
                                          configure=configure))
        sock = context.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            configure(sock)
            sock.bind(endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        return cls(sock)

    @property
    def endpoint(self) -> str:
        """The bound address (with the real port after binding port 0 or ``*``)."""
        return str(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def send(self, parts: Sequence[Buffer]) -> bool:
        """Send one multipart message without blocking; False (and counted) when dropped.

        Parts are sent without copying them (``copy=False``): large payloads
        go out from the caller's buffers, which must not change afterwards.
        """
        with self._lock:
            try:
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("a subscriber is not keeping up: %d message(s) dropped so far", self.dropped)
                return False
            self.sent += 1
            return True

    def poll_subscriptions(self, timeout_s: float = 0.0) -> int:
        """Read pending (un)subscriptions, waiting up to ``timeout_s`` for the first; return the active count.

        What is counted are distinct topic prefixes: an XPUB socket reports
        a prefix once however many subscribers share it.
        """
        wait_ms = int(timeout_s * 1000)
        with self._lock:
            while self.socket.poll(wait_ms, zmq.POLLIN):
                wait_ms = 0
                msg = self.socket.recv()
                if not msg:
                    continue
                prefix = bytes(msg[1:])
                if msg[0] == 1:
                    self._subscriptions[prefix] = self._subscriptions.get(prefix, 0) + 1
                elif msg[0] == 0 and self._subscriptions.get(prefix, 0) > 0:
                    self._subscriptions[prefix] -= 1
            return sum(self._subscriptions.values())

    def close(self) -> None:
        """Close the socket (linger 0: queued messages are discarded)."""
        self.socket.close(linger=0)
