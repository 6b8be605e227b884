"""Identity across the corpus: cluster track embeddings into persons (a pure, deterministic function).

`emoforge catalog persons` (pipeline/persons/catalog_pass.py) reads every track's identity_embedding,
calls `cluster_identities` per identity backend and writes person_id. Thresholds are per backend,
as euclidean distances between L2-normalized embeddings. Tracks that share frames of a clip are
two faces on screen at once, never one person: they are passed as cannot-link pairs, and no
cluster ever holds both tracks of such a pair.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from pipeline.models.thresholds import IDENTITY_DISTANCE

log = logging.getLogger(__name__)

THRESHOLDS = IDENTITY_DISTANCE  # per identity backend (pipeline/models/thresholds.py)
EXACT_MAX = 4000  # above this many embeddings, greedy centroid clustering (O(N*K) memory)


def cluster_identities(embeddings: np.ndarray, backend: str, threshold: float | None = None,
                       cannot_link: Iterable[tuple[int, int]] = ()) -> list[int]:
    """embeddings: float32[N,D] (one per track, in a stable order, e.g. by track_id) ->
    N cluster labels 0..K-1, numbered by first appearance. Average-linkage agglomerative
    clustering cut at the backend's distance threshold (dlib 0.42 ~ raw 0.6, arcface 1.0): two
    tracks share a label when their clusters' mean pairwise distance stays below it.
    cannot_link: index pairs (i, j) that must end in different clusters (tracks on screen at the
    same time); two clusters holding such a pair never merge. Rows with NaN get their own label.
    Deterministic for a given input order."""
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
    position = {int(i): k for k, i in enumerate(idx)}  # row -> index among the valid rows
    pairs = {(min(position[a], position[b]), max(position[a], position[b]))
             for a, b in cannot_link if a in position and b in position and a != b}
    if len(idx) == 1:
        raw[idx] = 0
    elif len(idx) <= EXACT_MAX:
        raw[idx] = _average_linkage(x[idx], threshold, pairs)
    elif len(idx):
        raw[idx] = _greedy(x[idx], threshold, pairs)
    labels: list[int] = []
    mapping: dict[int, int] = {}
    for i in range(n):
        key = int(raw[i]) if raw[i] >= 0 else -(i + 1)
        if key not in mapping:
            mapping[key] = len(mapping)
        labels.append(mapping[key])
    return labels


def _average_linkage(x: np.ndarray, threshold: float, cannot: set[tuple[int, int]]) -> np.ndarray:
    """Average-linkage clusters of float[N,D] rows, merging while the mean pairwise euclidean
    distance between two clusters is <= threshold and neither holds a cannot-link partner of the
    other. Nearest-neighbour chain over a distance matrix updated by Lance-Williams (average
    linkage is reducible, so the chain finds the same merges as merging the closest pair
    first); a cannot-link pair is an infinite distance, which every merge inherits. O(N^2)
    memory and time; equals scipy's linkage + fcluster(criterion="distance") without pairs."""
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    np.fill_diagonal(d, np.inf)
    for i, j in cannot:
        d[i, j] = d[j, i] = np.inf
    size = np.ones(n)
    label = np.arange(n)
    members = {i: [i] for i in range(n)}
    active = np.ones(n, bool)
    chain: list[int] = []
    while active.sum() > 1:
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        b = int(np.argmin(d[a]))
        if len(chain) > 1 and d[a, chain[-2]] <= d[a, b]:
            b = chain[-2]  # ties go back down the chain, so it always ends in a reciprocal pair
        if not np.isfinite(d[a, b]) or d[a, b] > threshold:
            active[a] = False  # nothing ever comes within the threshold of this cluster again
            d[a, :] = d[:, a] = np.inf
            chain.pop()
            continue
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            keep, gone = min(a, b), max(a, b)
            merged = (size[keep] * d[keep] + size[gone] * d[gone]) / (size[keep] + size[gone])
            d[keep, :] = d[:, keep] = merged
            d[keep, keep] = np.inf
            d[gone, :] = d[:, gone] = np.inf
            size[keep] += size[gone]
            active[gone] = False
            members[keep] += members.pop(gone)
            label[members[keep]] = keep
        else:
            chain.append(b)
    return label


def _greedy(x: np.ndarray, threshold: float, cannot: set[tuple[int, int]] = frozenset()) -> np.ndarray:
    """Assign each embedding, in order, to the nearest running centroid within threshold that
    holds none of its cannot-link partners."""
    partners: dict[int, set[int]] = {}
    for i, j in cannot:
        partners.setdefault(i, set()).add(j)
        partners.setdefault(j, set()).add(i)
    sums = np.zeros((0, x.shape[1]))
    counts = np.zeros(0)
    out = np.empty(len(x), np.int64)
    for i, v in enumerate(x):
        if len(counts):
            cent = sums / counts[:, None]
            d = np.linalg.norm(cent - v, axis=1)
            for j in partners.get(i, ()):
                if j < i:
                    d[out[j]] = np.inf
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
