"""Latency through the bridge: a line enters the controller's buffer -> the line arrives where the daemon listens.

The virtual Nanonis controller runs in this process and records when each
forward line enters its buffer (``time.monotonic``); ``stm-live bridge
nanonis`` runs as a subprocess against it; a SUB socket bound where the
daemon's ingest would be receives the ``stm.line`` messages and records when
each arrives (same clock). The controller starts scanning only once the
bridge is connected, so bridge scan k is controller scan k.

Both ways the bridge can learn of new lines are measured: ``current``
(``Scan.WaitEndOfLine`` then one ``Scan.FrameDataGrab``) and ``legacy``
(``Scan.FrameDataGrab`` polled every ``bridge.poll_lines`` line times).

Usage::

    python benchmarks/bench_bridge.py --pixels 512 --line-time 0.02 --frames 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq

from stm_live.bridge.geometry import ScanFrame
from stm_live.bridge.nanonis.client import NanonisConnection
from stm_live.sim.controller import VirtualController
from stm_live.sim.sample import VirtualSample
from stm_live.wire import EndMessage, LineMessage, decode


def measure(layout: str, pixels: int, line_time: float, frames: int, poll_lines: float) -> dict[str, Any]:
    sample = VirtualSample(size_nm=200.0, seed=1, steps=2)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1_000_000)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    arrivals: dict[tuple[str, int], float] = {}
    ends: list[str] = []
    with VirtualController(sample, pixels=pixels, lines=pixels, line_time_s=line_time, layout=layout,
                           frame=ScanFrame((0.0, 0.0), 50e-9, 50e-9), autostart=False, continuous=True,
                           record_line_times=True) as vc:
        config = {"bridge": {"port": vc.port, "layout": layout, "poll_lines": poll_lines, "decisions": "off",
                             "control_endpoint": None, "scan_id_prefix": "bench", "wait_ms": 500},
                  "ingest": {"endpoint": f"tcp://127.0.0.1:{port}"}, "publish": {"endpoint": None},
                  "log": {"level": "WARNING"}}
        (tmp / "bridge.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("STM_LIVE_")}
        log = open(tmp / "bridge.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "stm_live", "-v", "bridge", "nanonis", "--config",
                                 str(tmp / "bridge.yaml")], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            # The bridge is there once it holds the lines port and its subscription reached us.
            deadline = time.monotonic() + 15
            while not vc.commands("Scan.FrameDataGrab" if layout == "legacy" else "Scan.WaitEndOfLine"):
                sub.poll(20)
                if time.monotonic() > deadline or proc.poll() is not None:
                    text = (tmp / "bridge.log").read_text()
                    raise RuntimeError(f"the bridge did not start (exit {proc.poll()}):\n{text}")
            for _ in range(50):
                sub.poll(20)
            with NanonisConnection("127.0.0.1", vc.port + 3) as c:  # the fourth port: the operator's
                c.call("Scan.Action", {"action": 0, "direction": 0})
            stop_after = time.monotonic() + frames * pixels * line_time * 1.5 + 30
            while len(ends) < frames and time.monotonic() < stop_after:
                if sub.poll(100):
                    parts = sub.recv_multipart()
                    t = time.monotonic()
                    msg = decode(parts)
                    if isinstance(msg, LineMessage):
                        arrivals[(msg.scan.scan_id, msg.row)] = t
                    elif isinstance(msg, EndMessage):
                        ends.append(msg.scan_id)
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
        produced = dict(vc.line_times or {})
    sub.close()
    ctx.term()
    ids = sorted({sid for sid, _ in arrivals})
    lat = []
    for k, sid in enumerate(ids[:frames], start=1):
        for row in range(pixels):
            if (sid, row) in arrivals and (k, row) in produced:
                lat.append(1000.0 * (arrivals[(sid, row)] - produced[(k, row)]))
    produced_n = sum(1 for (n, _r) in produced if n <= len(ids[:frames]))
    missing = sorted((k, row) for k, sid in enumerate(ids[:frames], start=1) for row in range(pixels)
                     if (k, row) in produced and (sid, row) not in arrivals)
    a = np.array(lat)
    return {
        "layout": layout, "pixels": pixels, "line_time_s": line_time, "frames": len(ids[:frames]),
        "poll_lines": poll_lines if layout == "legacy" else None,
        "lines_produced": produced_n, "lines_received": len(lat), "missing": missing[:20],
        "latency_ms": {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
                       "max": round(float(a.max()), 2), "min": round(float(a.min()), 2)} if a.size else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixels", type=int, default=512)
    p.add_argument("--line-time", type=float, default=0.02)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--poll-lines", type=float, default=4.0)
    p.add_argument("--layouts", nargs="+", default=["current", "legacy"])
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    out = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus",
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
           "runs": [measure(layout, a.pixels, a.line_time, a.frames, a.poll_lines) for layout in a.layouts]}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
