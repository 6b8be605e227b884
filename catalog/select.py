"""`select`: thresholds applied when a catalog is read for training (stages score, never drop).

`select(root, thresholds)` returns every track with `keep` and the first `drop_reason`, so the
report can show the funnel; `training_index` keeps the kept ones. Lip-sync thresholds are per
backend (a SyncNet confidence and a correlation score are different scales). Expression vectors
from different backends or dimensions are never mixed. Intensity (EMOdiffhead's control signal)
is computed here from raw values: per person, the distance of a track's mean expression from that
person's neutral expression, divided by the person's median distance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog.read import read_table

# Keep rules per lip-sync backend: |offset| <= max_abs_offset_frames and confidence >= min.
# av_corr (bundled): calibrated with `emoforge bench sync` on generated talking faces (in sync
#   0.68-1.11, unrelated speech 0.17-0.60; ROC AUC 1.0 with the offset check).
# syncnet (reference): LatentSync's confidence >= 3 on SyncNet's scale, offset within 1 frame
#   (the Wav2Lip convention); not calibrated here (its weights are not available offline).
LIP_SYNC_RULES: dict[str, dict[str, float]] = {
    "av_corr": {"max_abs_offset_frames": 1, "min_confidence": 0.6},
    "syncnet": {"max_abs_offset_frames": 1, "min_confidence": 3.0},
}


class SelectionError(ValueError):
    """The thresholds cannot be applied to this catalog (mixed backends, unknown names)."""


@dataclass(frozen=True)
class Thresholds:
    min_face_px: float = 96.0
    min_track_s: float = 1.0
    max_abs_yaw_deg: float = 60.0
    min_speech_ratio: float = 0.3
    require_lip_sync: bool = True
    lip_sync_rules: dict = field(default_factory=lambda: dict(LIP_SYNC_RULES))
    emotions: tuple[str, ...] = ()  # keep only these dominant emotions (empty: all)
    min_intensity: float | None = None
    max_intensity: float | None = None
    expression_backend: str | None = None  # required when expression columns are used

    @classmethod
    def from_dict(cls, values: dict) -> Thresholds:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise SelectionError(f"unknown thresholds {sorted(unknown)}; valid: {sorted(names)}")
        values = dict(values)
        if "emotions" in values:
            values["emotions"] = tuple(values["emotions"])
        return cls(**values)


TRACK_COLUMNS = [
    "track_id", "clip_id", "video_id", "person_id", "start_s", "end_s", "frame_count",
    "face_px_median", "yaw_mean", "faces_status", "audio_status", "speech_ratio",
    "lip_sync_status", "lip_sync_backend", "lip_sync_offset_frames", "lip_sync_confidence",
    "expression_status", "expression_backend", "expression_dim", "expression_mean",
    "expression_magnitude", "emotion_status", "emotion_label", "emotion_prob", "crop_path",
]


def select(root: str | Path, thresholds: Thresholds | None = None, tracks: pa.Table | None = None) -> pa.Table:
    """Every track with `keep` (bool), `drop_reason` (first failed rule) and `intensity`."""
    t = thresholds or Thresholds()
    if tracks is None:
        tracks = read_table(root, "tracks", columns=TRACK_COLUMNS)
    rows = tracks.to_pylist()
    _check_expression_backends(rows, t)
    intensity = person_intensity(rows)
    reasons = [_drop_reason(row, t, intensity.get(row["track_id"])) for row in rows]
    out = tracks.append_column("intensity", pa.array([intensity.get(r["track_id"]) for r in rows], pa.float32()))
    out = out.append_column("drop_reason", pa.array(reasons, pa.string()))
    return out.append_column("keep", pc.is_null(out["drop_reason"]))


def training_index(root: str | Path, thresholds: Thresholds | None = None) -> pa.Table:
    selected = select(root, thresholds)
    return selected.filter(selected["keep"])


def _drop_reason(row: dict, t: Thresholds, intensity: float | None) -> str | None:
    if row.get("faces_status") != "ok":
        return f"faces {row.get('faces_status')}"
    if (row.get("face_px_median") or 0) < t.min_face_px:
        return "face too small"
    if (row.get("end_s") or 0) - (row.get("start_s") or 0) < t.min_track_s:
        return "track too short"
    if row.get("yaw_mean") is not None and abs(row["yaw_mean"]) > t.max_abs_yaw_deg:
        return "head turned away"
    if row.get("audio_status") is not None:
        if row["audio_status"] != "ok":
            return f"audio {row['audio_status']}"
        if (row.get("speech_ratio") or 0) < t.min_speech_ratio:
            return "too little speech"
    if t.require_lip_sync and row.get("lip_sync_status") is not None:
        if row["lip_sync_status"] != "ok":
            return f"lip_sync {row['lip_sync_status']}"
        rule = t.lip_sync_rules.get(row.get("lip_sync_backend") or "")
        if rule is None:
            raise SelectionError(f"no lip-sync keep rule for backend {row.get('lip_sync_backend')!r}")
        if abs(row.get("lip_sync_offset_frames") or 0) > rule["max_abs_offset_frames"]:
            return "out of sync"
        if (row.get("lip_sync_confidence") or 0) < rule["min_confidence"]:
            return "low sync confidence"
    if t.emotions and row.get("emotion_label") not in t.emotions:
        return "emotion not selected"
    if t.min_intensity is not None and (intensity is None or intensity < t.min_intensity):
        return "intensity too low"
    if t.max_intensity is not None and (intensity is None or intensity > t.max_intensity):
        return "intensity too high"
    return None


def _check_expression_backends(rows: list[dict], t: Thresholds) -> None:
    kinds = {
        (r.get("expression_backend"), r.get("expression_dim"))
        for r in rows
        if r.get("expression_status") == "ok"
    }
    if t.expression_backend is not None:
        kinds = {k for k in kinds if k[0] == t.expression_backend}
    uses_expression = t.min_intensity is not None or t.max_intensity is not None
    if uses_expression and len(kinds) > 1:
        raise SelectionError(
            f"tracks carry expression vectors from several backends/dimensions {sorted(map(str, kinds))}; "
            "set expression_backend to choose one"
        )


def person_intensity(rows: list[dict]) -> dict[str, float]:
    """track_id -> intensity: ||mean expression - person's neutral|| / person's median distance.

    The person's neutral is the mean expression of their tracks labelled neutral, or of their
    lowest-magnitude track when none is. Tracks without person_id form one group per track."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("expression_status") == "ok" and row.get("expression_mean"):
            groups.setdefault(row.get("person_id") or row["track_id"], []).append(row)
    out: dict[str, float] = {}
    for members in groups.values():
        vectors = np.array([m["expression_mean"] for m in members], dtype=np.float64)
        neutral_rows = [i for i, m in enumerate(members) if m.get("emotion_label") == "neutral"]
        if not neutral_rows:
            mags = [m.get("expression_magnitude") or np.linalg.norm(v) for m, v in zip(members, vectors)]
            neutral_rows = [int(np.argmin(mags))]
        neutral = vectors[neutral_rows].mean(axis=0)
        dist = np.linalg.norm(vectors - neutral, axis=1)
        scale = float(np.median(dist[dist > 0])) if np.any(dist > 0) else 1.0
        for member, d in zip(members, dist):
            out[member["track_id"]] = float(d / scale)
    return out
