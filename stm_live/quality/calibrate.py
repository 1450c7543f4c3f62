"""Frame-quality thresholds calibrated on a lab's own good frames.

The learned judgement (:mod:`.learned`) calls a tip change or a bad frame
above probability thresholds set for 10 false alarms per 100 *simulated*
good frames. A microscope's own good frames are usually cleaner than the
simulated ones (docs/quality.md), so those thresholds sit higher than they
need to. Given frames a person knows to be good, :func:`calibrate` sets each
threshold so that at most ``false_alarms_per_100`` of them are called
``tip_change`` (and as many of the rest ``bad``); nothing is fitted but these
two numbers, and nothing of the frames is kept.

``stm-live quality --calibrate OUT.json GOOD...`` writes one;
``stm-live quality --calibration OUT.json FILE...`` and
``decide.frame_quality_thresholds`` use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StmLiveError

__all__ = [
    "MIN_FRAMES",
    "CalibrationError",
    "calibrate",
    "model_fingerprint",
    "read_calibration",
    "write_calibration",
]

#: Fewer judged good frames than this give no calibration (a 10 % quantile of a handful is noise).
MIN_FRAMES = 20


class CalibrationError(StmLiveError):
    """A calibration that cannot be made or read."""


def model_fingerprint() -> str:
    """First 16 hex digits of the SHA-256 of the shipped learned model: a calibration holds for it only."""
    from .learned import MODEL

    return hashlib.sha256(json.dumps(MODEL, sort_keys=True).encode()).hexdigest()[:16]


def calibrate(images: Iterable[np.ndarray], *, false_alarms_per_100: float = 10.0) -> dict[str, Any]:
    """Thresholds of the learned judgement from frames known to be good.

    Frames too small or flat to judge are left out (and counted). The
    ``tip_change`` threshold is the ``1 - false_alarms_per_100 / 100``
    quantile of the frames' tip-change probabilities (one of them, so that at
    most that share of the frames lies above it); the ``bad`` one the same
    quantile of the bad probabilities of the frames not called tip_change.

    Raises
    ------
    CalibrationError
        Fewer than :data:`MIN_FRAMES` frames could be judged, or a rate
        outside 0..50 per 100.
    """
    from .frame import learned_probabilities

    if not 0 < false_alarms_per_100 <= 50:
        raise CalibrationError(f"false alarms per 100 good frames must be in (0, 50], got {false_alarms_per_100}")
    probs, skipped = [], 0
    for image in images:
        p = learned_probabilities(image)
        if p is None:
            skipped += 1
        else:
            probs.append(p)
    if len(probs) < MIN_FRAMES:
        raise CalibrationError(f"{len(probs)} good frame(s) could be judged ({skipped} too small or flat): "
                               f"a calibration needs at least {MIN_FRAMES}")
    q = 1.0 - false_alarms_per_100 / 100.0
    # "higher": a threshold that is one of the values, so that no more than the share lie above it
    tip = float(np.quantile([p["tip_change"] for p in probs], q, method="higher"))
    bad = float(np.quantile([p["bad"] for p in probs if p["tip_change"] <= tip], q, method="higher"))
    return {"tip_change": round(tip, 4), "bad": round(bad, 4), "frames": len(probs), "skipped": skipped,
            "false_alarms_per_100": false_alarms_per_100, "model": model_fingerprint()}


def check_thresholds(values: Mapping[str, Any], source: str) -> dict[str, float]:
    """``{"tip_change", "bad"}`` as probabilities strictly between 0 and 1, or a CalibrationError naming ``source``."""
    out = {}
    for key in ("tip_change", "bad"):
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) < 1:
            raise CalibrationError(f"{source}: {key!r} must be a probability between 0 and 1, got {value!r}")
        out[key] = float(value)
    return out


def write_calibration(path: str | Path, calibration: Mapping[str, Any]) -> Path:
    """Write a calibration (from :func:`calibrate`) as JSON."""
    path = Path(path)
    path.write_text(json.dumps(dict(calibration), indent=1) + "\n")
    return path


def read_calibration(path: str | Path) -> dict[str, float]:
    """The thresholds of a calibration file, checked: they must be for the shipped learned model.

    Raises
    ------
    CalibrationError
        Missing or unreadable file, bad numbers, or a calibration of another
        version of the learned model (recalibrate: the probabilities changed).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration file") from None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a calibration file ({exc})") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: not a calibration file (expected a JSON object)")
    if data.get("model") != model_fingerprint():
        raise CalibrationError(f"{path}: made for quality model {data.get('model')!r}, this is "
                               f"{model_fingerprint()!r}: calibrate again (stm-live quality --calibrate)")
    return check_thresholds(data, str(path))
