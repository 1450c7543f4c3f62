"""``stm-live quality``: is a frame good, bad, or did the tip change while it was scanned?"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

HELP = "judge frames: good, bad or tip_change (with the line of the change and the evidence)"
DESCRIPTION = (
    "Judge each scan: 'good', 'bad' (no clear lattice, too small) or 'tip_change' (an abrupt, lasting change "
    "across one line, or a line that breaks with the one before it), with the line of the change and the "
    "numbers behind the verdict. Reads .sxm (the channel and direction of input.channel / input.direction), "
    ".npy/.npz arrays and images (.png, .jpg, .tif: grey levels as heights, luminance of colour images); no "
    "physical size is needed. See docs/quality.md."
)
log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="scan files or images")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per file and line: source, verdict, tip_change_line, evidence")
    parser.add_argument("--channel", metavar="NAME", help="channel of .sxm files (default: input.channel, Z)")
    parser.add_argument("--direction", choices=("forward", "backward"),
                        help="direction of .sxm files (default: input.direction)")
    parser.add_argument("--config", type=Path, metavar="PATH", help="configuration file (for input.*)")
    parser.add_argument("--calibrate", type=Path, metavar="OUT",
                        help="the FILEs are frames known to be good (at least 20): write thresholds calibrated on "
                        "them to OUT (JSON) instead of judging; see docs/quality.md")
    parser.add_argument("--false-alarms", type=float, default=10.0, metavar="N",
                        help="with --calibrate: good frames per 100 that may be called tip_change (and as many bad); "
                        "default 10")
    parser.add_argument("--calibration", type=Path, metavar="PATH",
                        help="judge with the thresholds of a calibration file (from --calibrate)")


def _read(path: Path, channel: str, direction: str) -> Any:
    import numpy as np

    from ..errors import ScanReadError
    from ..io import read_scan

    if path.suffix.lower() in _IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                grey = im.convert("L") if im.mode not in ("I", "I;16", "F") else im.convert("F")
                return np.asarray(grey, dtype=np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise ScanReadError(path, f"cannot read image: {exc}") from None
    # Arrays need no physical size to be judged: any will do.
    scan = read_scan(path, width_nm=1.0)
    return scan.frame(channel, direction).data


def _calibrate(args: argparse.Namespace, channel: str, direction: str) -> int:
    from ..errors import StmLiveError
    from ..quality.calibrate import calibrate, write_calibration

    failed = 0

    def frames() -> Any:
        nonlocal failed
        for path in args.files:
            try:
                yield _read(path, channel, direction)
            except (StmLiveError, KeyError) as exc:
                failed += 1
                log.error("%s", str(exc) if isinstance(exc, StmLiveError) else f"{path}: {exc.args[0]}")

    result = calibrate(frames(), false_alarms_per_100=args.false_alarms)
    write_calibration(args.calibrate, result)
    print(f"wrote {args.calibrate}: tip_change above {result['tip_change']:.3f}, bad above {result['bad']:.3f} "
          f"(calibrated on {result['frames']} good frames for {result['false_alarms_per_100']:g} false alarms per "
          f"100; {result['skipped']} too small or flat, {failed} unreadable)")
    print(f"for config.yaml: decide.frame_quality_thresholds: {{tip_change: {result['tip_change']}, "
          f"bad: {result['bad']}}}")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import StmLiveError
    from ..quality.calibrate import read_calibration
    from ..quality.frame import judge_frame

    config = load_config(args.config)
    channel = args.channel or config.input.channel
    direction = args.direction or config.input.direction
    if args.calibrate and args.calibration:
        raise StmLiveError("--calibrate writes a calibration and --calibration judges with one: give one of them")
    if args.calibrate:
        return _calibrate(args, channel, direction)
    calibration = read_calibration(args.calibration) if args.calibration else None
    failed = 0
    for path in args.files:
        try:
            image = _read(path, channel, direction)
            verdict = judge_frame(image, calibration=calibration)
        except (StmLiveError, KeyError) as exc:
            failed += 1
            message = str(exc) if isinstance(exc, StmLiveError) else f"{path}: {exc.args[0]}"
            log.error("%s", message)
            if args.json:
                print(json.dumps({"source": str(path), "error": message}))
            continue
        if args.json:
            print(json.dumps({"source": str(path), **verdict.to_dict()}))
        else:
            line = f" at line {verdict.tip_change_line}" if verdict.tip_change_line is not None else ""
            why = "; ".join(verdict.evidence.get("reasons", [])) or "clear lattice, no abrupt change"
            print(f"{path}: {verdict.verdict}{line} ({why})")
        sys.stdout.flush()
    if failed:
        log.error("%d of %d file(s) could not be judged", failed, len(args.files))
        return 1
    return 0
