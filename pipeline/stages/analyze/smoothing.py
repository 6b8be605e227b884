"""Temporal smoothing of per-frame values on the 25 fps grid (NaN-aware Gaussian)."""

from __future__ import annotations

import numpy as np


def gaussian_smooth(values: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Smooth float[T,...] along axis 0 with a Gaussian of `sigma_frames` (frames).

    NaN entries (unknown frames) are ignored: each output is the weighted mean of the known
    neighbours (normalized convolution) and stays NaN where the input is NaN. sigma <= 0 returns a
    copy. Ends are handled by renormalizing the truncated kernel (no padding bias)."""
    x = np.asarray(values, np.float64)
    if sigma_frames <= 0 or x.shape[0] < 2:
        return x.copy()
    radius = max(1, round(3 * sigma_frames))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_frames) ** 2)
    flat = x.reshape(x.shape[0], -1)
    known = np.isfinite(flat)
    filled = np.where(known, flat, 0.0)
    num = np.zeros_like(filled)
    den = np.zeros_like(filled)
    T = flat.shape[0]
    for k, off in zip(kernel, offsets):
        lo, hi = max(0, -off), min(T, T - off)
        num[lo:hi] += k * filled[lo + off : hi + off]
        den[lo:hi] += k * known[lo + off : hi + off]
    out = np.where(known, num / np.maximum(den, 1e-12), np.nan)
    return out.reshape(x.shape)
