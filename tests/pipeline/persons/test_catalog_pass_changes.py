"""The persons post-pass writes only what changed: a re-run writes nothing, a shard whose tracks
changed is the only one rewritten (its tracks file alone), and person_id stays readable by plain
pandas; persons match the generator's ground truth."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from catalog import read_table
from catalog.commits import commit_shard, read_commits
from jobs.media.synthetic_catalog import generate_persons_catalog
from pipeline.persons.catalog_pass import assign_persons

PERSONS = 6


@pytest.fixture
def catalog_root(tmp_path):
    root = tmp_path / "catalog"
    generate_persons_catalog(root, n_videos=90, shards=3, persons=PERSONS, frames_per_track=2)
    return root


def _truth(root) -> dict[str, int]:
    """track_id -> the generator's person: its video's index (in the uri) modulo PERSONS."""
    videos = read_table(root, "videos", columns=["video_id", "uri"]).to_pylist()
    person = {v["video_id"]: int(v["uri"].rsplit("_", 1)[1].split(".")[0]) % PERSONS
              for v in videos}
    tracks = read_table(root, "tracks", columns=["track_id", "video_id"]).to_pylist()
    return {t["track_id"]: person[t["video_id"]] for t in tracks}


def test_every_person_is_one_generated_person(catalog_root):
    summary = assign_persons(catalog_root)
    tracks = pd.read_parquet(catalog_root / "tracks")  # plain pandas, every stage's columns
    ok = tracks[tracks["faces_status"] == "ok"]
    assert ok["person_id"].notna().all() and tracks.loc[tracks["faces_status"] != "ok",
                                                        "person_id"].isna().all()
    truth = _truth(catalog_root)
    members: dict[str, set[int]] = {}
    for track, person in zip(ok["track_id"], ok["person_id"]):
        members.setdefault(person, set()).add(truth[track])
    assert all(len(people) == 1 for people in members.values())  # no person mixes two people
    assert {p for people in members.values() for p in people} == set(range(PERSONS))
    assert summary["persons"] == len(members) == read_table(catalog_root, "persons").num_rows


def test_a_re_run_writes_nothing(catalog_root):
    first = assign_persons(catalog_root)
    assert first["shards_rewritten"] == 3 and first["tracks_rewritten"] == sum(
        r.counts["tracks"] for r in read_commits(catalog_root).values())
    commits = {s: (r.seq, r.files) for s, r in read_commits(catalog_root).items()}
    ids = read_table(catalog_root, "tracks", columns=["track_id", "person_id"])
    again = assign_persons(catalog_root)
    assert again["shards_rewritten"] == 0 and again["tracks_rewritten"] == 0
    assert "cluster" not in again["seconds"]  # the same inputs: not clustered again
    assert again["persons"] == first["persons"]
    assert {s: (r.seq, r.files) for s, r in read_commits(catalog_root).items()} == commits
    assert read_table(catalog_root, "tracks", columns=["track_id", "person_id"]).equals(ids)


def test_only_the_shard_whose_tracks_changed_is_rewritten(catalog_root):
    assign_persons(catalog_root)
    before = read_commits(catalog_root)
    expected = read_table(catalog_root, "tracks", columns=["track_id", "person_id"])
    # shard 1 committed anew by a later run, its tracks without person_id (as curation leaves them)
    tracks = read_table(catalog_root, "tracks", shards={1})
    nulls = pa.nulls(tracks.num_rows, pa.string())
    tracks = tracks.set_column(tracks.column_names.index("person_id"), "person_id", nulls)
    commit_shard(catalog_root, 1, {"tracks": tracks}, {}, {},
                 keep_tables=tuple(n for n in before[1].files if n != "tracks"))
    summary = assign_persons(catalog_root)
    assert summary["shards_rewritten"] == 1 and summary["tracks_rewritten"] == tracks.num_rows
    after = read_commits(catalog_root)
    assert after[0].seq == before[0].seq and after[2].seq == before[2].seq
    assert after[1].seq == before[1].seq + 2
    for name in ("videos", "clips", "frames"):  # carried over, not rewritten
        assert after[1].files[name] == before[1].files[name]
        assert (catalog_root / after[1].files[name][0]).is_file()
    assert after[1].files["tracks"] != before[1].files["tracks"]
    assert not (catalog_root / before[1].files["tracks"][0]).exists()
    assert read_table(catalog_root, "tracks", columns=["track_id", "person_id"]).sort_by(
        "track_id").equals(expected.sort_by("track_id"))
    assert pd.read_parquet(catalog_root / "frames").shape[0] == read_table(
        catalog_root, "frames").num_rows
