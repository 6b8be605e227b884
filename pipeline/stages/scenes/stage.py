"""The `scenes` stage: one row per video in, its clips (shots) out as a list<struct> column."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import ClassVar

from pipeline.stages.contract import OK, Stage
from pipeline.stages.scenes.detect import (
    ClipSpan,
    ScenesConfig,
    Window,
    WindowScan,
    make_detector,
    plan_windows,
    scan_window,
    spans,
    stitch,
)

log = logging.getLogger(__name__)


def clip_id(video_id: str, start_s: float, end_s: float) -> str:
    """Stable clip key: sha256 of "video_id:start:end" (pts seconds, 6 decimals), 32 hex."""
    return hashlib.sha256(f"{video_id}:{start_s:.6f}:{end_s:.6f}".encode()).hexdigest()[:32]


class ScenesStage(Stage):
    """Split each video into shots (pipeline/stages/scenes/detect.py) and emit a `clips` row per shot.

    Reads the file at `uri`; `duration_s` from ingest decides whether it is decoded in windows.
    Writes `scene_count`, `scenes_seconds`, `scenes_status`, `scenes_error` and `clips`."""

    name: ClassVar[str] = "scenes"
    level: ClassVar[str] = "videos"
    requires: ClassVar[tuple[str, ...]] = ("uri", "duration_s", "fps", "frame_count", "video_id",
                                           "shard")
    after: ClassVar[tuple[str, ...]] = ("ingest",)
    Config: ClassVar[type] = ScenesConfig
    version: ClassVar[str] = "1"
    num_cpus: ClassVar[float] = 1.0

    def __init__(self, config: ScenesConfig | None = None, context=None):
        super().__init__(config or ScenesConfig(), context)

    def setup(self) -> None:
        """Import the detector's libraries (cv2, scenedetect) once per worker, not per video."""
        make_detector(self.config)

    def parts(self, row: dict) -> list[tuple[Window, float]]:
        """The row's decode windows (pipeline/stages/scenes/detect.py `windows`), each with the stream's fps:
        a video longer than `window_s` is scanned as parallel tasks."""
        for key in ("uri", "video_id"):
            if not row.get(key):
                raise ValueError(f"scenes needs a non-empty {key!r} column; got row {row!r}")
        fps, windows = plan_windows(row["uri"], self.config, row.get("duration_s"))
        return [(window, fps) for window in windows]

    def process_part(self, row: dict, part: tuple[Window, float]) -> WindowScan:
        window, fps = part
        return scan_window(row["uri"], self.config, fps, window)

    def combine(self, row: dict, results: list[WindowScan]) -> dict:
        started = time.perf_counter()
        result = stitch(row["uri"], results)
        clip_spans = spans(result, self.config)
        seconds = sum(r.seconds for r in results) + time.perf_counter() - started
        log.debug("%s: %d frames in %.2f s (%.0f frames/s), %d windows, %d clips", row["uri"],
                  result.frames, seconds, result.frames / max(seconds, 1e-9), result.windows,
                  len(clip_spans))
        detector = self.config.describe()
        clips = [self.clip_row(row, i, span, detector) for i, span in enumerate(clip_spans)]
        return {
            "scene_count": len(clips),
            "scenes_seconds": seconds,
            "scenes_status": OK,
            "scenes_error": None,
            "clips": clips,
        }

    def process_row(self, row: dict) -> dict:
        return self.combine(row, [self.process_part(row, part) for part in self.parts(row)])

    @staticmethod
    def clip_row(row: dict, index: int, span: ClipSpan, detector: str) -> dict:
        return {
            "clip_id": clip_id(row["video_id"], span.start_s, span.end_s),
            "video_id": row["video_id"],
            "shard": row.get("shard"),
            "clip_index": index,
            "start_s": span.start_s,
            "end_s": span.end_s,
            "start_frame": span.start_frame,
            "end_frame": span.end_frame,
            "duration_s": span.duration_s,
            "cut_before": span.cut_before,
            "scenes_detector": detector,
        }
