"""Voice activity backend: Silero VAD v6 (TorchScript, bundled in the silero-vad package)."""

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
        files=("data/silero_vad.jit",),
        package="silero_vad",
        license="MIT",
        source="PyPI silero-vad==6.2.3",
        version="6.2.3",
        description="Silero VAD, 16 kHz, 32 ms windows",
    )
)


class SileroVad:
    """Speech segments of 16 kHz mono audio with the bundled Silero model.

    threshold: speech probability above which a 32 ms window is speech;
    min_speech_s / min_silence_s: shortest kept speech segment / gap that splits segments."""

    sample_rate = AUDIO_RATE  # Silero takes 16 kHz, the catalog contract's rate

    def __init__(
        self, threshold: float = 0.5, min_speech_s: float = 0.25, min_silence_s: float = 0.1
    ):
        self.threshold = threshold
        self.min_speech_s = min_speech_s
        self.min_silence_s = min_silence_s
        self.model = None

    def load(self) -> SileroVad:
        import warnings

        import torch

        with warnings.catch_warnings():  # torch 2.x deprecates jit.load; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(resolve(SILERO)), map_location="cpu").eval()
        return self

    def segments(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """[(start_s, end_s)] speech segments of float32[N] audio at 16 kHz, in seconds."""
        import torch
        from silero_vad.utils_vad import get_speech_timestamps

        if self.model is None:
            self.load()
        if len(audio) < 512:
            return []
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
            self.model,
            threshold=self.threshold,
            sampling_rate=self.sample_rate,
            min_speech_duration_ms=int(self.min_speech_s * 1000),
            min_silence_duration_ms=int(self.min_silence_s * 1000),
            speech_pad_ms=30,
        )
        return [(s["start"] / self.sample_rate, s["end"] / self.sample_rate) for s in stamps]
