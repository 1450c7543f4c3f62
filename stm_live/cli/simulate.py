"""``stm-live simulate``: simulated STM scans with their ground truth.

Two ways out, chosen by the options (another, streaming over ZeroMQ, can be
added the same way: one more ``_run_*`` function and a branch in :func:`run`):

* files (default): ``--count`` scans, each ``<prefix><NNNN>.sxm`` plus its
  ``.truth.json`` and ``.mask.npy``, written at once into ``--out``;
* ``--paced``: the same scans appear in ``--out`` one per ``--frame-time``,
  each growing in ``--chunk-bytes`` chunks like a controller writes it; the
  sidecars go to ``--truth-dir`` (default ``OUT/truth``);
* ``--zmq ENDPOINT``: the Z forward image of each scan is streamed line by
  line to a daemon's ingest socket (protocol v1), one line per
  ``--line-time``; with ``--out`` the sidecars are written there too;
* ``--controller nanonis --port P``: a virtual Nanonis controller
  (:mod:`stm_live.sim.controller`) speaking the TCP protocol on P..P+3 and
  scanning windows of one ``--sample-nm`` sample, until Ctrl-C.

File ``k`` uses seed ``--seed + k``; same options, same bytes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..frame import Frame
    from ..sim.scan import SimulatedScan

HELP = "simulate STM scans with ground truth (.sxm + sidecars), at once or at the pace of a microscope"
DESCRIPTION = (
    "Simulate STM scans of Si(001):H with AsH3 (si001-ash3), Ge(001) (ge001) or TiO2(110) (tio2-110) with "
    "realistic instrument artefacts, and write each as .sxm (Z and Current, both directions) with a "
    "ground-truth sidecar (.truth.json: instances; .mask.npy: class mask). File k uses seed SEED + k."
)
log = logging.getLogger(__name__)

_SURFACES = ("si001-ash3", "ge001", "tio2-110")  # stm_live.sim.SURFACES, without importing numpy for --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to simulate")
    what.add_argument("--surface", choices=_SURFACES, default="si001-ash3", help="surface (default si001-ash3)")
    what.add_argument("--count", type=int, default=1, metavar="N", help="number of scans (default 1)")
    what.add_argument("--size-nm", type=float, default=50.0, metavar="NM", help="frame width = height, nm (50)")
    what.add_argument("--pixels", type=int, default=512, metavar="PX", help="pixels per side (512)")
    what.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first scan (0); scan k: S + k")
    what.add_argument("--bias-v", type=float, metavar="V", help="sample bias, V (default: the surface's usual)")
    what.add_argument("--artefacts", choices=("realistic", "none"), default="realistic",
                      help="instrument artefacts (default realistic)")
    what.add_argument("--steps", type=int, metavar="N", help="atomic steps per frame (default: random 0-2)")
    what.add_argument("--row-angle-deg", type=float, metavar="DEG", help="row direction (default: random)")
    what.add_argument("--density-scale", type=float, default=1.0, metavar="F",
                      help="multiply every feature density (1.0)")
    what.add_argument("--scan-direction", choices=("down", "up"), default="down", help="slow-scan direction (down)")
    out = parser.add_argument_group("where to")
    out.add_argument("--out", type=Path, metavar="DIR", help="output folder (created if needed)")
    out.add_argument("--prefix", metavar="TEXT", help="file name prefix (default: SURFACE_)")
    paced = parser.add_argument_group("paced folder mode (a stand-in microscope for the watcher and the demo)")
    paced.add_argument("--paced", action="store_true", help="write one file per --frame-time, in chunks")
    paced.add_argument("--frame-time", type=float, default=2.0, metavar="S", help="seconds per frame (2.0)")
    paced.add_argument("--chunk-bytes", type=int, default=65536, metavar="N", help="bytes per write (65536)")
    paced.add_argument("--chunk-interval", type=float, default=0.02, metavar="S",
                       help="pause between chunks, s (0.02)")
    paced.add_argument("--truth-dir", type=Path, metavar="DIR", help="sidecar folder in paced mode (OUT/truth)")
    stream = parser.add_argument_group("stream mode (a stand-in microscope controller over ZeroMQ)")
    stream.add_argument("--zmq", metavar="ENDPOINT", help="stream scan lines to this daemon ingest endpoint")
    stream.add_argument("--line-time", type=float, default=0.05, metavar="S", help="seconds per line (0.05)")
    stream.add_argument("--wait-s", type=float, default=30.0, metavar="S",
                        help="how long to wait for the daemon to subscribe (30)")
    stream.add_argument("--config", type=Path, metavar="PATH",
                        help="configuration whose security section holds this client's CURVE keys "
                             "(default: $STM_LIVE_CONFIG, else ./config.yaml)")
    ctl = parser.add_argument_group("virtual controller mode (a stand-in Nanonis controller for the bridge)")
    ctl.add_argument("--controller", choices=("nanonis",), help="serve the controller's TCP protocol on --port..+3")
    ctl.add_argument("--port", type=int, default=6501, metavar="P", help="first TCP port (6501)")
    ctl.add_argument("--host", default="127.0.0.1", metavar="HOST", help="interface to listen on (127.0.0.1)")
    ctl.add_argument("--layout", choices=("current", "legacy"), default="current",
                     help="protocol layout answered (current; legacy has no Scan.WaitEndOfLine)")
    ctl.add_argument("--sample-nm", type=float, default=300.0, metavar="NM", help="side of the sample, nm (300)")
    ctl.add_argument("--drift-nm-per-line", type=float, default=0.002, metavar="NM", help="drift per line (0.002)")
    ctl.add_argument("--tip-change-per-line", type=float, default=0.0005, metavar="P",
                     help="chance of a spontaneous tip change per line (0.0005)")
    ctl.add_argument("--restore-chance", type=float, default=0.8, metavar="P",
                     help="chance that a bias pulse restores a changed tip (0.8)")
    ctl.add_argument("--fault", action="append", default=[], metavar="CMD:KIND[:COUNT[:AFTER]]",
                     help="inject a fault: KIND error, drop or delay; CMD a command or '*' (repeatable)")


def _check(args: argparse.Namespace) -> None:
    problems = []
    if args.count < 1:
        problems.append(f"--count must be at least 1, got {args.count}")
    if not 8 <= args.pixels <= 8192:
        problems.append(f"--pixels must be within 8..8192, got {args.pixels}")
    if not args.size_nm > 0:
        problems.append(f"--size-nm must be a positive length, got {args.size_nm}")
    if args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if args.paced and (args.frame_time < 0 or args.chunk_bytes < 1 or args.chunk_interval < 0):
        problems.append("--frame-time and --chunk-interval must be >= 0 and --chunk-bytes >= 1")
    if args.zmq and not (args.line_time >= 0 and args.wait_s > 0):
        problems.append("--line-time must be >= 0 and --wait-s > 0")
    if args.controller and not (0 < args.port <= 65532 and args.line_time > 0 and args.sample_nm > args.size_nm):
        problems.append("--port must be within 1..65532, --line-time > 0 and --sample-nm larger than --size-nm")
    if args.out is None and not args.zmq and not args.controller:
        problems.append("--out DIR is required (or --zmq ENDPOINT, or --controller nanonis)")
    if problems:
        raise ConfigError("; ".join(problems))


def _scans(args: argparse.Namespace) -> Iterator[tuple[str, SimulatedScan]]:
    from ..sim import Artefacts, simulate_scan

    artefacts = Artefacts.realistic() if args.artefacts == "realistic" else Artefacts.none()
    prefix = f"{args.surface}_" if args.prefix is None else args.prefix
    for k in range(args.count):
        try:
            scan = simulate_scan(
                args.surface, size_nm=args.size_nm, pixels=args.pixels, seed=args.seed + k, artefacts=artefacts,
                bias_v=args.bias_v, density_scale=args.density_scale, steps=args.steps,
                row_angle_deg=args.row_angle_deg, scan_direction=args.scan_direction,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        yield f"{prefix}{k:04d}", scan


def _run_files(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..sim.truth import write_simulated

    for stem, scan in tqdm(_scans(args), total=args.count, unit="scan", disable=not sys.stderr.isatty()):
        sxm, _, _ = write_simulated(scan, args.out, stem)
        log.debug("wrote %s (%d features)", sxm, len(scan.instances))
    log.info("wrote %d simulated %s scan(s) with ground truth to %s", args.count, args.surface, args.out)
    return 0


def _run_paced(args: argparse.Namespace) -> int:
    from ..sim.paced import write_paced

    log.info("paced: one %s scan every %.3g s into %s", args.surface, args.frame_time, args.out)
    write_paced(_scans(args), args.out, frame_time_s=args.frame_time, chunk_bytes=args.chunk_bytes,
                chunk_interval_s=args.chunk_interval, truth_dir=args.truth_dir)
    return 0


def _run_zmq(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..sim.stream import LineStreamer
    from ..sim.truth import write_truth

    security = load_config(args.config).security

    def frames() -> Iterator[tuple[str, Frame]]:
        for stem, scan in _scans(args):
            if args.out is not None:
                write_truth(scan, args.out, stem)
            yield stem, scan.frame("Z", "forward")

    log.info("streaming %d %s scan(s) to %s, %.3g s per line", args.count, args.surface, args.zmq, args.line_time)
    with LineStreamer(args.zmq, connect_timeout_s=args.wait_s, security=security) as streamer:
        try:
            streamer.stream(frames(), line_time_s=args.line_time)
        except (TimeoutError, ConnectionRefusedError) as exc:
            raise ConfigError(str(exc)) from None
    return 0


def _run_controller(args: argparse.Namespace) -> int:
    import threading

    from ..bridge.geometry import ScanFrame
    from ..sim.controller import VirtualController, parse_fault
    from ..sim.sample import VirtualSample

    try:
        faults = [parse_fault(f) for f in args.fault]
        sample = VirtualSample(args.surface, size_nm=args.sample_nm, seed=args.seed,
                               density_scale=args.density_scale)
        controller = VirtualController(
            sample, host=args.host, port=args.port, layout=args.layout, pixels=args.pixels, lines=args.pixels,
            frame=ScanFrame((0.0, 0.0), args.size_nm * 1e-9, args.size_nm * 1e-9), line_time_s=args.line_time,
            drift_nm_per_line=args.drift_nm_per_line, tip_change_per_line=args.tip_change_per_line,
            restore_chance=args.restore_chance, faults=faults, seed=args.seed,
            scan_up=args.scan_direction == "up")
    except (ValueError, OSError) as exc:
        raise ConfigError(f"virtual controller: {exc}") from None
    stop = threading.Event()
    with controller:
        log.info("virtual Nanonis controller: %s sample of %g nm, ports %s on %s; Ctrl-C to stop", args.surface,
                 args.sample_nm, ", ".join(map(str, controller.ports)), args.host)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("stopping the virtual controller")
    return 0


def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.controller:
        return _run_controller(args)
    if args.zmq:
        return _run_zmq(args)
    if args.paced:
        return _run_paced(args)
    return _run_files(args)
