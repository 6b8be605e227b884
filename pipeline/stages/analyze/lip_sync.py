"""Lip-sync analyzer: audio-visual offset and confidence per track (backends and their
scorers: pipeline/models/lip_sync/__init__.py; keep rules per backend: catalog.select.LIP_SYNC_RULES).

Offsets are in 25 fps frames, positive = audio leads. A track whose offset is not 0 gets a new
crop file with the audio shifted to offset 0 (`lip_sync_shifted_path`); the crop is never
overwritten.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from catalog.contract import CROP_FPS
from catalog.layout import media_relpath
from pipeline.models.lip_sync import SyncMeasurement, check_backend, lip_sync_specs, load_lip_sync
from pipeline.models.registry import ModelSpec
from pipeline.stages.analyze.base import AnalyzerResult, DecodedTrack
from pipeline.stages.analyze.resync import write_resynced
from pipeline.stages.contract import FAILED, OK, SKIPPED, StageContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LipSyncConfig:
    backend: str = "av_corr"  # "av_corr" (bundled) or "syncnet" (reference weights)
    max_offset_frames: int = 15  # search audio shifts of +- this many 25 fps frames
    write_shifted: bool = True  # write a crop with audio shifted to offset 0 when offset != 0
    min_mouth_frames: float = 0.8  # av_corr: fraction of frames with a measured mouth
    device: str = "cpu"  # syncnet: torch device
    batch_size: int = 20  # syncnet: windows per forward pass


class LipSyncAnalyzer:
    """TrackAnalyzer for `lip_sync` (see pipeline/stages/analyze/base.py)."""

    name: ClassVar[str] = "lip_sync"
    Config: ClassVar[type] = LipSyncConfig
    version: ClassVar[str] = "1"

    def __init__(self, config: LipSyncConfig | None, context: StageContext) -> None:
        self.config = config or LipSyncConfig()
        self.context = context
        check_backend(self.config.backend)
        self._scorer = None

    def model_specs(self) -> list[ModelSpec]:
        return lip_sync_specs(self.config.backend)

    def setup(self) -> None:
        self._scorer = load_lip_sync(self.config.backend, self.config.max_offset_frames,
                                     self.config.device, self.config.batch_size)

    def measure(self, track: DecodedTrack) -> SyncMeasurement:
        """Offset, confidence and per-frame confidence of one decoded track."""
        if self._scorer is None:
            self.setup()
        if self.config.backend == "av_corr":
            mouth = np.asarray(track.mouth_open, np.float64)
            measured = float(np.isfinite(mouth).mean()) if len(mouth) else 0.0
            if measured < self.config.min_mouth_frames:
                raise _Skip(
                    f"mouth measured on {measured:.0%} of frames, "
                    f"need {self.config.min_mouth_frames:.0%} (faces stage mouth_open)"
                )
            if np.nanstd(mouth) < 1e-4:
                raise _Skip("mouth opening does not vary over the track (no visible articulation)")
        return self._scorer.score(track.frames, track.audio, track.mouth_open)

    def analyze(self, track: DecodedTrack, previous: dict[str, AnalyzerResult]) -> AnalyzerResult:
        audio_result = previous.get("audio")
        if not track.has_audio:
            return self._skipped("no audio stream in the track")
        if audio_result is not None and audio_result.track.get("audio_status") != OK:
            why = audio_result.track.get("audio_error") or "audio analysis did not succeed"
            return self._skipped(f"audio {audio_result.track.get('audio_status')}: {why}")
        min_frames = CROP_FPS + self.config.max_offset_frames  # 1 s beyond the search
        if track.num_frames < min_frames:
            return self._skipped(
                f"track has {track.num_frames} frames, lip sync needs {min_frames}"
            )
        try:
            m = self.measure(track)
        except _Skip as why:
            return self._skipped(str(why))
        out: dict[str, Any] = {
            "lip_sync_backend": self.config.backend,
            "lip_sync_offset_frames": int(m.offset_frames),
            "lip_sync_offset_s": float(m.offset_frames / CROP_FPS),
            "lip_sync_confidence": float(m.confidence),
            "lip_sync_min_dist": m.min_dist,
            "lip_sync_shifted_path": None,
            "lip_sync_status": OK,
            "lip_sync_error": None,
        }
        if self.config.write_shifted and m.offset_frames != 0:
            try:
                out["lip_sync_shifted_path"] = self._write_shifted(track, m.offset_frames)
            except Exception as exc:  # noqa: BLE001 - the measurement stands; the file failed
                out["lip_sync_status"] = FAILED
                out["lip_sync_error"] = (
                    f"writing the resynced crop failed: {type(exc).__name__}: {exc}"
                )
        frame_conf = [None if not np.isfinite(v) else float(v) for v in m.frame_confidence]
        return AnalyzerResult(out, {"lip_sync_frame_confidence": frame_conf})

    def _write_shifted(self, track: DecodedTrack, offset: int) -> str:
        crop = track.row.get("crop_path")
        if not crop:
            raise ValueError(f"track {track.track_id} has no crop_path to resync")
        src = crop if os.path.isabs(crop) else self.context.media_path(crop)
        relpath = media_relpath(track.shard, track.track_id, f"crop_sync_{offset:+d}.mp4")
        write_resynced(src, self.context.staging_media(track.shard, relpath), offset)
        return relpath

    def _skipped(self, reason: str) -> AnalyzerResult:
        return AnalyzerResult(
            {
                "lip_sync_backend": self.config.backend,
                "lip_sync_status": SKIPPED,
                "lip_sync_error": reason,
            }
        )


class _Skip(Exception):
    """A declared reason to skip a track (not a failure)."""
