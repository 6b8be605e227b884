"""A synthetic but realistic catalog for the report's tests and benchmark, with known ground truth.

`generate_catalog(root, ...)` writes videos, clips and tracks through the commit protocol
(several shards, every status, real error texts, timing columns, a manifest with the registry's
model specs) and returns the truth it was built from. Every track is given a fate first (kept, or
the first `select` rule it breaks under the default Thresholds) and its values are drawn to match,
so a report's funnel can be checked against the fates, not against the report's own arithmetic.
Face-crop mp4s are written with pipeline.media.write_video from real face photos
(jobs.media.sources): one per track (`crops="per_track"`), a shared pool of a few files for
benchmarks (`crops="pool"`), or none.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from catalog import schema
from catalog.commits import commit_shard
from catalog.contract import AUDIO_RATE, CROP_FPS
from catalog.layout import media_relpath
from catalog.manifest import write_manifest
from catalog.read import conform
from catalog.select import Thresholds
from jobs.media.sources import media_file
from pipeline.media import write_video
from pipeline.models.registry import get_spec

log = logging.getLogger(__name__)

EMOTIONS = schema.EMOTION_CLASSES_FER
EMOTION_WEIGHTS = (0.08, 0.03, 0.04, 0.30, 0.10, 0.10, 0.35)
# emotion label -> face photo used for its crops (jobs.media.sources.KNOWN_MEDIA)
PHOTO_BY_EMOTION = {"angry": "anger.jpg", "disgust": "disgust.jpg", "fear": "surprise.jpg",
                    "happy": "happy.jpg", "sad": "anger.jpg", "surprise": "surprise.jpg",
                    "neutral": "single_face.jpg"}
# fate -> probability; "keep" passes every default rule, the others break exactly that rule
TRACK_FATES = {
    "keep": 0.50, "faces skipped": 0.04, "faces failed": 0.01, "face too small": 0.08,
    "track too short": 0.06, "head turned away": 0.04, "audio failed": 0.02,
    "too little speech": 0.08, "lip_sync failed": 0.02, "out of sync": 0.05,
    "low sync confidence": 0.10,
}
SYNC_BACKEND = "av_corr"  # the bundled lip-sync backend (pipeline.stages.analyze.lip_sync); 10% syncnet
SYNC_RANGES = {"av_corr": (0.0, 1.1), "syncnet": (0.0, 9.0)}  # confidence scales (lo, hi)
VIDEO_FATES = {"ok": 0.91, "duplicate": 0.03, "ingest failed": 0.05, "scenes failed": 0.01}
CLIP_FATES = {"faces ok": 0.82, "no face": 0.15, "faces failed": 0.03}
INGEST_ERRORS = (("cannot open {uri}: InvalidDataError: [Errno 1094995529] Invalid data found "
                 "when processing input"), "{uri}: no video stream")


def generate_catalog(
    root: str | Path,
    n_videos: int = 12,
    shards: int = 3,
    seed: int = 0,
    crops: str | None = "per_track",
    crop_px: int = 96,
    max_track_s: float = 4.0,
) -> dict:
    """Write a catalog at `root`; returns the truth: counts and hours by fate per level.

    Values are drawn against select's default Thresholds (and LIP_SYNC_RULES), so the fates
    stay right when those defaults change.

    n_videos: input files; about 3 tracks per ok video. crops: "per_track" | "pool" | None.
    max_track_s: longest kept track (short keeps per-track crop writing fast in tests)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    videos, clips, tracks, truth = _draw(rng, n_videos, shards, max_track_s)
    photos = _face_photos(crop_px) if crops else {}
    with tempfile.TemporaryDirectory(prefix="emoforge-synth-") as tmp:
        pool = _write_pool(Path(tmp), photos, crop_px, rng) if crops == "pool" else {}
        if pool:
            ok = tracks["faces_status"] == "ok"
            tracks["crop_path"] = np.where(ok, [f"media/pool/{e}.mp4" for e in tracks["emotion"]],
                                           None)
        for shard in range(shards):
            staged = {rel: path for rel, path in pool.items()} if shard == 0 else {}
            tables = _shard_tables(shard, videos, clips, tracks)
            if crops == "per_track":
                media, tables["tracks"] = _write_track_crops(Path(tmp), tables["tracks"], photos,
                                                             crop_px, rng)
                staged.update(media)
            commit_shard(root, shard, tables, staged_media=staged, fingerprints={})
    timings = {"ingest": {"stage": "ingest", "rows_in": n_videos, "seconds": 0.05 * n_videos},
               "scenes": {"stage": "scenes", "rows_in": len(videos["uri"]),
                          "seconds": float(np.nansum(videos["scenes_seconds"])) / 2}}
    write_manifest(root, {"job": {"inputs": ["synthetic"], "out": str(root)}}, _stages(), "synthetic",
                   timings)
    truth["timings"] = timings
    return truth


# ---------------------------------------------------------------------------------------------
# drawing the rows (vectorized: a million tracks in seconds)
# ---------------------------------------------------------------------------------------------
def _choice(rng: np.random.Generator, fates: dict[str, float], n: int) -> np.ndarray:
    names = np.array(list(fates), dtype=object)
    p = np.array(list(fates.values()), dtype=float)
    return names[rng.choice(len(names), size=n, p=p / p.sum())]


def _ids(rng: np.random.Generator, n: int, prefix: str = "") -> np.ndarray:
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    return np.array([f"{prefix}{a:016x}{b:016x}" for a, b in raw.tolist()], dtype=object)


def _draw(rng: np.random.Generator, n_videos: int, shards: int, max_track_s: float):
    vfate = _choice(rng, VIDEO_FATES, n_videos)
    vids = _ids(rng, n_videos)
    uri = np.array([f"/data/in/video_{i:07d}.mp4" for i in range(n_videos)], dtype=object)
    vshard = (np.arange(n_videos) % shards).astype(np.int32)
    has_clips = np.flatnonzero(vfate == "ok")
    n_clips = rng.integers(1, 5, size=len(has_clips))
    clip_video = np.repeat(has_clips, n_clips)
    cfate = _choice(rng, CLIP_FATES, len(clip_video))
    faced = np.flatnonzero(cfate == "faces ok")
    n_tracks = rng.integers(1, 3, size=len(faced))
    track_clip = np.repeat(faced, n_tracks)
    tfate = _choice(rng, TRACK_FATES, len(track_clip))
    T = len(track_clip)

    # track values that pass every default rule, then the one broken rule per fate
    t = Thresholds()
    dur = rng.uniform(t.min_track_s + 0.2, max(max_track_s, t.min_track_s + 0.5), T)
    short = tfate == "track too short"
    dur[short] = rng.uniform(0.3 * t.min_track_s, 0.95 * t.min_track_s, short.sum())
    face_px = np.exp(rng.uniform(np.log(t.min_face_px_median + 4), np.log(max(400, 2 * t.min_face_px_median)), T))
    small = tfate == "face too small"
    face_px[small] = rng.uniform(0.67 * t.min_face_px_median, t.min_face_px_median - 1, small.sum())
    yaw = np.clip(rng.normal(0, 15, T), 5 - t.max_abs_yaw_deg, t.max_abs_yaw_deg - 5)
    away = tfate == "head turned away"
    yaw[away] = rng.choice([-1, 1], away.sum()) * rng.uniform(t.max_abs_yaw_deg + 2, 89, away.sum())
    speech = rng.uniform(t.min_speech_ratio + 0.05, 1.0, T)
    quiet = tfate == "too little speech"
    speech[quiet] = rng.uniform(0.0, t.min_speech_ratio - 0.02, quiet.sum())
    syncnet = rng.random(T) < 0.1
    backend = np.where(syncnet, "syncnet", SYNC_BACKEND)
    offset = np.zeros(T, np.int64)
    conf = np.zeros(T)
    off, low = tfate == "out of sync", tfate == "low sync confidence"
    for name in ("syncnet", SYNC_BACKEND):
        rule, (lo, hi) = t.lip_sync_rules[name], SYNC_RANGES[name]
        m = backend == name
        limit, floor, margin = int(rule["max_abs_offset_frames"]), rule["min_confidence"], 0.03 * (hi - lo)
        offset[m] = rng.integers(-limit, limit + 1, m.sum())
        offset[m & off] = rng.choice([-1, 1], (m & off).sum()) * rng.integers(limit + 1, 16, (m & off).sum())
        conf[m] = rng.uniform(floor + margin, hi, m.sum())
        conf[m & low] = rng.uniform(lo, floor - margin, (m & low).sum())
    emotion = np.array(EMOTIONS, dtype=object)[rng.choice(len(EMOTIONS), T, p=EMOTION_WEIGHTS)]
    expr = rng.normal(0, 1, (T, schema.EXPRESSION_DIMS["3dmm"])).astype(np.float32)
    expr *= np.where(emotion == "neutral", 0.3, 1.0)[:, None].astype(np.float32)

    faces_ok = ~np.isin(tfate, ["faces skipped", "faces failed"])
    faces_status = np.where(faces_ok, "ok", np.where(tfate == "faces failed", "failed", "skipped"))
    faces_error = np.full(T, None, dtype=object)
    sk = np.flatnonzero(tfate == "faces skipped")
    faces_error[sk] = [f"face too small: median {p:.0f} px < min_face_px=64" if i % 2 else
                       f"track has {int(d * 25) % 24 + 1} frames < min_track_frames=25"
                       for i, (p, d) in enumerate(zip(rng.uniform(20, 63, len(sk)), dur[sk]))]
    faces_error[tfate == "faces failed"] = "RuntimeError: face crop writer: encoder returned EAGAIN"
    audio_ok = faces_ok & (tfate != "audio failed")
    audio_status = np.where(faces_ok, np.where(audio_ok, "ok", "failed"), None)
    audio_error = np.where(tfate == "audio failed", "MediaError: crop.mp4: audio decoding failed: "
                           "InvalidDataError: Invalid data found when processing input", None)
    ls_ok = audio_ok & (tfate != "lip_sync failed")
    lip_status = np.where(faces_ok, np.where(ls_ok, "ok", np.where(audio_ok, "failed", "skipped")), None)
    lip_error = np.where(tfate == "lip_sync failed", "ValueError: no mouth landmarks in 14 of 25 frames",
                         np.where(faces_ok & ~audio_ok, "no audio", None))
    emo_ok = faces_ok & (rng.random(T) > 0.01)
    emo_status = np.where(faces_ok, np.where(emo_ok, "ok", "failed"), None)
    emo_error = np.where(faces_ok & ~emo_ok, "ValueError: face crop has 0 frames", None)

    # clips: as long as their longest track plus a margin; no-face clips 0.5-10 s
    clip_dur = rng.uniform(0.5, 10.0, len(clip_video))
    pad = rng.uniform(0.1, 2.0, T)
    longest = np.zeros(len(clip_video))
    np.maximum.at(longest, track_clip, dur + pad)
    clip_dur[faced] = longest[faced]
    clip_start = _starts_within(clip_video, clip_dur)
    t_start = clip_start[track_clip] + pad * rng.random(T)
    vdur = np.bincount(clip_video, weights=clip_dur, minlength=n_videos)
    vdur[vfate == "duplicate"] = rng.uniform(2, 30, (vfate == "duplicate").sum())
    vdur[vfate == "scenes failed"] = rng.uniform(2, 30, (vfate == "scenes failed").sum())
    probed = vfate != "ingest failed"

    cids = _ids(rng, len(clip_video))
    tids = _ids(rng, T)
    person = np.array([f"person-{v // 3:07d}" for v in clip_video[track_clip].tolist()], dtype=object)
    ingest_status = np.select([vfate == "ingest failed", vfate == "duplicate"], ["failed", "skipped"], "ok")
    ingest_error = np.full(n_videos, None, dtype=object)
    bad = np.flatnonzero(vfate == "ingest failed")
    ingest_error[bad] = [INGEST_ERRORS[i % 2].format(uri=uri[j]) for i, j in enumerate(bad)]
    dup = np.flatnonzero(vfate == "duplicate")
    scenes_ok = vfate == "ok"
    videos = {
        "video_id": vids, "uri": uri, "shard": vshard,
        "duration_s": np.where(probed, vdur, np.nan), "fps": np.where(probed, 25.0, np.nan),
        "width": np.where(probed, 1280, 0), "height": np.where(probed, 720, 0),
        "has_audio": probed, "ingest_status": ingest_status, "ingest_error": ingest_error,
        "duplicate_of": _dup_of(vids, dup, has_clips),
        "scene_count": np.where(scenes_ok, np.bincount(clip_video, minlength=n_videos), 0),
        "scenes_seconds": np.where(np.isin(vfate, ["ok", "scenes failed"]),
                                   vdur * 25 / rng.uniform(150, 400, n_videos), np.nan),
        "scenes_status": np.select([scenes_ok, vfate == "scenes failed"], ["ok", "failed"], None),
        "scenes_error": np.where(vfate == "scenes failed", "MediaError: decoding failed: "
                                 "InvalidDataError: corrupt frame at 12.4 s", None),
    }
    nf = rng.integers(30, 300, len(clip_video))
    clips = {
        "clip_id": cids, "video_id": vids[clip_video], "shard": vshard[clip_video],
        "clip_index": _index_within(clip_video), "start_s": clip_start, "end_s": clip_start + clip_dur,
        "duration_s": clip_dur, "track_count": np.bincount(track_clip, minlength=len(clip_video)),
        "faces_seconds": clip_dur * 25 / rng.uniform(20, 60, len(clip_video)),
        "faces_status": np.select([cfate == "faces ok", cfate == "no face"], ["ok", "skipped"], "failed"),
        "faces_error": np.select([cfate == "no face", cfate == "faces failed"],
                                 [np.array([f"no face found in {n} frames" for n in nf], dtype=object),
                                  np.array(["no frames decoded from clip"] * len(nf), dtype=object)],
                                 None),
    }
    tracks = {
        "track_id": tids, "clip_id": cids[track_clip], "video_id": vids[clip_video[track_clip]],
        "shard": vshard[clip_video[track_clip]], "track_index": _index_within(track_clip),
        "person_id": person, "start_s": t_start, "end_s": t_start + dur,
        "frame_count": np.round(dur * CROP_FPS).astype(np.int32), "face_px_median": face_px,
        "yaw_mean": yaw, "pitch_mean": rng.normal(0, 8, T), "roll_mean": rng.normal(0, 5, T),
        "head_speed_deg_s": rng.gamma(2.0, 6.0, T), "faces_status": faces_status,
        "faces_error": faces_error, "crop_size": np.full(T, 96),
        "audio_status": audio_status, "audio_error": audio_error,
        "speech_ratio": np.where(audio_ok, speech, np.nan),
        "lip_sync_status": lip_status, "lip_sync_error": lip_error,
        "lip_sync_backend": np.where(ls_ok, backend, None),
        "lip_sync_offset_frames": np.where(ls_ok, offset, np.nan),
        "lip_sync_confidence": np.where(ls_ok, conf, np.nan),
        "expression_status": np.where(faces_ok, "ok", None),
        "expression_backend": np.where(faces_ok, "3dmm", None),
        "expression_dim": np.where(faces_ok, expr.shape[1], np.nan),
        "expression_mean": (expr, faces_ok),
        "expression_magnitude": np.where(faces_ok, np.linalg.norm(expr, axis=1), np.nan),
        "emotion_status": emo_status, "emotion_error": emo_error,
        "emotion_backend": np.where(emo_ok, "fer", None),
        "emotion_label": np.where(emo_ok, emotion, None),
        "emotion_prob": np.where(emo_ok, rng.uniform(0.3, 0.95, T), np.nan),
        "emotion": emotion, "crop_path": np.full(T, None, dtype=object),
    }
    truth = _truth(vfate, vdur, cfate, clip_dur, tfate, dur)
    return videos, clips, tracks, truth


def _starts_within(parent: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Start times of consecutive children laid end to end within each parent (parent sorted)."""
    ends = np.cumsum(durations)
    first = np.r_[True, parent[1:] != parent[:-1]]
    base = np.maximum.accumulate(np.where(first, ends - durations, 0.0))
    return ends - durations - base


def _index_within(parent: np.ndarray) -> np.ndarray:
    first = np.r_[True, parent[1:] != parent[:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(parent)), 0))
    return (np.arange(len(parent)) - starts).astype(np.int32)


def _dup_of(vids: np.ndarray, dup: np.ndarray, originals: np.ndarray) -> np.ndarray:
    out = np.full(len(vids), None, dtype=object)
    if len(originals):
        out[dup] = vids[originals[np.arange(len(dup)) % len(originals)]]
    return out


def _truth(vfate, vdur, cfate, clip_dur, tfate, dur) -> dict:
    def count_hours(fates, hours):
        return {str(f): {"count": int((fates == f).sum()), "hours": float(hours[fates == f].sum() / 3600)}
                for f in np.unique(fates)}

    return {"videos": count_hours(vfate, np.nan_to_num(vdur)), "clips": count_hours(cfate, clip_dur),
            "tracks": count_hours(tfate, dur)}


def _shard_tables(shard: int, videos: dict, clips: dict, tracks: dict) -> dict[str, pa.Table]:
    """The videos, clips and tracks rows of `shard` (column dicts of drawn values) as tables."""
    tables = {}
    for name, cols in (("videos", videos), ("clips", clips), ("tracks", tracks)):
        mask = cols["shard"] == shard
        part = {k: tuple(x[mask] for x in v) if isinstance(v, tuple) else v[mask]
                for k, v in cols.items()}
        tables[name] = _to_table(name, part)
    return tables


def _to_table(name: str, cols: dict) -> pa.Table:
    target = schema.table_schema(name)
    arrays = {}
    for key, values in cols.items():
        if key not in target.names:
            continue
        field = target.field(key)
        if key == "expression_mean":
            vectors, valid = values
            flat = pa.array(vectors.reshape(-1), pa.float32())
            lists = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(field.type)
            arrays[key] = _mask(lists, valid)
            continue
        if values.dtype.kind == "f":
            arrays[key] = pa.array(values, pa.float64(), mask=np.isnan(values)).cast(field.type)
        else:
            arrays[key] = pa.array(values.tolist() if values.dtype == object else values).cast(field.type)
    table = conform(pa.table(arrays), target)
    return table.sort_by([(k, "ascending") for k in schema.KEYS[name]])


def _mask(lists: pa.Array, valid: np.ndarray) -> pa.Array:
    """Null out list entries where `valid` is false."""
    return pc.if_else(pa.array(valid), lists, pa.nulls(len(lists), lists.type))


# ---------------------------------------------------------------------------------------------
# face-crop media from real photos
# ---------------------------------------------------------------------------------------------
def _face_photos(size: int) -> dict[str, np.ndarray]:
    """emotion label -> a real face, uint8[2*size,2*size,3] RGB, loosely cropped around the face
    that dlib's HOG detector finds (the whole photo's center square when it finds none)."""
    import dlib  # heavy: loaded on use

    detector = dlib.get_frontal_face_detector()
    faces: dict[str, np.ndarray] = {}
    for name in sorted(set(PHOTO_BY_EMOTION.values())):
        image = np.asarray(Image.open(media_file(name)).convert("RGB"))
        found = detector(image, 0)
        h, w = image.shape[:2]
        if found:
            box = max(found, key=lambda r: r.width())
            cx, cy, side = (box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2, box.width() * 1.8
        else:
            cx, cy, side = w / 2, h / 2, min(w, h)
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
        crop = Image.fromarray(image[y0:y1, x0:x1]).resize((2 * size, 2 * size), Image.BILINEAR)
        faces[name] = np.asarray(crop)
    return {emotion: faces[name] for emotion, name in PHOTO_BY_EMOTION.items()}


def crop_frames(face: np.ndarray, n: int, size: int, face_px: float, rng: np.random.Generator) -> np.ndarray:
    """uint8[n,size,size,3]: a slowly panning and zooming window over `face` (uint8[2s,2s,3]),
    blurred like an upscaled face when `face_px` < size."""
    t = np.arange(n) / CROP_FPS
    phase = rng.uniform(0, 2 * np.pi)
    full = face.shape[0]
    out = np.empty((n, size, size, 3), np.uint8)
    for i, ti in enumerate(t):
        side = int(full * (0.8 + 0.05 * np.sin(2 * np.pi * 0.3 * ti + phase)))
        cx = full / 2 + full * 0.04 * np.sin(2 * np.pi * 0.5 * ti + phase)
        cy = full / 2 + full * 0.03 * np.cos(2 * np.pi * 0.4 * ti + phase)
        x0, y0 = int(np.clip(cx - side / 2, 0, full - side)), int(np.clip(cy - side / 2, 0, full - side))
        img = Image.fromarray(face[y0:y0 + side, x0:x0 + side])
        if face_px < size:
            low = max(8, int(size * face_px / 200))
            img = img.resize((low, low), Image.BILINEAR)
        out[i] = np.asarray(img.resize((size, size), Image.BILINEAR))
    return out


def _write_crop(path: Path, face: np.ndarray, seconds: float, size: int, face_px: float,
                rng: np.random.Generator) -> None:
    n = max(2, round(seconds * CROP_FPS))
    frames = crop_frames(face, n, size, face_px, rng)
    samples = n * AUDIO_RATE // CROP_FPS
    tone = 0.1 * np.sin(2 * np.pi * 180 * np.arange(samples) / AUDIO_RATE).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), frames, CROP_FPS, tone, AUDIO_RATE)


def _write_track_crops(tmp: Path, tracks: pa.Table, photos: dict, size: int,
                       rng: np.random.Generator) -> tuple[dict[str, Path], pa.Table]:
    """Write a crop mp4 for every ok track; returns the staged files and the table with
    crop_path set."""
    staged: dict[str, Path] = {}
    rows = tracks.select(["track_id", "shard", "faces_status", "start_s", "end_s", "face_px_median",
                          "emotion_label"]).to_pylist()
    paths = []
    for row in rows:
        if row["faces_status"] != "ok":
            paths.append(None)
            continue
        rel = media_relpath(int(row["shard"]), row["track_id"], "crop.mp4")
        face = photos[row["emotion_label"] or "neutral"]
        _write_crop(tmp / rel, face, row["end_s"] - row["start_s"], size, row["face_px_median"], rng)
        staged[rel] = tmp / rel
        paths.append(rel)
    index = tracks.schema.get_field_index("crop_path")
    tracks = tracks.set_column(index, tracks.schema.field(index), pa.array(paths, pa.string()))
    return staged, tracks


def _write_pool(tmp: Path, photos: dict, size: int, rng: np.random.Generator) -> dict[str, Path]:
    staged = {}
    for emotion, face in photos.items():
        rel = f"media/pool/{emotion}.mp4"
        _write_crop(tmp / rel, face, 2.0, size, 150.0, rng)
        staged[rel] = tmp / rel
    return staged


def _stages() -> dict[str, dict]:
    """The manifest's stage entries, with the registry's real model specs for each stage."""
    uses = {"ingest": [], "scenes": [], "faces": [("face_detection", "mediapipe"),
            ("face_landmarks", "dlib68"), ("identity", "dlib")], "audio": [("vad", "silero")],
            "lip_sync": [], "expression": [("expression", "3dmm")], "emotion": [("emotion", "fer")]}
    out = {}
    for stage, keys in uses.items():
        models = []
        for task, backend in keys:
            spec = get_spec(task, backend)
            models.append({"key": spec.key, "backend": spec.backend, "version": spec.version,
                           "license": spec.license, "commercial_ok": spec.commercial_ok,
                           "weights": None})
        out[stage] = {"fingerprint": f"synthetic-{stage}", "version": "1", "config": {},
                      "models": models}
    return out


# ---------------------------------------------------------------------------------------------
# a catalog for the persons pass at scale: identity embeddings and per-frame rows
# ---------------------------------------------------------------------------------------------
IDENTITY_DIM = 128  # dlib's identity embedding
IDENTITY_NOISE = 0.0125  # per dimension: a track lies about 0.14 from its person's direction


def generate_persons_catalog(root: str | Path, n_videos: int = 36_000, shards: int = 64,
                             persons: int = 500, frames_per_track: int = 4, seed: int = 0) -> dict:
    """Write a catalog as curation leaves it before the persons pass: videos, clips and tracks
    drawn as `generate_catalog` draws them (about 2.8 tracks per video), every ok track with a
    dlib identity embedding (its person's random direction plus noise: about 0.14 from it, and
    persons about 1.4 apart, against dlib's 0.42 threshold) and person_id null, and
    `frames_per_track` frames rows per track (box, 68 landmarks, pose), which a pass that
    rewrites whole shards would rewrite too. The person of a track is its video's index modulo
    `persons`. No media. Returns {"tracks", "ok_tracks", "frames", "persons", "shards"}."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    videos, clips, tracks, _ = _draw(rng, n_videos, shards, max_track_s=4.0)
    video_index = {v: i for i, v in enumerate(videos["video_id"].tolist())}
    person = np.array([video_index[v] % persons for v in tracks["video_id"].tolist()])
    directions = rng.normal(size=(persons, IDENTITY_DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    embedding = directions[person] + rng.normal(0, IDENTITY_NOISE, (len(person), IDENTITY_DIM))
    embedding = (embedding / np.linalg.norm(embedding, axis=1, keepdims=True)).astype(np.float32)
    ok = tracks["faces_status"] == "ok"
    tracks["person_id"] = np.full(len(person), None, dtype=object)
    tracks["identity_backend"] = np.where(ok, "dlib", None)
    frames_written = 0
    for shard in range(shards):
        tables = _shard_tables(shard, videos, clips, tracks)
        mask = tracks["shard"] == shard
        order = np.argsort(tracks["track_id"][mask])  # _to_table sorts tracks by track_id
        vectors = embedding[mask][order]
        lists = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                  IDENTITY_DIM)
        field = schema.table_schema("tracks").field("identity_embedding")
        column = _mask(lists, ok[mask][order]).cast(field.type)
        t = tables["tracks"]
        tables["tracks"] = t.set_column(t.column_names.index("identity_embedding"), field, column)
        tables["frames"] = _frames_rows(rng, tables["tracks"]["track_id"].to_numpy(zero_copy_only=False),
                                        frames_per_track)
        frames_written += tables["frames"].num_rows
        commit_shard(root, shard, tables, staged_media={}, fingerprints={})
    write_manifest(root, {"job": {"inputs": ["synthetic"], "out": str(root)}}, _stages(),
                   "synthetic", {})
    return {"tracks": len(person), "ok_tracks": int(ok.sum()), "frames": frames_written,
            "persons": persons, "shards": shards}


def _frames_rows(rng: np.random.Generator, track_ids: np.ndarray, per_track: int) -> pa.Table:
    """`per_track` frames rows for each of the sorted `track_ids`: box, landmarks on a 256 px
    crop (0.1 px steps), pose."""
    n = len(track_ids) * per_track
    target = schema.table_schema("frames")
    landmarks = np.round(rng.uniform(0, 256, (n, 2 * schema.LANDMARKS_68)), 1).astype(np.float32)
    box = np.round(rng.uniform(0, 720, (n, 4)), 1).astype(np.float32)
    frame = np.tile(np.arange(per_track, dtype=np.int32), len(track_ids))
    cols = {
        "track_id": pa.array(np.repeat(track_ids, per_track).tolist(), pa.string()),
        "frame": pa.array(frame),
        "pts_s": pa.array(frame / float(CROP_FPS)),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(box.reshape(-1)), 4),
        "landmarks": pa.FixedSizeListArray.from_arrays(pa.array(landmarks.reshape(-1)),
                                                       2 * schema.LANDMARKS_68),
        "yaw": pa.array(rng.normal(0, 15, n).astype(np.float32)),
        "pitch": pa.array(rng.normal(0, 8, n).astype(np.float32)),
        "roll": pa.array(rng.normal(0, 5, n).astype(np.float32)),
    }
    return conform(pa.table(cols), target)


# ---------------------------------------------------------------------------------------------
# a training corpus: the tables the trainer's index reads, every per-frame column filled
# ---------------------------------------------------------------------------------------------
TRAINING_SOURCE = (640, 480)  # source video width, height (px)


def write_training_catalog(root: str | Path, n_tracks: int, seconds: float = 10.0,
                           tracks_per_shard: int = 500, crop_px: int = 64, seed: int = 0,
                           media: bool = True) -> list[str]:
    """Write a catalog of `n_tracks` usable talking-head tracks of `seconds` each for the
    trainer: videos, tracks and frames tables (every per-frame column a curated catalog has:
    box, 68 landmarks, crop affine, head angles, expression (3dmm, 10), jaw and head pose, FER
    emotion probabilities; smooth motion with float32 noise, so the Parquet files are as
    incompressible as real ones) in shards of `tracks_per_shard` tracks, 64k-row row groups
    (catalog.commits). With `media`, one face-crop clip of `seconds` (crop_px, real photo per
    emotion) and one float16 [T, 512] audio-feature file per emotion, shared by the tracks of
    that emotion. Returns the track ids (each its own selection row)."""
    root = str(root)  # a local folder or an s3:// prefix
    rng = np.random.default_rng(seed)
    frames_n = int(round(seconds * CROP_FPS))
    ids = [f"{i:08d}{h}" for i, h in enumerate(_ids(rng, n_tracks))]
    emotions = rng.choice(len(EMOTIONS), size=n_tracks, p=EMOTION_WEIGHTS)
    with tempfile.TemporaryDirectory(prefix="emoforge-train-synth-") as tmp:
        staged = _write_training_media(Path(tmp), frames_n, crop_px, rng) if media else {}
        for shard, lo in enumerate(range(0, n_tracks, tracks_per_shard)):
            part = np.arange(lo, min(n_tracks, lo + tracks_per_shard))
            tables = _training_tables(rng, [ids[i] for i in part], emotions[part], shard,
                                      frames_n, crop_px, media)
            commit_shard(root, shard, tables, staged_media=staged if shard == 0 else {},
                         fingerprints={})
    write_manifest(root, {"job": {"inputs": ["synthetic"], "out": str(root)}}, _stages(),
                   "synthetic")
    return ids


def _write_training_media(tmp: Path, frames_n: int, size: int,
                          rng: np.random.Generator) -> dict[str, Path]:
    photos = _face_photos(size)
    staged = {}
    for emotion in EMOTIONS:
        rel = f"media/pool/{emotion}.mp4"
        _write_crop(tmp / rel, photos[emotion], frames_n / CROP_FPS, size, 150.0, rng)
        feats = f"media/pool/{emotion}_audio_features.npy"
        np.save(tmp / feats, rng.normal(0, 1, (frames_n, 512)).astype(np.float16))
        staged[rel], staged[feats] = tmp / rel, tmp / feats
    return staged


def _training_tables(rng: np.random.Generator, ids: list[str], emotions: np.ndarray, shard: int,
                     frames_n: int, crop_px: int, media: bool) -> dict[str, pa.Table]:
    n = len(ids)
    width, height = TRAINING_SOURCE
    video_ids = [f"v{t}" for t in ids]
    labels = [EMOTIONS[e] for e in emotions]
    videos = conform(pa.table({
        "video_id": video_ids, "uri": [f"synthetic://{v}.mp4" for v in video_ids],
        "shard": pa.array(np.full(n, shard), pa.int32()),
        "width": pa.array(np.full(n, width), pa.int32()),
        "height": pa.array(np.full(n, height), pa.int32())}), schema.table_schema("videos"))
    tracks = conform(pa.table({
        "track_id": ids, "clip_id": [f"c{t}" for t in ids], "video_id": video_ids,
        "shard": pa.array(np.full(n, shard), pa.int32()),
        "frame_count": pa.array(np.full(n, frames_n), pa.int32()),
        "person_id": [f"p{int(t[:8]) // 5:08d}" for t in ids],
        "crop_path": [f"media/pool/{e}.mp4" for e in labels] if media else [None] * n,
        "crop_size": pa.array(np.full(n, crop_px), pa.int32()),
        "audio_features_path": ([f"media/pool/{e}_audio_features.npy" for e in labels]
                                if media else [None] * n),
        "emotion_backend": ["fer"] * n, "emotion_label": labels,
        "faces_status": ["ok"] * n}), schema.table_schema("tracks"))
    return {"videos": videos.sort_by("video_id"), "tracks": tracks.sort_by("track_id"),
            "frames": _training_frames(rng, ids, frames_n, crop_px)}


def _training_frames(rng: np.random.Generator, ids: list[str], frames_n: int,
                     crop_px: int) -> pa.Table:
    """Frame rows of `ids` (sorted), frames_n each: a face moving smoothly in the source frame,
    its crop affine, landmarks in crop px, angles, expression, jaw/head pose and emotions."""
    n, rows = len(ids), len(ids) * frames_n
    t = np.tile(np.arange(frames_n, dtype=np.float32), n) / CROP_FPS
    phase = np.repeat(rng.uniform(0, 2 * np.pi, n), frames_n).astype(np.float32)
    width, height = TRAINING_SOURCE
    side = np.float32(160) + 10 * np.sin(0.7 * t + phase)
    cx = width / 2 + 40 * np.sin(0.3 * t + phase)
    cy = height / 2 + 20 * np.cos(0.4 * t + phase)
    box = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
    scale = crop_px / (2 * side)  # the crop spans twice the face box
    zero = np.zeros(rows, np.float32)
    affine = np.stack([scale, zero, crop_px / 2 - scale * cx, zero, scale,
                       crop_px / 2 - scale * cy], 1)
    template = rng.uniform(0.2, 0.8, (1, 136)).astype(np.float32) * crop_px
    landmarks = template + rng.normal(0, 0.3, (rows, 136)).astype(np.float32)
    angles = 15 * np.sin(0.5 * t[:, None] + phase[:, None] + np.arange(3)) + rng.normal(
        0, 0.2, (rows, 3))
    emotion = rng.dirichlet(np.ones(len(EMOTIONS)), rows)

    def vectors(values: np.ndarray, fixed: bool = True) -> pa.Array:
        flat = pa.array(np.asarray(values, np.float32).reshape(-1))
        width_ = values.shape[1]
        if fixed:
            return pa.FixedSizeListArray.from_arrays(flat, width_)
        return pa.ListArray.from_arrays(pa.array(np.arange(0, flat.__len__() + 1, width_,
                                                           dtype=np.int32)), flat)

    columns = {
        "track_id": pa.array(np.repeat(np.asarray(ids, object), frames_n), pa.string()),
        "frame": pa.array(np.tile(np.arange(frames_n, dtype=np.int32), n)),
        "pts_s": pa.array(t.astype(np.float64)), "box": vectors(box),
        "landmarks": vectors(landmarks), "crop_affine": vectors(affine),
        "yaw": pa.array(angles[:, 0].astype(np.float32)),
        "pitch": pa.array(angles[:, 1].astype(np.float32)),
        "roll": pa.array(angles[:, 2].astype(np.float32)),
        "mouth_open": pa.array(rng.uniform(0, 0.5, rows).astype(np.float32)),
        "det_confidence": pa.array(rng.uniform(0.8, 1, rows).astype(np.float32)),
        "lip_sync_frame_confidence": pa.array(rng.uniform(0, 1, rows).astype(np.float32)),
        "expression": vectors(rng.normal(0, 1, (rows, 10)), fixed=False),
        "jaw_pose": vectors(rng.normal(0, 0.1, (rows, 3))),
        "head_pose": vectors(np.deg2rad(angles)),
        "emotion_probs": vectors(emotion, fixed=False),
    }
    target = schema.table_schema("frames")
    arrays = [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(rows, f.type)
              for f in target]
    return pa.Table.from_arrays(arrays, schema=target)
