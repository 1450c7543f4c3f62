"""A simulated microscope on the wire: scan lines over ZeroMQ at the pace of a real scan.

What a controller bridge does, with simulated frames: each frame goes out as
``stm.line`` messages in scan order (row 0 first for a downward scan, the
bottom row first for an upward one) and ends with ``stm.end``, protocol v1
(:mod:`stm_live.wire`, ``docs/protocol.md``).

* :func:`frame_messages` (pure) turns a :class:`~stm_live.frame.Frame` into
  those messages (encoded by :mod:`stm_live.wire` when they are sent).
* :class:`LineStreamer` is the I/O edge: it *connects* to the daemon's bound
  SUB socket and sends them, one line per ``line_time_s``. It uses an XPUB
  socket rather than a plain PUB so that it can see the daemon's
  subscription arrive: ZeroMQ drops what a publisher sends before the
  subscription has reached it (the "slow joiner"), and waiting for the
  subscription instead of sleeping a fixed time is what makes the first line
  of the first scan arrive. The same happens again after the daemon
  restarts: the stream pauses until the new subscription is in. With the
  ``security`` configuration it is a CURVE client of the daemon
  (:func:`stm_live.security.secure_client`), and a refused key is an error
  that says so, not an endless wait.

Clock and sleep are injected so that tests can run it without waiting.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..frame import Frame
from ..security import HandshakeWatch, secure_client
from ..wire import EndMessage, LineMessage, ScanInfo, encode_end, encode_line
from ..wire.sender import SEND_HWM, read_subscriptions

if TYPE_CHECKING:
    from ..config import SecuritySection

__all__ = ["LineStreamer", "StreamedScan", "frame_messages", "scan_info"]

log = logging.getLogger(__name__)


def scan_info(frame: Frame, scan_id: str) -> ScanInfo:
    """The :class:`~stm_live.wire.ScanInfo` a bridge would send for ``frame``.

    Examples
    --------
    >>> f = Frame(np.zeros((4, 8), np.float32), 8e-9, 4e-9, bias_v=-1.5)
    >>> info = scan_info(f, "s1")
    >>> info.rows, info.cols, info.height_m, info.bias_v
    (4, 8, 4e-09, -1.5)
    """
    return ScanInfo(
        scan_id=scan_id,
        rows=frame.rows,
        cols=frame.cols,
        width_m=frame.width_m,
        height_m=frame.height_m,
        channel=frame.channel,
        direction=frame.direction,
        unit=frame.unit,
        bias_v=frame.bias_v,
        setpoint_a=frame.setpoint_a,
        offset_m=frame.offset_m,
        angle_deg=frame.angle_deg,
    )


def frame_messages(
    frame: Frame, scan_id: str, *, dtype: str = "<f4", complete: bool = True
) -> Iterator[LineMessage | EndMessage]:
    """The messages of one scan: every acquired line in scan order, then ``stm.end``.

    Parameters
    ----------
    frame : Frame
        The scan, in display order; its ``scan_direction`` sets the order the
        lines go out in. Rows entirely NaN (not acquired) are not sent.
    scan_id : str
        The controller's name for the scan.
    dtype : str
        Payload ``dtype.str`` (``"<f4"``, ``">f4"``, ``"<f8"`` ...).
    complete : bool
        The ``complete`` flag of the closing ``stm.end``.

    Yields
    ------
    LineMessage or EndMessage
        Lines without an acquisition time ``t`` (the streamer sets it when
        it sends them), then the end.

    Examples
    --------
    >>> f = Frame(np.arange(6.0).reshape(3, 2), 2e-9, 3e-9, scan_direction="up")
    >>> [getattr(m, "row", "end") for m in frame_messages(f, "s1")]
    [2, 1, 0, 'end']
    """
    info = scan_info(frame, scan_id)
    order = range(frame.rows) if frame.scan_direction == "down" else range(frame.rows - 1, -1, -1)
    data = frame.data
    for row in order:
        line = data[row]
        if not np.isfinite(line).any():
            continue
        yield LineMessage(info, row, line.astype(dtype))
    yield EndMessage(scan_id, complete=complete)


@dataclass(frozen=True)
class StreamedScan:
    """What :meth:`LineStreamer.stream` sent for one scan, with clock times of its first and last message."""

    scan_id: str
    lines: int
    started_s: float
    finished_s: float


class LineStreamer:
    """Send scans line by line to a daemon's ingest socket, paced like a microscope.

    Parameters
    ----------
    endpoint : str
        The daemon's ingest endpoint (config ``ingest.endpoint``); connected to.
    context : zmq.Context, optional
        Default: the process-wide instance.
    connect_timeout_s : float
        How long to wait for the daemon's subscription before giving up.
    clock, sleep : callable
        Monotonic seconds and sleeping; injectable for tests.
    security : SecuritySection, optional
        Config ``security``: with ``server_public_key`` and
        ``client_secret_key`` set, the socket is a CURVE client of the daemon.
        Given at all (even with CURVE off), a failed handshake (key refused,
        CURVE on one side only) ends :meth:`wait_for_daemon` with
        ``ConnectionRefusedError`` instead of a wait; close with :meth:`close`
        (it closes the socket that watches the handshakes too).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context[Any] | None = None,
        connect_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        security: SecuritySection | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._sleep = sleep
        ctx = context if context is not None else zmq.Context.instance()
        self.socket = ctx.socket(zmq.XPUB)
        try:
            self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
            self.socket.setsockopt(zmq.LINGER, 2000)  # lines already sent still go out when closing
            # With security settings (even "off"), failed handshakes are watched: a client the daemon
            # refuses then says why instead of waiting. close() closes the watch's socket too.
            self._handshake = None if security is None else HandshakeWatch(
                self.socket, curve=secure_client(self.socket, security)
            )
            self.socket.connect(endpoint)
        except BaseException:
            self.socket.close(linger=0)
            raise
        self._subscribed = False

    # -- the slow joiner ----------------------------------------------------

    def _read_subscriptions(self, timeout_ms: int) -> None:
        self._subscribed = read_subscriptions(self.socket, self._subscribed, timeout_ms)

    def wait_for_daemon(self, timeout_s: float | None = None) -> bool:
        """Block until the daemon's subscription has arrived (up to ``timeout_s``); True if it has.

        Raises
        ------
        ConnectionRefusedError
            The handshake with the daemon failed (key not allowed, CURVE on
            one side only): waiting longer would not help.
        """
        timeout_s = self.connect_timeout_s if timeout_s is None else timeout_s
        deadline = self._clock() + timeout_s
        self._read_subscriptions(0)
        while not self._subscribed:
            failure = self._handshake.failure() if self._handshake is not None else None
            if failure is not None:
                raise ConnectionRefusedError(failure)
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._read_subscriptions(max(1, int(min(remaining, 0.1) * 1000)))
        return True

    def reconnect(self, endpoint: str) -> None:
        """Connect to another endpoint instead (a daemon restarted on a new port)."""
        with contextlib.suppress(zmq.ZMQError):  # already gone
            self.socket.disconnect(self.endpoint)
        self._subscribed = False
        self.endpoint = endpoint
        self.socket.connect(endpoint)

    # -- sending ------------------------------------------------------------

    def send(self, parts: list[bytes]) -> None:
        """Send one message now (waiting for the daemon first if it is not subscribed)."""
        self._read_subscriptions(0)
        if not self._subscribed and not self.wait_for_daemon():
            raise TimeoutError(
                f"no daemon subscribed at {self.endpoint} within {self.connect_timeout_s:g} s; "
                "is `stm-live run` listening there (config ingest.endpoint)?"
            )
        self.socket.send_multipart(parts)

    def stream(
        self,
        scans: Iterable[tuple[str, Frame]],
        *,
        line_time_s: float,
        dtype: str = "<f4",
        on_line: Callable[[str, int], None] | None = None,
    ) -> list[StreamedScan]:
        """Send each ``(scan_id, frame)``: its lines one per ``line_time_s``, then ``stm.end``.

        Lines keep to a fixed schedule (line ``k`` of the session at
        ``start + k * line_time_s``); when sending falls behind it does not
        catch up with a burst. Each line carries its send time as ``t``.

        Raises
        ------
        TimeoutError
            No daemon subscribed within ``connect_timeout_s``.
        ConnectionRefusedError
            The daemon refused the connection (see :meth:`wait_for_daemon`).
        """
        if not (line_time_s >= 0 and math.isfinite(line_time_s)):
            raise ValueError(f"line_time_s must be a finite number >= 0, got {line_time_s!r}")
        done: list[StreamedScan] = []
        if not self.wait_for_daemon():
            raise TimeoutError(
                f"no daemon subscribed at {self.endpoint} within {self.connect_timeout_s:g} s; "
                "is `stm-live run` listening there (config ingest.endpoint)?"
            )
        deadline = self._clock()
        for scan_id, frame in scans:
            started = self._clock()
            lines = 0
            for msg in frame_messages(frame, scan_id, dtype=dtype):
                if isinstance(msg, EndMessage):
                    self.send(encode_end(msg))
                    continue
                wait = deadline - self._clock()
                if wait > 0:
                    self._sleep(wait)
                elif wait < -line_time_s:
                    deadline = self._clock()  # fell behind: no burst to catch up
                deadline += line_time_s
                self.send(encode_line(replace(msg, t=time.time())))
                lines += 1
                if on_line is not None:
                    on_line(scan_id, msg.row)
            done.append(StreamedScan(scan_id, lines, started, self._clock()))
            log.info("streamed scan %s: %d lines in %.1f s", scan_id, lines, self._clock() - started)
        return done

    def close(self) -> None:
        """Close the socket, giving queued lines up to 2 s to leave."""
        if self._handshake is not None:
            self._handshake.close()
        self.socket.close()

    def __enter__(self) -> LineStreamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

