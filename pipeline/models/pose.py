"""Head pose (yaw, pitch, roll in degrees) from 68 landmarks: solvePnP on a generic 3D face.

The generic face is insightface's mean 68-point shape (`insightface/data/objects/meanshape_68.pkl`,
shipped with the pure-Python `insightface` package). Conventions, in the image as seen:
yaw > 0 when the face turns toward image right, pitch > 0 when it looks up, roll > 0 when the
face tilts clockwise. A pinhole camera with focal length = the longer image side is assumed.
"""

from __future__ import annotations

import functools
import math
import pickle

import numpy as np

from pipeline.models.registry import package_dir
from pipeline.models.signal import fill_gaps

PNP_POINTS = np.r_[17:27, 27:36, 36:48, 48:60, 0:17:2]  # rigid-ish points (no inner lips)


@functools.lru_cache(maxsize=1)
def generic_face() -> np.ndarray:
    """float64[68,3] mean face in OpenCV camera axes (x right, y down, z away from camera)."""
    base = package_dir("insightface")
    if base is None:
        raise FileNotFoundError("head pose needs the insightface package (meanshape_68.pkl)")
    with open(base / "data" / "objects" / "meanshape_68.pkl", "rb") as f:
        shape = np.asarray(pickle.load(f), np.float64)
    shape = shape - shape.mean(0)
    shape[:, 2] = -shape[:, 2]  # file: z toward the viewer
    return shape


def head_pose(points68: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """points68: float[68,2] image px, image_size: (width, height) -> (yaw, pitch, roll) degrees."""
    import cv2  # heavy: loaded on use

    w, h = image_size
    f = float(max(w, h))
    cam = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float64)
    obj = generic_face()[PNP_POINTS]
    img = np.asarray(points68, np.float64)[PNP_POINTS]
    # initial guess: frontal, at the distance where the face has its observed size
    span = float(np.ptp(img[:, 0])) or 1.0
    z0 = f * float(np.ptp(obj[:, 0])) / span
    c = img.mean(0)
    tvec = np.array([[(c[0] - w / 2) * z0 / f], [(c[1] - h / 2) * z0 / f], [z0]])
    rvec = np.zeros((3, 1))
    ok, rvec, tvec = cv2.solvePnP(obj, img, cam, None, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return (math.nan, math.nan, math.nan)
    rot, _ = cv2.Rodrigues(rvec)
    return euler_from_matrix(rot)


def euler_from_matrix(rot: np.ndarray) -> tuple[float, float, float]:
    """Rotation (object to camera, OpenCV axes) -> (yaw, pitch, roll) degrees, R = Rz Ry Rx."""
    sy = math.hypot(rot[0, 0], rot[1, 0])
    pitch = math.degrees(math.atan2(rot[2, 1], rot[2, 2]))
    yaw = math.degrees(math.atan2(-rot[2, 0], sy))
    roll = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
    # camera y points down: looking up is a negative rotation about x
    return (-yaw, -pitch, roll)


def rotation_speed(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray, fps: float,
                   smooth: int = 5) -> np.ndarray:
    """Per-frame head rotation speed in deg/s (norm of the angle differences), from angle series
    float[T] smoothed by a centred moving average of `smooth` frames; float32[T] (first = second)."""
    angles = np.stack([yaw, pitch, roll], 1).astype(np.float64)
    if len(angles) < 2:
        return np.zeros(len(angles), np.float32)
    angles = np.stack([fill_gaps(angles[:, j]) for j in range(angles.shape[1])], 1)
    if smooth > 1 and len(angles) >= smooth:
        kernel = np.ones(smooth) / smooth
        pad = smooth // 2
        padded = np.pad(angles, ((pad, smooth - 1 - pad), (0, 0)), mode="edge")
        angles = np.stack([np.convolve(padded[:, i], kernel, "valid") for i in range(3)], 1)
    speed = np.linalg.norm(np.diff(angles, axis=0), axis=1) * fps
    return np.concatenate([speed[:1], speed]).astype(np.float32)
