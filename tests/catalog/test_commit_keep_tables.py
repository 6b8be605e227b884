"""commit_shard's keep_tables: a table carried over from the previous commit is listed again,
not rewritten, and survives the commit's clean-up; the replaced tables' old files are deleted."""

from __future__ import annotations

import pyarrow as pa
import pytest

from catalog import schema
from catalog.commits import clean_orphans, commit_shard, read_commits
from catalog.read import conform, read_table


def _table(name: str, rows: list[dict]) -> pa.Table:
    return conform(pa.Table.from_pylist(rows), schema.table_schema(name))


def test_kept_tables_are_listed_again_and_the_replaced_ones_deleted(tmp_path):
    videos = _table("videos", [{"video_id": "v1", "uri": "a.mp4", "shard": 0}])
    clips = _table("clips", [{"clip_id": "c1", "video_id": "v1", "shard": 0}])
    first = commit_shard(tmp_path, 0, {"videos": videos, "clips": clips}, {}, {"ingest": "f"})
    renamed = _table("clips", [{"clip_id": "c2", "video_id": "v1", "shard": 0}])
    second = commit_shard(tmp_path, 0, {"clips": renamed}, {}, {"ingest": "f"},
                          keep_tables=("videos",))
    assert second.files["videos"] == first.files["videos"]
    assert second.counts["videos"] == 1 and second.seq == first.seq + 1
    assert not (tmp_path / first.files["clips"][0]).exists()
    assert clean_orphans(tmp_path) == []  # the kept file is listed: not an orphan
    assert read_table(tmp_path, "videos")["video_id"].to_pylist() == ["v1"]
    assert read_table(tmp_path, "clips")["clip_id"].to_pylist() == ["c2"]
    assert read_commits(tmp_path)[0].files == second.files


def test_keeping_tables_of_a_shard_without_a_commit_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="shard 3 has no commit to keep tables"):
        commit_shard(tmp_path, 3, {}, {}, {}, keep_tables=("videos",))
