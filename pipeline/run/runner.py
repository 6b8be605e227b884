"""The Ray runner (with pipeline/run/workers.py, what runs inside Ray, the only modules that know
Ray): hash inputs, plan, run stages in waves of shards with Ray Data, stage outputs per shard,
commit per shard, write the manifest.

Each stage runs as `map_batches(batch_format="pyarrow")` over its input rows (tasks on Ray's
reused worker processes, which keep model stages set up for the run, or actor pools with
`model_workers = "actors"`; fractional CPUs) and writes through StagingSink, which splits
outputs by shard, explodes fan-out children into their tables and writes Parquet parts under
`_staging/`. After the wave's stages, each shard's tables are assembled and committed
(catalog/commits.py). A worker crash is retried; a row whose worker died `max_attempts` times
becomes `failed: worker crashed while decoding` (attempt markers survive the retries).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog import fs, layout, schema
from catalog.commits import Lease, clean_orphans, read_commits
from catalog.manifest import write_manifest
from catalog.read import read_table
from pipeline.stages.ingest import hashing
from pipeline.run.plan import (
    StageKey,
    chains,  # noqa: F401 - part of the runner's interface (tests, simulation)
    in_flight,
    plan,
    pool_size,
    wave_groups,
    wave_order,
    wave_size,
    waves,
)
from pipeline.stages.contract import Stage, StageContext, config_dict, load_stage_class
from pipeline.run.staging import WaveStaging, remove_staging, split_by_after, staging_root
from pipeline.run.workers import StageWorker, run_chain_task, stage_resources, staging_sink

log = logging.getLogger(__name__)


class LicenseError(ValueError):
    """A --commercial-only run was asked to use research-only or non-commercial weights."""


@dataclass(frozen=True)
class RunnerConfig:
    """[runner] section of a job spec."""

    num_shards: int = 64  # shard = hash(video_id) mod num_shards; keep it fixed for a catalog
    wave_videos: int = 32  # videos per wave: the most work a killed run loses
    max_attempts: int = 3  # a row whose worker dies this many times is failed
    ray_address: str | None = None  # None: a local Ray on this machine
    num_cpus: int | None = None  # CPUs of the local Ray (None: all)
    batch_rows: int = 1  # rows per map_batches call
    waves_in_flight: int = 0  # waves run at once (0: 1 + one per 32 cluster CPUs; 1: one by one)
    videos_per_cpu: float = 0.0  # > 0: waves of at least cluster CPUs x this many videos
    rows_per_actor: int = 16  # beyond its fair share, a model stage gets one worker per this many rows
    # model stages' workers: "tasks" (Ray's reused worker processes keep their loaded models for
    # the whole run) or "actors" (an actor pool per stage and wave, models loaded per actor)
    model_workers: str = "tasks"
    # per runner stage: Ray resources of its workers, e.g. {faces = {num_gpus = 1, num_cpus = 2}}
    stage_resources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_workers not in ("tasks", "actors"):
            raise ValueError(f"[runner] model_workers must be 'tasks' or 'actors', got {self.model_workers!r}")


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


@dataclass
class RunResult:
    catalog: str
    version: str
    shards_committed: int
    shards_up_to_date: int
    seconds: float
    stages: dict[str, StageSummary] = field(default_factory=dict)
    # driver seconds by phase: setup (Ray, stages), hash, plan, inputs (assembling each stage's
    # input rows), ray (stage datasets, summed over waves in flight), commit, manifest
    phases: dict[str, float] = field(default_factory=dict)


def check_commercial(stages: list[Stage]) -> None:
    bad = [f"{st.name}: {spec.key} ({spec.license})" for st in stages for spec in st.model_specs()
           if not spec.commercial_ok]
    if bad:
        raise LicenseError(
            "--commercial-only: these configured backends use restricted weights: " + "; ".join(bad)
            + ". Choose other backends or leave those stages out (e.g. --set "
            "analyze.enabled='[\"audio\", \"lip_sync\", \"emotion\"]')"
        )


def init_ray(config: RunnerConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # `ray job submit` sets RAY_ADDRESS for the job's driver: attach to that cluster
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False)


def stop_ray() -> None:
    """Disconnect from Ray (and stop the local Ray this process started), e.g. between runs of
    different sizes in one process."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def configure_data(config: RunnerConfig) -> None:
    """Ray Data settings of this driver: progress bars, no per-operator reservations, and
    retries of exceptions that escape the per-row boundary (a model that fails to load, a
    staging write that fails), at most `max_attempts - 1` times."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("EMOFORGE_PROGRESS", "1") == "1"
    # Each stage is map -> write; reserving CPUs per operator would leave a 2-CPU machine
    # running one map task at a time while the (nearly free) write waits for its share.
    ctx.op_resource_reservation_enabled = False
    retries = max(0, config.max_attempts - 1)
    ctx.retried_map_errors = True
    ctx.max_map_retries = retries
    ctx.actor_init_retry_on_errors = True
    ctx.actor_init_max_retries = retries
    ctx.max_consecutive_actor_init_deaths = config.max_attempts


def run(
    inputs: list[str],
    out: str,
    stages: list[str],
    configs: dict[str, Any],
    runner: RunnerConfig = RunnerConfig(),
    recompute: set[str] | frozenset[str] = frozenset(),
    job_spec: dict | None = None,
    commercial_only: bool = False,
) -> RunResult:
    """Curate `inputs` into the catalog at `out` with the named stages (in pipeline order).
    `commercial_only` refuses backends whose weights are research-only or non-commercial."""
    started = time.time()
    root = fs.resolve(out)  # a local folder or an s3:// prefix (catalog/fs.py)
    root.check_access(create=True)  # a missing bucket or refused credentials: exit 2, before work
    with Lease(root):
        clean_orphans(root)
        remove_staging(root)
        staging = staging_root(root) / f"run-{uuid.uuid4().hex[:12]}"
        context = StageContext(catalog=str(root), staging=str(staging))
        classes = [load_stage_class(n) for n in stages]
        driver_stages = [cls(configs.get(n, cls.Config()), context) for n, cls in zip(stages, classes)]
        if commercial_only:
            check_commercial(driver_stages)
        keys = [StageKey(n, st.covers(), st.fingerprints()) for n, st in zip(stages, driver_stages)]
        init_ray(runner)
        configure_data(runner)
        phases = {"setup": time.time() - started}
        mark = time.time()
        commits = read_commits(root)
        hashed = _hash_inputs(root, sorted({absolute_uri(u) for u in inputs}))
        phases["hash"] = time.time() - mark
        mark = time.time()
        committed_videos = read_table(root, "videos", columns=["video_id", "shard", "uri", "content_sha256", "duplicate_of"])
        canonical = {r["content_sha256"]: r["uri"] for r in committed_videos.to_pylist()
                     if r["content_sha256"] and not r["duplicate_of"]}
        rows = hashing.assign_ids(hashed, canonical, runner.num_shards)
        video_shard = dict(zip(committed_videos["video_id"].to_pylist(), committed_videos["shard"].to_pylist()))
        work = plan(rows, video_shard, commits, keys, set(recompute))
        input_rows = {r["video_id"]: r for r in rows}
        summaries = {n: StageSummary(n) for n in stages}
        cpus = cluster_cpus()
        groups = wave_order(waves(work, wave_size(runner.wave_videos, cpus, runner.videos_per_cpu)),
                            work, {r["video_id"]: float(r.get("size_bytes") or 0) for r in rows})
        flight = max(1, min(in_flight(runner.waves_in_flight, cpus), len(groups)))
        phases["plan"] = time.time() - mark
        phases.update(inputs=0.0, ray=0.0, commit=0.0)
        log.info("%d inputs; %d shards need work in %d waves (%d at a time on %g CPUs); %d "
                 "committed shards up to date", len(rows), len(work), len(groups), flight, cpus,
                 len(set(commits) - set(work)))

        def run_one(number: int, wave: list[int]) -> None:
            log.info("wave %d/%d: shards %s", number, len(groups), wave)
            # each wave stages in its own folder: its commit removes only that
            wave_context = dataclasses.replace(context, staging=str(staging / f"wave-{number:05d}"))
            _run_wave(root, wave_context, wave, work, input_rows, stages, driver_stages, keys,
                      runner, summaries, Schedule(cpus, flight), phases)

        mark = time.time()
        run_waves(groups, flight, run_one)
        phases["waves"] = time.time() - mark
        mark = time.time()
        remove_staging(root)
        timings = {n: dataclasses.asdict(s) for n, s in summaries.items()}
        if not work and root.is_file(layout.MANIFEST):  # a no-op run keeps the last timings
            timings = root.read_json(layout.MANIFEST).get("timings", timings)
        manifest = write_manifest(root, job_spec or {}, _stage_manifest(stages, driver_stages), _code_version(), timings)
        phases["manifest"] = time.time() - mark
    result = RunResult(str(root), manifest["version"], len(work), len(set(commits) - set(work)),
                       time.time() - started, summaries, phases)
    for summary in summaries.values():
        log.info(summary.line())
    return result


@dataclass(frozen=True)
class Schedule:
    """What a wave's pools are sized by: the cluster's CPUs and the waves in flight."""

    cluster_cpus: float
    waves_in_flight: int


def cluster_cpus() -> float:
    """CPUs of the Ray cluster this driver is attached to (at least 1)."""
    import ray

    return max(1.0, float(ray.cluster_resources().get("CPU", 1.0)))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def run_waves(groups: list[list[int]], flight: int, run_one) -> None:
    """Run `run_one(number, wave)` for every wave in order, `flight` at a time (threads: each
    wave's stage groups are Ray Data datasets, so a wave waiting on a straggler or a stage
    barrier leaves the cluster to the others). The first error stops the waves not yet started
    and is raised once the running ones end (their shards commit or not, as in a killed run)."""
    if flight <= 1:
        for number, wave in enumerate(groups, 1):
            run_one(number, wave)
        return
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

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


def absolute_uri(uri: str | os.PathLike) -> str:
    """Local paths absolute (symbolic links kept, so a dangling one still fails as itself),
    object-store URIs as given: a catalog's uris read the same from any working directory."""
    text = str(uri)
    if "://" in text:
        return text
    return os.path.abspath(text)


DRIVER_HASH_BYTES = 256 * 2**20  # inputs to hash up to this size are read by the driver


def _hash_inputs(root: Path, uris: list[str]) -> list[dict]:
    """Content hashes for every input, reading only files whose (size, mtime) changed: in the
    driver (4 threads) when they hold at most DRIVER_HASH_BYTES, where starting Ray workers
    would cost more than reading, else as Ray tasks across the cluster."""
    cache = hashing.load_cache(root)
    todo, rows, todo_bytes = [], [], 0
    for uri in uris:
        key = hashing.stat_key(uri)
        hit = cache.get(uri)
        if key is not None and hit is not None and (hit[0], hit[1]) == key:
            rows.append({"uri": uri, "size_bytes": key[0], "mtime_ns": key[1], "content_sha256": hit[2], "hash_error": None})
        else:
            todo.append(uri)
            todo_bytes += key[0] if key else 0
    if not todo:
        return rows
    if todo_bytes <= DRIVER_HASH_BYTES:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4, thread_name_prefix="hash") as pool:
            fresh = list(pool.map(hashing.hash_file, todo))
    else:
        import ray

        hash_remote = ray.remote(num_cpus=0.5, **fs.worker_options())(hashing.hash_file)
        fresh = ray.get([hash_remote.remote(u) for u in todo])
    hashing.save_cache(root, fresh)
    return rows + fresh


def _run_wave(root, context, wave, work, input_rows, names, driver_stages, keys, runner, summaries,
              schedule: Schedule, phases: dict[str, float]) -> None:
    area = WaveStaging(root, Path(context.staging), wave, [st.name for st in driver_stages])
    for group, videos in wave_groups(driver_stages, work, wave):
        started = time.time()
        stages = [driver_stages[i] for i in group]
        for stage in stages:
            area.mark_redone(stage, videos)
        head = stages[0]
        if head.name == "ingest":
            batch = pa.Table.from_pylist([input_rows[v] for v in sorted(videos) if v in input_rows])
        else:
            batch = area.stage_input(head, videos)
        eligible, blocked = split_by_after(head, batch)
        if blocked.num_rows:
            area.write_blocked(head, blocked)
        eligible = longest_first(eligible, head.level)
        assembled = time.time()
        busy = (_run_chain_on_ray([names[i] for i in group], stages, eligible, context, runner, schedule)
                if eligible.num_rows else {})
        wall = time.time() - started
        total_busy = sum(busy.values()) or 1.0
        with _SUMMARY_LOCK:
            _add_outcome(area, group, stages, names, batch, busy, wall, total_busy, summaries)
            phases["inputs"] += assembled - started
            phases["ray"] += time.time() - assembled
    mark = time.time()
    area.commit({k: v for key in keys for k, v in key.fingerprints.items()})
    with _SUMMARY_LOCK:
        phases["commit"] += time.time() - mark


_SUMMARY_LOCK = threading.Lock()


def longest_first(batch: pa.Table, level: str) -> pa.Table:
    """Rows ordered by their expected work, biggest first (a long video that starts last is the
    wave's straggler): videos by duration or file size, clips by span, tracks by nested frames."""
    import pyarrow.compute as pc

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


def _run_chain_on_ray(names: list[str], stages: list[Stage], batch: pa.Table, context: StageContext,
                      runner: RunnerConfig, schedule: Schedule) -> dict[str, float]:
    """Tasks (model stages set up once per worker process and run), or for model stages with
    `model_workers = "actors"` a fixed actor pool (set up once per actor). Either way Ray
    retries work on a dead worker or node, and the attempt markers end the loop for a poison
    row; an exception that escapes the per-row boundary (a model that fails to load, a
    staging write that fails) is retried up to `max_attempts` times before the run stops.
    Returns each stage's busy seconds in the workers."""
    import ray.data

    head = stages[0]
    resources = stage_resources(names, stages, runner.stage_resources)
    cpus = resources["num_cpus"]
    pool = pool_size(max(cpus, 1e-3), schedule.cluster_cpus, batch.num_rows, runner.rows_per_actor,
                     head.uses_models, schedule.waves_in_flight)
    if resources.get("num_gpus"):  # a GPU pool: no more workers than the cluster's GPUs hold
        gpus = cluster_gpus()
        if gpus <= 0:
            raise ValueError(f"[runner] stage_resources.{head.name} asks for GPUs; the Ray cluster has none")
        pool = max(1, min(pool, int(gpus / resources["num_gpus"])))
    remote = {**resources, **fs.worker_options()}
    blocks = [batch.slice(i, runner.batch_rows) for i in range(0, batch.num_rows, runner.batch_rows)]
    args = {"names": names, "configs": [s.config for s in stages], "context": context,
            "max_attempts": runner.max_attempts, "resources": runner.stage_resources}
    ds = input_dataset(blocks)
    sink = staging_sink(head.level, Path(context.staging))
    if head.uses_models and runner.model_workers == "actors":
        ds = ds.map_batches(StageWorker, fn_constructor_kwargs=args, batch_size=runner.batch_rows,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool),
                            **remote)
        ds.write_datasink(sink)
    else:
        ds = ds.map_batches(run_chain_task, fn_kwargs=args, batch_size=runner.batch_rows,
                            batch_format="pyarrow", compute=ray.data.TaskPoolStrategy(size=pool),
                            **remote)
        write_fused(ds, sink, remote, pool)
    return sink.busy


def write_fused(ds, sink, remote: dict, pool: int) -> None:
    """Write a task-pool stage's outputs with the same remote arguments and pool size as its
    map, so that Ray Data fuses the two ("MapBatches(run_chain_task)->Write"): each row's
    outputs are written to staging by the task that computed them. A separate Write operator
    ran a task per row beside the map tasks, and on a node whose CPUs the map tasks held,
    Ray started extra worker processes for those (each importing Ray Data and setting the
    stage up again), and the packed outputs went through the object store."""
    ds.write_datasink(sink, ray_remote_args=dict(remote), concurrency=pool)


def input_dataset(blocks: list[pa.Table]):
    """A Ray dataset of the stage's input rows, one block each, its metadata read here: unlike
    `ray.data.from_arrow`, which runs one remote task per block for it (a worker lease each,
    and on a busy node a wait for a free CPU before the stage can start)."""
    import ray.data

    return ray.data.from_blocks(blocks)


def _stage_manifest(names: list[str], stages: list[Stage]) -> dict[str, dict]:
    out = {}
    for name, stage in zip(names, stages):
        by_stage = stage.models_by_stage()
        for covered, fp in stage.fingerprints().items():
            models = [
                {"key": s.key, "backend": s.backend, "version": s.version, "license": s.license,
                 "commercial_ok": s.commercial_ok, "weights": _safe_checksum(s)}
                for s in by_stage.get(covered, [])
            ]
            out[covered] = {"fingerprint": fp, "runner_stage": name, "version": stage.version_for(covered),
                            "config": config_dict(stage.config_for(covered)), "models": models}
    return out


def _safe_checksum(spec) -> str:
    from pipeline.models.registry import weights_checksum

    return weights_checksum(spec)


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emoforge")
    except PackageNotFoundError:
        return "unknown"
