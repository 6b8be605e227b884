"""Lip sync of `bench learn`'s clips against the corpus generator's own truth.

The talking-face renderer (jobs.media.talking_face) opens the jaw by drive_signal(audio) and
draws a dark mouth interior whose height follows it. So the truth of any clip of an identity
speaking an audio is known: its mouth interior darkens with drive_signal(audio). This measure
reads the mouth interior's darkness from the pixels (the mean grey level inside the region
`render` darkens at full opening, placed by the reference photo's landmarks) and searches its
lag against the truth with the same correlation search as the av_corr backend.

Why besides av_corr: av_corr reads the mouth opening from 68 landmarks, which need lips drawn
sharply enough for the landmarker at the model's 64 px; this reads the pixels the generator
darkens, so it also sees a mouth that opens in time but blurred. A mismatched sentence's truth
is the control: an offset within a frame and a confidence above the mismatched sentence's
mean the mouth follows this audio's timing.

The confidence (the best shift's correlation minus the median over shifts) has a scale of its
own per sentence: a mouth that follows the truth exactly scores the truth's confidence against
itself, 1.02 for bench learn's held-out sentence and 1.00-1.20 for its corpus sentences. Each
result carries that `perfect_confidence` and `share` = confidence / perfect_confidence, which
compares clips that say different sentences (a generated clip and a real clip of the same
identity).

Two sentences' openings are never wholly unrelated: the best shift of one against the other
still correlates. `separation` is how many times better a mouth that follows one sentence
exactly matches it than the other: how far apart a measure of the two can tell them (a
generated mouth, following the one less closely and the other by chance, can score above or
below it).
"""

from __future__ import annotations

import numpy as np

from jobs.media.talking_face import drive_signal, mouth_interior_box
from pipeline.models.lip_sync.av_sync import correlate_offsets


def box_at_size(landmarks: np.ndarray, crop_size: int, size: int) -> tuple[int, int, int, int]:
    """The mouth interior box (talking_face.mouth_interior_box) of 68 landmarks in crop pixels,
    in pixels of the crop resized to `size`: integer (x0, y0, x1, y1), at least one pixel."""
    scale = size / crop_size
    x0, y0, x1, y1 = (v * scale for v in mouth_interior_box(landmarks))
    x0, y0 = int(np.clip(np.floor(x0), 0, size - 1)), int(np.clip(np.floor(y0), 0, size - 1))
    x1, y1 = int(np.clip(np.ceil(x1), x0 + 1, size)), int(np.clip(np.ceil(y1), y0 + 1, size))
    return x0, y0, x1, y1


def mouth_darkness(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """float64[T]: minus the mean grey level (0-255) of uint8[T,S,S,3] frames inside box."""
    x0, y0, x1, y1 = box
    return -np.asarray(frames[:, y0:y1, x0:x1], np.float64).mean(axis=(1, 2, 3))


def truth_sync(darkness: np.ndarray, audio: np.ndarray, vshift: int = 15) -> dict:
    """Offset (frames, positive = audio leads) and confidence of the mouth darkness float[T]
    against the renderer's opening for `audio` float32[N] 16 kHz (av_sync's search and scale);
    the confidence a mouth following the opening exactly reaches, and the share of it reached
    (None for an audio whose opening never changes)."""
    truth = drive_signal(audio, len(darkness))
    found = correlate_offsets(darkness, truth, vshift)
    confidence = float(found.confidence)
    perfect = float(correlate_offsets(truth, truth, vshift).confidence)
    return {"offset_frames": int(found.offset_frames), "confidence": confidence,
            "perfect_confidence": perfect, "share": confidence / perfect if perfect > 1e-6 else None}


def separation(driving: np.ndarray, other: np.ndarray, frames: int) -> float:
    """The confidence of a mouth that follows `driving`'s opening exactly over `frames`, against
    driving's audio over against `other`'s (float32 16 kHz audios): 2.2 for bench learn's
    held-out sentence against its corpus's first sentence, up to 5.0 against others. Infinite
    where the other audio's confidence is not positive."""
    perfect = drive_signal(driving, frames)
    own = truth_sync(perfect, driving)["confidence"]
    against = truth_sync(perfect, other)["confidence"]
    return own / against if against > 0 else float("inf")


def clip_truth(frames: np.ndarray, box: tuple[int, int, int, int], audio: np.ndarray,
               mismatched: np.ndarray | None = None) -> dict:
    """Truth sync of one clip against its driving audio and, given, a mismatched one."""
    darkness = mouth_darkness(frames, box)
    out = {"backend": "renderer truth (mouth interior darkness)",
           "driving": truth_sync(darkness, audio)}
    if mismatched is not None:
        out["mismatched"] = truth_sync(darkness, mismatched)
    return out


def sync_goals(driving: dict, mismatched: dict, floor: float | None) -> dict:
    """The lip-sync goals for one measure's results (offset_frames, confidence) against
    the driving and a mismatched audio; `in_real_range`: the confidence reaches `floor`;
    None where a number is missing."""
    conf, other = driving.get("confidence"), mismatched.get("confidence")
    offset = driving.get("offset_frames")
    return {"offset_frames": offset, "offset_within_1": None if offset is None else abs(offset) <= 1,
            "confidence": conf, "mismatched_confidence": other,
            "above_mismatched": None if conf is None or other is None else conf > other,
            "in_real_range": None if conf is None or floor is None else conf >= floor}
