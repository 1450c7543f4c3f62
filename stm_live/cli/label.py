"""``stm-live label FILE``: label a scan on the page and adapt a model to it, no microscope needed."""

from __future__ import annotations

import argparse
import json
import logging
import webbrowser
from pathlib import Path

HELP = "open a scan (.sxm, .npy, or a stored result) on the page, click features, adapt a model"
DESCRIPTION = (
    "Serve the page with one frame on it, segmented by --model. Click features and name their class, or "
    "drag over background; each change adapts the model (prototypes, no training, seconds), shows the new "
    "result at once and writes a version (versions/vNNNN.json, replayable with stm-live adapt --replay) and "
    "its model (models/vNNNN.onnx) into --out. FILE may be a stored result record (results/frames/*.json) "
    "of a file the daemon processed."
)
log = logging.getLogger("stm_live.viewer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help=".sxm, .npy/.npz image, or a stored result .json")
    parser.add_argument("--model", default="si001-ash3", metavar="M",
                        help="model to start from (file or bundled name; default si001-ash3)")
    parser.add_argument("--out", type=Path, default=Path("stm-live-teach"), metavar="DIR",
                        help="folder for versions and models (./stm-live-teach)")
    parser.add_argument("--channel", default="Z")
    parser.add_argument("--direction", default="forward", choices=["forward", "backward"])
    parser.add_argument("--width-nm", type=float, metavar="W", help="physical width of an array image")
    parser.add_argument("--height-nm", type=float, metavar="H", help="physical height (default: square pixels)")
    parser.add_argument("--port", type=int, metavar="N", help="port of the page (viewer.port; 0: any free port)")
    parser.add_argument("--config", type=Path, metavar="PATH", help="configuration file (its viewer section)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")


def _image_path(path: Path) -> tuple[Path, dict[str, float | None]]:
    """The scan file of ``path``: itself, or the source of a stored result record."""
    from ..errors import ScanReadError

    if path.suffix.lower() != ".json":
        return path, {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScanReadError(path, f"not a readable result record: {exc}") from None
    source = record.get("source") if isinstance(record, dict) else None
    if not source or source == "zmq":
        raise ScanReadError(path, "a streamed scan's stored result keeps no image; open the scan's file, or "
                                  "label it on the daemon's page while it is in the session's strip")
    image = record.get("image") or {}
    return Path(source), {"width_nm": image.get("width_nm"), "height_nm": image.get("height_nm")}


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..io import read_frame
    from ..model.runtime import SegmentationModel
    from ..viewer import LabelPage
    from .segment import resolve_model_path

    config = load_config(args.config, overrides={"viewer.port": args.port})
    path, sizes = _image_path(args.file)
    frame = read_frame(path, channel=args.channel, direction=args.direction,
                       width_nm=args.width_nm or sizes.get("width_nm"),
                       height_nm=args.height_nm or sizes.get("height_nm"))
    model = SegmentationModel(resolve_model_path(args.model), provider=config.model.provider)
    if not model.has_head:
        from ..errors import ModelError

        raise ModelError(f"{model.path}: a bare encoder shows no result; label with a model (si001-ash3, ...) "
                         "or use stm-live adapt --model base-encoder")
    page = LabelPage(config, frame, path, model, args.out.resolve()).start()
    try:
        print(f"stm-live label: page on {page.url} ({path}, model {model.name} [{model.id}]); versions go to "
              f"{args.out}; Ctrl+C stops", flush=True)
        if args.open:
            webbrowser.open(page.url)
        page.wait()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
    latest = page.teach.latest
    if latest["current"]:
        v = latest["versions"][latest["current"] - 1]
        model_file = args.out / "models" / f"v{v['version']:04d}.onnx"
        print(f"model in use: {v['model_after']['name']} [{v['model_after']['id']}] ({model_file})")
    return 0
