"""Contact sheets for the curation report: sample tracks chosen from the catalog, a few frames
each decoded from their face-crop mp4s (pipeline.media.iter_frames), as embeddable JPEG bytes."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog import fs
from jobs.report.data import TRACK_STAGES, normalize_errors
from pipeline.media import MediaError, iter_frames

log = logging.getLogger(__name__)

FRAMES_PER_TRACK = 4
THUMB_PX = 88
PER_EMOTION = 3
PER_SYNC_END = 3
SMALLEST = 6
FAILURE_EXAMPLES = 2


@dataclass
class Sample:
    """One track shown on a contact sheet: its caption and its frames (JPEG bytes, or None with
    `note` saying why there are none)."""

    track_id: str
    caption: list[str]
    jpeg: bytes | None = None
    note: str | None = None


@dataclass
class Sheet:
    title: str
    explanation: str
    samples: list[Sample] = field(default_factory=list)


def _np(column) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False) if not isinstance(column, np.ndarray) else column


def _mask(expr) -> np.ndarray:
    return _np(pc.fill_null(expr, False)).astype(bool)


def frame_strip(path: Path, frame_count: int | None, n: int = FRAMES_PER_TRACK,
                height: int = THUMB_PX) -> bytes:
    """JPEG bytes of `n` frames spread over the clip at `path`, side by side, `height` px high.
    Raises MediaError when the file cannot be decoded or has no frames."""
    from PIL import Image  # heavy: loaded on use

    total = int(frame_count or 0)
    wanted = set(np.linspace(0, max(total - 1, 0), n).round().astype(int).tolist()) if total else None
    images: list[np.ndarray] = []
    for position, frame in enumerate(iter_frames(str(path))):
        if wanted is None or position in wanted:
            images.append(frame.image)
        if wanted is not None and position >= max(wanted):
            break
        if wanted is None and len(images) >= n:
            break
    if not images:
        raise MediaError(f"{path}: no frames decoded")
    tiles = []
    for image in images:
        h, w = image.shape[:2]
        tiles.append(Image.fromarray(image).resize((max(1, round(w * height / h)), height), Image.BILINEAR))
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=82)
    return buf.getvalue()


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _caption(row: dict, verdict: str | None) -> list[str]:
    lines = [f"track {row['track_id'][:12]}"]
    if row.get("emotion_label"):
        lines.append(f"{row['emotion_label']} p={_fmt(row.get('emotion_prob'))}")
    if row.get("lip_sync_status") == "ok":
        lines.append(f"sync {row.get('lip_sync_backend')}: conf {_fmt(row.get('lip_sync_confidence'))}, "
                     f"offset {row.get('lip_sync_offset_frames')} fr")
    elif row.get("lip_sync_status"):
        lines.append(f"lip sync {row['lip_sync_status']}")
    lines.append(f"face {_fmt(row.get('face_px_median'), '.0f')} px, "
                 f"{_fmt((row.get('end_s') or 0) - (row.get('start_s') or 0), '.1f')} s")
    lines.append("kept" if verdict is None else f"dropped: {verdict}")
    return lines


def _samples(root: Path, tracks: pa.Table, drop: pa.Array, indices: list[int],
             extra: dict[int, str] | None = None) -> list[Sample]:
    if not indices:
        return []
    rows = tracks.take(pa.array(indices, pa.int64())).to_pylist()
    reasons = pc.take(drop, pa.array(indices, pa.int64())).to_pylist()
    out = []
    for i, row, reason in zip(indices, rows, reasons):
        caption = _caption(row, reason)
        if extra and i in extra:
            caption.insert(1, extra[i])
        sample = Sample(row["track_id"], caption)
        if row.get("crop_path"):
            store = fs.resolve(root)  # a local folder or an s3:// prefix
            path = store.uri_of(row["crop_path"])
            if not store.is_file(row["crop_path"]):
                sample.note = f"face crop missing: {row['crop_path']}"
            else:
                try:
                    sample.jpeg = frame_strip(path, row.get("frame_count"))
                except MediaError as exc:
                    sample.note = f"face crop unreadable: {exc}"
        else:
            sample.note = "no face crop (faces did not finish this track)"
        out.append(sample)
    return out


def _top(values: np.ndarray, candidates: np.ndarray, k: int, largest: bool) -> list[int]:
    """Indices (into the table) of the k candidates with the largest/smallest values."""
    if len(candidates) == 0:
        return []
    v = values[candidates].astype(float)
    order = np.argsort(-v if largest else v, kind="stable")[:k]
    return candidates[order].tolist()


def contact_sheets(root: Path, tracks: pa.Table, keep: pa.Array, drop: pa.Array,
                   failed_rows: dict[str, pa.Table] | None = None) -> list[Sheet]:
    """Per emotion, least and most in sync (per lip-sync backend), smallest faces, failures.

    failed_rows: {"videos": table with video_id, uri, ingest/scenes status and error; "clips":
    table with clip_id, video_id, faces status and error}: their failures become text cards."""
    has_crop = _mask(pc.and_(pc.is_valid(tracks["crop_path"]), pc.equal(tracks["faces_status"], "ok")))
    kept = _np(keep).astype(bool)
    sheets = []

    emotion = Sheet("Sample tracks per emotion", f"Up to {PER_EMOTION} kept tracks per dominant "
                    "emotion with the highest mean probability (all tracks when none is kept).")
    labels = _np(tracks["emotion_label"])
    prob = _np(pc.fill_null(tracks["emotion_prob"], 0.0))
    ok_emotion = has_crop & _mask(pc.equal(tracks["emotion_status"], "ok"))
    for label in sorted({x for x in pc.unique(tracks["emotion_label"]).to_pylist() if x}):
        pool = ok_emotion & (labels == label)
        chosen = pool & kept if (pool & kept).any() else pool
        picks = _top(prob, np.flatnonzero(chosen), PER_EMOTION, largest=True)
        emotion.samples += _samples(root, tracks, drop, picks)
    sheets.append(emotion)

    sync = Sheet("Least and most in sync", f"Per lip-sync backend (their confidence scales differ): "
                 f"the {PER_SYNC_END} tracks with the lowest and the highest sync confidence.")
    conf = _np(pc.fill_null(tracks["lip_sync_confidence"], np.nan))
    backends = _np(tracks["lip_sync_backend"])
    ok_sync = has_crop & _mask(pc.equal(tracks["lip_sync_status"], "ok")) & ~np.isnan(conf)
    for backend in sorted({x for x in pc.unique(tracks["lip_sync_backend"]).to_pylist() if x}):
        pool = np.flatnonzero(ok_sync & (backends == backend))
        n_low = min(PER_SYNC_END, (len(pool) + 1) // 2)
        low = _top(conf, pool, n_low, largest=False)
        high = _top(conf, pool, min(PER_SYNC_END, len(pool) - n_low), largest=True)
        sync.samples += _samples(root, tracks, drop, low, {i: f"least in sync ({backend})" for i in low})
        sync.samples += _samples(root, tracks, drop, high, {i: f"most in sync ({backend})" for i in high})
    sheets.append(sync)

    size = _np(pc.fill_null(tracks["face_px_median"], np.inf))
    small = Sheet("Smallest faces", f"The {SMALLEST} tracks with a face crop and the smallest "
                  "median face size (source pixels; crops are upscaled).")
    small.samples = _samples(root, tracks, drop, _top(size, np.flatnonzero(has_crop), SMALLEST, largest=False))
    sheets.append(small)
    failures = _failure_sheet(root, tracks, drop)
    for table, (id_col, stages) in {"videos": ("video_id", ("ingest", "scenes")),
                                    "clips": ("clip_id", ("faces",))}.items():
        if failed_rows and table in failed_rows:
            failures.samples += _text_failures(failed_rows[table], table, id_col, stages)
    sheets.append(failures)
    return sheets


def _text_failures(table: pa.Table, name: str, id_col: str, stages: tuple[str, ...]) -> list[Sample]:
    """Text cards for failed rows of `table`, up to FAILURE_EXAMPLES per (stage, error)."""
    out = []
    for stage in stages:
        failed = table.filter(pc.fill_null(pc.equal(table[f"{stage}_status"], "failed"), False))
        if failed.num_rows == 0:
            continue
        normal = _np(normalize_errors(pc.fill_null(failed[f"{stage}_error"], "(no reason given)")))
        for reason in dict.fromkeys(normal.tolist()):
            rows = failed.take(pa.array(np.flatnonzero(normal == reason)[:FAILURE_EXAMPLES])).to_pylist()
            for row in rows:
                where = row.get("uri") or f"video {str(row.get('video_id'))[:12]}"
                out.append(Sample(row[id_col], [f"{name[:-1]} {str(row[id_col])[:12]} ({where})",
                                                f"{stage} failed: {row[f'{stage}_error']}"],
                                  note=f"no frames: the {name[:-1]} failed before face crops existed"))
    return out


def _failure_sheet(root: Path, tracks: pa.Table, drop: pa.Array) -> Sheet:
    """Failed tracks, up to FAILURE_EXAMPLES per (stage, error), with the reason as caption."""
    sheet = Sheet("Failures", f"Up to {FAILURE_EXAMPLES} failed rows per stage and reason: tracks "
                  "with frames when a face crop exists, then failed videos and clips as text.")
    seen: set[int] = set()
    for stage in TRACK_STAGES:
        failed = np.flatnonzero(_mask(pc.equal(tracks[f"{stage}_status"], "failed")))
        if len(failed) == 0:
            continue
        errors = pc.take(tracks[f"{stage}_error"], pa.array(failed))
        normal = _np(normalize_errors(pc.fill_null(errors, "(no reason given)")))
        raw = dict(zip(failed.tolist(), errors.to_pylist()))
        for reason in dict.fromkeys(normal.tolist()):
            picks = [int(i) for i in failed[normal == reason][:FAILURE_EXAMPLES] if int(i) not in seen]
            seen.update(picks)
            notes = {i: f"{stage} failed: {raw[i] or '(no reason given)'}" for i in picks}
            sheet.samples += _samples(root, tracks, drop, picks, notes)
    return sheet
