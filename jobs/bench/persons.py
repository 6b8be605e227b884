"""`emoforge bench persons`: the persons post-pass on a generated catalog (about 100,000 tracks
with dlib identity embeddings, 64 shards, 4 frames rows per track; jobs.media.synthetic_catalog)
three ways: the first pass (every track gets a person_id), a re-run with nothing changed, and a
re-run after one shard was committed anew without person ids. Each reports wall and CPU seconds,
the pass's own phases (read, cluster, write) and the shards and tracks it rewrote."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from catalog.commits import commit_shard, read_commits
from catalog.read import read_table
from jobs.media.synthetic_catalog import generate_persons_catalog
from pipeline.persons.catalog_pass import assign_persons


def timed_pass(root: Path) -> dict:
    """One persons pass on `root`: its summary with wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    summary = assign_persons(root)
    return {"wall_s": round(time.perf_counter() - wall, 2),
            "cpu_s": round(time.process_time() - cpu, 2), **summary}


def recommit_without_person_ids(root: Path, shard: int) -> int:
    """Commit `shard`'s tracks anew with person_id null (as a later curation run leaves them),
    its other tables kept; returns the shard's track count."""
    tracks = read_table(root, "tracks", shards={shard})
    nulls = pa.nulls(tracks.num_rows, pa.string())
    tracks = tracks.set_column(tracks.column_names.index("person_id"), "person_id", nulls)
    record = read_commits(root)[shard]
    commit_shard(root, shard, {"tracks": tracks}, {}, {},
                 keep_tables=tuple(n for n in record.files if n != "tracks"))
    return tracks.num_rows


def run(videos: int = 35_550) -> dict:
    """The bench on a catalog generated from `videos` input videos (35,550: about 100,000
    tracks)."""
    work = Path(tempfile.mkdtemp(prefix="emoforge-bench-persons-"))
    try:
        t = time.perf_counter()
        catalog = generate_persons_catalog(work / "catalog", n_videos=videos)
        generated_s = time.perf_counter() - t
        root = work / "catalog"
        first = timed_pass(root)
        unchanged = timed_pass(root)
        changed_tracks = recommit_without_person_ids(root, 0)
        one_shard = timed_pass(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"bench": "persons", "catalog": catalog, "generated_s": round(generated_s, 1),
            "first_pass": first, "unchanged_re_run": unchanged,
            "one_shard_changed": {"tracks_changed": changed_tracks, **one_shard}}
