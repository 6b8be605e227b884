"""The base path (SD 1.5's layout, VAE latents, a full ReferenceNet) end to end on CPU at reduced
width: a diffusers folder written here (training.base_layout), then through the CLI stage 1 ->
stage 2 (init_from) -> stage 3, each resumed once mid-way with bf16 autocast and gradient
checkpointing on, then `emoforge generate` from stage 3. Checked against what the code under
test does not produce: the trainable set of each stage as EMO defines it (written out below),
weights compared between checkpoints, the ReferenceNet's gradients against a run without
checkpointing, an uninterrupted fp32 run against a resumed one, and PyAV's reading of the
video."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import wave
from pathlib import Path

import av
import pytest
import torch

from jobs.cli import main
from tests.training.conftest import FIXTURE_THRESHOLDS, REPO
from training.base_layout import model_overrides, set_overrides, write_sd15

STEPS = 4  # optimizer steps per stage; each stage stops at STEPS // 2 and is resumed


# --- the one place that knows the checkpoint layout ----------------------------------------------

def checkpoint_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    """The model weights a run saved at `step` (the trainer's checkpoint folder of that step;
    a checkpoint may hold only the trainable weights)."""
    from training import checkpoint as ckpt

    return ckpt.load_tensors(ckpt.checkpoints_dir(run) / f"step-{step:08d}", ckpt.MODEL_DIR)


# --- EMO's stages, as the test expects them ------------------------------------------------------

def single_key_attention(name: str) -> bool:
    """Queries and keys of attention over a single key (the ReferenceNet's cross-attention to its
    one learned token; self-attention at 1x1, the middle of a 64 px model): a softmax over one
    key is 1 whatever the query, so these get exactly zero gradient (values and outputs train)."""
    return any(part in name for part in (".to_q.", ".to_k.")) or (
        ".transformer_blocks." in name and ".norm2." in name)


def expected_trainable(name: str, stage: int, unused: set[str]) -> bool:
    """Stage 1 (images): the denoiser, the ReferenceNet (but the tail no reference feature
    depends on) and the face locator; stage 2 (video): temporal, motion, audio/expression
    context and emotion layers and the denoiser's cross-attention (attn2); stage 3: temporal and
    speed layers."""
    top = name.split(".")[0]
    if stage == 1:
        return top in ("denoiser", "face_locator") or (top == "reference_net"
                                                       and name not in unused)
    if stage == 2:
        return (top in ("temporal", "motion", "context", "emotion")
                or (top == "denoiser" and ".attn2." in name))
    return top in ("temporal", "speed")


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_sd15(root, reduced=True)
    return root


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sd15_layout_is_the_base_presets():
    """The full-width folder write_sd15 writes is the layout the base preset loads (checked
    without writing its 3.4 GB)."""
    from training.base_layout import SD15_UNET
    from training.models import ModelConfig

    cfg = ModelConfig.base("/models")
    assert {k: getattr(cfg, k) for k in SD15_UNET} == SD15_UNET
    assert model_overrides(reduced=False) == {}


def reduced_base(models_root: Path, **extra):
    from training.models import ModelConfig

    return ModelConfig.base(models_root, **model_overrides(reduced=True), **extra)


def reference_net_gradients(models_root: Path, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of the trainable ReferenceNet parameters after one stage-1 loss (2 samples,
    bf16 autocast) of the reduced base model, fixed seeds."""
    from tests.training.test_models import make_cond
    from training.models import build_model

    cfg = reduced_base(models_root)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.trainable_parameters(1)
    model.set_gradient_checkpointing(checkpointing)
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 1, 4, 8, 8, generator=g)
    cond = dataclasses.replace(make_cond(cfg, 2, 1, 0), motion_latents=None,
                               reference_latent=torch.randn(2, 4, 8, 8, generator=g))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(noisy, torch.tensor([700, 300]), cond).float().pow(2).mean()
    loss.backward()
    return {f"reference_net.{n}": p.grad.float()
            for n, p in model.reference_net.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def plain_gradients(models_root, one_thread) -> dict[str, torch.Tensor]:
    return reference_net_gradients(models_root, checkpointing=False)


def test_stage_1_with_checkpointing_trains_the_reference_net(models_root, plain_gradients):
    """Reference features are captured inside checkpointed transformer blocks: under bf16
    autocast and gradient checkpointing the ReferenceNet's gradients are those of a run
    without checkpointing, non-zero but where attention has a single key."""
    checkpointed = reference_net_gradients(models_root, checkpointing=True)
    assert checkpointed.keys() == plain_gradients.keys()
    zero = {n for n, g in checkpointed.items() if not g.any()}
    assert zero == {n for n, g in plain_gradients.items() if not g.any()}
    assert all(single_key_attention(n) for n in zero), sorted(zero)
    assert len(checkpointed) - len(zero) > 100
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, plain_gradients[name], atol=1e-3, rtol=0.1)


def speak_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def train_cli(catalog_root: str, models: Path, out: Path, stage: int, steps: int,
              precision: str = "bf16", init_from: Path | None = None,
              extra: tuple[str, ...] = ()) -> None:
    """`emoforge train jobs/train_base.toml` with the reduced layout and the fixture catalog
    (and `extra` overrides)."""
    select = [f"select.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}"
              for k, v in dataclasses.asdict(FIXTURE_THRESHOLDS).items()
              if v is not None and not isinstance(v, dict)]
    sets = [f'train.catalog="{catalog_root}"', f'train.out="{out}"',
            f'train.models_root="{models}"', f"train.stage={stage}",
            f"train.max_steps={steps}", f"train.checkpoint_every={STEPS // 2}",
            "train.keep_checkpoints=4", "train.validate_every=0", "train.sample_every=0",
            "train.loader_workers=0", "train.batch_size=1", "train.log_every=1",
            f'train.mixed_precision="{precision}"', 'train.gradient_checkpointing="on"',
            "optim.grad_accum=1", "optim.warmup_steps=1", "optim.lr=1e-3",
            "optim.weight_decay=0.0",  # a parameter changes only where its gradient is non-zero
            *set_overrides(reduced=True), *select, *extra]
    if init_from is not None:
        sets.append(f'train.init_from="{init_from}"')
    args = ["train", str(REPO / "jobs" / "train_base.toml")]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0


def test_base_stages_resume_and_generate_through_the_cli(curated_catalog, models_root, tmp_path,
                                                         plain_gradients):
    import skimage.data
    import skimage.io

    from jobs.media.sources import speak
    from training.models import build_model

    model = build_model(reduced_base(models_root))
    parameters = {n for n, _ in model.named_parameters()}  # not buffers (positional tables)
    unused = {f"reference_net.{n}" for n in model.reference_net.unused_by_reference_attention()}
    # zero gradients in exact arithmetic; rounding under bf16 can leave them a trace that
    # Adam's normalised step turns into a change: they may or may not move
    optional = {n for n in plain_gradients if single_key_attention(n)}
    # the learned nulls of the audio and expression: used only by samples that drop them (5%)
    optional |= {"context.audio_null", "context.expression_null"}
    # Only tracks whose emotion and clip expression carry a signal: a person's only track is
    # their own neutral, with intensity 0 and a zero clip expression, which give the emotion
    # table, its projection and the expression projection's weights no gradient. All persons
    # train (none held out for validation).
    signal = ("select.min_intensity=0.5", "data.val_fraction=0.0")
    previous = None
    for stage in (1, 2, 3):
        out = tmp_path / f"stage{stage}"
        train_cli(curated_catalog, models_root, out, stage, STEPS // 2, init_from=previous,
                  extra=signal)
        train_cli(curated_catalog, models_root, out, stage, STEPS, init_from=previous,
                  extra=signal)  # resumes
        mid, last = checkpoint_weights(out, STEPS // 2), checkpoint_weights(out, STEPS)
        both = mid.keys() & last.keys() & parameters
        changed = {n for n in both if not torch.equal(mid[n], last[n])}
        expected = {n for n in both if expected_trainable(n, stage, unused)}
        assert expected - optional <= changed <= expected, (
            stage, sorted((changed ^ expected) - optional)[:10])
        if stage == 1:  # with checkpointing, the ReferenceNet trained
            assert any(n.startswith("reference_net.") for n in changed)
        previous = out

    reference = tmp_path / "astronaut.png"
    skimage.io.imsave(reference, skimage.data.astronaut())
    speech = speak("Hello there.", tmp_path / "speech.wav")
    video = tmp_path / "out.mp4"
    assert main(["generate", "--checkpoint", str(previous), "--reference", str(reference),
                 "--audio", str(speech), "--out", str(video), "--steps", "2",
                 "--device", "cpu"]) == 0
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == math.ceil(speak_seconds(speech) * 25 - 1e-6)
    assert frames[0].shape == (64, 64, 3)


def test_base_resume_equals_an_uninterrupted_fp32_run(curated_catalog, models_root, tmp_path,
                                                      one_thread):
    """Stage 2 in fp32 with gradient checkpointing: STEPS at once, and STEPS // 2 then resumed
    to STEPS, save the same weights within 1e-6."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_cli(curated_catalog, models_root, whole, 2, STEPS, precision="no")
    train_cli(curated_catalog, models_root, part, 2, STEPS // 2, precision="no")
    train_cli(curated_catalog, models_root, part, 2, STEPS, precision="no")
    a, b = checkpoint_weights(whole, STEPS), checkpoint_weights(part, STEPS)
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[n], checkpoint_weights(part, STEPS // 2)[n]) for n in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_gpu_check_script_runs_every_part_on_cpu(tmp_path):
    """scripts/gpu_check.sh at a CPU size: the CUDA-marked tests (skipped here) and every part of
    training.gpu_check, one JSON."""
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--device", "cpu",
         "--layout", "reduced", "--size", "64", "--steps", "2", "--seconds", "0.4",
         "--sample-steps", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert {n: p["status"] for n, p in parts.items()} == dict.fromkeys(
        ("model", "stage1", "stage2", "resume", "generate"), "passed")
    assert parts["stage1"]["frames"] == 1 and parts["stage2"]["frames"] == 4
    assert parts["stage2"]["motion_frames"] == 2
    assert parts["stage1"]["trainable_parameters_m"] > parts["stage2"]["trainable_parameters_m"]
    assert parts["resume"]["killed_after_step"] == 2
    assert parts["resume"]["optimizer_state_device"] == "cpu"
    assert parts["generate"]["frames"] == 10 and parts["generate"]["windows"] == 3
    assert parts["generate"]["seconds_per_frame"] > 0
    tests = report["cuda_tests"]
    assert tests["status"] == "passed" and not tests["passed"]  # no CUDA here: all skipped
    assert any("needs CUDA" in s or "CUDA" in s for s in tests["skipped"])
