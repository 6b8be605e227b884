"""The runner's Ray workers: what runs inside Ray (pipeline/run/ is the only folder of the
pipeline that knows Ray). StageWorker runs a chain of stages row by row, as a task
(`run_chain_task`: the worker process keeps it, models loaded, for the run) or as an actor
(`[runner] model_workers = "actors"`); a row's parts (Stage.parts) run as tasks of their own
(`run_part`), and `staging_sink` writes the packed outputs under the staging area.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog import fs, schema
from catalog.read import conform
from pipeline.run.staging import (
    blocked_reason,
    fill_keys,
    merge_columns,
    rows_with_keys,
    write_output,
)
from pipeline.stages.contract import FAILED, SKIPPED, Stage, StageContext, rows_to_table
from pipeline.stages.registry import load_stage_class

CRASH_ERROR = "worker crashed while decoding"
# a folder: each worker process appends one JSON line per task it runs to <folder>/<pid>.jsonl
# (`emoforge bench pipeline` sets it to split the Ray tree's CPU into start-up, set-up and work)
STATS_ENV = "EMOFORGE_WORKER_STATS"


_TASK_CPU = [0.0]  # CPU seconds of this process's chain and part tasks so far (STATS_ENV)


def task_cpu_so_far() -> float:
    """CPU seconds this process spent in chain and part tasks so far (recorded with STATS_ENV;
    module-level so that the sink's class, pickled by value, reads this module's count)."""
    return _TASK_CPU[0]


def record_task(kind: str, names: list[str], began_cpu: float, setup_cpu: float,
                busy: dict[str, float] | None = None, nested_cpu: float = 0.0) -> None:
    """With STATS_ENV set: one JSON line for a task of this process: `kind` (chain, part or
    write), its stages, the process's CPU seconds (user + system, all threads) when the task
    began and now, the CPU seconds its stages' set-up took (0 when the process already held
    them) and, for a write fused with the map, the chain tasks' CPU inside it (`nested_cpu`)."""
    folder = os.environ.get(STATS_ENV)
    if not folder:
        return
    now = time.process_time()
    if kind != "write":
        _TASK_CPU[0] += now - began_cpu
    event = {"kind": kind, "names": list(names), "pid": os.getpid(), "cpu_before": began_cpu,
             "cpu_after": now, "setup_cpu": setup_cpu, "busy_s": busy or {},
             "nested_cpu": nested_cpu}
    with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as out:
        out.write(json.dumps(event) + "\n")


def pack(outputs: dict[str, list[pa.Table]], busy: dict[str, float]) -> pa.Table:
    """Stage outputs as one small table (stage, busy seconds, Arrow IPC bytes), so nested
    list<struct> children travel to the sink untouched by Ray's block handling."""
    names, seconds, payloads = [], [], []
    for name, tables in outputs.items():
        if not tables:
            continue
        table = pa.concat_tables(tables)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        names.append(name)
        seconds.append(busy.get(name, 0.0))
        payloads.append(sink.getvalue().to_pybytes())
    return pa.table({"stage": pa.array(names, pa.string()), "busy_s": pa.array(seconds, pa.float64()),
                     "ipc": pa.array(payloads, pa.binary())})


def unpack(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(payload)).read_all()


class StageWorker:
    """Runs a chain of stages inside a Ray worker: set up once, then row by row, each stage on
    the row plus the previous stages' outputs, with attempt markers against poison inputs."""

    def __init__(self, names: list[str], configs: list[Any], context: StageContext, max_attempts: int,
                 resources: dict | None = None):
        self.context = context  # shared by the stages (and their analyzers): see `bind`
        self.stages = [load_stage_class(n)(c, context) for n, c in zip(names, configs)]
        for stage in self.stages:
            stage.setup()
        self.markers = Path(context.staging) / "attempts"
        self.max_attempts = max_attempts
        self.resources = resources or {}  # [runner] stage_resources, for a row's parts
        self.last_busy: dict[str, float] = {}  # each stage's seconds in the last call

    def bind(self, context: StageContext, max_attempts: int, resources: dict | None) -> None:
        """Work for another wave (or run) with the stages as they are set up."""
        self.context.move_to(context)
        self.markers = Path(context.staging) / "attempts"
        self.max_attempts = max_attempts
        self.resources = resources or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        outputs: dict[str, list[pa.Table]] = {s.name: [] for s in self.stages}
        busy: dict[str, float] = dict.fromkeys(outputs, 0.0)
        for i in range(batch.num_rows):
            current = batch.slice(i, 1)
            for index, stage in enumerate(self.stages):
                began = time.time()
                result = self._run_one(stage, current, check_after=index > 0)
                busy[stage.name] += time.time() - began
                outputs[stage.name].append(result)
                current = merge_columns(current, result, stage.level)
        self.last_busy = busy
        return pack(outputs, busy)

    def _run_one(self, stage: Stage, row: pa.Table, check_after: bool) -> pa.Table:
        """One stage on one row: skipped if a prerequisite failed, failed if this row already
        killed its worker `max_attempts` times, else processed under an attempt marker."""
        reason = blocked_reason(stage, row.to_pylist()[0]) if check_after else None
        if reason:
            return rows_with_keys(stage, [stage.failed_row(reason, SKIPPED)], row)
        marker = self.markers / stage.name / str(row[schema.KEYS[stage.level][0]][0].as_py())
        attempts = int(marker.read_text()) if marker.exists() else 0
        if attempts >= self.max_attempts:
            crashed = stage.failed_row(f"{CRASH_ERROR} ({attempts} attempts)", FAILED)
            return rows_with_keys(stage, [crashed], row)
        marker.parent.mkdir(parents=True, exist_ok=True)  # staging is removed per wave
        marker.write_text(str(attempts + 1))
        lost = fs.store_failures()
        result = self._process(stage, row)
        marker.unlink(missing_ok=True)
        if fs.store_failures() != lost:  # not the row's fault: stop the job; a re-run redoes it
            raise fs.StoreUnavailableError(
                f"{stage.name}: the object store became unreachable while processing a row (not "
                "recorded as the row's failure); run the same command again to finish")
        return result

    def _process(self, stage: Stage, row: pa.Table) -> pa.Table:
        try:
            result = self._in_parts(stage, row)
            if result is None:
                result = stage.process(row)
        except Exception as exc:  # noqa: BLE001 - the per-row boundary for batch-level process()
            return rows_with_keys(stage, [stage.failed_row(self._reason(exc))], row)

        return fill_keys(conform(result, stage.output_schema()), row, stage.level)

    def _in_parts(self, stage: Stage, row: pa.Table) -> pa.Table | None:
        """A row the stage splits into several parts (a long video's scene windows): each part
        a Ray task (in parallel, anywhere in the cluster; this worker's CPU is lent out while
        it waits), then `combine` here. None when the row is one piece."""
        import ray  # heavy: loaded on use

        record = row.to_pylist()[0]
        parts = stage.parts(record)
        if len(parts) < 2:
            return None
        remote = ray.remote(run_part).options(
            **stage_resources([stage.name], [stage], self.resources), **fs.worker_options(),
            max_retries=max(0, self.max_attempts - 1))
        where = f"{type(stage).__module__}:{type(stage).__qualname__}"
        refs = [remote.remote(where, stage.config, stage.context, record, part) for part in parts]
        results = ray.get(refs)
        return rows_to_table([stage.combine(record, results)], stage.output_schema())

    def _reason(self, exc: Exception) -> str:
        """The row's error: a part's own exception as itself, a part whose worker died on every
        attempt as the crash error."""
        import ray.exceptions  # heavy: loaded on use

        if isinstance(exc, ray.exceptions.WorkerCrashedError):
            return f"{CRASH_ERROR} ({self.max_attempts} attempts)"
        cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
        exc = cause or exc
        return f"{type(exc).__name__}: {exc}"


def run_part(stage_class: str, config: Any, context: StageContext, row: dict, part: Any) -> Any:
    """A Ray task: one part of a row (Stage.parts), on a stage the worker process set up once
    and keeps for the run, as `run_chain_task` does. `stage_class`: "module:Class"."""
    began = time.process_time()
    key = (stage_class, repr(config))
    if key not in _PART_STAGES:
        _PART_STAGES.clear()  # one stage per process: a run's parts share a configuration
        stage = load_stage_class(stage_class)(config, context)
        stage.setup()
        _PART_STAGES[key] = stage
    setup_cpu = time.process_time() - began
    stage = _PART_STAGES[key]
    stage.context.move_to(context)
    result = stage.process_part(row, part)
    record_task("part", [stage.name], began, setup_cpu)
    return result


_PART_STAGES: dict[tuple, Stage] = {}


def staging_sink(level: str, staging: Path):
    """A Ray Data sink that writes each stage's packed outputs as Parquet parts under the staging
    area; on the driver it keeps each stage's busy seconds (`busy`)."""
    from ray.data import Datasink  # heavy: loaded on use

    class StagingSink(Datasink):
        busy: dict[str, float] = {}

        def write(self, blocks, ctx):  # noqa: ANN001 - Ray's signature
            began, nested = time.process_time(), task_cpu_so_far()
            busy: dict[str, float] = {}
            for block in blocks:
                table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
                for item in table.to_pylist():
                    write_output(unpack(item["ipc"]), item["stage"], level, staging)
                    busy[item["stage"]] = busy.get(item["stage"], 0.0) + item["busy_s"]
            record_task("write", list(busy), began, 0.0, nested_cpu=task_cpu_so_far() - nested)
            return busy

        def on_write_complete(self, write_result):  # noqa: ANN001 - Ray's signature
            totals: dict[str, float] = {}
            for part in write_result.write_returns:
                for name, seconds in part.items():
                    totals[name] = totals.get(name, 0.0) + seconds
            self.busy = totals

    return StagingSink()


_WORKERS: dict[tuple, StageWorker] = {}


def run_chain_task(batch: pa.Table, names: list[str], configs: list[Any], context: StageContext,
                   max_attempts: int, resources: dict | None = None) -> pa.Table:
    """Task form of StageWorker. Ray reuses worker processes across tasks, stages' datasets and
    waves, so a process sets a chain's stages up (loads their models) once and keeps them for
    the rest of the run (at most one set-up per chain of the job: ingest+scenes, faces, analyze)."""
    began = time.process_time()
    key = (tuple(names), repr(configs))
    worker = _WORKERS.get(key)
    if worker is None:
        while len(_WORKERS) >= 4:  # another job's chains in the same process: drop the oldest
            _WORKERS.pop(next(iter(_WORKERS)))
        worker = _WORKERS[key] = StageWorker(names, configs, context, max_attempts, resources)
    setup_cpu = time.process_time() - began
    worker.bind(context, max_attempts, resources)
    result = worker(batch)
    record_task("chain", names, began, setup_cpu, worker.last_busy)
    return result


def stage_resources(names: list[str], stages: list[Stage], settings: dict) -> dict[str, float]:
    """Ray resources of one worker of a stage group: each stage's `num_cpus` (and no GPU) unless
    `[runner] stage_resources.<stage>` (`settings`) sets `num_cpus`, `num_gpus` or `memory`
    (bytes); the group takes the largest of its stages'."""
    valid = {"num_cpus", "num_gpus", "memory"}
    out: dict[str, float] = {"num_cpus": 0.0}
    for name, stage in zip(names, stages):
        wanted = dict(settings.get(stage.name, settings.get(name, {})))
        unknown = set(wanted) - valid
        if unknown:
            raise ValueError(f"[runner] stage_resources.{stage.name} has unknown keys {sorted(unknown)}; "
                             f"valid: {sorted(valid)}")
        wanted.setdefault("num_cpus", stage.num_cpus)
        for key, value in wanted.items():
            out[key] = max(out.get(key, 0.0), float(value))
    return out
