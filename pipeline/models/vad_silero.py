"""Voice activity backend: Silero VAD v6 (bundled in the silero-vad package).

The model reads 32 ms windows (512 samples at 16 kHz, each with the 64 samples before it) and
carries an LSTM state from one to the next. The package's TorchScript file runs one window a
call (625 calls for 20 s: about 0.4-0.7 CPU s); its `silero_vad_16k_sequence.onnx` takes every
window at once (about 0.05 CPU s for 20 s), with speech probabilities equal to 2e-5 and the same
segments on the bench's speech. engine="torch" runs the TorchScript file (the reference).
"""

from __future__ import annotations

import logging

import numpy as np

from catalog.contract import AUDIO_RATE
from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

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
            from pipeline.models.onnx_session import ort_session

            self.model = ort_session(resolve(SILERO, "data/silero_vad_16k_sequence.onnx"))
            return self
        import warnings

        import torch

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
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        if len(audio) < self.window:
            return []
        stamps = get_speech_timestamps_from_probs(
            self.probabilities(audio).tolist(),
            sampling_rate=self.sample_rate,
            threshold=self.threshold,
            min_speech_duration_ms=int(self.min_speech_s * 1000),
            min_silence_duration_ms=int(self.min_silence_s * 1000),
            speech_pad_ms=30,
            audio_length_samples=len(audio),
        )
        return [(s["start"] / self.sample_rate, s["end"] / self.sample_rate) for s in stamps]
