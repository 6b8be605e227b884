"""Condition encoders: audio + expression context tokens, the emotion embedding, EMO's speed
buckets and the face locator. Each new output path is zero-initialised or replaces a learned null,
so a pretrained image UNet starts unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mix(keep: torch.Tensor, value: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """Per sample: value where keep else null. keep bool [B], value [B,...], null broadcastable.
    A blend by a 0/1 weight, so both branches stay in the autograd graph (DDP)."""
    w = keep.to(value.dtype).view(-1, *([1] * (value.ndim - 1)))
    return w * value + (1 - w) * null


class ContextTokens(nn.Module):
    """Per-frame cross-attention context for the denoiser's attn2.

    forward(audio [B,F,A,Da], expression [B,F,De], jaw_pose [B,F,3], keep_audio bool [B],
    keep_expression bool [B]) -> [B,F,A+E,D]: A audio tokens (each row projected, plus a learned
    position per row) then E expression tokens (expression + jaw pose projected). A dropped or
    absent (None) condition is replaced by its learned null tokens.
    """

    def __init__(self, audio_dim: int, audio_rows: int, expression_dim: int, jaw_dim: int,
                 expression_tokens: int, dim: int) -> None:
        super().__init__()
        self.audio_rows, self.expression_tokens, self.dim = audio_rows, expression_tokens, dim
        self.audio_proj = nn.Sequential(
            nn.LayerNorm(audio_dim), nn.Linear(audio_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.audio_pos = nn.Parameter(torch.randn(audio_rows, dim) * 0.02)
        self.audio_null = nn.Parameter(torch.randn(audio_rows, dim) * 0.02)
        self.expression_proj = nn.Sequential(
            nn.Linear(expression_dim + jaw_dim, dim), nn.SiLU(),
            nn.Linear(dim, expression_tokens * dim))
        self.expression_null = nn.Parameter(torch.randn(expression_tokens, dim) * 0.02)

    def forward(self, batch: int, frames: int, audio: torch.Tensor | None,
                expression: torch.Tensor | None, jaw_pose: torch.Tensor | None,
                keep_audio: torch.Tensor, keep_expression: torch.Tensor) -> torch.Tensor:
        if audio is None:
            tokens_a = self.audio_null.expand(batch, frames, -1, -1)
        else:
            if audio.shape[2] != self.audio_rows:
                raise ValueError(f"audio has {audio.shape[2]} rows per frame, the model "
                                 f"expects {self.audio_rows} (audio_context)")
            tokens_a = _mix(keep_audio, self.audio_proj(audio) + self.audio_pos, self.audio_null)
        if expression is None or jaw_pose is None:
            tokens_e = self.expression_null.expand(batch, frames, -1, -1)
        else:
            e = self.expression_proj(torch.cat([expression, jaw_pose], dim=-1))
            e = e.view(batch, frames, self.expression_tokens, self.dim)
            tokens_e = _mix(keep_expression, e, self.expression_null)
        return torch.cat([tokens_a, tokens_e], dim=2)


class FrameAudio(nn.Module):
    """Per-frame audio -> a vector: each row layer-normed, the A rows flattened, an MLP (its
    last layer zero-initialised with `zero_last`). As a time-embedding offset (`[model]
    audio_time_embedding`, Diffused Heads' way of conditioning on audio) it reaches every ResNet
    block of every resolution, so the audio gets to the full-resolution layers where the mouth
    is drawn, not only the cross-attention levels; AudioLocator paints it onto the mouth.

    forward(audio [B,F,A,Da] or None, keep bool [B]) -> [B,F,out]; a dropped or absent audio
    gives the learned null vector (zero at initialisation).
    """

    def __init__(self, audio_dim: int, audio_rows: int, hidden: int, out: int,
                 zero_last: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(audio_dim)
        self.net = nn.Sequential(nn.Linear(audio_rows * audio_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out))
        if zero_last:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        self.null = nn.Parameter(torch.zeros(out))

    def forward(self, batch: int, frames: int, audio: torch.Tensor | None,
                keep: torch.Tensor) -> torch.Tensor:
        if audio is None:
            return self.null.expand(batch, frames, -1)
        value = self.net(self.norm(audio.to(self.null.dtype)).flatten(2))
        return _mix(keep, value, self.null)


class AudioLocator(nn.Module):
    """Per-frame audio painted onto the reference's mouth region, then added to the noisy input
    (a face locator for the audio): `channels` values from the audio (FrameAudio) fill the mouth
    mask, and 3x3 convolutions, the last zero-initialised, turn them into an offset of the input
    latents. The audio reaches the full-resolution layers at the place it moves, so the first
    layers can learn the mouth's response directly.

    forward(audio [B,F,A,Da] or None, mouth [B,1,S,S] in {0,1} (the reference's lower face:
    training.windows.mouth_mask), keep bool [B], size (h, w)) -> [B*F, c, h, w]; a dropped or
    absent audio paints the learned null values.
    """

    def __init__(self, audio_dim: int, audio_rows: int, hidden: int, channels: int,
                 out_channels: int) -> None:
        super().__init__()
        self.values = FrameAudio(audio_dim, audio_rows, hidden, channels, zero_last=False)
        # no biases: outside the mouth (and the convolutions' 2 px reach) the offset is exactly 0
        last = nn.Conv2d(hidden, out_channels, 3, padding=1, bias=False)
        nn.init.zeros_(last.weight)
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.SiLU(),
                                 last)

    def forward(self, batch: int, frames: int, audio: torch.Tensor | None, mouth: torch.Tensor,
                keep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        values = self.values(batch, frames, audio, keep)
        if tuple(mouth.shape[-2:]) != tuple(size):
            mouth = F.interpolate(mouth, size=size, mode="area")
        painted = values[..., None, None] * mouth.to(values.dtype)[:, None]  # [B,F,k,h,w]
        return self.net(painted.flatten(0, 1))


class EmotionEmbedding(nn.Module):
    """Track emotion -> time-embedding offset: proj(table[class] * intensity).

    forward(emotion int64 [B] (-1 unknown), intensity [B], keep bool [B]) -> [B, temb_dim].
    Unknown or dropped samples use the learned null row (index K) without intensity scaling.
    `proj` is zero-initialised.
    """

    def __init__(self, num_classes: int, dim: int, temb_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        self.proj = nn.Linear(dim, temb_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, emotion: torch.Tensor, intensity: torch.Tensor,
                keep: torch.Tensor) -> torch.Tensor:
        if bool((emotion >= self.num_classes).any()):
            raise ValueError(f"emotion index {int(emotion.max())} >= num_emotions "
                             f"{self.num_classes}")
        known = keep & (emotion >= 0)
        index = torch.where(known, emotion, torch.full_like(emotion, self.num_classes))
        scale = torch.where(known, intensity, torch.ones_like(intensity))
        return self.proj(self.table(index) * scale[:, None])


class SpeedLayers(nn.Module):
    """EMO's speed buckets: head speed s (deg/s) -> tanh(3 (s - c_i) / r_i) per bucket centre c_i
    (r_i: half the distance to the nearest other centre) -> MLP -> one zero-initialised
    projection per temporal layer.

    forward(speed [B,F]) -> list of [B,F,C_l], one per temporal layer l.
    """

    def __init__(self, centres: tuple[float, ...], dim: int, channels: list[int]) -> None:
        super().__init__()
        c = torch.tensor(centres, dtype=torch.float32)
        gaps = c[1:] - c[:-1]
        radius = torch.minimum(torch.cat([gaps[:1], gaps]), torch.cat([gaps, gaps[-1:]])) / 2
        self.register_buffer("centres", c, persistent=False)
        self.register_buffer("radii", radius, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(len(centres), dim), nn.SiLU(), nn.Linear(dim, dim))
        self.proj = nn.ModuleList(nn.Linear(dim, ch) for ch in channels)
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def buckets(self, speed: torch.Tensor) -> torch.Tensor:
        """speed [B,F] deg/s -> [B,F,n_buckets] in (-1, 1)."""
        return torch.tanh(3 * (speed[..., None] - self.centres) / self.radii)

    def forward(self, speed: torch.Tensor) -> list[torch.Tensor]:
        h = self.mlp(self.buckets(speed.float()).to(self.proj[0].weight.dtype))
        return [p(h) for p in self.proj]


class FaceLocator(nn.Module):
    """Face-box mask -> an offset added to the noisy latents (EMO's face locator).

    forward(mask [N,1,S,S] in {0,1}, size (h, w)) -> [N, c, h, w]: the mask is area-resized to the
    latent size, then 3x3 convs with SiLU; the last conv is zero-initialised.
    """

    def __init__(self, channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 1
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 3, padding=1), nn.SiLU()]
            prev = ch
        last = nn.Conv2d(prev, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(mask.shape[-2:]) != tuple(size):
            mask = F.interpolate(mask, size=size, mode="area")
        return self.net(mask.to(self.net[0].weight.dtype))
