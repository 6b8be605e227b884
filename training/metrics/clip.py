"""Per-clip metrics of one FaceClip, each computed by a pipeline backend and labelled with it.

Every function returns a dict with "backend" (what produced the number) and the values, or
"reason" when the metric cannot be measured on this clip.
"""

from __future__ import annotations

import logging

import numpy as np

from catalog.contract import CROP_FPS
from pipeline.models.emotion import crop_faces
from pipeline.models.geometry import laplacian_variance, mouth_open
from pipeline.models.pose import head_pose
from pipeline.models.thresholds import identity_distance
from training.metrics.faces import FaceClip

log = logging.getLogger(__name__)

MIN_MOUTH_FRAMES = 0.8  # av_corr: fraction of frames with a measured mouth (the analyzer's rule)
EMOTION_BOX_MARGIN = 0.1  # the emotion analyzer's face box margin
RIGID_POINTS = np.arange(17, 48)  # brows, nose, eyes: move with the head, not with speech
EMOTION_ALIASES = {"happiness": "happy", "joy": "happy", "anger": "angry", "sadness": "sad",
                   "surprised": "surprise", "disgusted": "disgust", "fearful": "fear",
                   "scared": "fear", "calm": "neutral"}


def lip_sync(clip: FaceClip, scorer, audio: np.ndarray | None = None) -> dict:
    """Offset (25 fps frames, positive = audio leads) and confidence of the clip's mouth against
    `audio` float32[T*640] (default: the clip's own). syncnet adds sync_c (confidence) and
    sync_d (min distance), the LSE-C / LSE-D of the talking-head papers."""
    audio = clip.audio if audio is None else np.asarray(audio, np.float32)
    t = clip.num_frames
    need = CROP_FPS + scorer.max_offset_frames if hasattr(scorer, "max_offset_frames") else 40
    out: dict = {"backend": scorer.name}
    if audio is clip.audio and not clip.has_audio:
        return {**out, "reason": "no audio stream (and no --audio given)"}
    if t < need:
        return {**out, "reason": f"{t} frames; lip sync needs {need}"}
    audio = np.pad(audio[: t * 640], (0, max(0, t * 640 - len(audio))))
    if not np.abs(audio).max() > 1e-4:
        return {**out, "reason": "the audio is silent"}
    mouth = np.array([mouth_open(p) if np.isfinite(p).all() else np.nan for p in clip.landmarks])
    if scorer.name == "av_corr":
        measured = float(np.isfinite(mouth).mean())
        if measured < MIN_MOUTH_FRAMES:
            return {**out, "reason": f"mouth measured on {measured:.0%} of frames, need "
                                     f"{MIN_MOUTH_FRAMES:.0%}"}
        if np.nanstd(mouth) < 1e-4:
            return {**out, "reason": "the mouth opening does not vary (no visible articulation)"}
    m = scorer.score(clip.crops, audio, mouth)
    out.update(offset_frames=int(m.offset_frames), confidence=float(m.confidence))
    if m.min_dist is not None:
        out.update(sync_c=float(m.confidence), sync_d=float(m.min_dist))
    return out


def identity(clip: FaceClip, embedder, reference: np.ndarray, samples: int = 8) -> dict:
    """Identity of the clip's face against a reference embedding float32[D], on up to `samples`
    evenly spaced face frames: mean cosine similarity, mean embedding distance, the backend's
    same-person distance threshold, and same_person (mean distance within it)."""
    idx = np.flatnonzero(clip.face_frames)
    idx = idx[np.unique(np.linspace(0, len(idx) - 1, min(samples, len(idx))).round().astype(int))]
    emb = np.stack([embedder.embed(clip.crops[i], clip.landmarks[i]) for i in idx])
    dist = np.linalg.norm(emb - reference[None], axis=1)
    threshold = identity_distance(embedder.name)
    return {"backend": embedder.name, "similarity": float((emb @ reference).mean()),
            "distance": float(dist.mean()), "threshold": threshold,
            "same_person": bool(dist.mean() <= threshold), "frames": len(idx)}


def emotion_label(label: str, classes: tuple[str, ...]) -> str:
    """A user's emotion name in the classifier's class list; ValueError listing them."""
    name = EMOTION_ALIASES.get(label.lower(), label.lower())
    if name not in classes:
        raise ValueError(f"emotion {label!r} is not one of the classifier's classes {list(classes)}")
    return name


def emotion(clip: FaceClip, model, backend: str, label: str, batch: int = 64) -> dict:
    """Fraction of face frames whose most probable class is `label` (accuracy), the label's mean
    probability, and the clip's most probable class."""
    name = emotion_label(label, tuple(model.classes))
    idx = np.flatnonzero(clip.face_frames)
    probs = []
    for i in range(0, len(idx), batch):
        part = idx[i:i + batch]
        faces = crop_faces(clip.crops[part], clip.landmarks[part], EMOTION_BOX_MARGIN)
        probs.append(model.predict(faces)[0])
    p = np.concatenate(probs)
    k = list(model.classes).index(name)
    return {"backend": backend, "label": name, "accuracy": float((p.argmax(1) == k).mean()),
            "probability": float(p[:, k].mean()), "top": model.classes[int(p.mean(0).argmax())]}


def sharpness(clip: FaceClip) -> dict:
    """Mean variance of the Laplacian of the 256 px face crops (the faces stage's sharpness)."""
    values = [laplacian_variance(clip.crops[i]) for i in np.flatnonzero(clip.face_frames)]
    return {"backend": "laplacian_variance", "value": float(np.mean(values))}


def _similarity_to(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """float[N,2] src mapped onto dst by the least-squares similarity (rotation, scale, shift)."""
    sc, dc = src.mean(0), dst.mean(0)
    x, y = src - sc, dst - dc
    n = float((x * x).sum())
    a = float((x * y).sum()) / n
    b = float((x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]).sum()) / n
    return x @ np.array([[a, b], [-b, a]]) + dc


def landmark_jitter(clip: FaceClip) -> dict:
    """Landmark jitter: the mean norm of the frame-to-frame acceleration (second difference,
    crop px per frame^2) of the brow, nose and eye landmarks (17-47) after removing the head's
    motion (each frame's points similarity-aligned to the clip's mean shape), over runs of three
    consecutive face frames. Blinks and brow raises count; a still face scores ~0."""
    known = clip.face_frames
    pts = clip.landmarks[:, RIGID_POINTS].astype(np.float64)
    if known.sum() < 3:
        return {"backend": "landmarks", "reason": "fewer than 3 frames with a face"}
    mean = pts[known].mean(0)
    aligned = np.full_like(pts, np.nan)
    for i in np.flatnonzero(known):
        aligned[i] = _similarity_to(pts[i], mean)
    acc = aligned[2:] - 2 * aligned[1:-1] + aligned[:-2]
    ok = np.isfinite(acc).all((1, 2))
    if not ok.any():
        return {"backend": "landmarks", "reason": "no three consecutive frames with a face"}
    return {"backend": "landmarks", "value": float(np.linalg.norm(acc[ok], axis=2).mean()),
            "unit": "crop px / frame^2"}


def head_motion(clip: FaceClip) -> dict:
    """Standard deviation (degrees) of yaw, pitch and roll over the face frames (solvePnP of the
    source landmarks, the faces stage's head pose)."""
    poses = np.array([head_pose(clip.points_src[i], clip.source_size)
                      for i in np.flatnonzero(clip.face_frames)], np.float64)
    poses = poses[np.isfinite(poses).all(1)]
    if len(poses) < 2:
        return {"backend": "pnp", "reason": "fewer than 2 frames with a head pose"}
    std = poses.std(0)
    return {"backend": "pnp", "yaw_std": float(std[0]), "pitch_std": float(std[1]),
            "roll_std": float(std[2])}


def expression_vectors(clip: FaceClip, model) -> np.ndarray:
    """Per-frame expression vectors float64[N,D] of the face frames (the expression backend)."""
    out = model(clip.crops, clip.landmarks)
    e = np.asarray(out.expression, np.float64)
    return e[np.isfinite(e).all(1)]
