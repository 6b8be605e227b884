"""Person-disjoint train/val split of track ids (the trainer's and `catalog split`'s rule)."""

from __future__ import annotations

import hashlib

import pyarrow as pa


def person_split(tracks: pa.Table, val_fraction: float = 0.1,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """(train track ids, val track ids), each sorted, with no person on both sides.

    `tracks` needs `track_id` and `person_id`; when it has `faces_status`, only "ok" tracks take
    part. A track without a person_id is its own person. Persons are ordered by
    sha256(f"{seed}:{person}") and the first `n_val` go to val, where n_val =
    max(1, round(n_persons * val_fraction)) when there is more than one person, else 0.
    """
    missing = {"track_id", "person_id"} - set(tracks.column_names)
    if missing:
        raise ValueError(f"person_split needs columns track_id and person_id; missing {sorted(missing)}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be within [0, 1], got {val_fraction}")
    ids = tracks.column("track_id").to_pylist()
    persons = tracks.column("person_id").to_pylist()
    status = (tracks.column("faces_status").to_pylist() if "faces_status" in tracks.column_names
              else ["ok"] * len(ids))
    groups: dict[str, list[str]] = {}
    for track_id, person, state in zip(ids, persons, status):
        if state == "ok" and track_id is not None:
            groups.setdefault(person or f"track:{track_id}", []).append(track_id)
    order = sorted(groups, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n_val = max(1, round(len(order) * val_fraction)) if len(order) > 1 else 0
    val_persons = set(order[:n_val])
    train = sorted(t for p, members in groups.items() if p not in val_persons for t in members)
    val = sorted(t for p in val_persons for t in groups[p])
    return train, val
