"""The training loop, one readable function: selection, data, model, optimizer, then for each
optimizer step: micro-batches -> encode -> noise -> masked v-prediction loss with min-SNR weights
-> backward -> clip -> AdamW -> EMA; validation, sample videos and checkpoints at intervals;
exact resume (model, optimizer, schedule, EMA, RNG and data position).

It runs the same in one local process (`Worker()`) and in each Ray Train worker
(training/launcher.py passes a worker whose `wrap` applies DDP and whose `report` is Ray's).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training import checkpoint as ckpt
from training.config import CONDITIONS, TrainSpec
from training.expression import emotion_statistics
from training.datasets import TrainingError, build_datasets, make_loader
from training.diffusion import (
    batch_conditions,
    diffusion_loss,
    encode_frames,
    make_scheduler,
    sample_generator,
)
from training.optim import make_optimizer, make_schedule

log = logging.getLogger(__name__)

@dataclass
class Worker:
    """Where the loop runs: rank, world size, device, and the hooks the launcher overrides."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict) -> None:  # a barrier under Ray Train
        pass

    def any(self, flag: bool) -> bool:
        """True when any rank says so (all ranks must stop on the same step)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())


def train(spec: TrainSpec, resume: str | None = None, worker: Worker | None = None) -> dict:
    """Train per `spec`; resume from `resume` (a run or checkpoint folder), else from the newest
    checkpoint in spec.train.out when there is one. Returns a summary (steps, losses, seconds)."""
    from training.models import build_codec, build_model

    worker = worker or Worker()
    t_cfg = spec.train
    # Denormal floats (tiny activations at low-noise timesteps) made some CPU steps 20x slower.
    torch.set_flush_denormal(True)
    out = Path(t_cfg.out)
    seed_everything(t_cfg.seed)
    datasets = build_datasets(spec)
    train_set = datasets["train"]
    codec = build_codec(spec.model)
    model = build_model(spec.model, spec.data.emotion_classes)
    init = ckpt.resolve(t_cfg.init_from) if t_cfg.init_from else None
    if init is not None:  # the previous stage, on the base weights it was trained from
        ckpt.check_base_weights(ckpt.read_config(init), spec.model.models_root)
        ckpt.load_weights(model, init, ema=True)
    trainable = [p for p in model.trainable_parameters(t_cfg.stage)]
    names = {id(p): n for n, p in model.named_parameters()}
    trainable_named = {names[id(p)]: p for p in trainable}
    ema = {n: p.detach().clone() for n, p in trainable_named.items()}
    scheduler = make_scheduler(spec.diffusion)
    resolved = spec.resolved()
    source = ckpt.resolve(resume) if resume else ckpt.latest(out)
    if worker.rank == 0:
        ckpt.clean_partial(out)
    state = None
    if source is not None:
        saved = ckpt.read_config(source)
        ckpt.check_compatible(saved, ckpt.identity(resolved))
        ckpt.check_base_weights(saved, spec.model.models_root)
        ckpt.load_weights(model, source, ema=False)
        ema.update({k: v for k, v in ckpt.load_tensors(source, ckpt.EMA_DIR).items() if k in ema})
        state = ckpt.load_state(source)
    # On the device before the optimizer exists: its state is created (or loaded) there.
    use_cuda = worker.device.type == "cuda"
    bf16 = t_cfg.mixed_precision == "bf16" or (t_cfg.mixed_precision == "auto" and use_cuda)
    model.to(worker.device)
    codec.to(worker.device)
    if use_cuda and bf16:  # frozen weights need no fp32 master copy
        codec.to(torch.bfloat16)
        model.frozen_to(torch.bfloat16, t_cfg.stage)
    if t_cfg.gradient_checkpointing == "on" or (t_cfg.gradient_checkpointing == "auto" and use_cuda):
        model.set_gradient_checkpointing(True)
    autocast = torch.autocast(worker.device.type, dtype=torch.bfloat16, enabled=bf16)
    ddp = worker.wrap(model)
    core = getattr(ddp, "module", ddp)
    optimizer = make_optimizer(trainable, spec.optim)
    schedule = make_schedule(optimizer, spec.optim)
    step, epoch, batch_in_epoch = 0, 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        restore_rng(state["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", source, step, epoch, batch_in_epoch)
    ema = {k: v.to(worker.device) for k, v in ema.items()}
    b, accum = t_cfg.batch_size, spec.optim.grad_accum
    per_epoch = train_set.num_batches(b, worker.world_size)
    if per_epoch < accum:
        raise TrainingError(f"the training split gives {per_epoch} batches of {b} per worker per "
                            f"epoch, fewer than grad_accum={accum}: select more tracks or lower "
                            "batch_size")
    saved_config = checkpoint_config(spec, resolved, init, train_set) if worker.rank == 0 else {}
    writer = summary_writer(out) if worker.rank == 0 else None
    started, losses = time.monotonic(), []
    progress = progress_bar(t_cfg.max_steps, step, worker.rank)
    loader = None
    while step < t_cfg.max_steps:
        if loader is None:
            loader = iter(make_loader(train_set, epoch, batch_in_epoch, b, worker.rank,
                                      worker.world_size, t_cfg.loader_workers))
        step_loss = 0.0
        try:
            for micro in range(accum):
                batch = next(loader, None)
                if batch is None:  # epoch done: the next one starts at batch 0
                    epoch, batch_in_epoch = epoch + 1, 0
                    loader = iter(make_loader(train_set, epoch, 0, b, worker.rank,
                                              worker.world_size, t_cfg.loader_workers))
                    batch = next(loader)
                batch_in_epoch += 1
                batch = {k: v.to(worker.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                generators = [sample_generator(t_cfg.seed, step * accum + micro, worker.rank * b + j)
                              for j in range(b)]
                sync = micro == accum - 1
                with (ddp.no_sync() if not sync and hasattr(ddp, "no_sync") else contextlib.nullcontext()), autocast:
                    loss = diffusion_loss(ddp, codec, scheduler, batch, generators, spec)
                    (loss / accum).backward()
                step_loss += float(loss.detach()) / accum
            if spec.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, spec.optim.max_grad_norm)
            optimizer.step()
        except torch.OutOfMemoryError as exc:
            raise TrainingError(out_of_memory_message(spec, worker)) from exc
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step += 1
        update_ema(ema, trainable_named, t_cfg.ema_decay, step)
        losses.append(step_loss)
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}")
        metrics = {"step": step, "loss": step_loss, "lr": schedule.get_last_lr()[0], "epoch": epoch}
        log_step = step % t_cfg.log_every == 0
        if writer is not None and log_step:
            writer.add_scalar("train/loss", step_loss, step)
            writer.add_scalar("train/lr", metrics["lr"], step)
        if t_cfg.validate_every and step % t_cfg.validate_every == 0 and worker.rank == 0:
            with swapped(core, trainable_named, ema):
                metrics["val_loss"] = validation_loss(core, codec, scheduler, datasets["val"], spec,
                                                      worker.device)
            if writer is not None and metrics["val_loss"] is not None:
                writer.add_scalar("val/loss", metrics["val_loss"], step)
        if t_cfg.sample_every and step % t_cfg.sample_every == 0 and worker.rank == 0:
            with swapped(core, trainable_named, ema):
                write_sample(core, codec, datasets["val"], spec,
                             out / "samples" / f"step-{step:08d}.mp4")
        over_time = bool(t_cfg.max_minutes) and time.monotonic() - started > 60 * t_cfg.max_minutes
        stop = worker.any(over_time)
        save_step = step % t_cfg.checkpoint_every == 0 or step == t_cfg.max_steps or stop
        if save_step and worker.rank == 0:  # the other ranks go on; the next all-reduce waits
            state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                     "rng": rng_state()}
            ckpt.save(out, step, core, ema, state, {**saved_config, "step": step},
                      t_cfg.keep_checkpoints, trainable_only=init is not None and t_cfg.stage in (2, 3))
        if log_step or save_step:  # every rank on the same steps: Ray's report is a barrier
            worker.report(metrics)
        if stop:
            log.info("stopping after %d steps: max_minutes=%s reached", step, t_cfg.max_minutes)
            break
    progress.close()
    if writer is not None:
        writer.close()
    return {"steps": step, "losses": losses, "seconds": time.monotonic() - started,
            "last_metrics": metrics if losses else {},
            "excluded": datasets["excluded"], "tracks": len(train_set.tracks),
            "checkpoint": str(ckpt.latest(out)) if worker.rank == 0 else None}


def out_of_memory_message(spec: TrainSpec, worker: Worker) -> str:
    """What ran out of device memory and the settings that need less."""
    t, m, d = spec.train, spec.model, spec.data
    return (f"out of memory on {worker.device} in stage {t.stage}: batch_size {t.batch_size} "
            f"windows of {d.frames} frames + {d.motion_frames} motion frames at {d.size} px "
            f"({m.codec} codec, gradient_checkpointing={t.gradient_checkpointing!r}, "
            f"mixed_precision={t.mixed_precision!r}, optimizer={spec.optim.optimizer!r}). Settings "
            "that need less memory: train.gradient_checkpointing='on', "
            "optim.optimizer='adamw8bit' (bitsandbytes), fewer frames ([model] frames, "
            "motion_frames), a smaller train.batch_size (optim.grad_accum keeps the batch per "
            "step); see docs/training.md for each stage's memory")


@torch.no_grad()
def validation_loss(model, codec, scheduler, dataset, spec: TrainSpec,
                    device: torch.device) -> float | None:
    """Mean loss over the first val_batches batches of the validation split with fixed noise
    (the same draws at every validation, so values are comparable over training)."""
    if dataset is None or dataset.num_batches(spec.train.batch_size, 1) == 0:
        return None
    model.eval()
    values = []
    loader = make_loader(dataset, 0, 0, spec.train.batch_size)
    for i, batch in enumerate(loader):
        if i == spec.train.val_batches:
            break
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        generators = [sample_generator(spec.train.seed, -1 - i, j) for j in range(len(batch["frames"]))]
        values.append(float(diffusion_loss(model, codec, scheduler, batch, generators, spec)))
    model.train()
    return sum(values) / len(values) if values else None


def write_sample(model, codec, dataset, spec: TrainSpec, path: Path) -> None:
    """A sample video from the EMA weights: the first validation window, generated from its
    reference, audio and expression, next to the real frames (left: real, right: generated)."""
    from pipeline.media import write_video
    from training.sampling import denoise_window, to_uint8

    if dataset is None or len(dataset.tracks) == 0:
        return
    model.eval()
    device = next(model.parameters()).device
    batch = next(iter(make_loader(dataset, 0, 0, 1)))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        latents = encode_frames(codec, batch["frames"])
        keep_all = {name: torch.zeros(1, dtype=torch.bool, device=device) for name in CONDITIONS}
        cond = batch_conditions(batch, codec.encode(batch["reference"]),
                                encode_frames(codec, batch["motion"]), keep_all)
        out = denoise_window(model, make_scheduler(spec.diffusion, "ddim"), cond, tuple(latents.shape),
                             steps=spec.train.sample_steps, generator=torch.Generator().manual_seed(0))
        frames = codec.decode(out.flatten(0, 1))
    real = to_uint8(batch["frames"][0]).cpu().numpy()
    fake = to_uint8(frames).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), np.concatenate([real, fake], axis=2), fps=25)
    model.train()


def catalog_uri(root: str) -> str:
    """The catalog as recorded in checkpoints: an absolute path, or the store URI."""
    return root if "://" in str(root) else str(Path(root).resolve())


def checkpoint_config(spec: TrainSpec, resolved: dict, init: Path | None, train_set) -> dict:
    """A checkpoint's config.json (but its step): identity, spec, catalog version, the base
    weights' checksums, the checkpoint the run started from and, with clip-level expression,
    the training set's expression statistics per emotion (what generation's --emotion uses)."""
    import catalog
    from training.models.sd15 import weight_files

    manifest = catalog.read_manifest(spec.train.catalog)
    root = spec.model.models_root
    base = ckpt.base_checksums(root, weight_files(root)) if spec.model.init == "sd15" else {}
    statistics = (emotion_statistics(train_set.tracks, spec.data.emotion_classes)
                  if spec.data.expression_mode == "clip" else None)
    return {**ckpt.identity(resolved), "spec": resolved, "base_weights": base,
            "expression_statistics": statistics,
            "init_from": ckpt.init_record(init) if init is not None else None,
            "catalog": {"root": catalog_uri(spec.train.catalog),
                        "version": manifest.get("version"),
                        "schema_version": manifest.get("schema_version"),
                        "stages": {name: {k: v for k, v in s.items() if k in ("backend", "config", "fingerprint")}
                                   for name, s in manifest.get("stages", {}).items()}}}


@torch.no_grad()
def update_ema(ema: dict, params: dict, decay: float, step: int) -> None:
    """EMA of the trained parameters with the usual warm-up: decay min(decay, (1+s)/(10+s))."""
    d = min(decay, (1 + step) / (10 + step))
    for name, p in params.items():
        ema[name].mul_(d).add_(p.detach(), alpha=1 - d)


class swapped:
    """Context: the model runs with the EMA weights inside, its own weights after."""

    def __init__(self, model, params: dict, ema: dict):
        self.params, self.ema, self.saved = params, ema, {}

    def __enter__(self):
        for name, p in self.params.items():
            self.saved[name] = p.detach().clone()
            p.data.copy_(self.ema[name])

    def __exit__(self, *exc):
        for name, p in self.params.items():
            p.data.copy_(self.saved[name])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def summary_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; say so instead of failing the run
        log.warning("tensorboard is not installed: no TensorBoard logs")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def progress_bar(total: int, done: int, rank: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", disable=rank != 0,
                dynamic_ncols=True, mininterval=1.0)

