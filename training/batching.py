"""Deterministic windows per (seed, epoch), equal batches per rank, and a loader throughput probe.

Global batch i of an epoch is windows[i*G:(i+1)*G] with G = batch_size * world_size; rank r takes
its contiguous slice [r*b:(r+1)*b], so 2 ranks with batch b see exactly what 1 rank with batch 2b
sees. The last incomplete global batch is dropped, so every rank has the same number of batches
(uneven counts hang DDP). `start_batch` resumes an epoch at a batch index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from training import windows as geo


def windows_per_track(length: int, windows_per_second: float, fps: int = geo.FPS) -> int:
    """Windows a track of `length` frames contributes per epoch (at least one)."""
    return max(1, int(round(length / fps * windows_per_second)))


def draw_windows(lengths: list[int], frames: int, motion: int, margin: int,
                 windows_per_second: float, seed: int, epoch: int) -> np.ndarray:
    """int64[N, 3] (track, start, reference) for an epoch: each track's windows drawn uniformly
    from its valid starts, each with a reference drawn from the frames `margin` away, then all
    shuffled. Depends only on (lengths, sizes, seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    out = []
    for track, length in enumerate(lengths):
        starts = geo.valid_starts(length, frames, motion, margin)
        if not len(starts):
            raise ValueError(f"track {track} ({length} frames) has no window of {frames} + "
                             f"{motion} frames with a reference {margin} frames away")
        for start in rng.choice(starts, size=windows_per_track(length, windows_per_second)):
            ref = geo.draw_reference(rng, length, int(start), frames, motion, margin)
            out.append((track, int(start), ref))
    table = np.asarray(out, np.int64).reshape(-1, 3)
    return table[rng.permutation(len(table))]


class WindowBatches:
    """Batch sampler for torch DataLoader: lists of windows (rows of `windows`, passed through
    `wrap`) for one rank, batches start_batch.. of the epoch."""

    def __init__(self, windows: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, wrap: Callable = lambda *v: v) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size; got batch_size="
                             f"{batch_size}, rank={rank}, world_size={world_size}")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.windows, self.batch_size, self.rank = windows, batch_size, rank
        self.world_size, self.start_batch, self.wrap = world_size, start_batch, wrap
        self.total = len(windows) // (batch_size * world_size)  # batches per rank per epoch

    def __len__(self) -> int:
        return max(0, self.total - self.start_batch)

    def __getitem__(self, item: int | slice):
        """A batch by index (relative to start_batch), or a slice `[k:]` that resumes k batches
        later (a new sampler; only open-ended slices with step 1)."""
        if isinstance(item, slice):
            if item.stop is not None or item.step not in (None, 1):
                raise ValueError("WindowBatches supports slices [k:] only")
            skip = max(0, item.start or 0)
            return WindowBatches(self.windows, self.batch_size, self.rank, self.world_size,
                                 self.start_batch + skip, self.wrap)
        if not 0 <= item < len(self):
            raise IndexError(f"batch {item} of {len(self)}")
        lo = (self.start_batch + item) * self.batch_size * self.world_size
        lo += self.rank * self.batch_size
        return [self.wrap(*(int(v) for v in row)) for row in self.windows[lo: lo + self.batch_size]]

    def __iter__(self) -> Iterator[list]:
        for i in range(len(self)):
            yield self[i]


def loader_throughput(dataset, batch_size: int, batches: int = 10, seconds: float | None = None,
                      num_workers: int = 0, epoch: int = 0) -> dict:
    """Samples per second of `dataset.loader(...)` (decode, masks, collate), measured over
    `batches` batches (or until `seconds` pass), after one warm-up batch that also starts the
    workers. Returns {"samples", "seconds", "samples_per_s", "batches", "num_workers",
    "batch_size"}."""
    loader = dataset.loader(epoch, batch_size, num_workers=num_workers)
    if len(loader) < 2:
        raise ValueError(f"an epoch has {len(loader)} batches of {batch_size}; need 2 to measure")
    it = iter(loader)
    next(it)
    done = samples = 0
    started = time.perf_counter()
    for batch in it:
        done += 1
        samples += int(batch["frames"].shape[0])
        elapsed = time.perf_counter() - started
        if (seconds is not None and elapsed >= seconds) or (seconds is None and done >= batches):
            break
    elapsed = time.perf_counter() - started
    return {"samples": samples, "seconds": elapsed, "samples_per_s": samples / max(elapsed, 1e-9),
            "batches": done, "num_workers": num_workers, "batch_size": batch_size}
