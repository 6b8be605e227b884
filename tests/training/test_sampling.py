"""Classifier-free guidance in `denoise_window`: the composed prediction against its formula, and
the model calls each setting needs (a model whose output says which conditions it saw)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.config import DiffusionConfig
from training.diffusion import make_scheduler
from training.models import Conditions
from training.sampling import denoise_window

SHAPE = (1, 2, 3, 4, 4)


class ConditionEcho(nn.Module):
    """v = 0.1 if the reference is kept + 0.3 if the audio is kept; records each call."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # denoise_window reads the device from it
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, latents, timesteps, cond):
        kept = {n: not bool(cond.drop.get(n, torch.zeros(1, dtype=torch.bool))[0])
                for n in ("reference", "audio")}
        self.calls.append((kept["reference"], kept["audio"]))
        return torch.full_like(latents, 0.1 * kept["reference"] + 0.3 * kept["audio"])


@pytest.mark.parametrize("g_ref, g_audio, v, calls", [
    (1.0, 1.0, 0.4, [(True, True)]),  # full only
    (1.0, 3.0, 0.1 + 3 * 0.3, [(True, True), (True, False)]),  # ref + g_audio (full - ref)
    (2.0, 3.0, 2 * 0.1 + 3 * 0.3, [(True, True), (True, False), (False, False)]),
])
def test_guidance_composes_the_predictions_with_the_calls_it_needs(g_ref, g_audio, v, calls):
    model = ConditionEcho()
    cond = Conditions(reference_latent=torch.zeros(1, 3, 4, 4))
    scheduler = make_scheduler(DiffusionConfig(), "ddim")
    out = denoise_window(model, scheduler, cond, SHAPE, steps=1, guidance_reference=g_ref,
                         guidance_audio=g_audio, generator=torch.Generator().manual_seed(0))
    assert model.calls == calls
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    manual = make_scheduler(DiffusionConfig(), "ddim")
    manual.set_timesteps(1)
    t = manual.timesteps[0]
    expected = manual.step(torch.full((2, 3, 4, 4), v), t, start.flatten(0, 1)).prev_sample
    torch.testing.assert_close(out, expected.reshape(SHAPE))
