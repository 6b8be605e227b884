"""Waves of shards: each wave runs its stage groups (chains) and commits its shards; waves run
one after another or several at once in threads; each stage's outcome goes into its summary."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog import fs, schema
from pipeline.run.chain import run_chain
from pipeline.run.config import RunnerConfig
from pipeline.run.plan import StageKey, wave_groups
from pipeline.run.staging import WaveStaging, split_by_after
from pipeline.stages.contract import Stage, StageContext

log = logging.getLogger(__name__)


@dataclass
class StageSummary:
    stage: str
    rows_in: int = 0
    children: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.rows_in / self.seconds if self.seconds > 0 else 0.0
        kids = f", {self.children} child rows" if self.children else ""
        return (f"{self.stage:>8}: {self.rows_in} rows in{kids}; ok {self.ok}, skipped "
                f"{self.skipped}, failed {self.failed}; {self.seconds:.1f} s ({rate:.2f} rows/s)")


@dataclass(frozen=True)
class RunPlan:
    """What every wave of one run shares: the catalog, the planned work and the stages, how
    pools are sized (the cluster's CPUs and the waves in flight), and where outcomes and driver
    seconds by phase are added up (under a lock: waves in flight are threads)."""

    root: fs.Root
    work: dict[int, dict[str, int]]  # shard -> {video_id: first stage index to run}
    input_rows: dict[str, dict]  # video_id -> its hashed input row (ingest's input)
    names: list[str]  # runner stage names, in pipeline order
    stages: list[Stage]  # the driver's stage objects, one per name
    keys: list[StageKey]
    runner: RunnerConfig
    cluster_cpus: float
    waves_in_flight: int
    summaries: dict[str, StageSummary]
    phases: dict[str, float]


@dataclass(frozen=True)
class Wave:
    """One wave: its number (from 1), its shards and its own staging folder in `context`."""

    number: int
    shards: list[int]
    context: StageContext


_SUMMARY_LOCK = threading.Lock()


def run_waves(groups: list[list[int]], flight: int, run_one) -> None:
    """Run `run_one(number, wave)` for every wave in order, `flight` at a time (threads: each
    wave's stage groups are Ray Data datasets, so a wave waiting on a straggler or a stage
    barrier leaves the cluster to the others). The first error stops the waves not yet started
    and is raised once the running ones end (their shards commit or not, as in a killed run)."""
    if flight <= 1:
        for number, wave in enumerate(groups, 1):
            run_one(number, wave)
        return
    pool = ThreadPoolExecutor(flight, thread_name_prefix="wave")
    try:
        futures = [pool.submit(run_one, n, w) for n, w in enumerate(groups, 1)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise future.exception()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_wave(run: RunPlan, wave: Wave) -> None:
    """Run every stage group of `wave` over its shards' rows, then commit its shards."""
    context = wave.context
    area = WaveStaging(run.root, Path(context.staging), wave.shards, [st.name for st in run.stages])
    for group, videos in wave_groups(run.stages, run.work, wave.shards):
        started = time.time()
        stages = [run.stages[i] for i in group]
        for stage in stages:
            area.mark_redone(stage, videos)
        head = stages[0]
        if head.name == "ingest":
            batch = pa.Table.from_pylist([run.input_rows[v] for v in sorted(videos) if v in run.input_rows])
        else:
            batch = area.stage_input(head, videos)
        eligible, blocked = split_by_after(head, batch)
        if blocked.num_rows:
            area.write_blocked(head, blocked)
        eligible = longest_first(eligible, head.level)
        assembled = time.time()
        busy = (run_chain([run.names[i] for i in group], stages, eligible, context, run.runner,
                          run.cluster_cpus, run.waves_in_flight)
                if eligible.num_rows else {})
        wall = time.time() - started
        total_busy = sum(busy.values()) or 1.0
        with _SUMMARY_LOCK:
            _add_outcome(area, group, stages, run.names, batch, busy, wall, total_busy, run.summaries)
            run.phases["inputs"] += assembled - started
            run.phases["ray"] += time.time() - assembled
    mark = time.time()
    area.commit({k: v for key in run.keys for k, v in key.fingerprints.items()})
    with _SUMMARY_LOCK:
        run.phases["commit"] += time.time() - mark


def longest_first(batch: pa.Table, level: str) -> pa.Table:
    """Rows ordered by their expected work, biggest first (a long video that starts last is the
    wave's straggler): videos by duration or file size, clips by span, tracks by nested frames."""
    if batch.num_rows < 2:
        return batch
    names = batch.column_names
    if level == "videos":
        column = "duration_s" if "duration_s" in names else "size_bytes" if "size_bytes" in names else None
        proxy = pc.fill_null(batch[column].cast(pa.float64()), 0.0) if column else None
    elif level == "clips" and "start_s" in names and "end_s" in names:
        proxy = pc.fill_null(pc.subtract(batch["end_s"], batch["start_s"]), 0.0)
    elif schema.CHILDREN.get(level) in names:
        proxy = pc.fill_null(pc.list_value_length(batch[schema.CHILDREN[level]]), 0)
    else:
        proxy = None
    if proxy is None:
        return batch
    order = pc.sort_indices(pa.table({"p": proxy, "k": batch[schema.KEYS[level][0]]}),
                            sort_keys=[("p", "descending"), ("k", "ascending")])
    return batch.take(order)


def _add_outcome(area, group, stages, names, batch, busy, wall, total_busy, summaries) -> None:
    """Add a stage group's statuses, children and time share to the run's summaries."""
    for i, stage in zip(group, stages):
        statuses, children = area.outcome(stage)
        summary = summaries[names[i]]
        summary.rows_in += batch.num_rows
        summary.children += children
        for status in ("ok", "skipped", "failed"):
            setattr(summary, status, getattr(summary, status) + statuses.get(status, 0))
        # a chain's wall time is shared out by each stage's busy time in the workers
        summary.seconds += wall * (busy.get(stage.name, 0.0) / total_busy if len(group) > 1 else 1.0)
        log.info(summary.line())
