"""Re-materialize a face-crop clip with its audio moved to lip-sync offset 0, as a new file.

The video packets are copied unchanged (no re-encode); the audio is decoded through the one decode
path (timestamp-aligned 16 kHz mono), delayed by the measured offset, and encoded as AAC.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.stages.analyze.base import AUDIO_RATE, SAMPLES_PER_FRAME
from pipeline.media import MediaError, read_audio, replace_audio

log = logging.getLogger(__name__)


def shift_to_zero(audio: np.ndarray, offset_frames: int) -> np.ndarray:
    """float32[N] audio delayed by `offset_frames` 25 fps frames (positive offset = audio leads,
    so leading audio is delayed; negative offsets advance it), zero-filled, same length."""
    k = int(offset_frames) * SAMPLES_PER_FRAME
    n = len(audio)
    if k > 0:
        return np.concatenate([np.zeros(min(k, n), np.float32), audio[: max(0, n - k)]])
    if k < 0:
        return np.concatenate([audio[min(-k, n) :], np.zeros(min(-k, n), np.float32)])
    return audio.astype(np.float32, copy=True)


def write_resynced(src: str, dst: str, offset_frames: int) -> str:
    """Write `dst` (mp4): `src`'s video packets and its audio shifted to offset 0. Never
    overwrites `src`; `dst` appears atomically."""
    audio = read_audio(src, AUDIO_RATE)
    if len(audio) == 0:
        raise MediaError(f"{src}: no audio stream to shift")
    replace_audio(src, np.clip(shift_to_zero(audio, offset_frames), -1, 1), dst, AUDIO_RATE)
    log.debug("wrote %s with audio shifted by %d frames", dst, offset_frames)
    return dst
