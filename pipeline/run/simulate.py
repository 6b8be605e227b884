"""A discrete-event simulation of a curate run on a cluster, driven by the runner's own planning
code (pipeline/run/plan.py: shards, plan, waves and their order, stage groups, pool sizes; stage
classes' CPUs and compute kinds) with per-stage costs measured by `emoforge bench scale`.

What it models, as pipeline/run/runner.py runs it: up to `in_flight` waves at once; in a wave the
stage groups run one after another (a Ray Data dataset each, a barrier between them), then the
wave's shards commit. A group runs each row as one task of `cpus` CPUs (released between rows,
so waves interleave in Ray's queue); a model stage's task loads its models (`setup_s`) only when
its node has no idle worker process that set the stage up before (Ray reuses processes, and they
keep their set-up stages for the run). With `model_workers = "actors"`, a model group instead
starts a pool of actors that load their models, take rows until none are left and hold their
CPUs until the group's last row is done. A row that its stage splits into parts (Stage.parts: a
long video's scene windows) is one task per part, run in parallel. Resource requests are served
oldest first, on the node with the most free CPUs.

Costs are core-seconds per row plus per second of the row's content (video seconds for videos
rows, clip seconds for clips, track seconds for tracks). Nothing here imports Ray.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from pipeline.run import plan as planning
from pipeline.stages.ingest.hashing import shard_of
from pipeline.stages.registry import load_stage_class
from pipeline.stages.scenes.detect import ScenesConfig, window_seconds

LEVEL_OF = {"videos": 0, "clips": 1, "tracks": 2}


@dataclass(frozen=True)
class StageCost:
    """Measured cost of one stage: core-seconds per row, per content second, per worker set-up."""

    per_row_s: float = 0.0
    per_content_s: float = 0.0
    setup_s: float = 0.0


@dataclass(frozen=True)
class Video:
    """One simulated input: its duration (s), size (bytes), shots (s) and face tracks (s) per shot."""

    video_id: str
    duration_s: float
    size_bytes: int
    clips: tuple[float, ...]
    tracks: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Cluster:
    nodes: int = 100
    cpus_per_node: float = 16.0

    @property
    def cpus(self) -> float:
        return self.nodes * self.cpus_per_node


@dataclass
class Result:
    """Core-seconds by use and the run's wall time (s); `utilization` = useful work / capacity."""

    makespan_s: float = 0.0
    cluster_cpus: float = 0.0
    work_s: float = 0.0  # rows being processed
    setup_s: float = 0.0  # actors loading models
    held_idle_s: float = 0.0  # actors idle, waiting for their pool's slowest rows
    barrier_idle_s: float = 0.0  # free CPUs while stage groups waited to start (wave barriers)
    tail_idle_s: float = 0.0  # free CPUs once every wave's last stage group had started
    waves: int = 0
    in_flight: int = 0
    wave_videos: int = 0
    longest_chain_s: float = 0.0  # the longest single video's work through every stage
    stage_work_s: dict[str, float] = field(default_factory=dict)

    @property
    def utilization(self) -> float:
        return self.work_s / max(1e-9, self.cluster_cpus * self.makespan_s)

    def summary(self) -> dict:
        out = {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        out["utilization"] = round(self.utilization, 4)
        capacity = self.cluster_cpus * self.makespan_s
        for key in ("setup_s", "held_idle_s", "barrier_idle_s", "tail_idle_s"):
            out[key.replace("_s", "_fraction")] = round(getattr(self, key) / max(capacity, 1e-9), 4)
        return out


def corpus(videos: int = 5000, long_videos: int = 10, seed: int = 0, min_s: float = 60.0,
           max_s: float = 600.0, long_s: tuple[float, float] = (3600.0, 3 * 3600.0),
           shot_mean_s: float = 8.0) -> list[Video]:
    """A talking-head corpus: durations log-uniform in [min_s, max_s] plus `long_videos` of
    1-3 hours; shots exponential (mean `shot_mean_s`, at least 1 s); per shot 0, 1 or 2 face
    tracks (10%, 80%, 10%) covering 60-100% of it; about 2 Mbit/s (x0.5-2)."""
    rng = random.Random(seed)
    out = []
    for i in range(videos + long_videos):
        if i < long_videos:
            duration = rng.uniform(*long_s)
        else:
            duration = math.exp(rng.uniform(math.log(min_s), math.log(max_s)))
        clips, left = [], duration
        while left > 0:
            shot = min(left, max(1.0, rng.expovariate(1.0 / shot_mean_s)))
            clips.append(shot)
            left -= shot
        tracks = tuple(tuple(c * rng.uniform(0.6, 1.0) for _ in range(rng.choices((0, 1, 2), (1, 8, 1))[0]))
                       for c in clips)
        size = int(duration * 250_000 * rng.uniform(0.5, 2.0))
        out.append(Video(f"sim{i:06d}", duration, size, tuple(clips), tracks))
    rng.shuffle(out)
    return out


def _rows(video: Video, level: str) -> list[float]:
    """Content seconds of a video's rows at a level."""
    if level == "videos":
        return [video.duration_s]
    if level == "clips":
        return list(video.clips)
    return [t for per_clip in video.tracks for t in per_clip]


class _Group:
    """One stage group of one wave in flight: its rows (core-seconds), pool, and progress."""

    def __init__(self, wave: int, rows: list[float], cpus: float, pool: int, actors: bool, setup_s: float,
                 key: tuple = ()):
        self.wave, self.cpus, self.actors, self.setup_s = wave, cpus, actors, setup_s
        self.key = key  # the stage group: task workers keep its set-up across waves
        self.queue = deque(rows)
        self.left = len(rows)
        self.pool = pool
        self.holding: list[tuple[int, float]] = []  # actors: (node, time their last row ended)


class Simulation:
    """The event loop (see the module docstring)."""

    def __init__(self, cluster: Cluster):
        self.free = [cluster.cpus_per_node] * cluster.nodes
        self.cluster = cluster
        self.now = 0.0
        self.events: list = []
        self.seq = 0
        self.pending: deque = deque()  # (group, kind) resource requests, oldest first
        self.result = Result(cluster_cpus=cluster.cpus)
        self.idle_mark = 0.0
        self.all_started = False
        self.smallest_request = 0.0  # CPUs of the smallest worker a run asks for (set by simulate)
        self.set_up: dict[tuple, int] = {}  # (node, group key): worker processes set up for it
        self.running: dict[tuple, int] = {}  # (node, group key): its tasks running now

    def at(self, time: float, action, *args) -> None:
        self.seq += 1
        heapq.heappush(self.events, (time, self.seq, action, args))

    def request(self, group: _Group, count: int) -> None:
        self.pending.extend([group] * count)
        self.dispatch()

    def dispatch(self) -> None:
        """Place pending requests oldest first on the node with the most free CPUs; a request
        that does not fit there fits nowhere and waits (others pass)."""
        waiting = deque()
        node = max(range(len(self.free)), key=self.free.__getitem__)
        while self.pending and self.free[node] + 1e-9 >= self.smallest_request:
            group = self.pending.popleft()
            if not group.queue:
                continue  # nothing left for this worker to do
            if self.free[node] + 1e-9 < group.cpus:
                waiting.append(group)
                continue
            self.account_idle()
            self.free[node] -= group.cpus
            if group.actors:
                self.result.setup_s += group.setup_s * group.cpus
                self.at(self.now + group.setup_s, self.actor_take, group, node)
            else:
                self.run_row(group, node)
            node = max(range(len(self.free)), key=self.free.__getitem__)
        waiting.extend(self.pending)
        self.pending = waiting

    def run_row(self, group: _Group, node: int) -> None:
        """A row on a worker. A model stage's task pays its set-up only when every process of
        the node that already set the stage up is busy (processes are reused for the run)."""
        cost = group.queue.popleft()
        self.result.work_s += cost * group.cpus
        setup = 0.0
        if not group.actors and group.setup_s:
            where = (node, group.key)
            self.running[where] = self.running.get(where, 0) + 1
            if self.running[where] > self.set_up.get(where, 0):
                self.set_up[where] = self.running[where]
                setup = group.setup_s
                self.result.setup_s += setup * group.cpus
        self.at(self.now + setup + cost, self.row_done, group, node)

    def actor_take(self, group: _Group, node: int) -> None:
        if group.queue:
            self.run_row(group, node)
        else:
            group.holding.append((node, self.now))
            self.check_group(group)

    def row_done(self, group: _Group, node: int) -> None:
        group.left -= 1
        if not group.actors and group.setup_s:
            self.running[(node, group.key)] -= 1
        if group.actors:
            self.actor_take(group, node)
        else:
            self.account_idle()
            self.free[node] += group.cpus
            if group.queue:
                self.pending.append(group)
            self.check_group(group)
            self.dispatch()

    def check_group(self, group: _Group) -> None:
        if group.left:
            return
        self.account_idle()
        for node, since in group.holding:
            self.result.held_idle_s += (self.now - since) * group.cpus
            self.free[node] += group.cpus
        group.holding = []
        self.on_group_done(group)
        self.dispatch()

    def account_idle(self) -> None:
        """Charge free CPUs since the last change to barrier or tail idle time."""
        idle = sum(self.free) * (self.now - self.idle_mark)
        if self.all_started:
            self.result.tail_idle_s += idle
        else:
            self.result.barrier_idle_s += idle
        self.idle_mark = self.now

    def on_group_done(self, group: _Group) -> None:  # set by simulate()
        raise NotImplementedError

    def run(self) -> None:
        while self.events:
            time, _, action, args = heapq.heappop(self.events)
            self.now = time
            action(*args)
        self.account_idle()
        self.result.makespan_s = self.now


def scene_windows(duration_s: float) -> list[float]:
    """Seconds each of a video's scene-window tasks decodes, with the default scenes config
    (pipeline/stages/scenes/detect.py: the stage's own `windows`)."""
    return window_seconds(duration_s, ScenesConfig())


def simulate(videos: list[Video], costs: dict[str, StageCost], cluster: Cluster,
             runner, stage_names: tuple[str, ...] = ("ingest", "scenes", "faces", "analyze"),
             parts=None) -> Result:
    """Run `videos` through `stage_names` on `cluster` as the runner would with RunnerConfig
    `runner` (num_shards, wave_videos, videos_per_cpu, waves_in_flight, rows_per_actor).
    `parts`: {stage: content seconds -> content seconds of each part} for stages that split a
    row into parallel tasks (Stage.parts; default: scenes' windows); each part is a row of its
    own, the rest of the chain's work on that row another (the chain waits for its parts)."""
    parts = {"scenes": scene_windows} if parts is None else parts

    classes = [load_stage_class(n) for n in stage_names]
    keys = [planning.StageKey(n, (n,), {n: "sim"}) for n in stage_names]  # no commits: a new catalog
    rows = [{"video_id": v.video_id, "shard": shard_of(v.video_id, runner.num_shards)} for v in videos]
    work = planning.plan(rows, {}, {}, keys, set())
    by_id = {v.video_id: v for v in videos}
    size = planning.wave_size(runner.wave_videos, cluster.cpus, runner.videos_per_cpu)
    waves = planning.wave_order(planning.waves(work, size), work,
                                {v.video_id: float(v.size_bytes) for v in videos})
    flight = planning.in_flight(runner.waves_in_flight, cluster.cpus)
    sim = Simulation(cluster)
    sim.smallest_request = min(max(classes[i].num_cpus for i in group) for group in planning.chains(classes))
    res = sim.result
    res.waves, res.in_flight, res.wave_videos = len(waves), flight, size
    res.stage_work_s = dict.fromkeys(stage_names, 0.0)

    def cost(video: Video, index: int, content: float) -> float:
        c = costs[stage_names[index]]
        return c.per_row_s + c.per_content_s * content

    def pieces(index: int, content: float) -> list[float]:
        split = parts.get(stage_names[index])
        return split(content) if split else [content]

    def task_costs(video: Video, group: list[int]) -> list[float]:
        """The group's rows for one video: per level row, its unsplit stages' work as one task
        and each part of a split stage as a task."""
        out = []
        for content in _rows(video, classes[group[0]].level):
            whole = 0.0
            for i in group:
                split = pieces(i, content)
                if len(split) > 1:
                    out.extend(cost(video, i, p) for p in split)
                else:
                    whole += cost(video, i, content)
            out.append(whole)
        return out

    res.longest_chain_s = max(
        (sum(max((cost(v, i, p) for x in _rows(v, classes[i].level) for p in pieces(i, x)), default=0.0)
             for i in range(len(classes)))
         for v in videos), default=0.0)
    plans = {w: planning.wave_groups(classes, work, wave) for w, wave in enumerate(waves)}
    progress = dict.fromkeys(plans, 0)
    upcoming = deque(sorted(plans))
    groups_left = [sum(len(p) for p in plans.values())]

    def start_group(w: int) -> None:
        group, vids = plans[w][progress[w]]
        groups_left[0] -= 1
        if not groups_left[0]:  # every stage of every wave has started: the job's tail
            sim.account_idle()
            sim.all_started = True
        stage_rows = []
        for vid in sorted(vids):
            video = by_id[vid]
            for i in group:
                res.stage_work_s[stage_names[i]] += sum(
                    cost(video, i, p) for x in _rows(video, classes[i].level) for p in pieces(i, x))
            stage_rows.extend(task_costs(video, group))
        stage_rows.sort(reverse=True)  # the runner orders rows longest first
        cpus = max(classes[i].num_cpus for i in group)
        models = classes[group[0]].uses_models
        actors = models and runner.model_workers == "actors"
        pool = planning.pool_size(cpus, cluster.cpus, len(stage_rows), runner.rows_per_actor, models,
                                  min(flight, len(waves)))
        setup = max(costs[stage_names[i]].setup_s for i in group) if models else 0.0
        g = _Group(w, stage_rows, cpus, pool, actors, setup, key=tuple(group))
        if not stage_rows:
            sim.at(sim.now, finish, g)
            return
        sim.request(g, pool)

    def finish(group: _Group) -> None:
        w = group.wave
        progress[w] += 1
        if progress[w] < len(plans[w]):
            start_group(w)
        else:
            admit()

    def admit() -> None:
        if upcoming:
            start_group(upcoming.popleft())

    sim.on_group_done = finish
    for _ in range(min(flight, len(upcoming))):
        admit()
    sim.run()
    return res
