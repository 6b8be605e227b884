"""Loading Stable Diffusion 1.5 parts (UNet, VAE) from a local diffusers folder, offline."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel

from training.models.config import ModelConfig

log = logging.getLogger(__name__)

SUBFOLDERS = ("unet", "vae", "scheduler")
SOURCE = (
    "Stable Diffusion 1.5 weights are not shipped and nothing is downloaded: put a "
    "diffusers-format copy of runwayml/stable-diffusion-v1-5 (folders unet/, vae/, scheduler/ "
    "with their config and weights) there"
)
LAYOUT_KEYS = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
               "cross_attention_dim", "attention_head_dim", "norm_num_groups")


def sd15_root(models_root: str | Path) -> Path:
    """`<models_root>/diffusion/sd15`."""
    return Path(models_root) / "diffusion" / "sd15"


def sd15_folder(models_root: str | Path, part: str) -> Path:
    """`<models_root>/diffusion/sd15/<part>`; FileNotFoundError naming the path if it is missing."""
    if part not in SUBFOLDERS:
        raise ValueError(f"unknown SD 1.5 part {part!r}; expected one of {SUBFOLDERS}")
    folder = sd15_root(models_root) / part
    config = "scheduler_config.json" if part == "scheduler" else "config.json"
    if not (folder / config).is_file():
        raise FileNotFoundError(f"SD 1.5 {part} folder not found: {folder} (no {config}). "
                                f"{SOURCE}.")
    return folder


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # a missing local path must not become a Hub request


def _expected(cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in LAYOUT_KEYS} | {"in_channels": cfg.latent_channels}


def load_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    """The SD 1.5 UNet of `cfg.models_root`; ValueError naming the keys where its config.json
    differs from the config's layout."""
    folder = sd15_folder(cfg.models_root, "unet")
    _offline()
    unet = UNet2DConditionModel.from_pretrained(folder, local_files_only=True)
    differ = []
    for key, want in _expected(cfg).items():
        have = unet.config[key]
        have = tuple(have) if isinstance(have, list) else have
        if have != want:
            differ.append(f"{key}: folder {have!r}, config {want!r}")
    if differ:
        raise ValueError(f"UNet at {folder} does not match the model config: " + "; ".join(differ))
    log.info("loaded the SD 1.5 UNet from %s", folder)
    return unet


def vae_downsample(cfg: ModelConfig) -> int:
    """2 ^ (VAE blocks - 1): pixels per latent cell of the VAE of `cfg.models_root` (its
    config.json)."""
    config = json.loads((sd15_folder(cfg.models_root, "vae") / "config.json").read_text())
    return 2 ** (len(config["block_out_channels"]) - 1)


def weight_files(models_root: str | Path) -> list[str]:
    """The SD 1.5 weight files the model starts from (UNet and VAE), relative to `models_root`
    (what a checkpoint records by checksum)."""
    root = Path(models_root)
    found = []
    for part in ("unet", "vae"):
        folder = sd15_folder(root, part)
        found += sorted(str(p.relative_to(root)) for p in folder.iterdir()
                        if p.suffix in (".safetensors", ".bin"))
    return found


def load_vae(cfg: ModelConfig) -> AutoencoderKL:
    """The SD 1.5 VAE of `cfg.models_root` (latent channels checked against the config)."""
    folder = sd15_folder(cfg.models_root, "vae")
    _offline()
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    if vae.config.latent_channels != cfg.latent_channels:
        raise ValueError(f"VAE at {folder} has {vae.config.latent_channels} latent channels, "
                         f"the model config {cfg.latent_channels}")
    log.info("loaded the SD 1.5 VAE from %s", folder)
    return vae
