"""The cluster simulation (pipeline/run/simulate.py) against hand-computed schedules, the runner's
scheduling functions (pipeline/run/plan.py), and the 100-node question it answers."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.run import plan as planning
from pipeline.run.runner import RunnerConfig
from pipeline.run.simulate import Cluster, StageCost, Video, corpus, simulate


def _video(i: int, seconds: float, clips: tuple[float, ...] = ()) -> Video:
    return Video(f"v{i:03d}", seconds, int(seconds * 1000), clips or (seconds,), tuple((c,) for c in clips or (seconds,)))


def test_one_wave_of_tasks_matches_a_hand_schedule():
    """ingest only (tasks of 0.5 CPU): 1 node x 2 CPUs = 4 slots; rows 8, 4, 4, 4, 4, 4 s of work
    longest first: slot A 8; B, C, D 4 then 4, 4 on two of them; makespan 8, no idle but
    the 4 s slot that finished early: work 28 of capacity 2 CPUs x 8 s x 2 slots/CPU."""
    videos = [_video(0, 8.0)] + [_video(i, 4.0) for i in range(1, 6)]
    costs = {"ingest": StageCost(per_content_s=1.0)}
    result = simulate(videos, costs, Cluster(1, 2.0), RunnerConfig(num_shards=1, wave_videos=100),
                      stage_names=("ingest",))
    assert result.waves == 1
    assert result.makespan_s == pytest.approx(8.0)
    assert result.work_s == pytest.approx(28 * 0.5)  # core-seconds: 0.5 CPU per task
    assert result.utilization == pytest.approx(14.0 / 16.0)
    assert result.tail_idle_s == pytest.approx(2.0)  # one 0.5-CPU slot idle for the last 4 s


def test_actor_pool_pays_setup_and_holds_cpus_until_its_last_row():
    """faces (actors, 1 CPU each; setup 2 s) over one clip of 10 s and one of 2 s after a
    1 s ingest+scenes: actors load for 2 s, the short clip's actor waits 8 s for the long one."""
    videos = [_video(0, 12.0, clips=(10.0, 2.0))]
    costs = {"ingest": StageCost(per_row_s=0.5), "scenes": StageCost(per_row_s=0.5),
             "faces": StageCost(per_content_s=1.0, setup_s=2.0)}
    result = simulate(videos, costs, Cluster(1, 2.0),
                      RunnerConfig(num_shards=1, rows_per_actor=1, model_workers="actors"),
                      stage_names=("ingest", "scenes", "faces"))
    assert result.makespan_s == pytest.approx(1.0 + 2.0 + 10.0)
    assert result.setup_s == pytest.approx(2 * 2.0 * 1.0)  # core-seconds: 1 CPU per actor
    assert result.held_idle_s == pytest.approx(8.0 * 1.0)


def test_task_workers_keep_their_set_up_across_waves():
    """Two waves one by one, each one video with one 4 s clip: ingest+scenes 1 s, then faces
    (setup 2 s). Actor pools load the models in each wave: 2 x (1 + 2 + 4) = 14 s. Task workers
    load them once: 1 + 2 + 4, then 1 + 4: 12 s, and half the set-up time."""
    ids = _ids_in_shards(1, 2)
    videos = [Video(vid[0], 4.0, 4000, (4.0,), ((4.0,),)) for vid in ids]
    costs = {"ingest": StageCost(per_row_s=0.5), "scenes": StageCost(per_row_s=0.5),
             "faces": StageCost(per_content_s=1.0, setup_s=2.0)}
    base = RunnerConfig(num_shards=2, wave_videos=1, waves_in_flight=1)
    stages = ("ingest", "scenes", "faces")
    actors = simulate(videos, costs, Cluster(1, 2.0), dataclasses.replace(base, model_workers="actors"),
                      stage_names=stages)
    tasks = simulate(videos, costs, Cluster(1, 2.0), base, stage_names=stages)
    assert (actors.waves, tasks.waves) == (2, 2)
    assert actors.makespan_s == pytest.approx(14.0)
    assert tasks.makespan_s == pytest.approx(12.0)
    assert (actors.setup_s, tasks.setup_s) == (pytest.approx(2 * 2.0), pytest.approx(2.0))


def _ids_in_shards(per_shard: int, shards: int) -> list[list[str]]:
    found: list[list[str]] = [[] for _ in range(shards)]
    i = 0
    while any(len(f) < per_shard for f in found):
        vid = f"v{i:03d}"
        bucket = found[planning_shard(vid, shards)]
        if len(bucket) < per_shard:
            bucket.append(vid)
        i += 1
    return found


def planning_shard(video_id: str, shards: int) -> int:
    from pipeline.stages.ingest.hashing import shard_of

    return shard_of(video_id, shards)


def test_waves_in_flight_fill_a_barrier():
    """Two waves (one shard each), each a 10 s and a 1 s video through ingest+scenes (one task
    of 1 CPU per video) on 2 CPUs. One by one: each wave waits 10 s for its long video, 20 s in
    all. Two in flight: the second wave's long video starts when the first wave's short one
    ends (t = 1) and its short one when the first wave ends (t = 10): 11 s."""
    ids = _ids_in_shards(2, 2)
    videos = [Video(vid, s, int(s * 1000), (s,), ((s,),))
              for pair in ids for vid, s in zip(pair, (10.0, 1.0))]
    costs = {"ingest": StageCost(), "scenes": StageCost(per_content_s=1.0)}
    base = RunnerConfig(num_shards=2, wave_videos=2)
    one = simulate(videos, costs, Cluster(1, 2.0), dataclasses.replace(base, waves_in_flight=1),
                   stage_names=("ingest", "scenes"))
    two = simulate(videos, costs, Cluster(1, 2.0), dataclasses.replace(base, waves_in_flight=2),
                   stage_names=("ingest", "scenes"))
    assert one.waves == two.waves == 2
    assert one.work_s == pytest.approx(two.work_s) == pytest.approx(22.0)
    assert one.makespan_s == pytest.approx(20.0)
    assert two.makespan_s == pytest.approx(11.0)


def test_pool_size_rules():
    # tasks: bounded by CPUs and rows
    assert planning.pool_size(0.5, 2, 10, 16, False) == 4
    assert planning.pool_size(1.0, 1600, 10, 16, False) == 10
    # actors: fair share of the cluster, beyond it one actor per rows_per_actor rows
    assert planning.pool_size(1.0, 1600, 160, 16, True, sharing=50) == 32
    assert planning.pool_size(1.0, 1600, 6400, 16, True, sharing=50) == 400
    assert planning.pool_size(1.0, 2, 3, 16, True, sharing=1) == 2  # one machine: both CPUs


def test_wave_order_and_size():
    work = {0: {"a": 0}, 1: {"b": 0}, 2: {"c": 0}}
    assert planning.wave_order([[0], [1], [2]], work, {"a": 1, "b": 30, "c": 5}) == [[1], [2], [0]]
    assert planning.wave_size(32, 1600, 0.0) == 32
    assert planning.wave_size(32, 1600, 0.25) == 400
    assert planning.in_flight(0, 2) == 1 and planning.in_flight(0, 1600) == 51
    assert planning.in_flight(3, 2) == 3


def test_hundred_nodes_keep_utilization_above_85_percent():
    """A 100-node x 4-CPU cluster and 2,500 videos of 1-10 minutes plus three of 1-2 hours (the
    shape of the 16-CPU question at a quarter of the size): the default runner keeps more than
    85% of the CPUs on useful work; running waves one by one does not."""
    from jobs.bench.scale import DEFAULT_COSTS

    videos = corpus(2500, long_videos=3, long_s=(3600.0, 7200.0), seed=1)
    cluster = Cluster(100, 4.0)
    now = simulate(videos, DEFAULT_COSTS, cluster, RunnerConfig())
    old = simulate(videos, DEFAULT_COSTS, cluster,
                   RunnerConfig(waves_in_flight=1, rows_per_actor=1, model_workers="actors"))
    assert now.work_s == pytest.approx(old.work_s)
    assert now.utilization > 0.85, now.summary()
    assert old.utilization < 0.5, old.summary()


def test_a_long_videos_scene_windows_run_in_parallel():
    """300 s through ingest+scenes (1 core-s per video second) on 4 CPUs: the default scene
    windows (120 s, 2 s overlap) are [0, 122), [118, 242) and [238, 300): 122, 124 and 62 s of
    decode as three parallel tasks, so the run takes 124 s instead of 300 s, for 8 s of overlap."""
    videos = [_video(0, 300.0)]
    costs = {"ingest": StageCost(), "scenes": StageCost(per_content_s=1.0)}
    config = RunnerConfig(num_shards=1)
    split = simulate(videos, costs, Cluster(1, 4.0), config, stage_names=("ingest", "scenes"))
    whole = simulate(videos, costs, Cluster(1, 4.0), config, stage_names=("ingest", "scenes"), parts={})
    assert whole.makespan_s == pytest.approx(300.0)
    assert split.makespan_s == pytest.approx(124.0)
    assert split.stage_work_s["scenes"] == pytest.approx(308.0)
    assert split.longest_chain_s == pytest.approx(124.0)
