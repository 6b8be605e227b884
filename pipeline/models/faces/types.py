"""What face backends return and the protocols a FaceBackend bundles (source-image pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Detection:
    """One detected face.

    box:       float32[4] x0, y0, x1, y1 in source pixels
    score:     detector confidence in [0, 1]
    keypoints: float32[5,2] right eye, left eye (image left first), nose, mouth corners, or None
    """

    box: np.ndarray
    score: float
    keypoints: np.ndarray | None = None


@dataclass
class Landmarks:
    """A landmarker's result for one face in one frame.

    points68: float32[68,2] iBUG 68-point landmarks in source pixels
    presence: confidence in [0, 1] that a face is still there (drives re-detection)
    mesh:     float32[478,3] MediaPipe mesh in source pixels (z in the same pixel scale), or None
    """

    points68: np.ndarray
    presence: float
    mesh: np.ndarray | None = None


class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: uint8[H,W,3] RGB -> faces, best first."""
        ...


class FaceLandmarker(Protocol):
    def landmarks(
        self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray | None = None,
        prev: Landmarks | None = None, mesh: bool = False,
    ) -> Landmarks:
        """Landmarks of the face inside `box` (float32[4] source px, with the detector's
        `keypoints` when fresh); `prev`, this face's landmarks in the previous frame, places the
        region of interest when following. mesh: also return the 478-point mesh (with irises)."""
        ...


class IdentityEmbedder(Protocol):
    name: str  # "dlib" (128-d) or "arcface" (512-d)
    dim: int

    def embed(self, image: np.ndarray, points68: np.ndarray) -> np.ndarray:
        """image: uint8[H,W,3] RGB, points68: float32[68,2] source px -> float32[dim], L2-normed."""
        ...


@dataclass
class FaceBackend:
    """What the tracker needs: a detector, a landmarker and an identity embedder."""

    name: str
    detector: FaceDetector
    landmarker: FaceLandmarker
    identity: IdentityEmbedder
    has_mesh: bool = False
    presence_threshold: float = 0.5
