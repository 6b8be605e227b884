"""Per-frame signals on the 25 fps grid: the one Gaussian smoother and the one gap interpolator."""

from __future__ import annotations

import math

import numpy as np


def gaussian_smooth(values: np.ndarray, sigma_frames: float, ends: str = "known") -> np.ndarray:
    """Smooth float[T,...] along axis 0 with a Gaussian of `sigma_frames` (frames), radius
    ceil(3 sigma).

    ends="known": NaN entries (unknown frames) are ignored: each output is the weighted mean of
    the known neighbours (normalized convolution) and stays NaN where the input is NaN; ends are
    handled by renormalizing the truncated kernel (no padding bias). sigma <= 0 returns a copy.
    ends="hold": the first and last values extend past the ends (finite input; the crop
    geometry's smoothing). sigma <= 0 returns the input."""
    if ends == "hold":
        return _smooth_held(values, sigma_frames)
    if ends != "known":
        raise ValueError(f"ends must be 'known' or 'hold', got {ends!r}")
    x = np.asarray(values, np.float64)
    if sigma_frames <= 0 or x.shape[0] < 2:
        return x.copy()
    radius = max(1, math.ceil(3 * sigma_frames))
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


def _smooth_held(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(x) < 2:
        return x
    r = smoothing_radius(sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, [(r, r)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    flat = padded.reshape(len(padded), -1)
    out = np.stack([np.convolve(flat[:, j], k, "valid") for j in range(flat.shape[1])], 1)
    return out.reshape(x.shape)


def smoothing_radius(sigma_frames: float) -> int:
    """Frames on each side that a smoothed value depends on (0 when smoothing is off)."""
    return math.ceil(3 * sigma_frames) if sigma_frames > 0 else 0


def interpolate(at: np.ndarray, where: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values float[K,...] known at increasing positions `where` (int or float[K]) -> float64
    [len(at),...] at positions `at`: linear in between, held at the ends."""
    values = np.asarray(values)
    flat = values.reshape(len(values), -1)
    out = np.stack([np.interp(at, where, flat[:, j]) for j in range(flat.shape[1])], 1)
    return out.reshape((len(at),) + values.shape[1:])


def fill_gaps(values: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """float[T,...] -> float64[T,...]: the rows not `known` (default: rows holding a non-finite
    value) interpolated from the known rows (`interpolate`); all zeros when no row is known."""
    x = np.asarray(values, np.float64)
    if known is None:
        known = np.isfinite(x.reshape(len(x), -1)).all(1)
    if not known.any():
        return np.zeros_like(x)
    idx = np.arange(len(x))
    return interpolate(idx, idx[known], x[known])
