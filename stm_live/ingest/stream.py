"""The ZeroMQ ingest edge: the daemon's bound SUB socket, messages in, decoded or refused.

:class:`LineSource` binds the SUB socket that controller bridges connect their
PUB sockets to (config ``ingest.endpoint``), stamps each message with its
arrival time (the start of the ``latency_ms`` the daemon publishes) and
decodes it with :func:`stm_live.wire.decode_ingest`. A malformed message never
raises: it comes back as a :class:`Received` carrying the
:class:`~stm_live.errors.WireError`, for the caller to log and count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import zmq

from ..errors import WireError
from ..security import make_server_socket
from ..wire import MAX_PIXELS, IngestMessage, decode_ingest

if TYPE_CHECKING:
    from ..config import SecuritySection

__all__ = ["LineSource", "Received"]

#: Largest message part accepted: a whole float64 frame of the largest size, plus room for
#: its header. Bigger parts (a stray peer) are refused by ZeroMQ before they use memory.
MAX_PART_BYTES: Final = MAX_PIXELS * 8 + (1 << 20)


@dataclass(frozen=True, eq=False)
class Received:
    """One message from the ingest socket: decoded (``message``) or refused (``error``), and who sent it.

    ``source`` is the sender's CURVE key (``"key <z85>"``) when it authenticated, else its
    network address (``"192.168.1.5"``), else ``"local"`` (ipc, inproc).
    """

    arrived: float
    message: IngestMessage | None
    error: WireError | None
    n_bytes: int
    source: str = "local"


def _source(frame: zmq.Frame) -> str:
    """Who sent it: the CURVE key it authenticated with, else its network address, else ``local``."""
    for prop in ("User-Id", "Peer-Address"):
        try:
            value = frame.get(prop)
        except (zmq.ZMQError, ValueError):  # not set for this transport / this libzmq
            continue
        if value:
            return f"key {value}" if prop == "User-Id" else str(value)
    return "local"


class LineSource:
    """The daemon's SUB socket for ``stm.line`` / ``stm.frame`` / ``stm.end``.

    Parameters
    ----------
    socket : zmq.Socket
        A bound SUB socket subscribed to everything (see :meth:`bind`):
        messages with other topics arrive too, and are refused with a reason.
    clock : callable
        Monotonic seconds for ``Received.arrived`` (default :func:`time.monotonic`).
    """

    def __init__(self, socket: zmq.Socket[Any], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.socket = socket
        self._clock = clock

    @classmethod
    def bind(
        cls, context: zmq.Context[Any], endpoint: str, *, rcv_hwm: int = 10000,
        clock: Callable[[], float] = time.monotonic, security: SecuritySection | None = None,
    ) -> LineSource:
        """Bind a SUB socket at ``endpoint`` (config ``ingest.endpoint``, ``ingest.rcv_hwm``).

        With ``security`` (config ``security``), the address is checked
        (:func:`stm_live.security.check_bind`: no network address without
        CURVE unless ``insecure``) and the socket is a CURVE server when
        ``security.server_secret_key`` is set; start the authenticator
        (:func:`stm_live.security.start_authenticator`) on ``context`` first.

        Raises
        ------
        zmq.ZMQError
            The endpoint cannot be bound (in use, bad address).
        ConfigError
            With ``security``: a network address without CURVE, or an unusable key file.
        OverflowError, TypeError
            ``rcv_hwm`` is not a C int (the configuration's range prevents it).

        On any error the socket is closed before the error propagates: an
        open socket would make ``Context.term()`` wait for it forever.
        """

        def configure(sock: zmq.Socket[Any]) -> None:
            sock.setsockopt(zmq.RCVHWM, rcv_hwm)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_PART_BYTES)
            sock.setsockopt(zmq.SUBSCRIBE, b"")

        if security is not None:
            return cls(make_server_socket(context, zmq.SUB, endpoint, security, what="ingest.endpoint",
                                          configure=configure), clock=clock)
        sock = context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            configure(sock)
            sock.bind(endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        return cls(sock, clock=clock)

    @property
    def endpoint(self) -> str:
        """The bound address (with the real port after binding port 0 or ``*``)."""
        return str(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def receive(self, timeout_s: float) -> Received | None:
        """Wait up to ``timeout_s`` for one message; None if none came.

        Never raises for a malformed message (see :class:`Received`).
        """
        if not self.socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        frames = self.socket.recv_multipart(copy=False)
        parts = [frame.buffer for frame in frames]  # zero-copy views
        arrived = self._clock()
        n_bytes = sum(p.nbytes for p in parts)
        source = _source(frames[0])
        try:
            return Received(arrived, decode_ingest(parts), None, n_bytes, source)
        except WireError as exc:
            return Received(arrived, None, exc, n_bytes, source)

    def close(self) -> None:
        """Close the socket."""
        self.socket.close(linger=0)
