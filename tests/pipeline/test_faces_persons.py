"""cluster_identities: deterministic identity clusters with per-backend thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.persons import THRESHOLDS, cluster_identities


def _people(n_people: int, per: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_people, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x, truth = [], []
    for p in range(n_people):
        for _ in range(per):
            v = centers[p] + rng.normal(scale=spread / np.sqrt(dim), size=dim)
            x.append(v / np.linalg.norm(v))
            truth.append(p)
    order = rng.permutation(len(x))
    return np.array(x, np.float32)[order], [truth[i] for i in order]


@pytest.mark.parametrize("backend,dim,spread", [("dlib", 128, 0.15), ("arcface", 512, 0.5)])
def test_recovers_people_and_is_deterministic(backend, dim, spread):
    x, truth = _people(6, 8, dim, spread)
    labels = cluster_identities(x, backend)
    pairs_same = [(labels[i] == labels[j]) == (truth[i] == truth[j])
                  for i in range(len(x)) for j in range(i + 1, len(x))]
    assert np.mean(pairs_same) == 1.0
    assert labels == cluster_identities(x.copy(), backend)
    assert labels[0] == 0 and max(labels) == 5  # numbered by first appearance


def test_threshold_separates_and_nan_rows_stand_alone():
    a = np.zeros(128, np.float32)
    a[0] = 1
    b = a.copy()
    b[1] = (THRESHOLDS["dlib"] * 0.5)  # close to a
    c = np.zeros(128, np.float32)
    c[2] = 1  # far from a (distance sqrt 2)
    nan = np.full(128, np.nan, np.float32)
    assert cluster_identities(np.stack([a, b, c, nan]), "dlib") == [0, 0, 1, 2]
    assert cluster_identities(np.zeros((0, 128)), "dlib") == []
    with pytest.raises(ValueError, match="no identity threshold"):
        cluster_identities(np.stack([a]), "unknown")
