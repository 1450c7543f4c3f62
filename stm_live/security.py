"""Who may talk to the daemon: ZeroMQ CURVE, an allow-list of client keys, and where sockets may bind.

Without this, the daemon's two sockets accept anything from any local
process, and from any host once bound to a network address (which a bridge on
the controller PC needs). With the ``security`` configuration section set:

* the daemon's bound sockets (ingest SUB, publish XPUB) are CURVE *servers*
  (:func:`secure_server`, :func:`make_server_socket`): traffic is encrypted and
  every connection is authenticated by a ZAP handler (:func:`start_authenticator`,
  pyzmq's :class:`zmq.auth.thread.ThreadAuthenticator`) that admits only
  client public keys found in the ``security.allowed_clients`` folder (re-read
  when it changes: adding or removing a key file needs no restart);
* stm-live's own clients (``stm-live status --endpoint``, ``stm-live simulate
  --zmq``, bridges) are CURVE *clients* (:func:`secure_client`) with their key
  pair and the daemon's public key;
* :func:`check_bind` refuses to bind a non-loopback address without CURVE
  unless ``security.insecure: true`` says so (then logged as a warning).

Key files are the ZeroMQ certificate format written by :mod:`zmq.auth`
(``NAME.key`` public, ``NAME.key_secret`` public and secret); ``stm-live keys``
makes them. Z85 keys never appear in logs in full (only a prefix), and the
secret never does.

A client whose key is refused, or that speaks plain ZeroMQ to a CURVE server,
sees no error from ZeroMQ itself: its messages just never arrive.
:class:`HandshakeWatch` turns the socket monitor's handshake events into a
sentence the person at the client can act on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import zmq

from .errors import ConfigError

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from .config import SecuritySection

__all__ = [
    "ZAP_DOMAIN",
    "AllowList",
    "ClientKeys",
    "HandshakeWatch",
    "ServerKeys",
    "check_bind",
    "client_keys",
    "is_local_endpoint",
    "make_server_socket",
    "secure_client",
    "secure_server",
    "server_keys",
    "start_authenticator",
]

log = logging.getLogger(__name__)

#: The ZAP domain of stm-live's server sockets (ZeroMQ asks the authenticator about every connection).
ZAP_DOMAIN: Final = "stm-live"
_LOCAL_TRANSPORTS: Final = ("ipc", "inproc")
_LOCAL_NAMES: Final = ("localhost", "lo", "lo0")
# Contexts with a running authenticator. Without one, libzmq admits every CURVE key, so
# secure_server refuses a socket of any other context (and sets ZAP_ENFORCE_DOMAIN as well).
_AUTHENTICATED: weakref.WeakSet[zmq.Context[Any]] = weakref.WeakSet()


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ServerKeys:
    """The daemon's key pair (Z85 bytes); the secret is never shown in a repr."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"ServerKeys(public={self.public[:8].decode()}...)"


@dataclass(frozen=True, repr=False)
class ClientKeys:
    """A client's key pair and the public key of the daemon it connects to (Z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"ClientKeys(public={self.public[:8].decode()}..., server={self.server_public[:8].decode()}...)"


def _load(key: str, path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    from zmq.auth import load_certificate

    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key} {path}: cannot read a ZeroMQ key file: {exc}") from None
    if len(public) != 40 or (secret_key is not None and len(secret_key) != 40):
        raise ConfigError(f"{key} {path}: not a CURVE key file (keys are 40 Z85 characters)")
    if secret and secret_key is None:
        raise ConfigError(
            f"{key} {path}: holds only a public key; give the NAME.key_secret file that `stm-live keys` wrote"
        )
    if secret and os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s %s: the secret key file is readable by other users; chmod 600 it", key, path)
    return public, secret_key


def server_keys(settings: SecuritySection) -> ServerKeys | None:
    """The daemon's key pair from ``security.server_secret_key``; None when CURVE is off.

    Raises
    ------
    ConfigError
        The file cannot be read or holds no secret key.
    """
    if settings.server_secret_key is None:
        return None
    public, secret = _load("security.server_secret_key", settings.server_secret_key, secret=True)
    assert secret is not None
    return ServerKeys(public, secret)


def client_keys(settings: SecuritySection) -> ClientKeys | None:
    """A client's keys from ``security.server_public_key`` and ``security.client_secret_key``; None when off.

    Raises
    ------
    ConfigError
        A file cannot be read, or the client file holds no secret key.
    """
    if settings.server_public_key is None or settings.client_secret_key is None:
        return None
    server_public, _ = _load("security.server_public_key", settings.server_public_key, secret=False)
    public, secret = _load("security.client_secret_key", settings.client_secret_key, secret=True)
    assert secret is not None
    return ClientKeys(server_public, public, secret)


# --------------------------------------------------------------------------
# The allow-list and the authenticator (daemon side)
# --------------------------------------------------------------------------


class AllowList:
    """Client public keys allowed to connect: every ``*.key`` file in a folder, re-read when it changes.

    Called by the authenticator's thread for each connection
    (``callback(domain, z85_key) -> bool``, pyzmq's credentials-provider
    protocol). The folder is listed again at most once per ``refresh_s`` and
    only when its modification time changed, so a flood of connection attempts
    costs a ``stat`` each, not a folder read. Refusals are logged once per key.

    Parameters
    ----------
    folder : path-like
        Config ``security.allowed_clients``.
    refresh_s : float
        Least time between two listings of the folder.
    """

    def __init__(self, folder: str | os.PathLike[str], *, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = Path(folder)
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: frozenset[bytes] = frozenset()
        self._stamp: int | None = None
        self._checked = -float("inf")
        self._refused: set[bytes] = set()
        self.refresh(force=True)

    @property
    def keys(self) -> frozenset[bytes]:
        """The allowed public keys (Z85) as last read."""
        return self._keys

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the folder if it changed (or ``force``).

        Raises
        ------
        ConfigError
            When ``force`` and the folder is missing (at start-up); later a
            missing folder empties the list (nobody is allowed) and is logged.
        """
        from zmq.auth import load_certificate

        try:
            stamp = self.folder.stat().st_mtime_ns
        except OSError as exc:
            if force:
                raise ConfigError(
                    f"security.allowed_clients {self.folder}: not a readable folder of client keys "
                    f"({exc.strerror or exc})"
                ) from None
            if self._keys:
                log.error("security.allowed_clients %s: gone (%s); refusing every client", self.folder, exc)
            self._keys, self._stamp = frozenset(), None
            return
        if not self.folder.is_dir():
            if force:
                raise ConfigError(f"security.allowed_clients {self.folder}: not a folder")
            self._keys, self._stamp = frozenset(), None
            return
        if stamp == self._stamp and not force:
            return
        keys = set()
        for path in sorted(self.folder.glob("*.key")):
            try:
                public, _ = load_certificate(path)
            except (OSError, ValueError) as exc:
                log.warning("security.allowed_clients: %s skipped: %s", path, exc)
                continue
            if len(public) == 40:
                keys.add(public)
            else:
                log.warning("security.allowed_clients: %s skipped: not a CURVE public key", path)
        self._keys, self._stamp = frozenset(keys), stamp
        log.info("allowed client keys: %d from %s", len(keys), self.folder)

    def callback(self, domain: str, key: bytes) -> bool:
        """True when ``key`` (Z85) is allowed; the ZAP authenticator's question."""
        with self._lock:
            now = self._clock()
            if now - self._checked >= self.refresh_s:
                self._checked = now
                try:
                    self.refresh()
                except Exception:  # never let the authenticator's thread die; keep the last list
                    log.exception("security.allowed_clients %s: cannot re-read it", self.folder)
            if key in self._keys:
                return True
            if key not in self._refused and len(self._refused) < 1000:
                self._refused.add(key)
                log.warning("refused a connection with an unknown CURVE key %s... (not in %s)",
                            key[:8].decode(errors="replace"), self.folder)
            return False


def start_authenticator(context: zmq.Context[Any], settings: SecuritySection) -> ThreadAuthenticator | None:
    """Start the ZAP handler for ``context`` when CURVE is configured; None when it is not.

    Call it before binding the server sockets (:func:`make_server_socket`) and
    stop it (``.stop()``) after closing them, before ``context.term()``.

    Raises
    ------
    ConfigError
        ZeroMQ was built without CURVE, or the allowed-clients folder is
        missing or unreadable.
    """
    if settings.server_secret_key is None:
        return None
    if not zmq.has("curve"):
        raise ConfigError("security.server_secret_key is set but this ZeroMQ (libzmq) was built without CURVE")
    assert settings.allowed_clients is not None  # the configuration requires it with a server key
    allow = AllowList(settings.allowed_clients)
    if not allow.keys:
        log.warning("security.allowed_clients %s holds no *.key file: no client can connect until one is added",
                    settings.allowed_clients)
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
    auth.start()
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=allow)
    _AUTHENTICATED.add(context)
    return auth


def secure_server(socket: zmq.Socket[Any], settings: SecuritySection) -> bool:
    """Make ``socket`` a CURVE server with the daemon's keys (before it binds); False when CURVE is off.

    Raises
    ------
    ConfigError
        The server key file cannot be used.
    RuntimeError
        :func:`start_authenticator` has not run on the socket's context (a
        wiring mistake: without the authenticator libzmq would admit any key).
    """
    keys = server_keys(settings)
    if keys is None:
        return False
    if socket.context not in _AUTHENTICATED:
        raise RuntimeError("start_authenticator(context, settings) must run before a CURVE server socket is "
                           "made on that context: without it ZeroMQ admits every client key")
    # Fail closed too: with no ZAP handler answering (stopped, crashed), connections are refused.
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    return True


def make_server_socket(
    context: zmq.Context[Any], kind: int, endpoint: str, settings: SecuritySection, *, what: str = "endpoint",
    configure: Callable[[zmq.Socket[Any]], None] | None = None,
) -> zmq.Socket[Any]:
    """A socket of ``kind`` bound at ``endpoint``: checked (:func:`check_bind`), secured, configured, bound.

    ``configure(socket)`` sets the caller's options (high-water marks, ...)
    before binding. On any error the socket is closed before the error
    propagates (an open socket would make ``Context.term()`` wait for ever).

    Raises
    ------
    ConfigError
        The address may not be bound without CURVE, or a key file is unusable.
    zmq.ZMQError
        The endpoint cannot be bound.
    """
    check_bind(endpoint, settings, what=what)
    sock = context.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        secure_server(sock, settings)
        if configure is not None:
            configure(sock)
        sock.bind(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------


def secure_client(socket: zmq.Socket[Any], settings: SecuritySection) -> bool:
    """Make ``socket`` a CURVE client of the daemon (before it connects); False when not configured.

    Raises
    ------
    ConfigError
        A key file cannot be used.
    """
    keys = client_keys(settings)
    if keys is None:
        return False
    socket.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    return True


class HandshakeWatch:
    """Why a connection keeps failing, from the socket monitor's handshake events.

    ZeroMQ retries a refused handshake silently for ever; a client that sees
    no message cannot tell "daemon not running" from "my key is not allowed".
    Create it before connecting; :meth:`failure` returns a sentence once a
    handshake has failed (and no later one succeeded), else None.

    Parameters
    ----------
    socket : zmq.Socket
        The client socket (not yet connected).
    curve : bool
        Whether the socket is a CURVE client (the advice differs).
    """

    _EVENTS: Final = (
        zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )

    def __init__(self, socket: zmq.Socket[Any], *, curve: bool) -> None:
        self._monitor = socket.get_monitor_socket(self._EVENTS)
        self._socket = socket
        self._curve = curve
        self._failure: str | None = None

    def failure(self) -> str | None:
        """The latest handshake failure as advice, or None (none, or a later handshake succeeded)."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            kind, endpoint = event["event"], event.get("endpoint", b"")
            where = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._failure = None
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._failure = (
                    f"the daemon at {where} refused this client's key (authentication failed, status "
                    f"{event['value']}): add its public key (the .key file from `stm-live keys`) to the "
                    "daemon's security.allowed_clients folder"
                )
            elif self._curve:
                self._failure = (
                    f"the CURVE handshake with {where} failed: the daemon does not use CURVE, or "
                    "security.server_public_key is not the daemon's public key"
                )
            else:
                self._failure = (
                    f"the handshake with {where} failed: the daemon requires CURVE; set "
                    "security.server_public_key and security.client_secret_key (see `stm-live keys`)"
                )
        return self._failure

    def close(self) -> None:
        """Stop monitoring and close the monitor socket."""
        self._socket.disable_monitor()
        self._monitor.close(linger=0)


# --------------------------------------------------------------------------
# Where a server may bind
# --------------------------------------------------------------------------


def is_local_endpoint(endpoint: str) -> bool:
    """True when binding ``endpoint`` reaches this computer only.

    ``ipc://`` and ``inproc://`` are local; ``tcp://`` is local for a loopback
    address (``127.x.x.x``, ``::1``), ``localhost`` and the loopback
    interface (``lo``). Anything else (``*``, ``0.0.0.0``, a network address,
    a host or interface name, other transports) may be reached from the network.

    Examples
    --------
    >>> [is_local_endpoint(e) for e in ("tcp://127.0.0.1:5555", "tcp://[::1]:*", "ipc:///tmp/x")]
    [True, True, True]
    >>> [is_local_endpoint(e) for e in ("tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.168.1.5:5555")]
    [False, False, False]
    """
    transport, sep, address = endpoint.partition("://")
    if not sep:
        return False
    if transport in _LOCAL_TRANSPORTS:
        return True
    if transport != "tcp":
        return False
    host = address.rpartition(":")[0] if ":" in address else address
    if ";" in host:  # "source;destination" is a connect form; never a local bind
        return False
    host = host.strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(endpoint: str, settings: SecuritySection, *, what: str = "endpoint") -> None:
    """Refuse to bind a network-reachable ``endpoint`` without CURVE, unless ``security.insecure``.

    Loopback, ``ipc://`` and ``inproc://`` endpoints are always fine, and any
    endpoint is with CURVE (``security.server_secret_key``). Otherwise binding
    a network address is refused, or, with ``security.insecure: true``,
    allowed with a WARNING in the log.

    Raises
    ------
    ConfigError
        Naming ``what`` (the configuration key, e.g. ``ingest.endpoint``), the
        endpoint and the three ways out.
    """
    if settings.server_secret_key is not None or is_local_endpoint(endpoint):
        return
    if settings.insecure:
        log.warning(
            "%s %s: reachable from the network WITHOUT authentication or encryption (security.insecure: true): "
            "any host that can reach it can send scans and read results", what, endpoint,
        )
        return
    raise ConfigError(
        f"{what} {endpoint}: refusing to bind a network address without CURVE authentication; set "
        "security.server_secret_key and security.allowed_clients (keys from `stm-live keys`), bind "
        "127.0.0.1 instead, or set security.insecure: true to accept the risk"
    )
