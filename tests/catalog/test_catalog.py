"""The catalog contract without Ray: import purity, readers agree, migration of a frozen old
catalog, validation finds broken catalogs, select applies per-backend rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import catalog
from catalog import schema
from catalog.commits import commit_shard
from catalog.manifest import write_manifest
from catalog.migrate import SchemaVersionError

DATA = Path(__file__).resolve().parents[1] / "data"


def _tracks(n: int, shard: int) -> pa.Table:
    rows = []
    for i in range(n):
        rows.append({
            "track_id": f"t{shard}-{i}", "clip_id": f"c{shard}", "video_id": f"v{shard}", "shard": shard,
            "start_s": 0.0, "end_s": 2.0 + i, "frame_count": 50, "face_px_median": 80.0 + 20 * i,
            "yaw_mean": 5.0, "faces_status": "ok", "audio_status": "ok", "speech_ratio": 0.8,
            "lip_sync_status": "ok", "lip_sync_backend": "syncnet" if i % 2 else "av_corr",
            "lip_sync_offset_frames": i % 2, "lip_sync_confidence": 5.0 if i % 2 else 0.6,
            "expression_status": "ok", "expression_backend": "3dmm", "expression_dim": 3,
            "expression_mean": [float(i), 0.0, 1.0], "expression_magnitude": float(i),
            "emotion_label": "neutral" if i == 0 else "happy", "person_id": f"p{shard}",
        })
    return pa.Table.from_pylist(rows, schema=schema.table_schema("tracks"))


def _write_catalog(root: Path) -> Path:
    for shard in (0, 1):
        videos = pa.Table.from_pylist([{"video_id": f"v{shard}", "uri": f"/x/{shard}.mp4", "shard": shard,
                                        "duration_s": 10.0, "ingest_status": "ok"}], schema=schema.table_schema("videos"))
        clips = pa.Table.from_pylist([{"clip_id": f"c{shard}", "video_id": f"v{shard}", "shard": shard,
                                       "start_s": 0.0, "end_s": 9.0, "duration_s": 9.0}], schema=schema.table_schema("clips"))
        commit_shard(root, shard, {"videos": videos, "clips": clips, "tracks": _tracks(4, shard)}, {}, {"ingest": "x"})
    write_manifest(root, {"job": {}}, {"ingest": {"fingerprint": "x", "models": []}}, "test")
    return root


def test_import_catalog_needs_only_pyarrow():
    code = ("import sys, catalog; bad = [m for m in ('pandas', 'duckdb', 'ray', 'torch', 'cv2', 'av') "
            "if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_schema_declares_each_column_once_with_docs():
    schema.check_unique_declarations()
    for table in schema.TABLES:
        for field in schema.table_schema(table):
            assert field.metadata and field.metadata.get(b"doc"), f"{table}.{field.name} has no doc"


def test_readers_agree(tmp_path, ray_local):
    root = _write_catalog(tmp_path / "cat")
    expected = catalog.read_table(root, "tracks").sort_by("track_id")
    via_pandas = catalog.to_pandas(root, "tracks").sort_values("track_id")
    import pandas as pd

    plain = pd.read_parquet(root / "tracks").sort_values("track_id")  # no emoforge involved
    via_dataset = ds.dataset(root / "tracks", format="parquet").to_table().sort_by("track_id")
    via_duckdb = catalog.to_duckdb(root).sql("SELECT * FROM tracks ORDER BY track_id").to_arrow_table()
    via_ray = catalog.to_ray_dataset(root, "tracks").to_pandas().sort_values("track_id")
    ids = expected["track_id"].to_pylist()
    assert len(ids) == 8
    for frame in (via_pandas, plain, via_ray):
        assert frame["track_id"].tolist() == ids
        assert frame["face_px_median"].tolist() == expected["face_px_median"].to_pylist()
    for table in (via_dataset, via_duckdb):
        assert table["track_id"].to_pylist() == ids
        assert table["lip_sync_confidence"].to_pylist() == expected["lip_sync_confidence"].to_pylist()


def test_validate_accepts_good_and_flags_broken(tmp_path):
    root = _write_catalog(tmp_path / "cat")
    assert catalog.validate(root) == []
    next(root.glob("clips/*.parquet")).unlink()
    problems = catalog.validate(root)
    assert any("missing" in p for p in problems)


def test_frozen_old_catalog_migrates_forward(tmp_path):
    root = tmp_path / "old"
    shutil.copytree(DATA / "catalog_v0", root)
    with pytest.raises(SchemaVersionError, match="catalog migrate"):
        _check(root)
    assert catalog.migrate(root) == ["0.x -> 1.x"]
    assert catalog.validate(root) == []
    videos = {r["video_id"][0]: r for r in catalog.read_table(root, "videos").to_pylist()}
    assert videos["a"]["uri"] == "/data/a.mp4" and videos["b"]["duration_s"] == pytest.approx(61.0)
    clip = catalog.read_table(root, "clips").to_pylist()[0]
    assert (clip["start_s"], clip["end_s"]) == (0.0, pytest.approx(2.48))
    assert json.loads((root / "_manifest.json").read_text())["schema_version"] == schema.SCHEMA_VERSION


def _check(root: Path) -> None:
    from catalog.migrate import check_readable

    check_readable(catalog.read_manifest(root)["schema_version"])


def test_select_rules_per_backend_and_intensity(tmp_path):
    root = _write_catalog(tmp_path / "cat")
    selected = {r["track_id"]: r for r in catalog.select(root).to_pylist()}
    assert selected["t0-0"]["drop_reason"] == "face too small"  # 80 px < 96
    assert selected["t0-1"]["keep"]  # syncnet, offset 1, confidence 5
    assert selected["t0-2"]["keep"]  # av_corr, offset 0, confidence 0.6
    strict = catalog.Thresholds.from_dict({"lip_sync_rules": {"syncnet": {"min_confidence": 6, "max_abs_offset_frames": 1},
                                                              "av_corr": {"min_confidence": 0.3, "max_abs_offset_frames": 0}}})
    strict_rows = {r["track_id"]: r for r in catalog.select(root, strict).to_pylist()}
    assert strict_rows["t0-1"]["drop_reason"] == "low sync confidence"
    assert strict_rows["t0-3"]["drop_reason"] == "low sync confidence"
    assert strict_rows["t0-2"]["keep"]
    # intensity grows with distance from the person's neutral track
    assert selected["t0-0"]["intensity"] == 0.0
    assert selected["t0-3"]["intensity"] > selected["t0-1"]["intensity"]
    with pytest.raises(catalog.SelectionError, match="unknown thresholds"):
        catalog.Thresholds.from_dict({"min_face": 3})


def test_training_index_balances_when_asked(tmp_path):
    root = _write_catalog(tmp_path / "cat")
    plain = catalog.training_index(root)  # six happy tracks of 3, 4, 5 s kept
    assert plain.num_rows == 6
    capped = catalog.Thresholds(balance_by="emotion", balance_max_seconds=8.0)
    index = catalog.training_index(root, capped)
    seconds = [r["end_s"] - r["start_s"] for r in index.to_pylist()]
    assert 0 < sum(seconds) <= 8.0
    rows = catalog.select(root, capped).to_pylist()
    dropped = [r for r in catalog.balance(catalog.select(root, capped), "emotion", 8.0).to_pylist()
               if r["drop_reason"] == "balanced out (happy)"]
    assert len(dropped) == 6 - index.num_rows and len(rows) == 8
    # greedy in a seeded order: no dropped track would have fitted under the cap
    assert all(sum(seconds) + r["end_s"] - r["start_s"] > 8.0 for r in dropped)


def test_every_reader_refuses_an_old_catalog_with_the_migrate_hint(tmp_path):
    root = tmp_path / "old"
    shutil.copytree(DATA / "catalog_v0", root)
    readers = [lambda: catalog.read_table(root, "videos"), lambda: catalog.select(root),
               lambda: catalog.training_index(root), lambda: catalog.stats(root),
               lambda: catalog.to_duckdb(root), lambda: catalog.to_pandas(root, "clips")]
    for read in readers:
        with pytest.raises(SchemaVersionError, match="emoforge catalog migrate"):
            read()
    assert catalog.validate(root) and "catalog migrate" in catalog.validate(root)[0]
    catalog.migrate(root)
    assert catalog.read_table(root, "videos").num_rows == 2


def test_a_newer_catalog_asks_for_a_newer_emoforge(tmp_path):
    root = _write_catalog(tmp_path / "cat")
    manifest = json.loads((root / "_manifest.json").read_text())
    manifest["schema_version"] = f"{int(schema.SCHEMA_VERSION.split('.')[0]) + 1}.0"
    (root / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError, match="newer"):
        catalog.read_table(root, "tracks")


@pytest.mark.parametrize("root", ["gs://bucket/catalog", "hdfs://host/catalog"])
def test_unsupported_roots_are_refused_not_read_as_empty(root):
    from catalog.layout import UnsupportedRootError

    readers = [lambda: catalog.read_table(root, "tracks"), lambda: catalog.select(root),
               lambda: catalog.training_index(root), lambda: catalog.describe(root),
               lambda: catalog.stats(root), lambda: catalog.validate(root),
               lambda: catalog.to_duckdb(root), lambda: catalog.read_manifest(root)]
    for read in readers:
        with pytest.raises(UnsupportedRootError, match="not supported"):
            read()


def test_a_3dmm_catalog_without_the_blendshapes_columns_reads_and_selects(tmp_path):
    """Tracks and frames written without expression_pose_ok_fraction, expression_gaze and
    expression_pose_ok (schema 1.1): they read as null and selection works per backend."""
    root = tmp_path / "cat"
    dropped = {"expression_pose_ok_fraction", "expression_gaze", "expression_pose_ok"}

    def without(table: str) -> pa.Schema:
        return pa.schema([f for f in schema.table_schema(table) if f.name not in dropped])

    tracks = _tracks(4, 0).select(without("tracks").names).cast(without("tracks"))
    frames = pa.Table.from_pylist([{"track_id": "t0-1", "frame": k, "expression": [0.0, 1.0, 2.0]}
                                   for k in range(3)], schema=without("frames"))
    videos = pa.Table.from_pylist([{"video_id": "v0", "shard": 0, "ingest_status": "ok"}],
                                  schema=schema.table_schema("videos"))
    clips = pa.Table.from_pylist([{"clip_id": "c0", "video_id": "v0", "shard": 0}],
                                 schema=schema.table_schema("clips"))
    commit_shard(root, 0, {"videos": videos, "clips": clips, "tracks": tracks, "frames": frames},
                 {}, {"ingest": "x"})
    write_manifest(root, {"job": {}}, {"ingest": {"fingerprint": "x", "models": []}}, "test")
    read = catalog.read_table(root, "frames").to_pylist()
    assert read[0]["expression"] == [0.0, 1.0, 2.0] and read[0]["expression_gaze"] is None
    rows = {r["track_id"]: r for r in catalog.select(
        root, catalog.Thresholds(expression_backend="3dmm")).to_pylist()}
    assert rows["t0-0"]["intensity"] == 0.0  # the neutral track
    assert rows["t0-3"]["intensity"] > rows["t0-1"]["intensity"] > 0
