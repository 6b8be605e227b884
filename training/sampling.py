"""Sampling one window: DDIM over the model with classifier-free guidance per condition.

Guidance composes three predictions (as InstructPix2Pix does for two conditions):
    uncond   reference, audio, expression and emotion dropped (motion frames kept)
    ref      reference only
    full     every condition
    v = uncond + g_ref * (ref - uncond) + g_audio * (full - ref)
g_ref = g_audio = 1 gives the fully conditioned prediction with one branch per step; with
g_ref = 1 alone, uncond cancels out and a step takes two branches (audio guidance only).

Speed (`fast=True`): the ReferenceNet's features of the reference and motion frames do not
depend on the noisy latents or the timestep, so a model that offers `reference_features` runs
its ReferenceNet once per window and every step and branch reuses them; a step's branches run
as one model call on the batch repeated per branch (the drops differ per branch). On CUDA the
model runs under bf16 autocast; the scheduler step stays in fp32. `fast=False` runs one call per
branch, each recomputing the reference features (the same frames within float tolerance).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

GUIDED = ("reference", "audio", "expression", "emotion")


def _repeat(value, n: int):
    """A condition tensor [B,...] -> [n*B,...] (None stays None)."""
    return None if value is None else torch.cat([value] * n)


def first_window_motion(reference: torch.Tensor, frames: int) -> torch.Tensor:
    """The motion frames of a video's first window: the reference latent [B,c,h,w] repeated
    `frames` times, [B,frames,c,h,w] (generation has no earlier frames; training shows this
    case for DiffusionConfig.reference_motion of its windows)."""
    return reference[:, None].expand(reference.shape[0], frames, *reference.shape[1:]).clone()


def to_diffused(latents: torch.Tensor, reference: torch.Tensor,
                residual_scale: float) -> torch.Tensor:
    """Frame latents [B,F,c,h,w] -> the denoiser's sample: themselves when `residual_scale`
    (ModelConfig.residual_scale) is 0, else residual_scale x (latents - reference [B,c,h,w])."""
    if not residual_scale:
        return latents
    return (latents - reference[:, None].to(latents.dtype)) * residual_scale


def from_diffused(sample: torch.Tensor, reference: torch.Tensor,
                  residual_scale: float) -> torch.Tensor:
    """The inverse of `to_diffused`: the denoiser's sample [B,F,c,h,w] -> frame latents."""
    if not residual_scale:
        return sample
    return sample / residual_scale + reference[:, None].to(sample.dtype)


def branch_conditions(cond, branches: list[tuple[str, ...]], device: torch.device):
    """One Conditions for all guidance branches: every tensor repeated per branch and the
    drops of branch i (its names dropped for every sample, on top of `cond.drop`) in rows
    i*B .. (i+1)*B-1."""
    b = cond.reference_latent.shape[0]
    names = set(cond.drop) | {n for branch in branches for n in branch}
    drop = {}
    for name in names:
        base = cond.drop.get(name)
        base = (torch.zeros(b, dtype=torch.bool, device=device) if base is None
                else base.to(device=device, dtype=torch.bool))
        drop[name] = torch.cat([base | (name in branch) for branch in branches])
    values = {f.name: _repeat(getattr(cond, f.name), len(branches))
              for f in dataclasses.fields(cond) if f.name != "drop"}
    return dataclasses.replace(cond, **values, drop=drop)


@torch.no_grad()
def denoise_window(model, scheduler, cond, shape: tuple[int, ...], steps: int = 25,
                   guidance_reference: float = 1.0, guidance_audio: float = 1.0,
                   generator: torch.Generator | None = None, fast: bool = True) -> torch.Tensor:
    """Frame latents [B,F,c,h,w] (float32) for one window. `scheduler` is a DDIMScheduler with
    the training schedule (training.diffusion.make_scheduler(cfg, "ddim")); `cond` a
    models.Conditions whose `drop` says which conditions are absent anyway (a track without
    audio). `fast`: reference features once per window, branches batched, bf16 on CUDA. A model
    whose config (`model.cfg`) has a residual_scale denoises the residual to the reference,
    which is added back (from_diffused)."""
    device = next(model.parameters()).device
    latents = torch.randn(shape, generator=generator).to(device)
    scheduler.set_timesteps(steps)
    b = shape[0]
    branches: list[tuple[str, ...]] = [()]  # full
    if guidance_reference != 1.0 or guidance_audio != 1.0:
        branches.append(tuple(n for n in GUIDED if n != "reference"))  # reference only
        if guidance_reference != 1.0:  # (1 leaves the unconditional branch out of the sum)
            branches.append(GUIDED)
    n = len(branches)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if fast and device.type == "cuda"
                else contextlib.nullcontext())
    if fast:
        batched = branch_conditions(cond, branches, device)
        features = None
        if hasattr(model, "reference_features"):
            with autocast:
                features = model.reference_features(cond.reference_latent.to(latents.dtype),
                                                    cond.motion_latents).repeat(n)
    else:
        separate = [branch_conditions(cond, [branch], device) for branch in branches]
    for t in scheduler.timesteps:
        if fast:
            timesteps = torch.full((n * b,), int(t), dtype=torch.long, device=device)
            with autocast:
                out = (model(torch.cat([latents] * n), timesteps, batched, reference=features)
                       if features is not None
                       else model(torch.cat([latents] * n), timesteps, batched))
            preds = out.float().chunk(n)
        else:
            timesteps = torch.full((b,), int(t), dtype=torch.long, device=device)
            preds = [model(latents, timesteps, c).float() for c in separate]
        v = preds[0]
        if n > 1:
            v_ref = preds[1]
            base = v_ref if n == 2 else preds[2] + guidance_reference * (v_ref - preds[2])
            v = base + guidance_audio * (v - v_ref)
        flat = scheduler.step(v.flatten(0, 1), t, latents.flatten(0, 1)).prev_sample
        latents = flat.reshape(shape)
    residual_scale = getattr(getattr(model, "cfg", None), "residual_scale", 0.0)
    return from_diffused(latents, cond.reference_latent.to(latents.device), residual_scale)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    img = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.movedim(-3, -1)
