"""The analyzer protocol: one decoded face-crop clip in, a track's and its frames' columns out.

The analyze stage decodes each track's 25 fps face-crop clip once (frames and 16 kHz audio),
builds a DecodedTrack, and calls each enabled analyzer in pipeline order (audio, lip_sync,
expression, emotion). Later analyzers see earlier ones' results in `previous`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS, SAMPLES_PER_FRAME  # noqa: F401 - re-exported
from pipeline.models.registry import ModelSpec
from pipeline.stages.contract import StageContext



@dataclass
class DecodedTrack:
    """One track's face-crop clip, decoded once.

    frames:     uint8[T,S,S,3] RGB face crops on the 25 fps grid
    audio:      float32[T*640] mono 16 kHz, sample k at time k/16000 from the track start
                (zeros where the source has no audio; `has_audio` says which)
    landmarks:  float32[T,68,2] in crop pixels (from frames/), NaN where unknown
    mouth_open: float32[T] inner-lip gap over mouth width (from frames/)
    row:        the track row (track_id, shard, crop_path, ... and ancestor columns)
    """

    frames: np.ndarray
    audio: np.ndarray
    landmarks: np.ndarray
    mouth_open: np.ndarray
    row: dict[str, Any]
    has_audio: bool = True
    fps: int = CROP_FPS
    sample_rate: int = AUDIO_RATE

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def track_id(self) -> str:
        return str(self.row["track_id"])

    @property
    def shard(self) -> int:
        return int(self.row["shard"])


@dataclass
class AnalyzerResult:
    """track: the analyzer's track columns (status and error included, with its prefix);
    frames: per-frame columns, each a sequence of length T (or absent)."""

    track: dict[str, Any]
    frames: dict[str, Any] = field(default_factory=dict)


class TrackAnalyzer(Protocol):
    name: ClassVar[str]  # canonical stage name: audio, lip_sync, expression, emotion
    Config: ClassVar[type]  # frozen dataclass of options (a TOML section)
    version: ClassVar[str]

    def __init__(self, config: Any, context: StageContext) -> None: ...

    def model_specs(self) -> list[ModelSpec]: ...

    def setup(self) -> None: ...

    def analyze(self, track: DecodedTrack, previous: dict[str, AnalyzerResult]) -> AnalyzerResult:
        ...
