"""The optimizer and learning-rate schedule of a run: AdamW (torch's, or bitsandbytes' 8-bit one)
with a linear warm-up, then a constant rate."""

from __future__ import annotations

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


def make_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig):
    """Linear warm-up over cfg.warmup_steps optimizer steps, then constant."""
    warmup = max(1, cfg.warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
