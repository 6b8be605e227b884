"""Diffusers folders of Stable Diffusion 1.5's layout with random weights, at SD 1.5's widths or
reduced ones, for tests, benches and the GPU check (time and memory depend on the shapes, not
on the values; nothing is downloaded).

`write_sd15(models_root, reduced=True)` writes `<models_root>/diffusion/sd15/{unet,vae,scheduler}`
as `training.models.sd15` loads them; `model_overrides(reduced)` gives the `[model]` values that
match the written UNet (the base preset's own layout when not reduced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# SD 1.5's block types and cross-attention layout (two transformers per down level, three per
# up level, none at the lowest resolution) with few channels; a 4-level VAE (8x downsampling)
REDUCED_UNET: dict[str, Any] = dict(
    block_out_channels=(32, 32, 64, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
REDUCED_VAE: dict[str, Any] = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1,
                                   norm_num_groups=8)
# the rest of the reduced base model: 64 px (8x8 latents), 4 + 2 frames, narrow condition layers
REDUCED_MODEL: dict[str, Any] = dict(
    image_size=64, frames=4, motion_frames=2, temporal_heads=4, emotion_dim=16, speed_dim=16,
    face_locator_channels=(8, 16, 16, 16), expression_tokens=2)
# SD 1.5's own configs (runwayml/stable-diffusion-v1-5 unet/ and vae/ config.json)
SD15_UNET: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD15_VAE: dict[str, Any] = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                norm_num_groups=32)


def model_overrides(reduced: bool = True) -> dict[str, Any]:
    """`[model]` values of the base preset for the folder `write_sd15(reduced=...)` writes
    (lists, as TOML and `--set` give them)."""
    if not reduced:
        return {}
    values = {**REDUCED_UNET, **REDUCED_MODEL}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def set_overrides(reduced: bool = True) -> list[str]:
    """`model_overrides` as `emoforge train --set` arguments (`model.key=value`)."""
    import json

    return [f"model.{k}={json.dumps(v)}" for k, v in model_overrides(reduced).items()]


def write_sd15(models_root: str | Path, reduced: bool = True, seed: int = 0) -> Path:
    """Write random-weight `unet/`, `vae/` and `scheduler/` under
    `<models_root>/diffusion/sd15` (SD 1.5's layout; reduced widths when `reduced`); returns
    that folder. The full-size UNet is about 3.4 GB in fp32."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    folder = Path(models_root) / "diffusion" / "sd15"
    unet_cfg, vae_cfg = (REDUCED_UNET, REDUCED_VAE) if reduced else (SD15_UNET, SD15_VAE)
    sample = REDUCED_MODEL["image_size"] // 8 if reduced else 64
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=sample, in_channels=4, out_channels=4,
                         **unet_cfg).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=sample * 8,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, **vae_cfg).save_pretrained(
        folder / "vae")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_pretrained(
        folder / "scheduler")
    return folder
