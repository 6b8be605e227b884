"""Face backends: protocols (detector, landmarker that follows a face between detections,
identity embedder) and their factories `load_face_backend` and `load_identity`.

Coordinates are source-image pixels (x right, y down). A FaceBackend bundles the three parts,
built from the backend modules of this package (heavy imports happen in their constructors). The
types live in faces/types.py, which the backends import.
"""

from __future__ import annotations

from pipeline.models.faces.insightface import InsightfaceFaces
from pipeline.models.faces.mediapipe import MediapipeFaces
from pipeline.models.faces.mtcnn import MtcnnFaces
from pipeline.models.faces.types import (
    Detection,
    FaceBackend,
    FaceDetector,
    FaceLandmarker,
    IdentityEmbedder,
    Landmarks,
)
from pipeline.models.identity.arcface import ArcFaceIdentity
from pipeline.models.identity.dlib import DlibIdentity

__all__ = [
    "Detection",
    "FaceBackend",
    "FaceDetector",
    "FaceLandmarker",
    "IdentityEmbedder",
    "Landmarks",
    "load_face_backend",
    "load_identity",
]


FACE_BACKENDS = ("mediapipe", "mtcnn", "insightface")
IDENTITY_BACKENDS = ("dlib", "arcface")


def load_identity(name: str = "dlib", threads: int = 1) -> IdentityEmbedder:
    """An identity embedder: "dlib" (bundled, 128-d) or "arcface" (reference buffalo_l w600k_r50
    under the model root, 512-d). `embed(image uint8[H,W,3] RGB, points68 float32[68,2] source
    px) -> float32[dim]`, L2-normalized; compare with `pipeline.models.thresholds.IDENTITY_DISTANCE`."""
    if name == "dlib":
        return DlibIdentity(threads=threads)
    if name == "arcface":
        return ArcFaceIdentity(threads=threads)
    raise ValueError(f"unknown identity backend {name!r}; expected one of {IDENTITY_BACKENDS}")


def load_face_backend(name: str = "mediapipe", identity: str = "dlib", threads: int = 1) -> FaceBackend:
    """A FaceBackend by name: "mediapipe" (bundled default, with the 478-point mesh), "mtcnn"
    (bundled), "insightface" (reference buffalo_l under the model root); `identity` names the
    embedder (`load_identity`)."""
    if name == "mediapipe":
        det = lmk = MediapipeFaces(threads=threads)
    elif name == "mtcnn":
        det = lmk = MtcnnFaces(threads=threads)
    elif name == "insightface":
        det = lmk = InsightfaceFaces(threads=threads)
    else:
        raise ValueError(f"unknown faces backend {name!r}; expected one of {FACE_BACKENDS}")
    return FaceBackend(name=name, detector=det, landmarker=lmk, identity=load_identity(identity, threads),
                       has_mesh=name == "mediapipe")
