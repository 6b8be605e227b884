"""Corpus-wide identity post-pass (`emoforge catalog persons`).

Clusters every ok track's identity embedding (per embedding backend, never mixed; tracks that
share frames of a clip never in one cluster), names each cluster by a hash of its smallest
track_id (stable across re-runs), writes `person_id` into tracks and the `persons` table, and
commits each shard anew through the commit protocol.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog import fs, schema
from catalog.commits import Lease, commit_shard, read_commits
from catalog.manifest import read_manifest, write_manifest
from catalog.read import conform, read_table
from pipeline.persons.cluster import THRESHOLDS, cluster_identities

log = logging.getLogger(__name__)
VERSION = "2"  # 2: tracks sharing frames of a clip are never one person
MIN_OVERLAP_S = 0.02  # half a frame of the 25 fps grid


def co_occurring(tracks: pa.Table, min_overlap_s: float = MIN_OVERLAP_S) -> list[tuple[int, int]]:
    """Row index pairs (i < j) of tracks in the same clip whose spans [start_s, end_s) overlap by
    more than `min_overlap_s` (half a 25 fps frame by default): two faces on screen at once."""
    clips = tracks["clip_id"].to_pylist()
    starts = tracks["start_s"].to_pylist()
    ends = tracks["end_s"].to_pylist()
    by_clip: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        if clip is not None and starts[i] is not None and ends[i] is not None:
            by_clip.setdefault(clip, []).append(i)
    pairs = []
    for rows in by_clip.values():
        rows.sort(key=lambda i: starts[i])
        for k, i in enumerate(rows):
            for j in rows[k + 1:]:
                if starts[j] >= ends[i] - min_overlap_s:
                    break  # sorted by start: no later track overlaps i either
                if min(ends[i], ends[j]) - max(starts[i], starts[j]) > min_overlap_s:
                    pairs.append((min(i, j), max(i, j)))
    return pairs


def cluster_tracks(tracks: pa.Table) -> tuple[dict[str, str], list[dict]]:
    """track_id -> person_id, and one persons row per cluster. `tracks` needs track_id, video_id,
    clip_id, start_s, end_s, shard, identity_embedding, identity_backend and faces_status."""
    ok = tracks.filter(pc.and_(pc.equal(tracks["faces_status"], "ok"), pc.is_valid(tracks["identity_embedding"])))
    ok = ok.sort_by("track_id")
    person_of: dict[str, str] = {}
    persons: list[dict] = []
    for backend in sorted(set(ok["identity_backend"].drop_null().to_pylist())):
        group = ok.filter(pc.equal(ok["identity_backend"], backend))
        ids = group["track_id"].to_pylist()
        vectors = np.array(group["identity_embedding"].to_pylist(), np.float32)
        labels = np.asarray(cluster_identities(vectors, backend, cannot_link=co_occurring(group)))
        for label in sorted(set(labels.tolist())):
            members = [ids[i] for i in np.flatnonzero(labels == label)]
            pid = hashlib.sha256(f"person:{min(members)}".encode()).hexdigest()[:32]
            person_of.update({m: pid for m in members})
            centroid = vectors[labels == label].mean(axis=0)
            centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
            videos = set(pc.filter(group["video_id"], pa.array(labels == label)).to_pylist())
            persons.append({"person_id": pid, "track_count": len(members), "video_count": len(videos),
                            "identity_backend": backend, "centroid": centroid.tolist(),
                            "_shard": int(pc.filter(group["shard"], pa.array(labels == label))[0].as_py())})
    return person_of, persons


def assign_persons(root: str | Path | fs.Root) -> dict:
    """Run the post-pass on a catalog (a local folder or an s3:// prefix); returns counts."""
    root = fs.resolve(root)
    root.check_access()
    with Lease(root):
        columns = ["track_id", "video_id", "clip_id", "start_s", "end_s", "shard", "identity_embedding",
                   "identity_backend", "faces_status"]
        person_of, persons = cluster_tracks(read_table(root, "tracks", columns=columns))
        fingerprint = hashlib.sha256(repr((VERSION, sorted(THRESHOLDS.items()))).encode()).hexdigest()[:16]
        for shard, record in sorted(read_commits(root).items()):
            tables = {name: conform(read_table(root, name, shards={shard}), schema.table_schema(name))
                      for name in record.files if name != "persons"}
            if "tracks" in tables and tables["tracks"].num_rows:
                ids = tables["tracks"]["track_id"].to_pylist()
                column = pa.array([person_of.get(t) for t in ids], pa.string())
                index = tables["tracks"].column_names.index("person_id")
                tables["tracks"] = tables["tracks"].set_column(index, "person_id", column)
            mine = [{k: v for k, v in p.items() if k != "_shard"} for p in persons if p["_shard"] == shard]
            if mine:
                tables["persons"] = pa.Table.from_pylist(mine, schema=schema.table_schema("persons")).sort_by("person_id")
            commit_shard(root, shard, tables, {}, {**record.fingerprints, "persons": fingerprint},
                         keep_media=record.media)
        manifest = read_manifest(root)
        stages = {**manifest.get("stages", {}), "persons": {"fingerprint": fingerprint, "version": VERSION,
                                                           "config": {"thresholds": THRESHOLDS}, "models": []}}
        write_manifest(root, manifest.get("job_spec", {}), stages, manifest.get("code_version", "unknown"),
                       manifest.get("timings"))
    summary = {"persons": len(persons), "tracks_with_person": len(person_of)}
    log.info("persons: %d clusters over %d tracks", summary["persons"], summary["tracks_with_person"])
    return summary
