"""``stm-live status``: is the daemon running, and how is it doing."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import SecuritySection

HELP = "show the daemon's live state (from its heartbeat or its state file)"
DESCRIPTION = (
    "Show whether the stm-live daemon is running and its counters, queues and model: from the state file in "
    "the results folder (default: results.dir of the configuration), or, with --endpoint, from the next "
    "status heartbeat on the publish socket (a CURVE client when the configuration's security section "
    "has this client's keys). Exit status 0 when it is running, 1 when it is not."
)

EXIT_NOT_RUNNING = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="configuration file (default: $STM_LIVE_CONFIG, else ./config.yaml)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--results", type=Path, metavar="DIR", help="the daemon's results folder (its state.json)")
    where.add_argument("--endpoint", metavar="EP", help="subscribe to this publish endpoint and wait for a heartbeat")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="how long to wait for a heartbeat (default: 3 heartbeat periods)")
    parser.add_argument("--json", action="store_true", help="print the state as one JSON object")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume alive)
    return True


def _from_state_file(results: Path) -> tuple[dict[str, Any], bool]:
    from ..daemon import read_state
    from ..errors import StmLiveError

    try:
        state = read_state(results)
    except FileNotFoundError:
        raise StmLiveError(
            f"no state file in {results}: no daemon has run with this results folder "
            "(give --results DIR, or --endpoint to ask a running daemon)"
        ) from None
    except ValueError as exc:
        raise StmLiveError(f"{results}: unreadable state file: {exc}") from None
    age = time.time() - float(state.get("t", 0.0))
    state["age_s"] = round(age, 3)
    running = state.get("state") in ("starting", "running", "stopping")
    if running and isinstance(state.get("pid"), int) and not _pid_alive(state["pid"]):
        state["state"] = "dead"
        running = False
    elif running and age > 3 * float(state.get("heartbeat_s", 2.0)) + 5.0:
        state["state"] = "not responding"
        running = False
    return state, running


def _from_heartbeat(endpoint: str, timeout_s: float, security: SecuritySection) -> tuple[dict[str, Any], bool]:
    import zmq

    from ..errors import StmLiveError, WireError
    from ..security import HandshakeWatch, secure_client
    from ..wire import decode_status

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    handshake = None
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"status")
        handshake = HandshakeWatch(sub, curve=secure_client(sub, security))
        try:
            sub.connect(endpoint)
        except zmq.ZMQError as exc:
            raise StmLiveError(f"--endpoint {endpoint}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if not sub.poll(int(min(remaining, 0.1) * 1000) + 1):
                failure = handshake.failure()
                if failure is not None:  # refused: waiting for the heartbeat would not help
                    raise StmLiveError(f"--endpoint {endpoint}: {failure}")
                continue
            try:
                msg = decode_status(sub.recv_multipart())
            except WireError:
                continue
            state = {
                "state": msg.state, "uptime_s": msg.uptime_s, "version": msg.version, "t": msg.t,
                "age_s": round(time.time() - msg.t, 3), "endpoints": {"publish": endpoint},
                "model": None if msg.model_id is None else {"id": msg.model_id, "name": msg.model_name},
                "counters": dict(msg.counters), "queues": dict(msg.queues),
            }
            return state, True
        return {"state": "no heartbeat", "endpoints": {"publish": endpoint}, "waited_s": timeout_s}, False
    finally:
        if handshake is not None:
            handshake.close()
        sub.close(linger=0)
        ctx.term()


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{seconds:.0f} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_state(state: dict[str, Any]) -> str:
    """The state as a few human-readable lines."""
    head = f"stm-live daemon: {state.get('state', 'unknown')}"
    extra = []
    if "pid" in state:
        extra.append(f"pid {state['pid']}")
    if "uptime_s" in state:
        extra.append(f"up {_duration(float(state['uptime_s']))}")
    if "version" in state:
        extra.append(f"stm-live {state['version']}")
    lines = [head + (f" ({', '.join(extra)})" if extra else "")]
    model = state.get("model")
    if model:
        lines.append(f"  model      {model.get('name')} [{model.get('id')}]")
    for name, ep in (state.get("endpoints") or {}).items():
        lines.append(f"  {name:<10} {ep or 'off'}")
    if state.get("results_dir"):
        lines.append(f"  results    {state['results_dir']}")
    if state.get("watch"):
        lines.append(f"  watching   {', '.join(state['watch'])}")
    if state.get("counters"):
        lines.append("  counters   " + ", ".join(f"{k} {v}" for k, v in state["counters"].items()))
    if state.get("queues"):
        lines.append("  queues     " + ", ".join(f"{k} {v}" for k, v in state["queues"].items()))
    if "age_s" in state:
        lines.append(f"  last update {_duration(max(0.0, float(state['age_s'])))} ago"
                     + (f" ({state['updated']})" if state.get("updated") else ""))
    if "waited_s" in state:
        lines.append(f"  no status heartbeat within {state['waited_s']:g} s: is the daemon running and "
                     "publishing there (publish.endpoint)?")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config

    config = load_config(args.config)
    if args.endpoint:
        timeout = args.timeout if args.timeout is not None else max(3.0 * config.publish.heartbeat_s, 1.0)
        state, running = _from_heartbeat(args.endpoint, timeout, config.security)
    else:
        results = args.results if args.results is not None else Path(config.results.dir)
        state, running = _from_state_file(results)
    print(json.dumps(state) if args.json else format_state(state), flush=True)
    return 0 if running else EXIT_NOT_RUNNING
