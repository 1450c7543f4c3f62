"""A client of one Nanonis TCP port: exact-length reads, timeouts, reconnection with backoff.

A Nanonis controller serves one client per port (6501-6504 by default) and
answers the commands of one connection in order. :class:`NanonisConnection`
is one such connection: :meth:`~NanonisConnection.call` sends a request and
reads exactly the 40-byte header and then exactly the body size it announces
(``recv_into`` in a loop: a controller that closes the socket mid-message is
an error, never a loop spinning on empty reads), within a timeout.

Every failure becomes a :class:`~stm_live.errors.ControllerError` naming the
controller, the command and what happened: a closed or refused connection or
a timeout (:class:`~stm_live.errors.ControllerConnectionError`), an error
reply (:class:`~.protocol.ReplyError`), bytes that break the protocol
(:class:`~.protocol.ProtocolError`). After a connection error the socket is
closed (the stream is out of step); the next call reconnects, waiting with
exponential backoff between failed attempts. Failures are counted in
:attr:`NanonisConnection.counters`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ...errors import ControllerConnectionError, ControllerError
from .protocol import (
    HEADER_SIZE,
    ProtocolError,
    ReplyError,
    command,
    decode_response,
    encode_request,
    parse_response_header,
)

__all__ = ["Backoff", "NanonisConnection"]

log = logging.getLogger(__name__)

#: Seconds added to a blocking command's own timeout before the socket gives up.
WAIT_MARGIN_S = 5.0


class Backoff:
    """Exponential backoff: ``initial_s``, doubling up to ``max_s``; :meth:`reset` after a success.

    Examples
    --------
    >>> b = Backoff(0.1, 0.5)
    >>> [b.next_delay() for _ in range(5)]
    [0.1, 0.2, 0.4, 0.5, 0.5]
    """

    def __init__(self, initial_s: float = 0.1, max_s: float = 5.0) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"expected 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next_delay(self) -> float:
        """The wait before the next attempt (and double the one after)."""
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        """Back to ``initial_s``."""
        self._next = self.initial_s


class NanonisConnection:
    """One TCP connection to one controller port.

    Parameters
    ----------
    host : str
    port : int
    layout : {"current", "legacy"}
        The protocol layout of the controller's version (:data:`~.protocol.LAYOUTS`).
    timeout_s : float
        Socket timeout of a non-blocking command (connect, send, read).
    backoff : Backoff, optional
        Waits between reconnection attempts (default 0.1 s doubling to 5 s).
    sleep : callable
        ``sleep(seconds) -> bool``, True to abandon (stop requested); default
        :func:`time.sleep` (never abandons).
    name : str
        What this connection is for, in messages (``"lines"``, ``"control"``).

    Notes
    -----
    Thread-safe: one call at a time (a lock), as the protocol requires.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        layout: str = "current",
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], bool] | None = None,
        name: str = "",
    ) -> None:
        self.host = host
        self.port = int(port)
        self.layout = layout
        self.timeout_s = float(timeout_s)
        self.backoff = backoff or Backoff()
        self._sleep = sleep or _plain_sleep
        self.name = name
        self.counters: Counter[str] = Counter()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._next_attempt = 0.0
        self._header = bytearray(HEADER_SIZE)

    @property
    def where(self) -> str:
        """``controller HOST:PORT`` (and the connection's purpose), for messages."""
        return f"controller {self.host}:{self.port}" + (f" ({self.name})" if self.name else "")

    @property
    def connected(self) -> bool:
        """True while a socket is open."""
        return self._sock is not None

    # -- connection -----------------------------------------------------------

    def connect(self) -> None:
        """Open the connection now (waiting out the backoff after a failure).

        Raises
        ------
        ControllerConnectionError
            Refused or timed out; the next attempt waits longer.
        """
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        if self._sock is not None:
            return
        wait = self._next_attempt - time.monotonic()
        if wait > 0 and self._sleep(wait):
            raise ControllerConnectionError(f"{self.where}: stopped while waiting to reconnect")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            self.counters["connect_failures"] += 1
            delay = self.backoff.next_delay()
            self._next_attempt = time.monotonic() + delay
            raise ControllerConnectionError(
                f"{self.where}: cannot connect: {exc}; next attempt in {delay:.2g} s"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.counters["connects"] += 1
        self.backoff.reset()
        self._next_attempt = 0.0
        log.info("%s: connected", self.where)

    def close(self) -> None:
        """Close the socket (a later call reconnects)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):  # closing never matters
                sock.close()

    def _broken(self, reason: str) -> ControllerConnectionError:
        """Close after a failure mid-exchange: the byte stream is out of step."""
        self.close()
        delay = self.backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        return ControllerConnectionError(f"{self.where}: {reason}; reconnecting in {delay:.2g} s")

    # -- exchange -------------------------------------------------------------

    def _read_exact(self, buf: memoryview, what: str, deadline: float) -> None:
        assert self._sock is not None
        got = 0
        n = len(buf)
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            k = self._sock.recv_into(buf[got:], n - got)
            if k == 0:
                self.counters["closed_by_controller"] += 1
                raise self._broken(f"the controller closed the connection with {n - got} of {n} bytes of {what} "
                                   "still due")
            got += k

    def call(self, name: str, args: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
             ) -> dict[str, Any]:
        """Send command ``name`` and return its decoded return values.

        Parameters
        ----------
        name : str
            A command of :data:`~.protocol.COMMANDS`.
        args : Mapping, optional
            Its arguments by field name.
        timeout_s : float, optional
            How long to wait for the whole answer; default the connection's
            ``timeout_s``, or for blocking commands with a ``timeout_ms``
            argument that timeout plus :data:`WAIT_MARGIN_S` (an infinite
            controller wait, ``-1``, is not allowed: it could hang forever).

        Raises
        ------
        ControllerConnectionError
            Not connected and cannot connect, closed mid-message, timed out.
        ReplyError
            The controller answered with an error status.
        ProtocolError
            The answer breaks the protocol or the configured layout.
        """
        args = dict(args or {})
        cmd = command(name)
        if timeout_s is None:
            timeout_s = self.timeout_s
            if cmd.blocking and "timeout_ms" in args:
                if args["timeout_ms"] < 0:
                    raise ControllerError(f"{self.where}: {name} with an infinite timeout could hang the bridge; "
                                          "give timeout_ms >= 0")
                timeout_s = args["timeout_ms"] / 1000.0 + WAIT_MARGIN_S
        request = encode_request(name, args, layout=self.layout)
        with self._lock:
            self._connect()
            assert self._sock is not None
            deadline = time.monotonic() + timeout_s
            try:
                self._sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                self._sock.sendall(request)
                header = memoryview(self._header)
                self._read_exact(header, f"the {name} response header", deadline)
                _, size = parse_response_header(header, expected=name)
                body = bytearray(size)
                self._read_exact(memoryview(body), f"the {name} response body", deadline)
            except TimeoutError:
                self.counters["timeouts"] += 1
                raise self._broken(f"no complete answer to {name} within {timeout_s:.3g} s") from None
            except ProtocolError as exc:
                self.counters["protocol_errors"] += 1
                raise self._broken(str(exc)) from None
            except ControllerConnectionError:
                raise
            except OSError as exc:
                self.counters["socket_errors"] += 1
                raise self._broken(f"{name}: {exc}") from None
        try:
            values = decode_response(name, body, layout=self.layout, where=self.where)
        except ReplyError:
            self.counters["error_replies"] += 1
            raise
        except ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            raise ProtocolError(f"{self.where}: {exc}") from None
        self.counters["calls"] += 1
        return values

    def __enter__(self) -> NanonisConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain_sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def frame_rows(data: np.ndarray) -> np.ndarray:
    """Indices of the rows of a grabbed frame that hold data (not entirely NaN)."""
    return np.flatnonzero(np.isfinite(data).any(axis=1))
