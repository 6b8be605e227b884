"""Ingest: one `videos` row per input file: probe container, video and audio streams (PyAV).

The runner hashes files first (pipeline/stages/ingest/hashing.py) and hands rows with video_id, shard,
content hash and duplicate_of; this stage probes each file (pipeline/media.py `probe`: frame count
and variable frame rate from demuxing the video packets, rotation from the first decoded frame).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.media import MediaError, probe
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
