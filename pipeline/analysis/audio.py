"""Audio analyzer: voice activity (Silero), loudness, clipping, Whisper language/transcript and
encoder features on the 25 fps grid (a float16 sidecar for training)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from catalog.contract import AUDIO_RATE
from pipeline.analysis.base import AnalyzerResult, DecodedTrack
from pipeline.models.registry import ModelSpec
from pipeline.models.speech import encoder_features, load_speech, load_vad, speech_specs, vad_spec
from pipeline.stage import OK, SKIPPED, StageContext, media_relpath

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class AudioConfig:
    vad_threshold: float = 0.5  # Silero speech probability threshold
    min_speech_s: float = 0.25  # shortest speech segment kept
    min_silence_s: float = 0.1  # shortest gap that splits segments
    clip_level: float = 0.999  # |sample| at or above this counts as clipped
    features: bool = True  # write Whisper encoder features (float16 [T, 512]) as a sidecar
    transcribe: bool = False  # Whisper language + transcript (slow on CPU)
    speech_backend: str = "whisper-base"  # or "whisper-base-official", "whisper-tiny-official"
    device: str = "cpu"


def loudness_dbfs(audio: np.ndarray) -> float:
    """RMS level of float[N] audio in dBFS (full scale 1.0 = 0 dBFS; silence about -200)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))


def clipping_ratio(audio: np.ndarray, level: float = 0.999) -> float:
    """Fraction of samples with |x| >= level."""
    return float(np.mean(np.abs(audio) >= level)) if len(audio) else 0.0


class AudioAnalyzer:
    """TrackAnalyzer for `audio` (see pipeline/analysis/base.py)."""

    name: ClassVar[str] = "audio"
    Config: ClassVar[type] = AudioConfig
    version: ClassVar[str] = "1"

    def __init__(self, config: AudioConfig | None, context: StageContext) -> None:
        self.config = config or AudioConfig()
        self.context = context
        self.vad = None
        self.whisper = None

    def model_specs(self) -> list[ModelSpec]:
        specs = [vad_spec()]
        if self.config.features or self.config.transcribe:
            specs += speech_specs(self.config.speech_backend)
        return specs

    def setup(self) -> None:
        self.vad = load_vad(self.config.vad_threshold, self.config.min_speech_s,
                            self.config.min_silence_s)
        if self.config.features or self.config.transcribe:
            self.whisper = load_speech(self.config.speech_backend, self.config.device)

    def analyze(self, track: DecodedTrack, previous: dict[str, AnalyzerResult]) -> AnalyzerResult:
        if self.vad is None:
            self.setup()
        if not track.has_audio:
            return AnalyzerResult(
                {"audio_status": SKIPPED, "audio_error": "no audio stream in the track"}
            )
        audio = np.asarray(track.audio, np.float32)
        duration = len(audio) / AUDIO_RATE
        segments = self.vad.segments(audio)
        speech_s = sum(end - start for start, end in segments)
        out: dict[str, Any] = {
            "speech_ratio": float(speech_s / duration) if duration > 0 else 0.0,
            "speech_segments": [{"start_s": float(s), "end_s": float(e)} for s, e in segments],
            "loudness_dbfs": loudness_dbfs(audio),
            "clipping_ratio": clipping_ratio(audio, self.config.clip_level),
            "audio_status": OK,
            "audio_error": None,
        }
        if not segments:
            out["audio_status"] = SKIPPED
            out["audio_error"] = (
                f"no speech: Silero VAD found no segment of {self.config.min_speech_s} s "
                f"above probability {self.config.vad_threshold} in {duration:.2f} s"
            )
            return AnalyzerResult(out)
        if self.config.features:
            feats = encoder_features(self.whisper, audio, track.num_frames)
            relpath = media_relpath(track.shard, track.track_id, "audio_features.npy")
            np.save(self.context.staging_media(track.shard, relpath), feats)
            out["audio_features_path"] = relpath
            out["audio_features_backend"] = self.config.speech_backend
        if self.config.transcribe:
            result = self.whisper.transcribe(audio, fp16=False, condition_on_previous_text=False)
            out["language"] = result.get("language")
            out["transcript"] = result.get("text", "").strip()
        return AnalyzerResult(out)
