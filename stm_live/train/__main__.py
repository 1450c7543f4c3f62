"""``python -m stm_live.train``: the training process ``stm-live train`` starts with pinned numerics.

Reads a request (JSON on stdin: ``settings``, ``options``, ``log_level``), trains,
writes ``run_dir/report.json``; exit status 0, or 2 with one line on stderr for a
user mistake. Not meant to be run by hand: ``stm-live train`` builds the request.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import StmLiveError


def train_from_request(request: dict[str, Any]) -> dict[str, Any]:
    """Train as ``request`` says; return the report."""
    from .pipeline import train_models
    from .settings import TrainSettings

    settings = TrainSettings.model_validate(request["settings"])
    options = dict(request.get("options", {}))
    compare = {name: Path(p) for name, p in options.pop("compare", {}).items()}
    return train_models(settings, compare=compare, **options)


def main() -> int:
    request = json.loads(sys.stdin.read())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("stm_live")
    root.handlers[:] = [handler]
    root.setLevel(int(request.get("log_level") or logging.INFO))
    root.propagate = False
    try:
        train_from_request(request)
    except StmLiveError as exc:
        print(f"stm-live train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
