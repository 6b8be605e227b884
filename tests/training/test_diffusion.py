"""The objective's pieces against their definitions: zero-terminal-SNR schedule, per-sample
min-SNR weights that the loss does not average away, the masked loss, and per-sample draws that
do not depend on how a global batch is split; the condition drops that train every branch the
sampler's guidance combines."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from training.config import CONDITIONS, DiffusionConfig, DropoutConfig, branch_probabilities
from training.diffusion import (
    add_noise,
    augment_motion,
    diffusion_loss,
    draw_noise,
    motion_from_reference,
    latent_mask,
    make_scheduler,
    masked_loss,
    min_snr_weights,
    pixel_weights,
    sample_generator,
)
from training.models import PixelCodec
from training.sampling import GUIDED, first_window_motion, from_diffused, to_diffused

REPO = Path(__file__).resolve().parents[2]


def branch_of(drop: dict[str, bool]) -> str:
    """The guidance branch a sample's drops train (training.sampling's three), or "other"."""
    if drop["motion"]:
        return "other"  # the sampler always keeps the motion frames
    dropped = {name for name in GUIDED if drop[name]}
    if not dropped:
        return "full"
    if dropped == set(GUIDED) - {"reference"}:
        return "reference_only"
    return "unconditional" if dropped == set(GUIDED) else "other"


@pytest.mark.parametrize("job", ["train_tiny.toml", "train_base.toml"])
def test_every_guidance_branch_trains_on_at_least_5_percent_of_samples(job):
    """From each shipped config's [dropout]: the probability of each branch the sampler calls
    is at least 5%, and the draws give each branch that share (4,000 samples, within 2 points)."""
    dropout = DropoutConfig(**tomllib.loads((REPO / "jobs" / job).read_text()).get("dropout", {}))
    expected = branch_probabilities(dropout)
    assert min(expected.values()) >= 0.05, expected
    n = 4000
    _, _, drop = draw_noise(torch.zeros(n, 1, 1, 1, 1),
                            [sample_generator(3, 0, j) for j in range(n)], DiffusionConfig(),
                            dropout)
    branches = [branch_of({c: bool(drop[c][j]) for c in CONDITIONS}) for j in range(n)]
    for name, p in expected.items():
        assert abs(branches.count(name) / n - p) < 0.02, (name, branches.count(name) / n, p)


def test_independent_drops_alone_leave_the_guidance_branches_untrained():
    """EMO's 5% per condition without groups: the reference-only and unconditional branches
    get about 0.05^3 and 0.05^4 of the samples (the reason for the groups)."""
    p = branch_probabilities(DropoutConfig())
    assert p["reference_only"] < 1.2e-4 and p["unconditional"] < 1e-5
    assert abs(p["full"] - 0.95 ** 5) < 1e-9


def test_a_share_of_windows_takes_the_reference_as_its_motion_frames():
    """motion_from_reference swaps in generation's first-window motion frames (the reference
    repeated, clean) for about `share` of the samples, from each sample's own stream."""
    reference = torch.randn(400, 3, 4, 4)
    motion = torch.randn(400, 2, 3, 4, 4)
    generators = lambda: [sample_generator(5, 0, j) for j in range(400)]  # noqa: E731
    out = motion_from_reference(motion, reference, generators(), 0.25)
    swapped = torch.tensor([torch.equal(out[j], first_window_motion(reference[j:j + 1], 2)[0])
                            for j in range(400)])
    kept = torch.tensor([torch.equal(out[j], motion[j]) for j in range(400)])
    assert bool((swapped ^ kept).all())
    assert 0.18 < swapped.float().mean() < 0.32
    assert torch.equal(out, motion_from_reference(motion, reference, generators(), 0.25))
    assert torch.equal(motion_from_reference(motion, reference, generators(), 0.0), motion)


def test_schedule_reaches_zero_snr_with_trailing_timesteps():
    sched = make_scheduler(DiffusionConfig(), "ddim")
    assert float(sched.alphas_cumprod[-1]) == 0.0
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert sched.config.prediction_type == "v_prediction"


def test_v_target_and_noisy_input_follow_the_definitions():
    sched = make_scheduler(DiffusionConfig())
    x0 = torch.randn(2, 3, 3, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 999])
    noisy, target = add_noise(sched, x0, noise, t)
    a = sched.alphas_cumprod[t].sqrt().view(2, 1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(2, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, a * x0 + s * noise)
    torch.testing.assert_close(target, a * noise - s * x0)
    torch.testing.assert_close(noisy[1], noise[1])  # terminal step: pure noise


def test_the_residual_space_is_the_scaled_difference_to_the_reference():
    frames = torch.randn(2, 3, 3, 4, 4)
    reference = torch.randn(2, 3, 4, 4)
    residual = to_diffused(frames, reference, 3.0)
    torch.testing.assert_close(residual[1, 2], 3.0 * (frames[1, 2] - reference[1]))
    torch.testing.assert_close(from_diffused(residual, reference, 3.0), frames)
    assert to_diffused(frames, reference, 0.0) is frames  # EMO's: the frames themselves
    assert from_diffused(frames, reference, 0.0) is frames


class NoisyInputRecorder(torch.nn.Module):
    """Predicts v = 0 and keeps the noisy sample it was given."""

    def forward(self, noisy, t, cond):
        self.noisy = noisy
        return torch.zeros_like(noisy)


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_the_loss_noises_what_the_model_config_says_the_denoiser_diffuses(scale):
    """The noisy input of the loss is a x sample + s x noise with the sample the frames
    (residual_scale 0) or residual_scale x (frames - reference), with the noise and timestep
    drawn from each sample's stream; its v = 0 prediction's loss is the target's square."""
    b, f, s = 2, 3, 8
    g = torch.Generator().manual_seed(0)
    batch = {"frames": torch.rand(b, f, 3, s, s, generator=g) * 2 - 1,
             "reference": torch.rand(b, 3, s, s, generator=g) * 2 - 1,
             "motion": torch.zeros(b, 0, 3, s, s), "valid_mask": torch.ones(b, f, 1, s, s),
             "mouth_mask": torch.zeros(b, f, 1, s, s), "audio": torch.zeros(b, f, 5, 8),
             "audio_valid": torch.ones(b, dtype=torch.bool),
             "expression": torch.zeros(b, f, 10),
             "expression_valid": torch.ones(b, dtype=torch.bool),
             "jaw_pose": torch.zeros(b, f, 3), "emotion": torch.zeros(b, dtype=torch.long),
             "intensity": torch.ones(b), "face_mask": torch.ones(b, f, 1, s, s),
             "reference_mouth": torch.zeros(b, 1, s, s), "head_speed": torch.zeros(b, f)}
    spec = SimpleNamespace(model=SimpleNamespace(residual_scale=scale),
                           diffusion=DiffusionConfig(min_snr_gamma=0), dropout=DropoutConfig())
    sched = make_scheduler(spec.diffusion)
    model = NoisyInputRecorder()
    streams = lambda: [sample_generator(1, 0, j) for j in range(b)]  # noqa: E731
    loss = diffusion_loss(model, PixelCodec(), sched, batch, streams(), spec)
    sample = (batch["frames"] if scale == 0
              else scale * (batch["frames"] - batch["reference"][:, None]))
    noise, t, _ = draw_noise(sample, streams(), spec.diffusion, spec.dropout)
    a = sched.alphas_cumprod[t].sqrt().view(b, 1, 1, 1, 1)
    sigma = (1 - sched.alphas_cumprod[t]).sqrt().view(b, 1, 1, 1, 1)
    torch.testing.assert_close(model.noisy, a * sample + sigma * noise)
    torch.testing.assert_close(loss, (a * noise - sigma * sample).pow(2).mean())


def test_min_snr_weights_per_sample():
    sched = make_scheduler(DiffusionConfig())
    t = torch.tensor([0, 500, 999])
    w = min_snr_weights(sched, t, gamma=5.0)
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    torch.testing.assert_close(w, torch.clamp(snr + 1, max=5.0) / (snr + 1))
    assert w[2] == 1.0 and w[0] < 0.01  # terminal step kept, nearly clean steps down-weighted
    assert torch.equal(min_snr_weights(sched, t, gamma=0), torch.ones(3))


def test_loss_weights_each_sample_and_ignores_masked_pixels():
    target = torch.zeros(2, 1, 1, 2, 2)
    prediction = torch.ones(2, 1, 1, 2, 2)
    mask = torch.ones(2, 1, 1, 2, 2)
    # weights multiply each sample's own mean: a zero weight removes that sample entirely
    assert float(masked_loss(prediction, target, mask, torch.tensor([1.0, 0.0]))) == 0.5
    prediction[0, ..., 0, 0] = 100.0  # a wrong pixel where the crop was padded
    mask[0, ..., 0, 0] = 0.0
    assert float(masked_loss(prediction, target, mask, torch.tensor([1.0, 1.0]))) == 1.0


def test_latent_mask_keeps_only_fully_valid_cells():
    valid = torch.ones(1, 1, 1, 8, 8)
    valid[..., 0, 0] = 0  # one padded pixel
    cells = latent_mask(valid, (4, 4))
    assert cells.shape == (1, 1, 1, 4, 4)
    assert cells[..., 0, 0] == 0 and cells.sum() == 15


def test_mouth_weight_counts_mouth_cells_more_and_padding_not_at_all():
    valid = torch.ones(1, 1, 1, 8, 8)
    valid[..., 0, 0] = 0  # padding in cell (0, 0)
    mouth = torch.zeros(1, 1, 1, 8, 8)
    mouth[..., 5, 2:4] = 1  # two mouth pixels in cell (2, 1)
    assert torch.equal(pixel_weights(valid, mouth, (4, 4), 0.0), latent_mask(valid, (4, 4)))
    weights = pixel_weights(valid, mouth, (4, 4), 3.0)
    expected = torch.ones(4, 4)
    expected[0, 0], expected[2, 1] = 0.0, 4.0
    assert torch.equal(weights[0, 0, 0], expected)
    # the loss is the weighted mean: an error only on the mouth cell weighs 4 / (14 + 4)
    target = torch.zeros(1, 1, 1, 4, 4)
    prediction = torch.zeros(1, 1, 1, 4, 4)
    prediction[..., 2, 1] = 3.0
    loss = masked_loss(prediction, target, weights, torch.ones(1))
    assert abs(float(loss) - 9.0 * 4 / 18) < 1e-6


def test_draws_depend_on_the_global_index_not_on_the_worker_split():
    latents = torch.zeros(4, 2, 3, 8, 8)
    cfg, dropout = DiffusionConfig(), DropoutConfig(audio=0.5, reference=0.5)
    whole = draw_noise(latents, [sample_generator(7, 3, j) for j in range(4)], cfg, dropout)
    halves = [draw_noise(latents[:2], [sample_generator(7, 3, r * 2 + j) for j in range(2)], cfg, dropout)
              for r in range(2)]
    torch.testing.assert_close(whole[0], torch.cat([h[0] for h in halves]))
    assert whole[1].tolist() == halves[0][1].tolist() + halves[1][1].tolist()
    for name in whole[2]:
        assert whole[2][name].tolist() == halves[0][2][name].tolist() + halves[1][2][name].tolist()
    other_step = draw_noise(latents, [sample_generator(7, 4, j) for j in range(4)], cfg, dropout)
    assert not torch.equal(whole[0], other_step[0])


def test_dropout_rates_are_honoured():
    latents = torch.zeros(400, 1, 1, 1, 1)
    _, _, drop = draw_noise(latents, [sample_generator(0, 0, j) for j in range(400)],
                            DiffusionConfig(), DropoutConfig(audio=0.25, reference=0.0, motion=1.0))
    assert 0.17 < drop["audio"].float().mean() < 0.33
    assert not drop["reference"].any() and drop["motion"].all()


def test_motion_noise_std_is_drawn_per_sample_within_the_bound():
    motion = torch.zeros(64, 2, 3, 16, 16)
    generators = lambda: [sample_generator(1, 0, j) for j in range(64)]  # noqa: E731
    noisy = augment_motion(motion, generators(), 0.3)
    torch.testing.assert_close(noisy, augment_motion(motion, generators(), 0.3))  # reproducible
    stds = noisy.flatten(1).std(dim=1)
    assert stds.max() < 0.3 * 1.05 and stds.min() < 0.05  # uniform in [0, 0.3]
    assert 0.12 < stds.mean() < 0.18
    assert torch.equal(augment_motion(motion, generators(), 0.0), motion)
    assert augment_motion(motion[:, :0], generators(), 0.3).shape == (64, 0, 3, 16, 16)
