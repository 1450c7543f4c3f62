"""``stm-live demo``: the main job, end to end, on a simulated microscope.

Starts the daemon (bundled model, temporary endpoints on 127.0.0.1, a results
folder), streams simulated Si(001)+AsH3 scans into it line by line at the
pace of a microscope, prints what is found while the lines arrive, compares
each finished frame with the simulator's ground truth, and stops cleanly.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..frame import Detection, Frame
    from ..sim.scan import Instance
    from ..wire import SegMessage

HELP = "stream simulated Si(001)+AsH3 scans into the daemon and watch the detections appear (the main job)"
DESCRIPTION = (
    "The main job end to end: start the daemon with the bundled model on temporary endpoints, stream "
    "simulated Si(001)+AsH3 scans into it line by line like a microscope, print the features found while "
    "the lines arrive, check each finished frame against the simulator's ground truth, and write a result "
    "record, class map and overlay PNG per frame into the results folder."
)

_NEW_WITHIN_NM = 0.6  # a detection this close to one already shown (same class) is not new
_MATCH_NM = 0.5  # ground-truth matching distance (as stm-live evaluate)
_FINAL_WAIT_S = 30.0  # after the last line, how long to wait for the last frame's result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=1, metavar="N", help="scans to stream (1)")
    parser.add_argument("--line-time", type=float, default=0.06, metavar="S",
                        help="seconds per scan line (0.06: a 512-line frame in about 31 s)")
    parser.add_argument("--results", type=Path, default=Path("stm-live-demo"), metavar="DIR",
                        help="results folder (./stm-live-demo)")
    parser.add_argument("--pixels", type=int, default=512, metavar="PX", help="pixels per side (512)")
    parser.add_argument("--size-nm", type=float, default=50.0, metavar="NM", help="frame width = height, nm (50)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first scan (0)")
    parser.add_argument("--every", type=int, default=64, metavar="N", help="print a summary every N lines (64)")
    parser.add_argument("--model", metavar="PATH", help="ONNX model file or bundled model name (default: si001-ash3)")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="configuration file for the daemon's other settings (default: ./config.yaml if any)")
    parser.add_argument("--autonomous", action="store_true",
                        help="the closed loop instead: a virtual Nanonis controller, the bridge and the daemon's "
                             "rules (survey, zoom on AsH3, a tip change, a pulse, a rescan); --frames at least 5")
    parser.add_argument("--open", action="store_true", help="open the live page in the default browser")
    parser.add_argument("--page-port", type=int, default=0, metavar="N",
                        help="port of the live page (0, the default: any free port; the address is printed)")
    parser.add_argument("--keep-open", action="store_true",
                        help="keep the daemon and its page running after the last scan, until Ctrl+C (teach-in)")


def _check(args: argparse.Namespace) -> None:
    from ..errors import ConfigError

    problems = []
    if args.frames < 1:
        problems.append(f"--frames must be at least 1, got {args.frames}")
    if not args.line_time >= 0:
        problems.append(f"--line-time must be >= 0, got {args.line_time}")
    if not 16 <= args.pixels <= 4096:
        problems.append(f"--pixels must be within 16..4096, got {args.pixels}")
    if not args.size_nm > 0:
        problems.append(f"--size-nm must be positive, got {args.size_nm}")
    if args.every < 1:
        problems.append(f"--every must be at least 1, got {args.every}")
    if args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if problems:
        raise ConfigError("; ".join(problems))


class _Cancelled(Exception):
    """The demo was interrupted: the simulated microscope stops."""


def _counts(detections: tuple[Detection, ...], classes: tuple[str, ...]) -> str:
    counts = Counter(d.class_name for d in detections)
    return "  ".join(f"{c} {counts.get(c, 0)}" for c in classes)


class _Printer:
    """What the demo prints: a summary every ``every`` lines with the features new since the last one."""

    def __init__(self, every: int, truth: dict[str, tuple[Instance, ...]], out: Any = None) -> None:
        self.every = every
        self.truth = truth
        self.out = out
        self._next: dict[str, int] = {}
        self._shown: dict[str, list[tuple[str, float, float]]] = {}
        self.finals: list[SegMessage] = []

    def say(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def _new(self, scan_id: str, detections: tuple[Detection, ...]) -> list[Detection]:
        shown = self._shown.setdefault(scan_id, [])
        new = []
        for d in detections:
            if not any(c == d.class_name and (x - d.x_nm) ** 2 + (y - d.y_nm) ** 2 <= _NEW_WITHIN_NM**2
                       for c, x, y in shown):
                new.append(d)
                shown.append((d.class_name, d.x_nm, d.y_nm))
        return new

    def partial(self, msg: SegMessage) -> None:
        due = self._next.setdefault(msg.scan_id, self.every)
        if msg.rows_done < due:
            return
        self._next[msg.scan_id] = (msg.rows_done // self.every + 1) * self.every
        new = self._new(msg.scan_id, msg.detections)
        shown = ", ".join(f"{d.class_name} ({d.x_nm:.1f}, {d.y_nm:.1f})" for d in new[:4])
        more = f" and {len(new) - 4} more" if len(new) > 4 else ""
        self.say(f"  {msg.scan_id}  line {msg.rows_done:4d}/{msg.rows}  {_counts(msg.detections, msg.classes)}"
                 f"  | {msg.latency_ms:5.1f} ms" + (f"  | new: {shown}{more}" if new else ""))

    def final(self, msg: SegMessage) -> None:
        from ..model.evaluate import match_class

        self.finals.append(msg)
        state = "complete" if msg.complete else "incomplete"
        self.say(f"{msg.scan_id} finished ({state}, {msg.rows_done} lines): {len(msg.detections)} features, "
                 f"{_counts(msg.detections, msg.classes)}  (whole frame {msg.latency_ms:.0f} ms after its last line)")
        truth = self.truth.get(msg.scan_id)
        if not truth:
            return
        scores = []
        for name in msg.classes:
            true = [(t.x_nm, t.y_nm) for t in truth if t.class_name == name]
            if not true:
                continue
            found = [(d.x_nm, d.y_nm) for d in msg.detections if d.class_name == name]
            s = match_class(found, true, max_dist_nm=_MATCH_NM)
            scores.append(f"{name} {s.tp}/{len(true)} found, {s.fp} false")
        if scores:
            self.say(f"  against the simulator's ground truth (within {_MATCH_NM} nm): " + "; ".join(scores))


def _stream(args: argparse.Namespace, endpoint: str, security: Any, truth: dict[str, tuple[Instance, ...]],
            cancel: threading.Event, failure: list[BaseException]) -> None:
    """The simulated microscope (its own thread): simulate each scan, stream its lines."""
    from ..sim import simulate_scan
    from ..sim.stream import LineStreamer

    def frames() -> Iterator[tuple[str, Frame]]:
        for k in range(args.frames):
            scan = simulate_scan("si001-ash3", size_nm=args.size_nm, pixels=args.pixels, seed=args.seed + k)
            scan_id = f"demo-{args.seed + k:04d}"
            truth[scan_id] = scan.instances
            yield scan_id, scan.frame("Z", "forward")

    def sleep(seconds: float) -> None:
        if cancel.wait(seconds):
            raise _Cancelled

    try:
        with LineStreamer(endpoint, connect_timeout_s=30.0, sleep=sleep, security=security) as streamer:
            streamer.stream(frames(), line_time_s=args.line_time)
    except _Cancelled:
        pass
    except BaseException as exc:  # reported by the main thread
        failure.append(exc)


def _subscribed(daemon: Any, sub: Any, timeout_s: float) -> bool:
    """Heartbeat until ``sub`` hears one: then its subscription has reached the daemon (no sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        daemon.heartbeat()
        if sub.poll(100):
            sub.recv_multipart()
            return True
    return False


def run(args: argparse.Namespace) -> int:
    import zmq

    if getattr(args, "autonomous", False):
        from .demo_autonomous import run_autonomous

        _check(args)
        return run_autonomous(args)

    from ..config import load_config
    from ..errors import StmLiveError
    from ..security import secure_client
    from ..viewer.pages import daemon_with_page
    from ..wire import SegMessage, decode
    from .run import overrides

    _check(args)
    results = args.results.resolve()
    args.watch, args.ingest, args.publish = None, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"
    args.results = results
    settings = overrides(args)
    settings["watch.folders"] = []
    config = load_config(args.config, overrides=settings)
    if not getattr(args, "verbose", False):
        logging.getLogger("stm_live").setLevel(logging.WARNING)  # the demo's own lines say what happens

    daemon, page = daemon_with_page(config, port=args.page_port)
    if page is not None:
        page.start()
    try:
        daemon.start()
    except BaseException:
        if page is not None:
            page.close()
        raise
    truth: dict[str, tuple[Instance, ...]] = {}
    printer = _Printer(args.every, truth)
    cancel = threading.Event()
    failure: list[BaseException] = []
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    secure_client(sub, config.security)  # CURVE when the configuration has client keys
    microscope: threading.Thread | None = None
    interrupted = False
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"seg.")
        sub.setsockopt(zmq.SUBSCRIBE, b"status")
        assert daemon.publish_endpoint is not None and daemon.ingest_endpoint is not None
        sub.connect(daemon.publish_endpoint)
        if not _subscribed(daemon, sub, 10.0):
            raise StmLiveError(f"could not subscribe to the daemon's results at {daemon.publish_endpoint}")
        assert daemon.model is not None
        per_frame = args.pixels * args.line_time
        printer.say(
            f"stm-live demo: model {daemon.model.name} [{daemon.model.id}] ({', '.join(daemon.model.classes)})\n"
            f"  simulated microscope: {args.frames} Si(001)+AsH3 scan(s) of {args.pixels} x {args.pixels} px, "
            f"{args.size_nm:g} nm, {args.line_time:g} s per line (about {per_frame:.0f} s per frame)\n"
            f"  daemon: lines in on {daemon.ingest_endpoint}, results out on {daemon.publish_endpoint}\n"
            f"  results folder: {results}\n"
            + (f"  live page: {page.url}\n" if page is not None else "")
            + f"  every {args.every} lines: features so far per class | latency (line arrival to result) | new ones "
            "(x, y in nm from the top-left corner)"
        )
        microscope = threading.Thread(target=_stream, args=(args, daemon.ingest_endpoint, config.security, truth,
                                                            cancel, failure),
                                      name="stm-live-demo-microscope", daemon=True)
        microscope.start()
        if page is not None and args.open:
            import webbrowser

            webbrowser.open(page.url)
        quiet_since: float | None = None
        while len(printer.finals) < args.frames:
            if failure:
                raise StmLiveError(f"the simulated microscope failed: {failure[0]}")
            if sub.poll(200):
                msg = decode(sub.recv_multipart())
                if isinstance(msg, SegMessage):
                    (printer.final if msg.final else printer.partial)(msg)
                quiet_since = None
            elif not microscope.is_alive():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > _FINAL_WAIT_S:
                    printer.say(f"no result for {_FINAL_WAIT_S:.0f} s after the last line; stopping")
                    break
        if page is not None and args.keep_open:
            printer.say(f"the scans are done; the daemon and its page ({page.url}) stay up for teach-in: "
                        "Ctrl+C stops")
            daemon.wait()
    except KeyboardInterrupt:
        interrupted = True
        printer.say("interrupted: stopping the microscope and the daemon")
    finally:
        cancel.set()
        if microscope is not None:
            microscope.join(5.0)
        sub.close(linger=0)
        context.term()
        daemon.stop()
        daemon.close()
        if page is not None:
            page.close()
    overlays = sorted((results / "frames").glob("demo-*.png"), key=lambda p: p.stat().st_mtime)
    printer.say(f"results in {results}: frames/ (a .json record, .npy class map and .png overlay per frame), "
                "events.jsonl, processed.jsonl")
    for msg in printer.finals:
        match = [p for p in overlays if p.name.startswith(f"{msg.scan_id}-")]
        if match:
            printer.say(f"  overlay of {msg.scan_id}: {match[-1]}")
    if failure:
        raise StmLiveError(f"the simulated microscope failed: {failure[0]}")
    return 130 if interrupted else 0
