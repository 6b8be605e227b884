"""The training and validation datasets of a spec's catalog selection, and a rank's loader."""

from __future__ import annotations

import logging

from training.config import TrainSpec

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why."""


def build_datasets(spec: TrainSpec) -> dict:
    """{"train", "val" (None when empty), "excluded": reason -> tracks left out} over the
    selection; a clear error when nothing is kept (here, or data.EmptyDatasetError when every
    kept track is left out, with the count per reason)."""
    import catalog
    from training.data import WindowDataset

    root = spec.train.catalog
    if not catalog.fs.resolve(root).is_dir():  # a local folder or a store prefix
        raise TrainingError(f"catalog {root} does not exist (curate one first: emoforge curate ...)")
    selected = catalog.select(root, spec.select)
    if spec.select.balance_by is not None:
        selected = catalog.balance(selected, spec.select.balance_by, spec.select.balance_max_seconds,
                                   spec.select.balance_seed)
    kept = selected.filter(selected["keep"])
    if kept.num_rows == 0:
        reasons: dict[str, int] = {}
        for reason in selected["drop_reason"].to_pylist():
            reasons[reason] = reasons.get(reason, 0) + 1
        listing = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
        raise TrainingError(f"the selection keeps no track of {selected.num_rows} in {root} "
                            f"({listing or 'the catalog has no tracks'}); loosen [select]")
    if spec.data.val_fraction > 0:
        out = {split: WindowDataset(root, kept, spec.data, split=split) for split in ("train", "val")}
    else:  # no validation: every person trains
        out = {"train": WindowDataset(root, kept, spec.data, split="all"), "val": None}
    excluded: dict[str, int] = {}
    for split, ds in out.items():
        for reason, count in (ds.excluded if ds is not None else {}).items():
            log.warning("%s split: %d tracks left out: %s", split, count, reason)
            excluded[reason] = excluded.get(reason, 0) + count
    out["excluded"] = excluded
    if out["val"] is not None and len(out["val"].tracks) == 0:
        log.warning("the validation split is empty (one person?): validation uses none")
        out["val"] = None
    return out


def make_loader(dataset, epoch: int, start: int, batch_size: int, rank: int = 0,
                world_size: int = 1, num_workers: int = 0):
    """Rank `rank`'s batches of `epoch` from batch index `start` on (a torch DataLoader)."""
    return dataset.loader(epoch, batch_size, rank, world_size, start, num_workers)
