"""`emoforge bench scale`: the full pipeline with 1 and 2 workers on this machine, per-stage costs,
where the serial time goes, a 100-node simulation with those costs, and a cost model.

1. Inputs: FILES, or a synthetic talking-face corpus (jobs.media.talking_corpus: four real face
   photos speaking four espeak-ng sentences each, 256 px, about 80 s in all), cached. With 40 s
   (two sentences each) the run's fixed costs (model loading, Ray Data's start per stage) were
   a fifth of the 2-worker time and the efficiency read 0.85-0.93 between two quiet runs.
2. Curated twice in this process with every stage (ingest, scenes, faces, analyze), on a local
   Ray of 1 and then 2 CPUs; every stage is given 1 CPU per worker ([runner] stage_resources),
   so "N workers" is N single-threaded worker processes (OMP_NUM_THREADS=1), and the run is
   pinned to N cores (CPU affinity, inherited by Ray's processes). Real-time factor
   = seconds of video / wall seconds (Ray start excluded, reported apart); scaling efficiency
   = (T1 / T2) / 2. This shared machine's own 2-process speedup (a CPU-bound loop) swings
   between about 1.5x and 2.1x within minutes, so the runs repeat (`repeats`, default 2) in the
   order 1, 2, ceiling, 1, 2, ceiling, and each worker count's fastest run is the one compared:
   another tenant's load only slows a run down. A sampler reads every process's resident
   memory (RSS) each 0.2 s: the peak of any one Ray worker process is "peak memory per worker".
3. Per-stage costs from the 1-worker run: each stage's seconds (stage wall time on one CPU =
   core-seconds) per second of its content (video for ingest and scenes, clips for faces, face
   tracks for analyze), less the model set-up of its actors (measured apart, in this process).
4. The driver's serial time by phase (RunResult.phases) and the Amdahl bound it implies.
5. pipeline/run/simulate.py with those costs: 100 nodes x 16 CPUs, 10,000 videos of 1-10 minutes
   and 10 of 1-2 hours, the runner against a baseline that runs one wave at a time with pools
   of one row per actor); then a markdown cost model for 1,000 hours of video on N nodes.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from catalog.read import read_table
from jobs.bench import BenchInputError, video_inputs
from jobs.bench.memory import TreeSampler
from jobs.media.talking_corpus import build_talking_corpus
from jobs.spec import build
from pipeline.models.registry import cache_root
from pipeline.run import runner
from pipeline.run.config import RunnerConfig
from pipeline.run.simulate import Cluster, StageCost, corpus, simulate
from pipeline.stages.contract import StageContext
from pipeline.stages.registry import load_stage_class

log = logging.getLogger(__name__)

STAGES = ("ingest", "scenes", "faces", "analyze")
CONTENT = {"ingest": "video", "scenes": "video", "faces": "clips", "analyze": "tracks"}
# Measured by `emoforge bench scale` on this 2-core machine (2026-11-30, quiet: 16 talking-face
# clips of 256 px, 80 s, one worker): core-seconds per content second and per worker set-up.
# The simulation test and `bench simulate` use these.
DEFAULT_COSTS = {
    "ingest": StageCost(per_content_s=0.009),
    "scenes": StageCost(per_content_s=0.123),
    "faces": StageCost(per_content_s=0.298, setup_s=0.26),
    "analyze": StageCost(per_content_s=0.625, setup_s=4.54),
}


def inputs(files: list[str] | None) -> list[str]:
    """`files` (files or folders: video_inputs), or the cached synthetic talking-face corpus."""
    if files:
        return video_inputs(files)

    clips = build_talking_corpus(cache_root() / "bench" / "scale", ("astronaut", "happy", "surprise", "anger"),
                                 4, size=256)
    return [str(c.path) for c in clips]


def curate_with(files: list[str], out: Path, workers: int) -> dict:
    """Curate `files` into `out` on a fresh local Ray of `workers` CPUs, 1 CPU per stage worker."""
    os.environ["EMOFORGE_PROGRESS"] = "0"
    spec = build({"job": {"inputs": files, "out": str(out)}})
    config = runner.RunnerConfig(num_cpus=workers, wave_videos=10_000, waves_in_flight=1,
                                 stage_resources={s: {"num_cpus": 1.0} for s in STAGES})
    os.environ["OMP_NUM_THREADS"] = "1"  # the local Ray's workers inherit it
    runner.stop_ray()
    # N workers get N cores: the driver, Ray's daemons and workers inherit this affinity, so
    # decoder and inference threads cannot borrow the other core in the 1-worker run
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(cores)[:workers]))
    t0 = time.perf_counter()
    try:
        runner.init_ray(config)
        ray_start = time.perf_counter() - t0
        with TreeSampler(os.getpid()) as peak:  # Ray's workers are this process's children
            result = runner.run(dataclasses.replace(spec, out=str(out), runner=config), files)
    finally:
        runner.stop_ray()
        os.sched_setaffinity(0, cores)
    videos = read_table(out, "videos", columns=["uri", "duration_s", "ingest_error"])
    if not sum(v or 0.0 for v in videos["duration_s"].to_pylist()):
        failed = {r["uri"]: r["ingest_error"] for r in videos.to_pylist()}
        raise BenchInputError(f"bench scale: the inputs yield no video: {failed or files}")
    clips = read_table(out, "clips", columns=["duration_s"])
    tracks = read_table(out, "tracks", columns=["frame_count"])
    content = {"video": sum(v or 0.0 for v in videos["duration_s"].to_pylist()),
               "clips": sum(v or 0.0 for v in clips["duration_s"].to_pylist()),
               "tracks": sum(v or 0 for v in tracks["frame_count"].to_pylist()) / 25.0}
    return {"workers": workers, "wall_s": result.seconds, "ray_start_s": ray_start,
            "video_s": content["video"], "content_s": content,
            "real_time_factor": content["video"] / result.seconds,
            "stage_s": {n: s.seconds for n, s in result.stages.items()},
            "stage_failed": {n: s.failed for n, s in result.stages.items()},
            "phases_s": result.phases,
            "peak_worker_mib": peak.peak_process.get("workers", 0.0),
            "peak_all_workers_mib": peak.peak.get("workers", 0.0)}


def _spin(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i * i
    return total


def machine_speedup(loops: int = 12_000_000) -> float:
    """The machine's own 2-process speedup (the ceiling for 2 workers): the same CPU-bound loop
    twice in one process, then in two processes at once (the best of two tries each)."""
    context = multiprocessing.get_context("spawn")
    best: dict[int, float] = {}
    for processes in (1, 2, 1, 2):
        with context.Pool(processes) as pool:
            pool.map(_spin, [1000, 1000])  # the processes are up before the clock starts
            t0 = time.perf_counter()
            pool.map(_spin, [loops, loops], chunksize=1)
            best[processes] = min(best.get(processes, float("inf")), time.perf_counter() - t0)
    return best[1] / best[2]


def setup_seconds() -> dict[str, float]:
    """Model set-up of one actor of each model stage (default configs), in this process."""
    spec = build({"job": {"inputs": ["x"]}})
    context = StageContext(catalog=tempfile.gettempdir(), staging=tempfile.gettempdir())
    out = {}
    for name in STAGES:
        stage = load_stage_class(name)(spec.configs[name], context)
        t0 = time.perf_counter()
        stage.setup()
        out[name] = time.perf_counter() - t0 if stage.uses_models else 0.0
    return out


def stage_costs(one: dict, setup: dict[str, float]) -> dict[str, StageCost]:
    """Core-seconds per content second from the 1-worker run (one actor per model stage)."""
    costs = {}
    for name in STAGES:
        content = one["content_s"][CONTENT[name]] or 1.0
        work = max(0.0, one["stage_s"][name] - setup[name])
        costs[name] = StageCost(per_content_s=work / content, setup_s=setup[name])
    return costs


def simulate_cluster(costs: dict[str, StageCost], nodes: int = 100, cpus: float = 16.0,
                     videos: int = 10_000, long_videos: int = 10) -> dict:
    """The runner and the one-wave-at-a-time baseline, on `nodes` x `cpus` with a realistic corpus."""
    shape = corpus(videos, long_videos=long_videos, long_s=(3600.0, 7200.0))
    hours = sum(v.duration_s for v in shape) / 3600
    out = {"nodes": nodes, "cpus_per_node": cpus, "videos": len(shape), "video_hours": hours}
    for label, config in (("now", RunnerConfig()),
                          ("one_wave_at_a_time", RunnerConfig(waves_in_flight=1, rows_per_actor=1))):
        t0 = time.perf_counter()
        result = simulate(shape, costs, Cluster(nodes, cpus), config)
        out[label] = {**result.summary(), "simulated_in_s": time.perf_counter() - t0}
    return out


def cost_model(costs: dict[str, StageCost], content_per_video_s: dict[str, float],
               utilization: float, hours: float = 1000.0, cpus: float = 16.0,
               nodes: tuple[int, ...] = (1, 10, 100)) -> str:
    """Markdown: core-hours per stage for `hours` of video and wall hours on N nodes of `cpus`."""
    per_video_s = {n: c.per_content_s * content_per_video_s[CONTENT[n]] for n, c in costs.items()}
    total = sum(per_video_s.values()) * hours  # core-hours
    lines = [f"### Cost model: {hours:,.0f} hours of video", "",
             "| stage | core-s per video-s | core-hours |", "|---|---|---|"]
    for name, value in per_video_s.items():
        lines.append(f"| {name} | {value:.3f} | {value * hours:,.0f} |")
    lines += [f"| **total** | {sum(per_video_s.values()):.3f} | **{total:,.0f}** |", "",
              f"Wall time at {utilization:.0%} utilization (the 100-node simulation), "
              f"{cpus:g} CPUs per node:", "", "| nodes | CPUs | wall hours |", "|---|---|---|"]
    for n in nodes:
        lines.append(f"| {n} | {n * cpus:g} | {total / (n * cpus * utilization):,.1f} |")
    lines += ["", "Content ratios measured on the bench corpus: "
              + ", ".join(f"{k} {v:.2f} s per video-s" for k, v in content_per_video_s.items())
              + ". Scale the scenes and faces rows by the decode cost of your resolution "
              "(scenes decodes at reduced width; faces tracks at full resolution)."]
    return "\n".join(lines)


def run(files: list[str] | None = None, out: str | Path | None = None, repeats: int = 2) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if repeats < 1:
        raise ValueError(f"bench scale: repeats must be at least 1, got {repeats}")
    paths = inputs(files)
    work = Path(out or tempfile.mkdtemp(prefix="emoforge-bench-scale-"))
    runs, ceilings = [], []
    for r in range(repeats):  # 1, 2, ceiling, 1, 2, ceiling, ...: each fastest of its kind
        runs += [curate_with(paths, work / f"catalog-{n}-{r}", n) for n in (1, 2)]
        ceilings.append(machine_speedup())
    one, two = (min((x for x in runs if x["workers"] == n), key=lambda x: x["wall_s"])
                for n in (1, 2))
    ceiling = max(ceilings)
    setup = setup_seconds()
    costs = stage_costs(one, setup)
    phases = one["phases_s"]
    serial = sum(v for k, v in phases.items() if k not in ("ray", "waves"))
    sim = simulate_cluster(costs)
    per_video = {k: v / one["content_s"]["video"] for k, v in one["content_s"].items()}
    model = cost_model(costs, per_video, sim["now"]["utilization"])
    (work / "cost_model.md").write_text(model + "\n")
    return {
        "inputs": len(paths), "video_s": one["video_s"], "runs": runs, "repeats": repeats,
        "machine_speedups_2_processes": ceilings,
        "speedup_2_workers": one["wall_s"] / two["wall_s"],
        "scaling_efficiency": one["wall_s"] / two["wall_s"] / 2, "goal_efficiency": 0.9,
        "machine_speedup_2_processes": ceiling,  # the best of the run's ceilings: a CPU-bound loop
        "efficiency_of_machine_ceiling": one["wall_s"] / two["wall_s"] / ceiling,
        "serial_s_1_worker": serial, "serial_fraction_1_worker": serial / one["wall_s"],
        "amdahl_max_speedup": one["wall_s"] / max(serial, 1e-9),
        "setup_s": setup, "costs": {k: vars(v) for k, v in costs.items()},
        "simulation": sim, "cost_model_md": model, "cost_model_file": str(work / "cost_model.md"),
    }
