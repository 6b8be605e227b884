"""Where a checkpoint's denoiser falls short, on its own training windows: the x0 it predicts at
fixed noise levels, and a whole DDIM window next to the real frames.

For each timestep t of a fixed grid: x0 RMSE (the prediction against the real frames) and the
v-prediction loss, on one fixed batch with fixed noise (the same draws for every checkpoint, so
checkpoints compare). Then one DDIM window per sample from pure noise, with the real reference
and motion frames: its RMSE against the real frames and the RMS of its high-pass (the residual
noise a face detector trips on), beside the real frames' own. Pixel values are in [-1, 1].
And how the mouth answers the audio (`audio_response`): on pairs of windows of the same track
(same person and reference, other times), with the expression dropped as in audio-driven
generation, the x0 predictions with each window's own audio and with its partner's; the change
this makes to the mouth's brightness (the mean over the mouth mask: the open mouth is dark),
regressed on the change the two windows' real mouths differ by. A model that ignores the audio
scores a gain near 0; one whose mouth follows it fully, near 1.
`emoforge bench denoise CHECKPOINT...` profiles each given checkpoint; `bench learn` records its
own checkpoint's profile. docs/design.md compares model variants with it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TIMESTEPS = (999, 900, 700, 500, 300, 150, 60, 20)
AUDIO_TIMESTEPS = (999, 600, 300)


def run(files: list[str] | None = None) -> dict:
    """{checkpoint: profile} for each checkpoint folder (a run's or one step's) given."""
    if not files:
        raise ValueError("bench denoise takes checkpoint folders: emoforge bench denoise "
                         "out/train/tiny [more ...]")
    return {"checkpoints": {path: denoising_profile(path) for path in files}}


def high_pass_rms(frames: torch.Tensor) -> float:
    """RMS of frames [..., 3, H, W] minus their 3x3 box blur (at the border: of the pixels
    inside the frame)."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    blur = F.avg_pool2d(flat, 3, 1, 1, count_include_pad=False)
    return float((flat - blur).pow(2).mean().sqrt())


@torch.no_grad()
def denoising_profile(checkpoint: str, batch_size: int = 4, ddim_steps: int = 25,
                      seed: int = 1) -> dict:
    """The profile of `checkpoint` (EMA weights) on its own catalog's training windows (the
    first `batch_size` of epoch 0, every condition present)."""
    from training.config import CONDITIONS  # heavy: training imports torch
    from training.diffusion import add_noise, make_scheduler  # heavy: training imports torch
    from training.generate import Generator  # heavy: training imports torch
    from training.datasets import build_datasets, make_loader  # heavy: training imports torch
    from training.sampling import denoise_window, to_diffused  # heavy: training imports torch
    from training.diffusion import batch_conditions, encode_frames  # heavy: training imports torch

    generator = Generator(checkpoint, "cpu")
    model, codec, spec = generator.model, generator.codec, generator.spec
    dataset = build_datasets(spec)["train"]
    batch = next(iter(make_loader(dataset, 0, 0, batch_size)))
    frames = encode_frames(codec, batch["frames"])
    keep_all = {name: torch.zeros(len(frames), dtype=torch.bool) for name in CONDITIONS}
    reference = codec.encode(batch["reference"])
    cond = batch_conditions(batch, reference, encode_frames(codec, batch["motion"]), keep_all)
    scale = model.cfg.residual_scale
    sample = to_diffused(frames, reference, scale)
    scheduler = make_scheduler(spec.diffusion)
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(seed))
    per_t = []
    for t in TIMESTEPS:
        steps = torch.full((len(frames),), t, dtype=torch.long)
        noisy, target = add_noise(scheduler, sample, noise, steps)
        v = model(noisy, steps, cond)
        x0 = predicted_frames(scheduler, t, noisy, v, reference, scale)
        per_t.append({"t": t, "sigma": float((1 - scheduler.alphas_cumprod[t]).sqrt()),
                      "x0_rmse": float((x0 - frames).pow(2).mean().sqrt()),
                      "v_loss": float((v - target).pow(2).mean())})
    audio = audio_response(model, codec, dataset, scheduler, seed=seed)
    window = denoise_window(model, make_scheduler(spec.diffusion, "ddim"), cond,
                            tuple(frames.shape), steps=ddim_steps,
                            generator=torch.Generator().manual_seed(seed))
    real = codec.decode(frames.flatten(0, 1))
    fake = codec.decode(window.flatten(0, 1))
    return {"windows": len(frames), "per_timestep": per_t,
            "ddim": {"steps": ddim_steps, "rmse": float((fake - real).pow(2).mean().sqrt()),
                     "high_pass_rms": high_pass_rms(fake)},
            "real_high_pass_rms": high_pass_rms(real), "audio_response": audio}


def mouth_brightness(frames: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
    """[B,F] mean over channels and the mouth mask's pixels of frames [B,F,3,S,S] (mask
    [B,F,1,S,S]); NaN for a frame without a mouth."""
    area = mouth.sum(dim=(2, 3, 4))
    total = (frames * mouth).mean(dim=2, keepdim=True).sum(dim=(2, 3, 4))
    return torch.where(area > 0, total / area.clamp_min(1), torch.nan)


def predicted_frames(scheduler, t: int, noisy: torch.Tensor, v: torch.Tensor,
                     reference: torch.Tensor, residual_scale: float) -> torch.Tensor:
    """The frame latents a v prediction at timestep t implies: x0 = sqrt(a) x_t - sqrt(1 - a) v
    in the denoiser's space, brought back to frames (sampling.from_diffused)."""
    from training.sampling import from_diffused  # heavy: training imports torch

    alpha_bar = scheduler.alphas_cumprod[t]
    x0 = alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * v
    return from_diffused(x0, reference, residual_scale)


def response(effect: torch.Tensor, wanted: torch.Tensor) -> dict:
    """Correlation and least-squares gain of `effect` on `wanted` (flattened, NaNs left out)."""
    e, w = effect.flatten().double(), wanted.flatten().double()
    ok = torch.isfinite(e) & torch.isfinite(w)
    e, w = e[ok] - e[ok].mean(), w[ok] - w[ok].mean()
    if len(e) < 3 or float(w.pow(2).sum()) == 0 or float(e.pow(2).sum()) == 0:
        return {"correlation": None, "gain": None, "frames": int(ok.sum())}
    return {"correlation": float((e * w).sum() / (e.norm() * w.norm())),
            "gain": float((e * w).sum() / w.pow(2).sum()), "frames": int(ok.sum())}


def paired_windows(dataset, pairs: int) -> dict:
    """A collated batch of 2 x `pairs` windows: two per track (the first `pairs` tracks with
    room for two windows that do not overlap), at a quarter and three quarters of the track,
    with the same reference frame; windows 2k and 2k+1 are partners."""
    from training import windows as geo  # heavy: training imports torch
    from training.data import Window, collate  # heavy: training imports torch

    cfg = dataset.config
    samples = []
    for index, track in enumerate(dataset.tracks):
        starts = geo.valid_starts(track.length, cfg.frames, cfg.motion_frames,
                                  cfg.reference_margin_frames)
        if len(starts) < 2 or starts[-1] - starts[0] < 2 * cfg.frames:
            continue
        first, second = starts[len(starts) // 4], starts[3 * len(starts) // 4]
        reference = geo.draw_reference(np.random.default_rng(index), track.length, first,
                                       cfg.frames, cfg.motion_frames, cfg.reference_margin_frames)
        samples += [dataset[Window(index, int(first), reference)],
                    dataset[Window(index, int(second), reference)]]
        if len(samples) == 2 * pairs:
            break
    return collate(samples) if samples else {"frames": torch.zeros(0)}


@torch.no_grad()
def audio_response(model, codec, dataset, scheduler, pairs: int = 8, seed: int = 1) -> dict:
    """Per t of AUDIO_TIMESTEPS: `response` of the mouth-brightness change that swapping the
    audio between the partners of `pairs` window pairs makes to the x0 prediction, against the
    real change (module doc)."""
    from training.config import CONDITIONS  # heavy: training imports torch
    from training.diffusion import add_noise  # heavy: training imports torch
    from training.diffusion import batch_conditions, encode_frames  # heavy: training imports torch
    from training.sampling import to_diffused  # heavy: training imports torch

    batch = paired_windows(dataset, pairs)
    b = len(batch["frames"])
    if b < 2:
        return {"windows": b, "per_timestep": []}
    other = torch.arange(b) ^ 1  # each window gets its partner's audio (same track, other time)
    drop = {name: torch.zeros(b, dtype=torch.bool) for name in CONDITIONS}
    drop["expression"] = torch.ones(b, dtype=torch.bool)
    reference = codec.encode(batch["reference"])
    motion = encode_frames(codec, batch["motion"])
    own = batch_conditions(batch, reference, motion, drop)
    swapped = batch_conditions({**batch, "audio": batch["audio"][other],
                                "audio_valid": batch["audio_valid"][other]}, reference, motion, drop)
    scale = model.cfg.residual_scale
    sample = to_diffused(encode_frames(codec, batch["frames"]), reference, scale)
    mouth = batch["mouth_mask"]
    real = mouth_brightness(batch["frames"], mouth)
    wanted = real - real[other]
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for t in AUDIO_TIMESTEPS:
        steps = torch.full((b,), t, dtype=torch.long)
        noisy, _ = add_noise(scheduler, sample, noise, steps)
        x0 = [predicted_frames(scheduler, t, noisy, model(noisy, steps, c), reference, scale)
              for c in (own, swapped)]
        decoded = [codec.decode(x.flatten(0, 1)).reshape(batch["frames"].shape) for x in x0]
        effect = mouth_brightness(decoded[0], mouth) - mouth_brightness(decoded[1], mouth)
        rows.append({"t": t, **response(effect, wanted)})
    return {"windows": b, "real_change_std": float(wanted[torch.isfinite(wanted)].std()),
            "per_timestep": rows}
