"""Person-disjoint train/val split of track ids (the trainer's and `catalog split`'s rule), and
the train/val lists `emoforge catalog split` writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog import fs
from catalog.read import read_table


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


def split_by_person(root: str | Path | fs.Root, val_fraction: float = 0.1, seed: int = 0, out: str | None = None) -> dict:
    """Person-disjoint train/val lists of ok track ids (train.txt, val.txt) by
    `catalog.person_split` (tracks without a person_id count as their own person)."""
    tracks = read_table(root, "tracks", columns=["track_id", "person_id", "faces_status"])
    train, val = person_split(tracks, val_fraction, seed)
    ok = tracks.filter(pc.equal(tracks["faces_status"], "ok"))
    persons = {p or f"track:{t}" for t, p in zip(ok["track_id"].to_pylist(), ok["person_id"].to_pylist())}
    val_ids = set(val)
    val_persons = {p or f"track:{t}" for t, p in zip(ok["track_id"].to_pylist(), ok["person_id"].to_pylist())
                   if t in val_ids}
    folder = fs.resolve(out or root)  # the catalog itself may be on a store
    folder.write_bytes("train.txt", "".join(t + "\n" for t in train).encode())
    folder.write_bytes("val.txt", "".join(t + "\n" for t in val).encode())
    return {"train_tracks": len(train), "val_tracks": len(val), "persons": len(persons),
            "val_persons": len(val_persons), "folder": folder.uri}
