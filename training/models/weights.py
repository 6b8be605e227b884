"""Training-only weights declared for the registry (`emoforge models list`): Stable Diffusion 1.5,
which the `base` config starts its VAE, denoiser and ReferenceNet from. Nothing downloads; the
user places a diffusers-format folder under `<models>/diffusion/sd15/`."""

from __future__ import annotations

from pipeline.models.registry import ModelSpec, register

SD15 = register(ModelSpec(
    task="diffusion", backend="sd15", kind="reference",
    files=("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
           "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
           "scheduler/scheduler_config.json"),
    license="CreativeML OpenRAIL-M",
    source="a diffusers-format copy of runwayml/stable-diffusion-v1-5 (unet/, vae/, scheduler/)",
    version="1.5",
    description="EMO's backbone: VAE, denoiser UNet and ReferenceNet of the base config",
))
