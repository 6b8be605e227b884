"""What an expression backend returns, and the protocol every backend follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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
