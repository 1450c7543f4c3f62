"""``stm-live demo --autonomous``: the closed loop on a virtual sample, visible in the console.

A virtual Nanonis controller scans windows of one large simulated Si(001)+AsH3
sample; the bridge forwards its lines to the daemon; the daemon segments them
and its rules (a ``decide`` sink) decide; the bridge executes the decisions on
the controller (automation on: this is a simulation). The story it shows:
survey frames until AsH3 is found, a zoom that re-centres on it, a tip change
(forced after the zoom, so that the story always gets there) seen line by
line, a bias pulse that restores the tip, and the rescan.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["RULES", "run_autonomous"]

#: The demo's rules (docs/bridge.md): a tip change first, then the zoom, else the next survey frame.
RULES: dict[str, Any] = {
    "rules": [
        {"name": "tip-change", "action": "pulse", "when": [{"tip_change": {}}],
         "params": {"bias_v": 3.0, "width_s": 0.05, "rescan": True}, "cooldown_s": 5},
        {"name": "zoom-on-AsH3", "action": "zoom",
         "when": [{"count": {"class": "AsH3", "min": 1}}, {"fraction_scanned": {"min": 1.0}}],
         "params": {"target": "AsH3", "width_nm": 12}, "cooldown_s": 3600},
        {"name": "survey", "action": "survey",
         "when": [{"count": {"class": "AsH3", "max": 0}}, {"fraction_scanned": {"min": 1.0}}],
         "params": {"grid": {"centre_nm": [0, 0], "cols": 3, "rows": 3, "step_nm": 40, "width_nm": 36}}},
    ],
    "limits": {"max_offset_nm": 200, "max_step_nm": 120, "min_range_nm": 5, "max_range_nm": 60,
               "max_pulse_v": 4.0, "max_pulse_s": 0.1},
}


def run_autonomous(args: argparse.Namespace) -> int:
    """Run the loop for ``args.frames`` frames (at least 5); return the exit status."""
    import zmq

    from ..bridge.geometry import ScanFrame
    from ..bridge.service import BridgeService
    from ..config import load_config
    from ..daemon import Daemon
    from ..sim.controller import VirtualController
    from ..sim.sample import VirtualSample
    from ..wire import DecisionMessage, SegMessage, decode

    say = print
    if not getattr(args, "verbose", False):
        logging.getLogger("stm_live").setLevel(logging.WARNING)
    results = Path(args.results).resolve()
    frames = max(5, int(args.frames))
    sample = VirtualSample("si001-ash3", size_nm=260.0, seed=args.seed)
    survey = ScanFrame((-40e-9, -40e-9), 36e-9, 36e-9, 0.0)
    with VirtualController(sample, pixels=args.pixels, lines=args.pixels, line_time_s=args.line_time,
                           frame=survey, drift_nm_per_line=0.001, tip_change_per_line=0.0,
                           seed=args.seed) as controller:
        config = load_config(args.config, overrides={
            "results.dir": str(results), "ingest.endpoint": "tcp://127.0.0.1:*",
            "publish.endpoint": "tcp://127.0.0.1:*", "watch.folders": [], "decide.rules": RULES["rules"],
            "decide.limits": RULES["limits"], "live.cadence_lines": 8,
            **({"model.path": args.model} if args.model else {}),
        })
        daemon = Daemon(config)
        daemon.start()
        assert daemon.ingest_endpoint is not None and daemon.publish_endpoint is not None
        bridge_config = load_config(args.config, overrides={
            "bridge.port": controller.port, "bridge.decisions": "daemon", "bridge.automation": True,
            "bridge.control_endpoint": None, "bridge.scan_id_prefix": "auto", "bridge.wait_ms": 200,
            "ingest.endpoint": daemon.ingest_endpoint, "publish.endpoint": daemon.publish_endpoint,
            "decide.rules": RULES["rules"], "decide.limits": RULES["limits"],
        })
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for topic in (b"seg.frame", b"decision"):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(daemon.publish_endpoint)
        bridge = BridgeService(bridge_config, context=context)
        say(f"stm-live demo --autonomous: a virtual Nanonis controller on 127.0.0.1:{controller.port} scans a "
            f"{sample.size_nm:g} nm Si(001)+AsH3 sample; the bridge forwards its lines to the daemon ("
            f"{daemon.model.name if daemon.model else '?'}), whose rules decide; the bridge executes (automation on)")
        say("  rules: " + "; ".join(f"{r['name']} -> {r['action']}" for r in RULES["rules"]))
        bridge.start()
        finals = 0
        zoomed = pulsed = False
        forced_at: float | None = None
        deadline = time.monotonic() + frames * (args.pixels * args.line_time + 15.0) + 60.0
        try:
            while finals < frames and time.monotonic() < deadline:
                if not sub.poll(200):
                    continue
                msg = decode(sub.recv_multipart())
                if isinstance(msg, SegMessage) and msg.final:
                    finals += 1
                    counts: dict[str, int] = {}
                    for d in msg.detections:
                        counts[d.class_name] = counts.get(d.class_name, 0) + 1
                    where = msg.position or {}
                    centre = where.get("centre_m") or [0.0, 0.0]
                    say(f"  frame {finals} {msg.scan_id}: {msg.width_m * 1e9:.0f} nm at ({centre[0] * 1e9:.1f}, "
                        f"{centre[1] * 1e9:.1f}) nm: " + (", ".join(f"{n} {c}" for c, n in counts.items())
                                                           or "nothing found"))
                    if zoomed and forced_at is None:
                        # The story needs one: the tip changes halfway through the next frame.
                        forced_at = time.monotonic()
                        timer = threading.Timer(0.5 * args.pixels * args.line_time, controller.force_tip_change)
                        timer.daemon = True
                        timer.start()
                        say("  (the virtual tip will change halfway through the next frame)")
                elif isinstance(msg, DecisionMessage):
                    params = {k: v for k, v in msg.params.items() if k in ("x_nm", "y_nm", "width_nm", "bias_v")}
                    say(f"  decision: {msg.rule} -> {msg.action} {params or ''} ({msg.reason})")
                    zoomed = zoomed or msg.action == "zoom"
                    pulsed = pulsed or msg.action == "pulse"
        except KeyboardInterrupt:
            say("interrupted")
        finally:
            bridge.close()
            sub.close(linger=0)
            daemon.stop()
            daemon.close()
            context.term()
        sent = [c.name for c in controller.commands() if c.name in ("Scan.FrameSet", "Bias.Pulse", "Scan.Action")]
    say(f"controller commands sent by the bridge: {', '.join(sent) or 'none'}")
    say(f"results in {results} (events.jsonl has every decision)")
    return 0 if (zoomed and pulsed) or finals >= frames else 1
