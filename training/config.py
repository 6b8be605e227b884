"""Training job specs: frozen dataclasses loaded from TOML (`jobs/train_*.toml`) with
`--set section.key=value` overrides, through the spec loader shared with `emoforge curate`
(catalog/spec.py): dotted keys reach nested tables, [select] is merged rule by rule, unknown
sections or keys are an error listing the valid ones.

    [train]        TrainConfig: catalog, out, model preset, stage, steps, batch, intervals
    [model]        overrides of the preset's training.models.ModelConfig fields
    [data]         training.data.DataConfig
    [select]       catalog.Thresholds (which tracks train)
    [optim]        OptimConfig
    [diffusion]    DiffusionConfig
    [dropout]      condition dropout rates for classifier-free guidance
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.spec import (
    COMMAND_SECTIONS,
    SpecError,
    dataclass_from,
    plain,
    read_toml,
    select_from,
    with_overrides,
)

CONDITIONS = ("audio", "reference", "expression", "emotion", "motion")
OPTIMIZERS = ("adamw", "adamw8bit")


# a training spec or override that cannot be used: the loader's error, shared with curate
TrainSpecError = SpecError


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    # then lr until decay_steps optimizer steps (0: constant, no decay), falling on a half cosine
    # to lr * final_lr_fraction from warm-up's end to decay_steps, constant after
    decay_steps: int = 0
    final_lr_fraction: float = 0.1
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    # "adamw" (torch) or "adamw8bit" (bitsandbytes' 8-bit AdamW: a quarter of the optimizer
    # state's memory; needs the bitsandbytes package and a CUDA device)
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.decay_steps and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"decay_steps ({self.decay_steps}) must exceed warmup_steps "
                             f"({self.warmup_steps}), or be 0 for a constant rate")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")


@dataclass(frozen=True)
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    min_snr_gamma: float = 5.0  # min-SNR weighting per sample (0: off)
    noise_offset: float = 0.0  # per-channel offset noise (Hallo uses 0.05)
    # Gaussian noise on the motion frames, std drawn per sample uniformly in [0, motion_noise]:
    # generated windows take their motion frames from the previous window's output, errors
    # included, and a model trained only on clean motion frames copies and compounds them
    motion_noise: float = 0.0
    # share of windows whose motion frames are the reference frame repeated, as generation's
    # first window takes them (sampling.first_window_motion); 0: always the frames before
    reference_motion: float = 0.0
    # extra loss weight on the mouth (windows.mouth_boxes: the outer lips' box from the catalog's
    # landmarks, grown over the jaw): a pixel there counts 1 + mouth_weight. The lower face is
    # about a tenth of a crop and the only part that follows the audio; 0 is EMO's plain loss
    mouth_weight: float = 0.0


@dataclass(frozen=True)
class DropoutConfig:
    """Which conditions a sample trains without (their learned nulls), so that classifier-free
    guidance has every branch it combines (training.sampling). Per condition: the probability
    that it is dropped on its own (EMO/Hallo/MEMO use 0.05). Grouped: the share of samples that
    drop audio, expression and emotion together (the sampler's "reference only" branch) and the
    share that drop everything that branch drops plus the reference (its unconditional branch);
    independent drops alone would train those two in about 0.05^3 and 0.05^4 of the samples.
    `branch_probabilities` gives what each branch gets."""

    audio: float = 0.05
    reference: float = 0.05
    expression: float = 0.05
    emotion: float = 0.05
    motion: float = 0.05
    reference_only: float = 0.0
    unconditional: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    catalog: str = "out/demo/catalog"
    out: str = "out/train"
    model: str = "tiny"  # preset: "tiny" or "base"
    models_root: str = ""  # model root for "base" (default $EMOFORGE_MODELS or ~/.emoforge/models)
    stage: int = 2  # 0 joint (every layer: a model from scratch), 1 images, 2 video (temporal,
    #                 audio, expression, emotion), 3 speed (EMO's stages, each from the last)
    init_from: str = ""  # checkpoint of the previous stage to start from
    seed: int = 0
    batch_size: int = 2  # per worker
    max_steps: int = 200  # optimizer steps
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much training time; 0: off
    ema_decay: float = 0.999
    log_every: int = 10  # TensorBoard scalars and metrics reported to Ray (a barrier) every N steps
    validate_every: int = 100  # validation loss (EMA weights); 0: off
    val_batches: int = 2
    sample_every: int = 0  # a sample video from the EMA weights; 0: off
    sample_steps: int = 20
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA), "bf16", "no"
    gradient_checkpointing: str = "auto"  # "auto" (on with CUDA), "on", "off"
    num_workers: int = 1  # Ray Train workers; 1 runs in this process without Ray
    loader_workers: int = 0  # torch DataLoader processes per worker
    ray_address: str = ""


@dataclass(frozen=True)
class TrainSpec:
    """Everything a training run needs, resolved."""

    train: TrainConfig
    model: Any  # training.models.ModelConfig
    data: Any  # training.data.DataConfig
    select: Any  # catalog.Thresholds
    optim: OptimConfig = OptimConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    dropout: DropoutConfig = DropoutConfig()

    def resolved(self) -> dict:
        """The spec as plain JSON-able data (written into every checkpoint)."""
        return {name: plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}


SECTIONS = COMMAND_SECTIONS["train"]


def build(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> TrainSpec:
    """A TrainSpec from a TOML-shaped dict plus `section.key=value` overrides."""
    from training.data import DataConfig  # torch: imported when a spec is built
    from training.models import ModelConfig

    data = with_overrides(data, overrides, "train")
    train = dataclass_from(TrainConfig, data.get("train", {}), "train")
    model = _model_config(ModelConfig, train, data.get("model", {}))
    # The window's shape and the condition widths are the model's: [data] cannot disagree.
    data_values = {**data.get("data", {}), "size": model.image_size, "frames": model.frames,
                   "motion_frames": model.motion_frames, "audio_dim": model.audio_dim,
                   "audio_context": (model.audio_context - 1) // 2,
                   "expression_dim": model.expression_dim}
    if train.stage == 1:  # images: the reference and one frame, no motion
        data_values.update(frames=1, motion_frames=0)
    clash = {k for k in data.get("data", {}) if data["data"][k] != data_values[k]}
    if clash:
        raise TrainSpecError(f"[data] {sorted(clash)} follow the model; set them in [model] "
                             "(image_size, frames, motion_frames, audio_dim, audio_context, "
                             "expression_dim)")
    select = select_from(data.get("select", {}))
    spec = TrainSpec(
        train=train, model=model, data=dataclass_from(DataConfig, data_values, "data"),
        select=select,
        optim=dataclass_from(OptimConfig, data.get("optim", {}), "optim"),
        diffusion=dataclass_from(DiffusionConfig, data.get("diffusion", {}), "diffusion"),
        dropout=dataclass_from(DropoutConfig, data.get("dropout", {}), "dropout"),
    )
    _check(spec)
    return spec


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainSpec:
    """The TrainSpec of the TOML file at `path` with `overrides` applied."""
    return build(read_toml(path), overrides)


# Fields added after checkpoints were written, per section, with the value that rebuilds what
# those checkpoints were trained with (a missing field would otherwise take today's default)
ADDED_FIELDS = {
    "model": {"input_images": [], "audio_time_embedding": False, "audio_locator": False,
              "residual_scale": 0.0},
    "data": {"expression_mode": "frame"},
    "dropout": {"reference_only": 0.0, "unconditional": 0.0},
    "diffusion": {"reference_motion": 0.0},
}


def from_resolved(values: dict) -> TrainSpec:
    """The TrainSpec a checkpoint's config.json was written from."""
    values = {**values, **{section: {**added, **values[section]}
                           for section, added in ADDED_FIELDS.items() if section in values}}
    return build(values)


def branch_probabilities(dropout: DropoutConfig) -> dict[str, float]:
    """The share of training samples that train each branch the sampler's guidance calls
    (training.sampling: "full" keeps every condition, "reference_only" drops audio, expression
    and emotion, "unconditional" drops those and the reference; the motion frames are kept in
    all three). A sample first falls in the unconditional group, the reference-only group or
    neither (DropoutConfig's shares), then each condition is dropped on its own at its rate."""
    p = {name: getattr(dropout, name) for name in CONDITIONS}
    u, r = dropout.unconditional, dropout.reference_only
    rest = 1.0 - u - r
    speech = p["audio"] * p["expression"] * p["emotion"]  # audio, expression, emotion dropped
    kept = 1.0 - p["motion"]
    return {
        "full": rest * (1 - p["audio"]) * (1 - p["expression"]) * (1 - p["emotion"])
        * (1 - p["reference"]) * kept,
        "reference_only": (r + rest * speech) * (1 - p["reference"]) * kept,
        "unconditional": (u + r * p["reference"] + rest * speech * p["reference"]) * kept,
    }


def _model_config(cls, train: TrainConfig, overrides: dict):
    if train.model == "tiny":
        base = cls.tiny()
    elif train.model == "base":
        base = cls.base(models_root(train))
    else:
        raise TrainSpecError(f"[train] model must be 'tiny' or 'base', got {train.model!r}")
    values = {**plain(dataclasses.asdict(base)), **overrides}
    try:
        return cls.from_dict(values)
    except (TypeError, ValueError, KeyError) as exc:
        raise TrainSpecError(f"[model]: {exc}") from exc


def models_root(train: TrainConfig) -> Path:
    root = train.models_root or os.environ.get("EMOFORGE_MODELS") or "~/.emoforge/models"
    return Path(root).expanduser()


def _check(spec: TrainSpec) -> None:
    t = spec.train
    if t.stage not in (0, 1, 2, 3):
        raise TrainSpecError(f"[train] stage must be 0 (joint), 1, 2 or 3, got {t.stage}")
    for name in ("batch_size", "max_steps", "num_workers", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, name) < 1:
            raise TrainSpecError(f"[train] {name} must be at least 1, got {getattr(t, name)}")
    if t.mixed_precision not in ("auto", "bf16", "no"):
        raise TrainSpecError(f"[train] mixed_precision must be auto, bf16 or no, got {t.mixed_precision!r}")
    if t.gradient_checkpointing not in ("auto", "on", "off"):
        raise TrainSpecError("[train] gradient_checkpointing must be auto, on or off")
    if spec.optim.grad_accum < 1:
        raise TrainSpecError("[optim] grad_accum must be at least 1")
    for name in (*CONDITIONS, "reference_only", "unconditional"):
        rate = getattr(spec.dropout, name)
        if not 0.0 <= rate <= 1.0:
            raise TrainSpecError(f"[dropout] {name} must be within [0, 1], got {rate}")
    if spec.dropout.reference_only + spec.dropout.unconditional > 1.0:
        raise TrainSpecError("[dropout] reference_only + unconditional must be at most 1, got "
                             f"{spec.dropout.reference_only + spec.dropout.unconditional}")
    if not 0.0 <= spec.diffusion.reference_motion <= 1.0:
        raise TrainSpecError("[diffusion] reference_motion must be within [0, 1], got "
                             f"{spec.diffusion.reference_motion}")
