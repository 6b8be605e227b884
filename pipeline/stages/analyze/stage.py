"""Per-track analyses in one actor stage: decode a track's face-crop clip once (frames and 16 kHz
audio), then run the analyzers in pipeline order: audio, lip_sync, expression, emotion.

Each analyzer keeps its canonical stage name, config section, columns, status and fingerprint;
`[analyze] enabled` chooses which run. TOML:

    [analyze]
    enabled = ["audio", "lip_sync", "expression", "emotion"]
    [analyze.expression]
    backend = "blendshapes"
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.stages.analyze.audio import AudioAnalyzer, AudioConfig
from pipeline.stages.analyze.base import (
    AUDIO_RATE,
    CROP_FPS,
    SAMPLES_PER_FRAME,
    AnalyzerResult,
    DecodedTrack,
)
from pipeline.stages.analyze.emotion import EmotionAnalyzer, EmotionConfig
from pipeline.stages.analyze.expression import ExpressionAnalyzer, ExpressionConfig
from pipeline.stages.analyze.lip_sync import LipSyncAnalyzer, LipSyncConfig
from pipeline.media import read_audio, read_frames
from pipeline.models.registry import ModelSpec
from pipeline.stages.contract import FAILED, Stage

log = logging.getLogger(__name__)

ANALYZERS = {
    "audio": (AudioAnalyzer, AudioConfig),
    "lip_sync": (LipSyncAnalyzer, LipSyncConfig),
    "expression": (ExpressionAnalyzer, ExpressionConfig),
    "emotion": (EmotionAnalyzer, EmotionConfig),
}


@dataclass(frozen=True)
class AnalyzeConfig:
    enabled: tuple[str, ...] = tuple(ANALYZERS)
    audio: AudioConfig = field(default_factory=AudioConfig)
    lip_sync: LipSyncConfig = field(default_factory=LipSyncConfig)
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)

    def __post_init__(self) -> None:
        unknown = set(self.enabled) - set(ANALYZERS)
        if unknown:
            raise ValueError(f"[analyze] enabled has unknown analyzers {sorted(unknown)}; valid: {list(ANALYZERS)}")
        object.__setattr__(self, "enabled", tuple(n for n in ANALYZERS if n in self.enabled))
        for name, (_, config_cls) in ANALYZERS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                valid = {f.name for f in dataclasses.fields(config_cls)}
                bad = set(value) - valid
                if bad:
                    raise ValueError(f"[analyze.{name}] has unknown keys {sorted(bad)}; valid: {sorted(valid)}")
                object.__setattr__(self, name, config_cls(**value))


class AnalyzeStage(Stage):
    name = "analyze"
    level = "tracks"
    requires = ("track_id", "video_id", "shard", "crop_path", "frame_count", "has_audio",
                "face_px_median")
    requires_children = ("landmarks", "mouth_open")
    after = ("faces",)
    Config = AnalyzeConfig
    version = "1"
    num_cpus = 1.0
    uses_models = True

    def __init__(self, config: AnalyzeConfig, context):
        super().__init__(config, context)
        self.analyzers = [ANALYZERS[n][0](getattr(config, n), context) for n in config.enabled]

    def covers(self) -> tuple[str, ...]:  # type: ignore[override] - depends on the config
        return tuple(self.config.enabled)

    def model_specs(self) -> list[ModelSpec]:
        return [spec for a in self.analyzers for spec in a.model_specs()]

    def models_by_stage(self) -> dict[str, list[ModelSpec]]:
        return {a.name: a.model_specs() for a in self.analyzers}

    def config_for(self, stage: str) -> Any:
        return getattr(self.config, stage)

    def version_for(self, stage: str) -> str:
        return next(getattr(a, "version", "1") for a in self.analyzers if a.name == stage)

    def setup(self) -> None:
        for analyzer in self.analyzers:
            analyzer.setup()

    def process_row(self, row: dict) -> dict:
        track = decode_track(row, self.context.media_path(row["crop_path"]))
        results: dict[str, AnalyzerResult] = {}
        out: dict[str, Any] = {}
        for analyzer in self.analyzers:
            try:
                result = analyzer.analyze(track, results)
            except Exception as exc:  # noqa: BLE001 - one analyzer failing keeps the others
                log.debug("%s failed on %s", analyzer.name, row["track_id"], exc_info=True)
                result = AnalyzerResult({f"{analyzer.name}_status": FAILED,
                                         f"{analyzer.name}_error": f"{type(exc).__name__}: {exc}"})
            result = _checked_frames(analyzer.name, result, track.num_frames, row["track_id"])
            results[analyzer.name] = result
            out.update(result.track)
        out["frames"] = _frame_rows(results, track.num_frames)
        return out


def decode_track(row: dict, crop_file: str) -> DecodedTrack:
    """Decode a face-crop clip once: frames uint8[T,S,S,3], audio float32[T*640] (16 kHz)."""
    frames = read_frames(crop_file)
    count = int(row.get("frame_count") or len(frames))
    frames = frames[:count]
    audio = read_audio(crop_file, AUDIO_RATE, 0.0, count / CROP_FPS) if row.get("has_audio") else np.zeros(count * SAMPLES_PER_FRAME, np.float32)
    children = row.get("frames") or []
    landmarks = np.full((count, 68, 2), np.nan, np.float32)
    mouth = np.full(count, np.nan, np.float32)
    for i, item in enumerate(children[:count]):
        if item.get("landmarks") is not None:
            landmarks[i] = np.asarray(item["landmarks"], np.float32).reshape(68, 2)
        if item.get("mouth_open") is not None:
            mouth[i] = item["mouth_open"]
    return DecodedTrack(frames=frames, audio=audio, landmarks=landmarks, mouth_open=mouth,
                        row=row, has_audio=bool(row.get("has_audio")))


def _checked_frames(name: str, result: AnalyzerResult, count: int, track_id: str) -> AnalyzerResult:
    """The result, or, when a per-frame column does not have one value per frame, the analyzer
    marked failed with the column named (its frame values are dropped, loudly)."""
    wrong = {col: len(values) for col, values in (result.frames or {}).items()
             if values is not None and len(values) != count}
    if not wrong:
        return result
    why = ", ".join(f"{col} has {n} values" for col, n in sorted(wrong.items()))
    error = f"per-frame output does not match the track's {count} frames ({why}); frames dropped"
    log.warning("%s on track %s: %s", name, track_id, error)
    return AnalyzerResult({**result.track, f"{name}_status": FAILED, f"{name}_error": error})


def _frame_rows(results: dict[str, AnalyzerResult], count: int) -> list[dict]:
    """One row per frame with every analyzer's per-frame columns (each checked to have `count`
    values by _checked_frames)."""
    columns: dict[str, Any] = {}
    for result in results.values():
        for name, values in (result.frames or {}).items():
            if values is not None:
                columns[name] = values
    rows = []
    for i in range(count):
        rows.append({name: _plain(values[i]) for name, values in columns.items()})
    return rows


def _plain(value):
    if isinstance(value, np.ndarray):
        return None if value.size and np.all(np.isnan(value)) else value.astype(np.float32).tolist()
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    return value
