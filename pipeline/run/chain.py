"""One stage chain of one wave on Ray Data: its rows as a dataset, mapped by the stage workers
(tasks or an actor pool), written into the wave's staging area."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from catalog import fs
from pipeline.run.cluster import cluster_gpus
from pipeline.run.config import RunnerConfig
from pipeline.run.plan import pool_size
from pipeline.run.workers import StageWorker, run_chain_task, stage_resources, staging_sink
from pipeline.stages.contract import Stage, StageContext


def run_chain(names: list[str], stages: list[Stage], batch: pa.Table, context: StageContext,
              runner: RunnerConfig, cluster_cpus: float, waves_in_flight: int) -> dict[str, float]:
    """Tasks (model stages set up once per worker process and run), or for model stages with
    `model_workers = "actors"` a fixed actor pool (set up once per actor). Either way Ray
    retries work on a dead worker or node, and the attempt markers end the loop for a poison
    row; an exception that escapes the per-row boundary (a model that fails to load, a
    staging write that fails) is retried up to `max_attempts` times before the run stops.
    Pools are sized by the cluster's CPUs and the waves in flight. Returns each stage's busy
    seconds in the workers."""
    import ray.data  # heavy: loaded when a run starts, not when the CLI imports the runner

    head = stages[0]
    resources = stage_resources(names, stages, runner.stage_resources)
    cpus = resources["num_cpus"]
    pool = pool_size(max(cpus, 1e-3), cluster_cpus, batch.num_rows, runner.rows_per_actor,
                     head.uses_models, waves_in_flight)
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
    import ray.data  # heavy: see run_chain

    return ray.data.from_blocks(blocks)
