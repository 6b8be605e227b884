"""Face backends: protocols (detector, landmarker that follows a face between detections,
identity embedder) and their factories `load_face_backend` and `load_identity`.

Coordinates are source-image pixels (x right, y down). A FaceBackend bundles the three parts,
built from the backend modules of this package (heavy imports happen in their constructors).
"""

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


FACE_BACKENDS = ("mediapipe", "mtcnn", "insightface")
IDENTITY_BACKENDS = ("dlib", "arcface")


def load_identity(name: str = "dlib", threads: int = 1) -> IdentityEmbedder:
    """An identity embedder: "dlib" (bundled, 128-d) or "arcface" (reference buffalo_l w600k_r50
    under the model root, 512-d). `embed(image uint8[H,W,3] RGB, points68 float32[68,2] source
    px) -> float32[dim]`, L2-normalized; compare with `pipeline.models.thresholds.IDENTITY_DISTANCE`."""
    if name == "dlib":
        from pipeline.models.identity.dlib import DlibIdentity

        return DlibIdentity(threads=threads)
    if name == "arcface":
        from pipeline.models.identity.arcface import ArcFaceIdentity

        return ArcFaceIdentity(threads=threads)
    raise ValueError(f"unknown identity backend {name!r}; expected one of {IDENTITY_BACKENDS}")


def load_face_backend(name: str = "mediapipe", identity: str = "dlib", threads: int = 1) -> FaceBackend:
    """A FaceBackend by name: "mediapipe" (bundled default, with the 478-point mesh), "mtcnn"
    (bundled), "insightface" (reference buffalo_l under the model root); `identity` names the
    embedder (`load_identity`)."""
    if name == "mediapipe":
        from pipeline.models.faces.mediapipe import MediapipeFaces

        det = lmk = MediapipeFaces(threads=threads)
    elif name == "mtcnn":
        from pipeline.models.faces.mtcnn import MtcnnFaces

        det = lmk = MtcnnFaces(threads=threads)
    elif name == "insightface":
        from pipeline.models.faces.insightface import InsightfaceFaces

        det = lmk = InsightfaceFaces(threads=threads)
    else:
        raise ValueError(f"unknown faces backend {name!r}; expected one of {FACE_BACKENDS}")
    return FaceBackend(name=name, detector=det, landmarker=lmk, identity=load_identity(identity, threads),
                       has_mesh=name == "mediapipe")
