"""The page, measured: line -> pixels on the page, and what browsers cost the daemon.

The daemon runs as ``python -m stm_live run`` (its own process, with its page on
a free port of 127.0.0.1); this script is the controller bridge (simulated
Si(001)+AsH3 scans, 512 x 512 px, 50 nm, streamed line by line at
``--line-time``, 0.05 s = 20 lines/s), a ZeroMQ subscriber and the browsers:

* ``pixels``: Debian's headless Chromium (Playwright) shows the page; for every
  line, the time from the bridge sending it to the page drawing it
  (``requestAnimationFrame`` after the row was put on the canvas; both clocks
  are this computer's wall clock). p50 / p99 per scan.
* ``clients``: the daemon's own ``seg.partial`` latency (``latency_ms``, line
  arrival to publication) with 0 and with ``--clients`` plain WebSocket clients
  (aiohttp, reading everything; no browser, so that rendering does not compete
  for the cores), alternating 0 / N for ``--runs`` scans each. p50 / p99 per
  scan and the ratio of the medians.

Usage::

    python benchmarks/bench_viewer.py pixels --runs 2
    python benchmarks/bench_viewer.py clients --runs 3 --clients 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq

from stm_live.daemon import read_state
from stm_live.model.runtime import bundled_model_path
from stm_live.sim import simulate_scan
from stm_live.sim.stream import LineStreamer
from stm_live.wire import SegMessage, decode

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def daemon(model: Path, folder: Path) -> Iterator[dict[str, Any]]:
    """``stm-live run`` with its page; yields its endpoints and the page's address."""
    web = _free_port()
    config = {
        "model": {"path": str(model), "provider": "cpu"},
        "results": {"dir": str(folder / "results"), "overlay_png": True},
        "ingest": {"endpoint": "tcp://127.0.0.1:*"},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "heartbeat_s": 1.0},
        "viewer": {"port": web},
        "log": {"level": "WARNING"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STM_LIVE_")}
    with open(folder / "daemon.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "stm_live", "run", "--config", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited: {(folder / 'daemon.log').read_text()}")
                with contextlib.suppress(FileNotFoundError, ValueError):
                    state = read_state(folder / "results")
                    if state.get("pid") == proc.pid and state.get("state") == "running":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start in 120 s")
                time.sleep(0.1)
            yield {"ingest": state["endpoints"]["ingest"], "publish": state["endpoints"]["publish"],
                   "page": f"http://127.0.0.1:{web}/"}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


class Subscriber:
    """Collects ``seg.partial`` latencies on a thread."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.sock = context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"seg.")
        self.sock.setsockopt(zmq.SUBSCRIBE, b"status")
        self.sock.connect(endpoint)
        self.partials: dict[str, list[float]] = {}
        self.finals: set[str] = set()
        self.heard = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(100):
                msg = decode(self.sock.recv_multipart())
                self.heard.set()
                if isinstance(msg, SegMessage):
                    if msg.final:
                        self.finals.add(msg.scan_id)
                    else:
                        self.partials.setdefault(msg.scan_id, []).append(msg.latency_ms)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


class WsClients:
    """``n`` plain WebSocket clients of the page that read everything (aiohttp, one thread)."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url.rstrip("/") + "/ws"
        self.n = n
        self.received = [0] * n
        self.connected = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        import aiohttp

        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(self.url, max_msg_size=0) for _ in range(self.n)]
            self.connected.set()

            async def read(i: int, ws: Any) -> None:
                async for msg in ws:
                    self.received[i] += len(msg.data)

            tasks = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(sockets)]
            await self._stop.wait()
            for ws in sockets:
                await ws.close()
            for t in tasks:
                t.cancel()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def _scan(seed: int) -> Any:
    return simulate_scan("si001-ash3", size_nm=50, pixels=512, seed=seed).frame("Z")


def _stream(endpoint: str, context: zmq.Context[Any], scan_id: str, seed: int, line_time: float,
            sent: dict[int, float] | None = None) -> None:
    def on_line(_scan: str, row: int) -> None:
        if sent is not None:
            sent[row] = time.time() * 1e3

    with LineStreamer(endpoint, context=context, connect_timeout_s=30) as streamer:
        streamer.stream([(scan_id, _scan(seed))], line_time_s=line_time, on_line=on_line)


def _wait(sub: Subscriber, scan_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while scan_id not in sub.finals:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no seg.frame for {scan_id} in {timeout:g} s")
        time.sleep(0.05)


def _pcts(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, float)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2),
            "p99": round(float(np.percentile(a, 99)), 2)}


def machine() -> dict[str, Any]:
    return {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load": [round(x, 2) for x in os.getloadavg()]}


def bench_pixels(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    runs = []
    context = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp, daemon(args.model, Path(tmp)) as ends, sync_playwright() as p:
        sub = Subscriber(context, ends["publish"])
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(ends["page"])
        page.wait_for_function("window.stmLive.snapshots >= 1")
        for k in range(args.runs):
            scan_id = f"px-{k}"
            sent: dict[int, float] = {}
            _stream(ends["ingest"], context, scan_id, k, args.line_time, sent)
            _wait(sub, scan_id)
            log = page.evaluate(f"window.stmLive.drawLog.filter(e => e.scan === '{scan_id}')")
            latency = [e["t"] - sent[e["row"]] for e in log if e["row"] in sent]
            received = [e["got"] - sent[e["row"]] for e in log if e["row"] in sent]
            runs.append({"scan": scan_id, "rows_drawn": len(log), "line_to_pixels_ms": _pcts(latency),
                         "line_to_page_ms": _pcts(received)})
            print(f"{scan_id}: {len(log)} rows drawn; line -> pixels p50 {runs[-1]['line_to_pixels_ms']['p50']} ms, "
                  f"p99 {runs[-1]['line_to_pixels_ms']['p99']} ms (line -> page "
                  f"{runs[-1]['line_to_page_ms']['p50']} / {runs[-1]['line_to_page_ms']['p99']} ms)", flush=True)
        browser.close()
        sub.close()
    context.term()
    return {"pixels": runs}


def bench_clients(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    context = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp, daemon(args.model, Path(tmp)) as ends:
        sub = Subscriber(context, ends["publish"])
        for k in range(2 * args.runs):
            n = 0 if k % 2 == 0 else args.clients
            clients = WsClients(ends["page"], n) if n else None
            if clients is not None and not clients.connected.wait(30):
                raise RuntimeError("the WebSocket clients did not connect")
            scan_id = f"cl-{k}"
            _stream(ends["ingest"], context, scan_id, k, args.line_time)
            _wait(sub, scan_id)
            got = sum(clients.received) if clients is not None else 0
            if clients is not None:
                clients.close()
            lat = _pcts(sub.partials.get(scan_id, []))
            runs.append({"scan": scan_id, "clients": n, "partial_latency_ms": lat, "bytes_to_clients": got})
            print(f"{scan_id}: {n} client(s): {lat['n']} partials, daemon latency p50 {lat['p50']} ms, "
                  f"p99 {lat['p99']} ms" + (f"; {got / n / 1e6:.1f} MB to each client" if n else ""), flush=True)
        sub.close()
    context.term()
    med = {n: float(np.median([r["partial_latency_ms"]["p50"] for r in runs if r["clients"] == n]))
           for n in (0, args.clients)}
    p99 = {n: float(np.median([r["partial_latency_ms"]["p99"] for r in runs if r["clients"] == n]))
           for n in (0, args.clients)}
    summary = {"median_p50_ms": med, "median_p99_ms": p99, "ratio_p50": round(med[args.clients] / med[0], 3),
               "ratio_p99": round(p99[args.clients] / p99[0], 3)}
    print(f"median of the scans' p50: {med[0]:.2f} ms with 0 clients, {med[args.clients]:.2f} ms with "
          f"{args.clients} (x{summary['ratio_p50']}); p99 {p99[0]:.2f} / {p99[args.clients]:.2f} ms "
          f"(x{summary['ratio_p99']})", flush=True)
    return {"clients": runs, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["pixels", "clients"])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the bundled si001-ash3)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--line-time", type=float, default=0.05, help="seconds per line (0.05 = 20 lines/s)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    args.model = args.model or bundled_model_path("si001-ash3")
    before = machine()
    result = bench_pixels(args) if args.what == "pixels" else bench_clients(args)
    out = {"what": args.what, "line_time_s": args.line_time, "model": str(args.model), "before": before,
           "after": machine(), **result}
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
