"""``stm-live view --connect``: the page for a daemon running elsewhere (its published results)."""

from __future__ import annotations

import argparse
import logging
import webbrowser
from pathlib import Path

HELP = "serve the live page for a daemon's published results (another process or computer)"
DESCRIPTION = (
    "Subscribe to a daemon's PUB socket (publish.endpoint) and serve the page: the scan growing line by "
    "line (level.line), the detections (seg.partial, seg.frame) and the daemon's status. The page reconnects "
    "by itself when the daemon restarts. Teach-in needs the daemon's own page (stm-live run). Bound to "
    "127.0.0.1 unless viewer.host says otherwise, which needs viewer.token (docs/viewer.md)."
)
log = logging.getLogger("stm_live.viewer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", required=True, metavar="ENDPOINT",
                        help="the daemon's publish endpoint, e.g. tcp://192.168.1.20:5556")
    parser.add_argument("--port", type=int, metavar="N", help="port of the page (viewer.port; 0: any free port)")
    parser.add_argument("--host", metavar="ADDR", help="address of the page (viewer.host)")
    parser.add_argument("--config", type=Path, metavar="PATH", help="configuration file (its viewer section)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import ConfigError
    from ..viewer import RemotePage

    if "://" not in args.connect:
        raise ConfigError(f"--connect {args.connect!r}: expected a ZeroMQ endpoint such as tcp://127.0.0.1:5556")
    config = load_config(args.config, overrides={"viewer.port": args.port, "viewer.host": args.host})
    page = RemotePage(config, args.connect).start()
    try:
        print(f"stm-live view: page on {page.url} (results of {args.connect}); Ctrl+C stops", flush=True)
        if args.open:
            webbrowser.open(page.url)
        page.wait()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
    return 0
