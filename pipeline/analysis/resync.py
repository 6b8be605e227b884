"""Re-materialize a face-crop clip with its audio moved to lip-sync offset 0, as a new file.

The video packets are copied unchanged (no re-encode); the audio is decoded through the one decode
path (timestamp-aligned 16 kHz mono), delayed by the measured offset, and encoded as AAC.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from pipeline.analysis.base import AUDIO_RATE, SAMPLES_PER_FRAME
from pipeline.media import MediaError, encode_audio, open_container, read_audio

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
    import av

    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"resync must write a new file, got the source path {src}")
    audio = read_audio(src, AUDIO_RATE)
    if len(audio) == 0:
        raise MediaError(f"{src}: no audio stream to shift")
    shifted = np.clip(shift_to_zero(audio, offset_frames), -1, 1).reshape(1, -1)
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".mp4")
    os.close(fd)
    source = open_container(src)
    try:
        with av.open(tmp, mode="w", format="mp4") as out:
            vin = source.streams.video[0]
            vout = out.add_stream_from_template(vin)
            aout = out.add_stream("aac", rate=AUDIO_RATE)
            aout.layout = "mono"
            for packet in source.demux(vin):
                if packet.dts is None:
                    continue
                packet.stream = vout
                out.mux(packet)
            encode_audio(out, aout, shifted, AUDIO_RATE)
        os.replace(tmp, dst)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        source.close()
    log.debug("wrote %s with audio shifted by %d frames", dst, offset_frames)
    return dst
