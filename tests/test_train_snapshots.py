"""Snapshots of a run: kept where asked, averaged, scored on validation frames, exported like the run's model."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the trainer needs the train extra (torch)")

from stm_live.train.settings import SurfaceSettings, TrainSettings  # noqa: E402


def _settings(tmp_path: Path, **changes: object) -> TrainSettings:
    surfaces = [SurfaceSettings(name="si001-ash3", nm_per_px=0.2, frames=2, val_frames=1, size_nm=(12.0, 14.0),
                                input_nm_per_px=(0.1, 0.2))]
    values: dict[str, object] = dict(run_dir=tmp_path / "run", out_dir=tmp_path / "models", surfaces=surfaces,
                                     ssl_steps=2, steps=8, batch=4, crop=32, widths=(4, 8, 8), dim=4, threads=1,
                                     snapshot_every=2)
    values.update(changes)
    return TrainSettings.model_validate(values)


@pytest.mark.slow
def test_snapshots_are_kept_averaged_and_exported_like_the_runs_own_model(tmp_path: Path) -> None:
    from stm_live.train.data import build_sets
    from stm_live.train.fit import fit
    from stm_live.train.pipeline import export_surface_model, train_models
    from stm_live.train.snapshots import average_snapshots, load_snapshots, validation_loss

    settings = _settings(tmp_path)
    report = train_models(settings, progress=False, evaluate_frames=0, calibrate_frames=0)
    train, val = build_sets(settings, progress=False)
    snaps = load_snapshots(settings, train)
    # The supervised stage's second half, every 2 steps: supervised steps 4, 6, 8 = steps 6, 8, 10.
    assert [s.step for s in snaps] == [6, 8, 10]
    # Snapshots do not change training: the same weights as a run without them.
    plain = _settings(tmp_path / "plain", snapshot_every=0)
    state = fit(plain, build_sets(plain, progress=False)[0], progress=False)
    for a, b in zip(state.encoder.state_dict().values(), snaps[-1].encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The last snapshot exported the pipeline's way is the run's own model (the same id).
    last = export_surface_model(snaps[-1].encoder, snaps[-1].bank, settings, train, val, "si001-ash3",
                                tmp_path / "last.onnx", report["training"])
    assert last["id"] == report["models"]["si001-ash3"]["id"]
    # The mean of one snapshot is that snapshot's weights (batch norm recomputed).
    encoder, bank = average_snapshots(snaps[-1:], settings, train)
    weights = {k: v for k, v in encoder.state_dict().items() if "running" not in k and "num_batches" not in k}
    for k, v in weights.items():
        assert torch.equal(v, snaps[-1].encoder.state_dict()[k]), k
    assert torch.equal(bank.vectors[0], snaps[-1].bank.vectors[0])
    mean, _ = average_snapshots(snaps, settings, train)
    assert not torch.equal(mean.out.weight, snaps[-1].encoder.out.weight)
    losses = [validation_loss(s.encoder, s.bank, val, train, "si001-ash3") for s in snaps]
    assert all(loss > 0 for loss in losses) and len(set(losses)) == len(losses)
