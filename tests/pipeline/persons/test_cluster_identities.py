"""cluster_identities: deterministic identity clusters with per-backend thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.persons.cluster import THRESHOLDS, cluster_identities


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


def test_matches_scipys_average_linkage_without_constraints():
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    x, _ = _people(7, 6, 128, 0.5, seed=3)  # overlapping people: merges at many heights
    for threshold in (0.3, 0.42, 0.6, 0.9):
        ours = cluster_identities(x, "dlib", threshold)
        ref = fcluster(linkage(pdist(x.astype(np.float64)), method="average"), t=threshold,
                       criterion="distance")
        assert all((ours[i] == ours[j]) == (ref[i] == ref[j])
                   for i in range(len(x)) for j in range(i + 1, len(x))), threshold


def test_cannot_link_keeps_co_occurring_faces_apart():
    x, truth = _people(3, 4, 128, 0.15, seed=1)
    same = [i for i in range(len(x)) if truth[i] == truth[0]]
    twin = same[1]
    labels = cluster_identities(x, "dlib")
    assert labels[0] == labels[twin]  # one person without the constraint
    split = cluster_identities(x, "dlib", cannot_link=[(0, twin)])
    assert split[0] != split[twin]
    for a, b in [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))]:
        if truth[a] != truth[0] or truth[b] != truth[0]:
            assert (split[a] == split[b]) == (labels[a] == labels[b])  # other people unchanged
    # a photo of one face twice (identical embeddings) on screen at once: two persons
    twice = np.stack([x[0], x[0]])
    assert cluster_identities(twice, "dlib", cannot_link=[(1, 0)]) == [0, 1]


def test_greedy_path_respects_cannot_link(monkeypatch):
    from pipeline.persons import cluster as persons

    monkeypatch.setattr(persons, "EXACT_MAX", 2)
    x, _ = _people(2, 3, 128, 0.1, seed=2)
    labels = cluster_identities(x, "dlib")
    pair = next((i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if labels[i] == labels[j])
    split = cluster_identities(x, "dlib", cannot_link=[pair])
    assert split[pair[0]] != split[pair[1]]


def test_co_occurring_tracks_are_those_sharing_frames_of_a_clip():
    import pyarrow as pa

    from pipeline.persons.catalog_pass import co_occurring

    tracks = pa.table({
        "clip_id": ["c", "c", "c", "c", "d", None],
        "start_s": [0.0, 1.0, 3.0, 2.99, 0.0, 0.0],
        "end_s": [2.0, 3.0, 4.0, 5.0, 9.0, 9.0],
    })
    # 0-1 overlap 1 s; 1-2 touch (no shared frame); 1-3 overlap 0.01 s (under half a frame);
    # 2-3 overlap 1 s; clip d and the clip-less track share no clip with anyone
    assert sorted(co_occurring(tracks)) == [(0, 1), (2, 3)]
