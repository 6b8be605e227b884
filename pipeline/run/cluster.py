"""The driver's Ray: attach or start it, Ray Data's settings for a run, the cluster's size."""

from __future__ import annotations

import os

from pipeline.run.config import RunnerConfig


def init_ray(config: RunnerConfig) -> None:
    import ray  # heavy: loaded when a run starts, not when the CLI imports the runner

    if ray.is_initialized():
        return
    # `ray job submit` sets RAY_ADDRESS for the job's driver: attach to that cluster
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False)


def ray_connected() -> bool:
    """Whether this process is connected to a Ray (started here or attached)."""
    import ray  # heavy: see init_ray

    return ray.is_initialized()


def stop_ray() -> None:
    """Disconnect from Ray (and stop the local Ray this process started), e.g. between runs of
    different sizes in one process."""
    import ray  # heavy: see init_ray

    if ray.is_initialized():
        ray.shutdown()


def configure_data(config: RunnerConfig) -> None:
    """Ray Data settings of this driver: progress bars, no per-operator reservations, and
    retries of exceptions that escape the per-row boundary (a model that fails to load, a
    staging write that fails), at most `max_attempts - 1` times."""
    import ray.data  # heavy: see init_ray

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


def cluster_cpus() -> float:
    """CPUs of the Ray cluster this driver is attached to (at least 1)."""
    import ray  # heavy: see init_ray

    return max(1.0, float(ray.cluster_resources().get("CPU", 1.0)))


def cluster_gpus() -> float:
    import ray  # heavy: see init_ray

    return float(ray.cluster_resources().get("GPU", 0.0))
