"""The runner's entry point `run`: hash inputs, plan, run stages in waves of shards with Ray
Data (pipeline/run/waves.py, chain.py; workers.py is what runs inside Ray), stage outputs per
shard, commit per shard, write the manifest.

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
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from catalog import fs, layout
from catalog.commits import Lease, clean_orphans, read_commits
from catalog.manifest import write_manifest
from catalog.read import read_table
from pipeline.run.cluster import cluster_cpus, configure_data, init_ray, ray_connected, stop_ray
from pipeline.run.config import LicenseError, RunnerConfig, check_commercial
from pipeline.run.inputs import absolute_uri, hash_inputs
from pipeline.run.job import JobSpec
from pipeline.run.manifest import code_version, stage_manifest
from pipeline.run.plan import StageKey, in_flight, plan, wave_order, wave_size, waves
from pipeline.run.staging import remove_staging, staging_root
from pipeline.run.waves import RunPlan, StageSummary, Wave, run_wave, run_waves
from pipeline.stages.contract import StageContext
from pipeline.stages.ingest import hashing
from pipeline.stages.registry import load_stage_class

# the runner's interface in one place: `runner.run(...)`, its config and result, Ray set-up
__all__ = ["JobSpec", "LicenseError", "RunResult", "RunnerConfig", "StageSummary", "absolute_uri",
           "init_ray", "ray_connected", "run", "run_stages", "stop_ray"]

log = logging.getLogger(__name__)


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


def run(job: JobSpec, inputs: list[str] | None = None,
        recompute: set[str] | frozenset[str] = frozenset(), commercial_only: bool = False) -> RunResult:
    """Run `job`: its stages over `inputs` (default: the job's inputs as given) into `job.out`,
    the resolved spec recorded in the manifest (see run_stages)."""
    files = [str(p) for p in (inputs if inputs is not None else job.inputs)]
    return run_stages(files, job.out, list(job.stages), job.configs, job.runner, recompute,
                      job.resolved(), commercial_only)


def run_stages(
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
        hashed = hash_inputs(root, sorted({absolute_uri(u) for u in inputs}))
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

        shared = RunPlan(root, work, input_rows, stages, driver_stages, keys, runner, cpus, flight,
                         summaries, phases)

        def run_one(number: int, shards: list[int]) -> None:
            log.info("wave %d/%d: shards %s", number, len(groups), shards)
            # each wave stages in its own folder: its commit removes only that
            wave_context = dataclasses.replace(context, staging=str(staging / f"wave-{number:05d}"))
            run_wave(shared, Wave(number, shards, wave_context))

        mark = time.time()
        run_waves(groups, flight, run_one)
        phases["waves"] = time.time() - mark
        mark = time.time()
        remove_staging(root)
        timings = {n: dataclasses.asdict(s) for n, s in summaries.items()}
        if not work and root.is_file(layout.MANIFEST):  # a no-op run keeps the last timings
            timings = root.read_json(layout.MANIFEST).get("timings", timings)
        manifest = write_manifest(root, job_spec or {}, stage_manifest(stages, driver_stages), code_version(), timings)
        phases["manifest"] = time.time() - mark
    result = RunResult(str(root), manifest["version"], len(work), len(set(commits) - set(work)),
                       time.time() - started, summaries, phases)
    for summary in summaries.values():
        log.info(summary.line())
    return result
