"""The catalog's schema as code: every column declared once, grouped by the stage that writes it.

Each field carries metadata: `doc`, `unit` (when it has one), `stage`, and for vectors their size
or class names. Tables: videos, clips, tracks, frames, persons. Keys:
videos.video_id, clips.clip_id, tracks.track_id, frames.(track_id, frame), persons.person_id.

Versioning: SCHEMA_VERSION is "major.minor". Adding columns is a minor bump (older catalogs read
with them null); renames and type changes are a major bump with a migration (catalog/migrate.py).
"""

from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = "1.2"

TABLES = ("videos", "clips", "tracks", "frames", "persons")
KEYS: dict[str, tuple[str, ...]] = {
    "videos": ("video_id",),
    "clips": ("clip_id",),
    "tracks": ("track_id",),
    "frames": ("track_id", "frame"),
    "persons": ("person_id",),
}
PARENT: dict[str, tuple[str, str] | None] = {
    # table: (parent table, foreign key)
    "videos": None,
    "clips": ("videos", "video_id"),
    "tracks": ("clips", "clip_id"),
    "frames": ("tracks", "track_id"),
    "persons": None,
}
STAGES = ("ingest", "scenes", "faces", "audio", "lip_sync", "expression", "emotion", "persons")
# The stage that creates each table's rows (and writes its keys).
CREATED_BY = {"videos": "ingest", "clips": "scenes", "tracks": "faces", "frames": "faces",
              "persons": "persons"}
LANDMARKS_68 = 68
EMOTION_CLASSES_FER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
EMOTION_CLASSES = {  # class order of emotion_probs per emotion backend
    "fer": list(EMOTION_CLASSES_FER),
    "facex": list(EMOTION_CLASSES_FER),
    "fer+facex": list(EMOTION_CLASSES_FER),  # the default: mean of both bundled classifiers
    "hsemotion": ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"],
}
# component names of the expression vectors per backend (blendshapes: MediaPipe's ARKit shapes
# without _neutral and the eyeLook* gaze shapes, then two geometric action-unit measures)
EXPRESSION_NAMES = {
    "blendshapes": [
        "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
        "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
        "eyeBlinkLeft", "eyeBlinkRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft",
        "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
        "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
        "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
        "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
        "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
        "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
        "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight", "cheekRaise_AU6",
        "noseWrinkle_AU9",
    ],
}
GAZE_NAMES = [  # components of expression_gaze (blendshapes backend)
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
]
# expression vector length per expression backend
EXPRESSION_DIMS = {"3dmm": 10, "deca": 50, "blendshapes": len(EXPRESSION_NAMES["blendshapes"])}


def col(name: str, type_: pa.DataType, doc: str, unit: str | None = None, **meta) -> pa.Field:
    metadata = {"doc": doc}
    if unit:
        metadata["unit"] = unit
    for key, value in meta.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return pa.field(name, type_, nullable=True, metadata=metadata)


def status_cols(stage: str) -> list[pa.Field]:
    return [
        col(f"{stage}_status", pa.string(), f"{stage} outcome for this row: ok, skipped or failed"),
        col(f"{stage}_error", pa.string(), f"why {stage} skipped or failed this row (null when ok)"),
    ]


F32 = pa.float32()
F64 = pa.float64()
STR = pa.string()


def vec(n: int) -> pa.DataType:
    return pa.list_(F32, n)


# --------------------------------------------------------------------------------------------
# Columns per (stage, table). Keys and foreign keys are declared by the creating stage.
# --------------------------------------------------------------------------------------------
COLUMNS: dict[tuple[str, str], list[pa.Field]] = {}

COLUMNS["ingest", "videos"] = [
    col("video_id", STR, "content hash of the file (sha256 of its bytes, first 32 hex); for a "
        "duplicate or unreadable file, a hash of content and uri so the key stays unique"),
    col("uri", STR, "input file path or URI as given"),
    col("shard", pa.int32(), "hash(video_id) mod num_shards: the unit of commit and resume"),
    col("content_sha256", STR, "sha256 of the file's bytes (null if unreadable)"),
    col("size_bytes", pa.int64(), "file size", unit="bytes"),
    col("mtime_ns", pa.int64(), "file modification time (hash cache key)", unit="ns"),
    col("duplicate_of", STR, "video_id of the file with the same content that is processed instead"),
    col("container", STR, "container format names as FFmpeg reports them"),
    col("duration_s", F64, "video stream duration", unit="s"),
    col("frame_count", pa.int64(), "number of video frames (counted from packets)"),
    col("fps", F64, "average frame rate", unit="1/s"),
    col("variable_fps", pa.bool_(), "true when frame durations differ by more than 10%"),
    col("width", pa.int32(), "display width after rotation", unit="px"),
    col("height", pa.int32(), "display height after rotation", unit="px"),
    col("rotation", pa.int16(), "display rotation, counter-clockwise (FFmpeg display matrix)", unit="deg"),
    col("video_codec", STR, "video codec name"),
    col("pix_fmt", STR, "pixel format (tells 8 from 10 bit)"),
    col("has_audio", pa.bool_(), "file has an audio stream"),
    col("audio_codec", STR, "audio codec name"),
    col("audio_sample_rate", pa.int32(), "audio sample rate", unit="Hz"),
    col("audio_channels", pa.int16(), "audio channel count"),
    col("audio_start_offset_s", F64, "audio stream start minus video stream start", unit="s"),
    *status_cols("ingest"),
]

COLUMNS["scenes", "videos"] = [
    col("scene_count", pa.int32(), "clips found in the video"),
    col("scenes_seconds", F64, "wall time of scene detection for this video", unit="s",
        timing=True),
    *status_cols("scenes"),
]
COLUMNS["scenes", "clips"] = [
    col("clip_id", STR, "hash of (video_id, start pts, end pts)"),
    col("video_id", STR, "parent video"),
    col("shard", pa.int32(), "shard of the parent video"),
    col("clip_index", pa.int32(), "position of the clip in its video"),
    col("start_s", F64, "first frame's pts, relative to the video stream start", unit="s"),
    col("end_s", F64, "pts just after the last frame (exclusive)", unit="s"),
    col("start_frame", pa.int64(), "first source frame number"),
    col("end_frame", pa.int64(), "source frame number after the last one (exclusive)"),
    col("duration_s", F64, "end_s - start_s", unit="s"),
    col("cut_before", STR, "what starts the clip: 'start', 'cut' or 'split' (max length)"),
    col("scenes_detector", STR, "detector and its parameters (JSON)"),
]

COLUMNS["faces", "clips"] = [
    col("track_count", pa.int32(), "face tracks found in the clip"),
    col("faces_max_simultaneous", pa.int32(), "most faces seen in one frame"),
    col("faces_seconds", F64, "wall time of face tracking for this clip", unit="s", timing=True),
    *status_cols("faces"),
]
COLUMNS["faces", "tracks"] = [
    col("track_id", STR, "hash of (clip_id, first frame, index by first frame then box x)"),
    col("clip_id", STR, "parent clip"),
    col("video_id", STR, "video of the parent clip"),
    col("shard", pa.int32(), "shard of the video"),
    col("track_index", pa.int32(), "index in the clip, by first frame then box x"),
    col("start_s", F64, "first frame's source pts", unit="s"),
    col("end_s", F64, "source pts after the last frame", unit="s"),
    col("start_frame", pa.int64(), "first source frame number"),
    col("end_frame", pa.int64(), "source frame number after the last one (exclusive)"),
    col("frame_count", pa.int32(), "frames on the 25 fps grid (rows in frames/)"),
    col("face_px_median", F32, "median face box side in source pixels", unit="px"),
    col("face_frac_median", F32, "median face box side over the frame's shorter side"),
    col("det_confidence_mean", F32, "mean detector confidence"),
    col("yaw_mean", F32, "mean head yaw", unit="deg"),
    col("pitch_mean", F32, "mean head pitch", unit="deg"),
    col("roll_mean", F32, "mean head roll", unit="deg"),
    col("head_speed_deg_s", F32, "mean head rotation speed (EMO speed layers)", unit="deg/s"),
    col("sharpness", F32, "median variance of the Laplacian of the gray face crop"),
    col("faces_in_frame_max", pa.int32(), "most faces in any frame this track spans"),
    col("identity_embedding", pa.list_(F32), "identity embedding, L2-normalized",
        size_by_backend={"dlib": 128, "arcface": 512}),
    col("identity_backend", STR, "backend of identity_embedding"),
    col("faces_backend", STR, "detector/landmarker backend"),
    col("crop_path", STR, "catalog-relative path of the 25 fps face-crop mp4 with 16 kHz audio"),
    col("crop_size", pa.int32(), "face-crop side", unit="px"),
    col("mesh_path", STR, "catalog-relative path of the float16 [T,478,3] mesh sidecar (opt-in)"),
    *status_cols("faces"),
]
COLUMNS["faces", "frames"] = [
    col("track_id", STR, "parent track"),
    col("frame", pa.int32(), "frame index on the track's 25 fps grid (0-based)"),
    col("pts_s", F64, "source pts of the frame sampled for this grid point", unit="s"),
    col("box", vec(4), "face box x0, y0, x1, y1 in source pixels", unit="px"),
    col("landmarks", vec(2 * LANDMARKS_68), "68 landmarks x0,y0,...,x67,y67 in crop pixels",
        unit="px"),
    col("crop_affine", vec(6), "2x3 affine mapping source pixels to crop pixels (row-major)"),
    col("yaw", F32, "head yaw", unit="deg"),
    col("pitch", F32, "head pitch", unit="deg"),
    col("roll", F32, "head roll", unit="deg"),
    col("mouth_open", F32, "inner-lip gap over mouth width"),
    col("det_confidence", F32, "detector confidence (null between detections)"),
]

COLUMNS["audio", "tracks"] = [
    col("speech_ratio", F32, "fraction of the track with voice activity"),
    col("speech_segments", pa.list_(pa.struct([("start_s", F32), ("end_s", F32)])),
        "voice activity segments relative to the track start", unit="s"),
    col("loudness_dbfs", F32, "RMS level of the track audio", unit="dBFS"),
    col("clipping_ratio", F32, "fraction of samples at full scale"),
    col("language", STR, "spoken language (Whisper; null when transcription is off)"),
    col("transcript", STR, "transcript (Whisper; null when transcription is off)"),
    col("transcript_segments", pa.list_(pa.struct([("start_s", F32), ("end_s", F32), ("text", STR)])),
        "transcript segments relative to the track start (Whisper's timestamps; null when "
        "transcription is off, or in catalogs written before schema 1.1)", unit="s"),
    col("audio_features_path", STR, "catalog-relative float16 [T,D] audio features on the 25 fps grid"),
    col("audio_features_backend", STR, "backend of the audio features"),
    *status_cols("audio"),
]
COLUMNS["lip_sync", "tracks"] = [
    col("lip_sync_backend", STR, "lip-sync backend (thresholds are per backend)"),
    col("lip_sync_offset_frames", pa.int16(), "audio offset; positive = audio leads", unit="frames@25fps"),
    col("lip_sync_offset_s", F32, "audio offset; positive = audio leads", unit="s"),
    col("lip_sync_confidence", F32, "sync confidence on the backend's scale"),
    col("lip_sync_min_dist", F32, "minimum mean distance over offsets (SyncNet)"),
    col("lip_sync_shifted_path", STR, "catalog-relative crop with audio shifted to offset 0"),
    *status_cols("lip_sync"),
]
COLUMNS["lip_sync", "frames"] = [
    col("lip_sync_frame_confidence", F32, "per-frame sync confidence at the track's offset"),
]
COLUMNS["expression", "tracks"] = [
    col("expression_backend", STR, "expression backend (select refuses to mix backends)",
        backends=list(EXPRESSION_DIMS)),
    col("expression_dim", pa.int16(), "length D of the expression vectors",
        size_by_backend=EXPRESSION_DIMS),
    col("expression_mean", pa.list_(F32), "mean expression vector over the track",
        size_by_backend=EXPRESSION_DIMS, names_by_backend=EXPRESSION_NAMES),
    col("expression_magnitude", F32, "mean L2 norm of the per-frame expression vectors (raw, "
        "not per-person normalized)"),
    col("expression_fit_error_px", F32, "mean landmark fitting error (3DMM backends)", unit="px"),
    col("expression_pose_ok_fraction", F32, "fraction of frames within the head-pose limit "
        "(blendshapes; expression_mean covers those frames)"),
    *status_cols("expression"),
]
COLUMNS["expression", "frames"] = [
    col("expression", pa.list_(F32), "expression coefficients (D values, linear space; 3dmm: "
        "3DDFA basis coefficients in population-std units; deca: FLAME expression params; "
        "blendshapes: scores in [0, 1], names in names_by_backend), temporally smoothed",
        size_by_backend=EXPRESSION_DIMS, names_by_backend=EXPRESSION_NAMES),
    col("jaw_pose", vec(3), "jaw rotation, axis-angle (FLAME convention, x>0 opens; 3dmm: "
        "opening angle of the fitted chin about the jaw pivot)", unit="rad"),
    col("head_pose", vec(3), "head rotation, axis-angle, camera x right, y up, z to camera",
        unit="rad"),
    col("expression_gaze", pa.list_(F32), "eye gaze scores in [0, 1] (blendshapes: the eyeLook* "
        "shapes), temporally smoothed", names=GAZE_NAMES),
    col("expression_pose_ok", pa.bool_(), "head within the pose limit (|yaw| and |pitch|, "
        "blendshapes backend)"),
]
COLUMNS["emotion", "tracks"] = [
    col("emotion_backend", STR, "emotion backend", classes_by_backend=EMOTION_CLASSES),
    col("emotion_label", STR, "dominant emotion over the track (argmax of the mean distribution)"),
    col("emotion_prob", F32, "mean probability of the dominant emotion"),
    col("emotion_entropy", F32, "entropy of the mean emotion distribution", unit="nats"),
    col("emotion_probs_mean", pa.list_(F32), "mean class probabilities (class names in metadata)",
        classes=list(EMOTION_CLASSES_FER), classes_by_backend=EMOTION_CLASSES),
    col("emotion_valence_mean", F32, "mean valence (hsemotion multi-task models only)"),
    col("emotion_arousal_mean", F32, "mean arousal (hsemotion multi-task models only)"),
    *status_cols("emotion"),
]
COLUMNS["emotion", "frames"] = [
    col("emotion_probs", pa.list_(F32), "class probabilities per frame (smoothed)",
        classes=list(EMOTION_CLASSES_FER), classes_by_backend=EMOTION_CLASSES),
    col("emotion_valence", F32, "valence per frame (hsemotion multi-task models only)"),
    col("emotion_arousal", F32, "arousal per frame (hsemotion multi-task models only)"),
]
COLUMNS["persons", "tracks"] = [
    col("person_id", STR, "identity cluster (post-pass `emoforge catalog persons`)"),
]
COLUMNS["persons", "persons"] = [
    col("person_id", STR, "identity cluster id: hash of its smallest member track_id"),
    col("track_count", pa.int32(), "tracks in the cluster"),
    col("video_count", pa.int32(), "distinct videos in the cluster"),
    col("identity_backend", STR, "embedding backend the clustering used"),
    col("centroid", pa.list_(F32), "mean L2-normalized identity embedding"),
]

CHILDREN = {"videos": "clips", "clips": "tracks", "tracks": "frames"}


def table_schema(table: str, stages: tuple[str, ...] | None = None) -> pa.Schema:
    """The full schema of a table (all stages, in pipeline order), or only given stages'."""
    fields: list[pa.Field] = []
    seen: set[str] = set()
    for stage in STAGES:
        if stages is not None and stage not in stages:
            continue
        for field in COLUMNS.get((stage, table), []):
            if field.name not in seen:
                fields.append(field)
                seen.add(field.name)
    return pa.schema(fields, metadata={"emoforge_table": table, "schema_version": SCHEMA_VERSION})


def stage_output(stages: tuple[str, ...], level: str) -> pa.Schema:
    """What a stage (or analyzer group) returns for rows of `level`: its columns there, plus a
    list<struct> column per child table it writes (recursively), e.g. videos -> clips -> ..."""
    fields = [f for s in stages for f in COLUMNS.get((s, level), [])]
    child = CHILDREN.get(level)
    if child is not None:
        child_fields = _nested_fields(stages, child)
        if child_fields:
            fields.append(pa.field(child, pa.list_(pa.struct(child_fields))))
    return pa.schema(fields)


def _nested_fields(stages: tuple[str, ...], table: str) -> list[pa.Field]:
    fields = [f for s in stages for f in COLUMNS.get((s, table), [])]
    child = CHILDREN.get(table)
    if child is not None:
        sub = _nested_fields(stages, child)
        if sub:
            fields.append(pa.field(child, pa.list_(pa.struct(sub))))
    return fields


def stage_of_column(table: str, name: str) -> str | None:
    for (stage, tbl), fields in COLUMNS.items():
        if tbl == table and any(f.name == name for f in fields):
            return stage
    return None


def check_unique_declarations() -> None:
    """Each column is declared once per table, except keys repeated by their creating stage."""
    for table in TABLES:
        seen: dict[str, str] = {}
        for stage in STAGES:
            for field in COLUMNS.get((stage, table), []):
                if field.name in seen:
                    raise ValueError(
                        f"{table}.{field.name} declared by both {seen[field.name]} and {stage}"
                    )
                seen[field.name] = stage
