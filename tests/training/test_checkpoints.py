"""Checkpoints as diffusers folders (model/, ema/), their base weights found by checksum through a
model root given where they are used, stage 2-3 checkpoints of the trained weights only, resume on
the parameters' device, and the errors of the flat layout, absent bitsandbytes and out of memory."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import pytest
import torch

from training import checkpoint as ckpt
from training import config
from training.datasets import TrainingError
from training.trainer import Worker, train

# A reduced SD 1.5: its block types and cross-attention layout with few channels, and a VAE that
# downsamples 2x (test_models writes the same shapes).
UNET = dict(block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8)
VAE = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
           block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)
SMALL_BASE = dict(image_size=32, frames=2, motion_frames=1, temporal_heads=4, emotion_dim=16,
                  speed_dim=16, face_locator_channels=[8], expression_tokens=2,
                  **{k: list(v) if isinstance(v, tuple) else v for k, v in UNET.items()})
NARROW = {"block_out_channels": [8, 16, 32, 64], "norm_num_groups": 4}


def write_sd15(root, seed: int = 0):
    """A diffusers folder of the reduced SD 1.5 under root/diffusion/sd15."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    folder = root / "diffusion" / "sd15"
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, **UNET).save_pretrained(
        folder / "unet")
    AutoencoderKL(**VAE).save_pretrained(folder / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction").save_pretrained(
        folder / "scheduler")
    return root


def spec_of(thresholds, root, out, model="tiny", models=None, **train_values):
    values = {"catalog": str(root), "out": str(out), "model": model, "stage": 0, "batch_size": 1,
              "max_steps": 1, "validate_every": 0, "checkpoint_every": 1000, "log_every": 1,
              **train_values}
    if models is not None:
        values["models_root"] = str(models)
    return config.build({"train": values, "select": dataclasses.asdict(thresholds),
                         "model": SMALL_BASE if model == "base" else NARROW,
                         "optim": {"warmup_steps": 1, "lr": 1e-3}})


class Spy(Worker):
    """A worker that counts its reports (Ray's report is a barrier)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reports: list[int] = []

    def report(self, metrics: dict) -> None:
        self.reports.append(metrics["step"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_optimizer_state_is_on_the_parameters_device_after_resume(
        curated_catalog, curated_thresholds, tmp_path, monkeypatch, device):
    import training.trainer as trainer

    built = []
    real = trainer.make_optimizer
    monkeypatch.setattr(trainer, "make_optimizer", lambda *a: built.append(real(*a)) or built[-1])
    out = tmp_path / "run"
    first = Spy(device=torch.device(device))
    train(spec_of(curated_thresholds, curated_catalog, out, max_steps=3, log_every=2), worker=first)
    assert first.reports == [2, 3]  # every log_every steps, and at the checkpoint (the last step)
    again = Spy(device=torch.device(device))
    summary = train(spec_of(curated_thresholds, curated_catalog, out, max_steps=4, log_every=2),
                    worker=again)
    assert summary["steps"] == 4 and again.reports == [4]
    optimizer = built[-1]
    checked = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            for value in optimizer.state[p].values():
                if torch.is_tensor(value) and value.dim() > 0:
                    assert value.device == p.device and p.device.type == device
                    checked += 1
    assert checked > 100  # exp_avg and exp_avg_sq of every trained tensor


def test_stages_keep_trained_weights_only_and_move_with_their_model_root(
        curated_catalog, curated_thresholds, tmp_path, monkeypatch):
    """Stage 1 from a reduced SD 1.5, stage 2 from it (init_from); the runs and the model root
    then move to other folders: stage 2 resumes and generates with the model root given, and
    is refused with base weights of other content, naming the file."""
    import skimage.data
    import skimage.io

    from jobs.media.sources import speak
    from training.generate import Generator, Request
    from training.models import EmoModel, build_model

    torch.set_num_threads(1)
    models = write_sd15(tmp_path / "models")
    runs = tmp_path / "runs"
    spec1 = spec_of(curated_thresholds, curated_catalog, runs / "one", "base", models, stage=1)
    train(spec1)
    one = ckpt.latest(runs / "one")
    saved = json.loads((one / ckpt.CONFIG_FILE).read_text())
    assert set(saved["base_weights"]) == {
        "diffusion/sd15/unet/diffusion_pytorch_model.safetensors",
        "diffusion/sd15/vae/diffusion_pytorch_model.safetensors"}
    pretrained = EmoModel.from_pretrained(one / ckpt.MODEL_DIR)
    weights = ckpt.load_tensors(one, ckpt.MODEL_DIR)
    assert pretrained.emotion_classes == spec1.data.emotion_classes
    assert set(pretrained.state_dict()) == set(weights)
    for name, value in pretrained.state_dict().items():
        assert torch.equal(value, weights[name]), name
    ema = EmoModel.from_pretrained(one / ckpt.EMA_DIR).state_dict()
    assert any(not torch.equal(ema[n], weights[n]) for n in weights)  # the EMA lags one step

    train(spec_of(curated_thresholds, curated_catalog, runs / "two", "base", models, stage=2,
                  init_from=str(runs / "one")))
    two = ckpt.latest(runs / "two")
    model = build_model(spec1.model)
    trained = {n for n, p in model.named_parameters()
               if any(p is q for q in model.trainable_parameters(2))}
    assert set(ckpt.load_tensors(two, ckpt.MODEL_DIR)) == trained
    assert set(ckpt.load_tensors(two, ckpt.EMA_DIR)) == trained
    assert ckpt.read_config(two)["init_from"]["sha256"] == ckpt.sha256(
        one / ckpt.EMA_DIR / ckpt.WEIGHTS_FILE)

    moved, elsewhere = tmp_path / "moved", tmp_path / "elsewhere"
    shutil.move(runs, moved)
    shutil.move(models, elsewhere)
    summary = train(spec_of(curated_thresholds, curated_catalog, moved / "two", "base", elsewhere,
                            stage=2, init_from=str(moved / "one"), max_steps=2))
    assert summary["steps"] == 2 and len(summary["losses"]) == 1

    gen = Generator(moved / "two", "cpu", models_root=elsewhere)
    expected = {**ckpt.load_tensors(ckpt.latest(moved / "one"), ckpt.EMA_DIR),
                **ckpt.load_tensors(ckpt.latest(moved / "two"), ckpt.EMA_DIR)}
    for name, value in gen.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    reference = tmp_path / "astronaut.png"
    skimage.io.imsave(reference, skimage.data.astronaut())
    speech = speak("Hi.", tmp_path / "speech.wav")
    result = gen.generate(Request(str(reference), str(speech), str(tmp_path / "out.mp4"), steps=1,
                                  guidance_audio=1.0, guidance_reference=1.0), progress=False)
    assert result.out.is_file() and result.frames > 0

    monkeypatch.setenv("EMOFORGE_MODELS", str(elsewhere))
    assert Generator(moved / "two", "cpu").spec.model.models_root == str(elsewhere)
    monkeypatch.delenv("EMOFORGE_MODELS")
    with pytest.raises(ckpt.CheckpointError, match="not found.*--models-root"):
        Generator(moved / "one", "cpu")  # the model root it was trained with is gone
    write_sd15(elsewhere, seed=1)  # the same files with other weights
    with pytest.raises(ckpt.CheckpointError, match=r"unet/diffusion_pytorch_model.safetensors: sha256"):
        Generator(moved / "two", "cpu", models_root=elsewhere)


def test_resume_ignores_the_model_root_and_compares_the_architecture():
    base = config.build({"train": {"model": "base", "models_root": "/mnt/a"}}).resolved()
    moved = config.build({"train": {"model": "base", "models_root": "/data/b"}}).resolved()
    ckpt.check_compatible(ckpt.identity(base), ckpt.identity(moved))
    wider = config.build({"train": {"model": "base", "models_root": "/mnt/a"},
                          "model": {"temporal_heads": 4}}).resolved()
    with pytest.raises(ckpt.CheckpointError, match="model.temporal_heads"):
        ckpt.check_compatible(ckpt.identity(base), ckpt.identity(wider))


def test_a_flat_checkpoint_is_refused_with_the_command_that_converts_it(
        curated_catalog, curated_thresholds, tmp_path):
    """A checkpoint in the single-file layout (model.safetensors, ema.safetensors of the trained
    parameters, state.pt, config.json whose model entry holds the model root) as the trainer
    wrote them: refused by resume and generation, converted, then it generates with its weights."""
    from safetensors.torch import save_file

    from jobs.bench.generate import untrained_checkpoint
    from training.generate import Generator

    written = untrained_checkpoint(tmp_path / "new")
    full = ckpt.load_tensors(written, ckpt.MODEL_DIR)
    ema = {k: v + 1.0 for k, v in ckpt.load_tensors(written, ckpt.MODEL_DIR).items()
           if k.startswith("temporal.")}
    flat = tmp_path / "old" / "checkpoints" / "step-00000003"
    flat.mkdir(parents=True)
    save_file(full, str(flat / "model.safetensors"))
    save_file(ema, str(flat / "ema.safetensors"))
    torch.save({"step": 3}, flat / ckpt.STATE_FILE)
    cfg = ckpt.read_config(written)
    cfg["model"] = cfg["spec"]["model"]  # the whole model config, models_root included
    for key in ("weights", "base_weights", "init_from"):
        cfg.pop(key, None)
    (flat / ckpt.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="python -m training.checkpoint convert"):
        Generator(flat, "cpu")
    with pytest.raises(ckpt.CheckpointError, match="python -m training.checkpoint convert"):
        train(spec_of(curated_thresholds, curated_catalog, tmp_path / "old"))
    ckpt.main(["convert", str(tmp_path / "old")])
    assert not (flat / "model.safetensors").exists()
    model = Generator(flat, "cpu").model.state_dict()
    for name, value in full.items():
        torch.testing.assert_close(model[name], ema.get(name, value), rtol=0, atol=0)


def test_adamw8bit_without_bitsandbytes_names_the_package(monkeypatch):
    from training.optim import make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    cfg = config.OptimConfig(optimizer="adamw8bit")
    with pytest.raises(config.TrainSpecError, match="bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    with pytest.raises(config.TrainSpecError, match="adamw8bit"):
        config.build({"optim": {"optimizer": "adam8"}})


def test_out_of_memory_names_the_stage_batch_frames_and_what_reduces_memory(
        curated_catalog, curated_thresholds, tmp_path, monkeypatch):
    import training.trainer as trainer

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "diffusion_loss", no_memory)
    with pytest.raises(TrainingError) as err:
        train(spec_of(curated_thresholds, curated_catalog, tmp_path / "run", batch_size=2))
    message = str(err.value)
    for part in ("stage 0", "batch_size 2", "4 frames + 2 motion frames", "64 px",
                 "gradient_checkpointing='on'", "adamw8bit", "grad_accum"):
        assert part in message, part
    assert not (tmp_path / "run" / "checkpoints").exists() or ckpt.latest(tmp_path / "run") is None
