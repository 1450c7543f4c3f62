"""``stm-live bridge``: connect a microscope controller to the daemon, and steer a running bridge.

* ``stm-live bridge nanonis --host H --port P``: forward every scan line of a
  Nanonis controller into the daemon's ingest (protocol v1, with the scan's
  frame, bias and setpoint), and run decisions on the controller when
  automation is on (``bridge.automation``; off by default: a dry run);
* ``stm-live bridge pause`` / ``resume`` / ``status``: the operator's switch
  of a running bridge (``bridge.control_endpoint``).

The flags override the ``bridge:`` section of ``config.yaml``; see ``docs/bridge.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

HELP = "connect a Nanonis controller to the daemon (lines in, decisions out); pause/resume/status a running bridge"
DESCRIPTION = (
    "`stm-live bridge nanonis --host H --port P` forwards every new scan line of a Nanonis controller (TCP "
    "programming interface, ports P..P+2) into the daemon's ingest endpoint with its scan metadata, and executes "
    "decisions on the controller when automation is on (bridge.automation, off by default = dry run). "
    "`stm-live bridge pause|resume|status` talks to a running bridge (bridge.control_endpoint). See docs/bridge.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bridge_command", metavar="WHAT", required=True)
    n = sub.add_parser("nanonis", help="bridge a Nanonis controller", description=DESCRIPTION)
    n.add_argument("--config", type=Path, metavar="PATH",
                   help="configuration file (default: $STM_LIVE_CONFIG, else ./config.yaml)")
    n.add_argument("--host", metavar="HOST", help="controller address (bridge.host)")
    n.add_argument("--port", type=int, metavar="P", help="first TCP port; P..P+2 are used (bridge.port, 6501)")
    n.add_argument("--layout", choices=("current", "legacy"),
                   help="protocol layout of the controller's version (bridge.layout)")
    n.add_argument("--channel-index", type=int, metavar="N",
                   help="signal index of the Z channel (bridge.channel_index)")
    n.add_argument("--ingest", metavar="ENDPOINT", help="the daemon's ingest endpoint (ingest.endpoint)")
    n.add_argument("--publish", metavar="ENDPOINT", help="the daemon's publish endpoint (publish.endpoint)")
    n.add_argument("--control", metavar="ENDPOINT", help="operator control socket to bind (bridge.control_endpoint)")
    n.add_argument("--decisions", choices=("off", "local", "daemon"),
                   help="where decisions come from (bridge.decisions)")
    n.add_argument("--automation", action="store_true",
                   help="execute decisions on the controller (bridge.automation; default: dry run)")
    n.add_argument("--event-log", type=Path, metavar="PATH", help="JSON-lines log of every decision (bridge.event_log)")
    for name, text in (("pause", "stop executing decisions now (decisions still logged)"),
                       ("resume", "execute decisions again (after a pause, a failure or a manual change)"),
                       ("status", "print the bridge's automation state and counters")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", type=Path, metavar="PATH", help="configuration file (for bridge.control_endpoint)")
        p.add_argument("--control", metavar="ENDPOINT", help="the bridge's control endpoint (bridge.control_endpoint)")
        p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for an answer (5)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line values as dotted configuration keys (None: flag not given)."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    return {
        "bridge.host": get("host"),
        "bridge.port": get("port"),
        "bridge.layout": get("layout"),
        "bridge.channel_index": get("channel_index"),
        "bridge.control_endpoint": get("control"),
        "bridge.decisions": get("decisions"),
        "bridge.automation": True if get("automation") else None,
        "bridge.event_log": str(args.event_log.resolve()) if get("event_log") is not None else None,
        "ingest.endpoint": get("ingest"),
        "publish.endpoint": get("publish"),
    }


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import ConfigError

    config = load_config(args.config, overrides=overrides(args))
    if args.bridge_command == "nanonis":
        from ..bridge.service import BridgeService

        if not (getattr(args, "verbose", False) or getattr(args, "quiet", False)):
            logging.getLogger("stm_live").setLevel(config.log.level)
        return BridgeService(config).run()
    from ..bridge.link import operator_request

    endpoint = config.bridge.control_endpoint
    if endpoint is None:
        raise ConfigError("bridge.control_endpoint is null: the bridge has no control socket to talk to")
    state = operator_request(endpoint, args.bridge_command, timeout_s=args.timeout)
    state.pop("ok", None)
    print(json.dumps(state, indent=None if args.bridge_command != "status" else 1))
    return 0
