"""The diffusion objective: v-prediction with zero-terminal-SNR betas and trailing timesteps,
min-SNR weighting applied per sample, a masked loss, and per-sample randomness that does not
depend on how a global batch is split across workers (so 1 worker with batch 2b and 2 workers
with batch b train identically, and a resumed run draws what an uninterrupted one would)."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from training.config import CONDITIONS, DiffusionConfig, DropoutConfig
from training.sampling import GUIDED, first_window_motion, to_diffused

# what the grouped drops take away (DropoutConfig.reference_only, .unconditional): the
# conditions the sampler's "reference only" and unconditional branches leave out
REFERENCE_ONLY_DROPS = tuple(n for n in GUIDED if n != "reference")
UNCONDITIONAL_DROPS = GUIDED


def make_scheduler(cfg: DiffusionConfig, kind: str = "ddpm"):
    """A diffusers scheduler with the training schedule: v-prediction, betas rescaled to zero
    terminal SNR, trailing timestep spacing (the same schedule for training and sampling)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind]
    return cls(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
               beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=False,
               prediction_type="v_prediction", rescale_betas_zero_snr=True,
               timestep_spacing="trailing")


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The random stream of one sample: global optimizer step (x micro-batch) and its index in
    the global batch, whatever the worker count."""
    digest = hashlib.blake2b(f"{seed}:{step}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


@torch.no_grad()
def draw_noise(latents: torch.Tensor, generators: list[torch.Generator], cfg: DiffusionConfig,
               dropout: DropoutConfig) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Per sample: noise like latents[b] (offset noise per channel when configured), a timestep,
    and the condition-dropout flags: the sample's group (unconditional, reference only or
    neither, DropoutConfig's shares), then each condition's own coin. latents: [B,F,C,H,W].
    Returns (noise, timesteps[B] int64, drop: name -> bool[B])."""
    noises, steps, drops = [], [], {name: [] for name in CONDITIONS}
    shape = latents.shape[1:]
    for g in generators:
        noise = torch.randn(shape, generator=g)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn((1, shape[1], 1, 1), generator=g)
        noises.append(noise)
        steps.append(int(torch.randint(0, cfg.num_train_timesteps, (1,), generator=g)))
        group, *coins = torch.rand(len(CONDITIONS) + 1, generator=g).tolist()
        grouped = (UNCONDITIONAL_DROPS if group < dropout.unconditional
                   else REFERENCE_ONLY_DROPS if group < dropout.unconditional + dropout.reference_only
                   else ())
        for name, coin in zip(CONDITIONS, coins):
            drops[name].append(name in grouped or coin < getattr(dropout, name))
    device = latents.device
    return (torch.stack(noises).to(device, latents.dtype),
            torch.tensor(steps, dtype=torch.long, device=device),
            {k: torch.tensor(v, dtype=torch.bool, device=device) for k, v in drops.items()})


@torch.no_grad()
def augment_motion(motion: torch.Tensor, generators: list[torch.Generator],
                   max_std: float) -> torch.Tensor:
    """Motion latents [B,M,c,h,w] plus Gaussian noise whose std is drawn per sample uniformly in
    [0, max_std] (from the sample's own stream, after `draw_noise`'s draws)."""
    if max_std <= 0 or motion.shape[1] == 0:
        return motion
    noisy = []
    for g, frames in zip(generators, motion):
        std = float(torch.rand(1, generator=g)) * max_std
        noise = torch.randn(frames.shape, generator=g).to(frames.device, frames.dtype)
        noisy.append(frames + std * noise)
    return torch.stack(noisy)


@torch.no_grad()
def motion_from_reference(motion: torch.Tensor, reference: torch.Tensor,
                          generators: list[torch.Generator], share: float) -> torch.Tensor:
    """Motion latents [B,M,c,h,w] where a `share` of the samples (a coin from each sample's own
    stream, after augment_motion's draws) take the reference latent [B,c,h,w] repeated instead,
    as generation's first window does (sampling.first_window_motion): clean, no motion noise."""
    if share <= 0 or motion.shape[1] == 0:
        return motion
    first = first_window_motion(reference, motion.shape[1]).to(motion.dtype)
    coins = torch.tensor([float(torch.rand(1, generator=g)) < share for g in generators],
                         device=motion.device)
    return torch.where(coins.view(-1, 1, 1, 1, 1), first, motion)


def add_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """Noisy latents and the v-prediction target for latents/noise [B,F,C,H,W], t [B]."""
    b, f = latents.shape[:2]
    flat_t = t.repeat_interleave(f)
    flat = lambda x: x.reshape(b * f, *x.shape[2:])  # noqa: E731
    noisy = scheduler.add_noise(flat(latents), flat(noise), flat_t)
    target = scheduler.get_velocity(flat(latents), flat(noise), flat_t)
    return noisy.reshape(latents.shape), target.reshape(latents.shape)


def snr(scheduler, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps t (0 at the terminal step)."""
    alphas = scheduler.alphas_cumprod.to(t.device)[t].float()
    return alphas / (1.0 - alphas).clamp_min(1e-12)


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights for v-prediction: min(SNR + 1, gamma) / (SNR + 1). This is
    min-SNR-gamma (Hang et al. 2023) for a v target, which weighs like an epsilon loss, with
    SNR + 1 inside the min so the zero-SNR terminal step keeps weight 1 instead of 0."""
    s = snr(scheduler, t)
    if gamma <= 0:
        return torch.ones_like(s)
    return torch.clamp(s + 1.0, max=gamma) / (s + 1.0)


def masked_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """Mean over samples of weight[b] x (masked MSE of sample b). prediction/target [B,F,C,H,W];
    mask [B,F,1,H,W]: each latent cell's weight in its sample's mean (0 for padded crop borders,
    which carry no loss; above 1 on the mouth, see pixel_weights); weights [B]. The weights
    multiply each sample's own mean (averaging first would cancel them)."""
    err = F.mse_loss(prediction.float(), target.float(), reduction="none") * mask
    per_sample = err.flatten(1).sum(1) / (mask.expand_as(err).flatten(1).sum(1)).clamp_min(1.0)
    return (per_sample * weights).mean()


def latent_mask(valid_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """valid_mask [B,F,1,S,S] at pixel resolution -> [B,F,1,h,w] at latent resolution; a latent
    cell counts only when all pixels under it are valid (min pooling)."""
    b, f = valid_mask.shape[:2]
    flat = valid_mask.reshape(b * f, 1, *valid_mask.shape[-2:])
    if flat.shape[-2:] != torch.Size(size):
        flat = -F.adaptive_max_pool2d(-flat, size)
    return flat.reshape(b, f, 1, *size)


def pixel_weights(valid_mask: torch.Tensor, mouth_mask: torch.Tensor, size: tuple[int, int],
                  mouth_weight: float) -> torch.Tensor:
    """[B,F,1,h,w] loss weights at latent resolution: 0 where a cell is not wholly valid
    (latent_mask), else 1 + mouth_weight where any pixel under it is mouth (max pooling)."""
    weights = latent_mask(valid_mask, size)
    if mouth_weight:
        b, f = mouth_mask.shape[:2]
        mouth = mouth_mask.reshape(b * f, 1, *mouth_mask.shape[-2:])
        if mouth.shape[-2:] != torch.Size(size):
            mouth = F.adaptive_max_pool2d(mouth, size)
        weights = weights * (1.0 + mouth_weight * mouth.reshape(b, f, 1, *size))
    return weights


def diffusion_loss(model, codec, scheduler, batch: dict, generators: list[torch.Generator],
                   spec) -> torch.Tensor:
    """The masked, min-SNR-weighted v-prediction loss of one collated micro-batch (`spec`: the
    TrainSpec), on the frames' latents or their residual to the reference's (to_diffused).
    `model`: the EmoModel (or its DDP wrapper); `codec`: the frozen codec beside it;
    `generators`: one random stream per sample (sample_generator)."""
    with torch.no_grad():
        reference = codec.encode(batch["reference"])
        latents = to_diffused(encode_frames(codec, batch["frames"]), reference,
                              spec.model.residual_scale)
        motion = encode_frames(codec, batch["motion"])
    noise, t, drop = draw_noise(latents, generators, spec.diffusion, spec.dropout)
    motion = augment_motion(motion, generators, spec.diffusion.motion_noise)
    motion = motion_from_reference(motion, reference, generators, spec.diffusion.reference_motion)
    noisy, target = add_noise(scheduler, latents, noise, t)
    prediction = model(noisy, t, batch_conditions(batch, reference, motion, drop))
    weights = min_snr_weights(scheduler, t, spec.diffusion.min_snr_gamma)
    mask = pixel_weights(batch["valid_mask"], batch["mouth_mask"], tuple(latents.shape[-2:]),
                         spec.diffusion.mouth_weight)
    return masked_loss(prediction, target, mask, weights)


def batch_conditions(batch: dict, reference: torch.Tensor, motion: torch.Tensor,
                     drop: dict[str, torch.Tensor]):
    """models.Conditions of a collated batch with encoded reference/motion latents; conditions
    a sample lacks (no audio features, no expression, unknown emotion) are dropped for it."""
    from training.models import Conditions  # diffusers, through training.models.emo

    drop = {**drop, "audio": drop["audio"] | ~batch["audio_valid"],
            "expression": drop["expression"] | ~batch["expression_valid"],
            "emotion": drop["emotion"] | (batch["emotion"] < 0)}
    return Conditions(reference_latent=reference, motion_latents=motion, audio=batch["audio"],
                      expression=batch["expression"], jaw_pose=batch["jaw_pose"],
                      emotion=batch["emotion"], intensity=batch["intensity"],
                      face_mask=batch["face_mask"], mouth_mask=batch["reference_mouth"],
                      head_speed=batch["head_speed"], drop=drop)


def encode_frames(codec, frames: torch.Tensor) -> torch.Tensor:
    """[B,F,3,S,S] pixels -> [B,F,c,h,w] latents (F may be 0)."""
    b, f = frames.shape[:2]
    if f == 0:
        probe = codec.encode(frames.new_zeros((1, *frames.shape[2:])))
        return probe.new_zeros((b, 0, *probe.shape[1:]))
    latents = codec.encode(frames.flatten(0, 1))
    return latents.reshape(b, f, *latents.shape[1:])
