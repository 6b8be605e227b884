"""Audio analyzer: voice activity (Silero), loudness, clipping, Whisper encoder features on the
25 fps grid (a float16 sidecar for training) and language/transcript, on by default.

One Whisper encoder pass per 30 s window serves both: the states are pooled into the features,
and the bundled Whisper base on CTranslate2 (int8) decodes the transcript from the same states.
The encoder runs on onnxruntime (pipeline/models/speech/whisper_encoder.py), so the worker imports
neither torch nor openai-whisper.
Windows without voice activity are not decoded. `transcribe_engine="openai-whisper"` is the
reference path (`whisper.transcribe` on the audio, several times slower), and the one used for
the official checkpoints (CTranslate2 holds only the bundled base's decoder)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from catalog.contract import AUDIO_RATE
from catalog.layout import media_relpath
from pipeline.models.registry import ModelSpec
from pipeline.models.speech import (
    encoder_states,
    load_encoder,
    load_speech,
    load_transcriber,
    load_vad,
    pool_features,
    speech_specs,
    vad_spec,
)
from pipeline.models.speech.whisper_encoder import ENGINES as ENCODER_ENGINES
from pipeline.stages.analyze.base import AnalyzerResult, DecodedTrack
from pipeline.stages.contract import OK, SKIPPED, StageContext

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class AudioConfig:
    vad_threshold: float = 0.5  # Silero speech probability threshold
    min_speech_s: float = 0.25  # shortest speech segment kept
    min_silence_s: float = 0.1  # shortest gap that splits segments
    clip_level: float = 0.999  # |sample| at or above this counts as clipped
    features: bool = True  # write Whisper encoder features (float16 [T, 512]) as a sidecar
    transcribe: bool = True  # Whisper language + transcript
    speech_backend: str = "whisper-base"  # or "whisper-base-official", "whisper-tiny-official"
    device: str = "cpu"
    # the features' Whisper encoder: "onnxruntime" (default; exported from the checkpoint once,
    # no torch import in the worker) or "torch" (openai-whisper's module, the reference)
    encoder_engine: str = "onnxruntime"
    # "ctranslate2": the bundled base's decoder on CTranslate2 from the features' encoder pass;
    # "openai-whisper": whisper.transcribe (the reference path; always used for official weights)
    transcribe_engine: str = "ctranslate2"
    transcribe_compute: str = "int8"  # CTranslate2 compute type: int8 or float32
    beam_size: int = 1  # 1: greedy decoding, like whisper.transcribe's default

    def __post_init__(self) -> None:
        if self.encoder_engine not in ENCODER_ENGINES:
            raise ValueError(f"analyze.audio.encoder_engine must be one of {ENCODER_ENGINES}, "
                             f"got {self.encoder_engine!r}")
        engines = ("ctranslate2", "openai-whisper")
        if self.transcribe_engine not in engines:
            raise ValueError(f"analyze.audio.transcribe_engine must be one of {engines}, got "
                             f"{self.transcribe_engine!r}")
        if self.transcribe_compute not in ("int8", "float32"):
            raise ValueError("analyze.audio.transcribe_compute must be 'int8' or 'float32', got "
                             f"{self.transcribe_compute!r}")

    @property
    def uses_ct2(self) -> bool:
        """Transcripts through CTranslate2 (only the bundled base has a CTranslate2 model)."""
        return (self.transcribe and self.transcribe_engine == "ctranslate2"
                and self.speech_backend == "whisper-base")


def loudness_dbfs(audio: np.ndarray) -> float:
    """RMS level of float[N] audio in dBFS (full scale 1.0 = 0 dBFS; silence about -200)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))


def clipping_ratio(audio: np.ndarray, level: float = 0.999) -> float:
    """Fraction of samples with |x| >= level."""
    return float(np.mean(np.abs(audio) >= level)) if len(audio) else 0.0


class AudioAnalyzer:
    """TrackAnalyzer for `audio` (see pipeline/stages/analyze/base.py)."""

    name: ClassVar[str] = "audio"
    Config: ClassVar[type] = AudioConfig
    version: ClassVar[str] = "2"

    def __init__(self, config: AudioConfig | None, context: StageContext) -> None:
        self.config = config or AudioConfig()
        self.context = context
        self.vad = None
        self.encoder = None  # Whisper encoder: features, and the states CTranslate2 decodes
        self.whisper = None  # openai-whisper's whole model: reference transcripts
        self.transcriber = None  # Ct2Whisper

    def model_specs(self) -> list[ModelSpec]:
        specs = [vad_spec()]
        if self.config.features or self.config.transcribe:
            specs += speech_specs(self.config.speech_backend)
        return specs

    def setup(self) -> None:
        self.vad = load_vad(self.config.vad_threshold, self.config.min_speech_s,
                            self.config.min_silence_s)
        cfg = self.config
        if cfg.features:
            self.encoder = load_encoder(cfg.speech_backend, cfg.encoder_engine, cfg.device)
        if cfg.transcribe and not cfg.uses_ct2:
            self.whisper = load_speech(cfg.speech_backend, cfg.device)
        if cfg.uses_ct2:
            self.transcriber = load_transcriber(cfg.transcribe_compute, cfg.beam_size)

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
        cfg = self.config
        states = None
        if cfg.features:
            states = encoder_states(self.encoder, audio, track.num_frames)
            relpath = media_relpath(track.shard, track.track_id, "audio_features.npy")
            np.save(self.context.staging_media(track.shard, relpath),
                    pool_features(states, track.num_frames))
            out["audio_features_path"] = relpath
            out["audio_features_backend"] = cfg.speech_backend
        if cfg.uses_ct2:
            if states is None:
                states = self.transcriber.encode(audio)
            result = self.transcriber.transcribe(states, len(audio), speech_windows(segments))
            out["language"], out["transcript"] = result.language, result.text
            out["transcript_segments"] = segment_rows(result.segments)
        elif cfg.transcribe:
            result = self.whisper.transcribe(audio, fp16=False, condition_on_previous_text=False)
            out["language"] = result.get("language")
            out["transcript"] = result.get("text", "").strip()
            out["transcript_segments"] = segment_rows(
                (s["start"], s["end"], s["text"]) for s in result.get("segments", []))
        return AnalyzerResult(out)


def segment_rows(segments) -> list[dict]:
    """(start_s, end_s, text) segments as `transcript_segments` rows (text stripped)."""
    return [{"start_s": float(a), "end_s": float(b), "text": str(t).strip()} for a, b, t in segments]


def speech_windows(segments: list[tuple[float, float]], window_s: float = 30.0) -> set[int]:
    """Indices of the 30 s Whisper windows that hold any of the VAD `segments` (seconds)."""
    out: set[int] = set()
    for start, end in segments:
        out.update(range(int(start // window_s), int(max(start, end - 1e-6) // window_s) + 1))
    return out
