"""`emoforge bench simulate`: the runner's planning code on a simulated 100-node x 16-CPU cluster
(pipeline/run/simulate.py) with the per-stage costs `bench scale` measured (jobs.bench.scale
DEFAULT_COSTS), for three corpora of 1-10 minute videos: about 670 hours with ten of 1-2 hours,
about 100 hours with two, and about 100 hours without. Reports utilization and where the idle
time goes (model set-up, actors waiting on stragglers, stage barriers, the job's tail), for the
runner and for a baseline that runs one wave at a time with one actor per row."""

from __future__ import annotations

from jobs.bench.scale import DEFAULT_COSTS, simulate_cluster

CORPORA = ((10_000, 10), (1_500, 2), (1_500, 0))  # (videos of 1-10 minutes, videos of 1-2 hours)


def run() -> dict:
    keys = ("utilization", "makespan_s", "longest_chain_s", "setup_fraction", "held_idle_fraction",
            "barrier_idle_fraction", "tail_idle_fraction", "waves", "in_flight")
    out = {"costs": {k: vars(v) for k, v in DEFAULT_COSTS.items()}, "runs": []}
    for videos, long_videos in CORPORA:
        result = simulate_cluster(DEFAULT_COSTS, videos=videos, long_videos=long_videos)
        out["runs"].append({
            "videos": result["videos"], "long_videos": long_videos,
            "video_hours": round(result["video_hours"], 1),
            "now": {k: result["now"][k] for k in keys},
            "one_wave_at_a_time": {k: result["one_wave_at_a_time"][k] for k in keys},
        })
    return out
