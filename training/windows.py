"""Window geometry for training samples: where windows start, crop masks, head speed, audio rows.

Pure numpy on one track's per-frame arrays (the 25 fps grid of its face-crop clip). Coordinates:
a crop pixel (x, y) has its centre at integer coordinates (cv2.warpAffine's convention); the
catalog's `crop_affine` maps source pixels to crop pixels at the catalog's `crop_size`.
"""

from __future__ import annotations

import numpy as np

FPS = 25  # the face-crop clips' frame rate
OUTER_LIPS = slice(48, 60)  # 68-point indices of the outer lip contour


def valid_starts(length: int, frames: int, motion: int, margin: int) -> np.ndarray:
    """int64[N]: window starts s on a track of `length` frames such that the motion frames
    s-motion..s-1 and the window s..s+frames-1 fit, and some reference frame lies at least
    `margin` frames before s-motion or after s+frames-1. Empty when the track is too short."""
    starts = np.arange(motion, length - frames + 1, dtype=np.int64)
    before = starts - motion - margin >= 0
    after = starts + frames - 1 + margin <= length - 1
    return starts[before | after]


def min_track_frames(frames: int, motion: int, margin: int) -> int:
    """Shortest track (frames) that has a window and a reference `margin` frames away (the
    reference's index differs from the nearest motion or window frame's by at least margin)."""
    return motion + frames + margin


def reference_range(length: int, start: int, frames: int, motion: int,
                    margin: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The reference frames allowed for a window: two half-open ranges [a, b) (before the motion
    frames, after the window), either possibly empty."""
    return (0, max(0, start - motion - margin + 1)), (min(length, start + frames - 1 + margin),
                                                       length)


def draw_reference(rng: np.random.Generator, length: int, start: int, frames: int, motion: int,
                   margin: int) -> int:
    """A reference frame drawn uniformly from the allowed ones (reference_range)."""
    (a0, a1), (b0, b1) = reference_range(length, start, frames, motion, margin)
    n_before, n_after = max(0, a1 - a0), max(0, b1 - b0)
    if n_before + n_after == 0:
        raise ValueError(f"no reference frame {margin} frames away from window start {start} "
                         f"on a track of {length} frames")
    k = int(rng.integers(n_before + n_after))
    return a0 + k if k < n_before else b0 + (k - n_before)


def audio_rows(features: np.ndarray, frames: np.ndarray, context: int) -> np.ndarray:
    """float32[F, 2*context+1, D]: rows frame-context..frame+context of features [T, D] for each
    window frame, clamped to the track's first and last rows."""
    offsets = np.arange(-context, context + 1)
    idx = np.clip(np.asarray(frames)[:, None] + offsets[None, :], 0, len(features) - 1)
    return np.asarray(features[idx.reshape(-1)], np.float32).reshape(len(frames), len(offsets), -1)


def head_speed(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray, fps: float = FPS,
               smooth: int = 5) -> np.ndarray:
    """float32[T] head rotation speed in deg/s: the norm of the central difference of the
    (yaw, pitch, roll) series (deg), times fps, after a centred moving average of `smooth` frames
    (the faces stage smooths its track speed the same way). Missing angles (NaN) are
    interpolated; a series without any angle gives zeros."""
    angles = np.stack([yaw, pitch, roll], 1).astype(np.float64)
    n = len(angles)
    if n < 2:
        return np.zeros(n, np.float32)
    t = np.arange(n)
    for j in range(3):
        good = np.isfinite(angles[:, j])
        if not good.any():
            angles[:, j] = 0.0
        elif not good.all():
            angles[:, j] = np.interp(t, t[good], angles[good, j])
    if smooth > 1 and n >= smooth:
        pad = smooth // 2
        padded = np.pad(angles, ((pad, smooth - 1 - pad), (0, 0)), mode="edge")
        kernel = np.ones(smooth) / smooth
        angles = np.stack([np.convolve(padded[:, j], kernel, "valid") for j in range(3)], 1)
    return (np.linalg.norm(np.gradient(angles, axis=0), axis=1) * fps).astype(np.float32)


def crop_to_source(affine: np.ndarray, crop_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source-pixel coordinates (x, y), each float32[size, size], of the centres of the pixels of
    the crop resized from `crop_size` to `size`; `affine` float[6] or [2,3] maps source px to
    crop px at crop_size. (Affine, so each is a sum of a row and a column term.)"""
    m = np.asarray(affine, np.float64).reshape(2, 3)
    c = (np.arange(size) + 0.5) * (crop_size / size) - 0.5  # resized pixel centre -> crop px
    inv = np.linalg.inv(m[:, :2])
    cols, rows = c - m[0, 2], c - m[1, 2]  # along x (columns) and y (rows)
    f32 = np.float32
    x = (inv[0, 0] * cols).astype(f32)[None, :] + (inv[0, 1] * rows).astype(f32)[:, None]
    y = (inv[1, 0] * cols).astype(f32)[None, :] + (inv[1, 1] * rows).astype(f32)[:, None]
    return x, y


def face_mask(affine: np.ndarray, box: np.ndarray, crop_size: int, size: int,
              xy: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """float32[size, size]: 1 where the pixel centre's source position lies inside the face box
    (x0, y0, x1, y1, source px), i.e. the box mapped into crop pixels (a rotated rectangle when
    the crop is rolled). A missing box (NaN) gives zeros. `xy`: crop_to_source's output."""
    box = np.asarray(box, np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        return np.zeros((size, size), np.float32)
    x, y = xy if xy is not None else crop_to_source(affine, crop_size, size)
    inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    return inside.astype(np.float32)


def locator_mask(affines: np.ndarray, boxes: np.ndarray, crop_size: int, size: int) -> np.ndarray:
    """float32[size, size]: EMO's face-locator mask of a window, the union of the face boxes of
    the frames given (affines float[N, 2, 3] or [N, 6], boxes float[N, 4] in source px; frames
    without a box add nothing). Training gives the window's frames; generation, which has no
    frame yet, gives the reference's: one mask for every frame of the window in both."""
    mask = np.zeros((size, size), np.float32)
    for affine, box in zip(np.asarray(affines, np.float64), np.asarray(boxes, np.float64)):
        np.maximum(mask, face_mask(affine, box, crop_size, size), out=mask)
    return mask


def valid_mask(affine: np.ndarray, width: int, height: int, crop_size: int, size: int,
               xy: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """float32[size, size]: 1 where the whole footprint of the resized crop pixel maps inside
    the source frame's pixel centres (x in [0, width-1], y in [0, height-1]: every bilinear tap
    is a real pixel), 0 where any of it maps outside: those pixels are the face-crop's border
    padding (repeated edge rows), which the loss must ignore. The footprint is the pixel's square
    in source px (half-extent along x and y from the affine's scale and rotation). `xy`:
    crop_to_source's output."""
    m = np.asarray(affine, np.float64).reshape(2, 3)
    x, y = xy if xy is not None else crop_to_source(m, crop_size, size)
    inv = np.linalg.inv(m[:, :2]) * (crop_size / size)  # one resized pixel step in source px
    half_x = 0.5 * (abs(inv[0, 0]) + abs(inv[0, 1]))
    half_y = 0.5 * (abs(inv[1, 0]) + abs(inv[1, 1]))
    eps = 1e-4
    inside = ((x >= half_x - eps) & (x <= width - 1 - half_x + eps)
              & (y >= half_y - eps) & (y <= height - 1 - half_y + eps))
    return inside.astype(np.float32)


def mouth_boxes(landmarks: np.ndarray, grow: tuple[float, float, float] = (0.5, 0.25, 0.5)
                ) -> np.ndarray:
    """float32[N, 4] (x0, y0, x1, y1, crop px) per frame of landmarks float[N, 136] (68 points
    x0,y0,...): the outer lips' bounding box grown by `grow` = (sides, top, bottom) x its width,
    so that it holds what moves with speech: the lips, and the jaw and chin below and beside
    them. NaN where a frame has no landmarks."""
    points = np.asarray(landmarks, np.float32).reshape(len(landmarks), 68, 2)[:, OUTER_LIPS]
    low, high = points.min(axis=1), points.max(axis=1)  # NaN propagates
    width = high[:, 0] - low[:, 0]
    sides, top, bottom = (g * width for g in grow)
    return np.stack([low[:, 0] - sides, low[:, 1] - top, high[:, 0] + sides, high[:, 1] + bottom],
                    axis=1).astype(np.float32)


def mouth_mask(box: np.ndarray, crop_size: int, size: int) -> np.ndarray:
    """float32[size, size]: 1 where the centre of a pixel of the crop resized from `crop_size`
    to `size` lies inside `box` (x0, y0, x1, y1 in crop px at crop_size), else 0; zeros for a
    missing box (NaN)."""
    box = np.asarray(box, np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        return np.zeros((size, size), np.float32)
    c = (np.arange(size) + 0.5) * (crop_size / size) - 0.5  # resized pixel centre -> crop px
    cols = (c >= box[0]) & (c <= box[2])
    rows = (c >= box[1]) & (c <= box[3])
    return (rows[:, None] & cols[None, :]).astype(np.float32)
