"""Voice activity backend: Silero VAD v6 (bundled in the silero-vad package).

The model reads 32 ms windows (512 samples at 16 kHz, each with the 64 samples before it) and
carries an LSTM state from one to the next. The package's TorchScript file runs one window a
call (625 calls for 20 s: about 0.4-0.7 CPU s); its `silero_vad_16k_sequence.onnx` takes every
window at once (about 0.05 CPU s for 20 s), with speech probabilities equal to 2e-5 and the same
segments on the bench's speech. engine="torch" runs the TorchScript file (the reference).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from catalog.contract import AUDIO_RATE
from pipeline.models.onnx_session import ort_session
from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

SPEECH_PAD_S = 0.03  # each speech span is widened by this much on both sides (Silero's default)

SILERO = register(
    ModelSpec(
        task="vad",
        backend="silero",
        kind="bundled",
        files=("data/silero_vad.jit", "data/silero_vad_16k_sequence.onnx"),
        package="silero_vad",
        license="MIT",
        source="PyPI silero-vad==6.2.3",
        version="6.2.3",
        description="Silero VAD, 16 kHz, 32 ms windows (TorchScript; ONNX over a whole sequence)",
    )
)


class SileroVad:
    """Speech segments of 16 kHz mono audio with the bundled Silero model.

    threshold: speech probability above which a 32 ms window is speech;
    min_speech_s / min_silence_s: shortest kept speech segment / gap that splits segments."""

    sample_rate = AUDIO_RATE  # Silero takes 16 kHz, the catalog contract's rate
    window = 512  # samples a probability
    context = 64  # samples before each window that the model also reads

    def __init__(
        self, threshold: float = 0.5, min_speech_s: float = 0.25, min_silence_s: float = 0.1,
        engine: str = "onnx",
    ):
        if engine not in ("onnx", "torch"):
            raise ValueError(f"Silero VAD engine must be 'onnx' or 'torch', got {engine!r}")
        self.threshold = threshold
        self.min_speech_s = min_speech_s
        self.min_silence_s = min_silence_s
        self.engine = engine
        self.model = None

    def load(self) -> SileroVad:
        if self.engine == "onnx":
            self.model = ort_session(resolve(SILERO, "data/silero_vad_16k_sequence.onnx"))
            return self

        import torch  # heavy: loaded on use

        with warnings.catch_warnings():  # torch 2.x deprecates jit.load; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(resolve(SILERO)), map_location="cpu").eval()
        return self

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """float32[ceil(N / 512)] speech probability of each 32 ms window of float32[N] 16 kHz
        audio (the last window zero-padded), the LSTM state carried from the first window on."""
        if self.model is None:
            self.load()
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        n = -(-len(audio) // self.window)
        if self.engine == "torch":
            import torch

            self.model.reset_states()
            padded = torch.from_numpy(np.pad(audio, (0, n * self.window - len(audio))))
            with torch.no_grad():
                return np.array([self.model(padded[k * self.window:(k + 1) * self.window],
                                            self.sample_rate).item() for k in range(n)],
                                np.float32)
        padded = np.zeros(self.context + n * self.window, np.float32)
        padded[self.context:self.context + len(audio)] = audio
        rows = (np.arange(n)[:, None] * self.window
                + np.arange(self.context + self.window)[None, :])  # [n, 576]
        state = np.zeros((1, 1, 128), np.float32)
        probs = self.model.run(["speech_probs"], {"input": padded[rows], "h": state, "c": state})
        return np.asarray(probs[0], np.float32).reshape(n)

    def segments(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """[(start_s, end_s)] speech segments of float32[N] audio at 16 kHz, in seconds."""
        if len(audio) < self.window:
            return []
        rate = self.sample_rate  # the durations in whole ms, as silero-vad takes them
        stamps = speech_stamps(self.probabilities(audio), self.window, self.threshold,
                               rate * int(self.min_speech_s * 1000) / 1000,
                               rate * int(self.min_silence_s * 1000) / 1000,
                               SPEECH_PAD_S * rate, len(audio))
        return [(start / self.sample_rate, end / self.sample_rate) for start, end in stamps]


def speech_stamps(probs, window: int, threshold: float, min_speech: float, min_silence: float,
                  pad: float, length: int) -> list[tuple[int, int]]:
    """[(start, end)] speech spans in samples from one speech probability per `window` samples,
    Silero's rule (its `get_speech_timestamps_from_probs` with no maximum speech length, written
    here so that the audio stage does not import torch with the silero-vad package; equal on
    random sequences, tested): a span starts at a window at or above `threshold` and ends where
    the probability first fell below threshold - 0.15 once that lasted `min_silence` samples;
    spans of at most `min_speech` samples are dropped; each is then widened by `pad` samples
    (clamped to the audio), and neighbours closer than 2 * pad meet halfway."""
    low = max(threshold - 0.15, 0.01)
    spans: list[list[float]] = []
    start = None
    silence_from = 0
    for i, p in enumerate(probs):
        at = window * i
        if p >= threshold and silence_from:
            silence_from = 0
        if p >= threshold and start is None:
            start = at
            continue
        if p < low and start is not None:
            if not silence_from:
                silence_from = at
            if at - silence_from < min_silence:
                continue
            if silence_from - start > min_speech:
                spans.append([start, silence_from])
            start, silence_from = None, 0
    if start is not None and length - start > min_speech:
        spans.append([start, length])
    for i, span in enumerate(spans):
        if i == 0:
            span[0] = int(max(0, span[0] - pad))
        if i == len(spans) - 1:
            span[1] = int(min(length, span[1] + pad))
            continue
        gap = spans[i + 1][0] - span[1]
        if gap < 2 * pad:
            span[1] += int(gap // 2)
            spans[i + 1][0] = int(max(0, spans[i + 1][0] - gap // 2))
        else:
            span[1] = int(min(length, span[1] + pad))
            spans[i + 1][0] = int(max(0, spans[i + 1][0] - pad))
    return [(int(a), int(b)) for a, b in spans]
