"""Training settings: ``train.yaml`` -> a frozen, validated :class:`TrainSettings`.

Every field has a default that trains the bundled models; ``stm-live train
--config train.yaml`` overrides any of them (unknown keys are errors, as for
``config.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..model.prepare import DEFAULT_NORMALISATION
from ..sim.surfaces import RANDOM_SURFACE

__all__ = ["SurfaceSettings", "TrainSettings", "load_train_settings"]

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SurfaceSettings(_Frozen):
    """One simulated surface of the training set."""

    name: str
    #: Model pitch for this surface, nm/px: chosen so the lattice period spans ~4-6 px.
    nm_per_px: Positive = 0.2
    #: Simulated frames for training / validation.
    frames: Count = 160
    val_frames: Count = 16
    #: Physical frame size range, nm, and input pitch range, nm/px (resampled to nm_per_px).
    size_nm: tuple[Positive, Positive] = (25.0, 60.0)
    input_nm_per_px: tuple[Positive, Positive] = (0.07, 0.2)
    #: Export a model for this surface; False: its frames only help train the shared encoder.
    export: bool = True
    #: ``random`` surface only: chance that a class is a near twin of another (same shapes,
    #: other height and width). 0.35 lifts leave-one-out Si 1-shot episodes by 2-5 points but
    #: cost the Si model AsH3 F1 in both runs (0.935, 0.884; docs/model.md): off by default.
    twin_probability: Annotated[float, Field(ge=0, le=1)] = 0.0
    #: Share of this surface's frames simulated with the realism of real Si(001):H frames
    #: (stm_live.sim.Realism: trenches, rims, feature sizes, irregular contamination, reacted
    #: areas; docs/real_eval.md, Zero-shot transfer). 0: none.
    realism_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    #: The realism of those frames: Realism.si001h() with these fields replaced (0 switches a part off).
    realism: dict[str, float] = {}
    #: Input pitch range of those frames, nm/px (the real frames' 100 nm / 512 px is 0.195); None:
    #: input_nm_per_px.
    realism_input_nm_per_px: tuple[Positive, Positive] | None = None

    @model_validator(mode="after")
    def _twins_only_on_random(self) -> SurfaceSettings:
        if self.twin_probability > 0 and self.name != RANDOM_SURFACE:
            raise ValueError(f"twin_probability applies to the {RANDOM_SURFACE!r} surface only, not {self.name!r}")
        return self

    @model_validator(mode="after")
    def _known_realism(self) -> SurfaceSettings:
        from ..sim.realism import Realism

        Realism.from_dict({**Realism.si001h().to_dict(), **self.realism})  # unknown or impossible: an error
        return self

    @property
    def off_settings(self) -> set[str]:
        """Settings at their "off" value: left out of the data digest, so that data made before they
        existed keeps its digest."""
        off = set()
        for name, value in (("twin_probability", self.twin_probability), ("realism_fraction", self.realism_fraction),
                            ("realism", self.realism), ("realism_input_nm_per_px", self.realism_input_nm_per_px)):
            if not value:
                off.add(name)
        return off


def _default_surfaces() -> list[SurfaceSettings]:
    # 0.1 nm/px everywhere: AsH3 and dangling bonds differ in shape by a few tenths of
    # a nm, and Ge phase defects are a one-dimer shift of the buckling; at 0.2 nm/px
    # both were much harder to tell apart (docs/model.md).
    return [
        # Half the Si(001) frames with what real Si(001):H frames show and the plain simulator does not
        # (trench-like vacancies with rims, faint dips, contamination, reacted areas; Realism.si001h()),
        # at the real frames' 0.18-0.21 nm/px: the same recipe with and without it, two seeds each way, on
        # the hand-labelled real frames' dev regions (docs/real_eval.md "Zero-shot transfer").
        SurfaceSettings(name="si001-ash3", nm_per_px=0.1, size_nm=(20.0, 50.0), input_nm_per_px=(0.05, 0.2),
                        realism_fraction=0.5, realism_input_nm_per_px=(0.18, 0.21)),
        # Ge and TiO2 frames widen the shared encoder's experience, but their bundled
        # models come from their own runs at 0.05 nm/px (models/ge001.train.yaml,
        # models/tio2-110.train.yaml): jointly trained, Ge phase defects, TiO2 vacancies
        # and hydroxyls were found far less reliably (docs/model.md).
        SurfaceSettings(name="ge001", nm_per_px=0.1, size_nm=(15.0, 40.0), input_nm_per_px=(0.04, 0.1),
                        export=False),
        SurfaceSettings(name="tio2-110", nm_per_px=0.1, size_nm=(12.0, 30.0), input_nm_per_px=(0.03, 0.1),
                        export=False),
        # Domain randomisation: every frame a new surface with 3-5 random feature classes,
        # trained with episodes only. It teaches the encoder to separate classes it has
        # never seen, which is what adapting to a new surface asks of it (docs/model.md).
        SurfaceSettings(name="random", nm_per_px=0.1, frames=400, size_nm=(15.0, 40.0), input_nm_per_px=(0.05, 0.15),
                        export=False),
    ]


class TrainSettings(_Frozen):
    """Everything ``stm-live train`` needs; defaults train the bundled models."""

    #: Where checkpoints, the data cache and the report go.
    run_dir: Path = Path("runs/default")
    #: Where the exported ONNX models go.
    out_dir: Path = Path("models")
    surfaces: list[SurfaceSettings] = Field(default_factory=_default_surfaces)
    #: Surfaces left out entirely (for leave-one-surface-out evaluation).
    exclude_surfaces: list[str] = []
    #: Unlabelled real frames (.sxm/.npy/.npz) added to self-supervised pretraining.
    unlabelled: list[Path] = []
    #: Physical width of unlabelled array files (nm) and their model pitch (nm/px).
    unlabelled_width_nm: Positive | None = None
    unlabelled_nm_per_px: Positive = 0.1
    seed: int = 0
    #: Encoder widths per level and embedding size. (8, 16, 32) does a quarter of the
    #: convolution work of (16, 32, 64): a 512 x 512 frame's inference in under 30 ms
    #: on two CPU cores, and training in under 30 min (docs/model.md).
    widths: tuple[int, int, int] = (8, 16, 32)
    #: Embed from the features of all three levels (upsampled and concatenated), not the
    #: finest alone: an embedding of rank up to the sum of the widths, ~10 % more inference.
    hypercolumn: bool = False
    dim: Annotated[int, Field(ge=2, le=256)] = 16
    #: Crop side (model px) and crops per batch.
    crop: Annotated[int, Field(ge=16)] = 96
    batch: Annotated[int, Field(ge=2)] = 16
    #: Optimiser steps: self-supervised pretraining, then supervised (prototype + episodic losses).
    ssl_steps: Count = 600
    steps: Count = 5000
    lr: Positive = 2e-3
    #: Background prototypes per surface.
    n_background: Annotated[int, Field(ge=1, le=32)] = 4
    #: Weight of the episodic (few-shot) loss relative to the prototype loss.
    episodic_weight: Annotated[float, Field(ge=0)] = 0.5
    #: Weight of the self-supervised (contrastive) loss kept during the supervised stage, on
    #: half a batch from the pretraining pool (unlabelled frames included); 0 = pretraining only.
    ssl_weight: Annotated[float, Field(ge=0)] = 0.0
    #: Chance that a supervised crop gets a tip change: from a random row on (or up to it), a
    #: Gaussian blur of 0.5-2.5 px and a contrast of 0.6-1.0x, as when the apex changes mid-scan.
    #: 0.5 did not lift the leave-one-out Si episodes (docs/model.md): off by default.
    tip_change_augment: Annotated[float, Field(ge=0, le=1)] = 0.0
    #: Every training crop is multiplied by a factor log-uniform in [1/scale_jitter,
    #: scale_jitter] (1 = off, the default; on top of the crops' fixed 0.75-1.33x contrast
    #: jitter). 2.5 with standard-deviation inputs did worse on the Si leave-one-out episodes
    #: than the base recipe's MAD training (docs/model.md): off by default.
    scale_jitter: Annotated[float, Field(ge=1, le=10)] = 1.0
    #: Spread that divides the model input after centring on its median (with a clip at 8),
    #: written into the exported models' metadata, so that segment, adapt and the live path
    #: normalise with it: "mad" (the default: the lattice's spread, blind to adsorbates),
    #: "iqr" or "std" (the plain standard deviation, adsorbates and steps included).
    input_scale: Literal["mad", "iqr", "std"] = "mad"
    #: The spread of the training frames, when not input_scale. The base encoder trains on
    #: "mad" and runs on "std": the lattice's MAD varies about 6x between frames with the
    #: tip's state, the standard deviation half as much. That lifted the Si leave-one-out
    #: episodes; training on "std" as well (with or without scale_jitter) lowered them, for
    #: reasons not yet understood (docs/model.md).
    train_input_scale: Literal["mad", "iqr", "std"] | None = None
    #: Also export the encoder alone as base-encoder.onnx (a start for `stm-live adapt`). Off by
    #: default: the bundled base encoder has a recipe of its own (models/base-encoder.train.yaml),
    #: and the default run, which writes into models/, must not replace it.
    export_base_encoder: bool = False
    #: Calibrate, with the detection thresholds, a logit offset per class (a prior moving the
    #: boundaries between the classes and the background) on the same validation frames. Retrained
    #: models put those boundaries in different places; calibrating them narrowed the spread of
    #: held-out F1 over seeds and instruction sets (docs/model.md).
    calibrate_class_offsets: bool = True
    #: Steps between checkpoints.
    checkpoint_every: Annotated[int, Field(ge=1)] = 250
    #: Also keep the encoder and prototypes every this many steps of the supervised stage's
    #: second half in ``run_dir/snapshots/`` (0 = none, the default), for studies of
    #: checkpoint selection and weight averaging (benchmarks/train_seeds.py). Training is
    #: the same either way.
    snapshot_every: Count = 0
    #: torch CPU threads (0 = torch's default: as many as the machine has cores). The thread
    #: count changes the weights (reductions split otherwise): 2, the default, gives the same
    #: weights on every machine (docs/model.md, Reproducibility).
    threads: Count = 2
    #: "pinned" (the default): `stm-live train` runs the training in a process whose libraries
    #: use AVX2 kernels whatever the CPU (stm_live.train.numerics), so that the same settings
    #: give the same weights on any x86-64 CPU with AVX2; "native": the CPU's own fastest
    #: kernels (AVX-512 where there is one), results particular to the CPU.
    numerics: Literal["pinned", "native"] = "pinned"

    @model_validator(mode="after")
    def _train_scale_only_for_encoders(self) -> TrainSettings:
        if self.train_normalisation != self.normalisation and any(s.export for s in self.surfaces):
            raise ValueError(
                f"train_input_scale {self.train_input_scale!r} differs from input_scale {self.input_scale!r}: "
                "only for runs that export the encoder alone (every surface export: false), since a head's "
                "prototypes come from frames normalised for training"
            )
        return self

    @property
    def normalisation(self) -> dict[str, Any]:
        """The exported models' input normalisation (``prepare_image``'s and the metadata's form)."""
        return {**DEFAULT_NORMALISATION, "scale": self.input_scale}

    @property
    def train_normalisation(self) -> dict[str, Any]:
        """The normalisation of the training frames."""
        return {**DEFAULT_NORMALISATION, "scale": self.train_input_scale or self.input_scale}


def load_train_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> TrainSettings:
    """Read ``path`` (YAML) over the defaults, then apply keyword overrides (None = not given)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: training settings file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of settings, got {type(raw).__name__}")
        data.update(raw or {})
        base = p.resolve().parent
        for key in ("run_dir", "out_dir"):
            if isinstance(data.get(key), str):
                data[key] = str(base / data[key])
        if isinstance(data.get("unlabelled"), list):
            data["unlabelled"] = [str(base / v) if isinstance(v, str) else v for v in data["unlabelled"]]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainSettings.model_validate(data)
    except ValidationError as exc:
        where = str(path) if path is not None else "training settings"
        lines = [
            f"{where}: {'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigError("; ".join(lines)) from None
