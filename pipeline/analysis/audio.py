"""Audio analyzer: voice activity (Silero), loudness, clipping, Whisper language/transcript and
encoder features on the 25 fps grid (a float16 sidecar for training)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.analysis.base import AUDIO_RATE, CROP_FPS, AnalyzerResult, DecodedTrack
from pipeline.models.registry import ModelSpec
from pipeline.stage import OK, SKIPPED, StageContext, media_relpath

log = logging.getLogger(__name__)

WHISPER_WINDOW_S = 30.0
WHISPER_FRAMES_PER_S = 50  # encoder output rate (two per 25 fps frame)


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


def encoder_features(model, audio: np.ndarray, frames: int) -> np.ndarray:
    """float16[frames, D] Whisper encoder states of float32[N] 16 kHz audio, mean-pooled from
    50 Hz to the 25 fps grid, computed in 30 s windows (each padded to 30 s as Whisper expects)."""
    import torch
    import whisper

    per_window = int(WHISPER_WINDOW_S * CROP_FPS)
    chunks = []
    device = next(model.parameters()).device
    for start in range(0, frames, per_window):
        n = min(per_window, frames - start)
        seg = audio[start * AUDIO_RATE // CROP_FPS : (start + n) * AUDIO_RATE // CROP_FPS]
        seg = whisper.pad_or_trim(np.asarray(seg, np.float32))
        mel = whisper.log_mel_spectrogram(seg, model.dims.n_mels).to(device)
        with torch.no_grad():
            states = model.encoder(mel[None].to(next(model.parameters()).dtype))[0]
        states = states[: 2 * n].float().cpu().numpy()
        chunks.append(states.reshape(n, 2, -1).mean(axis=1))
    return np.concatenate(chunks).astype(np.float16)


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
        from pipeline.models.vad_silero import SILERO
        from pipeline.models.whisper_bundled import specs_for

        specs = [SILERO]
        if self.config.features or self.config.transcribe:
            specs += specs_for(self.config.speech_backend)
        return specs

    def setup(self) -> None:
        from pipeline.models.vad_silero import SileroVad

        self.vad = SileroVad(
            self.config.vad_threshold, self.config.min_speech_s, self.config.min_silence_s
        ).load()
        if self.config.features or self.config.transcribe:
            from pipeline.models.whisper_bundled import load_whisper

            self.whisper = load_whisper(self.config.speech_backend, self.config.device)

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
