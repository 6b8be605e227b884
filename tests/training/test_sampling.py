"""`denoise_window`: the composed guidance against its formula and the branches each setting
needs (a model whose output says which conditions each row saw), and the fast path (reference
features once per window, branches batched) against one call per branch on the tiny model."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.training.test_models import make_cond, perturb
from training.config import DiffusionConfig
from training.diffusion import make_scheduler
from training.models import Conditions, ModelConfig, build_model
from training.sampling import denoise_window

SHAPE = (1, 2, 3, 4, 4)


class ConditionEcho(nn.Module):
    """v = 0.1 if the reference is kept + 0.3 if the audio is kept, per row; records each
    call's rows as (reference kept, audio kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # denoise_window reads the device from it
        self.calls: list[list[tuple[bool, bool]]] = []

    def forward(self, latents, timesteps, cond):
        n = latents.shape[0]
        kept = {name: ~cond.drop.get(name, torch.zeros(n, dtype=torch.bool))
                for name in ("reference", "audio")}
        self.calls.append([(bool(r), bool(a)) for r, a in zip(kept["reference"], kept["audio"])])
        value = 0.1 * kept["reference"].float() + 0.3 * kept["audio"].float()
        return value.view(n, 1, 1, 1, 1).expand_as(latents).clone()


FULL, REF, UNCOND = (True, True), (True, False), (False, False)


@pytest.mark.parametrize("g_ref, g_audio, v, branches", [
    (1.0, 1.0, 0.4, [FULL]),  # full only
    (1.0, 3.0, 0.1 + 3 * 0.3, [FULL, REF]),  # ref + g_audio (full - ref)
    (2.0, 3.0, 2 * 0.1 + 3 * 0.3, [FULL, REF, UNCOND]),
])
@pytest.mark.parametrize("fast", [True, False])
def test_guidance_composes_the_predictions_with_the_branches_it_needs(g_ref, g_audio, v,
                                                                      branches, fast):
    model = ConditionEcho()
    cond = Conditions(reference_latent=torch.zeros(1, 3, 4, 4))
    scheduler = make_scheduler(DiffusionConfig(), "ddim")
    out = denoise_window(model, scheduler, cond, SHAPE, steps=1, guidance_reference=g_ref,
                         guidance_audio=g_audio, generator=torch.Generator().manual_seed(0),
                         fast=fast)
    # fast: one call with a row per branch; else one call per branch
    assert model.calls == ([branches] if fast else [[b] for b in branches])
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    manual = make_scheduler(DiffusionConfig(), "ddim")
    manual.set_timesteps(1)
    t = manual.timesteps[0]
    expected = manual.step(torch.full((2, 3, 4, 4), v), t, start.flatten(0, 1)).prev_sample
    torch.testing.assert_close(out, expected.reshape(SHAPE))


class ConstantX0(nn.Module):
    """Predicts the v whose x0 is `x0` everywhere, for a model config of `residual_scale`."""

    def __init__(self, x0: float, residual_scale: float) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.cfg = SimpleNamespace(residual_scale=residual_scale)
        self.x0, self.alphas = x0, make_scheduler(DiffusionConfig()).alphas_cumprod

    def forward(self, latents, timesteps, cond):
        # x0 = sqrt(a) x - sqrt(1 - a) v  =>  v = (sqrt(a) x - x0) / sqrt(1 - a)
        a = self.alphas[timesteps].view(-1, 1, 1, 1, 1)
        return (a.sqrt() * latents - self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("scale, expected", [(0.0, lambda ref: torch.full_like(ref, 0.6)),
                                             (3.0, lambda ref: ref + 0.2)])
def test_a_residual_model_adds_its_denoised_sample_to_the_reference(scale, expected):
    """A model whose every prediction is x0 = 0.6: without residual_scale the frames are 0.6;
    with residual_scale 3 the sample is 3 x (frames - reference), so the frames are the
    reference + 0.2, in every frame of the window."""
    reference = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    cond = Conditions(reference_latent=reference)
    out = denoise_window(ConstantX0(0.6, scale), make_scheduler(DiffusionConfig(), "ddim"), cond,
                         SHAPE, steps=4, generator=torch.Generator().manual_seed(0))
    for frame in out[0]:
        torch.testing.assert_close(frame, expected(reference)[0])


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny layout at 32 px with its zero-initialised layers perturbed (so motion frames,
    speed and the temporal layers act), eval mode, one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(image_size=32, frames=3, motion_frames=2)
    model = build_model(cfg).eval()
    perturb(model)
    return cfg, model


def count_reference_runs(model) -> list[int]:
    runs = [0]

    def hook(*_):
        runs[0] += 1
    model.reference_net.register_forward_hook(hook)
    return runs


@pytest.mark.parametrize("g_ref, g_audio", [(1.0, 1.0), (1.5, 3.5)])
def test_cached_reference_features_give_the_frames_of_recomputing_them(tiny_model, g_ref,
                                                                       g_audio):
    """The fast path (ReferenceNet once per window, branches in one call) against one call
    per branch that each runs the ReferenceNet: the same latents within fp32 tolerance, from
    1 ReferenceNet run instead of steps x branches."""
    cfg, base = tiny_model
    cond = make_cond(cfg, 1, cfg.frames, cfg.motion_frames)
    cond.drop = {"expression": torch.tensor([True])}  # a condition absent anyway stays absent
    shape = (1, cfg.frames, 3, cfg.image_size, cfg.image_size)
    steps, branches = 3, 1 if g_ref == g_audio == 1.0 else 3
    out, runs = {}, {}
    for fast in (True, False):
        model = copy.deepcopy(base)
        counter = count_reference_runs(model)
        out[fast] = denoise_window(model, make_scheduler(DiffusionConfig(), "ddim"), cond, shape,
                                   steps, g_ref, g_audio, torch.Generator().manual_seed(7),
                                   fast=fast)
        runs[fast] = counter[0]
    assert runs == {True: 1, False: steps * branches}
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-4)
    other = denoise_window(base, make_scheduler(DiffusionConfig(), "ddim"),
                           make_cond(cfg, 1, cfg.frames, cfg.motion_frames, seed=5), shape,
                           steps, g_ref, g_audio, torch.Generator().manual_seed(7))
    assert (other - out[True]).abs().max() > 1e-2  # the conditions do reach the frames


def test_forward_with_given_reference_features_equals_computing_them(tiny_model):
    cfg, model = tiny_model
    cond = make_cond(cfg, 2, cfg.frames, cfg.motion_frames)
    cond.drop = {"reference": torch.tensor([False, True]), "motion": torch.tensor([True, False])}
    noisy = torch.randn(2, cfg.frames, 3, cfg.image_size, cfg.image_size,
                        generator=torch.Generator().manual_seed(1))
    t = torch.tensor([900, 100])
    with torch.no_grad():
        want = model(noisy, t, cond)
        features = model.reference_features(cond.reference_latent, cond.motion_latents)
        got = model(noisy, t, cond, reference=features)
        assert torch.equal(got, want)
        with pytest.raises(ValueError, match="motion frames"):
            model(noisy, t, cond, reference=model.reference_features(cond.reference_latent))
