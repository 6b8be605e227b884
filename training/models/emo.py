"""EmoModel: EMO's denoiser (a diffusers UNet2DConditionModel run on B*F frames) with reference
attention, audio + expression cross-attention, an emotion embedding, temporal, motion and speed
layers and the face locator; `build_model` assembles it from a ModelConfig.

How the layers hook into the UNet (its forward is diffusers' own, unchanged):
- reference attention: attention processors (reference.py) on attn1; the ReferenceNet's captured
  self-attention inputs reach them through `cross_attention_kwargs={"emo": DenoiseContext}`;
- audio/expression: the per-frame context tokens are attn2's `encoder_hidden_states`;
- emotion: `class_embedding` is an `nn.Identity`, `class_labels` the emotion embedding [B*F, temb],
  which the UNet adds to the time embedding; with `audio_time_embedding`, plus a per-frame offset
  from the audio (conditions.FrameAudio);
- temporal, motion and speed layers: a forward hook on every `Transformer2DModel` applies the
  matching temporal layer to its output; the hook reads the same `DenoiseContext` from the
  transformer's `cross_attention_kwargs` keyword argument, so no state lives on the modules;
- face locator: its output is added to the noisy input (EMO's placement); with `audio_locator`,
  so is the audio painted onto the reference's mouth region (conditions.AudioLocator);
- input images (`ModelConfig.input_images`, optional): the reference and/or the last motion
  frame join every frame's noisy input as extra channels of the denoiser's first convolution,
  whose weights for them start at zero (SD inpainting's and LatentSync's way).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn
from torch.utils.checkpoint import checkpoint

from catalog.schema import EMOTION_CLASSES_FER
from training.models.codec import PixelCodec, VaeCodec
from training.models.conditions import (
    AudioLocator, ContextTokens, EmotionEmbedding, FaceLocator, FrameAudio, SpeedLayers)
from training.models.config import WEIGHT_SOURCE_KEYS, ModelConfig
from training.models.reference import (
    ReferenceAttnProcessor, ReferenceNet, set_processors, transformer_paths)
from training.models.sd15 import load_unet, load_vae, vae_downsample
from training.models.temporal import MotionLayer, TemporalLayer, to_tokens

log = logging.getLogger(__name__)

DROPPABLE = ("audio", "reference", "expression", "emotion", "motion")
# top-level submodules trained per stage; stage 2 also trains the denoiser's attn2 (the layers
# that attend to the audio and expression tokens). Stage 0 ("joint") trains every layer at once:
# for a small model from scratch (the tiny config), where there is no pretrained image backbone
# for stage 1 to adapt and the three stages would only cost time.
STAGES = {
    0: ("denoiser", "reference_net", "face_locator", "temporal", "motion", "context", "emotion",
        "speed", "audio_time", "audio_locator"),
    1: ("denoiser", "reference_net", "face_locator"),
    2: ("temporal", "motion", "context", "emotion", "audio_time", "audio_locator"),
    3: ("temporal", "speed"),
}


@dataclass
class Conditions:
    """Conditions of a batch (see the data/model contract). None means absent for every sample
    (the null condition is used); training passes every tensor and drops through `drop`.

    reference_latent [B,c,h,w]; motion_latents [B,M,c,h,w] (M may be 0); audio [B,F,A,Da];
    expression [B,F,De]; jaw_pose [B,F,3]; emotion int64 [B] (-1 unknown); intensity [B];
    face_mask [B,F,1,S,S] (pixel resolution); mouth_mask [B,1,S,S] (the reference's lower face,
    pixel resolution); head_speed [B,F] deg/s;
    drop: name -> bool [B] for names in DROPPABLE (True = use the null for that sample).
    """

    reference_latent: torch.Tensor
    motion_latents: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    expression: torch.Tensor | None = None
    jaw_pose: torch.Tensor | None = None
    emotion: torch.Tensor | None = None
    intensity: torch.Tensor | None = None
    face_mask: torch.Tensor | None = None
    mouth_mask: torch.Tensor | None = None
    head_speed: torch.Tensor | None = None
    drop: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DenoiseContext:
    """Per-call state of the denoiser's processors and temporal hooks.

    features: attn1 path -> reference features [B,L,C]; reference_keep bool [B], None when every
    sample keeps its reference; motion: per temporal layer, ReferenceNet outputs of the motion
    frames [B*M,C,H,W], or None; motion_keep bool [B] or None (all kept); speed: per temporal
    layer [B,F,C], or None.
    """

    batch: int
    frames: int
    features: dict[str, torch.Tensor]
    reference_keep: torch.Tensor | None
    motion: list[torch.Tensor] | None
    motion_keep: torch.Tensor | None
    speed: list[torch.Tensor] | None


@dataclass
class ReferenceFeatures:
    """The ReferenceNet's outputs for a batch's reference and motion frames, which do not depend
    on the noisy input or the timestep: computed once (`EmoModel.reference_features`) and
    passed to every denoiser call of a window (`EmoModel.forward(..., reference=)`).

    features: attn1 path -> [B,L,C]; motion: per temporal layer [B*M,C,H,W], or None (M = 0);
    motion_frames: M.
    """

    features: dict[str, torch.Tensor]
    motion: list[torch.Tensor] | None
    motion_frames: int

    def repeat(self, n: int) -> ReferenceFeatures:
        """The features of the batch repeated n times along the batch ([B,...] -> [n*B,...]):
        for n guidance branches run as one call."""
        features = {k: torch.cat([v] * n) for k, v in self.features.items()}
        motion = None if self.motion is None else [torch.cat([o] * n) for o in self.motion]
        return ReferenceFeatures(features, motion, self.motion_frames)


def _unless_all(keep: torch.Tensor) -> torch.Tensor | None:
    """None when every sample keeps the condition (no mask needed: one device sync per call
    instead of one per layer)."""
    return None if bool(keep.all()) else keep


class EmoModel(ModelMixin, ConfigMixin):
    """forward(noisy [B,F,c,h,w], timesteps int64 [B], cond) -> v-prediction [B,F,c,h,w].

    A diffusers model: `save_pretrained`/`from_pretrained` write and read its config
    (`model`: ModelConfig.architecture(), `emotion_classes`: the class names of the emotion
    labels, in label order) and weights. The codec (pixels <-> latents) is not part of it: it
    is held beside it (build_codec), as a diffusers pipeline holds its VAE. `unet` (not in the
    config): a UNet of the layout whose weights the denoiser and the ReferenceNet start from;
    None builds one from scratch.
    """

    ignore_for_config = ["unet"]

    @register_to_config
    def __init__(self, model: dict | None = None,
                 emotion_classes: tuple[str, ...] | list[str] = EMOTION_CLASSES_FER,
                 unet: UNet2DConditionModel | None = None) -> None:
        super().__init__()
        cfg = ModelConfig.from_dict({k: v for k, v in (model or {}).items()
                                     if k not in WEIGHT_SOURCE_KEYS})
        if len(emotion_classes) != cfg.num_emotions:
            raise ValueError(f"{len(emotion_classes)} emotion classes {list(emotion_classes)} "
                             f"for a model of num_emotions={cfg.num_emotions}: set [model] "
                             f"num_emotions = {len(emotion_classes)}")
        self.cfg = cfg
        self.emotion_classes = tuple(emotion_classes)
        if unet is None:
            unet = UNet2DConditionModel(**cfg.unet_kwargs(latent_size(cfg)))
        self.reference_net = ReferenceNet(copy.deepcopy(unet), cfg.reference_tokens)
        widen_conv_in(unet, cfg.latent_channels * len(cfg.input_images))
        self.denoiser = unet
        set_processors(unet, ReferenceAttnProcessor)
        unet.class_embedding = nn.Identity()  # class_labels = the emotion embedding
        paths = transformer_paths(unet)
        modules = dict(unet.named_modules())
        channels = [modules[p].in_channels for p in paths]
        self.temporal = nn.ModuleList(
            TemporalLayer(ch, cfg.temporal_heads, cfg.temporal_max_frames) for ch in channels)
        self.motion = nn.ModuleList(MotionLayer(ch) for ch in channels)
        self.context = ContextTokens(cfg.audio_dim, cfg.audio_context, cfg.expression_dim,
                                     cfg.jaw_dim, cfg.expression_tokens, cfg.cross_attention_dim)
        temb_dim = unet.time_embedding.linear_2.out_features
        self.emotion = EmotionEmbedding(cfg.num_emotions, cfg.emotion_dim, temb_dim)
        self.audio_time = (FrameAudio(cfg.audio_dim, cfg.audio_context, cfg.emotion_dim, temb_dim)
                           if cfg.audio_time_embedding else None)
        self.audio_locator = (AudioLocator(cfg.audio_dim, cfg.audio_context, 32, 8,
                                           cfg.latent_channels) if cfg.audio_locator else None)
        self.speed = SpeedLayers(cfg.speed_buckets, cfg.speed_dim, channels)
        self.face_locator = FaceLocator(cfg.face_locator_channels, cfg.latent_channels)
        for i, path in enumerate(paths):
            modules[path].register_forward_hook(partial(self._temporal_hook, i), with_kwargs=True)
        self.gradient_checkpointing = False

    def _temporal_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict,
                       output: Any) -> Any:
        ctx = (kwargs.get("cross_attention_kwargs") or {}).get("emo")
        if not isinstance(ctx, DenoiseContext):
            return None
        x = output[0] if isinstance(output, tuple) else output.sample
        motion = None
        if ctx.motion is not None:
            feats = ctx.motion[index]  # [B*M,C,H,W]
            motion = self.motion[index](to_tokens(feats, feats.shape[0] // ctx.batch))
        speed = None if ctx.speed is None else ctx.speed[index]
        layer = self.temporal[index]
        if self.gradient_checkpointing and torch.is_grad_enabled():
            x = checkpoint(layer, x, ctx.frames, motion, ctx.motion_keep, speed,
                           use_reentrant=False)
        else:
            x = layer(x, ctx.frames, motion, ctx.motion_keep, speed)
        return (x, *output[1:]) if isinstance(output, tuple) else Transformer2DModelOutput(x)

    def _keep(self, drop: dict[str, torch.Tensor], batch: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        unknown = sorted(set(drop) - set(DROPPABLE))
        if unknown:
            raise ValueError(f"unknown drop keys {unknown}; droppable: {list(DROPPABLE)}")
        keep = {}
        for name in DROPPABLE:
            d = drop.get(name)
            if d is not None and tuple(d.shape) != (batch,):
                raise ValueError(f"drop[{name!r}] has shape {tuple(d.shape)}, expected ({batch},)")
            keep[name] = (torch.ones(batch, dtype=torch.bool, device=device) if d is None
                          else ~d.to(device=device, dtype=torch.bool))
        return keep

    def reference_features(self, reference_latent: torch.Tensor,
                           motion_latents: torch.Tensor | None = None) -> ReferenceFeatures:
        """One ReferenceNet run over the reference [B,c,h,w] and motion frames [B,M,c,h,w]
        (clean latents, t = 0): what `forward` attends to, for `forward(..., reference=)`."""
        b = reference_latent.shape[0]
        ref = reference_latent[:, None]
        m = 0 if motion_latents is None else motion_latents.shape[1]
        if m:
            ref = torch.cat([ref, motion_latents.to(ref.dtype)], dim=1)
        bank = self.reference_net(ref.flatten(0, 1))  # [B*(1+M), ...]
        features = {k: v.unflatten(0, (b, 1 + m))[:, 0] for k, v in bank.features.items()}
        motion = None
        if m:
            motion = [o.unflatten(0, (b, 1 + m))[:, 1:].flatten(0, 1) for o in bank.outputs]
        return ReferenceFeatures(features, motion, m)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditions,
                reference: ReferenceFeatures | None = None) -> torch.Tensor:
        """`reference`: `reference_features(cond.reference_latent, cond.motion_latents)`
        computed earlier (the same for every timestep); None computes it here."""
        b, f, _, h, w = noisy.shape
        keep = self._keep(cond.drop, b, noisy.device)
        m = 0 if cond.motion_latents is None else cond.motion_latents.shape[1]
        if f + m > self.cfg.temporal_max_frames:
            raise ValueError(f"{f} frames + {m} motion frames exceed temporal_max_frames "
                             f"{self.cfg.temporal_max_frames}")
        if reference is None:
            reference = self.reference_features(cond.reference_latent.to(noisy.dtype),
                                                cond.motion_latents)
        elif reference.motion_frames != m:
            raise ValueError(f"the reference features hold {reference.motion_frames} motion "
                             f"frames, the conditions {m}")
        features, motion = reference.features, reference.motion
        context = self.context(b, f, cond.audio, cond.expression, cond.jaw_pose,
                               keep["audio"], keep["expression"])
        emotion = cond.emotion if cond.emotion is not None else torch.full(
            (b,), -1, dtype=torch.long, device=noisy.device)
        intensity = cond.intensity if cond.intensity is not None else torch.ones(
            b, device=noisy.device)
        labels = self.emotion(emotion, intensity.to(noisy.dtype), keep["emotion"])
        labels = labels.repeat_interleave(f, dim=0)  # [B*F, temb]: added to the time embedding
        if self.audio_time is not None:
            labels = labels + self.audio_time(b, f, cond.audio, keep["audio"]).flatten(0, 1)
        speed = None if cond.head_speed is None else self.speed(cond.head_speed)
        sample = noisy.flatten(0, 1)
        if cond.face_mask is not None:
            sample = sample + self.face_locator(cond.face_mask.flatten(0, 1), (h, w))
        if self.audio_locator is not None and cond.mouth_mask is not None:
            sample = sample + self.audio_locator(b, f, cond.audio, cond.mouth_mask, keep["audio"],
                                                 (h, w))
        if self.cfg.input_images:
            sample = torch.cat([sample, self._input_images(cond, keep, f).to(sample.dtype)], dim=1)
        ctx = DenoiseContext(batch=b, frames=f, features=features,
                             reference_keep=_unless_all(keep["reference"]), motion=motion,
                             motion_keep=_unless_all(keep["motion"]), speed=speed)
        timesteps = timesteps.expand(b) if timesteps.ndim == 0 else timesteps
        out = self.denoiser(
            sample, timesteps.repeat_interleave(f), encoder_hidden_states=context.flatten(0, 1),
            class_labels=labels, cross_attention_kwargs={"emo": ctx},
            return_dict=False)[0]
        return out.unflatten(0, (b, f))

    def _input_images(self, cond: Conditions, keep: dict[str, torch.Tensor],
                      frames: int) -> torch.Tensor:
        """[B*F, c*k, h, w]: the `input_images` of each sample, repeated per frame; zeros where
        the sample drops that condition. "motion" is the last motion frame (the reference when
        there are none, as in a first generated window)."""
        reference = cond.reference_latent
        motion = cond.motion_latents
        images = []
        for name in self.cfg.input_images:
            if name == "motion" and motion is not None and motion.shape[1] > 0:
                image, kept = motion[:, -1], keep["motion"]
            else:
                image, kept = reference, keep["reference"]
            images.append(image * kept.to(image.dtype).view(-1, 1, 1, 1))
        return torch.cat(images, dim=1).repeat_interleave(frames, dim=0)

    def trainable_parameters(self, stage: int) -> list[nn.Parameter]:
        """Set requires_grad for `stage` (0 joint, 1 images, 2 video, 3 speed; see STAGES) and return the
        trainable parameters; everything else (the codec, the ReferenceNet's unused tail) is
        frozen."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
        unused = {f"reference_net.{n}" for n in self.reference_net.unused_by_reference_attention()}
        chosen = []
        for name, p in self.named_parameters():
            top = name.split(".")[0]
            on = top in STAGES[stage] or (stage == 2 and top == "denoiser" and ".attn2." in name)
            on = on and name not in unused
            p.requires_grad_(on)
            if on:
                chosen.append(p)
        return chosen

    def frozen_to(self, dtype: torch.dtype, stage: int) -> None:
        """Cast the parts `stage` keeps frozen as a whole to `dtype` (the ReferenceNet in stages
        2 and 3; its features then enter the denoiser in that dtype, under autocast)."""
        if "reference_net" not in STAGES[stage]:
            self.reference_net.to(dtype)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the UNets' resnets/transformer blocks and the temporal layers in backward."""
        for unet in (self.denoiser, self.reference_net.unet):
            if enabled:
                unet.enable_gradient_checkpointing()
            else:
                unet.disable_gradient_checkpointing()
        self.gradient_checkpointing = enabled


def widen_conv_in(unet: UNet2DConditionModel, extra: int) -> None:
    """Give the UNet's first convolution `extra` more input channels with zero weights, so the
    widened UNet computes what it did before until training moves them."""
    if extra == 0:
        return
    old = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride,
                    old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new.to(old.weight.dtype)
    unet.register_to_config(in_channels=old.in_channels + extra)


def latent_size(cfg: ModelConfig) -> int:
    """Side of the denoiser's input in latent cells for a UNet built from scratch: image_size
    over the codec's downsampling (8 for an SD VAE; the UNet records it, it does not use it)."""
    return cfg.image_size // (1 if cfg.codec == "pixel" else 8)


def build_codec(cfg: ModelConfig) -> nn.Module:
    """The frozen codec of `cfg`: PixelCodec, or the SD 1.5 VAE of `cfg.models_root`."""
    if cfg.codec == "vae":
        if cfg.init != "sd15":
            raise ValueError("codec='vae' loads the SD 1.5 VAE: it needs init='sd15'")
        return VaeCodec(load_vae(cfg))
    return PixelCodec()


def codec_downsample(cfg: ModelConfig) -> int:
    """How many pixels a latent cell spans (the VAE's from its config.json, no weights read)."""
    return 1 if cfg.codec == "pixel" else vae_downsample(cfg)


def build_model(cfg: ModelConfig,
                emotion_classes: tuple[str, ...] | list[str] = EMOTION_CLASSES_FER) -> EmoModel:
    """The EmoModel of `cfg`: its UNet from scratch or SD 1.5 (`cfg.models_root`), the
    ReferenceNet starting as a copy of the denoiser's UNet."""
    levels = len(cfg.block_out_channels)
    unit = codec_downsample(cfg) * 2 ** (levels - 1)
    if cfg.image_size % unit:
        raise ValueError(f"image_size {cfg.image_size} must be a multiple of {unit} (codec "
                         f"downsampling x {levels - 1} UNet downsamplings)")
    if cfg.codec == "vae" and cfg.init != "sd15":
        raise ValueError("codec='vae' loads the SD 1.5 VAE: it needs init='sd15'")
    unet = load_unet(cfg) if cfg.init == "sd15" else None
    model = EmoModel(cfg.architecture(), tuple(emotion_classes), unet=unet)
    log.info("EmoModel: %.2fM parameters (%s)",
             sum(p.numel() for p in model.parameters()) / 1e6, cfg.init)
    return model
