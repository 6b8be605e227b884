"""Reference identity backend: ArcFace (insightface buffalo_l w600k_r50, 512-d) on onnxruntime.

The user places `w600k_r50.onnx` under `<root>/identity/arcface/` (non-commercial research
license). The face is aligned by a similarity transform from 5 points (eye centres, nose tip,
mouth corners, taken from the 68 landmarks) onto ArcFace's 112 x 112 template, fed as RGB
(x - 127.5) / 127.5 (or raw pixels for graphs that normalize their input), and the 512-d output
is L2-normalized. Same person: cosine similarity above about 0.5 (distance below 1.0).
"""

from __future__ import annotations

import numpy as np

from pipeline.models.onnx_session import graph_normalizes_input, ort_session
from pipeline.models.registry import ModelSpec, register, resolve

SPEC = register(ModelSpec(
    task="identity", backend="arcface", kind="reference", files=("w600k_r50.onnx",),
    license="non-commercial research (insightface model zoo)",
    source=("insightface model zoo, buffalo_l.zip (github.com/deepinsight/insightface, "
            "python-package model zoo); unzip and place w600k_r50.onnx"),
    version="buffalo_l", description="ArcFace ResNet-50 trained on WebFace600K, 512-d",
))

ALIGNED = 112
# ArcFace's canonical 5-point template in the 112 x 112 aligned face (x, y px): eye at image
# left, eye at image right, nose tip, mouth corner left, mouth corner right.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def five_points(points68: np.ndarray) -> np.ndarray:
    """float[68,2] iBUG landmarks -> float64[5,2]: eye centres (image left first), nose tip,
    mouth corners."""
    p = np.asarray(points68, np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991, no reflection) taking src float[N,2] to
    dst float[N,2] -> float64[2,3] affine."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign)) / max(float((s ** 2).sum() / len(src)), 1e-12)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def align(image: np.ndarray, points68: np.ndarray) -> np.ndarray:
    """uint8[H,W,3] RGB + float[68,2] landmarks -> uint8[112,112,3] ArcFace-aligned face."""
    import cv2  # heavy: loaded on use

    m = similarity(five_points(points68), TEMPLATE)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (ALIGNED, ALIGNED),
                          flags=cv2.INTER_LINEAR, borderValue=0)


class ArcFaceIdentity:
    """512-d ArcFace embedding of a face given its 68 landmarks (implements IdentityEmbedder)."""

    name = "arcface"
    dim = 512

    def __init__(self, threads: int = 1, providers="auto"):
        path = resolve(SPEC)
        self.session = ort_session(path, threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != self.dim:
            raise ValueError(f"{path}: expected a {self.dim}-d ArcFace embedding output, got "
                             f"{width}")
        self.mean, self.std = (0.0, 1.0) if graph_normalizes_input(path) else (127.5, 127.5)

    def embed(self, image: np.ndarray, points68: np.ndarray) -> np.ndarray:
        """image: uint8[H,W,3] RGB, points68: float32[68,2] source px -> float32[512], L2-normed."""
        face = align(image, points68).astype(np.float32)
        blob = ((face - self.mean) / self.std).transpose(2, 0, 1)[None].copy()
        out = self.session.run(None, {self.input_name: blob})[0].reshape(-1).astype(np.float32)
        if out.size != self.dim:
            raise ValueError(f"ArcFace output has {out.size} values, expected {self.dim}")
        return out / max(float(np.linalg.norm(out)), 1e-9)
