"""``stm-live level FILE``: level one image the way the daemon does; write ``.npy`` and/or ``.png``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import StmLiveError

HELP = "level one scan image (whole frame, or line by line as the daemon does) into .npy / .png"
DESCRIPTION = (
    "Level one image of a scan file and write it as float32 .npy (the channel's unit, display "
    "orientation, the input's pixel grid) and/or a quick-look .png. --mode stream feeds the rows one "
    "at a time, in scan order, through the streaming leveller, exactly as the daemon does while "
    "scanning; --mode frame levels the complete frame. Defaults come from the configuration's "
    "`level` section (--config, $STM_LIVE_CONFIG or ./config.yaml)."
)
log = logging.getLogger(__name__)

_METHODS = ("step-aware", "plane", "plane2", "flatten", "median", "median_diff", "poly", "matching")
_SUFFIXES = (".npy", ".png")


class OutputError(StmLiveError, OSError):
    """An output file cannot be written."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help=".sxm, .npy or .npz scan file")
    parser.add_argument(
        "--out", action="append", required=True, metavar="OUT",
        help="output file: .npy (levelled float32) or .png (quick look); may be given twice",
    )
    parser.add_argument("--channel", default="Z", help="channel to level (default: Z)")
    parser.add_argument("--direction", choices=("forward", "backward"), default="forward")
    parser.add_argument(
        "--mode", choices=("frame", "stream"), default="frame",
        help="frame: whole-frame levelling; stream: line by line in scan order (default: frame)",
    )
    parser.add_argument("--method", choices=_METHODS, help="whole-frame method (default: level.frame_method)")
    parser.add_argument(
        "--scars", action=argparse.BooleanOptionalAction, default=None,
        help="remove scars after whole-frame levelling (default: level.remove_scars)",
    )
    parser.add_argument("--colormap", choices=("grey", "afmhot"), default="afmhot", help="colours of the .png")
    parser.add_argument("--width-nm", type=float, help="physical width of array files (they store none)")
    parser.add_argument("--height-nm", type=float, help="physical height of array files (default: square pixels)")
    parser.add_argument("--config", metavar="PATH", help="configuration file for the `level` defaults")


def quicklook_rgb(image: Any, *, colormap: str = "afmhot") -> Any:
    """An 8-bit RGB rendering of ``image``, contrast from its 0.5 and 99.5 percentiles.

    Parameters
    ----------
    image : array_like
        ``(rows, cols)`` image; non-finite pixels are drawn black.
    colormap : {"grey", "afmhot"}
        Grey levels, or Gwyddion-like black-red-yellow-white.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` uint8.

    Examples
    --------
    >>> import numpy as np
    >>> rgb = quicklook_rgb(np.arange(6.0).reshape(2, 3), colormap="grey")
    >>> rgb.shape, rgb.dtype.name, int(rgb[0, 0, 0]), int(rgb[1, 2, 0])
    ((2, 3, 3), 'uint8', 0, 255)
    """
    import numpy as np

    z = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(z)
    t = np.zeros(z.shape)
    if finite.any():
        lo, hi = np.percentile(z[finite], [0.5, 99.5])
        if hi > lo:
            t = np.clip((np.where(finite, z, lo) - lo) / (hi - lo), 0.0, 1.0)
    if colormap == "grey":
        channels = [t, t, t]
    else:
        channels = [np.clip(2 * t, 0, 1), np.clip(2 * t - 0.5, 0, 1), np.clip(2 * t - 1, 0, 1)]
    rgb = np.rint(np.stack(channels, axis=-1) * 255).astype(np.uint8)
    rgb[~finite] = 0
    return rgb


def _check_outputs(outs: list[str]) -> list[Path]:
    paths = []
    for out in outs:
        path = Path(out)
        if path.suffix.lower() not in _SUFFIXES:
            raise OutputError(f"{out}: unsupported output type {path.suffix or '(none)'!r}; expected .npy or .png")
        if path.parent != Path("") and not path.parent.is_dir():
            raise OutputError(f"{out}: folder {str(path.parent)!r} does not exist")
        paths.append(path)
    return paths


def _write(path: Path, levelled: Any, colormap: str) -> None:
    import numpy as np
    from PIL import Image

    # Write beside the target and rename, so that a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix.lower() == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(levelled, dtype=np.float32), allow_pickle=False)
        else:
            Image.fromarray(quicklook_rgb(levelled, colormap=colormap), mode="RGB").save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def run(args: argparse.Namespace) -> int:
    import time

    from ..config import load_config
    from ..io import read_scan
    from ..level import level_frame, level_stream

    outs = _check_outputs(args.out)
    config = load_config(args.config).level
    frame = read_scan(args.file, width_nm=args.width_nm, height_nm=args.height_nm).frame(args.channel, args.direction)
    t0 = time.perf_counter()
    if args.mode == "stream":
        levelled = level_stream(
            frame.data,
            scan_direction=frame.scan_direction,
            reference_lines=config.stream_reference_lines,
            restore_slope_lines=config.stream_restore_slope_lines,
            restore_offset_lines=config.stream_restore_offset_lines,
            reject=config.stream_reject,
            anchor=config.stream_anchor,
        )
    else:
        levelled = level_frame(
            frame.data,
            method=args.method or config.frame_method,
            scars=config.remove_scars if args.scars is None else args.scars,
            reject=config.reject,
        )
    elapsed_ms = 1e3 * (time.perf_counter() - t0)
    log.info(
        "levelled %s %s/%s (%d x %d, %s) by %s in %.1f ms",
        args.file, frame.channel, frame.direction, frame.cols, frame.rows, frame.unit,
        "lines" if args.mode == "stream" else args.method or config.frame_method, elapsed_ms,
    )
    for path in outs:
        _write(path, levelled, args.colormap)
        print(f"wrote {path}")
    return 0
