"""Per-backend thresholds of the model layer (each backend's scores are on its own scale).

Lip-sync keep rules are select thresholds and live with `select` (catalog.select.LIP_SYNC_RULES).
"""

# Identity: euclidean distance between L2-normalized embeddings below which two faces are one
# person (track clustering) and above which a tracked face has changed (tracker identity checks).
# dlib's raw descriptors have norm ~1.4 (1.33-1.46 measured on 6 real faces), so its usual raw
# threshold 0.6 is 0.42 here; arcface 1.0 is cosine similarity 0.5.
IDENTITY_DISTANCE: dict[str, float] = {"dlib": 0.42, "arcface": 1.0}


def identity_distance(backend: str) -> float:
    """The identity distance threshold of an identity backend ("dlib" or "arcface")."""
    if backend not in IDENTITY_DISTANCE:
        raise ValueError(f"no identity threshold for backend {backend!r}; known: "
                         f"{sorted(IDENTITY_DISTANCE)}")
    return IDENTITY_DISTANCE[backend]
