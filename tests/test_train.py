"""The trainer: ONNX export parity, reproducibility, resuming, metadata the runtime reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="the trainer needs the train extra (torch)")

from stm_live.model.format import ModelInfo, Prototypes  # noqa: E402
from stm_live.model.runtime import SegmentationModel  # noqa: E402
from stm_live.train.export import export_model  # noqa: E402
from stm_live.train.net import Encoder, receptive_field_px  # noqa: E402
from stm_live.train.settings import SurfaceSettings, TrainSettings, load_train_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _randomised_encoder(seed: int = 0, *, hypercolumn: bool = False) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(hypercolumn=hypercolumn)
    for m in enc.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


@pytest.mark.parametrize("hypercolumn", [False, True])
def test_onnx_export_matches_torch(tmp_path: Path, hypercolumn: bool) -> None:
    encoder = _randomised_encoder(hypercolumn=hypercolumn)
    rng = np.random.default_rng(0)
    protos = Prototypes(rng.normal(size=(6, encoder.dim)).astype(np.float32), (0, 0, 0, 1, 2, 3), temperature=3.0)
    info = ModelInfo("parity", ("a", "b", "c"), 0.2, encoder.dim, context_px=receptive_field_px())
    export_model(encoder, info, tmp_path / "m.onnx", prototypes=protos)
    model = SegmentationModel(tmp_path / "m.onnx", provider="cpu")
    # The daemon's runtime reads the metadata back.
    assert model.info.classes == ("a", "b", "c") and model.info.context_px == 22 and model.info.nm_per_px == 0.2
    assert model.info.prototypes is not None and model.info.prototypes.temperature == 3.0
    # No exporter stack traces in the file: no paths of this checkout, an id that does not
    # depend on where the trainer ran.
    proto = onnx.load(tmp_path / "m.onnx")
    assert not any(n.metadata_props for n in proto.graph.node)
    assert str(REPO).encode() not in proto.SerializeToString()
    for shape in [(64, 64), (37, 53), (250, 250)]:  # any size, multiples of 4 or not
        x = rng.normal(size=(1, 1, *shape)).astype(np.float32)
        out = model.run(x, embedding=True)
        with torch.no_grad():
            emb = encoder(torch.from_numpy(x))
        assert out["embedding"].shape == (1, encoder.dim, *shape)
        assert np.abs(out["embedding"] - emb.numpy()).max() <= 1e-4
        d2 = ((emb[0].permute(1, 2, 0)[..., None, :] - torch.from_numpy(protos.vectors)) ** 2).sum(-1)
        p = torch.softmax(-d2 / protos.temperature, dim=-1).numpy()
        expected = np.stack([p[..., [0, 1, 2]].sum(-1), p[..., 3], p[..., 4], p[..., 5]])
        assert np.abs(out["probs"][0] - expected).max() <= 1e-4


@pytest.mark.parametrize("hypercolumn", [False, True])
def test_receptive_field_matches_a_gradient_probe(hypercolumn: bool) -> None:
    encoder = _randomised_encoder(1, hypercolumn=hypercolumn)
    x = torch.randn(1, 1, 129, 129, requires_grad=True)
    encoder(x)[0, :, 64, 64].sum().backward()
    touched = np.flatnonzero((x.grad[0, 0].abs() > 0).any(dim=0).numpy())
    assert 64 - touched.min() <= receptive_field_px()
    assert touched.max() - 64 <= receptive_field_px()
    assert 64 - touched.min() >= receptive_field_px() - 2  # and it is not a loose bound


def _tiny_settings(tmp_path: Path, **changes: object) -> TrainSettings:
    surfaces = [
        SurfaceSettings(name="si001-ash3", nm_per_px=0.2, frames=2, val_frames=1, size_nm=(12.0, 14.0),
                        input_nm_per_px=(0.1, 0.2)),
        SurfaceSettings(name="tio2-110", nm_per_px=0.1, frames=2, val_frames=1, size_nm=(6.0, 7.0),
                        input_nm_per_px=(0.05, 0.1)),
    ]
    values = dict(run_dir=tmp_path / "run", out_dir=tmp_path / "models", surfaces=surfaces, ssl_steps=3, steps=106,
                  batch=4, crop=32, widths=(4, 8, 8), dim=4, threads=1, checkpoint_every=3)
    values.update(changes)
    return TrainSettings(**values)


@pytest.mark.slow
def test_training_is_reproducible_and_resumable(tmp_path: Path) -> None:
    from stm_live.train.data import build_sets
    from stm_live.train.fit import fit

    a = _tiny_settings(tmp_path / "a")
    train, _ = build_sets(a, progress=False)
    state_a = fit(a, train, progress=False)
    b = _tiny_settings(tmp_path / "b")
    state_b = fit(b, build_sets(b, progress=False)[0], progress=False)
    for (k, va), vb in zip(state_a.encoder.state_dict().items(), state_b.encoder.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    # Killed at step 106, after the step-105 checkpoint (past the warm-up), then resumed:
    # the same weights as straight through.
    class Killed(Exception):
        pass

    def kill_at_106(step: int, losses: dict[str, float]) -> None:
        if step == 106:
            raise Killed

    c = _tiny_settings(tmp_path / "c")
    with pytest.raises(Killed):
        fit(c, train, progress=False, on_step=kill_at_106)
    resumed = fit(c, train, progress=False)
    assert resumed.step == 109
    for va, vc in zip(state_a.encoder.state_dict().values(), resumed.encoder.state_dict().values(), strict=True):
        assert torch.allclose(va.float(), vc.float(), atol=1e-6)


@pytest.mark.slow
def test_train_command_exports_models_the_runtime_loads(tmp_path: Path) -> None:
    from stm_live.cli import main

    settings = _tiny_settings(tmp_path, export_base_encoder=True)
    cfg = tmp_path / "train.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    args = ["train", "--config", str(cfg), "--no-progress", "--evaluate-frames", "1", "--calibrate-frames", "1"]
    assert main(args) == 0
    for name in ("si001-ash3", "tio2-110", "base-encoder"):
        model = SegmentationModel(tmp_path / "models" / f"{name}.onnx", provider="cpu")
        assert model.info.training["data_hash"]
        assert model.has_head == (name != "base-encoder")
    si = SegmentationModel(tmp_path / "models" / "si001-ash3.onnx", provider="cpu")
    assert si.info.classes == ("AsH3", "dangling_bond", "dimer_vacancy") and si.info.nm_per_px == 0.2
    assert (tmp_path / "run" / "report.json").is_file()


def test_train_settings_errors_name_the_file(tmp_path: Path) -> None:
    from stm_live.errors import ConfigError

    cfg = tmp_path / "t.yaml"
    cfg.write_text("steps: -4\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: steps = -4"):
        load_train_settings(cfg)
    cfg.write_text("stepz: 4\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_train_settings(cfg)
    cfg.write_text("surfaces: [{name: ge001, twin_probability: 0.3}]\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: surfaces\.0.*twin_probability applies to the 'random' surface"):
        load_train_settings(cfg)


def test_random_twins_change_the_data_digest_only_when_on(tmp_path: Path) -> None:
    from stm_live.train.data import _digest, simulate_prepared

    off = SurfaceSettings(name="random", frames=1, size_nm=(8.0, 8.0), input_nm_per_px=(0.1, 0.1))
    on = off.model_copy(update={"twin_probability": 1.0})
    settings = load_train_settings()
    assert _digest(settings, [off], "train") != _digest(settings, [on], "train")
    # Off is the setting's absence: the default recipe still makes the data the bundled model
    # was trained on (recorded in its metadata before twins existed).
    bundled = SegmentationModel(REPO / "models" / "si001-ash3.onnx", provider="cpu").info.training
    assert (_digest(settings, settings.surfaces, "train"), _digest(settings, settings.surfaces, "val")) == (
        bundled["data_hash"], bundled["val_hash"])
    # The same seed gives a different surface with twins (a class copies another's shapes).
    a, _, _ = simulate_prepared(off, 7)
    b, _, _ = simulate_prepared(on, 7)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_base_encoder_recipe_still_makes_its_training_data() -> None:
    from stm_live.train.data import _digest

    # The bundled base encoder has a recipe of its own; the default run does not export one.
    base_recipe = load_train_settings(REPO / "models" / "base-encoder.train.yaml")
    base = SegmentationModel(REPO / "models" / "base-encoder.onnx", provider="cpu").info.training
    assert base_recipe.export_base_encoder and not load_train_settings().export_base_encoder
    assert (_digest(base_recipe, base_recipe.surfaces, "train"), _digest(base_recipe, base_recipe.surfaces, "val")) == (
        base["data_hash"], base["val_hash"])


@pytest.mark.slow
def test_unlabelled_real_frames_join_self_supervised_pretraining(tmp_path: Path) -> None:
    from stm_live.io import write_sxm
    from stm_live.sim import simulate_scan
    from stm_live.train.pipeline import train_models

    frame = simulate_scan("si001-ash3", size_nm=10, pixels=100, seed=5).frame("Z")
    unlabelled = write_sxm(tmp_path / "unlabelled.sxm", [frame])
    settings = _tiny_settings(tmp_path, unlabelled=[unlabelled], steps=3, ssl_steps=4)
    report = train_models(settings, progress=False, evaluate_frames=0, calibrate_frames=0)
    assert report["training"]["unlabelled_frames"] == 1
    assert report["history"][-1]["step"] == 7


@pytest.mark.slow
def test_surfaces_can_train_the_encoder_without_being_exported(tmp_path: Path) -> None:
    from stm_live.train.pipeline import train_models

    base = _tiny_settings(tmp_path, steps=2, ssl_steps=1)
    surfaces = [base.surfaces[0], base.surfaces[1].model_copy(update={"export": False})]
    settings = base.model_copy(update={"surfaces": surfaces, "export_base_encoder": False})
    report = train_models(settings, progress=False, evaluate_frames=0, calibrate_frames=0)
    assert sorted(report["models"]) == ["si001-ash3"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["si001-ash3.onnx"]
    assert report["training"]["surfaces"] == ["si001-ash3", "tio2-110"]  # both trained the encoder


@pytest.mark.slow
def test_input_scale_reaches_the_data_the_metadata_and_adapted_models(tmp_path: Path) -> None:
    import csv

    from stm_live.cli import main
    from stm_live.io import write_sxm
    from stm_live.level import normalise_robust, resample_to_pitch
    from stm_live.model.format import load_onnx, read_info
    from stm_live.model.prepare import level_for_model
    from stm_live.sim import simulate_scan
    from stm_live.train.data import _digest
    from stm_live.train.pipeline import train_models

    mad = _tiny_settings(tmp_path / "mad")
    std = _tiny_settings(tmp_path / "std", input_scale="std", steps=2, ssl_steps=1, export_base_encoder=True)
    assert mad.normalisation == {"method": "robust", "scale": "mad", "clip": 8.0}
    assert _digest(mad, mad.surfaces, "train") != _digest(std, std.surfaces, "train")
    train_models(std, progress=False, evaluate_frames=0, calibrate_frames=0)
    base = tmp_path / "std" / "models" / "base-encoder.onnx"
    for path in (base, tmp_path / "std" / "models" / "si001-ash3.onnx"):
        assert read_info(load_onnx(path)).normalisation == {"method": "robust", "scale": "std", "clip": 8.0}

    # The runtime divides by the plain standard deviation, not the MAD.
    frame = simulate_scan("si001-ash3", size_nm=12.0, pixels=60, seed=3).frame("Z")
    image, _ = SegmentationModel(base, provider="cpu").prepare(frame)
    resampled = resample_to_pitch(level_for_model(frame.data, {"method": "step-aware"}).astype(np.float32),
                                  nm_per_px=frame.nm_per_px, target_nm_per_px=0.2)
    np.testing.assert_allclose(image, normalise_robust(resampled, scale="std", clip=8.0), atol=1e-5)
    assert not np.allclose(image, normalise_robust(resampled, scale="mad", clip=8.0), atol=1e-3)

    # A model adapted from that encoder normalises its input the same way.
    scan = write_sxm(tmp_path / "scan.sxm", [frame])
    points = tmp_path / "points.csv"
    with points.open("w", newline="") as fh:
        csv.writer(fh).writerows([["x_nm", "y_nm", "class"], [3.0, 3.0, "a"], [8.0, 8.0, "b"]])
    out = tmp_path / "adapted.onnx"
    assert main(["adapt", "--model", str(base), "--image", str(scan), "--points", str(points), "--out", str(out)]) == 0
    assert read_info(load_onnx(out)).normalisation["scale"] == "std"


def test_train_input_scale_trains_on_one_spread_and_exports_another(tmp_path: Path) -> None:
    from stm_live.errors import ConfigError
    from stm_live.train.data import _digest

    mad = _tiny_settings(tmp_path)
    encoder_only = [s.model_copy(update={"export": False}) for s in mad.surfaces]
    split = TrainSettings.model_validate({**mad.model_dump(), "surfaces": encoder_only, "export_base_encoder": True,
                                          "input_scale": "std", "train_input_scale": "mad"})
    assert split.normalisation["scale"] == "std" and split.train_normalisation["scale"] == "mad"
    # The training frames are those of a plain MAD run: same data digest.
    assert _digest(split, split.surfaces, "train") == _digest(mad, mad.surfaces, "train")
    std = TrainSettings.model_validate({**split.model_dump(), "train_input_scale": None})
    assert _digest(std, std.surfaces, "train") != _digest(mad, mad.surfaces, "train")
    # A head's prototypes would come from frames normalised otherwise than at run time: refused.
    cfg = tmp_path / "t.yaml"
    cfg.write_text("input_scale: std\ntrain_input_scale: mad\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: .*train_input_scale 'mad' differs from input_scale 'std'"):
        load_train_settings(cfg)
    # The bundled base encoder: trained on MAD, run on the standard deviation.
    base = SegmentationModel(REPO / "models" / "base-encoder.onnx", provider="cpu").info
    assert base.normalisation["scale"] == "std" and base.training["normalisation"]["scale"] == "mad"


@pytest.mark.slow
def test_ssl_weight_keeps_the_contrastive_loss_in_the_supervised_stage(tmp_path: Path) -> None:
    from stm_live.train.data import build_sets
    from stm_live.train.fit import fit

    def run(name: str, weight: float) -> tuple[list[float], list[dict[str, float]]]:
        settings = _tiny_settings(tmp_path / name, ssl_steps=2, steps=4, ssl_weight=weight)
        train, _ = build_sets(settings, progress=False)
        seen: list[dict[str, float]] = []
        state = fit(settings, train, progress=False, on_step=lambda step, losses: seen.append(dict(losses)))
        return [float(p.detach().sum()) for p in state.encoder.parameters()], seen

    plain, plain_losses = run("plain", 0.0)
    mixed, mixed_losses = run("mixed", 0.5)
    supervised = [losses for losses in mixed_losses if "prototype" in losses]
    assert len(supervised) == 4 and all("contrastive" in losses for losses in supervised)
    assert not any("contrastive" in losses for losses in plain_losses if "prototype" in losses)
    assert plain != mixed  # the extra loss changed the weights


@pytest.mark.slow
def test_random_surface_trains_the_encoder_with_episodes_from_one_frame(tmp_path: Path) -> None:
    from stm_live.train.data import build_sets, random_classes, sample_batch
    from stm_live.train.fit import fit

    base = _tiny_settings(tmp_path, steps=6, ssl_steps=1)
    random = SurfaceSettings(name="random", nm_per_px=0.1, frames=3, val_frames=1, size_nm=(8.0, 9.0),
                             input_nm_per_px=(0.08, 0.1), export=False)
    settings = base.model_copy(update={"surfaces": [base.surfaces[0], random]})
    train, _ = build_sets(settings, progress=False)
    assert train.classes["random"] == random_classes() == ("r1", "r2", "r3", "r4", "r5")
    frames = train.of_surface("random")
    assert len(frames) == 3 and all(int(train.masks[i].max()) >= 3 for i in frames)  # >= 3 classes each
    # Every random-surface batch is made of crops of one frame (its classes mean nothing across frames).
    rng = np.random.default_rng(0)
    for step in (1, 3, 5):
        batch = sample_batch(train, batch=6, crop=32, rng=rng, step=step)
        assert train.surfaces[batch.surface] == "random"
        present = set(np.unique(batch.y).tolist())
        assert any(present <= set(np.unique(train.masks[i]).tolist()) for i in frames)
    seen: list[dict[str, float]] = []
    state = fit(settings, train, progress=False, on_step=lambda step, losses: seen.append(dict(losses)))
    assert state.step == 7
    random_steps = [losses for losses in seen if "random_episodic" in losses]
    assert len(random_steps) == 3 and not any("prototype" in losses for losses in random_steps)
    assert all(np.isfinite(losses["loss"]) for losses in seen)


@pytest.mark.parametrize("hypercolumn", [False, True])
def test_embedding_rank_is_bounded_by_the_finest_width_unless_hypercolumn(hypercolumn: bool) -> None:
    torch.manual_seed(0)
    encoder = Encoder((4, 8, 8), dim=16, hypercolumn=hypercolumn).eval()
    with torch.no_grad():
        emb = encoder(torch.randn(1, 1, 48, 48))[0].reshape(16, -1)
    # Centred (the output convolution's bias is a constant shift), as pixels x channels.
    rank = int(torch.linalg.matrix_rank((emb - emb.mean(dim=1, keepdim=True)).T, rtol=1e-4))
    if hypercolumn:
        assert rank > 4
    else:
        assert rank <= 4


def test_tip_change_augment_blurs_and_dims_one_part_of_a_crop() -> None:
    from stm_live.train.fit import tip_change

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(6, 1, 32, 32)).astype(np.float32))
    assert tip_change(x, 0.0, np.random.default_rng(0)) is x  # off: no change, no draws
    y = tip_change(x, 1.0, np.random.default_rng(0))
    assert y.shape == x.shape and torch.equal(tip_change(x, 1.0, np.random.default_rng(0)), y)  # seeded
    for a, b in zip(x[:, 0], y[:, 0], strict=True):
        same = (a == b).all(dim=1)
        # Rows on one side of the change are untouched, the rest blurred and dimmed (white noise loses variance).
        assert same.any() and not same.all()
        changed = ~same
        rows = changed.nonzero().flatten().tolist()
        assert rows == list(range(rows[0], rows[-1] + 1)) and (rows[0] == 0 or rows[-1] == 31)  # one block at an edge
        assert b[changed].std() < 0.7 * a[changed].std()


def test_scale_jitter_rescales_each_crop_within_its_range() -> None:
    from stm_live.train.fit import rescale

    x = torch.from_numpy(np.random.default_rng(3).normal(size=(64, 1, 8, 8)).astype(np.float32))
    rng = np.random.default_rng(0)
    assert rescale(x, 1.0, rng) is x and rng.random() == np.random.default_rng(0).random()  # off: no draws
    y = rescale(x, 2.5, np.random.default_rng(0))
    factors = (y / x).flatten(1)
    assert torch.allclose(factors, factors[:, :1].expand_as(factors), rtol=1e-5)  # one factor per crop
    f = factors[:, 0].numpy()
    assert f.min() >= 1 / 2.5 - 1e-6 and f.max() <= 2.5 + 1e-6 and f.min() < 0.6 and f.max() > 1.7  # spans the range
    assert torch.equal(rescale(x, 2.5, np.random.default_rng(0)), y)  # seeded
