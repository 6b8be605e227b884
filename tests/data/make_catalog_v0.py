"""Writes the frozen tiny schema-0.1 catalog in tests/data/catalog_v0 (run once; the files are
committed so the migration test reads what an old emoforge really wrote)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

root = Path(__file__).parent / "catalog_v0"
videos = pa.table({
    "video_id": ["a" * 32, "b" * 32], "path": ["/data/a.mp4", "/data/b.mp4"], "shard": pa.array([0, 0], pa.int32()),
    "duration_ms": pa.array([2500, 61000], pa.int64()), "fps": [25.0, 29.97],
    "ingest_status": ["ok", "ok"], "ingest_error": pa.array([None, None], pa.string()),
})
clips = pa.table({
    "clip_id": ["c" * 32], "video_id": ["a" * 32], "shard": pa.array([0], pa.int32()),
    "start_ms": pa.array([0], pa.int64()), "end_ms": pa.array([2480], pa.int64()),
})
(root / "videos").mkdir(parents=True, exist_ok=True)
(root / "clips").mkdir(parents=True, exist_ok=True)
(root / "_commits").mkdir(parents=True, exist_ok=True)
pq.write_table(videos, root / "videos/shard-00000-0000.parquet")
pq.write_table(clips, root / "clips/shard-00000-0000.parquet")
commit = {"shard": 0, "seq": 0, "files": {"videos": ["videos/shard-00000-0000.parquet"],
          "clips": ["clips/shard-00000-0000.parquet"]}, "media": [], "fingerprints": {},
          "counts": {"videos": 2, "clips": 1}, "committed_at": 1.0}
(root / "_commits/shard-00000-0000.json").write_text(json.dumps(commit))
manifest = {"schema_version": "0.1", "version": "v0", "commits": ["_commits/shard-00000-0000.json"],
            "stages": {}, "job_spec": {}, "counts": {}, "rows": {"videos": 2, "clips": 1}}
(root / "_manifest.json").write_text(json.dumps(manifest))
