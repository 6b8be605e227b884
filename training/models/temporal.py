"""Temporal layers: self-attention over frames at every spatial position, with motion frames
prepended, a speed embedding added per frame, and a zero-initialised output projection."""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn


class MotionLayer(nn.Module):
    """Adapts ReferenceNet features of motion frames (clean, t=0) to the temporal stream:
    a channel projection initialised to identity plus a learned motion-frame embedding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, channels)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.embed = nn.Parameter(torch.zeros(channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [..., C] -> [..., C]."""
        return self.proj(tokens) + self.embed


def to_tokens(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B*T,C,H,W] -> [B*H*W, T, C] (one sequence of T frames per sample and position)."""
    bt, c, h, w = x.shape
    return x.view(bt // frames, frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, frames, c)


class TemporalLayer(nn.Module):
    """Pre-norm transformer over frames (diffusers' `BasicTransformerBlock`, sinusoidal frame
    positions, no cross-attention) with `proj_out` zero-initialised, so x is returned unchanged
    at init.

    forward(x [B*F,C,H,W], frames=F, motion [B*H*W,M,C] or None (motion-frame tokens, see
    `to_tokens` and `MotionLayer`), motion_keep bool [B] or None (all kept), speed [B,F,C] or
    None)
    -> [B*F,C,H,W]. Motion tokens precede the window's in each sequence; keys of dropped motion
    frames are masked out; only the window frames' outputs are kept.
    """

    def __init__(self, channels: int, heads: int, max_frames: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"temporal layer: {channels} channels not divisible by {heads} heads")
        self.norm = nn.LayerNorm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.block = BasicTransformerBlock(
            channels, heads, channels // heads, cross_attention_dim=None,
            positional_embeddings="sinusoidal", num_positional_embeddings=max_frames,
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, frames: int, motion: torch.Tensor | None = None,
                motion_keep: torch.Tensor | None = None,
                speed: torch.Tensor | None = None) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // frames
        seq = to_tokens(x, frames)  # [B*HW, F, C]
        n_motion = 0 if motion is None else motion.shape[1]
        hidden = self.proj_in(self.norm(seq))
        if speed is not None:  # [B,F,C] -> per position
            hidden = hidden + speed[:, None].expand(b, h * w, frames, c).reshape(-1, frames, c)
        mask = None
        if n_motion:
            hidden = torch.cat([self.proj_in(self.norm(motion)), hidden], dim=1)
            if motion_keep is not None:
                keep = motion_keep[:, None, None].expand(b, h * w, n_motion).reshape(-1, n_motion)
                own = torch.ones(keep.shape[0], frames, dtype=torch.bool, device=keep.device)
                mask = torch.cat([keep, own], dim=1)[:, None, :]  # [B*HW, 1, M+F]
        hidden = self.block(hidden, attention_mask=mask)[:, n_motion:]
        out = self.proj_out(hidden)  # [B*HW, F, C]
        out = out.view(b, h * w, frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        return x + out
