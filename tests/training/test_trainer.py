"""The training loop on the fixture catalog (generated talking faces curated by the real
pipeline): it learns, every condition is wired in, resume is exact, a checkpoint interrupted
while saving costs nothing, bad inputs are clear errors or logged exclusions."""

from __future__ import annotations

import dataclasses
import functools
import shutil

import pytest
import torch

import catalog
from training import checkpoint as ckpt
from training import config
from training.datasets import TrainingError, build_datasets
from training.diffusion import diffusion_loss, draw_noise, sample_generator
from training.models import PixelCodec
from training.trainer import train


@pytest.fixture
def tiny_spec(curated_thresholds):
    """spec(root, out, ...): the tiny config on `root` with the fixture catalog's thresholds."""
    return functools.partial(make_spec, curated_thresholds)


# The tiny layout at a quarter of its full-resolution width: these tests check the trainer, not
# the width, and the tiny default (32 channels at 64 px) takes several times longer here.
NARROW = {"block_out_channels": [8, 16, 32, 64], "norm_num_groups": 4}


def make_spec(thresholds, root, out, select=None, model=None, optim=None, dropout=None,
              data=None, **train_values):
    values = {"catalog": str(root), "out": str(out), "model": "tiny", "stage": 0, "batch_size": 2,
              "max_steps": 2, "validate_every": 0, "checkpoint_every": 1000, "log_every": 1,
              **train_values}
    select_values = {**dataclasses.asdict(thresholds), **(select or {})}
    return config.build({"train": values, "select": select_values,
                         "model": {**NARROW, **(model or {})},
                         "optim": {"warmup_steps": 1, "lr": 1e-3, **(optim or {})},
                         "dropout": dropout or {}, "data": data or {}})


def final_weights(out) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(ckpt.latest(out), ckpt.MODEL_DIR)


def fixed_noise(n: int, shape, t_range: tuple[int, int]) -> list:
    """n per-sample random streams (fresh generators on each call) whose timesteps lie in
    t_range: the same noise at every step, so one batch can be fitted."""
    cfg, dropout = config.DiffusionConfig(), config.DropoutConfig()
    chosen, k = [], 0
    while len(chosen) < n:
        _, t, _ = draw_noise(torch.zeros(1, *shape), [sample_generator(99, 0, k)], cfg, dropout)
        if t_range[0] <= int(t) <= t_range[1]:
            chosen.append(k)
        k += 1
    return [lambda k=k: sample_generator(99, 0, k) for k in chosen]


def test_tiny_model_overfits_a_batch(curated_catalog, tmp_path, tiny_spec):
    """Joint training on one fixed batch of 4 windows with fixed mid-schedule noise."""
    from training.models import build_model

    spec = tiny_spec(curated_catalog, tmp_path, dropout={c: 0.0 for c in config.CONDITIONS})
    batch = next(iter(build_datasets(spec)["train"].loader(0, batch_size=4)))
    first, last = overfit(build_model, spec, batch, steps=60, t_range=(400, 950))
    assert last < 0.3 * first, (first, last)


@pytest.mark.parametrize("condition, steps", [
    ("audio", 40), ("emotion", 40),
    # the reference and expression need 120 steps here (40 were not enough): slow, CI runs them
    pytest.param("reference", 120, marks=pytest.mark.slow),
    pytest.param("expression", 120, marks=pytest.mark.slow)])
def test_each_condition_is_wired_in(curated_catalog, tmp_path, tiny_spec, condition, steps):
    """A model that may see only `condition` (every other one dropped, motion frames too) fits a
    fixed batch at high noise, where the noisy input hardly shows the frame; taking the condition
    away then raises the loss. Each sample gets its own emotion label so that emotion, like the
    others, tells the samples apart; the expression vectors are standardized over the batch
    (blendshape scores are small and close on these synthetic faces, so 120 steps of a freshly
    initialised projection would hardly tell them apart). The expression is the per-frame one:
    the fixture's persons mostly have one track, their own neutral, whose clip expression (the
    default mode's, relative to that neutral) is zero, so the windows would carry the same
    vector."""
    from training.models import build_model

    only = {c: 0.0 if c == condition else 1.0 for c in config.CONDITIONS}
    data = {"expression_mode": "frame"} if condition == "expression" else None
    spec = tiny_spec(curated_catalog, tmp_path, dropout=only, data=data)
    batch = next(iter(build_datasets(spec)["train"].loader(0, batch_size=4)))
    batch.update(emotion=torch.arange(4), intensity=torch.ones(4))
    e = batch["expression"]
    batch["expression"] = (e - e.mean((0, 1))) / (e.std((0, 1)) + 1e-3)
    _, last = overfit(build_model, spec, batch, steps=steps, t_range=(700, 999))
    without = dataclasses.replace(spec, dropout=config.DropoutConfig(**{c: 1.0 for c in only}))
    assert loss_with(spec, without, batch) > 1.02 * last


def test_audio_alone_fits_the_mouth_better_with_its_own_audio(curated_catalog, tmp_path,
                                                               tiny_spec):
    """The default expression mode gives no per-frame jaw pose or expression: a model that may
    see only the audio (every other condition dropped, motion frames too) fits a fixed batch at
    high noise, and on the mouth region (the loss restricted to the windows' mouth masks) each
    sample's own audio fits better than another sample's (the batch's audio rolled by one)."""
    from training.models import build_model

    only_audio = {c: 0.0 if c == "audio" else 1.0 for c in config.CONDITIONS}
    spec = tiny_spec(curated_catalog, tmp_path, dropout=only_audio)
    assert spec.data.expression_mode == "clip"
    batch = next(iter(build_datasets(spec)["train"].loader(0, batch_size=4)))
    assert not batch["jaw_pose"].any()
    assert (batch["expression"] == batch["expression"][:, :1]).all()  # one vector per window
    _, last = overfit(build_model, spec, batch, steps=40, t_range=(700, 999))
    mouth = {**batch, "valid_mask": batch["valid_mask"] * batch["mouth_mask"]}
    other = {**mouth, "audio": batch["audio"].roll(1, 0)}
    assert not torch.equal(other["audio"], mouth["audio"])
    assert loss_with(spec, spec, other) > 1.02 * loss_with(spec, spec, mouth)


def overfit(build_model, spec, batch, steps: int, t_range: tuple[int, int]):
    """(first loss, last loss) of `steps` AdamW steps on one batch with fixed noise draws."""
    from training.diffusion import make_scheduler

    torch.manual_seed(0)
    model = build_model(spec.model)
    opt = torch.optim.AdamW(model.trainable_parameters(spec.train.stage), lr=2e-3, weight_decay=0.0)
    scheduler = make_scheduler(spec.diffusion)
    streams = fixed_noise(len(batch["frames"]), batch["frames"].shape[1:], t_range)
    overfit.state = model, scheduler, streams  # for loss_with

    def loss_of():
        return diffusion_loss(model, PixelCodec(), scheduler, batch, [s() for s in streams], spec)

    with torch.no_grad():
        first = float(loss_of())
    for _ in range(steps):
        loss = loss_of()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return first, float(loss_of())


@torch.no_grad()
def loss_with(spec, run_spec, batch) -> float:
    model, scheduler, streams = overfit.state
    return float(diffusion_loss(model, PixelCodec(), scheduler, batch, [s() for s in streams], run_spec))


def test_resume_is_exact(curated_catalog, tmp_path, tiny_spec):
    whole = train(tiny_spec(curated_catalog, tmp_path / "whole", max_steps=9))
    part = train(tiny_spec(curated_catalog, tmp_path / "part", max_steps=4))
    rest = train(tiny_spec(curated_catalog, tmp_path / "part", max_steps=9))
    data = build_datasets(tiny_spec(curated_catalog, tmp_path / "x"))["train"]
    assert 4 < data.num_batches(2) < 9, "the resumed part should cross an epoch boundary"
    assert part["steps"] == 4 and rest["steps"] == 9
    assert len(rest["losses"]) == 5
    assert rest["losses"] == pytest.approx(whole["losses"][4:], abs=1e-6)
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_interrupted_save_keeps_the_previous_checkpoint(curated_catalog, tmp_path, monkeypatch, tiny_spec):
    out = tmp_path / "run"
    train(tiny_spec(curated_catalog, out, max_steps=1, checkpoint_every=1))
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        train(tiny_spec(curated_catalog, out, max_steps=2, checkpoint_every=1))
    monkeypatch.undo()
    assert ckpt.latest(out).name == "step-00000001"
    assert list((out / "checkpoints").glob(".tmp-*")), "the interrupted save left its temp folder"
    resumed = train(tiny_spec(curated_catalog, out, max_steps=2, checkpoint_every=1))
    assert resumed["steps"] == 2 and len(resumed["losses"]) == 1
    assert ckpt.latest(out).name == "step-00000002"
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_validation_sample_video_and_logs(curated_catalog, tmp_path, tiny_spec):
    import av

    out = tmp_path / "run"
    summary = train(tiny_spec(curated_catalog, out, max_steps=1, validate_every=1,
                              sample_every=1, sample_steps=2))
    assert summary["last_metrics"]["val_loss"] > 0
    with av.open(str(out / "samples" / "step-00000001.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (64, 128, 3)  # real | generated
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_refuses_another_model_config(curated_catalog, tmp_path, tiny_spec):
    train(tiny_spec(curated_catalog, tmp_path, max_steps=1))
    other = tiny_spec(curated_catalog, tmp_path, max_steps=2, model={"emotion_dim": 32})
    with pytest.raises(ckpt.CheckpointError, match="model.emotion_dim"):
        train(other)


def test_empty_selection_lists_the_drop_reasons(curated_catalog, tmp_path, tiny_spec):
    spec = tiny_spec(curated_catalog, tmp_path, select={"min_face_px_median": 5000})
    with pytest.raises(TrainingError, match=r"face too small: \d+"):
        train(spec)


def test_missing_crops_are_named_and_training_goes_on(curated_catalog, tmp_path, tiny_spec,
                                                     curated_thresholds, caplog):
    """The dataset opens no clip when built; the windows of tracks whose clips are missing are
    logged by file and taken from a track that reads."""
    root = tmp_path / "catalog"
    shutil.copytree(curated_catalog, root)
    index = catalog.select(root, curated_thresholds)
    kept = index.filter(index["keep"]).sort_by("track_id")
    gone = [root / p for p in kept["crop_path"].to_pylist()[:-1]]
    for path in gone:
        path.unlink()
    with caplog.at_level("ERROR", logger="training.data"):
        summary = train(tiny_spec(root, tmp_path / "run", max_steps=1))
    assert summary["steps"] == 1 and summary["excluded"] == {}
    assert any(f"{path}: no such file" in caplog.text for path in gone)


def test_a_catalog_of_another_schema_version_gets_the_migrate_hint(tmp_path, tiny_spec):
    from pathlib import Path

    from catalog.migrate import SchemaVersionError

    old = tmp_path / "catalog_v0"
    shutil.copytree(Path(__file__).parents[1] / "data" / "catalog_v0", old)
    with pytest.raises(SchemaVersionError, match="emoforge catalog migrate"):
        train(tiny_spec(old, tmp_path / "run"))


def test_spec_errors_name_what_is_valid():
    with pytest.raises(config.TrainSpecError, match="valid:.*batch_size"):
        config.build({"train": {"batch_sise": 2}})
    with pytest.raises(config.TrainSpecError, match="unknown sections"):
        config.build({"trian": {}})
    with pytest.raises(config.TrainSpecError, match="follow the model"):
        config.build({"data": {"frames": 7}})
    stage1 = config.build({"train": {"stage": 1}})
    assert (stage1.data.frames, stage1.data.motion_frames) == (1, 0)
    assert stage1.model.frames == 4  # the model keeps its video shape for stage 2
    again = config.from_resolved(stage1.resolved())
    assert again == stage1


def test_a_checkpoint_from_before_input_images_rebuilds_its_model():
    """Checkpoints written before `[model] input_images`, `audio_time_embedding` and
    `residual_scale` existed had none of them (they denoised the frames themselves); today's
    tiny preset has all three."""
    resolved = config.build({}).resolved()
    assert resolved["model"]["input_images"] == ["reference"]
    assert resolved["model"]["audio_time_embedding"] is True
    assert resolved["model"]["residual_scale"] == 3.0
    for name in ("input_images", "audio_time_embedding", "residual_scale"):
        del resolved["model"][name]
    old = config.from_resolved(resolved).model
    assert old.input_images == () and old.audio_time_embedding is False
    assert old.residual_scale == 0.0


@pytest.mark.ray
def test_two_ray_workers_match_one_worker_with_twice_the_batch(curated_catalog, tmp_path, ray_local, tiny_spec):
    from training import launcher
    from training.models import build_model
    from training.trainer import seed_everything

    one = launcher.run(tiny_spec(curated_catalog, tmp_path / "one", batch_size=2, max_steps=2))
    two = launcher.run(tiny_spec(curated_catalog, tmp_path / "two", batch_size=1, max_steps=2,
                                 num_workers=2))
    assert one["steps"] == 2 and two["checkpoint"]
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    spec = tiny_spec(curated_catalog, tmp_path / "x")
    seed_everything(spec.train.seed)
    initial = build_model(spec.model).state_dict()
    # DDP sums gradients in another order than one batch of 2b; Adam divides by sqrt(v), so
    # elements with near-zero gradients can differ by a few percent of one step (lr 1e-3).
    moved = max(float((a[n] - initial[n]).abs().max()) for n in a)
    assert moved > 1e-3
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)
    model = build_model(spec.model)
    ckpt.load_weights(model, ckpt.resolve(tmp_path / "two"), ema=True)
