"""``stm-live train`` end to end: data, training, calibration, export, report.

Outputs, in ``settings.out_dir``:

* ``<surface>.onnx`` for every trained surface with ``export`` on: the shared
  encoder with that surface's trained prototypes, temperature calibrated on
  validation frames, detection thresholds calibrated on other frames;
* ``base-encoder.onnx``: the encoder alone, the starting point of
  ``stm-live adapt`` for a new surface;

and in ``settings.run_dir``: ``checkpoint.pt`` (resumable), the cached data
sets and ``report.json`` (settings, data hash, losses, validation metrics).
Paths in the report are relative to its folder, so that it says nothing about
the machine it was made on.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..model.format import ModelInfo, Prototypes
from ..model.prepare import DEFAULT_LEVELLING
from ..model.prototypes import fit_temperature
from .data import PreparedSet, build_sets
from .export import export_model
from .fit import IGNORE, TrainState, fit, summarise
from .net import Encoder, receptive_field_px
from .settings import SurfaceSettings, TrainSettings

__all__ = ["held_out_geometry", "portable_settings", "relative_to", "train_models"]

log = logging.getLogger(__name__)


def _val_embeddings(
    encoder: Encoder, data: PreparedSet, surface: int, limit: int = 6000
) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced sample of validation pixels' embeddings and labels for one surface."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    with torch.no_grad():
        for i in np.flatnonzero(data.surface == surface):
            e = encoder(torch.from_numpy(data.images[i])[None, None])[0].numpy()
            xs.append(e.reshape(e.shape[0], -1).T)
            ys.append(data.masks[i].reshape(-1))
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = []
    for k in np.unique(y):
        if k == IGNORE:  # no label (reacted areas of frames with realism)
            continue
        idx = np.flatnonzero(y == k)
        keep.append(idx if len(idx) <= limit else rng.choice(idx, limit, replace=False))
    sel = np.concatenate(keep)
    return x[sel], y[sel].astype(np.int64)


def _surface_prototypes(state: TrainState, val: PreparedSet, name: str) -> Prototypes:
    s = state.bank.surfaces.index(name)
    vectors = state.bank.vectors[s].detach().numpy().astype(np.float32)
    labels = tuple(int(v) for v in state.bank.labels(s))
    k = val.surfaces.index(name)
    x, y = _val_embeddings(state.encoder, val, k)
    temperature = fit_temperature(vectors, labels, x, y)
    return Prototypes(vectors, labels, temperature)


def train_models(
    settings: TrainSettings, *, progress: bool = True, evaluate_frames: int = 4, calibrate_frames: int = 24
) -> dict[str, Any]:
    """Train the encoder and export one model per surface plus the bare encoder.

    After export, each surface model's per-class detection thresholds are
    calibrated on ``calibrate_frames`` fresh validation frames, then its
    object F1 is measured on ``evaluate_frames`` other held-out frames.
    Returns the report (also written to ``run_dir/report.json``).
    """
    t0 = time.perf_counter()
    run_dir, out_dir = Path(settings.run_dir), Path(settings.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train, val = build_sets(settings, progress=progress)
    t_data = time.perf_counter() - t0
    unlabelled = _unlabelled_set(settings) if settings.unlabelled else None
    state = fit(settings, train, unlabelled=unlabelled, progress=progress)
    t_fit = time.perf_counter() - t0 - t_data
    training = {
        "data_hash": train.digest,
        "val_hash": val.digest,
        "seed": settings.seed,
        "steps": {"self_supervised": settings.ssl_steps, "supervised": settings.steps},
        "surfaces": list(train.surfaces),
        "frames": {s: len(train.of_surface(s)) for s in train.surfaces},
        "unlabelled_frames": 0 if unlabelled is None else len(unlabelled.images),
        "losses": summarise(state),
    }
    if settings.train_normalisation != settings.normalisation:
        training["normalisation"] = settings.train_normalisation
    encoder = state.encoder.eval()
    common: dict[str, Any] = {
        "embedding_dim": settings.dim,
        "context_px": receptive_field_px(),
        "normalisation": settings.normalisation,
        "levelling": DEFAULT_LEVELLING,
    }
    exported: dict[str, Any] = {}
    pitch = {s.name: s.nm_per_px for s in settings.surfaces}
    exports = tuple(s.name for s in settings.surfaces if s.export and s.name in train.surfaces)
    for name in exports:
        protos = _surface_prototypes(state, val, name)
        info = ModelInfo(
            name=name,
            classes=train.classes[name],
            nm_per_px=pitch[name],
            surface=name,
            provenance={"method": "trained prototypes (temperature calibrated on validation frames)"},
            training=training,
            **common,
        )
        path = out_dir / f"{name}.onnx"
        saved = export_model(encoder, info, path, prototypes=protos)
        exported[name] = {"path": str(path), "id": saved.id, "temperature": protos.temperature}
    if settings.export_base_encoder:
        base_pitch = pitch.get("si001-ash3", next(iter(pitch.values())))
        base_info = ModelInfo(name="base-encoder", classes=(), nm_per_px=base_pitch, surface=None,
                              provenance={"method": "encoder only; make a model with `stm-live adapt`"},
                              training=training, **common)
        saved = export_model(encoder, base_info, out_dir / "base-encoder.onnx")
        exported["base-encoder"] = {"path": str(out_dir / "base-encoder.onnx"), "id": saved.id}
    if calibrate_frames:
        _calibrate_exports(exported, settings, exports, calibrate_frames)
    metrics = _evaluate_exports(exported, settings, exports, evaluate_frames) if evaluate_frames else {}
    if metrics:
        # Put the held-out metrics into each model's metadata too.
        for name in exports:
            _update_info(exported[name], lambda info, n=name: replace(
                info, training={**info.training, "metrics": metrics[n]}))
    report = {
        "stm_live": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "threads": torch.get_num_threads(),
        "settings": portable_settings(settings),
        "training": training,
        "timings_s": {"data": round(t_data, 1), "fit": round(t_fit, 1), "total": round(time.perf_counter() - t0, 1)},
        "models": {name: {**entry, "path": relative_to(entry["path"], run_dir)} for name, entry in exported.items()},
        "metrics": metrics,
        "history": state.history,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def relative_to(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder`` (POSIX separators), or its file name where there is no such path.

    Reports say where their models went this way, without the absolute paths
    of the machine that made them.
    """
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).name


def portable_settings(settings: TrainSettings) -> dict[str, Any]:
    """``settings`` as JSON with their paths relative to the run folder (where the report goes)."""
    out = settings.model_dump(mode="json")
    run_dir = Path(settings.run_dir)
    out["run_dir"] = "."
    out["out_dir"] = relative_to(settings.out_dir, run_dir)
    out["unlabelled"] = [relative_to(p, run_dir) for p in settings.unlabelled]
    return out


def held_out_geometry(surface: SurfaceSettings) -> tuple[float, int]:
    """Frame size (nm) and pixels for held-out evaluation.

    The simulator's default frame (50 nm, 512 px) when the surface was
    trained on such frames, else the middle of its training ranges.
    """
    lo, hi = surface.size_nm
    p_lo, p_hi = surface.input_nm_per_px
    if lo <= 50.0 <= hi and p_lo <= 50.0 / 512 <= p_hi:
        return 50.0, 512
    size = (lo + hi) / 2
    return size, round(size / ((p_lo + p_hi) / 2))


def _update_info(entry: dict[str, Any], change: Any) -> None:
    """Rewrite one exported model's metadata with ``change(info)``; refresh its id."""
    from ..model.format import load_onnx, read_info, save_model

    path = Path(entry["path"])
    model = load_onnx(path)
    entry["id"] = save_model(model, change(read_info(model)), path).id


def _calibrate_exports(
    exported: dict[str, Any], settings: TrainSettings, surfaces: tuple[str, ...], frames: int
) -> None:
    """Calibrate per-class detection thresholds on validation frames (seeds apart from evaluation's)."""
    from ..model.evaluate import calibrate_detection
    from ..model.runtime import SegmentationModel

    geometry = {s.name: held_out_geometry(s) for s in settings.surfaces}
    for name in surfaces:
        model = SegmentationModel(exported[name]["path"], provider="cpu")
        size_nm, pixels = geometry[name]
        detection = calibrate_detection(model, simulate=name, count=frames, seed=50_000 + settings.seed,
                                        size_nm=size_nm, pixels=pixels)
        exported[name]["detection"] = detection
        _update_info(exported[name], lambda info, d=detection: replace(info, detection=d))
        log.info("%s: calibrated thresholds %s", name, {k: detection[k] for k in ("min_score", "min_area_nm2")})


def _evaluate_exports(
    exported: dict[str, Any], settings: TrainSettings, surfaces: tuple[str, ...], frames: int
) -> dict[str, Any]:
    """Object F1 per class of each exported model on fresh held-out simulated frames."""
    from ..model.evaluate import evaluate_model
    from ..model.runtime import SegmentationModel

    geometry = {s.name: held_out_geometry(s) for s in settings.surfaces}
    out = {}
    for name in surfaces:
        model = SegmentationModel(exported[name]["path"], provider="cpu")
        size_nm, pixels = geometry[name]
        report = evaluate_model(model, simulate=name, count=frames, seed=10_000 + settings.seed, episodes=0,
                                size_nm=size_nm, pixels=pixels)
        out[name] = {"objects": report["objects"], "pixel_iou": report["pixel_iou"], "frames": frames,
                     "size_nm": size_nm, "pixels": pixels}
        log.info("%s: held-out F1 %s", name, {c: s["f1"] for c, s in report["objects"].items()})
    return out


def _unlabelled_set(settings: TrainSettings) -> PreparedSet:
    """Unlabelled real frames prepared for the self-supervised stage (mask = 255: no labels)."""
    from ..io import read_scan
    from ..model.prepare import level_for_model, prepare_image

    images, masks = [], []
    for path in settings.unlabelled:
        scan = read_scan(path, width_nm=settings.unlabelled_width_nm)
        frame = scan.frame("Z") if "Z" in scan.channels else scan.frames[0]
        levelled = level_for_model(frame.data[frame.valid_rows], DEFAULT_LEVELLING)
        image = prepare_image(levelled, nm_per_px=frame.nm_per_px, target_nm_per_px=settings.unlabelled_nm_per_px,
                              normalisation=settings.train_normalisation)
        images.append(image)
        masks.append(np.full(image.shape, 255, np.uint8))
    return PreparedSet(tuple(images), tuple(masks), np.zeros(len(images), np.int64), ("unlabelled",),
                       {"unlabelled": ()}, "unlabelled")
