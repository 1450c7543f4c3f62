"""The daemon, measured from outside: latencies, file throughput and memory over a long run.

Each measurement starts ``python -m stm_live run`` as a subprocess (its own
process and GIL, as in production) on random 127.0.0.1 ports, and talks to it
like a controller bridge and a subscriber would:

* ``latency``: ``--runs`` simulated Si(001)+AsH3 scans (512 x 512 px, 50 nm)
  streamed back to back, line by line at ``--line-time``, with every-line cadence. Per line: *client* latency
  from sending the line to receiving the first ``seg.partial`` that covers it
  (transport, queues, coalescing included), and the *daemon* latency, the
  ``latency_ms`` it reports (arrival to publication). Per scan: last line sent
  to ``seg.frame`` received, and the daemon's ``latency_ms`` of ``seg.frame``.
* ``files``: ``--files`` simulated 512 x 512 ``.sxm`` files moved at once into a
  watched folder; files per second from the move to the last stored result
  (completeness check, hash, read, whole-frame segmentation, publication,
  durable store with overlay PNG).
* ``rss``: ``--frames`` small scans (``--pixels``, tiny model by default: the
  real one would take hours for 2,000 frames) streamed line by line; the
  daemon's resident memory sampled every 100 frames.

Results are medians / p50 / p99 over ``--runs`` runs; the machine, its CPU and
the load average before and after are printed with them.

Usage::

    python benchmarks/bench_daemon.py latency --model models/si001-ash3.onnx --runs 3 --line-time 0.02
    python benchmarks/bench_daemon.py files --model models/si001-ash3.onnx --files 40 --runs 3
    python benchmarks/bench_daemon.py rss --frames 2000 --pixels 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq

from stm_live.daemon import read_state
from stm_live.frame import Frame
from stm_live.sim import simulate_scan
from stm_live.sim.stream import LineStreamer, frame_messages
from stm_live.sim.truth import scan_file_bytes
from stm_live.wire import EndMessage, SegMessage, StatusMessage, decode, encode_end, encode_line

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# The daemon under test
# --------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} CPU(s), Python {platform.python_version()}"


def _load() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextmanager
def daemon(work: Path, model: Path | None, **settings: Any) -> Iterator[tuple[subprocess.Popen[bytes], dict]]:
    tree: dict[str, Any] = {
        "model": {"path": str(model)} if model else {},
        "results": {"dir": str(work / "results")},
        "ingest": {"endpoint": "tcp://127.0.0.1:*"},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "heartbeat_s": 0.5},
        "log": {"level": "WARNING"},
    }
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        tree.setdefault(section, {})[key] = value
    config = work / "bench.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STM_LIVE_")}
    log = open(work / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stm_live", "run", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(work / 'daemon.log').read_text()}")
            try:
                state = read_state(work / "results")
                if state.get("pid") == proc.pid and state.get("state") == "running":
                    break
            except (FileNotFoundError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not start")
            time.sleep(0.05)
        yield proc, state
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        log.close()


def _subscriber(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    # What a client of results takes: segmentations and heartbeats (not the levelled lines of level.line).
    sub.setsockopt(zmq.SUBSCRIBE, b"seg.")
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    while not isinstance(decode(sub.recv_multipart()), StatusMessage):  # subscribed once a heartbeat arrives
        pass
    return sub


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------


def _stream_and_listen(streamer: LineStreamer, sub: zmq.Socket[Any], scans: list[tuple[str, Frame]],
                       line_time: float) -> list[dict[str, Any]]:
    """Send the scans back to back, paced, receiving meanwhile; per-line latencies from the client's view.

    Like a microscope, the next scan starts right after the last line of the previous one,
    so its first lines arrive while the previous frame goes through the whole-frame path.
    """
    sent: dict[str, dict[int, float]] = {sid: {} for sid, _ in scans}
    order: dict[str, list[int]] = {sid: [] for sid, _ in scans}
    client: dict[str, list[float]] = {sid: [] for sid, _ in scans}
    daemon_side: dict[str, list[float]] = {sid: [] for sid, _ in scans}
    covered = dict.fromkeys(sent, 0)
    finals: dict[str, tuple[float, SegMessage]] = {}
    deadline = time.monotonic()

    def drain(wait_ms: int) -> None:
        while sub.poll(wait_ms):
            wait_ms = 0
            msg = decode(sub.recv_multipart())
            now = time.monotonic()
            if not isinstance(msg, SegMessage) or msg.scan_id not in sent:
                continue
            sid = msg.scan_id
            if msg.final:
                finals[sid] = (now, msg)
                continue
            daemon_side[sid].append(msg.latency_ms)
            while covered[sid] < min(msg.rows_done, len(order[sid])):
                client[sid].append((now - sent[sid][order[sid][covered[sid]]]) * 1e3)
                covered[sid] += 1

    for scan_id, frame in scans:
        for msg in frame_messages(frame, scan_id):
            if isinstance(msg, EndMessage):
                streamer.send(encode_end(msg))
                break
            while (wait := deadline - time.monotonic()) > 0:
                drain(max(1, int(wait * 1000)))
            deadline += line_time
            parts = encode_line(msg)
            sent[scan_id][msg.row] = time.monotonic()
            order[scan_id].append(msg.row)
            streamer.send(parts)
            drain(0)
    while len(finals) < len(scans):
        drain(1000)
    out = []
    for scan_id, _ in scans:
        now, seg = finals[scan_id]
        last_sent = sent[scan_id][order[scan_id][-1]]
        out.append({
            "partial_client_ms": client[scan_id], "partial_daemon_ms": daemon_side[scan_id],
            "final_client_ms": (now - last_sent) * 1e3, "final_daemon_ms": seg.latency_ms,
            "partials": len(daemon_side[scan_id]), "detections": len(seg.detections),
        })
    return out


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    settings = {"live.cadence_lines": 1, **dict(kv.split("=", 1) for kv in args.set)}
    settings = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in settings.items()}
    with tempfile.TemporaryDirectory() as tmp, daemon(Path(tmp), args.model, **settings) as (
        _, state
    ):
        ctx = zmq.Context()
        sub = _subscriber(ctx, state["endpoints"]["publish"])
        streamer = LineStreamer(state["endpoints"]["ingest"], context=ctx)
        streamer.wait_for_daemon()
        warm = simulate_scan("si001-ash3", size_nm=args.size_nm, pixels=args.pixels, seed=999).frame()
        _stream_and_listen(streamer, sub, [("warm-up", warm)], 0.0)
        scans = [(f"latency-{k}", simulate_scan("si001-ash3", size_nm=args.size_nm, pixels=args.pixels,
                                                seed=100 + k).frame()) for k in range(args.runs)]
        runs = _stream_and_listen(streamer, sub, scans, args.line_time)
        for k, run in enumerate(runs):
            print(f"  scan {k}: partials {run['partials']}, client p50 {_pct(run['partial_client_ms'], 50):.2f} "
                  f"p99 {_pct(run['partial_client_ms'], 99):.2f} ms; daemon p50 "
                  f"{_pct(run['partial_daemon_ms'], 50):.2f} p99 {_pct(run['partial_daemon_ms'], 99):.2f} ms; "
                  f"seg.frame {run['final_client_ms']:.1f} ms (daemon {run['final_daemon_ms']:.1f}); "
                  f"{run['detections']} detections", flush=True)
        streamer.socket.close(linger=0)
        sub.close(linger=0)
        ctx.term()
    client = [v for r in runs for v in r["partial_client_ms"]]
    daemon_side = [v for r in runs for v in r["partial_daemon_ms"]]
    # Lines after the first 32 of a scan: past the overlap with the previous frame's whole-frame work.
    later = [v for r in runs for v in r["partial_client_ms"][32:]]
    return {
        "pixels": args.pixels, "line_time_s": args.line_time, "scans": args.runs,
        "partial_client_ms": {"p50": _pct(client, 50), "p99": _pct(client, 99), "max": max(client)},
        "partial_daemon_ms": {"p50": _pct(daemon_side, 50), "p99": _pct(daemon_side, 99), "max": max(daemon_side)},
        "partial_client_ms_after_line_32": {"p50": _pct(later, 50), "p99": _pct(later, 99), "max": max(later)},
        "partial_client_p99_per_scan_ms": [round(_pct(r["partial_client_ms"], 99), 2) for r in runs],
        "final_client_ms": {"median": _pct([r["final_client_ms"] for r in runs], 50),
                            "max": max(r["final_client_ms"] for r in runs)},
        "final_client_ms_per_scan": [round(r["final_client_ms"], 1) for r in runs],
        "final_daemon_ms": {"median": _pct([r["final_daemon_ms"] for r in runs], 50)},
        "partials_per_scan": [r["partials"] for r in runs],
    }


# --------------------------------------------------------------------------
# Files per second
# --------------------------------------------------------------------------


def bench_files(args: argparse.Namespace) -> dict[str, Any]:
    blobs = [scan_file_bytes(simulate_scan("si001-ash3", size_nm=args.size_nm, pixels=args.pixels, seed=200 + k))
             for k in range(args.files)]
    rates = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            staging, watch = work / "staging", work / "watch"
            staging.mkdir()
            watch.mkdir()
            for k, blob in enumerate(blobs):
                (staging / f"scan{k:04d}.sxm").write_bytes(blob)
            settings = {"watch.folders": [str(watch)], "results.overlay_png": args.overlay}
            with daemon(work, args.model, **settings) as (_, _state):
                t0 = time.monotonic()
                for path in staging.iterdir():
                    path.rename(watch / path.name)  # appears complete at once, as a finished copy
                processed = work / "results" / "processed.jsonl"
                while (processed.read_text().count("\n") if processed.exists() else 0) < args.files:
                    time.sleep(0.01)
                elapsed = time.monotonic() - t0
            rates.append(args.files / elapsed)
            print(f"  run {run}: {args.files} files in {elapsed:.2f} s: {rates[-1]:.1f} files/s", flush=True)
    return {"files": args.files, "pixels": args.pixels, "overlay_png": args.overlay, "runs": args.runs,
            "files_per_s": {"median": _pct(rates, 50), "min": min(rates), "max": max(rates)}}


# --------------------------------------------------------------------------
# RSS over many frames
# --------------------------------------------------------------------------


def bench_rss(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model
    work = Path(tempfile.mkdtemp())
    try:
        if model is None:
            sys.path.insert(0, str(REPO / "tests"))
            from tiny_models import write_tiny_model

            model = work / "tiny.onnx"
            write_tiny_model(model, nm_per_px=0.2)
        rng = np.random.default_rng(0)
        samples: list[tuple[int, int]] = []
        with daemon(work, model, **{"results.overlay_png": True}) as (proc, state):
            ctx = zmq.Context()
            sub = _subscriber(ctx, state["endpoints"]["publish"])
            streamer = LineStreamer(state["endpoints"]["ingest"], context=ctx)
            streamer.wait_for_daemon()
            t0 = time.monotonic()
            finals = 0
            for k in range(args.frames):
                data = rng.normal(0, 1e-11, (args.pixels, args.pixels)).astype(np.float32)
                frame = Frame(data, args.pixels * 0.1e-9, args.pixels * 0.1e-9)
                for msg in frame_messages(frame, f"rss-{k}"):
                    streamer.send(encode_end(msg) if isinstance(msg, EndMessage) else encode_line(msg))
                while sub.poll(0 if finals >= k - 8 else 5000):  # stay at most a few frames ahead
                    if isinstance(m := decode(sub.recv_multipart()), SegMessage) and m.final:
                        finals += 1
                if k % 100 == 0 or k == args.frames - 1:
                    samples.append((k, _rss_kib(proc.pid)))
                    print(f"  frame {k:5d}: RSS {samples[-1][1] / 1024:.1f} MiB", flush=True)
            while finals < args.frames and sub.poll(30_000):
                if isinstance(m := decode(sub.recv_multipart()), SegMessage) and m.final:
                    finals += 1
            samples.append((args.frames, _rss_kib(proc.pid)))
            elapsed = time.monotonic() - t0
            streamer.socket.close(linger=0)
            sub.close(linger=0)
            ctx.term()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rss = [kib / 1024 for _, kib in samples]
    settled = rss[len(rss) // 5:]  # after the first fifth (allocator warm-up)
    return {"frames": args.frames, "pixels": args.pixels, "model": str(args.model or "tiny test model"),
            "finals_received": finals, "elapsed_s": elapsed,
            "rss_mib": {"first": rss[0], "after_warmup_min": min(settled), "after_warmup_max": max(settled),
                        "last": rss[-1]},
            "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("latency", "files", "rss"))
    parser.add_argument("--model", type=Path, help="ONNX model (default: the bundled one; rss: a tiny test model)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pixels", type=int)
    parser.add_argument("--size-nm", type=float)
    parser.add_argument("--line-time", type=float, default=0.02)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--no-overlay", dest="overlay", action="store_false")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration setting of the daemon (latency), e.g. live.whole_frame_nice=0")
    args = parser.parse_args()
    args.pixels = args.pixels or (32 if args.what == "rss" else 512)
    args.size_nm = args.size_nm or args.pixels * 50.0 / 512
    machine, before = _machine(), _load()
    print(machine)
    print("before:", before, flush=True)
    result = {"latency": bench_latency, "files": bench_files, "rss": bench_rss}[args.what](args)
    after = _load()
    result.update(machine=machine, before=before, after=after)
    print("after: ", after)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
