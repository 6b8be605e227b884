"""The Fréchet distance between two Gaussians fitted to feature sets: E-FID, FID and FVD share it.

d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the matrix square root from
`scipy.linalg.sqrtm`.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features float[N,D] (N >= 2) -> (mean float64[D], covariance float64[D,D], ddof 1)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"Fréchet statistics need float[N,D] with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("Fréchet statistics got non-finite features (drop NaN rows first)")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    mu float[D], sigma float[D,D]. When S1 S2 is singular enough that sqrtm is not finite,
    eps * I is added to both covariances (logged)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"Fréchet distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning("Fréchet distance: sqrtm(S1 S2) not finite; adding %g to the diagonals", eps)
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = float(np.abs(covmean.imag).max())
        if imag > 1e-3 * max(1.0, float(np.abs(covmean.real).max())):
            log.warning("Fréchet distance: sqrtm has an imaginary part of %.3g (dropped)", imag)
        covmean = covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_between(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between feature sets a float[N,D] and b float[M,D]."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
