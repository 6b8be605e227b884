"""The learning-rate schedule: warm-up, then constant or a half-cosine decay."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import OptimConfig
from training.optim import lr_factor, make_optimizer, make_schedule


def rates(cfg: OptimConfig, steps: int) -> list[float]:
    """The rate each optimizer step runs at, as the trainer steps the schedule."""
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    schedule = make_schedule(optimizer, cfg)
    out = []
    for _ in range(steps):
        out.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return out


def test_warm_up_then_constant_without_decay():
    lr = rates(OptimConfig(lr=1e-3, warmup_steps=4), 10)
    assert lr[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr[4:] == pytest.approx([1e-3] * 6)


def test_cosine_decay_reaches_its_floor_at_decay_steps_and_stays():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, decay_steps=110, final_lr_fraction=0.2)
    lr = rates(cfg, 150)
    assert lr[9] == pytest.approx(1e-3)  # the warm-up's last step: the full rate
    # halfway through the decay (50 of 100 steps) the rate is halfway between 1 and 0.2
    assert lr[59] == pytest.approx(0.6e-3)
    # a quarter in: 0.2 + 0.8 * (1 + cos(pi / 4)) / 2
    assert lr[34] == pytest.approx(1e-3 * (0.2 + 0.4 * (1 + math.sqrt(0.5))))
    assert lr[109] == pytest.approx(0.2e-3) and lr[149] == pytest.approx(0.2e-3)
    decay = lr[9:110]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_a_resumed_schedule_continues_where_it_stopped():
    cfg = OptimConfig(lr=1e-3, warmup_steps=5, decay_steps=50)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    schedule = make_schedule(optimizer, cfg)
    for _ in range(20):
        optimizer.step()
        schedule.step()
    state = schedule.state_dict()
    again = make_schedule(make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg), cfg)
    again.load_state_dict(state)
    assert again.get_last_lr()[0] == pytest.approx(cfg.lr * lr_factor(20, cfg))
    assert again.get_last_lr()[0] == pytest.approx(rates(cfg, 21)[20])


def test_decay_settings_are_checked():
    with pytest.raises(ValueError, match="decay_steps"):
        OptimConfig(warmup_steps=50, decay_steps=50)
    with pytest.raises(ValueError, match="final_lr_fraction"):
        OptimConfig(decay_steps=100, final_lr_fraction=1.5)
