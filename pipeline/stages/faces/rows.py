"""Track and frame rows of the faces stage from a finished, cropped track (pose, mouth, stats)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from catalog.contract import CROP_FPS
from pipeline.stages.faces.crop import CropGeometry
from pipeline.models.geometry import mouth_open
from pipeline.models.pose import head_pose, rotation_speed
from pipeline.stages.faces.tracking import FaceTrack


def track_id(clip_id: str, first_frame: int, index: int) -> str:
    """sha256 of "clip_id:first_frame:index", first 32 hex characters."""
    return hashlib.sha256(f"{clip_id}:{first_frame}:{index}".encode()).hexdigest()[:32]


def face_sizes(track: FaceTrack) -> np.ndarray:
    """float32[N] face box side (max of width, height) per observation, source px."""
    boxes = np.array([o.box for o in track.obs.values()], np.float32)
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _f(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def frame_rows(tid: str, crops: CropGeometry, image_size: tuple[int, int]) -> tuple[list[dict], dict]:
    """Per-grid-frame rows and the pose series summary (means, speed)."""
    poses = np.array([head_pose(p, image_size) for p in crops.points68], np.float64)
    rows = []
    for k in range(len(crops.pts_s)):
        yaw, pitch, roll = poses[k]
        rows.append({
            "track_id": tid, "frame": k, "pts_s": float(crops.pts_s[k]),
            "box": crops.boxes[k].tolist(), "landmarks": crops.landmarks[k].reshape(-1).tolist(),
            "crop_affine": crops.affines[k].reshape(-1).tolist(),
            "yaw": _f(yaw), "pitch": _f(pitch), "roll": _f(roll),
            "mouth_open": _f(mouth_open(crops.landmarks[k])),
            "det_confidence": _f(crops.det_score[k]),
        })
    speed = rotation_speed(poses[:, 0], poses[:, 1], poses[:, 2], CROP_FPS)
    summary = {
        "yaw_mean": _f(np.nanmean(poses[:, 0])), "pitch_mean": _f(np.nanmean(poses[:, 1])),
        "roll_mean": _f(np.nanmean(poses[:, 2])), "head_speed_deg_s": _f(float(np.mean(speed))),
    }
    return rows, summary


def track_row(clip: dict[str, Any], tid: str, index: int, track: FaceTrack,
              image_size: tuple[int, int], source_fps: float) -> dict[str, Any]:
    """Track columns known without crops (span, sizes, confidence, identity)."""
    first, last = track.first_index, track.last_index
    sizes = face_sizes(track)
    scores = np.array([o.det_score for o in track.obs.values()], np.float64)
    emb = np.mean(track.embeddings, 0) if track.embeddings else None
    if emb is not None:
        emb = (emb / max(float(np.linalg.norm(emb)), 1e-9)).astype(np.float32).tolist()
    return {
        "track_id": tid, "clip_id": clip["clip_id"], "video_id": clip.get("video_id"),
        "shard": clip.get("shard"), "track_index": index,
        "start_s": track.obs[first].pts_s, "end_s": track.obs[last].pts_s + 1.0 / source_fps,
        "start_frame": first, "end_frame": last + 1,
        "face_px_median": float(np.median(sizes)),
        "face_frac_median": float(np.median(sizes) / max(1, min(image_size))),
        "det_confidence_mean": _f(np.nanmean(scores)) if np.isfinite(scores).any() else None,
        "faces_in_frame_max": max(track.faces_in_frame.values(), default=1),
        "identity_embedding": emb,
    }
