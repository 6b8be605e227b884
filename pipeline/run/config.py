"""The [runner] section of a job spec, and the licence check a commercial-only run makes."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.stages.contract import Stage


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


def check_commercial(stages: list[Stage]) -> None:
    bad = [f"{st.name}: {spec.key} ({spec.license})" for st in stages for spec in st.model_specs()
           if not spec.commercial_ok]
    if bad:
        raise LicenseError(
            "--commercial-only: these configured backends use restricted weights: " + "; ".join(bad)
            + ". Choose other backends or leave those stages out (e.g. --set "
            "analyze.enabled='[\"audio\", \"lip_sync\", \"emotion\"]')"
        )
