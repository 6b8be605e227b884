"""Whisper's audio encoder without importing torch: log-mel in numpy, the encoder on onnxruntime.

The audio stage needs only Whisper's encoder (the features, and the states the CTranslate2
decoder reads). Running it through openai-whisper cost each analyze worker process about 3.5
CPU-s of set-up before its first track: importing torch (2.5) and openai-whisper (0.4, numba
among it) and building the module. Here the encoder of a speech backend's checkpoint is exported
to ONNX once per machine (`encoder_onnx`, the only step that imports torch; about 3 s), cached in
$EMOFORGE_CACHE/whisper/, and a worker opens it in about 0.15 s. onnxruntime runs it at the same
speed as torch on one core (about 1.35 CPU-s per 30 s window for the base model); the states
equal torch's to float32 rounding (max |difference| 6e-4 at values up to 23, mean 2e-6), and the
float16 features sidecar is identical for 98% of values, the rest one float16 step apart (tested).

`log_mel` is openai-whisper's `log_mel_spectrogram` in numpy (periodic Hann window of 400, hop
160, reflect-padded centred frames, the package's own mel filterbank file, log10 clamped to 8
below the maximum, then (x + 4) / 4), equal to it within 1e-4 (4e-5 on two sentences; tested).

`load_encoder(backend, engine)`: "onnxruntime" (default) or "torch" (openai-whisper's module, the
reference, and the one to use on a GPU with a CPU-only onnxruntime).
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np

from catalog.contract import AUDIO_RATE
from pipeline.models.onnx_session import ort_session
from pipeline.models.registry import build_once, cache_root, package_dir
from pipeline.models.speech.whisper_bundled import checkpoint_path, load_whisper

log = logging.getLogger(__name__)

N_FFT = 400
HOP = 160
WINDOW_SAMPLES = 30 * AUDIO_RATE  # Whisper's 30 s window
ENGINES = ("onnxruntime", "torch")
EXPORT_VERSION = "1"
HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic


def pad_or_trim(audio: np.ndarray, length: int = WINDOW_SAMPLES) -> np.ndarray:
    """float32[length]: `audio` cut or zero-padded at its end (openai-whisper's pad_or_trim)."""
    audio = np.asarray(audio, np.float32)[:length]
    return np.pad(audio, (0, length - len(audio))) if len(audio) < length else audio


@functools.lru_cache(maxsize=2)
def mel_filters(n_mels: int) -> np.ndarray:
    """float32[n_mels, 201]: openai-whisper's mel filterbank (its assets/mel_filters.npz, read
    once per process without importing the package)."""
    folder = package_dir("whisper")
    if folder is None:
        raise ModuleNotFoundError("openai-whisper is not installed: its mel filterbank file "
                                  "(whisper/assets/mel_filters.npz) is needed")
    with np.load(folder / "assets" / "mel_filters.npz", allow_pickle=False) as f:
        return np.asarray(f[f"mel_{n_mels}"], np.float32)


def log_mel(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """float32[n_mels, frames]: Whisper's log-mel spectrogram of float32[N] 16 kHz audio (N //
    160 frames; a 30 s window gives 3000)."""
    audio = np.asarray(audio, np.float32)
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    spectrum = np.fft.rfft(frames * HANN, axis=-1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2)[:-1].astype(np.float32)
    mel = mel_filters(n_mels) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def encoder_onnx(backend: str) -> Path:
    """The ONNX file of the speech backend's encoder (input `mel` float32[1, n_mels, 3000],
    output `states` float32[1, 1500, D]), exported from its checkpoint once and cached."""
    checkpoint = checkpoint_path(backend)
    stat = checkpoint.stat()
    target = (cache_root() / "whisper" /
              f"{checkpoint.stem}-{stat.st_size}-encoder-v{EXPORT_VERSION}.onnx")

    def export(tmp: Path) -> None:
        import torch  # heavy: loaded on use

        log.info("exporting the %s Whisper encoder to ONNX into %s (once)", backend, target)
        model = load_whisper(backend, "cpu")
        mel = torch.zeros(1, model.dims.n_mels, 2 * model.dims.n_audio_ctx)
        with warnings.catch_warnings():  # the traced shape assert: the window is fixed anyway
            warnings.simplefilter("ignore")
            torch.onnx.export(model.encoder, (mel,), str(tmp), input_names=["mel"],
                              output_names=["states"], opset_version=17, dynamo=False)

    return build_once(target, export)


class OnnxEncoder:
    """A Whisper encoder on onnxruntime: `encoder(mel float32[n_mels, 3000])` ->
    float32[1500, D]."""

    def __init__(self, backend: str = "whisper-base", device: str = "cpu", threads: int = 1):
        self.session = ort_session(encoder_onnx(backend), threads,
                                   None if device == "cpu" else "auto")
        self.n_mels = int(self.session.get_inputs()[0].shape[1])

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        mel = np.ascontiguousarray(mel, np.float32)[None]
        return self.session.run(None, {"mel": mel})[0][0]


class TorchEncoder:
    """The same interface on openai-whisper's module (the reference engine)."""

    def __init__(self, backend: str = "whisper-base", device: str = "cpu"):
        self.model = load_whisper(backend, device)
        self.n_mels = self.model.dims.n_mels

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        import torch  # heavy: loaded on use

        parameter = next(self.model.parameters())
        x = torch.from_numpy(np.ascontiguousarray(mel, np.float32))[None]
        with torch.no_grad():
            states = self.model.encoder(x.to(parameter.device, parameter.dtype))
        return states[0].float().cpu().numpy()


def load_encoder(backend: str = "whisper-base", engine: str = "onnxruntime",
                 device: str = "cpu") -> OnnxEncoder | TorchEncoder:
    """The speech backend's Whisper encoder on `engine` (see the module docstring)."""
    if engine == "onnxruntime":
        return OnnxEncoder(backend, device)
    if engine == "torch":
        return TorchEncoder(backend, device)
    raise ValueError(f"unknown Whisper encoder engine {engine!r}; valid: {list(ENGINES)}")
