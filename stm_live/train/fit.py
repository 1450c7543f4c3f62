"""Training: self-supervised pretraining, then prototype + episodic (few-shot) training.

Stage 1, unsupervised: a dense contrastive loss on two randomly perturbed
views of the same crop (noise, contrast, offset, blur; same geometry) pulls
each pixel's embedding towards its twin in the other view and away from the
other pixels sampled in the batch. It needs no labels, so unlabelled real
frames can join the simulated ones.

Stage 2, supervised, two losses on each batch (all crops from one surface):

* prototype loss: every class of every surface, and several background
  modes per surface, has a learnable prototype; a pixel's logits are
  ``-||e - p||^2`` over its surface's prototypes (cross-entropy,
  class-balanced weights: features are a few percent of the pixels);
* episodic loss: half the batch is a support set whose labelled pixels give
  prototypes by averaging (exactly what ``stm-live adapt`` does), the other
  half is classified with them. This is what makes adaptation to a new
  surface from one example work;
* optionally (``ssl_weight`` > 0) the contrastive loss of stage 1 on half a
  batch from the pretraining pool, so that features the labelled surfaces do
  not need (but a new surface might) are not trained away.

Checkpoints (state dicts only, loaded with ``weights_only=True``) are written
every ``checkpoint_every`` steps; a run resumes from its last checkpoint.
Everything is seeded: the same settings give the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..sim.surfaces import RANDOM_SURFACE
from .data import PreparedSet, sample_batch
from .net import Encoder
from .settings import TrainSettings

__all__ = ["TrainState", "fit"]

log = logging.getLogger(__name__)
IGNORE = 255


class PrototypeBank(torch.nn.Module):
    """Learnable prototypes: one per (surface, class), ``n_background`` per surface."""

    def __init__(self, classes: dict[str, tuple[str, ...]], surfaces: tuple[str, ...], dim: int, n_background: int):
        super().__init__()
        self.surfaces = surfaces
        self.n_background = n_background
        self.n_classes = [len(classes[s]) for s in surfaces]
        self.vectors = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(n_background + n, dim) * 0.5) for n in self.n_classes]
        )

    def labels(self, s: int) -> torch.Tensor:
        """Class of each prototype of surface ``s`` (0 = background)."""
        return torch.tensor([0] * self.n_background + list(range(1, self.n_classes[s] + 1)))

    def class_logits(self, emb: torch.Tensor, s: int) -> torch.Tensor:
        """``(B, 1 + C, H, W)`` class log-probabilities (log-sum-exp over a class's prototypes)."""
        return _class_log_probs(emb, self.vectors[s], self.labels(s), self.n_classes[s] + 1)


def _sq_dist(emb: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    # (B, D, H, W), (M, D) -> (B, M, H, W)
    e2 = (emb**2).sum(dim=1, keepdim=True)
    p2 = (protos**2).sum(dim=1)[None, :, None, None]
    cross = torch.einsum("bdhw,md->bmhw", emb, protos)
    return (e2 - 2 * cross + p2).clamp_min(0)


def _class_log_probs(emb: torch.Tensor, protos: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    logits = -_sq_dist(emb, protos)
    logp = torch.log_softmax(logits, dim=1)
    out = []
    for k in range(n):
        sel = logp[:, labels == k]
        out.append(torch.logsumexp(sel, dim=1) if sel.shape[1] else torch.full_like(logp[:, 0], -1e4))
    return torch.stack(out, dim=1)


def _class_weights(y: torch.Tensor, n: int) -> torch.Tensor:
    counts = torch.bincount(y[y != IGNORE].flatten(), minlength=n).float()
    w = 1.0 / torch.sqrt(counts.clamp_min(1.0))
    w[counts == 0] = 0.0
    return w / w[counts > 0].mean().clamp_min(1e-12)


def episodic_loss(emb: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor | None:
    """Prototypes from the first half of the batch classify the second half's pixels."""
    half = emb.shape[0] // 2
    support_e, support_y = emb[:half], y[:half]
    protos, labels = [], []
    for k in range(n):
        m = support_y == k
        if m.any():
            protos.append(support_e.permute(0, 2, 3, 1)[m].mean(dim=0))
            labels.append(k)
    if len(labels) < 2:
        return None
    query_e, query_y = emb[half:], y[half:].clone()
    present = torch.tensor(labels)
    # Query pixels of classes missing from the support cannot be classified: ignore them.
    query_y[~torch.isin(query_y, present)] = IGNORE
    remap = torch.full((max(n, IGNORE + 1),), IGNORE, dtype=torch.long)
    remap[present] = torch.arange(len(labels))
    target = remap[query_y]
    if (target != IGNORE).sum() == 0:
        return None
    logits = -_sq_dist(query_e, torch.stack(protos))
    return F.cross_entropy(logits, target, weight=_class_weights(target, len(labels)), ignore_index=IGNORE)


def _perturb(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    scale = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.4, generator=gen)
    offset = torch.randn(b, 1, 1, 1, generator=gen) * 0.2
    noise = torch.randn(x.shape, generator=gen) * torch.empty(b, 1, 1, 1).uniform_(0.0, 0.4, generator=gen)
    y = x * scale + offset + noise
    if torch.rand(1, generator=gen).item() < 0.5:  # mild blur: a blunter tip
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        y = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernel[None, None])
    return y


def tip_change(x: torch.Tensor, chance: float, rng: np.random.Generator) -> torch.Tensor:
    """Give each crop of ``x`` (N, 1, H, W), with ``chance``, a tip change part-way down.

    From a random row on (or up to it) the crop is blurred (Gaussian, sigma 0.5-2.5 px)
    and its contrast scaled by 0.6-1.0, like the simulator's tip change: the same
    feature looks blunter and lower in one part of a frame than in another.
    """
    if chance <= 0:
        return x
    out = x.clone()
    h = x.shape[2]
    for i in np.flatnonzero(rng.random(x.shape[0]) < chance):
        sigma = rng.uniform(0.5, 2.5)
        radius = int(np.ceil(3 * sigma))
        taps = torch.from_numpy(np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)).float()
        taps = taps / taps.sum()
        img = F.pad(x[i:i + 1], (radius, radius, radius, radius), mode="replicate")
        img = F.conv2d(F.conv2d(img, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
        changed = img * rng.uniform(0.6, 1.0)
        row = int(rng.integers(1, h))
        part = slice(row, h) if rng.random() < 0.5 else slice(0, row)
        out[i, :, part] = changed[0, :, part]
    return out


def rescale(x: torch.Tensor, spread: float, rng: np.random.Generator) -> torch.Tensor:
    """Multiply each crop of ``x`` (N, 1, H, W) by a factor log-uniform in [1/spread, spread].

    ``spread`` 1 draws nothing and returns ``x``: runs without it stay bit-identical.
    """
    if spread <= 1:
        return x
    factors = np.exp(rng.uniform(-np.log(spread), np.log(spread), size=x.shape[0]))
    return x * torch.from_numpy(factors.astype(np.float32)).view(-1, 1, 1, 1)


def contrastive_loss(encoder: Encoder, x: torch.Tensor, gen: torch.Generator, n_pixels: int = 512) -> torch.Tensor:
    """Dense InfoNCE between two perturbed views of the same crops."""
    e1 = F.normalize(encoder(_perturb(x, gen)), dim=1)
    e2 = F.normalize(encoder(_perturb(x, gen)), dim=1)
    b, d, h, w = e1.shape
    idx = torch.randint(0, b * h * w, (n_pixels,), generator=gen)
    f1 = e1.permute(0, 2, 3, 1).reshape(-1, d)[idx]
    f2 = e2.permute(0, 2, 3, 1).reshape(-1, d)[idx]
    logits = f1 @ f2.T / 0.1
    target = torch.arange(n_pixels)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass
class TrainState:
    """What a checkpoint holds."""

    encoder: Encoder
    bank: PrototypeBank
    optimiser: torch.optim.Optimizer
    step: int
    rng: np.random.Generator
    gen: torch.Generator
    history: list[dict[str, float]]


def _checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoint.pt"


def save_checkpoint(state: TrainState, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "encoder": state.encoder.state_dict(),
        "bank": state.bank.state_dict(),
        "optimiser": state.optimiser.state_dict(),
        "step": state.step,
        "rng": json.dumps(state.rng.bit_generator.state),
        "gen": state.gen.get_state(),
        "history": json.dumps(state.history),
    }
    tmp = run_dir / "checkpoint.pt.part"
    torch.save(payload, tmp)
    tmp.replace(_checkpoint_path(run_dir))


def save_snapshot(state: TrainState, run_dir: Path) -> Path:
    """Keep the encoder and prototypes of this step in ``run_dir/snapshots/step-<N>.pt`` (state dicts)."""
    folder = run_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state.step:06d}.pt"
    tmp = path.with_name(path.name + ".part")
    torch.save({"encoder": state.encoder.state_dict(), "bank": state.bank.state_dict(), "step": state.step}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(state: TrainState, run_dir: Path) -> bool:
    path = _checkpoint_path(run_dir)
    if not path.is_file():
        return False
    payload = torch.load(path, weights_only=True)
    state.encoder.load_state_dict(payload["encoder"])
    state.bank.load_state_dict(payload["bank"])
    state.optimiser.load_state_dict(payload["optimiser"])
    state.step = int(payload["step"])
    state.rng.bit_generator.state = json.loads(payload["rng"])
    state.gen.set_state(payload["gen"])
    state.history = json.loads(payload["history"])
    return True


def _lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    # A Python float: numpy scalars in the optimiser state would not load with weights_only=True.
    return float(base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def fit(
    settings: TrainSettings,
    train: PreparedSet,
    *,
    unlabelled: PreparedSet | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainState:
    """Train (or resume) an encoder and prototype bank on ``train``.

    Parameters
    ----------
    settings : TrainSettings
        Steps, learning rate, sizes, seed, run folder (checkpoints).
    train : PreparedSet
        Labelled simulated frames.
    unlabelled : PreparedSet, optional
        Unlabelled frames used only by the self-supervised stage.
    progress : bool
        Show a progress bar on stderr.
    """
    from tqdm import tqdm

    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    encoder = Encoder(settings.widths, settings.dim, hypercolumn=settings.hypercolumn)
    bank = PrototypeBank(train.classes, train.surfaces, settings.dim, settings.n_background)
    params = list(encoder.parameters()) + list(bank.parameters())
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(settings.seed)
    state = TrainState(encoder, bank, optimiser, 0, np.random.default_rng(settings.seed), gen, [])
    run_dir = Path(settings.run_dir)
    if load_checkpoint(state, run_dir):
        log.info("resuming from %s at step %d", _checkpoint_path(run_dir), state.step)
    total = settings.ssl_steps + settings.steps
    if state.step >= total:
        return state
    # Batches are drawn from a generator seeded by the step, so a resumed run
    # sees the same batches as an uninterrupted one.
    ssl_pool = train if unlabelled is None else _merge(train, unlabelled)
    encoder.train()
    bar = tqdm(total=total, initial=state.step, desc="training", disable=not progress, unit="step")
    t_start = time.perf_counter()
    while state.step < total:
        step = state.step
        rng = np.random.default_rng([settings.seed, step])
        in_ssl = step < settings.ssl_steps
        pool = ssl_pool if in_ssl else train
        batch = sample_batch(pool, batch=settings.batch, crop=settings.crop, rng=rng, step=step)
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(step if in_ssl else step - settings.ssl_steps,
                                 settings.ssl_steps if in_ssl else settings.steps, settings.lr)
        x = rescale(torch.from_numpy(batch.x), settings.scale_jitter, rng)
        if not in_ssl:
            x = tip_change(x, settings.tip_change_augment, rng)
        losses: dict[str, float] = {}
        if in_ssl:
            loss = contrastive_loss(encoder, x, gen)
            losses["contrastive"] = loss.item()
        else:
            y = torch.from_numpy(batch.y)
            emb = encoder(x)
            n = bank.n_classes[batch.surface] + 1
            if train.surfaces[batch.surface] == RANDOM_SURFACE:
                # Classes of a random surface hold within one frame only: episodes, no fixed prototypes.
                epi = episodic_loss(emb, y, n)
                loss = epi if epi is not None else (emb * 0.0).sum()
                losses["random_episodic"] = loss.item()
            else:
                logp = bank.class_logits(emb, batch.surface)
                loss = F.nll_loss(logp, y, weight=_class_weights(y, n), ignore_index=IGNORE)
                losses["prototype"] = loss.item()
                if settings.episodic_weight > 0:
                    epi = episodic_loss(emb, y, n)
                    if epi is not None:
                        loss = loss + settings.episodic_weight * epi
                        losses["episodic"] = epi.item()
            if settings.ssl_weight > 0:
                half = max(2, settings.batch // 2)
                extra = sample_batch(ssl_pool, batch=half, crop=settings.crop, rng=rng, step=step)
                con = contrastive_loss(encoder, torch.from_numpy(extra.x), gen)
                loss = loss + settings.ssl_weight * con
                losses["contrastive"] = con.item()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimiser.step()
        state.step += 1
        losses["loss"] = loss.item()
        if state.step % 50 == 0 or state.step == total:
            state.history.append({"step": state.step, **losses, "elapsed_s": time.perf_counter() - t_start})
            if not progress:  # no bar: a log line now and then says how far it is
                log.info("step %d/%d %s (%.0f s)", state.step, total,
                         " ".join(f"{k} {v:.3f}" for k, v in losses.items()), time.perf_counter() - t_start)
        if on_step is not None:
            on_step(state.step, losses)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k != "loss"}, refresh=False)
        if state.step % settings.checkpoint_every == 0 or state.step == total:
            save_checkpoint(state, run_dir)
        supervised = state.step - settings.ssl_steps
        if settings.snapshot_every and supervised >= settings.steps / 2 and supervised % settings.snapshot_every == 0:
            save_snapshot(state, run_dir)
    bar.close()
    encoder.eval()
    return state


def _merge(a: PreparedSet, b: PreparedSet) -> PreparedSet:
    surfaces = a.surfaces + tuple(s for s in b.surfaces if s not in a.surfaces)
    remap_b = np.asarray([surfaces.index(s) for s in b.surfaces], np.int64)
    return PreparedSet(
        a.images + b.images,
        a.masks + b.masks,
        np.concatenate([a.surface, remap_b[b.surface] if len(b.surface) else b.surface]),
        surfaces,
        {**b.classes, **a.classes},
        a.digest + "+" + b.digest,
    )


def summarise(state: TrainState) -> dict[str, Any]:
    """Last losses and timing, for the training report."""
    last = state.history[-1] if state.history else {}
    return {"steps": state.step, **{k: round(v, 5) for k, v in last.items()}}
