"""`select`: thresholds applied when a catalog is read for training (stages score, never drop).

`select(root, thresholds)` returns every track with `keep` and the first `drop_reason`, so the
report can show the funnel; `training_index` keeps the kept ones. It works through the tracks in
chunks of about SELECT_CHUNK_ROWS rows that never split a person, so a million-track catalog
selects within the report's memory figure. Lip-sync keep rules are per backend (a SyncNet
confidence and a correlation score are different scales; `lip_sync_verdict`). Expression vectors
of different backends or dimensions are never mixed: intensity (EMOdiffhead's control signal) is
computed per person and expression backend and dimension, from raw values: the distance of a
track's mean expression from that person's neutral expression, divided by the person's median
distance. With `expression_backend` set, tracks whose expression comes from another backend are
dropped with a reason; without it, thresholds that use intensity refuse a catalog with several
kinds. `balance` then evens out the kept seconds per emotion or per intensity band
(training_index applies it when `Thresholds.balance_by` is set).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog.read import read_table

BOUNDED_BACKENDS = ("blendshapes",)  # expression backends whose components are scores in [0, 1]

# Keep rules per lip-sync backend: |offset| <= max_abs_offset_frames and confidence >= min.
# av_corr (bundled): calibrated with `emoforge bench sync` on generated talking faces (in sync
#   0.68-1.11, unrelated speech 0.17-0.60; ROC AUC 1.0 with the offset check).
# syncnet (reference): LatentSync's confidence >= 3 on SyncNet's scale, offset within 1 frame
#   (the Wav2Lip convention); not calibrated here (its weights are not available offline).
LIP_SYNC_RULES: dict[str, dict[str, float]] = {
    "av_corr": {"max_abs_offset_frames": 1, "min_confidence": 0.6},
    "syncnet": {"max_abs_offset_frames": 1, "min_confidence": 3.0},
}


SELECT_CHUNK_ROWS = 16384  # tracks per chunk (whole persons; more when one person has more)


class SelectionError(ValueError):
    """The thresholds cannot be applied to this catalog (mixed backends, unknown names)."""


@dataclass(frozen=True)
class Thresholds:
    min_face_px_median: float = 96.0  # a track's face_px_median at least this (source px)
    min_track_s: float = 1.0
    max_abs_yaw_deg: float = 60.0
    min_speech_ratio: float = 0.3
    require_lip_sync: bool = True
    lip_sync_rules: dict = field(default_factory=lambda: dict(LIP_SYNC_RULES))
    emotions: tuple[str, ...] = ()  # keep only these dominant emotions (empty: all)
    min_intensity: float | None = None
    max_intensity: float | None = None
    expression_backend: str | None = None  # required when expression columns are used
    balance_by: str | None = None  # "emotion" or "intensity": even kept seconds per group
    balance_max_seconds: float | None = None  # seconds per group; None: the smallest group's
    balance_seed: int = 0  # which tracks stay in an over-full group (deterministic per seed)

    @classmethod
    def from_dict(cls, values: dict) -> Thresholds:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            hint = (" (min_face_px is the faces stage's gate, [faces]; the selection's threshold "
                    "on a track's median face is min_face_px_median)") if "min_face_px" in unknown else ""
            raise SelectionError(f"unknown thresholds {sorted(unknown)}; valid: {sorted(names)}{hint}")
        values = dict(values)
        if "emotions" in values:
            values["emotions"] = tuple(values["emotions"])
        if values.get("balance_by") not in (None, *BALANCE_BY):
            raise SelectionError(f"balance_by must be one of {BALANCE_BY}, got {values['balance_by']!r}")
        return cls(**values)


def thresholds_with(base: Thresholds, overrides: dict) -> Thresholds:
    """`base` with `overrides` applied; nested dicts (lip_sync_rules) are merged rule by rule, so
    {"lip_sync_rules": {"av_corr": {"min_confidence": 0.7}}} keeps av_corr's offset and syncnet."""
    values = asdict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            merged = {k: dict(v) if isinstance(v, dict) else v for k, v in values[key].items()}
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict) and isinstance(merged.get(sub), dict):
                    merged[sub].update(subvalue)
                else:
                    merged[sub] = subvalue
            values[key] = merged
        else:
            values[key] = value
    return Thresholds.from_dict(values)


BALANCE_BY = ("emotion", "intensity")
# Intensity bands for balance_by="intensity" (intensity 1 = the person's median distance from
# their neutral): below 0.5, 0.5-1, 1-2, 2 and above.
INTENSITY_BANDS = (0.5, 1.0, 2.0)


TRACK_COLUMNS = [
    "track_id", "clip_id", "video_id", "person_id", "start_s", "end_s", "frame_count",
    "face_px_median", "yaw_mean", "faces_status", "audio_status", "speech_ratio",
    "lip_sync_status", "lip_sync_backend", "lip_sync_offset_frames", "lip_sync_confidence",
    "expression_status", "expression_backend", "expression_dim", "expression_mean",
    "expression_magnitude", "expression_pose_ok_fraction", "emotion_status", "emotion_label",
    "emotion_prob", "crop_path",
]


def select(root: str | Path | None, thresholds: Thresholds | None = None,
           tracks: pa.Table | None = None, with_intensity: bool = True) -> pa.Table:
    """Every track of `tracks` (default: the catalog's tracks, TRACK_COLUMNS) with `intensity`
    (float32, null without expression), `expression_relative` (list<float32>: the track's mean
    expression relative to its person's neutral, person_expression; null without expression
    or when with_intensity=False and no threshold uses it), `drop_reason` (the first failed rule) and `keep` (bool).

    Refuses (SelectionError) thresholds that would mix expression backends or dimensions, and a
    lip-sync backend without a keep rule. with_intensity=False leaves `intensity` null where no
    threshold uses it (faster; the verdicts are the same)."""
    t = thresholds or Thresholds()
    if tracks is None:
        tracks = read_table(root, "tracks", columns=TRACK_COLUMNS)
    n = tracks.num_rows
    _check_expression_backends(tracks, t)
    needed = tracks.select([c for c in TRACK_COLUMNS if c in tracks.column_names])
    if not (with_intensity or _uses_intensity(t)):
        needed = needed.drop_columns([c for c in ("expression_mean",) if c in needed.column_names])
    reasons: list[str | None] = [None] * n
    intensity: list[float | None] = [None] * n
    relative: list[list[float] | None] = [None] * n
    for idx in _person_chunks(needed):
        rows = pc.take(needed, idx).to_pylist()
        values = person_expression(rows, t.expression_backend)
        for i, row in zip(idx.to_pylist(), rows):
            relative[i], intensity[i] = values.get(row["track_id"], (None, None))
            reasons[i] = _drop_reason(row, t, intensity[i])
    out = tracks.append_column("intensity", pa.array(intensity, pa.float32()))
    out = out.append_column("expression_relative", pa.array(relative, pa.list_(pa.float32())))
    out = out.append_column("drop_reason", pa.array(reasons, pa.string()))
    return out.append_column("keep", pc.is_null(out["drop_reason"]))


def training_index(root: str | Path, thresholds: Thresholds | None = None) -> pa.Table:
    """The kept tracks (balanced when thresholds.balance_by is set)."""
    t = thresholds or Thresholds()
    selected = select(root, t)
    if t.balance_by is not None:
        selected = balance(selected, t.balance_by, t.balance_max_seconds, t.balance_seed)
    return selected.filter(selected["keep"])


def _uses_intensity(t: Thresholds) -> bool:
    return t.min_intensity is not None or t.max_intensity is not None or t.balance_by == "intensity"


def _person_chunks(tracks: pa.Table):
    """Row indices (int64 arrays) in chunks of about SELECT_CHUNK_ROWS that never split a
    person_id (tracks without one may go to any chunk)."""
    n = tracks.num_rows
    if n == 0:
        return
    if "person_id" not in tracks.column_names:
        order = pa.array(range(n), pa.int64())
        same = [False] * n
    else:
        order = pc.sort_indices(tracks, sort_keys=[("person_id", "ascending")])  # nulls last
        persons = pc.take(tracks["person_id"], order).to_pylist()
        same = [False] + [p is not None and p == q for p, q in zip(persons[1:], persons[:-1])]
    start = 0
    while start < n:
        end = min(n, start + SELECT_CHUNK_ROWS)
        while end < n and same[end]:
            end += 1
        yield order[start:end]
        start = end


def balance(selected: pa.Table, by: str, max_seconds: float | None = None, seed: int = 0) -> pa.Table:
    """Even out the kept seconds per group of `select`'s output: per emotion label, or per
    intensity band (INTENSITY_BANDS). Each group keeps tracks in a seeded pseudo-random order
    while its total stays within `max_seconds` (default: the smallest group's total, so every
    group ends with about as many seconds). Dropped tracks get drop_reason "balanced out
    (<group>)"; kept tracks without a group (no emotion label / intensity) get "no <by> to
    balance by". Deterministic for a given catalog and seed."""
    if by not in BALANCE_BY:
        raise SelectionError(f"balance_by must be one of {BALANCE_BY}, got {by!r}")
    rows = selected.select(["track_id", "start_s", "end_s", "keep", "drop_reason",
                            "emotion_label" if by == "emotion" else "intensity"]).to_pylist()
    groups = [_balance_group(r, by) for r in rows]
    reasons = [r["drop_reason"] for r in rows]
    kept = [i for i, r in enumerate(rows) if r["keep"]]
    for i in kept:
        if groups[i] is None:
            reasons[i] = f"no {by} to balance by"
    kept = [i for i in kept if groups[i] is not None]
    seconds = {i: max(0.0, (rows[i]["end_s"] or 0) - (rows[i]["start_s"] or 0)) for i in kept}
    totals: dict[str, float] = {}
    for i in kept:
        totals[groups[i]] = totals.get(groups[i], 0.0) + seconds[i]
    cap = max_seconds if max_seconds is not None else min(totals.values(), default=0.0)

    def rank(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{rows[i]['track_id']}".encode(), digest_size=8).digest()

    used: dict[str, float] = {}
    for i in sorted(kept, key=rank):
        g = groups[i]
        if used.get(g, 0.0) + seconds[i] <= cap + 1e-6:
            used[g] = used.get(g, 0.0) + seconds[i]
        else:
            reasons[i] = f"balanced out ({g})"
    out = selected.drop_columns(["drop_reason", "keep"])
    out = out.append_column("drop_reason", pa.array(reasons, pa.string()))
    return out.append_column("keep", pc.is_null(out["drop_reason"]))


def _balance_group(row: dict, by: str) -> str | None:
    if by == "emotion":
        return row.get("emotion_label")
    value = row.get("intensity")
    if value is None or value != value:  # unknown (null or NaN)
        return None
    band = sum(value >= edge for edge in INTENSITY_BANDS)
    edges = (0.0, *INTENSITY_BANDS, float("inf"))
    return f"intensity {edges[band]:g}-{edges[band + 1]:g}"


def _drop_reason(row: dict, t: Thresholds, intensity: float | None) -> str | None:
    if row.get("faces_status") != "ok":
        return f"faces {row.get('faces_status')}"
    if (row.get("face_px_median") or 0) < t.min_face_px_median:
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
        reason = lip_sync_verdict(row.get("lip_sync_backend"), row.get("lip_sync_offset_frames"),
                                  row.get("lip_sync_confidence"), t.lip_sync_rules)
        if reason is not None:
            return reason
    if (t.expression_backend is not None and row.get("expression_status") == "ok"
            and row.get("expression_backend") != t.expression_backend):
        return f"expression from {row.get('expression_backend')}, not {t.expression_backend}"
    if t.emotions and row.get("emotion_label") not in t.emotions:
        return "emotion not selected"
    if t.min_intensity is not None and (intensity is None or intensity < t.min_intensity):
        return "intensity too low"
    if t.max_intensity is not None and (intensity is None or intensity > t.max_intensity):
        return "intensity too high"
    return None


def lip_sync_verdict(backend: str | None, offset_frames: int | None, confidence: float | None,
                     rules: dict | None = None) -> str | None:
    """The drop reason of one measured track under the keep rule of its lip-sync `backend`
    (|offset| <= max_abs_offset_frames and confidence >= min_confidence), or None when kept.
    An unmeasured offset or confidence counts as 0. Raises SelectionError for a backend
    without a rule."""
    rule = (LIP_SYNC_RULES if rules is None else rules).get(backend or "")
    if rule is None:
        raise SelectionError(f"no lip-sync keep rule for backend {backend!r}")
    if abs(offset_frames or 0) > rule["max_abs_offset_frames"]:
        return "out of sync"
    if (confidence or 0) < rule["min_confidence"]:
        return "low sync confidence"
    return None


def _check_expression_backends(tracks: pa.Table, t: Thresholds) -> None:
    """Refuse thresholds that would compare expression vectors of different kinds: several
    (backend, dim) among ok rows when intensity is used and no backend is chosen, or several
    dimensions of the chosen backend."""
    cols = ("expression_status", "expression_backend", "expression_dim")
    if not _uses_intensity(t) or any(c not in tracks.column_names for c in cols):
        return
    ok = tracks.select(list(cols)).filter(pc.fill_null(pc.equal(tracks["expression_status"], "ok"), False))
    if t.expression_backend is not None:
        ok = ok.filter(pc.fill_null(pc.equal(ok["expression_backend"], t.expression_backend), False))
    kinds = ok.group_by(["expression_backend", "expression_dim"]).aggregate([]).to_pylist()
    kinds = sorted((k["expression_backend"], k["expression_dim"]) for k in kinds)
    if len(kinds) > 1 and t.expression_backend is None:
        raise SelectionError(
            f"tracks carry expression vectors from several backends/dimensions {[str(k) for k in kinds]}; "
            "set expression_backend to choose one"
        )
    if len(kinds) > 1:
        raise SelectionError(f"expression backend {t.expression_backend!r} has several dimensions "
                             f"{[k[1] for k in kinds]}; re-run the expression stage so they agree")


def person_intensity(rows: list[dict], backend: str | None = None) -> dict[str, float]:
    """track_id -> intensity (person_expression's second value)."""
    return {tid: value for tid, (_, value) in person_expression(rows, backend).items()}


def person_expression(rows: list[dict], backend: str | None = None
                      ) -> dict[str, tuple[list[float], float]]:
    """track_id -> (relative, intensity): `relative` is the track's mean expression minus the
    person's neutral (EMOdiffhead's clip-level expression: emotion and its strength, not each
    frame's mouth), intensity = ||relative|| / person's median distance; per person and
    expression (backend, dim): vectors of different kinds are never compared.

    The person's neutral is the mean expression of their tracks labelled neutral, or of their
    lowest-magnitude track when none is; tracks mostly beyond the head-pose limit
    (expression_pose_ok_fraction < 0.5) are not candidates while others are. For backends of
    bounded scores (BOUNDED_BACKENDS) `relative` is each component's rise above the neutral,
    clipped to [0, 1]. Tracks without person_id form one group per track.
    `backend`: only rows of this expression backend get a value."""
    import numpy as np  # lazy: the catalog imports only pyarrow and the standard library

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("expression_status") == "ok" and row.get("expression_mean"):
            if backend is not None and row.get("expression_backend") != backend:
                continue
            key = (row.get("person_id") or row["track_id"], row.get("expression_backend"),
                   len(row["expression_mean"]))
            groups.setdefault(key, []).append(row)
    out: dict[str, tuple[list[float], float]] = {}
    for (_, kind, _), members in groups.items():
        vectors = np.array([m["expression_mean"] for m in members], dtype=np.float64)
        candidates = [i for i, m in enumerate(members)
                      if m.get("expression_pose_ok_fraction") is None
                      or m["expression_pose_ok_fraction"] >= 0.5] or list(range(len(members)))
        neutral_rows = [i for i in candidates if members[i].get("emotion_label") == "neutral"]
        if not neutral_rows:
            mags = [members[i].get("expression_magnitude") or np.linalg.norm(vectors[i])
                    for i in candidates]
            neutral_rows = [candidates[int(np.argmin(mags))]]
        neutral = vectors[neutral_rows].mean(axis=0)
        rise = vectors - neutral
        if kind in BOUNDED_BACKENDS:
            rise = np.clip(rise, 0.0, 1.0)
        dist = np.linalg.norm(rise, axis=1)
        scale = float(np.median(dist[dist > 0])) if np.any(dist > 0) else 1.0
        for member, r, d in zip(members, rise, dist):
            out[member["track_id"]] = (r.astype(np.float32).tolist(), float(d / scale))
    return out
