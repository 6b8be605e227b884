"""`emoforge bench train [CATALOG]`: the tiny config's training step against its data loader.

Measures, in one run on one catalog (default: the demo's, `make demo`): samples per second of
the training step alone (forward, backward, AdamW on batches already in memory), of the data
loader alone (decode, masks, collate), and of the two together in the real loop; the goal is a
loader at least 3x the step rate, so training never waits on data. Peak memory is the process's
maximum resident set.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(files: list[str] | None = None, steps: int = 10, batch_size: int = 2) -> dict:
    import torch

    from training import config
    from training.batching import loader_throughput
    from training.datasets import build_datasets
    from training.diffusion import diffusion_loss, make_scheduler, sample_generator
    from training.models import build_codec, build_model
    from training.trainer import train

    root = files[0] if files else "out/demo/catalog"
    if not Path(root).is_dir():
        raise FileNotFoundError(f"catalog {root} does not exist: run `make demo` or give a catalog")
    with tempfile.TemporaryDirectory() as tmp:
        spec = config.load(REPO / "jobs" / "train_tiny.toml",
                           [f"train.catalog={json.dumps(str(root))}",
                            f"train.out={json.dumps(tmp)}",
                            f"train.batch_size={batch_size}", f"train.max_steps={steps}",
                            "train.validate_every=0", f"train.checkpoint_every={steps}"])
        dataset = build_datasets(spec)["train"]
        loader = loader_throughput(dataset, batch_size, batches=steps)

        torch.manual_seed(0)
        model = build_model(spec.model, spec.data.emotion_classes)
        codec = build_codec(spec.model)
        params = list(model.trainable_parameters(spec.train.stage))
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        scheduler = make_scheduler(spec.diffusion)
        batches = [b for _, b in zip(range(3), dataset.loader(0, batch_size))]
        times = []
        for i in range(steps + 1):
            batch = batches[i % len(batches)]
            started = time.perf_counter()
            gens = [sample_generator(0, i, j) for j in range(batch_size)]
            loss = diffusion_loss(model, codec, scheduler, batch, gens, spec)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i:  # the first step warms up allocations
                times.append(time.perf_counter() - started)
        step_seconds = sorted(times)[len(times) // 2]
        started = time.perf_counter()
        loop = train(spec)
        loop_seconds = time.perf_counter() - started
    step_rate = batch_size / step_seconds
    return {
        "catalog": str(root), "tracks": len(dataset.tracks), "batch_size": batch_size,
        "window": {"size": spec.data.size, "frames": spec.data.frames,
                   "motion_frames": spec.data.motion_frames},
        "torch_threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for p in params),
        "step_seconds_median": step_seconds,
        "step_samples_per_s": step_rate,
        "loader_samples_per_s": loader["samples_per_s"],
        "loader_over_step": loader["samples_per_s"] / step_rate,
        "loader_goal": "loader_over_step >= 3",
        "loop_samples_per_s": loop["steps"] * batch_size / loop_seconds,
        "loop_note": "train() end to end, including dataset building and one checkpoint",
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
