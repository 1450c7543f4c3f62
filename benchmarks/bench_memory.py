"""The daemon's memory under hostile input, with a good live scan in the middle of each (issue 18).

Each scenario starts ``python -m stm_live run`` as a subprocess with the default limits and the
bundled model, sends the input below as a controller bridge would (or drops a file in its watched
folder), and in the middle streams a good 512 x 512 px Si(001) scan at ``--line-time`` per line.
Reported per scenario: the daemon's peak resident memory (``VmHWM``), the seconds from the live
scan's first line to its first ``seg.partial``, the longest gap between its partials, and whether
every input ended processed or reported (``processed.jsonl`` and ``events.jsonl``).

* ``survey``: a valid 64 x 64 px scan that claims 1 um, streamed (it used to take 7-9 GB);
* ``wide-file``: a 5 um / 512 px ``.sxm`` in the watched folder;
* ``frames``: eight 8192 x 8192 float32 frames (0.1 nm pixels, 256 MB each) sent as ``stm.frame``
  at once (eight such frames queued used to take 5.5 GB);
* ``flood``: 50,000 malformed messages as fast as they go.

Usage::

    python benchmarks/bench_memory.py                       # every scenario
    python benchmarks/bench_memory.py frames flood --line-time 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import _load, _machine, _subscriber, daemon

from stm_live.frame import Frame
from stm_live.io import write_sxm
from stm_live.sim import simulate_scan
from stm_live.sim.stream import LineStreamer
from stm_live.wire import FrameMessage, ScanInfo, SegMessage, decode, encode_frame

SCENARIOS = ("survey", "wide-file", "frames", "flood")


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Listener(threading.Thread):
    """Receives everything the daemon publishes; notes when the live scan's partials arrive."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sub = _subscriber(ctx, endpoint)
        self.partials: list[float] = []
        self.finals: dict[str, SegMessage] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sub.poll(100):
                continue
            msg = decode(self.sub.recv_multipart())
            if isinstance(msg, SegMessage):
                if msg.final:
                    self.finals[msg.scan_id] = msg
                elif msg.scan_id == "live":
                    self.partials.append(time.monotonic())


def _send_hostile(name: str, ctx: zmq.Context[Any], ingest: str, watch: Path, halfway: threading.Event) -> list[str]:
    """Send the scenario's input; return the scan ids that must end processed or reported."""
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 5000)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(ingest)
    time.sleep(0.5)  # the bridge's connect: a PUB needs the subscription to arrive (slow joiner)
    if name == "survey":
        data = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32) * 1e-10
        pub.send_multipart(encode_frame(FrameMessage(ScanInfo("survey", 64, 64, 1e-6, 1e-6), data)))
        ids = ["survey"]
    elif name == "wide-file":
        wide = Frame(np.random.default_rng(1).normal(size=(512, 512)) * 1e-10, 5e-6, 5e-6)
        write_sxm(watch / "wide.sxm", [wide])
        ids = ["wide"]
    elif name == "frames":
        base = np.random.default_rng(2).normal(size=(8192, 8192)).astype(np.float32) * 1e-11
        ids = []
        for n in range(8):
            info = ScanInfo(f"big{n}", 8192, 8192, 8192 * 0.1e-9, 8192 * 0.1e-9)
            base[0, 0] = n  # another content each time
            pub.send_multipart(encode_frame(FrameMessage(info, base)), copy=False)
            ids.append(f"big{n}")
            if n == 3:
                halfway.set()
    else:
        for n in range(50_000):
            pub.send_multipart([b"stm.line", b'{"v": 1, "scan_id": "junk"}', str(n).encode()])
            if n == 25_000:
                halfway.set()
        ids = []
    halfway.set()
    pub.close()
    return ids


def _live_scan(ingest: str, line_time: float, started: list[float]) -> None:
    scan = simulate_scan("si001-ash3", size_nm=50.0, pixels=512, seed=7).frame("Z", "forward")
    with LineStreamer(ingest, connect_timeout_s=30.0) as streamer:
        started.append(time.monotonic())
        streamer.stream([("live", scan)], line_time_s=line_time)


def _settled(results: Path, ids: list[str]) -> bool:
    processed = results / "processed.jsonl"
    done = set()
    if processed.exists():
        for line in processed.read_text().splitlines():
            record = json.loads((results / "frames" / json.loads(line)["result"]).read_text())
            done.add(record["scan_id"])
    events = results / "events.jsonl"
    refused = set()
    if events.exists():
        for line in events.read_text().splitlines():
            event = json.loads(line)
            if event["kind"] in ("bad_refused", "bad_message") and event.get("scan_id"):
                refused.add(event["scan_id"])
    return all(i in done | refused for i in ids) and "live" in done


def run_scenario(name: str, line_time: float, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"stm-live-mem-{name}-") as tmp:
        work = Path(tmp)
        watch = work / "watch"
        watch.mkdir()
        with daemon(work, None, **{"watch.folders": [str(watch)]}) as (proc, state):
            ctx = zmq.Context()
            listener = _Listener(ctx, state["endpoints"]["publish"])
            listener.start()
            started: list[float] = []
            t0 = time.monotonic()
            halfway = threading.Event()
            hostile = threading.Thread(target=lambda: ids.extend(
                _send_hostile(name, ctx, state["endpoints"]["ingest"], watch, halfway)))
            ids: list[str] = []
            hostile.start()
            halfway.wait()  # the live scan starts in the middle of the hostile input
            live = threading.Thread(target=_live_scan, args=(state["endpoints"]["ingest"], line_time, started))
            live.start()
            peak = 0.0
            while (hostile.is_alive() or live.is_alive() or not _settled(work / "results", ids)) \
                    and time.monotonic() - t0 < timeout_s:
                peak = max(peak, _peak_mb(proc.pid))
                time.sleep(0.5)
            settled = _settled(work / "results", ids)
            peak = max(peak, _peak_mb(proc.pid))
            listener.stop.set()
            listener.join()
            listener.sub.close()
            ctx.term()
            partials = listener.partials
            gaps = np.diff(partials) if len(partials) > 1 else np.array([float("nan")])
            return {
                "scenario": name, "peak_rss_mb": round(peak, 1),
                "first_partial_s": round(partials[0] - started[0], 2) if partials and started else None,
                "longest_gap_s": round(float(gaps.max()), 2), "partials": len(partials),
                "every_input_processed_or_reported": settled, "seconds": round(time.monotonic() - t0, 1),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--line-time", type=float, default=0.01, help="seconds per line of the live scan")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per scenario at most")
    args = parser.parse_args()
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    print(_machine())
    print(_load(), "(before)")
    for name in args.scenarios or SCENARIOS:
        print(json.dumps(run_scenario(name, args.line_time, args.timeout)), flush=True)
    print(_load(), "(after)")


if __name__ == "__main__":
    main()
