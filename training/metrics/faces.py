"""A video's face on the 25 fps grid, through the pipeline's face backend: aligned face crops, 68
landmarks (crop and source px) and the 16 kHz audio, ready for the per-clip metrics.

Each grid frame shows the source frame on screen at that time. The face is followed with the
backend's landmarker (seeded from the previous frame's landmarks) and re-detected every
`detect_every` frames or when lost. Crops use the faces stage's default crop geometry (256 px,
1.8x the brows-to-chin box, roll removed, Gaussian-smoothed over 2 grid frames), so metrics in
crop pixels are on the catalog's scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS, SAMPLES_PER_FRAME
from pipeline.models.faces import FaceBackend, Landmarks
from pipeline.models.geometry import (
    CropSpec,
    apply_affine,
    eye_angle,
    face_box_from_68,
    square_affine,
)
from pipeline.models.signal import fill_gaps, gaussian_smooth

log = logging.getLogger(__name__)

CROP = CropSpec()  # the faces stage's default crop geometry


class NoFaceError(ValueError):
    """No face was found where one was needed."""


@dataclass
class FaceClip:
    """One video's face on the grid. crops uint8[T,S,S,3]; landmarks float32[T,68,2] crop px and
    points_src float32[T,68,2] source px (NaN rows: no face); audio float32[T*640] (zeros when
    has_audio is False); source_size (width, height)."""

    path: str
    crops: np.ndarray
    landmarks: np.ndarray
    points_src: np.ndarray
    audio: np.ndarray
    has_audio: bool
    source_size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return len(self.crops)

    @property
    def face_frames(self) -> np.ndarray:
        """bool[T]: frames with a face."""
        return np.isfinite(self.landmarks).all((1, 2))


MIN_SIDE = 192  # smaller videos (the tiny model's 64 px output) are enlarged for the detectors


def grid_frames(path: str | Path, max_seconds: float | None = None) -> list[np.ndarray]:
    """The frames on screen at each 25 fps grid time (uint8[H,W,3] RGB each). A video whose
    shorter side is under MIN_SIDE px is enlarged (bicubic) to it: MediaPipe's detector does not
    find faces in a 64 px frame, and every measurement is made on 256 px crops anyway."""
    import cv2

    from pipeline.media import iter_frames

    def sized(image: np.ndarray) -> np.ndarray:
        short = min(image.shape[:2])
        if short >= MIN_SIDE:
            return image
        scale = MIN_SIDE / short
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)

    decoded = [(f.pts_s, sized(f.image)) for f in iter_frames(str(path), 0.0, max_seconds)]
    if not decoded:
        return []
    times = np.array([t for t, _ in decoded])
    end = times[-1] + (float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / CROP_FPS)
    if max_seconds is not None:
        end = min(end, max_seconds)
    n = max(1, int(round((end - times[0]) * CROP_FPS)))
    picks = [max(0, int(np.searchsorted(times, times[0] + i / CROP_FPS + 1e-6)) - 1) for i in range(n)]
    return [decoded[k][1] for k in picks]


def face_points(backend: FaceBackend, image: np.ndarray, prev: Landmarks | None = None,
                detect: bool = True, hint: np.ndarray | None = None) -> Landmarks | None:
    """The most prominent face's landmarks in one image uint8[H,W,3], or None: followed from
    `prev` (the previous frame's) unless `detect` asks for a fresh detection; either falls back
    to the other, and both to the landmarker on the `hint` box (x0, y0, x1, y1) when given. The
    landmarker's presence score gates every result."""

    def hinted() -> Landmarks | None:
        if hint is None:
            return None
        lm = backend.landmarker.landmarks(image, hint)
        return lm if lm.presence >= backend.presence_threshold else None

    def follow() -> Landmarks | None:
        if prev is None:
            return None
        lm = backend.landmarker.landmarks(image, face_box_from_68(prev.points68), prev=prev)
        return lm if lm.presence >= backend.presence_threshold else None

    def detected() -> Landmarks | None:
        dets = backend.detector.detect(image)
        if not dets:
            return None
        lm = backend.landmarker.landmarks(image, dets[0].box, keypoints=dets[0].keypoints)
        return lm if lm.presence >= backend.presence_threshold else None

    if detect:
        return detected() or follow() or hinted()
    return follow() or detected() or hinted()


def crop_face_box(width: int, height: int) -> np.ndarray:
    """Where the face is in a frame that is itself a face crop of the catalog's geometry (what
    `emoforge generate` writes): the central square of side min(width, height) / CROP.scale."""
    side = min(width, height) / CROP.scale
    cx, cy = width / 2, height / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def load_face_clip(path: str | Path, backend: FaceBackend, audio: np.ndarray | None = None,
                   max_seconds: float | None = None, detect_every: int = 10,
                   face_crop: bool = False) -> FaceClip:
    """Decode `path` onto the grid, follow its face, cut aligned crops. `audio` float32 16 kHz
    replaces the file's own track (cut or zero-padded to the video). `face_crop`: the video is a
    face crop (a generated clip), so where the detector finds no face and none is followed, the
    landmarker is tried on the crop's central face box (crop_face_box). NoFaceError when no frame
    has a face; a file without frames raises ValueError."""
    import cv2

    from pipeline.media import read_audio

    frames = grid_frames(path, max_seconds)
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    t = len(frames)
    h, w = frames[0].shape[:2]
    points = np.full((t, 68, 2), np.nan, np.float32)
    prev: Landmarks | None = None
    hint = crop_face_box(w, h) if face_crop else None
    for i, image in enumerate(frames):
        lm = face_points(backend, image, prev, detect=i % detect_every == 0, hint=hint)
        prev = lm
        if lm is not None:
            points[i] = lm.points68
    known = np.isfinite(points).all((1, 2))
    if not known.any():
        raise NoFaceError(f"{path}: no face found in any of its {t} frames")
    filled = fill_gaps(points.astype(np.float64), known)
    boxes = np.stack([face_box_from_68(p) for p in filled])
    sigma = CROP.smooth_sigma
    centers = gaussian_smooth((boxes[:, :2] + boxes[:, 2:]) / 2, sigma, ends="hold")
    sides = gaussian_smooth(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
                            * CROP.scale, sigma, ends="hold")
    angles = gaussian_smooth(np.unwrap([eye_angle(p) for p in filled]), sigma, ends="hold")
    crops = np.empty((t, CROP.size, CROP.size, 3), np.uint8)
    landmarks = np.full_like(points, np.nan)
    for i in range(t):
        m = square_affine(tuple(centers[i]), float(sides[i]), float(angles[i]), CROP.size)
        crops[i] = cv2.warpAffine(frames[i], m.astype(np.float64), (CROP.size, CROP.size),
                                  flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        if known[i]:
            landmarks[i] = apply_affine(m, points[i])
    if audio is None:
        audio = read_audio(str(path), AUDIO_RATE, 0.0, t / CROP_FPS)
        has_audio = len(audio) > 0
    else:
        has_audio = True
    audio = np.asarray(audio, np.float32)[: t * SAMPLES_PER_FRAME]
    audio = np.pad(audio, (0, t * SAMPLES_PER_FRAME - len(audio)))
    log.debug("%s: %d grid frames, face in %d", path, t, int(known.sum()))
    return FaceClip(str(path), crops, landmarks, points, audio, has_audio, (w, h))


def reference_embedding(image: np.ndarray, backend: FaceBackend, identity) -> np.ndarray:
    """The identity embedding (float32[D]) of the most prominent face in a photo uint8[H,W,3]."""
    lm = face_points(backend, image)
    if lm is None:
        raise NoFaceError("no face found in the reference image")
    return identity.embed(image, lm.points68)
