"""The expression condition as EMOdiffhead uses it: one vector per clip, not per frame.

Training (DataConfig.expression_mode = "clip", the default) gives every frame of a window its
track's mean expression relative to the person's neutral (catalog.select's
`expression_relative`) and no jaw pose: the vector says which emotion and how strongly, and
nothing about when the mouth opens, which the model must learn from the audio.

Generation builds the same kind of vector:
- from an emotion and an intensity: the training set's statistics of that emotion
  (`emotion_statistics`, written into every checkpoint's config.json), its mean relative vector
  over its mean intensity, times the intensity asked for (`vector_for_emotion`). The catalog's
  intensity is a track's distance from its person's neutral over the person's median distance,
  so intensity 1 is a person's usual departure from neutral, 0 the neutral itself;
- from a driving video: its mean expression relative to its own neutral (its least expressive
  frames), times the intensity (`clip_vector`).

A checkpoint trained with "frame" mode (per-frame expression and jaw pose tokens) has no
statistics; generation then drives per frame from a video, as it was trained.
"""

from __future__ import annotations

import numpy as np

from training.generate_inputs import GenerationInputError, neutral_of


def emotion_statistics(tracks, classes: tuple[str, ...]) -> dict:
    """{"tracks": n, "emotions": {class: {"tracks", "mean_intensity", "vector"}}} over the
    training tracks (data.Track) that have a clip-level expression and a known emotion;
    `vector` is that emotion's mean relative expression over its mean intensity (the vector
    at intensity 1), or the mean itself when the mean intensity is 0 (a neutral)."""
    groups: dict[str, list] = {}
    for track in tracks:
        if track.expression is not None and track.emotion >= 0:
            groups.setdefault(classes[track.emotion], []).append(track)
    emotions = {}
    for name in classes:
        members = groups.get(name)
        if not members:
            continue
        mean = np.mean([t.expression for t in members], axis=0)
        intensity = float(np.mean([t.intensity for t in members]))
        unit = mean / intensity if intensity > 1e-6 else mean
        emotions[name] = {"tracks": len(members), "mean_intensity": intensity,
                          "vector": [float(v) for v in unit]}
    return {"tracks": sum(len(m) for m in groups.values()), "emotions": emotions}


def most_trained_emotion(statistics: dict | None) -> str | None:
    """The emotion with the most training tracks in a checkpoint's statistics (None without
    them: a per-frame checkpoint, or a training set without emotion labels)."""
    emotions = (statistics or {}).get("emotions") or {}
    return max(emotions, key=lambda e: emotions[e]["tracks"], default=None)


def vector_for_emotion(statistics: dict | None, emotion: str, intensity: float,
                       bounded: bool = False) -> np.ndarray:
    """float32[De]: the clip-level expression of `emotion` at `intensity` from a checkpoint's
    statistics; GenerationInputError listing the emotions it has when it has none for this one.
    bounded: scores in [0, 1] (the blendshapes backend), the result clipped to that range."""
    emotions = (statistics or {}).get("emotions") or {}
    if emotion not in emotions:
        have = sorted(emotions) or "none"
        raise GenerationInputError(
            f"the checkpoint has no expression statistics for emotion {emotion!r} (no training "
            f"track was labelled so); it has them for: {have}")
    vector = intensity * np.asarray(emotions[emotion]["vector"], np.float64)
    return (np.clip(vector, 0.0, 1.0) if bounded else vector).astype(np.float32)


def clip_vector(expression: np.ndarray, intensity: float, bounded: bool = False) -> np.ndarray:
    """float32[De]: a driving video's clip-level expression, its mean per-frame expression
    [T, De] relative to its own neutral (generate_inputs.neutral_of: its least expressive
    frames), times `intensity`; bounded scores are clipped to [0, 1] before and after (the rise
    above the neutral, as catalog.select measures it)."""
    values = np.asarray(expression, np.float64)
    if bounded:
        values = np.clip(values, 0.0, 1.0)
    relative = values.mean(0) - neutral_of(values)
    if bounded:
        relative = np.clip(relative, 0.0, 1.0)
    vector = intensity * relative
    return (np.clip(vector, 0.0, 1.0) if bounded else vector).astype(np.float32)
