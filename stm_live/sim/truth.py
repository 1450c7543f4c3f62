"""Simulated scans on disk: the ``.sxm`` file and its ground-truth sidecars.

For a scan written under the stem ``S``:

* ``S.sxm``: every frame (Z and Current, forward and backward), Nanonis format;
* ``S.truth.json``: surface, classes, seed, size, pixels, bias, artefact
  settings, every resolved parameter, what the artefacts did, and the
  instances as ``[{"class", "x_nm", "y_nm", "kind"}]``;
* ``S.mask.npy``: the uint8 class mask (0 background, ``k`` = ``classes[k-1]``).

Same scan, same bytes: nothing time-dependent is written.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScanReadError
from ..io import sxm_bytes
from .artefacts import Artefacts
from .scan import Instance, SimulatedScan

__all__ = ["TRUTH_FORMAT", "Truth", "read_truth", "scan_file_bytes", "truth_document", "write_simulated"]

#: ``format`` field of every ``.truth.json``; ``version`` changes when fields do.
TRUTH_FORMAT = "stm-live simulated ground truth"
TRUTH_VERSION = 1


@dataclass(frozen=True, eq=False)
class Truth:
    """The ground truth of one simulated file, as :func:`read_truth` reads it back."""

    surface: str
    classes: tuple[str, ...]
    seed: int
    size_nm: float
    pixels: int
    bias_v: float
    artefacts: Artefacts
    instances: tuple[Instance, ...]
    mask: np.ndarray
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    events: Mapping[str, Any] = field(default_factory=dict, repr=False)
    scan_path: Path | None = None

    def __post_init__(self) -> None:
        mask = np.ascontiguousarray(self.mask)
        mask.flags.writeable = False
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "params", types.MappingProxyType(dict(self.params)))
        object.__setattr__(self, "events", types.MappingProxyType(dict(self.events)))

    @property
    def nm_per_px(self) -> float:
        """Pixel pitch, nm."""
        return self.size_nm / self.pixels


def truth_document(scan: SimulatedScan, *, stem: str) -> dict[str, Any]:
    """The ``.truth.json`` content of ``scan`` saved as ``stem`` (a pure function)."""
    return {
        "format": TRUTH_FORMAT,
        "version": TRUTH_VERSION,
        "scan": f"{stem}.sxm",
        "mask": f"{stem}.mask.npy",
        "surface": scan.surface,
        "classes": list(scan.classes),
        "seed": scan.seed,
        "size_nm": scan.size_nm,
        "pixels": scan.pixels,
        "bias_v": scan.bias_v,
        "setpoint_a": scan.setpoint_a,
        "artefacts": scan.artefacts.to_dict(),
        "params": dict(scan.params),
        "events": dict(scan.events),
        "instances": [i.to_dict() for i in scan.instances],
    }


def scan_file_bytes(scan: SimulatedScan) -> bytes:
    """The ``.sxm`` file of ``scan``: all its frames, a comment naming the simulation."""
    comment = f"simulated by stm-live: surface {scan.surface}, seed {scan.seed}"
    return sxm_bytes(scan.frames, fields={"COMMENT": comment}, line_time_s=float(scan.params.get("line_time_s", 0.0)))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npy_bytes(mask: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(mask, dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()


def write_truth(scan: SimulatedScan, out_dir: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
    """Write only the sidecars ``stem.truth.json`` and ``stem.mask.npy`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.truth.json"
    mask_path = out / f"{stem}.mask.npy"
    _atomic_write(mask_path, _npy_bytes(scan.mask))
    _atomic_write(json_path, (json.dumps(truth_document(scan, stem=stem), indent=1, sort_keys=True) + "\n").encode())
    return json_path, mask_path


def write_simulated(scan: SimulatedScan, out_dir: str | os.PathLike[str], stem: str) -> tuple[Path, Path, Path]:
    """Write ``stem.sxm``, ``stem.truth.json`` and ``stem.mask.npy`` into ``out_dir``.

    Each file is written under a temporary name and renamed into place. The
    folder is created if needed.

    Returns
    -------
    tuple of Path
        ``(sxm, truth_json, mask_npy)``.
    """
    if not stem or "/" in stem or os.sep in stem:
        raise ValueError(f"write_simulated: stem must be a plain file name without folders, got {stem!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sxm = out / f"{stem}.sxm"
    _atomic_write(sxm, scan_file_bytes(scan))
    json_path, mask_path = write_truth(scan, out, stem)
    return sxm, json_path, mask_path


def _truth_json_path(path: Path) -> Path:
    name = path.name
    if name.endswith(".truth.json"):
        return path
    for suffix in (".sxm", ".mask.npy"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".truth.json")
    return path.with_name(name + ".truth.json")


def read_truth(path: str | os.PathLike[str], *, truth_dir: str | os.PathLike[str] | None = None) -> Truth:
    """Read the ground truth of a simulated file.

    Parameters
    ----------
    path : str or path-like
        The ``.sxm``, its ``.truth.json`` or ``.mask.npy``, or the stem.
    truth_dir : str or path-like, optional
        Folder holding the sidecars when it is not the file's own folder (the
        paced writer keeps them apart from the watched folder).

    Raises
    ------
    ScanReadError
        A sidecar is missing, not JSON, of another format, or its mask does
        not match it; the message names the file.
    """
    p = Path(path)
    json_path = _truth_json_path(p)
    if truth_dir is not None:
        json_path = Path(truth_dir) / json_path.name
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScanReadError(json_path, "ground-truth sidecar not found (written by `stm-live simulate`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScanReadError(json_path, f"cannot read the ground truth: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != TRUTH_FORMAT:
        raise ScanReadError(json_path, f"not a stm-live ground-truth file (format should be {TRUTH_FORMAT!r})")
    if doc.get("version") != TRUTH_VERSION:
        raise ScanReadError(json_path, f"ground-truth version {doc.get('version')!r}; this stm-live reads "
                                       f"version {TRUTH_VERSION}")
    mask_path = json_path.with_name(str(doc["mask"]))
    try:
        mask = np.load(mask_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ScanReadError(mask_path, f"cannot read the ground-truth mask: {exc}") from None
    pixels = int(doc["pixels"])
    if mask.dtype != np.uint8 or mask.shape != (pixels, pixels):
        raise ScanReadError(mask_path, f"mask is {mask.dtype} {mask.shape}; the truth file says uint8 "
                                       f"({pixels}, {pixels})")
    classes = tuple(str(c) for c in doc["classes"])
    if int(mask.max(initial=0)) > len(classes):
        raise ScanReadError(mask_path, f"mask value {int(mask.max())} but only {len(classes)} classes")
    instances = tuple(
        Instance(str(i["class"]), float(i["x_nm"]), float(i["y_nm"]), str(i.get("kind", ""))) for i in doc["instances"]
    )
    return Truth(
        surface=str(doc["surface"]),
        classes=classes,
        seed=int(doc["seed"]),
        size_nm=float(doc["size_nm"]),
        pixels=pixels,
        bias_v=float(doc["bias_v"]),
        artefacts=Artefacts.from_dict(doc["artefacts"]),
        instances=instances,
        mask=mask,
        params=doc.get("params", {}),
        events=doc.get("events", {}),
        scan_path=(p.parent if truth_dir is not None else json_path.parent) / str(doc["scan"]),
    )
