"""Sampling one window: DDIM over the model with classifier-free guidance per condition.

Guidance composes three predictions (as InstructPix2Pix does for two conditions):
    uncond   reference, audio, expression and emotion dropped (motion frames kept)
    ref      reference only
    full     every condition
    v = uncond + g_ref * (ref - uncond) + g_audio * (full - ref)
g_ref = g_audio = 1 gives the fully conditioned prediction with one model call per step; with
g_ref = 1 alone, uncond cancels out and a step takes two calls (audio guidance only).
"""

from __future__ import annotations

import dataclasses

import torch

GUIDED = ("reference", "audio", "expression", "emotion")


@torch.no_grad()
def denoise_window(model, scheduler, cond, shape: tuple[int, ...], steps: int = 25,
                   guidance_reference: float = 1.0, guidance_audio: float = 1.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents [B,F,c,h,w] for one window. `scheduler` is a DDIMScheduler with the training
    schedule (training.diffusion.make_scheduler(cfg, "ddim")); `cond` a models.Conditions whose
    `drop` says which conditions are absent anyway (a track without audio)."""
    device = next(model.parameters()).device
    latents = torch.randn(shape, generator=generator).to(device)
    scheduler.set_timesteps(steps)
    guided = guidance_reference != 1.0 or guidance_audio != 1.0
    b = shape[0]

    def with_drop(names: tuple[str, ...]):
        drop = {k: v.clone() for k, v in cond.drop.items()}
        for name in names:
            drop[name] = torch.ones(b, dtype=torch.bool, device=device)
        return dataclasses.replace(cond, drop=drop)

    full = with_drop(())
    uncond = with_drop(GUIDED)
    ref_only = with_drop(tuple(n for n in GUIDED if n != "reference"))
    for t in scheduler.timesteps:
        timesteps = torch.full((b,), int(t), dtype=torch.long, device=device)
        v = model(latents, timesteps, full)
        if guided:
            v_ref = model(latents, timesteps, ref_only)
            base = v_ref
            if guidance_reference != 1.0:  # (1 leaves the unconditional call out of the sum)
                v_uncond = model(latents, timesteps, uncond)
                base = v_uncond + guidance_reference * (v_ref - v_uncond)
            v = base + guidance_audio * (v - v_ref)
        flat = scheduler.step(v.flatten(0, 1), t, latents.flatten(0, 1)).prev_sample
        latents = flat.reshape(shape)
    return latents


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    img = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.movedim(-3, -1)
