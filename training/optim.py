"""The optimizer and learning-rate schedule of a run: AdamW (torch's, or bitsandbytes' 8-bit one)
with a linear warm-up, then a constant rate or a cosine decay."""

from __future__ import annotations

import math

import torch

from training.config import OptimConfig, TrainSpecError


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over `params` per `cfg.optimizer`; a TrainSpecError naming bitsandbytes when the
    8-bit optimizer is asked for and the package is absent."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes  # optional: only this optimizer needs it
        except ImportError as exc:
            raise TrainSpecError("[optim] optimizer = 'adamw8bit' needs the bitsandbytes package, "
                                 "which is not installed (pip install bitsandbytes), or use "
                                 "optimizer = 'adamw'") from exc
        return bitsandbytes.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """The learning rate at optimizer step `step` (0-based) as a fraction of cfg.lr: linear
    warm-up over cfg.warmup_steps; then 1, or with cfg.decay_steps a half cosine from 1 at the
    warm-up's end to cfg.final_lr_fraction at decay_steps, constant after."""
    warmup = max(1, cfg.warmup_steps)
    if step + 1 < warmup or not cfg.decay_steps:
        return min(1.0, (step + 1) / warmup)
    progress = min(1.0, (step + 1 - warmup) / (cfg.decay_steps - warmup))
    final = cfg.final_lr_fraction
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig):
    """The rate per step of `lr_factor` (its state is checkpointed: a resumed run continues it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
