"""Corpus-wide identity post-pass (`emoforge catalog persons`).

Clusters every ok track's identity embedding (per embedding backend, never mixed; tracks that
share frames of a clip never in one cluster), names each cluster by a hash of its smallest
track_id (stable across re-runs), writes `person_id` into tracks and the `persons` table through
the commit protocol: only the shards whose person ids changed get a new tracks file (their other
tables are carried over), so a re-run costs the read and the clustering, not a rewrite.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog import fs, schema
from catalog.commits import Lease, ShardCommit, commit_shard, read_commits
from catalog.manifest import read_manifest, write_manifest
from catalog.read import conform, read_table
from pipeline.persons.cluster import THRESHOLDS, cluster_identities

log = logging.getLogger(__name__)
VERSION = "2"  # 2: tracks sharing frames of a clip are never one person
MIN_OVERLAP_S = 0.02  # half a frame of the 25 fps grid
# the tracks columns the clustering reads: the same values give the same persons
CLUSTER_INPUTS = ["track_id", "video_id", "clip_id", "start_s", "end_s", "shard",
                  "identity_embedding", "identity_backend", "faces_status"]


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
    """Run the post-pass on a catalog (a local folder or an s3:// prefix); returns counts, the
    shards and tracks it rewrote, and its seconds by phase (read, cluster, write).

    Only what changed is written: a shard whose tracks' person_id, persons rows and persons
    fingerprint are already right is left alone, and a shard that changes gets a new tracks
    (and persons) file only; its videos, clips, frames and media stay as they are."""
    root = fs.resolve(root)
    root.check_access()
    seconds = {}
    with Lease(root):
        mark = time.perf_counter()
        tracks = read_table(root, "tracks", columns=[*CLUSTER_INPUTS, "person_id"]).sort_by("track_id")
        fingerprint = hashlib.sha256(repr((VERSION, sorted(THRESHOLDS.items()))).encode()).hexdigest()[:16]
        commits = read_commits(root)
        manifest = read_manifest(root)
        digests = {"inputs": _digest(tracks, CLUSTER_INPUTS),
                   "outputs": _digest(tracks, ["track_id", "person_id"])}
        seconds["read"] = time.perf_counter() - mark
        done = manifest.get("stages", {}).get("persons", {})
        if (done.get("fingerprint") == fingerprint and done.get("digests") == digests
                and all(r.fingerprints.get("persons") == fingerprint for r in commits.values())):
            # the same inputs clustered and written by this version: nothing to do
            ok = tracks.filter(pc.is_valid(tracks["person_id"]))
            summary = {"persons": len(set(ok["person_id"].to_pylist())),
                       "tracks_with_person": ok.num_rows, "shards_rewritten": 0,
                       "tracks_rewritten": 0, "seconds": {k: round(v, 3) for k, v in seconds.items()}}
            log.info("persons: up to date (%d persons over %d tracks)", summary["persons"],
                     summary["tracks_with_person"])
            return summary
        mark = time.perf_counter()
        person_of, persons = cluster_tracks(tracks)
        seconds["cluster"] = time.perf_counter() - mark
        mark = time.perf_counter()
        rewritten = _commit_changes(root, commits, tracks, person_of, persons, fingerprint)
        written = tracks.set_column(tracks.column_names.index("person_id"), "person_id", pa.array(
            [person_of.get(t) for t in tracks["track_id"].to_pylist()], pa.string()))
        digests["outputs"] = _digest(written, ["track_id", "person_id"])
        stages = {**manifest.get("stages", {}), "persons": {
            "fingerprint": fingerprint, "version": VERSION, "config": {"thresholds": THRESHOLDS},
            "models": [], "digests": digests}}
        write_manifest(root, manifest.get("job_spec", {}), stages, manifest.get("code_version", "unknown"),
                       manifest.get("timings"))
        seconds["write"] = time.perf_counter() - mark
    summary = {"persons": len(persons), "tracks_with_person": len(person_of),
               "shards_rewritten": rewritten["shards"], "tracks_rewritten": rewritten["tracks"],
               "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    log.info("persons: %d clusters over %d tracks; %d shards rewritten", summary["persons"],
             summary["tracks_with_person"], rewritten["shards"])
    return summary


def _commit_changes(root: fs.Root, commits: dict, tracks: pa.Table, person_of: dict[str, str],
                    persons: list[dict], fingerprint: str) -> dict[str, int]:
    """Commit the shards whose person ids, persons rows or persons fingerprint changed: a new
    tracks file where a track's person_id changed, a new persons file where its rows changed,
    every other table carried over. Returns the shards and tracks rewritten."""
    stale = _shards_with_new_person_ids(tracks, person_of)
    rewritten = {"shards": 0, "tracks": 0}
    for shard, record in sorted(commits.items()):
        tables = {}
        mine = [{k: v for k, v in p.items() if k != "_shard"} for p in persons if p["_shard"] == shard]
        new_persons = pa.Table.from_pylist(mine, schema=schema.table_schema("persons")).sort_by("person_id")
        old_persons = _committed(root, record, "persons").sort_by("person_id")
        if not new_persons.equals(old_persons):
            tables["persons"] = new_persons
        if shard in stale:
            tables["tracks"] = _with_person_ids(_committed(root, record, "tracks"), person_of)
            rewritten["tracks"] += tables["tracks"].num_rows
        if not tables and record.fingerprints.get("persons") == fingerprint:
            continue  # already right: nothing to write
        rewritten["shards"] += 1
        if not new_persons.num_rows:
            tables.pop("persons", None)  # a shard without persons lists no persons file
        keep = tuple(n for n in record.files if n not in tables and
                     not (n == "persons" and not new_persons.num_rows))
        commit_shard(root, shard, tables, {}, {**record.fingerprints, "persons": fingerprint},
                     keep_media=record.media, keep_tables=keep)
    return rewritten


def _digest(table: pa.Table, columns: list[str]) -> str:
    """sha256 of the values of `columns` of `table` in row order (nulls distinct from every
    value): equal digests, equal values."""
    h = hashlib.sha256()
    for name in columns:
        column = table[name].combine_chunks()
        h.update(name.encode() + b"\0")
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            lengths = pc.fill_null(pc.list_value_length(column), -1)
            h.update(np.asarray(lengths.to_numpy(zero_copy_only=False), np.int64).tobytes())
            values = pc.list_flatten(column)  # the values of the non-null lists
            h.update(np.asarray(values.to_numpy(zero_copy_only=False), np.float64).tobytes())
        elif pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            h.update(np.asarray(column.to_numpy(zero_copy_only=False), np.float64).tobytes())
        else:
            h.update("\x1f".join("\x00" if v is None else str(v)
                                  for v in column.to_pylist()).encode())
    return h.hexdigest()


def _shards_with_new_person_ids(tracks: pa.Table, person_of: dict[str, str]) -> set[int]:
    """Shards holding a track whose stored person_id differs from its new one."""
    ids = tracks["track_id"].to_pylist()
    stored = tracks["person_id"].to_pylist()
    shards = tracks["shard"].to_pylist()
    return {shard for track, old, shard in zip(ids, stored, shards) if person_of.get(track) != old}


def _committed(root: fs.Root, record: ShardCommit, table: str) -> pa.Table:
    """The rows of `table` that the commit `record` lists (every column of the schema)."""
    target = schema.table_schema(table)
    parts = [conform(root.read_parquet(rel), target) for rel in record.files.get(table, [])]
    return pa.concat_tables(parts) if parts else target.empty_table()


def _with_person_ids(tracks: pa.Table, person_of: dict[str, str]) -> pa.Table:
    """`tracks` with person_id set from `person_of`."""
    column = pa.array([person_of.get(t) for t in tracks["track_id"].to_pylist()], pa.string())
    return tracks.set_column(tracks.column_names.index("person_id"), "person_id", column)
