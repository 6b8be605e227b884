"""Talking-face test media (shared): generated clips with known audio offsets, mouths measured
from the pixels with dlib, and DecodedTracks built from them for the per-track analyzers.

The generator itself lives in jobs/media/talking_face.py (the sync benchmark uses it too); this module
adds what tests need: a cached face, DecodedTrack construction, real face clips at 25 fps.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from jobs.media.talking_face import Clip, Face, astronaut_face, real_face_clip
from catalog.contract import SAMPLES_PER_FRAME
from pipeline.stages.analyze.base import DecodedTrack


@lru_cache(maxsize=1)
def face() -> Face:
    """The astronaut (scikit-image, public domain) cropped to 160 px with its landmarks."""
    return astronaut_face(160)


def track_of(
    clip: Clip,
    track_id: str = "t0",
    shard: int = 0,
    crop_path: str | None = None,
    has_audio: bool = True,
) -> DecodedTrack:
    """A DecodedTrack of a decoded clip (the analyze stage builds the same from a crop)."""
    return DecodedTrack(
        frames=clip.frames,
        audio=clip.audio,
        landmarks=clip.landmarks,
        mouth_open=clip.mouth_open,
        row={"track_id": track_id, "shard": shard, "crop_path": crop_path or str(clip.path)},
        has_audio=has_audio,
    )


def real_face_track(
    path: str | Path, audio: np.ndarray, start_s: float = 0.0, seconds: float = 4.0, size: int = 160
) -> DecodedTrack:
    """A real video's face on the 25 fps grid (jobs.media.talking_face.real_face_clip) with the
    given 16 kHz audio (cut or zero-padded to the track)."""
    frames, landmarks, opening = real_face_clip(path, start_s, seconds, size)
    n = len(frames)
    audio = np.concatenate(
        [audio, np.zeros(max(0, n * SAMPLES_PER_FRAME - len(audio)), np.float32)]
    )
    return DecodedTrack(
        frames=frames,
        audio=audio[: n * SAMPLES_PER_FRAME].astype(np.float32),
        landmarks=landmarks,
        mouth_open=opening,
        row={"track_id": Path(path).stem, "shard": 0, "crop_path": None},
    )
