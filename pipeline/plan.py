"""What a run must do: per shard and video, the first stage to (re)compute.

New videos start at the first stage. For committed shards, a stage whose fingerprint is missing
(a stage added to the job) or explicitly recomputed starts there; a stage whose fingerprint
differs without `--recompute` stops the run with FingerprintError. Later stages always follow an
earlier recomputed one (they read its columns).
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.commits import ShardCommit


class FingerprintError(RuntimeError):
    """The catalog was built with a different stage configuration."""


@dataclass(frozen=True)
class StageKey:
    name: str  # runner stage name (e.g. "analyze")
    covers: tuple[str, ...]  # canonical stage names whose fingerprints it owns
    fingerprints: dict[str, str]


def first_stage_for_shard(
    record: ShardCommit, stages: list[StageKey], recompute: set[str]
) -> int | None:
    """Index of the first stage to rerun on a committed shard, or None if it is up to date."""
    mismatched: list[str] = []
    first: int | None = None
    for index, stage in enumerate(stages):
        for name in stage.covers:
            old = record.fingerprints.get(name)
            new = stage.fingerprints[name]
            wanted = name in recompute or stage.name in recompute
            if old is None or wanted:
                first = index if first is None else min(first, index)
            elif old != new:
                mismatched.append(name)
    if mismatched:
        raise FingerprintError(
            f"shard {record.shard} was built with a different configuration of "
            f"{', '.join(sorted(set(mismatched)))}; rerun with --recompute "
            f"{sorted(set(mismatched))[0]} to recompute it (and the stages after it), or write to "
            "a new catalog"
        )
    return first


def plan(
    inputs: list[dict],
    committed_videos: dict[str, int],
    commits: dict[int, ShardCommit],
    stages: list[StageKey],
    recompute: set[str],
) -> dict[int, dict[str, int]]:
    """{shard: {video_id: first stage index}} for everything that needs work.

    inputs: hashed input rows (video_id, shard); committed_videos: video_id -> shard."""
    work: dict[int, dict[str, int]] = {}
    for row in inputs:
        if row["video_id"] not in committed_videos:
            work.setdefault(row["shard"], {})[row["video_id"]] = 0
    by_shard: dict[int, list[str]] = {}
    for video_id, shard in committed_videos.items():
        by_shard.setdefault(shard, []).append(video_id)
    for shard, record in commits.items():
        first = first_stage_for_shard(record, stages, recompute)
        if first is None:
            continue
        for video_id in by_shard.get(shard, []):
            work.setdefault(shard, {})[video_id] = min(first, work.get(shard, {}).get(video_id, first))
    return work


def waves(work: dict[int, dict[str, int]], wave_videos: int) -> list[list[int]]:
    """Group shards (in shard order) into waves of about `wave_videos` videos each."""
    out: list[list[int]] = []
    current: list[int] = []
    count = 0
    for shard in sorted(work):
        current.append(shard)
        count += len(work[shard])
        if count >= wave_videos:
            out.append(current)
            current, count = [], 0
    if current:
        out.append(current)
    return out
