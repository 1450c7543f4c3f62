"""Training data: simulated frames prepared exactly as the runtime prepares images.

Every frame goes through the same ``level -> resample -> normalise`` path as
``stm-live segment`` (:mod:`stm_live.model.prepare`), at a random physical size
and input pitch, with the simulator's realistic artefacts at a random
strength, so the model learns the images it will really see. The prepared
set is cached in the run folder as ``.npz`` (no pickles) under a hash of its
settings, which becomes the model's "training data hash".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model.prepare import (
    DEFAULT_LEVELLING,
    DEFAULT_NORMALISATION,
    level_for_model,
    prepare_image,
    to_model_grid,
)
from ..sim.surfaces import RANDOM_CLASSES, RANDOM_SURFACE, random_surface_model
from .settings import SurfaceSettings, TrainSettings

if TYPE_CHECKING:
    from ..sim import Artefacts

__all__ = ["Crops", "PreparedSet", "build_sets", "content_digest", "sample_batch", "simulate_prepared"]

log = logging.getLogger(__name__)

#: Bump when the simulator or preparation changes in a way that invalidates caches.
DATA_VERSION = 1


@dataclass(frozen=True)
class PreparedSet:
    """Prepared images and masks of several surfaces at their model pitches.

    ``images[i]`` is ``(h, w)`` float32, ``masks[i]`` ``(h, w)`` uint8 (0 =
    background, k = ``classes[surface][k - 1]``, 255 = no labels: unlabelled
    real frames), ``surface[i]`` indexes ``surfaces``.
    """

    images: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    surface: np.ndarray
    surfaces: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    digest: str

    def of_surface(self, name: str) -> list[int]:
        k = self.surfaces.index(name)
        return [i for i, s in enumerate(self.surface) if s == k]


def _scaled_artefacts(base: Artefacts, factor: float) -> Artefacts:
    """The artefact settings with every numeric strength multiplied by ``factor``."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        value = getattr(base, f.name)
        if isinstance(value, float | int) and not isinstance(value, bool):
            changes[f.name] = type(value)(value * factor) if isinstance(value, float) else value
    return dataclasses.replace(base, **changes)


def simulate_prepared(
    surface: SurfaceSettings, seed: int, *, normalisation: Mapping[str, Any] = DEFAULT_NORMALISATION
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One simulated frame of ``surface``, prepared at its model pitch, with its mask.

    Returns ``(image (h, w) float32, mask (h, w) uint8, classes)``; mask value 255 (reacted areas of
    frames with realism) is no label.
    """
    from ..sim import Artefacts, Realism, simulate_scan

    rng = np.random.default_rng(seed)
    size_nm = float(rng.uniform(*surface.size_nm))
    pitch = float(rng.uniform(*surface.input_nm_per_px))
    pixels = int(np.clip(round(size_nm / pitch), 64, 1024))
    artefacts = _scaled_artefacts(Artefacts.realistic(), float(rng.uniform(0.0, 1.5)))
    frame_seed = int(rng.integers(2**31))
    realism = Realism.none()
    # No draw without realism: the same seed then gives the same frame as before realism existed.
    if surface.realism_fraction > 0 and rng.random() < surface.realism_fraction:
        realism = Realism.from_dict({**Realism.si001h().to_dict(), **surface.realism})
        if surface.realism_input_nm_per_px is not None:
            pitch = float(rng.uniform(*surface.realism_input_nm_per_px))
            pixels = int(np.clip(round(size_nm / pitch), 64, 1024))
    model = (random_surface_model(frame_seed, twin_probability=surface.twin_probability)
             if surface.name == RANDOM_SURFACE else surface.name)
    scan = simulate_scan(model, size_nm=size_nm, pixels=pixels, seed=frame_seed, artefacts=artefacts,
                         realism=realism)
    frame = scan.frame("Z", "forward")
    levelled = level_for_model(frame.data, DEFAULT_LEVELLING)
    image = prepare_image(
        levelled, nm_per_px=frame.nm_per_px, target_nm_per_px=surface.nm_per_px, normalisation=normalisation
    )
    mask = np.ascontiguousarray(
        to_model_grid(scan.mask, image.shape, nm_per_px=frame.nm_per_px, target_nm_per_px=surface.nm_per_px),
        dtype=np.uint8,
    )
    return image, mask, tuple(scan.classes)


def _digest(settings: TrainSettings, surfaces: Sequence[SurfaceSettings], split: str) -> str:
    payload = {
        "version": DATA_VERSION,
        "split": split,
        "seed": settings.seed,
        # A setting at its "off" value is left out, so that data made before it existed keeps its digest.
        "surfaces": [s.model_dump(mode="json", exclude={"export"} | s.off_settings) for s in surfaces],
        "levelling": DEFAULT_LEVELLING,
        "normalisation": settings.train_normalisation,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def content_digest(data: PreparedSet) -> str:
    """A hash of the prepared images and masks themselves (not of the settings that made them).

    Two machines that simulate the same settings into different bytes (their BLAS
    kernels differ, say) give the same :attr:`PreparedSet.digest` but different content
    digests: the report records both.
    """
    h = hashlib.sha256()
    for image, mask in zip(data.images, data.masks, strict=True):
        h.update(np.ascontiguousarray(image, "<f4").tobytes())
        h.update(np.ascontiguousarray(mask, np.uint8).tobytes())
    h.update(np.ascontiguousarray(data.surface, "<i8").tobytes())
    return h.hexdigest()[:16]


def _load_cache(path: Path) -> PreparedSet | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        n = int(meta["n"])
        return PreparedSet(
            images=tuple(z[f"image_{i}"] for i in range(n)),
            masks=tuple(z[f"mask_{i}"] for i in range(n)),
            surface=z["surface"],
            surfaces=tuple(meta["surfaces"]),
            classes={k: tuple(v) for k, v in meta["classes"].items()},
            digest=meta["digest"],
        )


def _save_cache(path: Path, data: PreparedSet) -> None:
    # Any, not ndarray: mypy matches ``**arrays`` against savez's ``allow_pickle: bool`` too.
    arrays: dict[str, Any] = {"surface": data.surface}
    for i, (im, m) in enumerate(zip(data.images, data.masks, strict=True)):
        arrays[f"image_{i}"] = im
        arrays[f"mask_{i}"] = m
    meta = {"n": len(data.images), "surfaces": list(data.surfaces), "classes": data.classes, "digest": data.digest}
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def build_split(settings: TrainSettings, split: str, *, progress: bool = True) -> PreparedSet:
    """The ``"train"`` or ``"val"`` set, from the run folder's cache when it is there."""
    surfaces = [s for s in settings.surfaces if s.name not in settings.exclude_surfaces]
    digest = _digest(settings, surfaces, split)
    cache = Path(settings.run_dir) / f"data-{split}-{digest}.npz"
    cached = _load_cache(cache)
    if cached is not None:
        log.info("using cached %s set %s (%d frames)", split, cache, len(cached.images))
        return cached
    from tqdm import tqdm

    jobs = []
    split_salt = {"train": 1, "val": 2}[split]
    for k, s in enumerate(surfaces):
        n = s.frames if split == "train" else s.val_frames
        base = np.random.SeedSequence([settings.seed, split_salt, k])
        jobs += [(k, s, int(child.generate_state(1)[0])) for child in base.spawn(n)]
    images, masks, labels = [], [], []
    classes: dict[str, tuple[str, ...]] = {}
    for k, s, seed in tqdm(jobs, desc=f"simulating {split} frames", disable=not progress, unit="frame"):
        image, mask, names = simulate_prepared(s, seed, normalisation=settings.train_normalisation)
        images.append(image)
        masks.append(mask)
        labels.append(k)
        # Random surfaces name their classes r1..rK, K varying by frame: the set has them all.
        classes[s.name] = random_classes() if s.name == RANDOM_SURFACE else names
    data = PreparedSet(
        tuple(images), tuple(masks), np.asarray(labels, np.int64), tuple(s.name for s in surfaces), classes, digest
    )
    _save_cache(cache, data)
    return data


def build_sets(settings: TrainSettings, *, progress: bool = True) -> tuple[PreparedSet, PreparedSet]:
    """Training and validation sets."""
    return build_split(settings, "train", progress=progress), build_split(settings, "val", progress=progress)


@dataclass(frozen=True)
class Crops:
    """A batch: ``x`` ``(B, 1, c, c)`` float32, ``y`` ``(B, c, c)`` int64 labels, one surface."""

    x: np.ndarray
    y: np.ndarray
    surface: int


def _augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape
    if h < crop or w < crop:  # pad small frames (reflect), labels padded as background
        ph, pw = max(0, crop - h), max(0, crop - w)
        image = np.pad(image, ((0, ph), (0, pw)), mode="reflect")
        mask = np.pad(mask, ((0, ph), (0, pw)), mode="constant")
        h, w = image.shape
    r = int(rng.integers(0, h - crop + 1))
    c = int(rng.integers(0, w - crop + 1))
    x = image[r : r + crop, c : c + crop]
    y = mask[r : r + crop, c : c + crop]
    k = int(rng.integers(0, 4))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    # Contrast and offset jitter: tips and set-points change apparent heights.
    x = x * float(rng.uniform(0.75, 1.33)) + float(rng.normal(0, 0.1))
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y)


def random_classes() -> tuple[str, ...]:
    """The class names of the randomised training surface (``r1`` .. ``r5``)."""
    return RANDOM_CLASSES


def sample_batch(data: PreparedSet, *, batch: int, crop: int, rng: np.random.Generator, step: int) -> Crops:
    """One batch of augmented crops, all from one surface (surfaces take turns by ``step``)."""
    by_surface = [idx for idx in (data.of_surface(name) for name in data.surfaces) if idx]
    chosen = by_surface[step % len(by_surface)]
    if data.surfaces[int(data.surface[chosen[0]])] == RANDOM_SURFACE:
        # A random surface's classes mean something within one frame only: one frame per batch.
        chosen = [int(rng.choice(chosen))]
    xs, ys = [], []
    for i in rng.choice(chosen, size=batch):
        x, y = _augment(data.images[i], data.masks[i], rng, crop)
        xs.append(x)
        ys.append(y)
    return Crops(np.stack(xs)[:, None], np.stack(ys).astype(np.int64), int(data.surface[chosen[0]]))
