"""`emoforge bench expression`: frames per second per core of the expression and emotion analyzers."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import importlib.util

import cv2

from catalog.contract import CROP_FPS
from jobs.media.sources import media_file
from pipeline.media import iter_frames
from pipeline.models.expression import DEFAULT_EXPRESSION_BACKEND
from pipeline.stages.analyze.base import DecodedTrack
from pipeline.stages.analyze.emotion import EmotionAnalyzer, EmotionConfig
from pipeline.stages.analyze.expression import ExpressionAnalyzer, ExpressionConfig

log = logging.getLogger(__name__)

CROP = 256


def _real_track(name: str = "single_face.mp4", repeat: int = 4):
    """A DecodedTrack of a real face: single_face.mp4 on the 25 fps grid, cropped around dlib's
    HOG box (found once), with dlib's 68 landmarks per frame (not timed); `repeat` loops it."""
    import dlib  # heavy: dlib

    decoded = [(f.pts_s, f.image) for f in iter_frames(str(media_file(name)))]
    grid, j = [], 0
    for k in range(int(decoded[-1][0] * CROP_FPS) + 1):
        while j + 1 < len(decoded) and decoded[j + 1][0] <= k / CROP_FPS + 1e-6:
            j += 1
        grid.append(decoded[j][1])
    base = next(iter(importlib.util.find_spec("face_recognition_models").submodule_search_locations))
    predictor = dlib.shape_predictor(os.path.join(base, "models", "shape_predictor_68_face_landmarks.dat"))
    rect = dlib.get_frontal_face_detector()(grid[0], 1)[0]
    side = max(rect.width(), rect.height()) * 1.7
    s = CROP / side
    cx, cy = rect.center().x, rect.center().y
    A = np.array([[s, 0, CROP / 2 - cx * s], [0, s, CROP / 2 - cy * s]])
    crops, lms = [], []
    for image in grid:
        crops.append(cv2.warpAffine(image, A, (CROP, CROP), flags=cv2.INTER_AREA))
        pts = np.array([(p.x, p.y) for p in predictor(image, rect).parts()], np.float64)
        lms.append(pts @ A[:, :2].T + A[:, 2])
    frames = np.stack(crops * repeat)
    landmarks = np.stack(lms * repeat).astype(np.float32)
    T = len(frames)
    return DecodedTrack(frames=frames, audio=np.zeros(T * 640, np.float32), landmarks=landmarks,
                        mouth_open=np.zeros(T, np.float32), row={"track_id": name, "shard": 0},
                        has_audio=False)


def run(expression_backend: str | None = None,
        emotion_backends: tuple[str, ...] = ("fer+facex", "fer", "facex")) -> dict:
    """Time the analyzers on one core (torch, litert and BLAS limited to one thread).
    Returns {"frames": T, "<analyzer>/<backend>": frames per second, ..., "expression+emotion": fps}."""
    import torch  # heavy: torch

    expression_backend = expression_backend or DEFAULT_EXPRESSION_BACKEND
    torch.set_num_threads(1)
    track = _real_track()
    T = track.num_frames
    result: dict = {"frames": T, "cores": 1, "crop_px": CROP}
    expr = ExpressionAnalyzer(ExpressionConfig(backend=expression_backend), None)
    expr.setup()
    expr.analyze(track, {})  # warm-up
    t0 = time.perf_counter()
    out = expr.analyze(track, {})
    dt_expr = time.perf_counter() - t0
    result[f"expression/{expression_backend}_fps"] = T / dt_expr
    result["expression_fit_error_px"] = out.track["expression_fit_error_px"]
    for backend in emotion_backends:
        emo = EmotionAnalyzer(EmotionConfig(backend=backend), None)
        emo.setup()
        emo.analyze(track, {})
        t0 = time.perf_counter()
        emo.analyze(track, {})
        dt = time.perf_counter() - t0
        result[f"emotion/{backend}_fps"] = T / dt
        result[f"expression+emotion/{backend}_fps"] = T / (dt + dt_expr)
    log.info("bench expression: %s", result)
    return result
