"""CURVE authentication with an allow-list, over real sockets; where the daemon may bind (issue 18).

Keys are made with ``zmq.auth`` (what ``stm-live keys`` writes). "alice" is an
allowed client, "mallory" has a valid key pair that is not in the allow-list.
Negative tests wait for the client's handshake to fail (socket monitor events),
never a fixed sleep, and then check that nothing arrived.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from zmq_sockets import SocketFactory, make_socket_fixture  # noqa: F401 - the make_socket fixture

from stm_live.cli import main
from stm_live.config import SecuritySection, load_config
from stm_live.errors import ConfigError
from stm_live.ingest.stream import LineSource
from stm_live.security import (
    AllowList,
    HandshakeWatch,
    check_bind,
    is_local_endpoint,
    make_server_socket,
    secure_client,
    start_authenticator,
)
from stm_live.wire import EndMessage, StatusMessage, decode_status, encode_end, encode_status

WAIT_S = 10.0
PLAIN = SecuritySection()


@dataclass(frozen=True)
class Keys:
    folder: Path
    server: SecuritySection  # the daemon's settings
    alice: SecuritySection  # an allowed client
    mallory: SecuritySection  # a client with a key pair the daemon does not know


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points the stm_live logger at this test's captured stderr; later threads must not log there."""
    logger = logging.getLogger("stm_live")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    folder = tmp_path / "keys"
    allowed = folder / "allowed"
    allowed.mkdir(parents=True)
    for name in ("server", "alice", "mallory"):
        zmq.auth.create_certificates(folder, name)
        (folder / f"{name}.key_secret").chmod(0o600)  # as `stm-live keys` leaves them
    (allowed / "alice.key").write_bytes((folder / "alice.key").read_bytes())
    server = SecuritySection(server_secret_key=folder / "server.key_secret", allowed_clients=allowed)

    def client(name: str) -> SecuritySection:
        return SecuritySection(server_public_key=folder / "server.key", client_secret_key=folder / f"{name}.key_secret")

    return Keys(folder, server, client("alice"), client("mallory"))


@pytest.fixture
def secured_source(make_socket: SocketFactory, keys: Keys) -> Iterator[LineSource]:
    """The daemon's ingest socket as a CURVE server with the ZAP authenticator running."""
    context = make_socket.context  # type: ignore[attr-defined]
    auth = start_authenticator(context, keys.server)
    assert auth is not None
    source = LineSource.bind(context, "tcp://127.0.0.1:*", security=keys.server)
    yield source
    source.close()
    auth.stop()


PROBE = encode_end(EndMessage("probe", complete=False))


def _bridge(make_socket: SocketFactory, endpoint: str, security: SecuritySection) -> tuple[zmq.Socket[Any],
                                                                                            HandshakeWatch]:
    pub = make_socket(zmq.PUB)
    watch = HandshakeWatch(pub, curve=secure_client(pub, security))
    pub.connect(endpoint)
    return pub, watch


def test_an_allowed_client_s_messages_arrive(secured_source: LineSource, make_socket: SocketFactory,
                                             keys: Keys) -> None:
    pub, watch = _bridge(make_socket, secured_source.endpoint, keys.alice)
    try:
        for _ in range(200):  # a PUB drops until the subscription reached it: probe until one arrives
            pub.send_multipart(PROBE)
            if (got := secured_source.receive(0.05)) is not None:
                break
        else:
            pytest.fail("the allowed client's messages never arrived")
        assert got.message == EndMessage("probe", False) and watch.failure() is None
    finally:
        watch.close()


@pytest.mark.parametrize(("client", "advice"), [
    ("mallory", "refused this client's key (authentication failed, status 400)"),
    ("plain", "the daemon requires CURVE"),
])
def test_an_unknown_key_or_a_plain_client_gets_nothing_through(
    secured_source: LineSource, make_socket: SocketFactory, keys: Keys, client: str, advice: str,
) -> None:
    pub, watch = _bridge(make_socket, secured_source.endpoint, keys.mallory if client == "mallory" else PLAIN)
    try:
        deadline = time.monotonic() + WAIT_S
        while (failure := watch.failure()) is None and time.monotonic() < deadline:
            pub.send_multipart(PROBE)
            assert secured_source.receive(0.02) is None
        assert failure is not None and advice in failure
        for _ in range(20):  # and ZeroMQ's reconnections after the refusal do not let it in either
            pub.send_multipart(PROBE)
            assert secured_source.receive(0.02) is None
    finally:
        watch.close()


def test_a_key_added_to_the_folder_is_allowed_without_a_restart(
    secured_source: LineSource, make_socket: SocketFactory, keys: Keys,
) -> None:
    assert keys.server.allowed_clients is not None
    (keys.server.allowed_clients / "mallory.key").write_bytes((keys.folder / "mallory.key").read_bytes())
    os.utime(keys.server.allowed_clients, ns=(time.time_ns(), time.time_ns() + 10**9))  # a visibly new listing
    pub, watch = _bridge(make_socket, secured_source.endpoint, keys.mallory)
    try:
        for _ in range(200):
            pub.send_multipart(PROBE)
            if secured_source.receive(0.05) is not None:
                break
        else:
            pytest.fail(f"mallory's key was added but its messages never arrived ({watch.failure()})")
    finally:
        watch.close()


def test_without_a_running_authenticator_no_key_gets_in(make_socket: SocketFactory, keys: Keys) -> None:
    # libzmq admits every CURVE key when no ZAP handler answers: secure_server refuses that wiring,
    # and a server whose authenticator has stopped refuses every client.
    context = make_socket.context  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=r"start_authenticator\(context, settings\) must run before"):
        make_server_socket(context, zmq.SUB, "tcp://127.0.0.1:*", keys.server)
    auth = start_authenticator(context, keys.server)
    assert auth is not None
    source = LineSource.bind(context, "tcp://127.0.0.1:*", security=keys.server)
    auth.stop()
    pub, watch = _bridge(make_socket, source.endpoint, keys.alice)
    try:
        # Nothing gets in. The handshake either fails (reported to the client) or, on a loaded
        # machine, stalls waiting for the missing authenticator: probe for the whole window then.
        deadline = time.monotonic() + WAIT_S
        while (failure := watch.failure()) is None and time.monotonic() < deadline:
            pub.send_multipart(PROBE)
            assert source.receive(0.02) is None
        if failure is not None:
            for _ in range(50):
                pub.send_multipart(PROBE)
                assert source.receive(0.02) is None
    finally:
        watch.close()
        source.close()


def test_the_publish_side_serves_allowed_subscribers_only(make_socket: SocketFactory, keys: Keys) -> None:
    context = make_socket.context  # type: ignore[attr-defined]
    auth = start_authenticator(context, keys.server)
    xpub = make_server_socket(context, zmq.XPUB, "tcp://127.0.0.1:*", keys.server, what="publish.endpoint")
    try:
        endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        subs = {}
        for name, settings in (("alice", keys.alice), ("plain", PLAIN), ("mallory", keys.mallory)):
            sub = make_socket(zmq.SUB, rcvtimeo_ms=0, subscribe=b"")
            subs[name] = (sub, HandshakeWatch(sub, curve=secure_client(sub, settings)))
            sub.connect(endpoint)
        # alice's subscription reaches the XPUB; the others' handshakes fail.
        assert xpub.poll(int(WAIT_S * 1000)) and xpub.recv() == b"\x01"
        deadline = time.monotonic() + WAIT_S
        while not all(w.failure() for n, (_, w) in subs.items() if n != "alice") and time.monotonic() < deadline:
            subs["alice"][0].poll(20)
        heartbeat = encode_status(StatusMessage("running", 1.0, {"frames": 0, "lines": 0, "errors": 0,
                                                                 "dropped": 0}, {}, "test", time.time()))
        xpub.send_multipart(heartbeat)
        alice = subs["alice"][0]
        assert alice.poll(int(WAIT_S * 1000)) and decode_status(alice.recv_multipart()).state == "running"
        for name in ("plain", "mallory"):
            sub, watch = subs[name]
            assert watch.failure() is not None and not sub.poll(100), name
    finally:
        for _, watch in subs.values():
            watch.close()
        xpub.close(linger=0)
        if auth is not None:
            auth.stop()


# --------------------------------------------------------------------------
# Where a server may bind
# --------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://127.3.2.1:*", "tcp://localhost:5555",
                                      "tcp://[::1]:5555", "tcp://lo:5555", "ipc:///tmp/stm.sock", "inproc://x"])
def test_loopback_and_local_transports_bind_without_curve(endpoint: str) -> None:
    assert is_local_endpoint(endpoint)
    check_bind(endpoint, PLAIN)


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.20:5555",
                                      "tcp://[::]:5555", "tcp://eth0:5555", "tcp://microscope-pc:5555",
                                      "tcp://10.0.0.1;127.0.0.1:5555", "ws://127.0.0.1:5555", "no-transport"])
def test_a_network_address_without_curve_is_refused(endpoint: str) -> None:
    assert not is_local_endpoint(endpoint)
    pattern = rf"ingest\.endpoint {re.escape(endpoint)}: refusing to bind a network address without CURVE "
    with pytest.raises(ConfigError, match=pattern + r".*security\.insecure: true"):
        check_bind(endpoint, PLAIN, what="ingest.endpoint")


def test_insecure_allows_it_with_a_warning_and_curve_allows_it_quietly(
    keys: Keys, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="stm_live.security"):
        check_bind("tcp://0.0.0.0:5555", SecuritySection(insecure=True), what="publish.endpoint")
        assert "publish.endpoint tcp://0.0.0.0:5555: reachable from the network WITHOUT authentication" in caplog.text
        caplog.clear()
        check_bind("tcp://0.0.0.0:5555", keys.server)
        assert caplog.text == ""


def test_the_ingest_socket_refuses_0_0_0_0_without_curve(make_socket: SocketFactory) -> None:
    context = make_socket.context  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"ingest\.endpoint tcp://0\.0\.0\.0:0: refusing to bind"):
        LineSource.bind(context, "tcp://0.0.0.0:0", security=PLAIN)


def test_the_ingest_socket_binds_0_0_0_0_with_curve(make_socket: SocketFactory, keys: Keys) -> None:
    context = make_socket.context  # type: ignore[attr-defined]
    auth = start_authenticator(context, keys.server)
    assert auth is not None
    source = LineSource.bind(context, "tcp://0.0.0.0:0", security=keys.server)
    assert source.socket.getsockopt(zmq.CURVE_SERVER) == 1
    source.close()
    auth.stop()


# --------------------------------------------------------------------------
# Configuration and key files
# --------------------------------------------------------------------------


def test_security_settings_that_do_not_go_together_are_refused(tmp_path: Path) -> None:
    cases = {
        "security:\n  server_secret_key: k/server.key_secret\n": r"security\.allowed_clients = None: required when",
        "security:\n  allowed_clients: k/allowed\n": r"security\.allowed_clients = '.*allowed': has no effect",
        "security:\n  server_public_key: k/server.key\n": r"security\.client_secret_key = None: .* go together",
        "security:\n  insecure: maybe\n": r"security\.insecure = 'maybe': expected a valid boolean",
    }
    for text, pattern in cases.items():
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=pattern):
            load_config(cfg, environ={})
    cfg.write_text("security:\n  server_public_key: k/server.key\n  client_secret_key: k/me.key_secret\n")
    settings = load_config(cfg, environ={}).security
    assert settings.server_public_key == (tmp_path / "k" / "server.key").resolve()  # relative to the file


def test_unusable_key_files_are_clear_errors(make_socket: SocketFactory, keys: Keys) -> None:
    context = make_socket.context  # type: ignore[attr-defined]
    public_only = SecuritySection(server_secret_key=keys.folder / "server.key", allowed_clients=keys.folder)
    with pytest.raises(ConfigError, match=r"security\.server_secret_key .*server\.key: holds only a public key"):
        make_server_socket(context, zmq.SUB, "tcp://127.0.0.1:*", public_only)
    (keys.folder / "junk.key_secret").write_text("not a key\n")
    junk = SecuritySection(server_public_key=keys.folder / "server.key",
                           client_secret_key=keys.folder / "junk.key_secret")
    with pytest.raises(ConfigError, match=r"security\.client_secret_key .*junk\.key_secret: cannot read a ZeroMQ "
                                          r"key file: No public key found"):
        secure_client(make_socket(zmq.SUB), junk)
    missing = SecuritySection(server_secret_key=keys.folder / "server.key_secret",
                              allowed_clients=keys.folder / "nope")
    with pytest.raises(ConfigError, match=r"security\.allowed_clients .*nope: not a readable folder"):
        start_authenticator(context, missing)


def test_a_secret_key_readable_by_others_is_warned_about(
    make_socket: SocketFactory, keys: Keys, caplog: pytest.LogCaptureFixture,
) -> None:
    if os.name != "posix":
        pytest.skip("file modes are POSIX")
    assert keys.alice.client_secret_key is not None
    keys.alice.client_secret_key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="stm_live.security"):
        assert secure_client(make_socket(zmq.SUB), keys.alice)
    assert "alice.key_secret: the secret key file is readable by other users; chmod 600 it" in caplog.text


def test_the_allow_list_follows_its_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    zmq.auth.create_certificates(tmp_path, "a")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    now = [0.0]
    allow = AllowList(allowed, refresh_s=1.0, clock=lambda: now[0])
    public, _ = zmq.auth.load_certificate(tmp_path / "a.key")
    with caplog.at_level(logging.WARNING):
        assert not allow.callback("stm-live", public) and not allow.callback("stm-live", public)
    assert caplog.text.count("refused a connection with an unknown CURVE key") == 1  # said once per key
    (allowed / "a.key").write_bytes((tmp_path / "a.key").read_bytes())
    os.utime(allowed, ns=(time.time_ns(), time.time_ns() + 10**9))
    now[0] = 2.0
    assert allow.callback("stm-live", public)
    (allowed / "a.key").unlink()
    os.utime(allowed, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    now[0] = 4.0
    assert not allow.callback("stm-live", public)


def test_keys_command_writes_loadable_pairs_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "server", "--dir", str(tmp_path / "k")]) == 0
    assert main(["keys", "bridge-pc", "--dir", str(tmp_path / "k"), "--allow", str(tmp_path / "allowed")]) == 0
    public, secret = zmq.auth.load_certificate(tmp_path / "k" / "bridge-pc.key_secret")
    assert secret is not None and len(secret) == 40
    assert zmq.auth.load_certificate(tmp_path / "allowed" / "bridge-pc.key") == (public, None)
    assert sorted(p.name for p in (tmp_path / "allowed").iterdir()) == ["bridge-pc.key"]
    if os.name == "posix":
        assert (tmp_path / "k" / "server.key_secret").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "k" / "server.key").stat().st_mode & 0o777 == 0o644
    capsys.readouterr()
    assert main(["keys", "server", "--dir", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "server.key" in err and "--force" in err
    assert main(["keys", "server", "--dir", str(tmp_path / "k"), "--force"]) == 0
    assert zmq.auth.load_certificate(tmp_path / "k" / "server.key")[0] != public
    assert main(["keys", "../up"]) == 2


# --------------------------------------------------------------------------
# stm-live's own clients
# --------------------------------------------------------------------------


def _client_config(tmp_path: Path, settings: SecuritySection, name: str) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"security:\n  server_public_key: {settings.server_public_key}\n"
                   f"  client_secret_key: {settings.client_secret_key}\n")
    return cfg


class _Heartbeats:
    """A stand-in daemon publish socket (CURVE server) sending status heartbeats from its own thread."""

    def __init__(self, context: zmq.Context[Any], settings: SecuritySection) -> None:
        self._context, self._settings = context, settings
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        assert self._ready.wait(WAIT_S)

    def _run(self) -> None:
        sock = make_server_socket(self._context, zmq.XPUB, "tcp://127.0.0.1:*", self._settings)
        try:
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._ready.set()
            while not self._stop.wait(0.05):
                sock.send_multipart(encode_status(StatusMessage(
                    "running", 5.0, {"frames": 3, "lines": 9, "errors": 0, "dropped": 0}, {}, "test", time.time())))
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def test_status_endpoint_reads_heartbeats_with_its_key_and_says_when_refused(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str],
) -> None:
    context = zmq.Context()
    auth = start_authenticator(context, keys.server)
    daemon = _Heartbeats(context, keys.server)
    try:
        ok = _client_config(tmp_path, keys.alice, "alice")
        assert main(["status", "--endpoint", daemon.endpoint, "--config", str(ok), "--timeout", str(WAIT_S)]) == 0
        assert "stm-live daemon: running" in capsys.readouterr().out
        bad = _client_config(tmp_path, keys.mallory, "mallory")
        started = time.monotonic()
        assert main(["status", "--endpoint", daemon.endpoint, "--config", str(bad), "--timeout", "60"]) == 2
        err = capsys.readouterr().err
        # (the stand-in daemon runs in this process: its own log lines land on the same stderr)
        said = [line for line in err.splitlines() if line.startswith("stm-live status:")]
        assert len(said) == 1 and "refused this client's key" in said[0] and "Traceback" not in err
        assert time.monotonic() - started < 30  # said at the first refusal, not after the whole timeout
        assert main(["status", "--endpoint", daemon.endpoint, "--config", str(tmp_path / "none.yaml"),
                     "--timeout", "60"]) == 2
        assert "none.yaml: configuration file not found" in capsys.readouterr().err
    finally:
        daemon.close()
        if auth is not None:
            auth.stop()
        context.term()


def _simulate(endpoint: str, config: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STM_LIVE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "stm_live", "-q", "simulate", "--zmq", endpoint, "--count", "1", "--pixels", "8",
         "--size-nm", "2", "--line-time", "0", "--wait-s", "60", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_simulate_zmq_streams_with_its_key_and_stops_when_refused(
    tmp_path: Path, secured_source: LineSource, keys: Keys,
) -> None:
    proc = _simulate(secured_source.endpoint, _client_config(tmp_path, keys.alice, "alice"))
    try:
        rows, ended = set(), False
        deadline = time.monotonic() + 60
        while not ended and time.monotonic() < deadline:
            got = secured_source.receive(0.5)
            if got is not None and got.message is not None:
                ended = isinstance(got.message, EndMessage)
                rows |= {got.message.row} if hasattr(got.message, "row") else set()
        assert ended and rows == set(range(8))
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.communicate()
    started = time.monotonic()
    proc = _simulate(secured_source.endpoint, _client_config(tmp_path, keys.mallory, "mallory"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and time.monotonic() - started < 50  # not the whole --wait-s 60
    assert len(err.strip().splitlines()) == 1 and "refused this client's key" in err
    assert secured_source.receive(0.1) is None
