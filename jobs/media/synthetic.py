"""Generated media with exact ground truth: textured shots with hard cuts, fades, slow motion,
rotation metadata, optional audio; written with PyAV (H.264 + AAC), streamed frame by frame.
The one synthetic video generator of tests and benchmarks (`generated_video` caches bench files)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS
from pipeline.media import encode_audio

FrameFn = Callable[[int], np.ndarray]  # frame number -> uint8[H,W,3] RGB


def make_video(
    path: str | Path,
    frames_fn: FrameFn,
    n: int,
    fps: float | Fraction = CROP_FPS,
    size: tuple[int, int] = (64, 64),
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_RATE,
    codec: str = "libx264",
    rotation: int = 0,
    crf: int = 23,
    gop: int | None = None,
    threads: int = 0,
) -> Path:
    """Encode `n` frames `frames_fn(i)` (uint8[H,W,3] RGB, size = (W, H), both even) at constant
    `fps`; `audio` float32[N] mono in [-1, 1] at `sample_rate` (AAC). `rotation` (0/90/180/270,
    counter-clockwise as FFmpeg's display matrix) is written as container metadata only: the
    coded pixels are the same as the unrotated file's."""
    import av  # lazy: memory bench's measured process

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rate = Fraction(fps).limit_denominator(100000)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with av.open(str(tmp), mode="w", format="mp4" if path.suffix in (".mp4", ".mov") else None) as out:
        vstream = out.add_stream(codec, rate=rate)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": "veryfast"}
        if gop is not None:
            options["g"] = str(gop)
        vstream.options = options
        vstream.codec_context.thread_count = threads
        if rotation % 360:
            vstream.set_display_rotation(rotation % 360)
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        for i in range(n):
            image = np.ascontiguousarray(frames_fn(i))
            if image.shape != (height, width, 3):
                raise ValueError(f"frame {i}: expected shape {(height, width, 3)}, got {image.shape}")
            for packet in vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in vstream.encode():
            out.mux(packet)
        if astream is not None:
            encode_audio(out, astream, audio, sample_rate)
    tmp.replace(path)
    return path


def texture(seed: int, size: tuple[int, int], detail: float = 6.0) -> np.ndarray:
    """A smooth colour texture uint8[H,W,3] (size = (W, H)) with fine grain: each seed gives a
    different palette and layout, so two textures differ strongly in hue, saturation and value."""
    import cv2  # lazy: memory bench's measured process

    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.random((max(2, int(height / 80)), max(2, int(width / 80)), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    base = rng.uniform(40, 215, 3).astype(np.float32)
    spread = rng.uniform(60, 120, 3).astype(np.float32)
    grain = rng.normal(0, detail, (height, width, 1)).astype(np.float32)
    image = base + (smooth - 0.5) * spread * 2 + grain
    return np.clip(image, 0, 255).astype(np.uint8)


def shots(
    cuts: Sequence[int],
    size: tuple[int, int],
    seed: int = 0,
    pan_px: float = 1.0,
    margin: int = 160,
) -> FrameFn:
    """Frames of textured shots with hard cuts at frame numbers `cuts` (the first frame of each
    new shot). Each shot pans its own texture by `pan_px` pixels per frame and carries a moving
    square. Frames must be requested in increasing order for speed (one texture is cached)."""
    width, height = size
    bounds = sorted(int(c) for c in cuts)
    cache: dict[int, np.ndarray] = {}

    def frame(i: int) -> np.ndarray:
        shot = int(np.searchsorted(bounds, i, side="right"))
        start = bounds[shot - 1] if shot else 0
        if shot not in cache:
            cache.clear()
            cache[shot] = texture(seed * 1000 + shot, (width + margin, height + margin))
        tex = cache[shot]
        t = i - start
        off = round(t * pan_px) % (2 * margin)
        off = off if off < margin else 2 * margin - 1 - off  # back and forth: no jump
        image = tex[off // 2 : off // 2 + height, off : off + width].copy()
        side = max(4, height // 8)
        x = int((start * 7 + t * 2) % max(1, width - side))
        y = int((height - side) / 2 + (height / 4) * np.sin(t / 15))
        image[y : y + side, x : x + side] = (255 - tex[0, 0]).astype(np.uint8)
        return image

    return frame


def slow_motion(size: tuple[int, int], seed: int = 0, n: int = 100) -> FrameFn:
    """One shot without cuts: a slow zoom and pan over one texture plus a slow brightness drift
    (+-10 levels over `n` frames). No frame should be a cut."""
    import cv2  # lazy: memory bench's measured process

    width, height = size
    tex = texture(seed, (width * 2, height * 2))

    def frame(i: int) -> np.ndarray:
        zoom = 1.0 + 0.3 * i / max(1, n)
        w, h = int(width * 2 / (1.5 * zoom)), int(height * 2 / (1.5 * zoom))
        x0 = int((width * 2 - w) * (0.3 + 0.4 * i / max(1, n)))
        y0 = int((height * 2 - h) / 2)
        crop = tex[y0 : y0 + h, x0 : x0 + w]
        image = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        image += int(10 * np.sin(2 * np.pi * i / max(1, n)))
        return np.clip(image, 0, 255).astype(np.uint8)

    return frame


def fade(
    first: FrameFn, second: FrameFn, start: int, length: int, through_black: bool = True,
    hold: int = 2,
) -> FrameFn:
    """`first` until frame `start`, then a transition to `second`. `through_black`: a dip to
    black (`length` frames fading out, `hold` black frames, `length` frames fading in; the first
    frame of `second` at full level is start + 2 * length + hold). Otherwise a linear
    cross-dissolve of `length` frames."""
    total = 2 * length + hold if through_black else length

    def frame(i: int) -> np.ndarray:
        if i < start:
            return first(i)
        if i >= start + total:
            return second(i)
        k = i - start
        if through_black:
            if k < length:
                return (first(i).astype(np.float32) * (1 - (k + 1) / (length + 1))).astype(np.uint8)
            if k < length + hold:
                return np.zeros_like(first(i))
            level = (k - length - hold + 1) / (length + 1)
            return (second(i).astype(np.float32) * level).astype(np.uint8)
        a = (k + 1) / (length + 1)
        mix = first(i).astype(np.float32) * (1 - a) + second(i).astype(np.float32) * a
        return mix.astype(np.uint8)

    return frame


def tone(seconds: float, sample_rate: int = AUDIO_RATE, hz: float = 220.0) -> np.ndarray:
    """float32[N] mono sine with a 3 Hz amplitude envelope (a stand-in for speech loudness)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def generated_video(path: str | Path, seconds: float, size: tuple[int, int] = (1280, 720),
                    fps: int = CROP_FPS, seed: int = 0) -> tuple[Path, list[int]]:
    """A cached H.264 file of textured, panning `shots` with hard cuts every 1.5-9 s (seeded).
    Returns (path, cut frame numbers); the file is written once (atomically) and reused."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    cuts, t = [], 0
    while True:
        t += int(rng.uniform(1.5, 9.0) * fps)
        if t >= n - fps:
            break
        cuts.append(t)
    if not path.is_file():
        frames = shots(cuts, size, seed=seed, pan_px=1.0, margin=max(32, size[0] // 8))
        make_video(path, frames, n, fps=fps, size=size)
    return path, cuts
