"""Bundled identity backend: dlib's ResNet face descriptor (128-d), aligned by 68 landmarks.

Weights ship in `face-recognition-models==0.3.0` (read by path; its package imports
pkg_resources). dlib's raw descriptors (norm about 1.4): same person about 0.25 apart, different
people about 0.85 (dlib's threshold 0.6); this backend L2-normalizes them, which divides those
distances by about 1.4 (pipeline.models.thresholds.IDENTITY_DISTANCE["dlib"] = 0.42).
"""

from __future__ import annotations

import numpy as np

from pipeline.models.identity.dlib_resnet import embed_chips, load_dlib_resnet
from pipeline.models.registry import ModelSpec, register, resolve

IDENTITY_SPEC = register(ModelSpec(
    task="identity", backend="dlib", kind="bundled", package="face_recognition_models",
    files=("models/dlib_face_recognition_resnet_model_v1.dat",),
    license="CC0-1.0 (dlib model; trained on public face data)",
    source="PyPI package face-recognition-models==0.3.0 (with dlib-bin==20.0.1.post1)",
    version="v1", description="dlib ResNet-29 face descriptor, 128-d, euclidean threshold 0.6",
))
LANDMARKS68_SPEC = register(ModelSpec(
    task="face_landmarks", backend="dlib68", kind="bundled", package="face_recognition_models",
    files=("models/shape_predictor_68_face_landmarks.dat",),
    license="non-commercial (trained on iBUG 300-W)",
    source="PyPI package face-recognition-models==0.3.0 (with dlib-bin==20.0.1.post1)",
    version="v1", description="dlib 68-point shape predictor (ERT)",
))


class DlibIdentity:
    """128-d dlib descriptor of a face given its 68 landmarks (implements IdentityEmbedder).

    dlib aligns the 150 px chip (its get_face_chip, as compute_face_descriptor does); the network
    is rebuilt from dlib's weight file (pipeline.models.identity.dlib_resnet) and runs on onnxruntime:
    dlib-bin's own CPU path has no BLAS and takes about 110 ms per face, this about 8 ms on one
    thread, with descriptors equal to dlib's within 1e-6."""

    name = "dlib"
    dim = 128

    def __init__(self, threads: int = 1):
        self.net = load_dlib_resnet(resolve(IDENTITY_SPEC), threads=max(1, threads))

    def embed(self, image: np.ndarray, points68: np.ndarray) -> np.ndarray:
        """image: uint8[H,W,3] RGB, points68: float32[68,2] source px -> float32[128], L2-normed."""
        import dlib  # heavy: loaded on use

        pts = np.asarray(points68, np.float64)
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        shape = dlib.full_object_detection(rect, [dlib.point(round(x), round(y))
                                                  for x, y in pts])
        chip = dlib.get_face_chip(np.ascontiguousarray(image), shape, size=150, padding=0.25)
        desc = embed_chips(self.net, chip)[0]
        return desc / max(float(np.linalg.norm(desc)), 1e-9)


class DlibLandmarker:
    """dlib's 68-point shape predictor on a face box (used by the MTCNN backend)."""

    def __init__(self):
        import dlib  # heavy: loaded on use

        self.predictor = dlib.shape_predictor(str(resolve(LANDMARKS68_SPEC)))

    def points(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """image: uint8[H,W,3] RGB (or gray), box: float[4] -> float32[68,2] source px."""
        import dlib  # heavy: loaded on use

        x0, y0, x1, y1 = [round(float(v)) for v in box]
        shape = self.predictor(np.ascontiguousarray(image), dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], np.float32)
