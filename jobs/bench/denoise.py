"""Where a checkpoint's denoiser falls short, on its own training windows: the x0 it predicts at
fixed noise levels, and a whole DDIM window next to the real frames.

For each timestep t of a fixed grid: x0 RMSE (the prediction against the real frames) and the
v-prediction loss, on one fixed batch with fixed noise (the same draws for every checkpoint, so
checkpoints compare). Then one DDIM window per sample from pure noise, with the real reference
and motion frames: its RMSE against the real frames and the RMS of its high-pass (the residual
noise a face detector trips on), beside the real frames' own. Pixel values are in [-1, 1].
`emoforge bench denoise CHECKPOINT...` profiles each given checkpoint; `bench learn` records its
own checkpoint's profile. The README's design notes compare model variants with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TIMESTEPS = (999, 900, 700, 500, 300, 150, 60, 20)


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
    from training.config import CONDITIONS
    from training.diffusion import add_noise, make_scheduler
    from training.generate import Generator
    from training.sampling import denoise_window
    from training.trainer import Worker, batch_conditions, build_datasets, encode_frames, make_loader

    generator = Generator(checkpoint, "cpu")
    model, spec = generator.model, generator.spec
    dataset = build_datasets(spec)["train"]
    batch = next(iter(make_loader(dataset, 0, 0, batch_size, Worker(device="cpu"))))
    frames = encode_frames(model.codec, batch["frames"])
    keep_all = {name: torch.zeros(len(frames), dtype=torch.bool) for name in CONDITIONS}
    cond = batch_conditions(batch, model.codec.encode(batch["reference"]),
                            encode_frames(model.codec, batch["motion"]), keep_all)
    scheduler = make_scheduler(spec.diffusion)
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(seed))
    per_t = []
    for t in TIMESTEPS:
        steps = torch.full((len(frames),), t, dtype=torch.long)
        noisy, target = add_noise(scheduler, frames, noise, steps)
        v = model(noisy, steps, cond)
        alpha_bar = scheduler.alphas_cumprod[t]
        x0 = alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * v
        per_t.append({"t": t, "sigma": float((1 - alpha_bar).sqrt()),
                      "x0_rmse": float((x0 - frames).pow(2).mean().sqrt()),
                      "v_loss": float((v - target).pow(2).mean())})
    window = denoise_window(model, make_scheduler(spec.diffusion, "ddim"), cond,
                            tuple(frames.shape), steps=ddim_steps,
                            generator=torch.Generator().manual_seed(seed))
    real = model.codec.decode(frames.flatten(0, 1))
    fake = model.codec.decode(window.flatten(0, 1))
    return {"windows": len(frames), "per_timestep": per_t,
            "ddim": {"steps": ddim_steps, "rmse": float((fake - real).pow(2).mean().sqrt()),
                     "high_pass_rms": high_pass_rms(fake)},
            "real_high_pass_rms": high_pass_rms(real)}
