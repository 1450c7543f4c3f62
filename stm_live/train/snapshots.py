"""Snapshots of a run (``snapshot_every``): weight averaging and selection on validation frames.

A run with ``snapshot_every`` > 0 keeps its encoder and prototypes every so many
steps of the supervised stage's second half (:func:`~stm_live.train.fit.save_snapshot`).
From them:

* :func:`average_snapshots`: the mean of their weights (stochastic weight averaging
  over the cosine schedule's tail), batch-norm statistics then recomputed on training
  crops (:func:`recompute_batchnorm`), since the mean of running statistics is not the
  statistics of the mean weights;
* :func:`validation_loss`: the class-balanced prototype loss on the validation frames,
  by which a snapshot can be chosen.

``benchmarks/train_seeds.py snapshots`` measures both against the last step's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import PreparedSet, sample_batch
from .fit import IGNORE, PrototypeBank, _class_weights
from .net import Encoder
from .settings import TrainSettings

__all__ = ["Snapshot", "average_snapshots", "load_snapshots", "recompute_batchnorm", "validation_loss"]


@dataclass(frozen=True)
class Snapshot:
    """The encoder and prototype bank of one step."""

    step: int
    encoder: Encoder
    bank: PrototypeBank


def _empty(settings: TrainSettings, train: PreparedSet) -> tuple[Encoder, PrototypeBank]:
    encoder = Encoder(settings.widths, settings.dim, hypercolumn=settings.hypercolumn)
    bank = PrototypeBank(train.classes, train.surfaces, settings.dim, settings.n_background)
    return encoder, bank


def load_snapshots(settings: TrainSettings, train: PreparedSet) -> list[Snapshot]:
    """The run's snapshots, oldest first (state dicts, loaded with ``weights_only=True``)."""
    out = []
    for path in sorted((Path(settings.run_dir) / "snapshots").glob("step-*.pt")):
        payload = torch.load(path, weights_only=True)
        encoder, bank = _empty(settings, train)
        encoder.load_state_dict(payload["encoder"])
        bank.load_state_dict(payload["bank"])
        out.append(Snapshot(int(payload["step"]), encoder.eval(), bank))
    return out


def average_snapshots(
    snapshots: Sequence[Snapshot], settings: TrainSettings, train: PreparedSet
) -> tuple[Encoder, PrototypeBank]:
    """The mean of the snapshots' weights and prototypes (batch-norm statistics recomputed)."""
    if not snapshots:
        raise ValueError("no snapshots to average")
    encoder, bank = _empty(settings, train)
    for target, sources in ((encoder, [s.encoder for s in snapshots]), (bank, [s.bank for s in snapshots])):
        states = [s.state_dict() for s in sources]
        mean = {}
        for key, value in states[0].items():
            if value.is_floating_point():
                mean[key] = torch.stack([st[key] for st in states]).mean(dim=0)
            else:  # batch counters
                mean[key] = value.clone()
        target.load_state_dict(mean)
    recompute_batchnorm(encoder, settings, train)
    return encoder.eval(), bank


def recompute_batchnorm(encoder: Encoder, settings: TrainSettings, train: PreparedSet, *, batches: int = 64) -> None:
    """Running batch-norm statistics of ``encoder`` from ``batches`` training batches (seeded; no gradients)."""
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches
    encoder.train()
    with torch.no_grad():
        for step in range(batches):
            rng = np.random.default_rng([settings.seed, 1_000_000 + step])
            batch = sample_batch(train, batch=settings.batch, crop=settings.crop, rng=rng, step=step)
            encoder(torch.from_numpy(batch.x))
    encoder.eval()


def validation_loss(encoder: Encoder, bank: PrototypeBank, val: PreparedSet, train: PreparedSet, surface: str) -> float:
    """Class-balanced prototype loss of one surface's validation frames (whole frames, no augmentation)."""
    s = train.surfaces.index(surface)
    k = val.surfaces.index(surface)
    total, weight = 0.0, 0.0
    with torch.no_grad():
        for i in np.flatnonzero(val.surface == k):
            x = torch.from_numpy(val.images[i])[None, None]
            y = torch.from_numpy(val.masks[i].astype(np.int64))[None]
            logp = bank.class_logits(encoder(x), s)
            n = bank.n_classes[s] + 1
            total += float(F.nll_loss(logp, y, weight=_class_weights(y, n), ignore_index=IGNORE))
            weight += 1.0
    return total / weight
