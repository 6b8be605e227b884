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


# --- Scheduling: how a run's waves and stage groups are laid over a cluster (pure functions,
# --- used by the runner and by the cluster simulation, pipeline/run/simulate.py)


def chains(stages: list) -> list[list[int]]:
    """Group stage indices into chains run as one Ray task per row: consecutive stages at the same
    level with the same compute kind, after a first stage with no prerequisites (ingest, then
    scenes): one dataset instead of several, and the file is read while it is in the page cache.
    `stages`: Stage instances or classes (only class attributes are read)."""
    groups: list[list[int]] = []
    for index, stage in enumerate(stages):
        head = stages[groups[-1][0]] if groups else None
        if (head is not None and not head.after and stage.level == head.level
                and stage.uses_models == head.uses_models and not getattr(stage, "requires_children", ())):
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def wave_groups(stages: list, work: dict[int, dict[str, int]], wave: list[int]) -> list[tuple[list[int], set[str]]]:
    """The stage groups a wave runs in order, each with the videos it runs on: a chain runs
    together only when all its stages start on the same videos, else stage by stage."""

    def videos_for(index: int) -> set[str]:
        return {v for s in wave for v, first in work[s].items() if first <= index}

    out: list[tuple[list[int], set[str]]] = []
    for group in chains(stages):
        parts = [group] if len({frozenset(videos_for(i)) for i in group}) == 1 else [[i] for i in group]
        out.extend((part, videos_for(part[0])) for part in parts)
    return [(group, videos) for group, videos in out if videos]


def wave_order(groups: list[list[int]], work: dict[int, dict[str, int]], sizes: dict[str, float]) -> list[list[int]]:
    """Waves holding the biggest inputs first (longest-processing-time first): a multi-hour video
    that starts last is the job's tail. `sizes`: video_id -> input bytes (or seconds)."""
    def biggest(wave: list[int]) -> float:
        return max((sizes.get(v, 0.0) for s in wave for v in work[s]), default=0.0)

    return sorted(groups, key=lambda w: (-biggest(w), w[0]))


def wave_size(wave_videos: int, cluster_cpus: float, videos_per_cpu: float) -> int:
    """Videos per wave: at least `wave_videos` (the resume granularity) and, when
    `videos_per_cpu` > 0, enough for the cluster (cluster CPUs x videos_per_cpu)."""
    return max(wave_videos, int(round(cluster_cpus * videos_per_cpu)))


def in_flight(setting: int, cluster_cpus: float) -> int:
    """Waves running at once: `setting` when > 0, else one plus one per 32 cluster CPUs (a wave
    waiting on its slowest video at a stage barrier leaves the cluster to the others; one machine
    runs waves one by one). pipeline/run/simulate.py measures the effect on a 100-node cluster."""
    if setting > 0:
        return setting
    return 1 + int(cluster_cpus // 32)


def pool_size(cpus: float, cluster_cpus: float, rows: int, rows_per_actor: int,
              uses_models: bool, sharing: int = 1) -> int:
    """Workers for one stage group of one wave: as many as the cluster's CPUs hold, no more than
    its rows (waves in flight share the cluster through Ray's queue). An actor pool (models
    loaded once per actor) gets its fair share of the cluster (CPUs / `sharing`, the waves in
    flight) and beyond that at least `rows_per_actor` rows per actor, so model loading does not
    dominate when other waves could use the CPUs."""
    pool = max(1, min(int(max(1.0, cluster_cpus) / cpus), rows))
    if uses_models and rows_per_actor > 1:
        fair = max(1, int(max(1.0, cluster_cpus) / cpus / max(1, sharing)))
        pool = min(pool, max(fair, -(-rows // rows_per_actor)))
    return pool
