"""bench denoise: the residual-noise measure against closed forms, and the CLI's usage error."""

from __future__ import annotations

import math

import pytest
import torch

from jobs.bench.denoise import high_pass_rms, run


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
