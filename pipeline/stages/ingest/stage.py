"""Ingest: one `videos` row per input file: probe container, video and audio streams (PyAV).

The runner hashes files first (pipeline/stages/ingest/hashing.py) and hands rows with video_id, shard,
content hash and duplicate_of; this stage probes each file. Frame count and variable frame rate
come from demuxing the video packets (no decoding); rotation from the first decoded frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.media import MediaError, open_container, stream_start_s
from pipeline.stages.contract import FAILED, OK, SKIPPED, Stage

IDENTITY = ("video_id", "uri", "shard", "content_sha256", "size_bytes", "mtime_ns", "duplicate_of")


@dataclass(frozen=True)
class IngestConfig:
    vfr_tolerance: float = 0.1  # frame durations differing by more than this fraction: VFR


class IngestStage(Stage):
    name = "ingest"
    level = "videos"
    requires = (*IDENTITY, "hash_error")
    Config = IngestConfig
    version = "1"
    num_cpus = 0.5

    def process_row(self, row: dict) -> dict:
        out = {k: row.get(k) for k in IDENTITY}
        if row.get("hash_error"):
            return {**out, "ingest_status": FAILED, "ingest_error": row["hash_error"]}
        if row.get("duplicate_of"):
            return {**out, "ingest_status": SKIPPED,
                    "ingest_error": f"duplicate of video {row['duplicate_of']}"}
        if not row.get("size_bytes"):
            return {**out, "ingest_status": FAILED, "ingest_error": "empty file (0 bytes)"}
        try:
            out.update(probe(row["uri"], self.config.vfr_tolerance))
        except MediaError as exc:
            return {**out, "ingest_status": FAILED, "ingest_error": str(exc)}
        return {**out, "ingest_status": OK, "ingest_error": None}


def probe(path: str, vfr_tolerance: float = 0.1) -> dict:
    """Container and stream facts. Raises MediaError for files without a decodable video."""
    container = open_container(path)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MediaError(f"{path}: no video stream (streams: {', '.join(kinds)})")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        info = {
            "container": container.format.name,
            "video_codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "has_audio": audio is not None,
            "audio_codec": audio.codec_context.name if audio else None,
            "audio_sample_rate": audio.codec_context.sample_rate if audio else None,
            "audio_channels": audio.codec_context.channels if audio else None,
            "audio_start_offset_s": (stream_start_s(audio) - stream_start_s(video)) if audio else None,
        }
        rotation = _first_frame_rotation(container, video)
        container.seek(0)
        pts = _video_packet_pts(container, video)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV errors come in many types
        raise MediaError(f"{path}: probing failed: {type(exc).__name__}: {exc}") from exc
    finally:
        container.close()
    if len(pts) == 0:
        raise MediaError(f"{path}: video stream has no frames")
    tb = float(video.time_base)
    times = np.sort(np.asarray(pts, np.float64)) * tb
    deltas = np.diff(times)
    median = float(np.median(deltas)) if len(deltas) else 0.0
    last = median if median > 0 else (1.0 / float(video.average_rate or 25))
    width, height = video.codec_context.width, video.codec_context.height
    if rotation % 180:
        width, height = height, width
    info.update({
        "frame_count": int(len(times)),
        "duration_s": float(times[-1] - times[0] + last),
        "fps": float(len(times) / (times[-1] - times[0] + last)),
        "variable_fps": bool(len(deltas) > 1 and median > 0
                             and np.max(np.abs(deltas - median)) > vfr_tolerance * median),
        "width": int(width),
        "height": int(height),
        "rotation": int(rotation),
    })
    return info


def _first_frame_rotation(container, video) -> int:
    for frame in container.decode(video):
        return int(round(frame.rotation)) % 360
    raise MediaError("video stream has no decodable frame")


def _video_packet_pts(container, video) -> list[int]:
    pts = []
    for packet in container.demux(video):
        if packet.pts is not None and packet.size:
            pts.append(packet.pts)
    return pts
