"""Frozen codecs between pixels in [-1, 1] and the denoiser's space: identity or AutoencoderKL."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn


class PixelCodec(nn.Module):
    """Pixel space: latents are the pixels themselves (c = 3, h = w = S)."""

    channels = 3
    downsample = 1

    def encode(self, pixels: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """pixels [N,3,S,S] in [-1,1] -> the same tensor (detached)."""
        return pixels.detach()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [N,3,S,S] -> pixels [N,3,S,S] (unclamped)."""
        return latents.detach()


class VaeCodec(nn.Module):
    """AutoencoderKL: latents = (z - shift_factor) * scaling_factor, h = S / downsample."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scale = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift = float(shift) if shift is not None else 0.0

    def train(self, mode: bool = True) -> VaeCodec:
        """The codec stays in eval mode (frozen)."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """pixels [N,3,S,S] in [-1,1] -> latents [N,c,S/d,S/d]; the posterior mean unless
        `sample` (then a draw from the global RNG)."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        z = dist.sample() if sample else dist.mode()
        return ((z - self.shift) * self.scale).to(pixels.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [N,c,h,w] -> pixels [N,3,h*d,w*d] (unclamped)."""
        z = latents.to(self.vae.dtype) / self.scale + self.shift
        return self.vae.decode(z).sample.to(latents.dtype)
