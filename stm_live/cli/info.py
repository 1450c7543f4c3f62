"""``stm-live info FILE...``: what is in a scan file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from ..errors import ScanReadError

HELP = "show size, channels, scan direction, bias, setpoint and completeness of scan files"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".sxm, .npy or .npz scan files")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file, one per line")
    parser.add_argument("--width-nm", type=float, help="physical width of array files (they store none)")
    parser.add_argument("--height-nm", type=float, help="physical height of array files (default: square pixels)")


def _num(value: float | None, fmt: str, unit: str) -> str:
    return "unknown" if value is None else f"{value:{fmt}} {unit}"


def format_summary(info: Mapping[str, Any]) -> str:
    """Human-readable form of :func:`stm_live.io.header_summary`."""
    channels = ", ".join(f"{c['name']} [{c['unit']}] ({'/'.join(c['directions'])})" for c in info["channels"])
    rows = [
        ("file", info["path"]),
        ("pixels", f"{info['cols']} x {info['rows']} (cols x rows)"),
        ("size", f"{info['width_nm']:.4g} x {info['height_nm']:.4g} nm"),
        ("channels", channels),
        ("scan direction", info["scan_direction"]),
        ("angle", _num(info["angle_deg"], ".4g", "deg")),
        ("bias", _num(info["bias_v"], ".4g", "V")),
        ("setpoint", _num(info["setpoint_a"], ".4g", "A")),
        ("rows valid", f"{info['rows_valid']} of {info['rows']}" + ("" if info["complete"] else " (partial scan)")),
        ("acquired", info["acquired"] or "unknown"),
        ("acquisition time", _num(info["acquisition_time_s"], ".4g", "s")),
    ]
    return "\n".join(f"{k:>17}: {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    from ..io import header_summary, read_scan

    status = 0
    for i, path in enumerate(args.files):
        try:
            info = header_summary(read_scan(path, width_nm=args.width_nm, height_nm=args.height_nm))
        except ScanReadError as exc:
            print(f"stm-live info: error: {exc}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            print(json.dumps(info))
        else:
            if i:
                print()
            print(format_summary(info))
    return status
