"""Checkpoints: a folder per saved step, written under a temporary name and renamed, so a run
killed (or a disk that fills) while saving leaves the previous checkpoint intact.

    <out>/checkpoints/step-00000100/
        model.safetensors      the model's weights (the frozen codec excluded)
        ema.safetensors        EMA of the trained parameters (what generation uses)
        state.pt               optimizer, lr schedule, RNG states, data position
        config.json            resolved spec (model, data, selection thresholds, ...), stage, step,
                               the catalog version it trained from
    <out>/checkpoints/latest   name of the newest complete checkpoint
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
REQUIRED = (MODEL_FILE, EMA_FILE, CONFIG_FILE)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (missing files, another model config)."""


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def save(out: str | Path, step: int, model_state: dict, ema_state: dict, state: dict,
         config: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it; keep the newest `keep`."""
    import torch
    from safetensors.torch import save_file

    folder = checkpoints_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_contiguous(model_state), str(tmp / MODEL_FILE))
    save_file(_contiguous(ema_state), str(tmp / EMA_FILE))
    torch.save(state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    for path in tmp.iterdir():
        _fsync(path)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(folder / "latest", final.name)
    for old in sorted(p for p in folder.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s", final)
    return final


def latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint under `out` (None when there is none)."""
    folder = checkpoints_dir(out)
    pointer = folder / "latest"
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
    complete = [p for p in sorted(folder.glob("step-*")) if is_complete(p)]
    return complete[-1] if complete else None


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def clean_partial(out: str | Path) -> None:
    """Remove temporary folders left by a save that was interrupted."""
    for tmp in checkpoints_dir(out).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a run folder or a checkpoint folder; a clear error otherwise."""
    path = Path(path)
    if is_complete(path):
        return path
    found = latest(path) if path.is_dir() else None
    if found is None:
        missing = [n for n in REQUIRED if not (path / n).is_file()]
        raise CheckpointError(f"{path} is not a checkpoint (missing {', '.join(missing)}) and holds "
                              "no complete checkpoints/step-* folder")
    return found


def read_config(path: str | Path) -> dict:
    return json.loads((Path(path) / CONFIG_FILE).read_text())


def load_tensors(path: str | Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / name))


def load_state(path: str | Path) -> dict:
    import torch

    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} in the checkpoint, {b!r} now")
    return out


def _contiguous(tensors: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
