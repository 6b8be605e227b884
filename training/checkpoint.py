"""Checkpoints: a folder per saved step, written under a temporary name and renamed, so a run
killed (or a disk that fills) while saving leaves the previous checkpoint intact.

    <out>/checkpoints/step-00000100/
        model/                 EmoModel.save_pretrained layout: config.json (the model's
                               architecture and emotion classes) + diffusion_pytorch_model.safetensors
        ema/                   the same with the EMA of the trained parameters in place of theirs
                               (what generation uses)
        state.pt               optimizer, lr schedule, RNG states, data position
        config.json            resolved spec (model, data, selection thresholds, ...), stage, step,
                               the catalog version it trained from, the base weights' sha256
                               checksums, and with `init_from` the checkpoint it started from
    <out>/checkpoints/latest   name of the newest complete checkpoint

A checkpoint of a stage that starts from another checkpoint (`init_from`, stages 2 and 3) holds
only the trained weights and their EMA ("weights": "trainable"); the frozen rest is read from the
checkpoint it started from, found by its recorded path (absolute, then relative to this one) and
checked by the sha256 of that checkpoint's EMA weights. Base weights (SD 1.5) are recorded by
checksum relative to the model root, never by machine path: the model root is given where the
checkpoint is used (`--models-root`, `$EMOFORGE_MODELS`, [train] models_root).

The codec is not in a checkpoint: its weights are the base weights (or none: the pixel codec).
A checkpoint in the flat single-file layout (model.safetensors beside config.json) is refused with
the command that converts it: `python -m training.checkpoint convert <folder>`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_DIR = "model"
EMA_DIR = "ema"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # diffusers' name in a save_pretrained folder
MODEL_CONFIG = "config.json"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
REQUIRED = (f"{MODEL_DIR}/{WEIGHTS_FILE}", f"{MODEL_DIR}/{MODEL_CONFIG}", f"{EMA_DIR}/{WEIGHTS_FILE}",
            f"{EMA_DIR}/{MODEL_CONFIG}", CONFIG_FILE)
FLAT_FILES = ("model.safetensors", "ema.safetensors")  # the single-file layout
CONVERT = "python -m training.checkpoint convert"
FULL, TRAINABLE = "full", "trainable"  # config.json "weights": what model/ and ema/ hold


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (missing files, another model config)."""


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def save(out: str | Path, step: int, model, ema_state: dict, state: dict, config: dict,
         keep: int = 2, trainable_only: bool = False) -> Path:
    """Write checkpoint `step` of `model` (an EmoModel) atomically and point `latest` at it; keep
    the newest `keep`. `ema_state`: name -> EMA of each trained parameter. `trainable_only`:
    model/ and ema/ hold the trained parameters only (config["init_from"] must name the
    checkpoint the frozen rest comes from)."""
    import torch

    if trainable_only and not config.get("init_from"):
        raise CheckpointError("a checkpoint of the trained weights only needs init_from")
    folder = checkpoints_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = model.state_dict()
    if trainable_only:
        weights = {k: weights[k] for k in ema_state}
    write_pretrained(tmp / MODEL_DIR, model, weights)
    write_pretrained(tmp / EMA_DIR, model, {**weights, **ema_state})
    torch.save(state, tmp / STATE_FILE)
    config = {**config, "weights": TRAINABLE if trainable_only else FULL}
    if config.get("init_from"):  # found again when the tree moves as a whole
        config["init_from"] = {**config["init_from"],
                               "relative": os.path.relpath(config["init_from"]["path"], final)}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    for path in tmp.rglob("*"):
        if path.is_file():
            _fsync(path)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(folder / "latest", final.name)
    for old in sorted(p for p in folder.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s", final)
    return final


def write_pretrained(folder: Path, model, tensors: dict) -> None:
    """`model.save_pretrained(folder)`'s layout (config.json + safetensors) with `tensors` as
    the weights: all of them, or the trained ones only."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
              str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint under `out` (None when there is none); a checkpoint in
    the flat layout is a CheckpointError with the conversion command."""
    folder = checkpoints_dir(out)
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for path in steps:
        refuse_flat(path)
    pointer = folder / "latest"
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
    complete = [p for p in steps if is_complete(p)]
    return complete[-1] if complete else None


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def is_flat(path: Path) -> bool:
    """A checkpoint in the single-file layout (model.safetensors, ema.safetensors)."""
    return all((path / name).is_file() for name in FLAT_FILES) and not (path / MODEL_DIR).is_dir()


def refuse_flat(path: Path) -> None:
    if is_flat(path):
        raise CheckpointError(f"{path} is a checkpoint in the single-file layout (model.safetensors, "
                              f"ema.safetensors); convert it to the model/ and ema/ folders with: "
                              f"{CONVERT} {path}")


def clean_partial(out: str | Path) -> None:
    """Remove temporary folders left by a save that was interrupted."""
    for tmp in checkpoints_dir(out).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a run folder or a checkpoint folder; a clear error otherwise."""
    path = Path(path)
    refuse_flat(path)
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


def load_tensors(path: str | Path, folder: str) -> dict:
    """The tensors of a checkpoint's `folder` (MODEL_DIR or EMA_DIR)."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / folder / WEIGHTS_FILE))


def load_state(path: str | Path) -> dict:
    import torch

    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def load_weights(model, source: str | Path, ema: bool) -> None:
    """Weights of checkpoint `source` into `model` (its EMA weights when `ema`); for a checkpoint
    of the trained weights only, the checkpoint it started from first (checked by checksum)."""
    source = Path(source)
    config = read_config(source)
    if config.get("weights") == TRAINABLE:
        load_weights(model, find_init(source, config["init_from"]), ema=True)
    state = load_tensors(source, EMA_DIR if ema else MODEL_DIR)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"{source}: weights not in this model: {unexpected[:5]}...")
    if missing and config.get("weights") != TRAINABLE:
        log.info("%s: %d tensors not in the checkpoint keep their initial values (e.g. %s)",
                 source, len(missing), missing[0])


def init_record(path: str | Path) -> dict:
    """How a checkpoint names the checkpoint it started from: its absolute path and the sha256
    of its EMA weights (the weights a stage starts from)."""
    path = Path(path).resolve()
    return {"path": str(path), "sha256": sha256(path / EMA_DIR / WEIGHTS_FILE)}


def find_init(source: Path, record: dict) -> Path:
    """The checkpoint `record` (init_record) names, by its absolute path or its path relative to
    `source`; a CheckpointError when neither holds it or its checksum differs."""
    candidates = [Path(record["path"])]
    if record.get("relative"):
        candidates.append(source / record["relative"])
    for path in candidates:
        weights = path / EMA_DIR / WEIGHTS_FILE
        if weights.is_file():
            found = sha256(weights)
            if found != record["sha256"]:
                raise CheckpointError(f"{weights}: sha256 {found} differs from {record['sha256']}, "
                                      f"the weights {source} started from")
            return path
    raise CheckpointError(f"{source} holds the trained weights only; the checkpoint it started "
                          f"from (ema sha256 {record['sha256']}) is at none of "
                          f"{[str(p) for p in candidates]}")


_SHA256: dict[tuple, str] = {}  # (path, size, mtime) -> checksum: each file hashed once


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (cached per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def base_checksums(models_root: str | Path, files: list[str]) -> dict[str, str]:
    """{file relative to the model root: sha256} of the base weight files."""
    return {name: sha256(Path(models_root) / name) for name in files}


def check_base_weights(config: dict, models_root: str | Path) -> None:
    """Refuse base weights under `models_root` whose checksums differ from the checkpoint's
    (config["base_weights"]), naming the file; missing files name where they were looked for."""
    recorded = config.get("base_weights") or {}
    root = Path(models_root).expanduser()
    for name, want in sorted(recorded.items()):
        path = root / name
        if not path.is_file():
            raise CheckpointError(f"base weights {path} not found: the checkpoint was trained from "
                                  f"{name} (sha256 {want}); give the model root that holds it "
                                  "(--models-root, $EMOFORGE_MODELS or [train] models_root)")
        found = sha256(path)
        if found != want:
            raise CheckpointError(f"base weights {path}: sha256 {found} differs from {want}, the "
                                  "file the checkpoint was trained from")


def models_root(given: str | Path | None, recorded: str) -> str:
    """Where a checkpoint's base weights are looked for: `given`, else $EMOFORGE_MODELS, else the
    model root recorded at training time."""
    return str(Path(given or os.environ.get("EMOFORGE_MODELS") or recorded).expanduser())


def identity(resolved: dict) -> dict:
    """What a resumed checkpoint must match: the model's architecture (not where its weights
    came from), the stage and the window's shape, from a resolved spec."""
    data = resolved["data"]
    return {"model": _architecture(resolved["model"]), "stage": resolved["train"]["stage"],
            "window": {"size": data["size"], "frames": data["frames"],
                       "motion_frames": data["motion_frames"]}}


def check_compatible(saved: dict, current: dict) -> None:
    """Refuse to resume a checkpoint (its config.json) of another architecture, stage or window
    shape than `current` (identity of the running spec)."""
    saved = {"model": _architecture(saved.get("model") or {}), "stage": saved.get("stage"),
             "window": saved.get("window")}
    diffs = config_differences(saved, current)
    if diffs:
        raise CheckpointError("cannot resume: the checkpoint was trained with another "
                              "configuration: " + "; ".join(diffs))


def _architecture(model: dict) -> dict:
    from training.models.config import WEIGHT_SOURCE_KEYS  # training.models imports torch

    return {k: v for k, v in model.items() if k not in WEIGHT_SOURCE_KEYS}


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


def convert(path: str | Path) -> list[Path]:
    """Rewrite single-file-layout checkpoints (one folder, or every one under a run folder) into
    model/ and ema/ folders, in place; returns the converted folders."""
    import torch
    from safetensors.torch import load_file

    from training.config import from_resolved
    from training.models import EmoModel

    path = Path(path)
    folders = [path] if is_flat(path) else [p for p in sorted(checkpoints_dir(path).glob("step-*"))
                                            if is_flat(p)]
    if not folders:
        raise CheckpointError(f"{path} holds no checkpoint in the single-file layout")
    for folder in folders:
        config = read_config(folder)
        spec = from_resolved(config["spec"])
        with torch.device("meta"):  # the config only: no weights are built
            model = EmoModel(spec.model.architecture(), tuple(spec.data.emotion_classes))
        weights = load_file(str(folder / FLAT_FILES[0]))
        ema = load_file(str(folder / FLAT_FILES[1]))
        write_pretrained(folder / MODEL_DIR, model, weights)
        write_pretrained(folder / EMA_DIR, model, {**weights, **ema})
        config.update(identity(config["spec"]), weights=FULL)
        _write_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
        for name in FLAT_FILES:
            (folder / name).unlink()
        log.info("converted %s", folder)
    return folders


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.checkpoint",
                                     description="checkpoint maintenance")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="single-file checkpoints -> model/ and ema/ folders")
    conv.add_argument("path", help="a checkpoint folder or a run folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for folder in convert(args.path):
        print(f"converted {folder}")


if __name__ == "__main__":
    main()
