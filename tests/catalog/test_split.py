"""catalog.person_split: person-disjoint, seeded, the documented n_val rule."""

import hashlib

import pyarrow as pa
import pytest

from catalog import person_split


def _tracks() -> pa.Table:
    rows = [("a1", "A", "ok"), ("a2", "A", "ok"), ("a3", "A", "ok"), ("b1", "B", "ok"),
            ("b2", "B", "ok"), ("c1", "C", "ok"), ("d1", "D", "ok"), ("e1", "E", "ok"),
            ("n1", None, "ok"), ("n2", None, "ok"), ("f1", "A", "failed"), ("s1", None, "skipped")]
    return pa.table({"track_id": [r[0] for r in rows], "person_id": [r[1] for r in rows],
                     "faces_status": [r[2] for r in rows]})


def test_split_is_person_disjoint_and_follows_the_hash_order():
    persons = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1"], "D": ["d1"], "E": ["e1"],
               "track:n1": ["n1"], "track:n2": ["n2"]}
    for seed in (0, 1, 7):
        order = sorted(persons, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
        expected_val = sorted(t for p in order[:1] for t in persons[p])  # round(7 * 0.1) = 1
        train, val = person_split(_tracks(), 0.1, seed)
        assert val == expected_val
        assert train == sorted(set(t for ids in persons.values() for t in ids) - set(val))
        assert "f1" not in train + val and "s1" not in train + val
    train, val = person_split(_tracks(), 0.5, 3)
    val_persons = {p for p, ids in persons.items() if set(ids) & set(val)}
    assert len(val_persons) == 4  # round(7 * 0.5) = 4 (banker's rounding of 3.5)
    assert all(set(ids) <= set(val) or not set(ids) & set(val) for ids in persons.values())


def test_split_edge_cases():
    one = pa.table({"track_id": ["x", "y"], "person_id": ["P", "P"]})
    assert person_split(one, 0.5) == (["x", "y"], [])  # a single person: no validation side
    two = pa.table({"track_id": ["x", "y"], "person_id": ["P", "Q"]})
    train, val = person_split(two, 0.0)
    assert len(val) == 1 and len(train) == 1  # at least one validation person when n > 1
    with pytest.raises(ValueError, match="person_id"):
        person_split(pa.table({"track_id": ["x"]}))


def test_split_by_person_writes_what_person_split_returns(tmp_path):
    from catalog import schema
    from catalog.commits import commit_shard
    from catalog.manifest import write_manifest
    from catalog.split import split_by_person

    tracks = _tracks().append_column("shard", pa.array([0] * 12, pa.int32()))
    full = pa.Table.from_pylist(tracks.to_pylist(), schema=schema.table_schema("tracks"))
    commit_shard(tmp_path, 0, {"tracks": full}, {}, {"faces": "x"})
    write_manifest(tmp_path, {}, {"faces": {"fingerprint": "x", "models": []}}, "test")
    summary = split_by_person(tmp_path, 0.3, 5, str(tmp_path / "lists"))
    train, val = person_split(_tracks(), 0.3, 5)
    assert (tmp_path / "lists" / "train.txt").read_text().split() == train
    assert (tmp_path / "lists" / "val.txt").read_text().split() == val
    assert summary["persons"] == 7 and summary["val_persons"] == 2  # round(7 * 0.3) = 2
