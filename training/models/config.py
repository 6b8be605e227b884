"""ModelConfig: the EMO model's sizes and UNet layout as one flat, JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from catalog.schema import EXPRESSION_DIMS
from pipeline.models.expression import DEFAULT_EXPRESSION_BACKEND

CODECS = ("pixel", "vae")
INITS = ("scratch", "sd15")
INPUT_IMAGES = ("reference", "motion")  # images that can join the denoiser's input channels
WEIGHT_SOURCE_KEYS = ("init", "models_root")  # where the starting weights come from, not shape


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the denoiser, ReferenceNet and condition layers.

    The UNet layout fields carry diffusers' `UNet2DConditionModel` names and meanings
    (`attention_head_dim` is the number of heads per attention layer, as in SD 1.5's config).
    """

    # data geometry
    image_size: int = 64  # S: square crops, pixels
    frames: int = 4  # F: window frames per sample
    motion_frames: int = 2  # M: frames before the window, through the ReferenceNet
    # codec and initialisation
    codec: str = "pixel"  # "pixel" (identity, c=3) or "vae" (AutoencoderKL latents)
    init: str = "scratch"  # "scratch" or "sd15" (VAE, UNet, ReferenceNet from models_root)
    models_root: str = ""  # the model root holding diffusion/sd15/{vae,unet,scheduler}
    latent_channels: int = 3  # c: 3 for pixels, 4 for the SD VAE
    # UNet layout (denoiser and ReferenceNet share it)
    # (the tiny default: 64, 32, 16, 8 px levels, attention only at 8x8: attention over more
    # tokens dominates a CPU step; 32 channels at full resolution: with 8, the last, least noisy
    # denoising steps leave visible noise, see docs/design.md)
    block_out_channels: tuple[int, ...] = (32, 32, 64, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D",) * 3 + ("CrossAttnDownBlock2D",)
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * 3
    cross_attention_dim: int = 32
    attention_head_dim: int = 4
    norm_num_groups: int = 8
    # conditions
    audio_dim: int = 512  # Da: whisper base encoder width
    audio_context: int = 5  # A: audio rows per frame (frame-2 .. frame+2)
    # De: expression vector length, the default expression backend's (3dmm 10, blendshapes 45)
    expression_dim: int = EXPRESSION_DIMS[DEFAULT_EXPRESSION_BACKEND]
    jaw_dim: int = 3
    expression_tokens: int = 2  # context tokens made from expression + jaw pose
    reference_tokens: int = 1  # learned context tokens of the ReferenceNet's cross-attention
    num_emotions: int = 7  # K: emotion classes (the catalog's default fer+facex classes)
    emotion_dim: int = 64
    speed_buckets: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)  # deg/s centres
    speed_dim: int = 64
    face_locator_channels: tuple[int, ...] = (16, 32)
    # images concatenated to every frame's noisy input (SD inpainting's and LatentSync's way):
    # "reference" and/or "motion" (the last motion frame). They reach the full-resolution layers,
    # which reference attention only at low resolution (the tiny config's 8x8) does not. The
    # tiny default leaves "motion" out: a model that sees the last generated frame at full
    # resolution copies it, and its errors compound window after window (docs/design.md).
    input_images: tuple[str, ...] = ("reference",)
    # what the denoiser diffuses: 0, each frame's latent (EMO's); k > 0, k x (frame latent -
    # reference latent) (sampling.to_diffused), so the model starts from the reference's look
    # and learns what moves. The tiny default 3 brings the residual's rms (about 0.17 on the
    # demo corpus) to the frames' own (about 0.5), the scale the noise schedule was set for.
    residual_scale: float = 3.0
    # the audio also as a per-frame offset of the time embedding (conditions.FrameAudio,
    # Diffused Heads' way), besides EMO's cross-attention to it; hidden width emotion_dim
    audio_time_embedding: bool = True
    # the audio also painted onto the reference's mouth region and added to the noisy input
    # (conditions.AudioLocator: 8 values a frame, hidden width 32)
    audio_locator: bool = True
    # temporal layers
    temporal_heads: int = 4
    temporal_max_frames: int = 32  # positional embeddings: motion + window frames

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"ModelConfig.codec must be one of {CODECS}, got {self.codec!r}")
        if self.init not in INITS:
            raise ValueError(f"ModelConfig.init must be one of {INITS}, got {self.init!r}")
        if self.init == "sd15" and not self.models_root:
            raise ValueError("ModelConfig.init='sd15' needs models_root (the model root folder)")
        if self.codec == "pixel" and self.latent_channels != 3:
            raise ValueError(f"pixel codec has 3 channels, latent_channels={self.latent_channels}")
        if "CrossAttnUpBlock2D" not in self.up_block_types:
            raise ValueError(
                f"up_block_types {self.up_block_types} need a CrossAttnUpBlock2D: the "
                "ReferenceNet's last attention is expected in the up path"
            )
        if self.frames < 1 or self.motion_frames < 0:
            raise ValueError(f"frames >= 1 and motion_frames >= 0, got {self.frames}, "
                             f"{self.motion_frames}")
        if self.frames + self.motion_frames > self.temporal_max_frames:
            raise ValueError(
                f"frames + motion_frames = {self.frames + self.motion_frames} exceeds "
                f"temporal_max_frames = {self.temporal_max_frames}"
            )
        unknown = [name for name in self.input_images if name not in INPUT_IMAGES]
        if unknown or len(set(self.input_images)) != len(self.input_images):
            raise ValueError(f"input_images takes distinct names from {INPUT_IMAGES}, got "
                             f"{self.input_images}")
        if self.residual_scale < 0:
            raise ValueError(f"residual_scale must be >= 0 (0: off), got {self.residual_scale}")
        if len(self.speed_buckets) < 2 or list(self.speed_buckets) != sorted(self.speed_buckets):
            raise ValueError(f"speed_buckets must be >= 2 increasing centres, got "
                             f"{self.speed_buckets}")

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """Pixel space, 64 px, F=4, M=2, attention only at 8x8, denoising the residual to the
        reference: a CPU-sized model."""
        return cls.from_dict(overrides)

    @classmethod
    def base(cls, models_root: str | Path, **overrides: Any) -> ModelConfig:
        """SD 1.5 layout at 512 px, F=12, M=4, VAE latents; weights from `models_root`."""
        values: dict[str, Any] = dict(
            image_size=512, frames=12, motion_frames=4, codec="vae", init="sd15",
            models_root=str(models_root), latent_channels=4,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
            audio_dim=512, expression_tokens=4, reference_tokens=1, emotion_dim=256,
            speed_dim=256, face_locator_channels=(16, 32, 64, 128), temporal_heads=8,
            input_images=(),  # EMO's design: the reference through ReferenceNet attention only
            audio_time_embedding=False,  # EMO's design: the audio through cross-attention only
            audio_locator=False,
            residual_scale=0.0,  # EMO's design: the denoiser diffuses the frames' latents
        )
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. `json.loads` of `dataclasses.asdict(cfg)`); lists -> tuples."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; valid keys: {valid}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """`dataclasses.asdict(self)`: JSON-serialisable (tuples become lists in JSON)."""
        return dataclasses.asdict(self)

    def architecture(self) -> dict[str, Any]:
        """The fields that shape the network (every field but where its starting weights come
        from: `init` and the machine path `models_root`): EmoModel's registered config and what
        a resumed checkpoint must match."""
        return {k: v for k, v in self.to_dict().items() if k not in WEIGHT_SOURCE_KEYS}

    def unet_kwargs(self, sample_size: int) -> dict[str, Any]:
        """Keyword arguments of diffusers' `UNet2DConditionModel` for this layout."""
        return dict(
            sample_size=sample_size, in_channels=self.latent_channels,
            out_channels=self.latent_channels, block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block, down_block_types=self.down_block_types,
            up_block_types=self.up_block_types, cross_attention_dim=self.cross_attention_dim,
            attention_head_dim=self.attention_head_dim, norm_num_groups=self.norm_num_groups,
        )
