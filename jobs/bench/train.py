"""`emoforge bench train [CATALOG]`: the tiny config's training step against its data loader;
`emoforge bench train --tracks N`: the dataset index's memory on a corpus of N tracks.

Without --tracks, measures in one run on one catalog (default: the demo's, `make demo`): samples
per second of the training step alone (forward, backward, AdamW on batches already in memory), of
the data loader alone (decode, masks, collate) in its second epoch, after the first (up to
COLD_BATCHES batches, also reported) filled the decoded cache, and beside it the same loader
decoding every window from its clip (`[data] decoded_cache_mib = 0`); and of the two together in
the real loop. The goal is a loader at least 3x the step rate, so training never waits on data.
Peak memory is the process's maximum resident set.

With --tracks N, writes a synthetic catalog of N selected 10 s tracks (every per-frame column,
jobs.media.synthetic_catalog.write_training_catalog) and, in a fresh process as a rank would,
builds the train split's WindowDataset and reads its first batch through one loader worker:
the rank's peak RSS over the build and its growth over the RSS before it, the worker's peak RSS
(it unpickles the dataset and reads a batch), the pickled dataset's size, and the seconds to the
first batch; then one process's loader rate (samples/s) over random windows with an empty
frame cache (cold) and with the cache filled (warm), and a single track's read both ways. Run
it for two N: the goal is a peak RSS that grows less than 1.2x from 1,000 to 20,000 tracks
(docs/training-data.md).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLD_BATCHES = 200  # at most this many batches of the loader's first epoch are measured


def run(files: list[str] | None = None, steps: int = 10, batch_size: int = 2,
        tracks: int | None = None) -> dict:
    if tracks is not None:
        if files:
            raise ValueError("bench train --tracks writes its own catalog and takes no CATALOG")
        return index_memory(tracks, batch_size=batch_size)
    return loader_and_step(files, steps, batch_size)


def loader_and_step(files: list[str] | None = None, steps: int = 10, batch_size: int = 2) -> dict:
    """The tiny config's step, loader and loop rates on a curated catalog (module doc)."""
    import torch  # heavy: torch

    from training import config  # heavy: training imports torch
    from training.batching import loader_throughput  # heavy: training imports torch
    from training.datasets import build_datasets  # heavy: training imports torch
    from training.diffusion import diffusion_loss, make_scheduler, sample_generator  # heavy: torch
    from training.models import build_codec, build_model  # heavy: training imports torch
    from training.trainer import train  # heavy: training imports torch

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
        # the first epoch fills the decoded cache (each clip decoded whole at its first window)
        first_epoch = max(2, min(dataset.num_batches(batch_size) - 1, COLD_BATCHES))
        loader_cold = loader_throughput(dataset, batch_size, batches=first_epoch)
        loader = loader_throughput(dataset, batch_size, batches=steps, epoch=1)
        # the floor beside it: every window's frames decoded from its clip (no decoded cache)
        per_window = build_datasets(replace(spec, data=replace(spec.data, decoded_cache_mib=0)))
        loader_per_window = loader_throughput(per_window["train"], batch_size, batches=steps)

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
        "decoded_cache": dataset.decoded_fits(),
        "loader_first_epoch_samples_per_s": loader_cold["samples_per_s"],
        "loader_per_window_decode_samples_per_s": loader_per_window["samples_per_s"],
        "loader_over_step": loader["samples_per_s"] / step_rate,
        "loader_goal": "loader_over_step >= 3",
        "loop_samples_per_s": loop["steps"] * batch_size / loop_seconds,
        "loop_note": "train() end to end, including dataset building and one checkpoint",
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def index_memory(tracks: int, seconds: float = 10.0, batch_size: int = 2,
                 folder: str | None = None) -> dict:
    """The dataset index's memory and time to the first batch on a synthetic catalog of
    `tracks` tracks of `seconds` (written into `folder`, default a temporary one, removed)."""
    from jobs.media.synthetic_catalog import write_training_catalog  # lazy: measured rank

    if tracks < 1:
        raise ValueError(f"--tracks must be >= 1, got {tracks}")
    work = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="emoforge-bench-index-"))
    try:
        started = time.perf_counter()
        root = work / "catalog"
        ids = write_training_catalog(root, tracks, seconds=seconds)
        write_seconds = time.perf_counter() - started
        frames_bytes = sum(f.stat().st_size for f in (root / "frames").glob("*.parquet"))
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        rank = context.Process(target=_rank, args=(str(root), ids, batch_size, str(work), queue))
        rank.start()  # a fresh process: a rank before its dataset
        result = queue.get()
        rank.join()
        if isinstance(result, str):
            raise RuntimeError(f"the measuring process failed: {result}")
    finally:
        if folder is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"tracks": tracks, "track_seconds": seconds, "frame_rows": tracks * round(seconds * 25),
            "frames_table_mib": frames_bytes / 2**20, "catalog_write_seconds": write_seconds,
            **result,
            "goal": "peak_rss_rank_mib and peak_rss_worker_mib grow < 1.2x from 1,000 to 20,000 "
                    "tracks"}


def _rank(root: str, ids: list[str], batch_size: int, work: str, queue) -> None:
    """In a fresh process: `_measure`'s figures (or its error's text) into `queue`."""
    try:
        queue.put(_measure(root, ids, batch_size, Path(work)))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def _measure(root: str, ids: list[str], batch_size: int, work: Path,
             samples: int = 40) -> dict:
    """Build the train split's dataset, then read its first batch through one spawned loader
    worker; memory from psutil and the kernel's peak (VmHWM). Then, in this process, the
    loader's rate over `samples` windows of epoch 1 (spread over the corpus) with an empty frame
    cache (cold) and again in fresh process state with the cache filled (warm), and single
    track reads both ways. Frame caches are folders of `work`."""
    import numpy as np  # lazy: measured rank
    import psutil  # lazy: measured rank
    import pyarrow as pa  # lazy: measured rank

    from training.data import DataConfig, WindowDataset  # heavy: training imports torch
    from training.frame_table import FrameReader  # heavy: training imports torch

    me = psutil.Process()
    reset = _reset_peak()
    before = me.memory_info().rss
    started = time.perf_counter()
    selection = pa.table({"track_id": ids})
    dataset = WindowDataset(root, selection, DataConfig(), split="train",
                            frame_cache=work / "cache-worker")
    build_seconds = time.perf_counter() - started
    peak = _peak_rss(os.getpid())
    after = me.memory_info().rss
    pickled = len(pickle.dumps(dataset))
    started = time.perf_counter()
    loader = dataset.loader(0, batch_size, num_workers=1)
    iterator = iter(loader)
    next(iterator)
    first_batch = time.perf_counter() - started
    workers = me.children(recursive=True)
    worker_peak = max((_peak_rss(w.pid) for w in workers), default=0)
    worker_rss = max((w.memory_info().rss for w in workers), default=0)
    del iterator, loader
    rates = _loader_rates(WindowDataset(root, selection, DataConfig(), split="train",
                                        frame_cache=work / "cache-loader"), samples)
    reads: dict[str, list[float]] = {"cold": [], "warm": []}
    cfg = dataset.config
    for i, track in enumerate(np.random.default_rng(0).choice(len(dataset.tracks), 20,
                                                               replace=False)):
        t = dataset.tracks[int(track)]
        for phase in ("cold", "warm"):  # an empty frame cache, then the one the cold read filled
            reader = FrameReader(root, cfg.expression_dim, cfg.emotion_classes,
                                 cache_dir=work / "cache-reads" / str(i))
            started = time.perf_counter()
            reader.track_arrays(t.track_id, t.rows, t.emotion_backend)
            reads[phase].append(time.perf_counter() - started)
    mib = 2**20
    return {"train_tracks": len(dataset.tracks), "build_seconds": build_seconds,
            "peak_rss_rank_mib": peak / mib, "peak_rss_rank_build_growth_mib": (peak - before) / mib,
            "rss_rank_index_mib": (after - before) / mib, "rss_before_build_mib": before / mib,
            "peak_rss_reset": reset, "peak_rss_worker_mib": worker_peak / mib,
            "rss_worker_after_first_batch_mib": worker_rss / mib,
            "pickled_dataset_mib": pickled / mib, "pickled_bytes_per_track": pickled / len(ids),
            "first_batch_seconds_one_worker": first_batch,
            "first_batch_seconds_from_build": build_seconds + first_batch,
            **rates,
            "track_rows_read_seconds_median": float(np.median(reads["cold"])),
            "track_rows_read_cached_seconds_median": float(np.median(reads["warm"])),
            "track_rows_read_note": "one track's per-frame values in fresh process state: with "
                                    "an empty frame cache (its 64k-row row group read from "
                                    "Parquet, compacted and written to the cache), then with "
                                    "the cache holding its row group (mapped)"}


def _loader_rates(dataset, samples: int) -> dict:
    """Samples/s of `dataset[window]` over `samples` windows of epoch 1 in one process: cold
    (an empty frame cache, nothing in process memory) and warm (the cache filled by the cold
    pass, fresh process state again: a pickled copy, as a loader worker receives it)."""
    from training.data import Window  # heavy: training imports torch

    windows = [Window(*(int(v) for v in row)) for row in dataset.windows(1)[:samples]]
    rates = {}
    for phase in ("cold", "warm"):
        fresh = pickle.loads(pickle.dumps(dataset))
        started = time.perf_counter()
        for window in windows:
            fresh[window]
        rates[f"loader_samples_per_s_{phase}"] = len(windows) / (time.perf_counter() - started)
    rates["loader_samples"] = len(windows)
    return rates


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs 5); False where the
    kernel does not allow it (the peak then counts from the process's start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss(pid: int) -> int:
    """Peak resident set (bytes) of a live process: VmHWM of /proc/PID/status (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
