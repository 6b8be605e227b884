"""bench denoise: the residual-noise and audio-response measures against closed forms, and the
CLI's usage error."""

from __future__ import annotations

import math

import pytest
import torch

from jobs.bench.denoise import high_pass_rms, mouth_brightness, response, run


def test_high_pass_rms_of_flat_and_checkerboard_frames():
    assert high_pass_rms(torch.full((2, 3, 16, 16), 0.7)) == pytest.approx(0.0, abs=1e-7)
    y, x = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    board = ((x + y) % 2 * 2 - 1).float().expand(3, 64, 64)
    # inside: 5 of 9 neighbours share the sign, |x - mean| = 8/9; on the border half do: 1
    inside, border = 62 * 62, 64 * 64 - 62 * 62
    want = math.sqrt((inside * (8 / 9) ** 2 + border) / (64 * 64))
    assert high_pass_rms(board) == pytest.approx(want, rel=1e-6)


def test_run_needs_checkpoints():
    with pytest.raises(ValueError, match="checkpoint folders"):
        run([])


def test_mouth_brightness_averages_the_mask_and_marks_frames_without_a_mouth():
    frames = torch.zeros(1, 2, 3, 4, 4)
    frames[0, 0, :, 2:, :] = -1.0  # a dark lower half in frame 0
    frames[0, 0, 0, 2, 0] = 1.0  # one bright red value in it
    mouth = torch.zeros(1, 2, 1, 4, 4)
    mouth[0, 0, 0, 2:, :] = 1.0
    got = mouth_brightness(frames, mouth)
    assert got[0, 0] == pytest.approx((-8 * 3 + 2) / (8 * 3))
    assert torch.isnan(got[0, 1])


def test_response_of_a_scaled_and_of_an_unrelated_effect():
    wanted = torch.tensor([[0.3, -0.1, 0.2], [0.0, -0.4, float("nan")]])
    half = response(0.5 * wanted + 0.01, wanted)
    assert half["correlation"] == pytest.approx(1.0) and half["gain"] == pytest.approx(0.5)
    assert half["frames"] == 5
    other = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 0.0, 0.0]])  # orthogonal once centred
    w = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    assert response(other, w)["correlation"] == pytest.approx(0.0, abs=1e-12)
    assert response(torch.zeros(2, 3), wanted)["gain"] is None
