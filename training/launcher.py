"""Runs the training loop locally (one worker, no Ray) or under Ray Train's TorchTrainer (DDP,
Train V2): the only training module that imports Ray.

Resume under Ray: run again with the same spec. Every rank reads the newest complete checkpoint
under `train.out` (which must be shared storage on a multi-node cluster); Ray Train's own run
folder (`<out>/ray/<name>`) keeps the reported metrics.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from training.config import TrainSpec, from_resolved
from training.trainer import Worker, train

log = logging.getLogger(__name__)


def run(spec: TrainSpec, resume: str | None = None) -> dict:
    """Train per `spec` with spec.train.num_workers workers (1: in this process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = absolute_paths(spec)
    if spec.train.num_workers == 1 and not spec.train.ray_address:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return train(spec, resume, Worker(device=device))
    return run_on_ray(spec, resume)


def absolute_paths(spec: TrainSpec) -> TrainSpec:
    """Ray Train workers change directory: every path absolute."""
    t = spec.train
    return replace(spec, train=replace(
        t, catalog=str(Path(t.catalog).resolve()), out=str(Path(t.out).resolve()),
        init_from=str(Path(t.init_from).resolve()) if t.init_from else ""))


def run_on_ray(spec: TrainSpec, resume: str | None) -> dict:
    import ray
    import torch
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=spec.train.ray_address or None, include_dashboard=False)
    use_gpu = torch.cuda.is_available() or bool(ray.cluster_resources().get("GPU"))
    out = Path(spec.train.out)
    trainer = TorchTrainer(
        _ray_worker_loop,
        train_loop_config={"spec": spec.resolved(), "resume": str(Path(resume).resolve()) if resume else None},
        scaling_config=ScalingConfig(num_workers=spec.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=out.name or "train", storage_path=str(out / "ray"),
                             failure_config=FailureConfig(max_failures=2)),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    from training import checkpoint as ckpt

    latest = ckpt.latest(out)
    return {"steps": metrics.get("step", 0), "last_metrics": metrics,
            "checkpoint": str(latest) if latest else None, "workers": spec.train.num_workers}


def _ray_worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    spec = from_resolved(config["spec"])
    context = ray.train.get_context()
    worker = RayWorker(rank=context.get_world_rank(), world_size=context.get_world_size(),
                       device=ray.train.torch.get_device())
    train(spec, config["resume"], worker)


class RayWorker(Worker):
    """A Ray Train rank: DDP around the model, metrics reported to Ray (a barrier)."""

    def wrap(self, model):
        import ray.train.torch

        # Every condition stays in the graph when dropped (masks, not skipped branches), so DDP
        # needs no unused-parameter search.
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})

    def report(self, metrics: dict) -> None:
        import ray.train

        ray.train.report({k: v for k, v in metrics.items() if v is not None})
