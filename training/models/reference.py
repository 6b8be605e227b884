"""Reference attention: a ReferenceNet (a UNet run at t=0) whose self-attention inputs join the
denoiser's self-attention keys and values, via diffusers attention processors.

Per-call state travels in `cross_attention_kwargs={"emo": ctx}`: diffusers hands the same kwargs to
every attention processor and (as a keyword argument) to every `Transformer2DModel`, including
the recomputation under gradient checkpointing, so no state is kept on the modules between calls.
`ctx` is a `ReferenceBank` in the ReferenceNet's run and a `DenoiseContext` (emo.py) in the
denoiser's; both carry `features` (processor name -> tensor) and, for the denoiser,
`reference_keep` and `frames`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn


def transformer_paths(unet: UNet2DConditionModel) -> list[str]:
    """Module paths of the UNet's `Transformer2DModel`s in execution order (down, mid, up)."""
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    blocks += [("mid_block", unet.mid_block)] if unet.mid_block is not None else []
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    return [f"{name}.attentions.{j}" for name, block in blocks
            for j in range(len(getattr(block, "attentions", None) or []))]


def _attend(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention of `attn`'s projections; hidden [N,L,C], context [N,Lk,Ck],
    mask bool [N,1,1,Lk] (True = attend) or None -> [N,L,C]."""
    if attn.norm_cross and context is not hidden_states:
        context = attn.norm_encoder_hidden_states(context)
    n = hidden_states.shape[0]
    q = attn.to_q(hidden_states)
    k, v = attn.to_k(context), attn.to_v(context)
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (t.view(n, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(n, -1, attn.heads * head_dim).to(q.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


class PlainProcessor:
    """Standard attention (attn2 of both UNets); accepts and ignores the `emo` context."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 emo: Any = None) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return _attend(attn, hidden_states, context, None)


class CaptureProcessor:
    """ReferenceNet self-attention: stores its input (normed hidden states [N,L,C]) in
    `emo.features[name]`, then attends as usual."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 emo: Any = None) -> torch.Tensor:
        if emo is not None:
            emo.features[self.name] = hidden_states
        return _attend(attn, hidden_states, hidden_states, None)


class ReferenceAttnProcessor:
    """Denoiser self-attention over [frame tokens ; reference tokens].

    hidden [B*F,L,C] (sample-major); `emo.features[name]` [B,Lr,C] is repeated per frame;
    `emo.reference_keep` bool [B] (None: all kept) masks the reference keys of dropped samples
    (exactly plain self-attention for them, while the ReferenceNet stays in the autograd graph).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 emo: Any = None) -> torch.Tensor:
        ref = None if emo is None else emo.features.get(self.name)
        if ref is None:
            return _attend(attn, hidden_states, hidden_states, None)
        frames = emo.frames
        ref = ref.repeat_interleave(frames, dim=0).to(hidden_states.dtype)
        context = torch.cat([hidden_states, ref], dim=1)
        mask = None
        keep = emo.reference_keep
        if keep is not None:
            n, length = hidden_states.shape[:2]
            own = torch.ones(n, length, dtype=torch.bool, device=keep.device)
            other = keep.repeat_interleave(frames)[:, None].expand(n, ref.shape[1])
            mask = torch.cat([own, other], dim=1)[:, None, None, :]
        return _attend(attn, hidden_states, context, mask)


def set_processors(unet: UNet2DConditionModel, self_attention: type) -> None:
    """attn1 -> `self_attention(name)` (name = the Attention module's path), attn2 -> plain."""
    procs: dict[str, Any] = {}
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        procs[key] = self_attention(name) if name.endswith("attn1") else PlainProcessor()
    unet.set_attn_processor(procs)


@dataclass
class ReferenceBank:
    """What one ReferenceNet run captured: attn1 inputs by path [N,L,C] and the
    `Transformer2DModel` outputs [N,C,H,W] in execution order."""

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: list[torch.Tensor] = field(default_factory=list)


class _Done(Exception):
    """Raised after the ReferenceNet's last transformer: nothing after it is needed."""


class ReferenceNet(nn.Module):
    """A UNet of the denoiser's layout run on clean latents at timestep 0.

    forward(latents [N,c,h,w]) -> ReferenceBank. Its cross-attention attends to
    `reference_tokens` learned tokens. The run stops after the last `Transformer2DModel`;
    `unused_by_reference_attention()` lists what that leaves without gradient (kept frozen).
    """

    def __init__(self, unet: UNet2DConditionModel, context_tokens: int) -> None:
        super().__init__()
        self.unet = unet
        dim = unet.config.cross_attention_dim
        self.context = nn.Parameter(torch.randn(context_tokens, dim) * 0.02)
        set_processors(unet, CaptureProcessor)
        self.paths = transformer_paths(unet)
        modules = dict(unet.named_modules())
        for i, path in enumerate(self.paths):
            last = i == len(self.paths) - 1
            modules[path].register_forward_hook(self._capture_hook(last), with_kwargs=True)

    @staticmethod
    def _capture_hook(last: bool):  # noqa: ANN205 - a forward hook
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            bank = (kwargs.get("cross_attention_kwargs") or {}).get("emo")
            if isinstance(bank, ReferenceBank):
                bank.outputs.append(output[0] if isinstance(output, tuple) else output.sample)
                if last:
                    raise _Done
        return hook

    def forward(self, latents: torch.Tensor) -> ReferenceBank:
        """latents [N,c,h,w] (clean) -> captured features and transformer outputs."""
        n = latents.shape[0]
        bank = ReferenceBank()
        timesteps = torch.zeros(n, dtype=torch.long, device=latents.device)
        context = self.context.to(latents.dtype).expand(n, -1, -1)
        try:
            self.unet(latents, timesteps, encoder_hidden_states=context,
                      cross_attention_kwargs={"emo": bank}, return_dict=False)
        except _Done:
            pass
        if len(bank.outputs) != len(self.paths):
            raise RuntimeError(f"ReferenceNet captured {len(bank.outputs)} of {len(self.paths)} "
                               "transformer outputs")
        return bank

    def unused_by_reference_attention(self) -> list[str]:
        """Parameter names (in this module) that no captured self-attention input depends on:
        the last transformer's last block after its norm1 and its proj_out (used only by motion
        features, i.e. not in stage 1, where the ReferenceNet trains), everything after that
        transformer (never run) and, with one context token, the cross-attention's query and
        key paths. They stay frozen in every stage."""
        last = self.paths[-1]  # "up_blocks.{b}.attentions.{j}" (ModelConfig asks for one)
        block, attn = int(last.split(".")[1]), int(last.split(".")[3])
        n_blocks = len(self.unet.get_submodule(f"{last}.transformer_blocks"))
        n_resnets = len(self.unet.up_blocks[block].resnets)
        after = [f"{last}.proj_out.", f"{last}.transformer_blocks.{n_blocks - 1}.",
                 f"up_blocks.{block}.upsamplers.", "conv_norm_out.", "conv_out."]
        after += [f"up_blocks.{block}.resnets.{r}." for r in range(attn + 1, n_resnets)]
        after += [f"up_blocks.{b}." for b in range(block + 1, len(self.unet.up_blocks))]
        keep = f"{last}.transformer_blocks.{n_blocks - 1}.norm1."
        unused = [f"unet.{name}" for name, _ in self.unet.named_parameters()
                  if any(name.startswith(p) for p in after) and not name.startswith(keep)]
        if self.context.shape[0] == 1:
            # cross-attention to one token: its softmax is 1 whatever the query, so the query
            # and key paths (attn2's to_q, to_k and the norm before them) get exactly zero
            # gradient; trained, bf16 rounding would leave them traces Adam turns into steps
            unused += [f"unet.{name}" for name, _ in self.unet.named_parameters()
                       if f"unet.{name}" not in unused and (
                           ".attn2.to_q." in name or ".attn2.to_k." in name
                           or (".transformer_blocks." in name and ".norm2." in name))]
        return unused
