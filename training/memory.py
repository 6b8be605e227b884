"""Training memory per stage, from the model built on the meta device (no weights, no data).

Per stage: parameter counts (trained, frozen, codec) and bytes of weights, gradients, optimizer
state, EMA and activations. Weights: trained parameters in fp32; frozen ones in bf16 where the
trainer casts them on CUDA (the VAE; the ReferenceNet in stages 2-3), else fp32. Gradients and EMA:
4 bytes per trained parameter; AdamW: 8 (two fp32 moments), 8-bit AdamW about 2. Activations: one
forward of the denoiser (and of the ReferenceNet where it trains) on meta tensors of the stage's
window with gradient checkpointing on: the inputs that the checkpointed blocks (resnets,
transformer blocks) hold, plus every tensor saved for backward outside them, plus one temporal
layer input per transformer; counted in fp32 and halved for bf16 autocast (an estimate: norms keep
fp32). Not counted: the DDP gradient buckets (one more gradient-sized buffer with more than one
worker), the CUDA context and allocator fragmentation.

    python -m training.memory              # the base config at 512 px, batch 1: a markdown table
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from training.models.config import ModelConfig
from training.models.emo import STAGES, EmoModel

GIB = 2**30
# The SD 1.5 VAE's layout (runwayml/stable-diffusion-v1-5 vae/config.json), counted on meta.
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
STAGE_FRAMES = {1: (1, 0)}  # stage 1 trains on images: 1 frame, no motion frames


@dataclass
class StageMemory:
    stage: int
    frames: int
    motion_frames: int
    trained: int  # parameters
    frozen: int
    codec: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    ema_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return (self.weights_gib + self.gradients_gib + self.optimizer_gib + self.ema_gib
                + self.activations_gib)


def stage_memory(cfg: ModelConfig, stage: int, batch: int = 1, optimizer: str = "adamw",
                 bf16: bool = True) -> StageMemory:
    """Memory of training `cfg` in `stage` at `batch` windows per GPU (see the module doc)."""
    frames, motion = STAGE_FRAMES.get(stage, (cfg.frames, cfg.motion_frames))
    classes = tuple(f"class{i}" for i in range(cfg.num_emotions))
    with torch.device("meta"):
        model = EmoModel(cfg.architecture(), classes)
        codec = codec_parameters(cfg)
    trained = model.trainable_parameters(stage)
    n_trained = sum(p.numel() for p in trained)
    frozen_half = 0 if "reference_net" in STAGES[stage] or not bf16 else sum(
        p.numel() for p in model.reference_net.parameters())
    n_frozen = sum(p.numel() for p in model.parameters()) - n_trained
    weight_bytes = (4 * n_trained + 2 * frozen_half + 4 * (n_frozen - frozen_half)
                    + (2 if bf16 else 4) * codec)
    state_bytes = {"adamw": 8, "adamw8bit": 2}[optimizer]
    activations = activation_bytes(model, cfg, stage, batch, frames, motion)
    if bf16:
        activations //= 2
    return StageMemory(stage, frames, motion, n_trained, n_frozen, codec, weight_bytes / GIB,
                       4 * n_trained / GIB, state_bytes * n_trained / GIB, 4 * n_trained / GIB,
                       activations / GIB)


def codec_parameters(cfg: ModelConfig) -> int:
    """Parameters of the codec (0 for pixels; the SD 1.5 VAE's layout for "vae")."""
    if cfg.codec == "pixel":
        return 0
    from diffusers import AutoencoderKL

    return sum(p.numel() for p in AutoencoderKL(**SD15_VAE).parameters())


def activation_bytes(model: EmoModel, cfg: ModelConfig, stage: int, batch: int, frames: int,
                     motion: int) -> int:
    """fp32 bytes kept for backward by one forward with gradient checkpointing (module doc)."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    from training.models.reference import transformer_paths

    model.set_gradient_checkpointing(True)
    held = [0]

    def hold(module, args):  # a checkpointed block keeps its input for the recomputation
        held[0] += args[0].numel() * 4

    def pack(x):
        held[0] += x.numel() * x.element_size()
        return x

    side = cfg.image_size // (1 if cfg.codec == "pixel" else 8)
    ctx, temb = cfg.cross_attention_dim, model.denoiser.time_embedding
    levels = len(cfg.block_out_channels)
    runs = [(model.denoiser, batch * frames, True)]
    runs.append((model.reference_net.unet, batch * (1 + motion), "reference_net" in STAGES[stage]))
    hooks = [m.register_forward_pre_hook(hold) for m in model.modules()
             if isinstance(m, (ResnetBlock2D, BasicTransformerBlock))]
    try:
        for unet, n, grad in runs:
            with torch.device("meta"):
                # requires grad: the trained temporal layers put the whole denoiser in the graph
                x = torch.randn(n, unet.config.in_channels, side, side, requires_grad=grad)
                t = torch.full((n,), 500)
                tokens = torch.randn(n, cfg.expression_tokens + cfg.audio_context, ctx)
                labels = torch.randn(n, temb.linear_2.out_features)
            with torch.set_grad_enabled(grad), torch.autograd.graph.saved_tensors_hooks(
                    pack, lambda x: x):
                kwargs = {"class_labels": labels} if unet is model.denoiser else {}
                unet(x, t, encoder_hidden_states=tokens, return_dict=False, **kwargs)
        modules = dict(model.denoiser.named_modules())
        for path in transformer_paths(model.denoiser):  # the temporal layer's input
            part = path.split(".")
            level = {"down_blocks": lambda: int(part[1]), "mid_block": lambda: levels - 1,
                     "up_blocks": lambda: levels - 1 - int(part[1])}[part[0]]()
            held[0] += 4 * batch * frames * modules[path].in_channels * (side >> level) ** 2
    finally:
        for h in hooks:
            h.remove()
    return held[0]


def markdown_table(rows: list[StageMemory]) -> str:
    head = ("| stage | frames + motion | trained params | frozen params (+ codec) | weights | "
            "gradients | optimizer | EMA | activations | total |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.stage} | {r.frames} + {r.motion_frames} | {r.trained / 1e6:,.0f} M | "
                     f"{r.frozen / 1e6:,.0f} M (+ {r.codec / 1e6:,.0f} M) | {r.weights_gib:.1f} | "
                     f"{r.gradients_gib:.1f} | {r.optimizer_gib:.1f} | {r.ema_gib:.1f} | "
                     f"{r.activations_gib:.1f} | {r.total_gib:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.memory",
                                     description="training memory per stage (GiB, per GPU)")
    parser.add_argument("--batch", type=int, default=1, help="windows per GPU (default 1)")
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw")
    parser.add_argument("--fp32", action="store_true", help="no bf16 (autocast, frozen weights)")
    args = parser.parse_args(argv)
    cfg = ModelConfig.base("unused: the layout only")
    rows = [stage_memory(cfg, s, args.batch, args.optimizer, not args.fp32) for s in (1, 2, 3)]
    print(f"base config, {cfg.image_size} px, batch {args.batch}, {args.optimizer}, "
          f"{'fp32' if args.fp32 else 'bf16'}; GiB per GPU\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
