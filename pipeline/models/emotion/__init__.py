"""Emotion backends behind one factory: `load_emotion(backend)` -> a classifier of face crops.

Backends (`predict(faces uint8[N,S,S,3] RGB) -> (probs float32[N,C], valence/arousal
float[N,2] or None)`, `classes`: the C class names): `fer` (bundled), `facex` (bundled),
`hsemotion` (reference, 8 AffectNet classes). Backends that share a class list can be averaged:
`fer+facex` (the pipeline's default) is the mean of both bundled classifiers' probabilities.
`crop_faces` frames the faces as the classifiers were trained (a detector-like square box from
the 68 landmarks).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pipeline.models.emotion import facex, fer, hsemotion
from pipeline.models.registry import ModelSpec

EMOTION_BACKENDS = ("fer", "facex", "hsemotion")


class EmotionModel(Protocol):
    classes: tuple[str, ...]

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """faces uint8[N,S,S,3] RGB -> (probabilities float32[N,C], valence/arousal float[N,2]
        or None)."""
        ...


def _backend_module(backend: str):
    modules = {"fer": fer, "facex": facex, "hsemotion": hsemotion}
    if backend not in modules:
        raise ValueError(f"emotion backend must be one of {EMOTION_BACKENDS}, got {backend!r}")
    return modules[backend]


def backend_names(backend: str) -> list[str]:
    """"fer+facex" -> ["fer", "facex"], each checked against BACKENDS."""
    names = backend.split("+")
    for name in names:
        _backend_module(name)
    if len(set(names)) != len(names):
        raise ValueError(f"emotion backend {backend!r} names a backend twice")
    return names


def emotion_specs(backend: str) -> list[ModelSpec]:
    """The weights of every member of `backend` ("fer+facex" -> fer's and facex's)."""
    return [_backend_module(name).SPEC for name in backend_names(backend)]


def load_emotion(backend: str = "fer+facex") -> EmotionModel:
    """One backend, or an Ensemble (mean probabilities) for a "+"-joined name."""
    models = []
    for name in backend_names(backend):
        cls = {"fer": "FerEmotion", "facex": "FacexEmotion", "hsemotion": "HSEmotion"}[name]
        models.append(getattr(_backend_module(name), cls)())
    return models[0] if len(models) == 1 else Ensemble(backend, models)


class Ensemble:
    """Mean of several backends' probabilities (they must share one class list); valence and
    arousal are averaged over the members that give them."""

    def __init__(self, name: str, models: list[Any]):
        for m in models[1:]:
            if tuple(m.classes) != tuple(models[0].classes):
                raise ValueError(f"emotion backend {name!r}: members must share one class list, "
                                 f"got {list(models[0].classes)} and {list(m.classes)}")
        self.models = models
        self.classes = models[0].classes

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = [m.predict(faces) for m in self.models]
        probs = np.mean([p for p, _ in outputs], axis=0)
        va = [v for _, v in outputs if v is not None]
        return probs.astype(np.float32), (np.mean(va, axis=0) if va else None)


def face_box(landmarks: np.ndarray, margin: float) -> np.ndarray:
    """A detector-like square box x0, y0, x1, y1 from float[68,2] landmarks: the landmarks' box
    extended upward by a fifth of its height (forehead, as face detectors frame it), squared on its
    centre and grown by `margin` of its side."""
    x0, y0 = landmarks.min(0)
    x1, y1 = landmarks.max(0)
    y0 = y0 - 0.2 * (y1 - y0)
    side = max(x1 - x0, y1 - y0) * (1 + margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def crop_faces(frames: np.ndarray, landmarks: np.ndarray | None, margin: float,
               size: int = 128) -> np.ndarray:
    """uint8[T,S,S,3] crops + float[T,68,2] landmarks (NaN = unknown) -> uint8[T,size,size,3]
    faces; frames without landmarks are used whole. Out-of-frame parts replicate the border."""
    import cv2  # heavy: loaded on use

    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        lm = None if landmarks is None else landmarks[i]
        if lm is None or not np.isfinite(lm).all():
            out[i] = cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=cv2.INTER_AREA)
            continue
        x0, y0, x1, _y1 = face_box(lm, margin)
        scale = size / (x1 - x0)
        M = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float64)
        out[i] = cv2.warpAffine(np.ascontiguousarray(frame), M, (size, size),
                                flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    return out


