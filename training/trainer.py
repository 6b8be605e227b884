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
from training.diffusion import (
    add_noise,
    augment_motion,
    draw_noise,
    make_scheduler,
    masked_loss,
    min_snr_weights,
    pixel_weights,
    sample_generator,
)

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why."""


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

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def train(spec: TrainSpec, resume: str | None = None, worker: Worker | None = None) -> dict:
    """Train per `spec`; resume from `resume` (a run or checkpoint folder), else from the newest
    checkpoint in spec.train.out when there is one. Returns a summary (steps, losses, seconds)."""
    from training.models import build_model

    worker = worker or Worker()
    t_cfg = spec.train
    # Denormal floats (tiny activations at low-noise timesteps) made some CPU steps 20x slower.
    torch.set_flush_denormal(True)
    out = Path(t_cfg.out)
    seed_everything(t_cfg.seed)
    datasets = build_datasets(spec)
    train_set = datasets["train"]
    model = build_model(spec.model)
    if t_cfg.init_from:
        load_weights(model, ckpt.resolve(t_cfg.init_from), ema=True)
    trainable = [p for p in model.trainable_parameters(t_cfg.stage)]
    names = {id(p): n for n, p in model.named_parameters()}
    trainable_named = {names[id(p)]: p for p in trainable}
    ema = {n: p.detach().clone() for n, p in trainable_named.items()}
    optimizer = torch.optim.AdamW(trainable, lr=spec.optim.lr, betas=(spec.optim.beta1, spec.optim.beta2),
                                  weight_decay=spec.optim.weight_decay)
    warmup = max(1, spec.optim.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    scheduler = make_scheduler(spec.diffusion)
    step, epoch, batch_in_epoch = 0, 0, 0
    resolved = spec.resolved()
    source = ckpt.resolve(resume) if resume else ckpt.latest(out)
    if worker.rank == 0:
        ckpt.clean_partial(out)
    if source is not None:
        check_compatible(ckpt.read_config(source), resolved)
        load_weights(model, source, ema=False)
        ema.update({k: v for k, v in ckpt.load_tensors(source, ckpt.EMA_FILE).items() if k in ema})
        state = ckpt.load_state(source)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        restore_rng(state["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", source, step, epoch, batch_in_epoch)
    use_cuda = worker.device.type == "cuda"
    if t_cfg.gradient_checkpointing == "on" or (t_cfg.gradient_checkpointing == "auto" and use_cuda):
        model.set_gradient_checkpointing(True)
    autocast = torch.autocast(worker.device.type, dtype=torch.bfloat16,
                              enabled=t_cfg.mixed_precision == "bf16"
                              or (t_cfg.mixed_precision == "auto" and use_cuda))
    ddp = worker.wrap(model)
    core = getattr(ddp, "module", ddp)
    ema = {k: v.to(worker.device) for k, v in ema.items()}
    b, accum = t_cfg.batch_size, spec.optim.grad_accum
    per_epoch = train_set.num_batches(b, worker.world_size)
    if per_epoch < accum:
        raise TrainingError(f"the training split gives {per_epoch} batches of {b} per worker per "
                            f"epoch, fewer than grad_accum={accum}: select more tracks or lower "
                            "batch_size")
    writer = summary_writer(out) if worker.rank == 0 else None
    started, losses = time.monotonic(), []
    progress = progress_bar(t_cfg.max_steps, step, worker.rank)
    loader = None
    while step < t_cfg.max_steps:
        if loader is None:
            loader = iter(make_loader(train_set, epoch, batch_in_epoch, b, worker,
                                      t_cfg.loader_workers))
        step_loss = 0.0
        for micro in range(accum):
            batch = next(loader, None)
            if batch is None:  # epoch done: the next one starts at batch 0
                epoch, batch_in_epoch = epoch + 1, 0
                loader = iter(make_loader(train_set, epoch, 0, b, worker, t_cfg.loader_workers))
                batch = next(loader)
            batch_in_epoch += 1
            batch = {k: v.to(worker.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            generators = [sample_generator(t_cfg.seed, step * accum + micro, worker.rank * b + j)
                          for j in range(b)]
            sync = micro == accum - 1
            with (ddp.no_sync() if not sync and hasattr(ddp, "no_sync") else contextlib.nullcontext()), autocast:
                loss = diffusion_loss(ddp, core, scheduler, batch, generators, spec)
                (loss / accum).backward()
            step_loss += float(loss.detach()) / accum
        if spec.optim.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, spec.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step += 1
        update_ema(ema, trainable_named, t_cfg.ema_decay, step)
        losses.append(step_loss)
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}")
        metrics = {"step": step, "loss": step_loss, "lr": schedule.get_last_lr()[0], "epoch": epoch}
        if writer is not None and step % t_cfg.log_every == 0:
            writer.add_scalar("train/loss", step_loss, step)
            writer.add_scalar("train/lr", metrics["lr"], step)
        if t_cfg.validate_every and step % t_cfg.validate_every == 0 and worker.rank == 0:
            with swapped(core, trainable_named, ema):
                metrics["val_loss"] = validation_loss(core, scheduler, datasets["val"], spec, worker)
            if writer is not None and metrics["val_loss"] is not None:
                writer.add_scalar("val/loss", metrics["val_loss"], step)
        if t_cfg.sample_every and step % t_cfg.sample_every == 0 and worker.rank == 0:
            with swapped(core, trainable_named, ema):
                write_sample(core, datasets["val"], spec, out / "samples" / f"step-{step:08d}.mp4")
        over_time = bool(t_cfg.max_minutes) and time.monotonic() - started > 60 * t_cfg.max_minutes
        stop = worker.any(over_time)
        if step % t_cfg.checkpoint_every == 0 or step == t_cfg.max_steps or stop:
            if worker.rank == 0:
                state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                         "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                         "rng": rng_state()}
                ckpt.save(out, step, model_state(core), ema, state,
                          checkpoint_config(spec, resolved, step), t_cfg.keep_checkpoints)
            worker.barrier()
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


def diffusion_loss(ddp, core, scheduler, batch: dict, generators, spec: TrainSpec) -> torch.Tensor:
    """The masked, min-SNR-weighted v-prediction loss of one micro-batch."""
    with torch.no_grad():
        latents = encode_frames(core.codec, batch["frames"])
        reference = core.codec.encode(batch["reference"])
        motion = encode_frames(core.codec, batch["motion"])
    noise, t, drop = draw_noise(latents, generators, spec.diffusion, spec.dropout)
    motion = augment_motion(motion, generators, spec.diffusion.motion_noise)
    noisy, target = add_noise(scheduler, latents, noise, t)
    prediction = ddp(noisy, t, batch_conditions(batch, reference, motion, drop))
    weights = min_snr_weights(scheduler, t, spec.diffusion.min_snr_gamma)
    mask = pixel_weights(batch["valid_mask"], batch["mouth_mask"], tuple(latents.shape[-2:]),
                         spec.diffusion.mouth_weight)
    return masked_loss(prediction, target, mask, weights)


def batch_conditions(batch: dict, reference: torch.Tensor, motion: torch.Tensor,
                     drop: dict[str, torch.Tensor]):
    """models.Conditions of a collated batch with encoded reference/motion latents; conditions
    a sample lacks (no audio features, no expression, unknown emotion) are dropped for it."""
    from training.models import Conditions

    drop = {**drop, "audio": drop["audio"] | ~batch["audio_valid"],
            "expression": drop["expression"] | ~batch["expression_valid"],
            "emotion": drop["emotion"] | (batch["emotion"] < 0)}
    return Conditions(reference_latent=reference, motion_latents=motion, audio=batch["audio"],
                      expression=batch["expression"], jaw_pose=batch["jaw_pose"],
                      emotion=batch["emotion"], intensity=batch["intensity"],
                      face_mask=batch["face_mask"], mouth_mask=batch["reference_mouth"],
                      head_speed=batch["head_speed"], drop=drop)


def encode_frames(codec, frames: torch.Tensor) -> torch.Tensor:
    """[B,F,3,S,S] pixels -> [B,F,c,h,w] latents (F may be 0)."""
    b, f = frames.shape[:2]
    if f == 0:
        probe = codec.encode(frames.new_zeros((1, *frames.shape[2:])))
        return probe.new_zeros((b, 0, *probe.shape[1:]))
    latents = codec.encode(frames.flatten(0, 1))
    return latents.reshape(b, f, *latents.shape[1:])


@torch.no_grad()
def validation_loss(model, scheduler, dataset, spec: TrainSpec, worker: Worker) -> float | None:
    """Mean loss over the first val_batches batches of the validation split with fixed noise
    (the same draws at every validation, so values are comparable over training)."""
    if dataset is None or dataset.num_batches(spec.train.batch_size, 1) == 0:
        return None
    model.eval()
    values = []
    loader = make_loader(dataset, 0, 0, spec.train.batch_size, Worker(device=worker.device))
    for i, batch in enumerate(loader):
        if i == spec.train.val_batches:
            break
        batch = {k: v.to(worker.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        generators = [sample_generator(spec.train.seed, -1 - i, j) for j in range(len(batch["frames"]))]
        values.append(float(diffusion_loss(model, model, scheduler, batch, generators, spec)))
    model.train()
    return sum(values) / len(values) if values else None


def write_sample(model, dataset, spec: TrainSpec, path: Path) -> None:
    """A sample video from the EMA weights: the first validation window, generated from its
    reference, audio and expression, next to the real frames (left: real, right: generated)."""
    from pipeline.media import write_video
    from training.sampling import denoise_window, to_uint8

    if dataset is None or len(dataset.tracks) == 0:
        return
    model.eval()
    device = next(model.parameters()).device
    batch = next(iter(make_loader(dataset, 0, 0, 1, Worker(device=device))))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        latents = encode_frames(model.codec, batch["frames"])
        keep_all = {name: torch.zeros(1, dtype=torch.bool, device=device) for name in CONDITIONS}
        cond = batch_conditions(batch, model.codec.encode(batch["reference"]),
                                encode_frames(model.codec, batch["motion"]), keep_all)
        out = denoise_window(model, make_scheduler(spec.diffusion, "ddim"), cond, tuple(latents.shape),
                             steps=spec.train.sample_steps, generator=torch.Generator().manual_seed(0))
        frames = model.codec.decode(out.flatten(0, 1))
    real = to_uint8(batch["frames"][0]).cpu().numpy()
    fake = to_uint8(frames).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), np.concatenate([real, fake], axis=2), fps=25)
    model.train()


def build_datasets(spec: TrainSpec) -> dict:
    """{"train", "val" (None when empty), "excluded": reason -> tracks left out} over the
    selection; a clear error when nothing is kept (here, or data.EmptyDatasetError when every
    kept track is left out, with the count per reason)."""
    import catalog
    from training.data import WindowDataset

    root = spec.train.catalog
    if not catalog.fs.resolve(root).is_dir():  # a local folder or a store prefix
        raise TrainingError(f"catalog {root} does not exist (curate one first: emoforge curate ...)")
    selected = catalog.select(root, spec.select)
    if spec.select.balance_by is not None:
        selected = catalog.balance(selected, spec.select.balance_by, spec.select.balance_max_seconds,
                                   spec.select.balance_seed)
    kept = selected.filter(selected["keep"])
    if kept.num_rows == 0:
        reasons: dict[str, int] = {}
        for reason in selected["drop_reason"].to_pylist():
            reasons[reason] = reasons.get(reason, 0) + 1
        listing = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
        raise TrainingError(f"the selection keeps no track of {selected.num_rows} in {root} "
                            f"({listing or 'the catalog has no tracks'}); loosen [select]")
    if spec.data.val_fraction > 0:
        out = {split: WindowDataset(root, kept, spec.data, split=split) for split in ("train", "val")}
    else:  # no validation: every person trains
        out = {"train": WindowDataset(root, kept, spec.data, split="all"), "val": None}
    excluded: dict[str, int] = {}
    for split, ds in out.items():
        for reason, count in (ds.excluded if ds is not None else {}).items():
            log.warning("%s split: %d tracks left out: %s", split, count, reason)
            excluded[reason] = excluded.get(reason, 0) + count
    out["excluded"] = excluded
    if out["val"] is not None and len(out["val"].tracks) == 0:
        log.warning("the validation split is empty (one person?): validation uses none")
        out["val"] = None
    return out


def make_loader(dataset, epoch: int, start: int, batch_size: int, worker: Worker,
                num_workers: int = 0):
    """This rank's batches of `epoch` from batch index `start` on (a torch DataLoader)."""
    return dataset.loader(epoch, batch_size, worker.rank, worker.world_size, start, num_workers)


def load_weights(model, source: Path, ema: bool) -> None:
    """Model weights from a checkpoint (then its EMA weights on top when `ema`)."""
    state = ckpt.load_tensors(source, ckpt.MODEL_FILE)
    if ema:
        state.update(ckpt.load_tensors(source, ckpt.EMA_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("codec.")]
    if unexpected:
        raise ckpt.CheckpointError(f"{source}: weights not in this model: {unexpected[:5]}...")
    if missing:
        log.info("%s: %d tensors not in the checkpoint keep their initial values (e.g. %s)",
                 source, len(missing), missing[0])


def model_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("codec.")}


def check_compatible(saved: dict, current: dict) -> None:
    """Refuse to resume a checkpoint of another model, stage or window shape."""
    keys = ("model", "stage", "window")
    diffs = ckpt.config_differences({k: saved.get(k) for k in keys},
                                    {k: _identity(current).get(k) for k in keys})
    if diffs:
        raise ckpt.CheckpointError("cannot resume: the checkpoint was trained with another "
                                   "configuration: " + "; ".join(diffs))


def catalog_uri(root: str) -> str:
    """The catalog as recorded in checkpoints: an absolute path, or the store URI."""
    return root if "://" in str(root) else str(Path(root).resolve())


def checkpoint_config(spec: TrainSpec, resolved: dict, step: int) -> dict:
    import catalog

    manifest = catalog.read_manifest(spec.train.catalog)
    return {**_identity(resolved), "spec": resolved, "step": step,
            "catalog": {"root": catalog_uri(spec.train.catalog),
                        "version": manifest.get("version"),
                        "schema_version": manifest.get("schema_version"),
                        "stages": {name: {k: v for k, v in s.items() if k in ("backend", "config", "fingerprint")}
                                   for name, s in manifest.get("stages", {}).items()}}}


def _identity(resolved: dict) -> dict:
    data = resolved["data"]
    return {"model": resolved["model"], "stage": resolved["train"]["stage"],
            "window": {"size": data["size"], "frames": data["frames"],
                       "motion_frames": data["motion_frames"]}}


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

