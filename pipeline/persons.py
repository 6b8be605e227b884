"""Identity across the corpus: cluster track embeddings into persons (a pure, deterministic function).

`emoforge catalog persons` (wired by the catalog package) reads every track's identity_embedding,
calls `cluster_identities` per identity backend and writes person_id. Thresholds are per backend,
as euclidean distances between L2-normalized embeddings.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.models.thresholds import IDENTITY_DISTANCE

log = logging.getLogger(__name__)

THRESHOLDS = IDENTITY_DISTANCE  # per identity backend (pipeline/models/thresholds.py)
EXACT_MAX = 4000  # above this many embeddings, greedy centroid clustering (O(N*K) memory)


def cluster_identities(embeddings: np.ndarray, backend: str,
                       threshold: float | None = None) -> list[int]:
    """embeddings: float32[N,D] (one per track, in a stable order, e.g. by track_id) ->
    N cluster labels 0..K-1, numbered by first appearance. Average-linkage agglomerative
    clustering cut at the backend's distance threshold (dlib 0.42 ~ raw 0.6, arcface 1.0): two tracks share a
    label when their clusters' mean pairwise distance stays below it. Rows with NaN get their own
    label. Deterministic for a given input order."""
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be float[N,D], got shape {x.shape}")
    if threshold is None:
        if backend not in THRESHOLDS:
            raise ValueError(f"no identity threshold for backend {backend!r}; known: "
                             f"{sorted(THRESHOLDS)} (or pass threshold=)")
        threshold = THRESHOLDS[backend]
    n = len(x)
    if n == 0:
        return []
    valid = np.isfinite(x).all(1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    raw = np.full(n, -1, np.int64)
    idx = np.nonzero(valid)[0]
    if len(idx) == 1:
        raw[idx] = 0
    elif len(idx) <= EXACT_MAX:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        tree = linkage(pdist(x[idx]), method="average")
        raw[idx] = fcluster(tree, t=threshold, criterion="distance")
    elif len(idx):
        raw[idx] = _greedy(x[idx], threshold)
    labels: list[int] = []
    mapping: dict[int, int] = {}
    for i in range(n):
        key = int(raw[i]) if raw[i] >= 0 else -(i + 1)
        if key not in mapping:
            mapping[key] = len(mapping)
        labels.append(mapping[key])
    return labels


def _greedy(x: np.ndarray, threshold: float) -> np.ndarray:
    """Assign each embedding, in order, to the nearest running centroid within threshold."""
    sums = np.zeros((0, x.shape[1]))
    counts = np.zeros(0)
    out = np.empty(len(x), np.int64)
    for i, v in enumerate(x):
        if len(counts):
            cent = sums / counts[:, None]
            d = np.linalg.norm(cent - v, axis=1)
            j = int(np.argmin(d))
            if d[j] <= threshold:
                sums[j] += v
                counts[j] += 1
                out[i] = j
                continue
        sums = np.vstack([sums, v])
        counts = np.append(counts, 1)
        out[i] = len(counts) - 1
    return out
